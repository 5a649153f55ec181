/* Bursts: hand many datagrams to the kernel with sendmmsg, optionally paced, and account for each.
 *
 * The burst is global (every worker gets the same arrays); fdmap[src] < 0 marks a socket that lives in
 * another worker, so each worker sends exactly its share and the shares add up to the burst.
 */
#define _GNU_SOURCE
#include "nattrav_core.h"
#include "msg.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 1024 /* UIO_MAXIOV: the most sendmmsg takes in one call */

int64_t nt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until_ns(int64_t t)
{
    /* clock_nanosleep overshoots by ~50 us; spin the last stretch so pacing stays within a few % */
    const int64_t spin = 60000;
    int64_t now = nt_now_ns();
    if (t - now > spin) {
        int64_t target = t - spin;
        struct timespec ts = {target / 1000000000LL, target % 1000000000LL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
    }
    while (nt_now_ns() < t)
        ;
}

/* Errors a previous ICMP message leaves pending on a socket with IP_RECVERR: sendmsg reports it once
 * and clears it, so the packet that met it is retried rather than lost. */
static int is_icmp_errno(int e)
{
    return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN ||
           e == ENONET || e == EPROTO;
}

/* A burst's TTL travels with each message as IP_TTL ancillary data (Linux >= 3.13) rather than as a
 * socket option: reading, setting and restoring the option cost three syscalls a socket per burst
 * (~1-1.3 us a socket on the development machine), the control message ~0.15-0.3 us a packet
 * (bench/results/burst-floor.md), and a socket's own TTL is never touched, so nothing needs restoring
 * after an error. */
typedef union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
} ttl_cmsg;

static void ttl_cmsg_init(ttl_cmsg *c, int ttl)
{
    memset(c, 0, sizeof *c);
    struct cmsghdr *h = (struct cmsghdr *)c->buf;
    h->cmsg_level = IPPROTO_IP;
    h->cmsg_type = IP_TTL;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &ttl, sizeof ttl);
}

int nt_burst_send(const int *fdmap, int nfd, const int32_t *src, int n, const uint8_t *ips,
                  int ips_len, const uint16_t *ports, const uint8_t *payload, int payload_buf_len,
                  int payload_len, double rate_pps, int ttl, int timeout_ms, nt_burst_stats *st)
{
    if (!fdmap || !src || !ports || !ips || !st || nfd < 0 || n < 0 || ttl < 0 || ttl > 255 ||
        timeout_ms < 0 || rate_pps < 0 || payload_len < 0 || payload_len > 65507)
        return -EINVAL;
    if (ips_len != 4 && (int64_t)ips_len != 4 * (int64_t)n)
        return -EINVAL;
    int stride;
    if (payload_buf_len == payload_len)
        stride = 0;
    else if ((int64_t)payload_buf_len == (int64_t)payload_len * n)
        stride = payload_len;
    else
        return -EINVAL;
    if (payload_len && !payload)
        return -EINVAL;
    memset(st, 0, sizeof *st);

    int64_t mine = 0;
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= nfd)
            return -EINVAL;
        if (fdmap[src[i]] >= 0)
            mine++;
    }
    st->planned = mine;
    if (!mine)
        return 0;

    struct mmsghdr *msgs = malloc(sizeof *msgs * BATCH);
    struct iovec *iov = malloc(sizeof *iov * BATCH);
    struct sockaddr_in *sa = malloc(sizeof *sa * BATCH);
    int rc = 0;
    if (!msgs || !iov || !sa) {
        rc = -ENOMEM;
        goto out;
    }
    ttl_cmsg ctl; /* read-only for the kernel, so every message of the burst shares it */
    if (ttl > 0)
        ttl_cmsg_init(&ctl, ttl);

    /* the share of a paced burst is paced at the same share of the rate, so N workers add up to it */
    double rate = rate_pps > 0 ? rate_pps * (double)mine / (double)n : 0;
    int64_t t0 = nt_now_ns();
    int64_t deadline = t0 + (int64_t)timeout_ms * 1000000LL;
    int64_t done = 0; /* packets of mine sent or given up on */
    int retried = -1; /* index of the packet already retried after an ICMP error */
    int i = 0;
    while (i < n) {
        int fd = fdmap[src[i]];
        if (fd < 0) {
            st->skipped++;
            i++;
            continue;
        }
        int limit = BATCH;
        if (rate > 0) {
            int64_t now = nt_now_ns();
            int64_t due = (int64_t)((double)(now - t0) * rate / 1e9) + 1 - done;
            if (due <= 0) {
                sleep_until_ns(t0 + (int64_t)((double)done * 1e9 / rate));
                due = 1;
            }
            if (due < limit)
                limit = (int)due;
        }
        int cnt = 0;
        for (int j = i; j < n && cnt < limit && src[j] == src[i]; j++, cnt++) {
            const uint8_t *ip = ips_len == 4 ? ips : ips + 4 * (size_t)j;
            memset(&sa[cnt], 0, sizeof sa[cnt]);
            sa[cnt].sin_family = AF_INET;
            memcpy(&sa[cnt].sin_addr.s_addr, ip, 4);
            sa[cnt].sin_port = htons(ports[j]);
            nt_msg_slot(&msgs[cnt], &iov[cnt], (void *)(payload + (size_t)stride * j), payload_len, &sa[cnt],
                        sizeof sa[cnt]);
            if (ttl > 0) {
                msgs[cnt].msg_hdr.msg_control = ctl.buf;
                msgs[cnt].msg_hdr.msg_controllen = sizeof ctl.buf;
            }
        }
        st->syscalls++;
        /* one message (many sockets x 1 packet): sendto/sendmsg skip sendmmsg's per-call header copying */
        int r;
        if (cnt > 1)
            r = sendmmsg(fd, msgs, cnt, 0);
        else if (ttl > 0)
            r = sendmsg(fd, &msgs[0].msg_hdr, 0) >= 0 ? 1 : -1;
        else
            r = sendto(fd, iov[0].iov_base, iov[0].iov_len, 0, (struct sockaddr *)&sa[0], sizeof sa[0]) >= 0 ? 1 : -1;
        if (r > 0) {
            int64_t now = nt_now_ns();
            if (!st->sent)
                st->first_ns = now;
            st->last_ns = now;
            st->sent += r;
            done += r;
            i += r;
            continue;
        }
        int e = r < 0 ? errno : EIO;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            int64_t left_ms = (deadline - nt_now_ns()) / 1000000LL;
            if (left_ms > 0) {
                st->waits++;
                if (e == ENOBUFS) {
                    /* the device queue is full; POLLOUT may already be set, so just back off */
                    struct timespec ts = {0, 50000};
                    nanosleep(&ts, NULL);
                } else {
                    struct pollfd p = {fd, POLLOUT, 0};
                    poll(&p, 1, (int)(left_ms > 1000 ? 1000 : left_ms));
                }
                continue;
            }
        } else if (is_icmp_errno(e) && retried != i) {
            st->icmp_errors++;
            retried = i;
            continue;
        }
        /* give up on this one packet, say why, go on with the rest */
        st->failed++;
        st->last_errno = e;
        done++;
        i++;
    }
    st->elapsed_ns = nt_now_ns() - t0;
    rc = (int)(st->sent > 0x7fffffff ? 0x7fffffff : st->sent);
out:
    free(msgs);
    free(iov);
    free(sa);
    return rc;
}
