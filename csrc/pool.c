/* Socket pool: open, bind and configure many UDP sockets in one call. */
#define _GNU_SOURCE
#include "nattrav_core.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int nt_set_ttl(int fd, int ttl)
{
    if (fd < 0 || ttl == 0 || ttl < -1 || ttl > 255)
        return -EINVAL;
    if (setsockopt(fd, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl) < 0)
        return -errno;
    return 0;
}

static int set_flag(int fd, int level, int opt)
{
    int one = 1;
    return setsockopt(fd, level, opt, &one, sizeof one) < 0 ? -errno : 0;
}

static int open_one(uint32_t ip_be, uint16_t port, int flags, int ttl, int *fd_out, uint16_t *port_out)
{
    int type = SOCK_DGRAM | SOCK_CLOEXEC | ((flags & NT_POOL_BLOCKING) ? 0 : SOCK_NONBLOCK);
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (!rc && (flags & NT_POOL_REUSEADDR))
        rc = set_flag(fd, SOL_SOCKET, SO_REUSEADDR);
    if (!rc && (flags & NT_POOL_REUSEPORT))
        rc = set_flag(fd, SOL_SOCKET, SO_REUSEPORT);
    /* ICMP errors for low-TTL probes then queue on the socket (drained and counted) instead of
     * surfacing as a bare errno on some later call */
    if (!rc && (flags & NT_POOL_RECVERR))
        rc = set_flag(fd, IPPROTO_IP, IP_RECVERR);
    if (!rc && ttl > 0)
        rc = nt_set_ttl(fd, ttl);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = ip_be;
    sa.sin_port = htons(port);
    if (!rc && bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        rc = -errno;
    socklen_t len = sizeof sa;
    if (!rc && getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        rc = -errno;
    if (rc) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    *port_out = ntohs(sa.sin_port);
    return 0;
}

int nt_pool_open(int count, uint32_t ip_be, const uint16_t *bind_ports, int flags, int ttl,
                 int *fds, uint16_t *ports_out)
{
    if (count < 0 || !fds || !ports_out || ttl > 255)
        return -EINVAL;
    for (int i = 0; i < count; i++) {
        int rc = open_one(ip_be, bind_ports ? bind_ports[i] : 0, flags, ttl, &fds[i], &ports_out[i]);
        if (rc < 0) {
            nt_pool_close(fds, i);
            for (int j = 0; j < i; j++)
                fds[j] = -1;
            return rc;
        }
    }
    return count;
}

int nt_pool_close(const int *fds, int count)
{
    int closed = 0;
    if (!fds || count < 0)
        return -EINVAL;
    for (int i = 0; i < count; i++)
        if (fds[i] >= 0 && close(fds[i]) == 0)
            closed++;
    return closed;
}
