/* The NAT lab's delay line: forwards Ethernet frames between two interfaces in both directions, each
 * direction with its own one-way delay distribution, random loss, optional reordering, a rate limit
 * and a bound on the frames it holds. This kernel has no netem, so the lab does it here.
 *
 * Frames are read and written through AF_PACKET sockets with virtio-net headers: a frame whose checksum
 * the sender left to "hardware" (veths do that) or that is a TSO super-frame keeps that state across the
 * line, so nothing has to be recomputed. Each direction keeps its frames in a min-heap ordered by due
 * time; one poll loop receives in batches (recvmmsg), sends what is due in batches (sendmmsg) and sleeps
 * with nanosecond timeouts until the next due time. Only IPv4 frames are impaired: ARP crosses at once,
 * so an impaired link does not also measure the neighbour cache's retry timers.
 */
#define _GNU_SOURCE
#include "nattrav_core.h"

#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define VNET_LEN 10           /* struct virtio_net_hdr, in front of every frame */
#define SLOT 2048             /* one MTU-sized frame with its header; larger ones (TSO) are malloc'd */
#define BIG (65536 + 256)     /* the rest of a super-frame, read into a per-message scratch buffer */
#define BATCH 64
#define RECV_ROUNDS 8         /* batches read per wake-up before due frames get their turn */
#define VNET_F_DATA_VALID 2   /* receive-only flag: must not go back out */
/* A frame due within this much is sent now: under load the line wakes every few frames instead of
 * once per frame (netem's timers have the same slack), and 20 us is far below any delay asked for. */
#define SEND_EARLY_NS 20000

int nt_wire_open(int ifindex, int bufsize)
{
    if (ifindex <= 0)
        return -EINVAL;
    /* protocol 0: nothing is queued until bind() names the interface */
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
        goto fail;
    if (bufsize > 0) {
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    }
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        goto fail;
    /* frames addressed to the far end's MAC must reach us too */
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = ifindex;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0)
        goto fail;
    return fd;
fail:;
    int err = errno;
    close(fd);
    return -err;
}

/* ---- random draws (splitmix64: small, fast, good enough for loss and jitter) ---- */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) /* [0, 1) */
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static double rng_normal(uint64_t *s)
{
    double u = rng_unit(s), v = rng_unit(s);
    if (u < 1e-300)
        u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* ---- one direction ---- */
typedef struct {
    int64_t due;
    uint64_t seq;
    uint8_t *buf;
    int32_t len;
    int32_t slot; /* -1: buf was malloc'd (a frame larger than SLOT) */
} item;

typedef struct {
    nt_wire_dir cfg;
    nt_wire_stats *st;
    int in_fd, out_fd;
    item *heap; /* a min-heap when frames may reorder, else a ring in arrival (= due) order */
    int n, cap, head;
    uint8_t *slots;
    int32_t *free_slots;
    int nfree;
    int64_t last_due, link_free;
    uint64_t seq;
    int blocked; /* the egress socket said EAGAIN: wait for POLLOUT */
} dir_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int before(const item *a, const item *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(dir_t *d, item it)
{
    int i = d->n++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!before(&it, &d->heap[p]))
            break;
        d->heap[i] = d->heap[p];
        i = p;
    }
    d->heap[i] = it;
}

static item heap_pop(dir_t *d)
{
    item top = d->heap[0], last = d->heap[--d->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= d->n)
            break;
        if (c + 1 < d->n && before(&d->heap[c + 1], &d->heap[c]))
            c++;
        if (!before(&d->heap[c], &last))
            break;
        d->heap[i] = d->heap[c];
        i = c;
    }
    if (d->n > 0)
        d->heap[i] = last;
    return top;
}

/* The queue: a heap when reordering is allowed, otherwise a ring, whose due times only grow. */
static void q_push(dir_t *d, item it)
{
    if (d->cfg.reorder) {
        heap_push(d, it);
        return;
    }
    d->heap[(d->head + d->n) % d->cap] = it;
    d->n++;
}

