/* Single-socket batches: recvmmsg/sendmmsg over a flat buffer, and the STUN server's fast path.
 *
 * Buffers are flat: datagram i lives at bufs + i * bufsize. Addresses travel as nt_addr (family 4 or 6,
 * port in host order, IP in network order) so Python never builds a sockaddr. Every function returns
 * >= 0 or -errno; lengths coming from Python are checked here again.
 */
#define _GNU_SOURCE
#include "nattrav_core.h"
#include "msg.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 256

/* Where each family's sockaddr keeps its port and its address: one table for both directions. */
static const struct {
    uint8_t family; /* nt_addr's */
    sa_family_t af;
    socklen_t len;
    size_t port_at, ip_at, ip_len;
} FAMILIES[] = {
    {4, AF_INET, sizeof(struct sockaddr_in), offsetof(struct sockaddr_in, sin_port),
     offsetof(struct sockaddr_in, sin_addr), 4},
    {6, AF_INET6, sizeof(struct sockaddr_in6), offsetof(struct sockaddr_in6, sin6_port),
     offsetof(struct sockaddr_in6, sin6_addr), 16},
};
#define N_FAMILIES (sizeof FAMILIES / sizeof FAMILIES[0])

static socklen_t to_sockaddr(const nt_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    for (size_t i = 0; i < N_FAMILIES; i++) {
        if (a->family != FAMILIES[i].family)
            continue;
        uint16_t port = htons(a->port);
        ss->ss_family = FAMILIES[i].af;
        memcpy((uint8_t *)ss + FAMILIES[i].port_at, &port, sizeof port);
        memcpy((uint8_t *)ss + FAMILIES[i].ip_at, a->ip, FAMILIES[i].ip_len);
        return FAMILIES[i].len;
    }
    return 0;
}

static void from_sockaddr(const struct sockaddr_storage *ss, nt_addr *a)
{
    memset(a, 0, sizeof *a);
    for (size_t i = 0; i < N_FAMILIES; i++) {
        if (ss->ss_family != FAMILIES[i].af)
            continue;
        uint16_t port;
        memcpy(&port, (const uint8_t *)ss + FAMILIES[i].port_at, sizeof port);
        a->family = FAMILIES[i].family;
        a->port = ntohs(port);
        memcpy(a->ip, (const uint8_t *)ss + FAMILIES[i].ip_at, FAMILIES[i].ip_len);
    }
}

/* The vectors one batch call hands the kernel. */
struct batch {
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    struct sockaddr_storage ss[MAX_BATCH];
};

static int check_batch(int fd, const void *bufs, int bufsize, int n, const int *lens, const nt_addr *addrs)
{
    if (fd < 0 || bufs == NULL || lens == NULL || addrs == NULL || bufsize <= 0 || n <= 0 || n > MAX_BATCH)
        return -EINVAL;
    return 0;
}

