/* The floor the burst core is measured against: the shortest C that does the same work.
 *
 *   bare_burst open  COUNT ROUNDS IP           open+bind+IP_TTL+getsockname COUNT sockets, close; best
 *                                              and median round in ns
 *   bare_burst send  SOCKS PROBES SRC DST PORT0 [mmsg|sendto] [ROUNDS]
 *                                              each of SOCKS sockets sends PROBES packets (28 bytes) to
 *                                              DST:PORT0+k, ROUNDS times (the first warms the route
 *                                              caches); prints packets and ns of the best round
 * Output is one line of JSON. EAGAIN is waited out with poll, like the core does. Beside the wall
 * times, cpu_* are this process's CPU time (CLOCK_PROCESS_CPUTIME_ID, softirq work done in its context
 * included): on a shared machine a round can wait for a CPU, which wall time counts and CPU time not. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int open_one(uint32_t ip)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int ttl = 64;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = ip};
    socklen_t len = sizeof sa;
    if (setsockopt(fd, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && !strcmp(argv[1], "open")) {
        int count = atoi(argv[2]), rounds = atoi(argv[3]);
        uint32_t ip = inet_addr(argv[4]);
        int *fds = calloc(count, sizeof *fds);
        int64_t *t = calloc(rounds, sizeof *t), *c = calloc(rounds, sizeof *c);
        for (int r = 0; r < rounds; r++) {
            int64_t t0 = now_ns(), c0 = cpu_ns();
            for (int i = 0; i < count; i++)
                if ((fds[i] = open_one(ip)) < 0) {
                    perror("open");
                    return 1;
                }
            t[r] = now_ns() - t0;
            c[r] = cpu_ns() - c0;
            for (int i = 0; i < count; i++)
                close(fds[i]);
        }
        qsort(t, rounds, sizeof *t, cmp64);
        qsort(c, rounds, sizeof *c, cmp64);
        printf("{\"best_ns\": %lld, \"median_ns\": %lld, \"cpu_best_ns\": %lld, \"cpu_median_ns\": %lld}\n",
               (long long)t[0], (long long)t[rounds / 2], (long long)c[0], (long long)c[rounds / 2]);
        return 0;
    }
    if (argc >= 7 && !strcmp(argv[1], "send")) {
        int socks = atoi(argv[2]), probes = atoi(argv[3]);
        uint32_t src = inet_addr(argv[4]), dst = inet_addr(argv[5]);
        int port0 = atoi(argv[6]);
        int use_sendto = argc > 7 && !strcmp(argv[7], "sendto");
        int rounds = argc > 8 ? atoi(argv[8]) : 1;
        int *fds = calloc(socks, sizeof *fds);
        for (int i = 0; i < socks; i++)
            if ((fds[i] = open_one(src)) < 0) {
                perror("open");
                return 1;
            }
        enum { B = 1024 };
        static struct mmsghdr m[B];
        static struct sockaddr_in sa[B];
        static struct iovec iov[B];
        static char payload[28] = "nattrav-bare-burst-probe....";
        long long sent = 0, waits = 0;
        if (rounds < 1)
            rounds = 1;
        int64_t *times = calloc(rounds, sizeof *times), *cpus = calloc(rounds, sizeof *cpus);
        for (int round = 0; round < rounds; round++) {
        sent = 0;
        int64_t t0 = now_ns(), c0 = cpu_ns();
        for (int s = 0; s < socks; s++) {
            for (int k = 0; k < probes;) {
                int cnt = probes - k < B ? probes - k : B;
                if (use_sendto) {
                    struct sockaddr_in d = {.sin_family = AF_INET, .sin_addr.s_addr = dst,
                                            .sin_port = htons(port0 + k)};
                    if (sendto(fds[s], payload, sizeof payload, 0, (struct sockaddr *)&d, sizeof d) == sizeof payload) {
                        sent++;
                        k++;
                        continue;
                    }
                } else {
                    for (int j = 0; j < cnt; j++) {
                        sa[j] = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = dst,
                                                     .sin_port = htons(port0 + k + j)};
                        iov[j] = (struct iovec){payload, sizeof payload};
                        m[j].msg_hdr = (struct msghdr){.msg_name = &sa[j], .msg_namelen = sizeof sa[j],
                                                       .msg_iov = &iov[j], .msg_iovlen = 1};
                    }
                    int r = sendmmsg(fds[s], m, cnt, 0);
                    if (r > 0) {
                        sent += r;
                        k += r;
                        continue;
                    }
                }
                if (errno == EAGAIN || errno == ENOBUFS) {
                    waits++;
                    struct pollfd p = {fds[s], POLLOUT, 0};
                    poll(&p, 1, 100);
                    continue;
                }
                perror("send");
                return 1;
            }
        }
        int64_t dt = now_ns() - t0;
        times[round] = dt;
        cpus[round] = cpu_ns() - c0;
        }
        /* round 0 warmed the route caches; with more rounds it is left out */
        int skip = rounds > 1;
        qsort(times + skip, rounds - skip, sizeof *times, cmp64);
        qsort(cpus + skip, rounds - skip, sizeof *cpus, cmp64);
        printf("{\"packets\": %lld, \"ns\": %lld, \"median_ns\": %lld, \"cpu_ns\": %lld, \"cpu_median_ns\": %lld, "
               "\"waits\": %lld}\n", sent, (long long)times[skip], (long long)times[skip + (rounds - skip) / 2],
               (long long)cpus[skip], (long long)cpus[skip + (rounds - skip) / 2], waits);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of bare_burst.c\n");
    return 2;
}