static item q_pop(dir_t *d)
{
    if (d->cfg.reorder)
        return heap_pop(d);
    item it = d->heap[d->head];
    d->head = (d->head + 1) % d->cap;
    d->n--;
    return it;
}

/* Put back a frame just popped (the egress said EAGAIN): it keeps its place in the order. */
static void q_unpop(dir_t *d, item it)
{
    if (d->cfg.reorder) {
        heap_push(d, it);
        return;
    }
    d->head = (d->head - 1 + d->cap) % d->cap;
    d->heap[d->head] = it;
    d->n++;
}

static const item *q_top(const dir_t *d)
{
    return d->n > 0 ? &d->heap[d->cfg.reorder ? 0 : d->head] : NULL;
}

static void release(dir_t *d, item *it)
{
    if (it->slot >= 0)
        d->free_slots[d->nfree++] = it->slot;
    else
        free(it->buf);
}

static int dir_init(dir_t *d, const nt_wire_dir *cfg, nt_wire_stats *st, int in_fd, int out_fd)
{
    memset(d, 0, sizeof *d);
    d->cfg = *cfg;
    d->st = st;
    d->in_fd = in_fd;
    d->out_fd = out_fd;
    d->cap = cfg->limit;
    d->heap = calloc((size_t)d->cap, sizeof(item));
    d->free_slots = calloc((size_t)d->cap, sizeof(int32_t));
    /* untouched slots cost no memory: only the high-water mark of held frames is ever paged in */
    d->slots = mmap(NULL, (size_t)d->cap * SLOT, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!d->heap || !d->free_slots || d->slots == MAP_FAILED) {
        if (d->slots == MAP_FAILED)
            d->slots = NULL;
        return -ENOMEM;
    }
    /* LIFO reuse keeps the touched part small */
    for (int i = d->cap - 1; i >= 0; i--)
        d->free_slots[d->nfree++] = i;
    return 0;
}

static void dir_free(dir_t *d)
{
    while (d->n > 0) {
        item it = q_pop(d);
        release(d, &it);
    }
    free(d->heap);
    free(d->free_slots);
    if (d->slots)
        munmap(d->slots, (size_t)d->cap * SLOT);
}

static int64_t draw_delay(const nt_wire_dir *c, uint64_t *rng)
{
    double x = (double)c->delay_ns;
    if (c->jitter_ns > 0) {
        if (c->distribution == NT_WIRE_NORMAL)
            x += (double)c->jitter_ns * rng_normal(rng);
        else
            x += (double)c->jitter_ns * (2.0 * rng_unit(rng) - 1.0);
    }
    return x < 0 ? 0 : (int64_t)x;
}

/* A frame arrived at `now`: drop it or give it a due time. */
static void admit(dir_t *d, item it, int64_t now, uint64_t *rng)
{
    nt_wire_stats *st = d->st;
    if (d->n >= d->cap) { /* only possible with oversized frames, which hold no slot */
        st->overflow++;
        release(d, &it);
        return;
    }
    int ipv4 = it.len >= VNET_LEN + 14 && it.buf[VNET_LEN + 12] == 0x08 && it.buf[VNET_LEN + 13] == 0x00;
    if (!ipv4) {
        st->passed++;
        it.due = now;
        it.seq = d->seq++;
        q_push(d, it);
        return;
    }
    if (d->cfg.loss_ppm > 0 && (int64_t)(rng_next(rng) % 1000000) < d->cfg.loss_ppm) {
        st->lost++;
        release(d, &it);
        return;
    }
    int64_t base = now;
    if (d->cfg.rate_bps > 0) {
        /* a bottleneck link: the frame starts when the link is free and takes len*8/rate to cross */
        int64_t start = d->link_free > now ? d->link_free : now;
        int64_t bits = (int64_t)(it.len - VNET_LEN + 24) * 8; /* + preamble, FCS, gap */
        d->link_free = start + (int64_t)((double)bits * 1e9 / (double)d->cfg.rate_bps);
        base = d->link_free;
    }
    int64_t due = base + draw_delay(&d->cfg, rng);
    if (!d->cfg.reorder) {
        if (due < d->last_due)
            due = d->last_due;
        d->last_due = due;
    }
    it.due = due;
    it.seq = d->seq++;
    q_push(d, it);
    if (d->n > st->held_max)
        st->held_max = d->n;
}

