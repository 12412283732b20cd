/*
 * loadgen: the load generator (and a C echo server) of bench/udp_echo.py and
 * bench/tcp_echo.py. Built at bench time with the machine's cc into bench/build/.
 *
 *   loadgen udp HOST PORT SIZE WINDOW SECONDS [WARMUP [FLOWS]]
 *       Keeps WINDOW datagrams of SIZE bytes in flight to an echo server and prints one
 *       JSON line: echoes per second over SECONDS (after WARMUP), RTT p50/p99, losses.
 *       Sends with UDP GSO (UDP_SEGMENT, many datagrams per sendmsg) when the kernel
 *       takes it, else sendmmsg; receives with recvmmsg. After a partial receive batch
 *       it naps ~100 us (window > 1 only) so echoes pile up into bigger batches: the
 *       generator must not be the bottleneck. Each datagram carries its sequence number
 *       and send time; a window that goes silent for 200 ms is counted lost and refilled.
 *       With FLOWS > 1 the load is spread over FLOWS sockets (one source port each, the
 *       window shared out evenly), so a server's SO_REUSEPORT group sees FLOWS 4-tuples
 *       for the kernel's hash to spread; each flow's silence is detected on its own.
 *   loadgen echo HOST PORT [reuse]
 *       A recvmmsg/sendmmsg echo server (batch 64): what the machine can do without
 *       Python; shows the generator's headroom. Prints its port, then serves until killed.
 *       With "reuse" it sets SO_REUSEPORT, so several can share one port.
 *   loadgen tcp HOST PORT CONNS CHUNK WINDOW SECONDS [WARMUP]
 *       CONNS connections to a TCP echo server, each keeping up to WINDOW bytes sent and
 *       not yet echoed, written in CHUNK-byte writes; prints echoed bytes per second.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define BATCH 64
#define RING 65536
#define HIST_US 1000000 /* RTT histogram: 1 us buckets up to 1 s */

static uint32_t hist[HIST_US + 1];
static uint64_t ring[RING];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static int die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    return 1;
}

static int make_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return AF_INET6;
    }
    fprintf(stderr, "loadgen: %s is not an IP address\n", host);
    return -1;
}

static double percentile_us(uint64_t total, double p) {
    if (total == 0) return 0.0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)(total - 1)) + 1, seen = 0;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen >= rank) return (double)i;
    }
    return (double)HIST_US;
}

/* ------------------------------------------------------------------ UDP client */

static void stamp(char *p, uint64_t seq, uint64_t t) {
    memcpy(p, &seq, 8);
    memcpy(p + 8, &t, 8);
}

#define MAX_FLOWS 256

struct flow {
    int fd;
    uint64_t outstanding, window, last_rx, received;
};

static struct flow flows[MAX_FLOWS];
static uint16_t ring_flow[RING]; /* the flow a datagram in the ring was sent on */

/* send on flow f until its window is full (GSO when the kernel takes it, else sendmmsg) */
static void fill_flow(struct flow *fl, uint16_t f, int size, int *gso, int max_gso, char *sbuf,
                      struct mmsghdr *smsg, uint64_t *seq, int measuring, uint64_t *m_sent,
                      uint64_t *gso_sends, uint64_t *mmsg_sends) {
    while (fl->outstanding < fl->window) {
        int n = (int)(fl->window - fl->outstanding);
        if (n > BATCH) n = BATCH;
        if (*gso && n > max_gso) n = max_gso;
        uint64_t ts = now_ns();
        for (int i = 0; i < n; i++) stamp(sbuf + (size_t)i * size, *seq + (uint64_t)i, ts);
        int sent;
        if (*gso && n > 1) {
            char ctl[CMSG_SPACE(sizeof(uint16_t))];
            struct iovec iov = {sbuf, (size_t)n * size};
            struct msghdr mh = {0};
            mh.msg_iov = &iov;
            mh.msg_iovlen = 1;
            mh.msg_control = ctl;
            mh.msg_controllen = sizeof ctl;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)size;
            memcpy(CMSG_DATA(cm), &seg, sizeof seg);
            ssize_t r = sendmsg(fl->fd, &mh, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) break;
                *gso = 0; /* not supported here: fall back to sendmmsg */
                continue;
            }
            sent = n;
            (*gso_sends)++;
        } else {
            sent = sendmmsg(fl->fd, smsg, (unsigned)n, 0);
            if (sent <= 0) break;
            (*mmsg_sends)++;
        }
        for (int i = 0; i < sent; i++) {
            uint64_t s = *seq + (uint64_t)i;
            ring[s % RING] = s;
            ring_flow[s % RING] = f;
        }
        *seq += (uint64_t)sent;
        fl->outstanding += (uint64_t)sent;
        if (measuring) *m_sent += (uint64_t)sent;
    }
}

