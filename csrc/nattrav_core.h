/* nattrav C core: the hot loops only. Every function returns >= 0 on success or -errno.
 *
 * The block between NATTRAV_CDEF_BEGIN and NATTRAV_CDEF_END is read verbatim by build_ext.py as the
 * cffi cdef, so it must stay plain C declarations (no #include, no #if, no macros with arguments).
 */
#ifndef NATTRAV_CORE_H
#define NATTRAV_CORE_H

#include <stdint.h>
#include <stddef.h>

/* NATTRAV_CDEF_BEGIN */
#define NT_POOL_REUSEADDR 1
#define NT_POOL_REUSEPORT 2
#define NT_POOL_BLOCKING 4
#define NT_POOL_RECVERR 8

/* Open `count` IPv4 UDP sockets bound to `ip_be` (network byte order, 0 = any) and, if `bind_ports`
 * is not NULL, to bind_ports[i] (0 = kernel's choice). Non-blocking unless NT_POOL_BLOCKING. If ttl > 0,
 * IP_TTL is set. Fills fds[i] and ports_out[i] (host order). Returns count, or -errno after closing
 * every socket it opened. */
int nt_pool_open(int count, uint32_t ip_be, const uint16_t *bind_ports, int flags, int ttl,
                 int *fds, uint16_t *ports_out);

/* Close `count` descriptors; returns the number closed without error. */
int nt_pool_close(const int *fds, int count);

/* Set IP_TTL on one socket (1..255; -1 = back to the route's default). */
int nt_set_ttl(int fd, int ttl);

/* --- bursts (burst.c) --- */
typedef struct {
    int64_t planned;          /* packets of the burst whose socket is in this fd table */
    int64_t sent;             /* handed to the kernel */
    int64_t failed;           /* given up on; last_errno says why */
    int64_t skipped;          /* packets for sockets of another worker */
    int64_t icmp_errors;      /* pending ICMP errors met on send (the packet was retried) */
    int64_t waits;            /* EAGAIN/ENOBUFS waits (POLLOUT or back-off) */
    int64_t syscalls;
    int64_t first_ns;         /* CLOCK_MONOTONIC of the first and last successful sendmmsg */
    int64_t last_ns;
    int64_t elapsed_ns;
    int32_t last_errno;
} nt_burst_stats;

int64_t nt_now_ns(void);

/* Send packet i from fdmap[src[i]] to ips[i] (4 bytes each, network order; or one address for all when
 * ips_len == 4) port ports[i], payload payload[i*payload_len..] (or one payload for all when
 * payload_buf_len == payload_len). Packets whose fdmap entry is < 0 belong to another worker and are
 * skipped. rate_pps > 0 paces this table's share at rate_pps * share/n. ttl > 0 sends every packet with
 * that IP TTL (ancillary data: the sockets' own TTL stays as it was). EAGAIN/ENOBUFS are waited out until timeout_ms. Returns
 * packets sent (= st->sent) or -errno. */
int nt_burst_send(const int *fdmap, int nfd, const int32_t *src, int n, const uint8_t *ips,
                  int ips_len, const uint16_t *ports, const uint8_t *payload, int payload_buf_len,
                  int payload_len, double rate_pps, int ttl, int timeout_ms, nt_burst_stats *st);

/* --- receive (recv.c) --- */
typedef struct {
    int64_t received;
    int64_t rejected;         /* did not start with the expected prefix */
    int64_t icmp_errors;      /* drained from error queues / reported by recv */
    int64_t dropped_after_hit;
    int64_t syscalls;
} nt_recv_stats;

/* An epoll set over fds (event data = index); returns the epoll fd or -errno. */
int nt_recv_create(const int *fds, int count);
int nt_recv_remove(int epfd, int fd);
/* Wait for a datagram starting with match[0..match_len). Returns its length (copied to buf, at most
 * buf_len) with *index_out, source address and port set; -ETIMEDOUT; -ECANCELED when wake_fd (if >= 0)
 * became readable. Stats accumulate into *st. */
int nt_recv_wait(int epfd, const int *fds, int count, int wake_fd, const uint8_t *match, int match_len,
                 int timeout_ms, int32_t *index_out, uint32_t *src_ip_be_out, uint16_t *src_port_out,
                 uint8_t *buf, int buf_len, nt_recv_stats *st);
/* Drain every socket's error queue; returns the number of errors found. */
int64_t nt_drain_errors(const int *fds, int count);

/* ---- csrc/mmsg.c: single-socket batches (recvmmsg/sendmmsg) and the STUN server fast path ---- */
/* family 4 or 6; port in host order; ip in network order (first 4 bytes for IPv4) */
typedef struct { uint8_t family; uint8_t pad; uint16_t port; uint8_t ip[16]; } nt_addr;
#define NT_BATCH_ANSWERED -1
#define NT_BATCH_REPLAYED -2
#define NT_BATCH_MALFORMED -3
#define NT_BATCH_OVERSIZED -4
#define NT_BATCH_LIMITED -5
#define NT_STAT_RECEIVED 0
#define NT_STAT_ANSWERED 1
#define NT_STAT_REPLAYED 2
#define NT_STAT_MALFORMED 3
#define NT_STAT_OVERSIZED 4
#define NT_STAT_SEND_ERRORS 5
#define NT_STAT_LIMITED 6
#define NT_STAT_COUNT 7
/* Receive up to n (<= 256) datagrams without blocking; datagram i at bufs + i*bufsize, lens[i] its
 * length (-1 when cut because longer than bufsize). Returns the count, or -EAGAIN when none waits. */