/* Read what waits on d->in_fd (a few batches at most). Returns 0 or -errno for a fatal error. */
static int receive(dir_t *d, uint8_t *big, uint8_t *discard, uint64_t *rng)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH][2];
    int32_t slot_of[BATCH];
    for (int round = 0; round < RECV_ROUNDS; round++) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < BATCH; i++) {
            if (d->nfree > 0) {
                slot_of[i] = d->free_slots[--d->nfree];
                iov[i][0].iov_base = d->slots + (size_t)slot_of[i] * SLOT;
            } else {
                slot_of[i] = -1; /* the line is full: read it to drop it */
                iov[i][0].iov_base = discard;
            }
            iov[i][0].iov_len = SLOT;
            iov[i][1].iov_base = big + (size_t)i * BIG;
            iov[i][1].iov_len = BIG;
            msgs[i].msg_hdr.msg_iov = iov[i];
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        int got = recvmmsg(d->in_fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        int err = got < 0 ? errno : 0;
        int64_t now = now_ns();
        for (int i = 0; i < BATCH; i++) {
            int32_t s = slot_of[i];
            if (i >= got || s < 0) {
                if (s >= 0)
                    d->free_slots[d->nfree++] = s; /* unused this round */
                else if (i < got)
                    d->st->overflow++, d->st->received++;
                continue;
            }
            d->st->received++;
            int len = (int)msgs[i].msg_len;
            item it = {.buf = d->slots + (size_t)s * SLOT, .len = len, .slot = s};
            if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len < VNET_LEN) {
                d->st->send_errors++;
                d->free_slots[d->nfree++] = s;
                continue;
            }
            if (len > SLOT) {
                uint8_t *whole = malloc((size_t)len);
                if (!whole) {
                    d->st->overflow++;
                    d->free_slots[d->nfree++] = s;
                    continue;
                }
                memcpy(whole, it.buf, SLOT);
                memcpy(whole + SLOT, iov[i][1].iov_base, (size_t)(len - SLOT));
                d->free_slots[d->nfree++] = s;
                it.buf = whole;
                it.slot = -1;
            }
            it.buf[0] &= (uint8_t)~VNET_F_DATA_VALID;
            admit(d, it, now, rng);
        }
        if (got < 0) {
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
                return 0;
            if (err == ENETDOWN)
                return 0; /* the interface went down: nothing to read until it is back */
            return -err;
        }
        if (got < BATCH)
            return 0;
    }
    return 0;
}

/* Send every frame that is due. */
static void send_due(dir_t *d, int64_t now)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    item out[BATCH];
    d->blocked = 0;
    int64_t horizon = now + SEND_EARLY_NS;
    while (d->n > 0 && q_top(d)->due <= horizon) {
        int k = 0;
        while (k < BATCH && d->n > 0 && q_top(d)->due <= horizon) {
            out[k] = q_pop(d);
            iov[k].iov_base = out[k].buf;
            iov[k].iov_len = (size_t)out[k].len;
            memset(&msgs[k], 0, sizeof msgs[k]);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            k++;
        }
        int done = 0;
        while (done < k) {
            int r = sendmmsg(d->out_fd, msgs + done, (unsigned)(k - done), MSG_DONTWAIT);
            if (r > 0) {
                for (int i = done; i < done + r; i++) {
                    int64_t late = now - out[i].due;
                    if (late > d->st->late_max_ns)
                        d->st->late_max_ns = late;
                    d->st->forwarded++;
                    release(d, &out[i]);
                }
                done += r;
                continue;
            }
            int err = r < 0 ? errno : EIO;
            if (err == EINTR)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK) {
                /* put the rest back (same due times and sequence numbers: order is kept) */
                for (int i = k - 1; i >= done; i--)
                    q_unpop(d, out[i]);
                d->blocked = 1;
                return;
            }
            /* ENOBUFS (the far end's backlog is full), a downed link, ...: that frame is lost */
            d->st->send_errors++;
            d->st->last_errno = err;
            release(d, &out[done]);
            done++;
        }
    }
}

