/* Receive across a whole pool: epoll tells which sockets have data, recvmmsg empties each in batches,
 * and the first datagram that starts with the expected prefix wins. ICMP errors that low-TTL probes
 * bring back (IP_RECVERR) are drained from the error queues and counted, never fatal. */
#define _GNU_SOURCE
#include "nattrav_core.h"
#include "msg.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_BATCH 16
#define EVENTS 64
#define WAKE_TAG UINT64_MAX

int nt_recv_create(const int *fds, int count)
{
    if (!fds || count < 0)
        return -EINVAL;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -errno;
    for (int i = 0; i < count; i++) {
        if (fds[i] < 0)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
            int e = errno;
            close(ep);
            return -e;
        }
    }
    return ep;
}

int nt_recv_remove(int epfd, int fd)
{
    if (epfd < 0 || fd < 0)
        return -EINVAL;
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

static int64_t drain_errqueue(int fd)
{
    int64_t n = 0;
    char data[256], ctrl[512];
    for (int guard = 0; guard < 4096; guard++) {
        struct iovec iov = {data, sizeof data};
        struct sockaddr_in from;
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof ctrl};
        if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            break;
        n++;
    }
    return n;
}

int64_t nt_drain_errors(const int *fds, int count)
{
    if (!fds || count < 0)
        return -EINVAL;
    int64_t total = 0;
    for (int i = 0; i < count; i++) {
        if (fds[i] < 0)
            continue;
        int64_t n = drain_errqueue(fds[i]);
        if (!n) {
            /* without IP_RECVERR the error sits in SO_ERROR alone */
            int e = 0;
            socklen_t len = sizeof e;
            if (getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e)
                n = 1;
        }
        total += n;
    }
    return total;
}

static int msleft(int64_t deadline_ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now >= deadline_ns)
        return 0;
    int64_t ms = (deadline_ns - now + 999999) / 1000000LL;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

int nt_recv_wait(int epfd, const int *fds, int count, int wake_fd, const uint8_t *match, int match_len,
                 int timeout_ms, int32_t *index_out, uint32_t *src_ip_be_out, uint16_t *src_port_out,
                 uint8_t *buf, int buf_len, nt_recv_stats *st)
{
    if (epfd < 0 || !fds || count < 0 || match_len < 0 || (match_len && !match) || !index_out ||
        !src_ip_be_out || !src_port_out || !buf || buf_len < 1 || buf_len > 65536 || !st)
        return -EINVAL;
    if (wake_fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &ev) < 0)
            return -errno;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t deadline = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + (int64_t)timeout_ms * 1000000LL;

    uint8_t *bufs = malloc((size_t)RECV_BATCH * buf_len);
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct sockaddr_in from[RECV_BATCH];
    struct epoll_event evs[EVENTS];
    int rc = -ETIMEDOUT;
    if (!bufs) {
        rc = -ENOMEM;
        goto out;
    }
    for (;;) {
        int left = msleft(deadline);
        st->syscalls++;
        int ne = epoll_wait(epfd, evs, EVENTS, left);
        if (ne < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        if (ne == 0) {
            if (!msleft(deadline))
                goto out; /* rc = -ETIMEDOUT */
            continue;
        }
        for (int k = 0; k < ne; k++) {
            if (evs[k].data.u64 == WAKE_TAG) {
                rc = -ECANCELED;
                goto out;
            }
            uint64_t idx = evs[k].data.u64;
            if (idx >= (uint64_t)count || fds[idx] < 0)
                continue;
            int fd = fds[idx];
            if (evs[k].events & EPOLLERR)
                st->icmp_errors += drain_errqueue(fd);
            if (!(evs[k].events & EPOLLIN))
                continue;
            /* One datagram first: a socket whose first datagram wins keeps the ones behind it in
             * the kernel, for the session that takes the socket over. Only a socket that has shown
             * noise is read in batches (and then a winner's followers in that batch are dropped). */
            int vlen = 1;
            for (int rounds = 0; rounds < 8; rounds++) {
                for (int j = 0; j < vlen; j++)
                    nt_msg_slot(&msgs[j], &iov[j], bufs + (size_t)j * buf_len, buf_len, &from[j], sizeof from[j]);
                st->syscalls++;
                int r = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT, NULL);
                if (r < 0) {
                    int e = errno;
                    if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR) {
                        /* sk_err from an ICMP error; the error queue holds its record (if any) */
                        int64_t q = drain_errqueue(fd);
                        st->icmp_errors += q ? q : 1;
                    }
                    break;
                }
                for (int j = 0; j < r; j++) {
                    st->received++;
                    unsigned len = msgs[j].msg_len;
                    if (len > (unsigned)buf_len)
                        len = buf_len; /* truncated (MSG_TRUNC): only buf_len bytes exist */
                    if ((int)len < match_len || memcmp(iov[j].iov_base, match, match_len) != 0) {
                        st->rejected++;
                        continue;
                    }
                    memcpy(buf, iov[j].iov_base, len);
                    *index_out = (int32_t)idx;
                    *src_ip_be_out = from[j].sin_addr.s_addr;
                    *src_port_out = ntohs(from[j].sin_port);
                    st->dropped_after_hit += r - j - 1;
                    rc = (int)len;
                    goto out;
                }
                if (r < vlen)
                    break; /* emptied */
                vlen = RECV_BATCH;
            }
        }
    }
out:
    if (wake_fd >= 0)
        epoll_ctl(epfd, EPOLL_CTL_DEL, wake_fd, NULL);
    free(bufs);
    return rc;
}