int nt_recv_batch(int fd, uint8_t *bufs, int bufsize, int n, int *lens, nt_addr *addrs);
/* Send n datagrams in one sendmmsg; returns how many left (may be fewer than n) or -errno. */
int nt_send_batch(int fd, const uint8_t *bufs, int bufsize, int n, const int *lens,
                  const nt_addr *addrs);
/* Bytes needed for a replay cache of `slots` (a power of two) entries. */
int nt_replay_cache_size(int slots);
/* Per-source limiter: a byte token bucket per source IP (IPv6: per /64) in a bounded table, and an
 * amplification cap (reply bytes <= factor x request bytes). Byte counts are UDP payloads; the IP and
 * UDP headers are added here. now_ms < 0: the monotonic clock. */
#define NT_LIMIT_RATE 0
#define NT_LIMIT_AMPLIFICATION 1
#define NT_LIMIT_SHARED 2
#define NT_LIMIT_STAT_COUNT 3
/* Bytes for a limiter of `slots` (a power of two) entries. */
int nt_limiter_size(int slots);
/* rate bytes/s and burst bytes per source; factor_pct >= 100 (300: replies <= 3x requests); bank: the
 * most reply credit a source may save up, bytes; key16: 16 random bytes keying the slot hash. */
int nt_limiter_init(uint8_t *mem, int slots, int64_t rate, int64_t burst, int factor_pct,
                    int64_t bank, const uint8_t *key16);
/* 1: a request of `in` bytes and its reply of `out` bytes are admitted and charged; 0: neither. */
int nt_limiter_exchange(uint8_t *mem, const nt_addr *src, int in, int out, int64_t now_ms);
/* 1: a request is admitted and charged (it earns reply credit); 0: refused. */
int nt_limiter_request(uint8_t *mem, const nt_addr *src, int bytes, int64_t now_ms);
/* 1: a reply of `bytes` towards src may go (charged); 0: it must not. */
int nt_limiter_reply(uint8_t *mem, const nt_addr *src, int bytes, int64_t now_ms);
/* out[NT_LIMIT_*] = counters. */
int nt_limiter_stats(const uint8_t *mem, uint64_t *out);
/* Receive a batch; answer bare RFC 5389 Binding requests in C (header + XOR-MAPPED-ADDRESS + the
 * constant `tail` attributes) with one sendmmsg. lens[i] becomes NT_BATCH_* for packets handled here
 * and stays >= 0 for those Python must handle. stats[NT_STAT_*] are incremented. tail_len -1: answer
 * nothing in C, only classify (malformed/replayed/limited). `limiter` (may be NULL): every request
 * that reaches it is charged; a bare one with its answer. */
int nt_stun_serve_batch(int fd, uint8_t *bufs, int bufsize, int n, int *lens, nt_addr *addrs,
                        const uint8_t *tail, int tail_len, uint8_t *cache, int slots,
                        int window_ms, uint8_t *limiter, uint64_t *stats);
/* Load generator: keep `inflight` bare Binding requests (fresh IDs) outstanding towards `server` for
 * duration_ms; out[0] = sent, out[1] = responses, out[2] = 20 ms stalls. */
int nt_stun_load(int fd, const nt_addr *server, int inflight, int duration_ms, uint64_t *out);
/* ---- csrc/wire.c: the NAT lab's delay line (frames between two interfaces, impaired) ---- */
#define NT_WIRE_UNIFORM 0
#define NT_WIRE_NORMAL 1
#define NT_WIRE_MAX_LIMIT 262144
/* One direction of the line. */
typedef struct {
    int64_t delay_ns;         /* fixed one-way delay */
    int64_t jitter_ns;        /* UNIFORM: delay +- jitter; NORMAL: standard deviation (cut at 0) */
    int64_t rate_bps;         /* 0: unlimited; else a frame takes (len + 24) * 8 / rate to cross */
    int32_t distribution;     /* NT_WIRE_UNIFORM or NT_WIRE_NORMAL */
    int32_t loss_ppm;         /* IPv4 frames dropped at random, per million */
    int32_t reorder;          /* 0: frames leave in arrival order; 1: each at its own drawn time */
    int32_t limit;            /* frames held at most (64..NT_WIRE_MAX_LIMIT); more are dropped */
} nt_wire_dir;
typedef struct {
    int64_t received;         /* frames read from the ingress interface */
    int64_t forwarded;        /* frames handed to the egress interface */
    int64_t lost;             /* dropped by the configured loss */
    int64_t overflow;         /* dropped because the line already held `limit` frames */
    int64_t send_errors;      /* refused by the egress interface (last_errno) or malformed */
    int64_t passed;           /* non-IPv4 frames (ARP) forwarded at once, unimpaired */
    int64_t held_max;         /* most frames held at once */
    int64_t late_max_ns;      /* worst lateness of a send against its due time */
    int32_t last_errno;
    int32_t pad;
} nt_wire_stats;
/* An AF_PACKET socket on interface `ifindex` for the delay line: virtio-net headers, its own frames
 * ignored, qdisc bypassed, promiscuous, non-blocking; bufsize > 0 sets both socket buffers. Returns
 * the fd or -errno. */
int nt_wire_open(int ifindex, int bufsize);
/* Forward frames fd_a -> fd_b as `ab` says and fd_b -> fd_a as `ba` says until stop_fd is readable
 * (returns 0) or a socket fails (-errno). seed 0: seeded from the clock. Stats are updated live. */
int nt_wire_run(int fd_a, int fd_b, const nt_wire_dir *ab, const nt_wire_dir *ba, uint64_t seed,
                int stop_fd, nt_wire_stats *st_ab, nt_wire_stats *st_ba);
/* NATTRAV_CDEF_END */

#endif