int nt_wire_run(int fd_a, int fd_b, const nt_wire_dir *ab, const nt_wire_dir *ba, uint64_t seed,
                int stop_fd, nt_wire_stats *st_ab, nt_wire_stats *st_ba)
{
    const nt_wire_dir *cfgs[2] = {ab, ba};
    for (int i = 0; i < 2; i++) {
        const nt_wire_dir *c = cfgs[i];
        if (c->delay_ns < 0 || c->jitter_ns < 0 || c->loss_ppm < 0 || c->loss_ppm > 1000000 ||
            c->rate_bps < 0 || c->limit < BATCH || c->limit > NT_WIRE_MAX_LIMIT ||
            (c->distribution != NT_WIRE_UNIFORM && c->distribution != NT_WIRE_NORMAL))
            return -EINVAL;
    }
    /* ppoll sleeps to the nanosecond asked for, not the default 50 us later */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    memset(st_ab, 0, sizeof *st_ab);
    memset(st_ba, 0, sizeof *st_ba);
    dir_t d[2];
    int rc = dir_init(&d[0], ab, st_ab, fd_a, fd_b);
    int rc2 = dir_init(&d[1], ba, st_ba, fd_b, fd_a);
    uint8_t *big = malloc((size_t)BATCH * BIG);
    uint8_t *discard = malloc(SLOT);
    uint64_t rng = seed ? seed : (uint64_t)now_ns();
    if (rc == 0)
        rc = rc2;
    if (rc == 0 && (!big || !discard))
        rc = -ENOMEM;
    while (rc == 0) {
        int64_t now = now_ns();
        send_due(&d[0], now);
        send_due(&d[1], now);
        int64_t next = -1;
        for (int i = 0; i < 2; i++) {
            if (d[i].n > 0 && !d[i].blocked && (next < 0 || q_top(&d[i])->due < next))
                next = q_top(&d[i])->due;
        }
        struct pollfd pfd[3] = {
            {.fd = fd_a, .events = POLLIN | (d[1].blocked ? POLLOUT : 0)},
            {.fd = fd_b, .events = POLLIN | (d[0].blocked ? POLLOUT : 0)},
            {.fd = stop_fd, .events = POLLIN},
        };
        struct timespec ts, *tsp = NULL;
        if (next >= 0) {
            int64_t wait = next - SEND_EARLY_NS - now_ns();
            if (wait < 0)
                wait = 0;
            ts.tv_sec = wait / 1000000000;
            ts.tv_nsec = wait % 1000000000;
            tsp = &ts;
        }
        int pr = ppoll(pfd, stop_fd >= 0 ? 3 : 2, tsp, NULL);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (stop_fd >= 0 && (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)))
            break;
        for (int i = 0; i < 2 && rc == 0; i++) {
            if (pfd[i].revents & (POLLERR | POLLNVAL)) {
                rc = (pfd[i].revents & POLLNVAL) ? -EBADF : 0;
                if (rc == 0) {
                    /* a pending socket error (e.g. the link went away): read and carry on */
                    int soerr = 0;
                    socklen_t sl = sizeof soerr;
                    getsockopt(pfd[i].fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                }
            }
            if (rc == 0 && (pfd[i].revents & POLLIN))
                rc = receive(&d[i], big, discard, &rng);
        }
    }
    dir_free(&d[0]);
    dir_free(&d[1]);
    free(big);
    free(discard);
    return rc;
}