static int udp_client(int argc, char **argv) {
    if (argc < 7)
        return fprintf(stderr, "usage: loadgen udp HOST PORT SIZE WINDOW SECONDS [WARMUP [FLOWS]]\n"), 2;
    const char *host = argv[2];
    int port = atoi(argv[3]), size = atoi(argv[4]), window = atoi(argv[5]);
    double seconds = atof(argv[6]), warmup = argc > 7 ? atof(argv[7]) : 0.2;
    int nflows = argc > 8 ? atoi(argv[8]) : 1;
    if (size < 16) size = 16;
    if (window < 1) window = 1;
    if (window > RING / 2) window = RING / 2;
    if (nflows < 1) nflows = 1;
    if (nflows > MAX_FLOWS) nflows = MAX_FLOWS;
    if (nflows > window) nflows = window;
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fam = make_addr(host, port, &ss, &sslen);
    if (fam < 0) return 2;
    struct pollfd pfds[MAX_FLOWS];
    for (int f = 0; f < nflows; f++) {
        /* one socket per flow: each gets its own source port, so the server side's
           SO_REUSEPORT hash (over the 4-tuple) can spread the flows */
        int fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0) return die("socket");
        int big = (4 << 20) / nflows > (256 << 10) ? (4 << 20) / nflows : (256 << 10);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) return die("connect");
        flows[f].fd = fd;
        flows[f].outstanding = flows[f].received = 0;
        /* the window is shared out: flow f keeps window / nflows (+1 for the first few) */
        flows[f].window = (uint64_t)(window / nflows + (f < window % nflows ? 1 : 0));
        pfds[f].fd = fd;
        pfds[f].events = POLLIN;
    }

    int max_gso = 65000 / size;
    if (max_gso > BATCH) max_gso = BATCH;
    int gso = max_gso > 1;
    char *sbuf = calloc((size_t)BATCH, (size_t)size);
    size_t rsz = (size_t)size + 64;
    char *rbuf = malloc(rsz * BATCH);
    struct mmsghdr smsg[BATCH], rmsg[BATCH];
    struct iovec siov[BATCH], riov[BATCH];
    memset(smsg, 0, sizeof smsg);
    memset(rmsg, 0, sizeof rmsg);
    for (int i = 0; i < BATCH; i++) {
        siov[i].iov_base = sbuf + (size_t)i * size;
        siov[i].iov_len = (size_t)size;
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
        riov[i].iov_base = rbuf + (size_t)i * rsz;
        riov[i].iov_len = rsz;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < RING; i++) ring[i] = UINT64_MAX;

    uint64_t seq = 0, lost = 0, m_recv = 0, m_sent = 0, samples = 0;
    uint64_t gso_sends = 0, mmsg_sends = 0;
    uint64_t t0 = now_ns(), t_measure = t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(seconds * 1e9);
    for (int f = 0; f < nflows; f++) flows[f].last_rx = t0;
    int measuring = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            memset(hist, 0, sizeof hist);
            m_recv = m_sent = samples = 0;
            for (int f = 0; f < nflows; f++) flows[f].received = 0;
        }
        if (t >= t_end) break;
        /* send until every flow's window is full */
        for (int f = 0; f < nflows; f++)
            fill_flow(&flows[f], (uint16_t)f, size, &gso, max_gso, sbuf, smsg, &seq, measuring,
                      &m_sent, &gso_sends, &mmsg_sends);
        /* receive what came back, on every flow */
        int got = 0;
        for (int f = 0; f < nflows; f++) {
            struct flow *fl = &flows[f];
            int r = recvmmsg(fl->fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
            if (r <= 0) continue;
            uint64_t tr = now_ns();
            fl->last_rx = tr;
            got += r;
            for (int i = 0; i < r; i++) {
                if (rmsg[i].msg_len < 16) continue;
                uint64_t s, ts;
                memcpy(&s, riov[i].iov_base, 8);
                memcpy(&ts, (char *)riov[i].iov_base + 8, 8);
                if (ring[s % RING] != s) continue; /* late echo of a datagram counted lost */
                ring[s % RING] = UINT64_MAX;
                if (fl->outstanding) fl->outstanding--;
                if (measuring) {
                    uint64_t us = (tr - ts) / 1000;
                    hist[us > HIST_US ? HIST_US : us]++;
                    samples++;
                    m_recv++;
                    fl->received++;
                }
            }
        }
        if (got > 0) {
            if (window > 1 && got < BATCH) nap_us(100);
            continue;
        }
        if (poll(pfds, (nfds_t)nflows, window > 1 ? 1 : 5) > 0) continue;
        /* a flow silent for 200 ms with datagrams out: count them lost and refill it */
        uint64_t tn = now_ns();
        for (int f = 0; f < nflows; f++) {
            struct flow *fl = &flows[f];
            if (!fl->outstanding || tn - fl->last_rx <= 200000000ull) continue;
            uint64_t lo = seq > (uint64_t)RING / 2 ? seq - RING / 2 : 0;
            for (uint64_t s = lo; s < seq; s++)
                if (ring[s % RING] == s && ring_flow[s % RING] == f) {
                    ring[s % RING] = UINT64_MAX;
                    lost++;
                }
            fl->outstanding = 0;
            fl->last_rx = tn;
        }
    }
    uint64_t fmin = UINT64_MAX, fmax = 0;
    for (int f = 0; f < nflows; f++) {
        if (flows[f].received < fmin) fmin = flows[f].received;
        if (flows[f].received > fmax) fmax = flows[f].received;
    }
    printf("{\"mode\": \"udp\", \"size\": %d, \"window\": %d, \"flows\": %d, \"seconds\": %.3f, "
           "\"pps\": %.1f, \"sent\": %llu, \"received\": %llu, \"lost\": %llu, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"gso_sends\": %llu, \"mmsg_sends\": %llu, "
           "\"flow_received_min\": %llu, \"flow_received_max\": %llu}\n",
           size, window, nflows, seconds, (double)m_recv / seconds, (unsigned long long)m_sent,
           (unsigned long long)m_recv, (unsigned long long)lost, percentile_us(samples, 50),
           percentile_us(samples, 99), (unsigned long long)gso_sends,
           (unsigned long long)mmsg_sends, (unsigned long long)fmin, (unsigned long long)fmax);
    return 0;
}