int nt_recv_batch(int fd, uint8_t *bufs, int bufsize, int n, int *lens, nt_addr *addrs)
{
    int rc = check_batch(fd, bufs, bufsize, n, lens, addrs);
    if (rc)
        return rc;
    struct batch b;
    for (int i = 0; i < n; i++)
        nt_msg_slot(&b.msgs[i], &b.iov[i], bufs + (size_t)i * bufsize, (size_t)bufsize, &b.ss[i], sizeof b.ss[i]);
    int got = recvmmsg(fd, b.msgs, (unsigned)n, MSG_DONTWAIT, NULL);
    if (got < 0)
        return -errno;
    for (int i = 0; i < got; i++) {
        /* a datagram larger than the slot is cut: report it as oversized so the caller drops it */
        lens[i] = (b.msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? -1 : (int)b.msgs[i].msg_len;
        from_sockaddr(&b.ss[i], &addrs[i]);
    }
    return got;
}

int nt_send_batch(int fd, const uint8_t *bufs, int bufsize, int n, const int *lens,
                  const nt_addr *addrs)
{
    int rc = check_batch(fd, bufs, bufsize, n, lens, addrs);
    if (rc)
        return rc;
    struct batch b;
    for (int i = 0; i < n; i++) {
        if (lens[i] < 0 || lens[i] > bufsize)
            return -EINVAL;
        socklen_t sl = to_sockaddr(&addrs[i], &b.ss[i]);
        if (sl == 0)
            return -EAFNOSUPPORT;
        nt_msg_slot(&b.msgs[i], &b.iov[i], (void *)(bufs + (size_t)i * bufsize), (size_t)lens[i], &b.ss[i], sl);
    }
    int sent = sendmmsg(fd, b.msgs, (unsigned)n, MSG_DONTWAIT);
    return sent < 0 ? -errno : sent;
}

/* ---- STUN fast path ------------------------------------------------------------------------- */

#define STUN_HDR 20

struct replay_slot {
    uint8_t key[16];  /* header bytes 4..20: cookie + transaction ID, or the classic 128-bit ID */
    nt_addr src;
    int64_t at_ms;
};

int nt_replay_cache_size(int slots)
{
    if (slots <= 0 || slots > (1 << 20) || (slots & (slots - 1)))
        return -EINVAL;
    return (int)(slots * sizeof(struct replay_slot));
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t fnv1a(const uint8_t *p, size_t n, uint32_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* 1 when the same transaction key from the same source was seen less than window_ms ago. A
 * direct-mapped table: a collision only forgets an old entry, it never reports a false replay. */
static int seen_recently(uint8_t *cache, int slots, int window_ms, const uint8_t *key,
                         const nt_addr *src, int64_t now)
{
    uint32_t h = fnv1a(key, 16, 2166136261u);
    h = fnv1a(src->ip, 16, h);
    h = fnv1a((const uint8_t *)&src->port, 2, h);
    struct replay_slot *s = (struct replay_slot *)cache + (h & (uint32_t)(slots - 1));
    int hit = memcmp(s->key, key, 16) == 0 && memcmp(&s->src, src, sizeof *src) == 0 &&
              now - s->at_ms < window_ms;
    /* a hit does not extend the window: a replayed packet is answered at most once per window */
    if (!hit) {
        memcpy(s->key, key, 16);
        s->src = *src;
        s->at_ms = now;
    }
    return hit;
}

static int put_xor_mapped(uint8_t *out, const nt_addr *src, const uint8_t *hdrkey)
{
    int alen = src->family == 4 ? 8 : 20;
    out[0] = 0x00;
    out[1] = 0x20;
    out[2] = 0;
    out[3] = (uint8_t)alen;
    out[4] = 0;
    out[5] = src->family == 4 ? 1 : 2;
    out[6] = (uint8_t)(src->port >> 8) ^ hdrkey[0];
    out[7] = (uint8_t)(src->port & 0xff) ^ hdrkey[1];
    for (int i = 0; i < alen - 4; i++)
        out[8 + i] = src->ip[i] ^ hdrkey[i];
    return 4 + alen;
}

/* ---- per-source limiter --------------------------------------------------------------------
 *
 * One token bucket in bytes per source: IPv4 address, or IPv6 /64 (one host holds a whole /64). Both
 * directions are charged, IP and UDP headers included, so the bucket bounds what one source costs us
 * and what we send towards it. A second counter, `credit`, bounds amplification: every admitted
 * request earns factor x its bytes of reply, capped at `bank`; a reply spends it. So the reply bytes
 * aimed at any address never exceed factor x the request bytes sent from it, plus the bank.
 *
 * The table is direct-mapped with a keyed hash. A source takes over a slot only when the occupant's
 * bucket has refilled completely: that state is exactly a new entry's, so nothing is forgotten. Until
 * then the newcomer shares the occupant's bucket (and is limited with it): a flood of spoofed sources
 * can slow legitimate ones down, never reset anyone's budget. */

struct limiter_head {
    int64_t rate;       /* bytes per second */
    int64_t burst;      /* bytes */
    int64_t factor_pct; /* replies <= factor_pct / 100 x requests */
    int64_t bank;       /* reply credit a source may save up, bytes */
    uint64_t k0, k1;
    int64_t slots;
    uint64_t stats[NT_LIMIT_STAT_COUNT];
};

struct limiter_slot {
    uint8_t key[16]; /* [0] family 4/6 (0: free), then the IPv4 address or the IPv6 /64 */
    int64_t last_ms;
    int64_t tokens; /* milli-bytes: rate (bytes/s) x elapsed ms, no division */
    int64_t credit; /* centi-bytes: in x factor_pct */
};

int nt_limiter_size(int slots)
{
    if (slots <= 0 || slots > (1 << 22) || (slots & (slots - 1)))
        return -EINVAL;
    return (int)(sizeof(struct limiter_head) + (size_t)slots * sizeof(struct limiter_slot));
}

int nt_limiter_init(uint8_t *mem, int slots, int64_t rate, int64_t burst, int factor_pct,
                    int64_t bank, const uint8_t *key16)
{
    if (mem == NULL || key16 == NULL || nt_limiter_size(slots) < 0 || rate <= 0 ||
        rate > ((int64_t)1 << 40) || burst <= 0 || burst > ((int64_t)1 << 40) ||
        factor_pct < 100 || factor_pct > 100000 || bank < 0 || bank > ((int64_t)1 << 40))
        return -EINVAL;
    memset(mem, 0, (size_t)nt_limiter_size(slots));
    struct limiter_head *h = (struct limiter_head *)mem;
    h->rate = rate;
    h->burst = burst;
    h->factor_pct = factor_pct;
    h->bank = bank;
    memcpy(&h->k0, key16, 8);
    memcpy(&h->k1, key16 + 8, 8);
    h->slots = slots;
    return 0;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int wire_overhead(const nt_addr *a)
{
    return a->family == 6 ? 48 : 28; /* IPv6 40 / IPv4 20, + UDP 8 */
}

/* The source's slot, refilled to `now`; claims it when free or as good as new. */
static struct limiter_slot *limiter_slot(uint8_t *mem, const nt_addr *src, int64_t now)
{
    struct limiter_head *h = (struct limiter_head *)mem;
    uint8_t key[16] = {0};
    key[0] = src->family;
    memcpy(key + 1, src->ip, src->family == 6 ? 8 : 4);
    uint64_t w0, w1;
    memcpy(&w0, key, 8);
    memcpy(&w1, key + 8, 8);
    uint64_t hash = mix64(mix64(w0 ^ h->k0) ^ w1 ^ h->k1);
    struct limiter_slot *s =
        (struct limiter_slot *)(mem + sizeof *h) + (hash & (uint64_t)(h->slots - 1));
    int64_t full = h->burst * 1000;
    if (s->key[0] != 0) {
        int64_t elapsed = now - s->last_ms;
        if (elapsed > 0) {
            /* clamp first: rate x elapsed must not overflow after days of silence */
            if (elapsed > full / h->rate + 1)
                elapsed = full / h->rate + 1;
            s->tokens += h->rate * elapsed;
            if (s->tokens > full)
                s->tokens = full;
            s->last_ms = now;
        }
    }
    if (memcmp(s->key, key, sizeof key) == 0)
        return s;
    if (s->key[0] == 0 || s->tokens >= full) {
        memcpy(s->key, key, sizeof key);
        s->tokens = full;
        s->credit = 0;
        s->last_ms = now;
    } else {
        h->stats[NT_LIMIT_SHARED]++;
    }
    return s;
}

static int64_t limiter_now(int64_t now_ms_arg)
{
    return now_ms_arg >= 0 ? now_ms_arg : now_ms();
}

static int bad_limiter_args(const uint8_t *mem, const nt_addr *src, int bytes)
{
    return mem == NULL || src == NULL || (src->family != 4 && src->family != 6) || bytes < 0 ||
           bytes > 65535;
}

/* 1: admit both a request of `in` bytes and its reply of `out` bytes, charged now; 0: neither. */
static int limiter_exchange(uint8_t *mem, const nt_addr *src, int in, int out, int64_t now)
{
    struct limiter_head *h = (struct limiter_head *)mem;
    struct limiter_slot *s = limiter_slot(mem, src, now);
    int64_t win = in + wire_overhead(src), wout = out > 0 ? out + wire_overhead(src) : 0;
    if (s->tokens < (win + wout) * 1000) {
        h->stats[NT_LIMIT_RATE]++;
        return 0;
    }
    /* saved credit (never above the bank) plus what this request earns */
    int64_t credit = s->credit + win * h->factor_pct;
    if (credit < wout * 100) {
        h->stats[NT_LIMIT_AMPLIFICATION]++;
        return 0;
    }
    s->tokens -= (win + wout) * 1000;
    s->credit = credit - wout * 100;
    if (s->credit > h->bank * 100)
        s->credit = h->bank * 100;
    return 1;
}

int nt_limiter_exchange(uint8_t *mem, const nt_addr *src, int in, int out, int64_t now_ms_arg)
{
    if (bad_limiter_args(mem, src, in) || out < 0 || out > 65535)
        return -EINVAL;
    return limiter_exchange(mem, src, in, out, limiter_now(now_ms_arg));
}

int nt_limiter_request(uint8_t *mem, const nt_addr *src, int bytes, int64_t now_ms_arg)
{
    if (bad_limiter_args(mem, src, bytes))
        return -EINVAL;
    return limiter_exchange(mem, src, bytes, 0, limiter_now(now_ms_arg));
}

int nt_limiter_reply(uint8_t *mem, const nt_addr *src, int bytes, int64_t now_ms_arg)
{
    if (bad_limiter_args(mem, src, bytes))
        return -EINVAL;
    struct limiter_head *h = (struct limiter_head *)mem;
    struct limiter_slot *s = limiter_slot(mem, src, limiter_now(now_ms_arg));
    int64_t w = bytes + wire_overhead(src);
    if (s->credit < w * 100) {
        h->stats[NT_LIMIT_AMPLIFICATION]++;
        return 0;
    }
    if (s->tokens < w * 1000) {
        h->stats[NT_LIMIT_RATE]++;
        return 0;
    }
    s->credit -= w * 100;
    s->tokens -= w * 1000;
    return 1;
}

int nt_limiter_stats(const uint8_t *mem, uint64_t *out)
{
    if (mem == NULL || out == NULL)
        return -EINVAL;
    memcpy(out, ((const struct limiter_head *)mem)->stats, sizeof(uint64_t) * NT_LIMIT_STAT_COUNT);
    return 0;
}

int nt_stun_serve_batch(int fd, uint8_t *bufs, int bufsize, int n, int *lens, nt_addr *addrs,
                        const uint8_t *tail, int tail_len, uint8_t *cache, int slots,
                        int window_ms, uint8_t *limiter, uint64_t *stats)
{
    if (tail_len < -1 || tail_len > 512 || (tail_len > 0 && tail == NULL) || stats == NULL ||
        (cache != NULL && (slots <= 0 || (slots & (slots - 1)))) || bufsize < 64)
        return -EINVAL;
    int got = nt_recv_batch(fd, bufs, bufsize, n, lens, addrs);
    if (got <= 0)
        return got;
    static __thread uint8_t out[MAX_BATCH][STUN_HDR + 24 + 512];
    int out_lens[MAX_BATCH];
    nt_addr out_addrs[MAX_BATCH];
    int nout = 0;
    int64_t now = (cache || limiter) ? now_ms() : 0;
    for (int i = 0; i < got; i++) {
        const uint8_t *p = bufs + (size_t)i * bufsize;
        int len = lens[i];
        if (len < 0) { /* cut by the kernel: longer than any request we accept */
            lens[i] = NT_BATCH_OVERSIZED;
            stats[NT_STAT_OVERSIZED]++;
            continue;
        }
        stats[NT_STAT_RECEIVED]++;
        int declared = len >= 4 ? ((p[2] << 8) | p[3]) : -1;
        if (len < STUN_HDR || (p[0] & 0xC0) || declared + STUN_HDR != len || (declared & 3)) {
            lens[i] = NT_BATCH_MALFORMED;
            stats[NT_STAT_MALFORMED]++;
            continue;
        }
        if (cache && seen_recently(cache, slots, window_ms, p + 4, &addrs[i], now)) {
            lens[i] = NT_BATCH_REPLAYED;
            stats[NT_STAT_REPLAYED]++;
            continue;
        }
        /* only the plain RFC 5389 Binding request (bare header) is answered here; the rest goes to
         * Python, which knows every attribute */
        int cookie = p[4] == 0x21 && p[5] == 0x12 && p[6] == 0xA4 && p[7] == 0x42;
        int family_ok = addrs[i].family == 4 || addrs[i].family == 6;
        int bare = tail_len >= 0 && p[0] == 0x00 && p[1] == 0x01 && declared == 0 && cookie &&
                   nout < MAX_BATCH && family_ok;
        if (limiter) {
            /* a bare request is charged with its answer; any other with itself only (Python
             * charges the reply it builds) */
            int out_len = bare ? STUN_HDR + 4 + (addrs[i].family == 4 ? 8 : 20) + tail_len : 0;
            if (!family_ok || !limiter_exchange(limiter, &addrs[i], len, out_len, now)) {
                lens[i] = NT_BATCH_LIMITED;
                stats[NT_STAT_LIMITED]++;
                continue;
            }
        }
        if (!bare)
            continue;
        uint8_t *o = out[nout];
        memcpy(o, p, STUN_HDR);
        o[0] = 0x01;
        o[1] = 0x01;
        int body = put_xor_mapped(o + STUN_HDR, &addrs[i], p + 4);
        memcpy(o + STUN_HDR + body, tail, (size_t)tail_len);
        body += tail_len;
        o[2] = (uint8_t)(body >> 8);
        o[3] = (uint8_t)(body & 0xff);
        out_lens[nout] = STUN_HDR + body;
        out_addrs[nout] = addrs[i];
        nout++;
        lens[i] = NT_BATCH_ANSWERED;
    }
    int done = 0;
    while (done < nout) {
        struct batch b;
        int k = nout - done;
        for (int j = 0; j < k; j++) {
            socklen_t sl = to_sockaddr(&out_addrs[done + j], &b.ss[j]);
            nt_msg_slot(&b.msgs[j], &b.iov[j], out[done + j], (size_t)out_lens[done + j], &b.ss[j], sl);
        }
        int sent = sendmmsg(fd, b.msgs, (unsigned)k, MSG_DONTWAIT);
        if (sent <= 0) {
            /* a full socket buffer or an ICMP error left on the socket: UDP may drop, but count */
            stats[NT_STAT_SEND_ERRORS] += (uint64_t)(nout - done);
            break;
        }
        stats[NT_STAT_ANSWERED] += (uint64_t)sent;
        done += sent;
    }
    return got;
}

/* ---- STUN load generator (bench/bench_stun.py): the same load for every server under test ---- */

#include <poll.h>

int nt_stun_load(int fd, const nt_addr *server, int inflight, int duration_ms, uint64_t *out)
{
    if (fd < 0 || server == NULL || out == NULL || inflight <= 0 || inflight > MAX_BATCH ||
        duration_ms <= 0)
        return -EINVAL;
    struct sockaddr_storage dst;
    socklen_t dlen = to_sockaddr(server, &dst);
    if (dlen == 0)
        return -EAFNOSUPPORT;
    static __thread uint8_t req[MAX_BATCH][STUN_HDR];
    static __thread uint8_t resp[MAX_BATCH][256];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    uint64_t counter = 0, sent = 0, received = 0, stalls = 0;
    int outstanding = 0;
    int64_t end = now_ms() + duration_ms;
    while (now_ms() < end) {
        int k = inflight - outstanding;
        if (k > 0) {
            for (int i = 0; i < k; i++) {
                uint8_t *r = req[i];
                memset(r, 0, STUN_HDR);
                r[1] = 0x01;
                r[4] = 0x21; r[5] = 0x12; r[6] = 0xA4; r[7] = 0x42;
                uint64_t c = ++counter; /* a fresh transaction ID every time: no replays */
                memcpy(r + 8, &c, sizeof c);
                nt_msg_slot(&msgs[i], &iov[i], r, STUN_HDR, &dst, dlen);
            }
            int n = sendmmsg(fd, msgs, (unsigned)k, MSG_DONTWAIT);
            if (n > 0) {
                sent += (uint64_t)n;
                outstanding += n;
            }
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, 20);
        if (pr == 0) {
            /* nothing for 20 ms: whatever was in flight is lost; start a fresh window */
            outstanding = 0;
            stalls++;
            continue;
        }
        if (pr < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < MAX_BATCH; i++)
            nt_msg_slot(&msgs[i], &iov[i], resp[i], sizeof resp[i], NULL, 0);
        int got = recvmmsg(fd, msgs, MAX_BATCH, MSG_DONTWAIT, NULL);
        for (int i = 0; i < got; i++) {
            const uint8_t *p = resp[i];
            if (msgs[i].msg_len >= STUN_HDR && p[0] == 0x01 && p[1] == 0x01 && p[4] == 0x21) {
                received++;
                if (outstanding > 0)
                    outstanding--;
            }
        }
    }
    out[0] = sent;
    out[1] = received;
    out[2] = stalls;
    return 0;
}