/* ------------------------------------------------------------------ C echo server */

static int udp_echo(int argc, char **argv) {
    if (argc < 4) return fprintf(stderr, "usage: loadgen echo HOST PORT [reuse]\n"), 2;
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fam = make_addr(argv[2], atoi(argv[3]), &ss, &sslen);
    if (fam < 0) return 2;
    int fd = socket(fam, SOCK_DGRAM, 0);
    if (fd < 0) return die("socket");
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (argc > 4 && strcmp(argv[4], "reuse") == 0) {
        int one = 1; /* several echo processes on one port (the kernel spreads the flows) */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    if (bind(fd, (struct sockaddr *)&ss, sslen) < 0) return die("bind");
    socklen_t l = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &l);
    printf("%d\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
    fflush(stdout);
    static char buf[BATCH][65536];
    struct mmsghdr msg[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage from[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = sizeof buf[i];
            memset(&msg[i], 0, sizeof msg[i]);
            msg[i].msg_hdr.msg_iov = &iov[i];
            msg[i].msg_hdr.msg_iovlen = 1;
            msg[i].msg_hdr.msg_name = &from[i];
            msg[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(fd, msg, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        for (int i = 0; i < n; i++) iov[i].iov_len = msg[i].msg_len;
        sendmmsg(fd, msg, (unsigned)n, 0);
    }
}

/* ------------------------------------------------------------------ TCP client */

struct conn {
    int fd;
    uint64_t outstanding;
};

static int tcp_client(int argc, char **argv) {
    if (argc < 8)
        return fprintf(stderr, "usage: loadgen tcp HOST PORT CONNS CHUNK WINDOW SECONDS [WARMUP]\n"), 2;
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fam = make_addr(argv[2], atoi(argv[3]), &ss, &sslen);
    if (fam < 0) return 2;
    int nconn = atoi(argv[4]), chunk = atoi(argv[5]), window = atoi(argv[6]);
    double seconds = atof(argv[7]), warmup = argc > 8 ? atof(argv[8]) : 0.2;
    if (nconn < 1 || chunk < 1 || window < chunk) return fprintf(stderr, "loadgen: bad tcp args\n"), 2;
    char *wbuf = calloc(1, (size_t)chunk);
    size_t rcap = 1 << 18;
    char *rbuf = malloc(rcap);
    struct conn *c = calloc((size_t)nconn, sizeof *c);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(fam, SOCK_STREAM, 0);
        if (fd < 0) return die("socket");
        if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) return die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        c[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    uint64_t t0 = now_ns(), t_measure = t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(seconds * 1e9), m_bytes = 0, errors = 0;
    int measuring = 0;
    struct epoll_event evs[256];
    while (1) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_measure) measuring = 1, m_bytes = 0;
        if (t >= t_end) break;
        int n = epoll_wait(ep, evs, 256, 5);
        for (int k = 0; k < n; k++) {
            struct conn *x = &c[evs[k].data.u32];
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                for (;;) {
                    ssize_t r = read(x->fd, rbuf, rcap);
                    if (r > 0) {
                        x->outstanding -= (uint64_t)r < x->outstanding ? (uint64_t)r : x->outstanding;
                        if (measuring) m_bytes += (uint64_t)r;
                        continue;
                    }
                    if (r == 0 || (errno != EAGAIN && errno != EINTR)) errors++;
                    break;
                }
            }
            while (x->outstanding + (uint64_t)chunk <= (uint64_t)window) {
                ssize_t w = write(x->fd, wbuf, (size_t)chunk);
                if (w <= 0) break;
                x->outstanding += (uint64_t)w;
            }
        }
    }
    printf("{\"mode\": \"tcp\", \"conns\": %d, \"chunk\": %d, \"window\": %d, \"seconds\": %.3f, "
           "\"bytes_per_s\": %.1f, \"errors\": %llu}\n",
           nconn, chunk, window, seconds, (double)m_bytes / seconds, (unsigned long long)errors);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "udp") == 0) return udp_client(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "echo") == 0) return udp_echo(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "tcp") == 0) return tcp_client(argc, argv);
    fprintf(stderr, "usage: loadgen udp|echo|tcp ... (see the comment atop bench/loadgen.c)\n");
    return 2;
}
