/* echo_load: single-threaded epoll echo load generator that verifies every echoed byte and prints one RESULT line. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Every read uses one big buffer so a burst of echoes costs one syscall. */
#define RBUF_SIZE (256 * 1024)
/* The expected stream is a repeating random pattern. A prime period that is not
 * a multiple of any message size means a duplicated, dropped or reordered
 * message shows up as a mismatch, not as an identical copy. */
#define PAT_PERIOD 65521u
/* The pattern buffer is PERIOD + RBUF_SIZE long, so any stream offset has up to
 * RBUF_SIZE contiguous expected bytes: one memcmp per read, one send per chunk. */
#define PAT_LEN (PAT_PERIOD + RBUF_SIZE)
#define CONNECT_TIMEOUT_MS 5000
#define MAX_EVENTS 256

struct conn {
    int fd;
    int id;
    uint32_t shift;     /* per-connection start in the pattern (distinct per id) */
    bool want_out;      /* EPOLLOUT currently registered */
    /* The send queue is implicit: the content is deterministic, so the queue is
     * just the stream range [sent, target). */
    uint64_t sent;      /* bytes written so far */
    uint64_t target;    /* bytes that should have been written so far */
    uint64_t recvd;     /* bytes read back and verified */
};

static const char *opt_host = "127.0.0.1";
static const char *opt_port;
static const char *opt_unix;
static long opt_conns = 50;
static long opt_size = 64;
static long opt_depth = 1;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;

static uint8_t *pat;
static uint8_t *rbuf;
static int epfd;
static uint64_t msgs_total;     /* completed round trips, all connections */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("echo_load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: echo_load [--host H --port N | --unix PATH] [--conns N] [--size BYTES]\n"
        "                 [--depth N] [--duration SECONDS] [--warmup SECONDS]\n"
        "defaults: --host 127.0.0.1 --conns 50 --size 64 --depth 1 --duration 5 --warmup 1\n");
}

static long parse_long(const char *name, const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        die("bad value for --%s: '%s' (want %ld..%ld)", name, s, min, max);
    return v;
}

static double parse_secs(const char *name, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0 || v > 86400)
        die("bad value for --%s: '%s' (want seconds, 0..86400)", name, s);
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"unix", required_argument, 0, 'u'},
        {"conns", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},
        {"depth", required_argument, 0, 'd'},
        {"duration", required_argument, 0, 't'},
        {"warmup", required_argument, 0, 'w'},
        {"help", no_argument, 0, 'H'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = optarg; parse_long("port", optarg, 1, 65535); break;
        case 'u': opt_unix = optarg; break;
        case 'c': opt_conns = parse_long("conns", optarg, 1, 60000); break;
        case 's': opt_size = parse_long("size", optarg, 1, 64L << 20); break;
        case 'd': opt_depth = parse_long("depth", optarg, 1, 1 << 20); break;
        case 't': opt_duration = parse_secs("duration", optarg); break;
        case 'w': opt_warmup = parse_secs("warmup", optarg); break;
        case 'H': usage(stdout); exit(0);
        default: usage(stderr); exit(1);
        }
    }
    if (optind < argc) {
        usage(stderr);
        die("unexpected argument '%s'", argv[optind]);
    }
    if (!opt_unix && !opt_port) {
        usage(stderr);
        die("need --port N or --unix PATH");
    }
    if (opt_unix && opt_port)
        die("--port and --unix are mutually exclusive");
    if (opt_duration <= 0)
        die("--duration must be > 0");
}

static void make_pattern(void)
{
    pat = malloc(PAT_LEN);
    rbuf = malloc(RBUF_SIZE);
    if (!pat || !rbuf)
        die("out of memory");
    /* xorshift64: fixed seed so every run sends the same bytes. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < PAT_PERIOD; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pat[i] = (uint8_t)(x >> 32);
    }
    for (uint32_t i = PAT_PERIOD; i < PAT_LEN; i++)
        pat[i] = pat[i - PAT_PERIOD];
}

/* Address resolution once; every connection reuses it. */
static struct sockaddr_storage peer;
static socklen_t peer_len;
static int peer_family;
static char peer_name[300];

static void resolve_peer(void)
{
    if (opt_unix) {
        struct sockaddr_un *su = (struct sockaddr_un *)&peer;
        if (strlen(opt_unix) >= sizeof(su->sun_path))
            die("unix socket path too long: %s", opt_unix);
        su->sun_family = AF_UNIX;
        strcpy(su->sun_path, opt_unix);
        peer_len = sizeof(*su);
        peer_family = AF_UNIX;
        snprintf(peer_name, sizeof(peer_name), "unix:%s", opt_unix);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(opt_host, opt_port, &hints, &res);
    if (rc)
        die("cannot resolve %s:%s: %s", opt_host, opt_port, gai_strerror(rc));
    memcpy(&peer, res->ai_addr, res->ai_addrlen);
    peer_len = res->ai_addrlen;
    peer_family = res->ai_family;
    freeaddrinfo(res);
    snprintf(peer_name, sizeof(peer_name), "%s:%s", opt_host, opt_port);
}

/* Non-blocking connect with a timeout, so a server that never accepts cannot
 * hang the benchmark. */
static int connect_one(int idx)
{
    int fd = socket(peer_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&peer, peer_len) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN)
            die("connect #%d to %s failed: %s", idx, peer_name, strerror(errno));
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do {
            n = poll(&p, 1, CONNECT_TIMEOUT_MS);
        } while (n < 0 && errno == EINTR);
        if (n == 0)
            die("connect #%d to %s timed out after %d ms", idx, peer_name, CONNECT_TIMEOUT_MS);
        int err = 0;
        socklen_t len = sizeof(err);
        if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err)
            die("connect #%d to %s failed: %s", idx, peer_name, strerror(err));
    }
    if (peer_family != AF_UNIX) {
        /* Small messages must go out immediately, not wait for Nagle. */
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
            die("TCP_NODELAY: %s", strerror(errno));
    }
    return fd;
}

static void set_events(struct conn *c, bool want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = want_out;
}

static inline uint32_t pat_pos(const struct conn *c, uint64_t off)
{
    return (uint32_t)((off + c->shift) % PAT_PERIOD);
}

/* Write as much of [sent, target) as the socket takes; EPOLLOUT only while
 * something is left, so the common case costs no epoll_ctl. */
static void flush_conn(struct conn *c)
{
    while (c->sent < c->target) {
        uint64_t left = c->target - c->sent;
        size_t len = left > RBUF_SIZE ? RBUF_SIZE : (size_t)left;
        ssize_t n = send(c->fd, pat + pat_pos(c, c->sent), len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, true);
                return;
            }
            die("conn %d: send failed: %s", c->id, strerror(errno));
        }
        c->sent += (uint64_t)n;
    }
    set_events(c, false);
}

static void report_mismatch(const struct conn *c, const uint8_t *got, size_t n)
{
    const uint8_t *want = pat + pat_pos(c, c->recvd);
    size_t i = 0;
    while (i < n && got[i] == want[i])
        i++;
    die("conn %d: echo mismatch at stream offset %llu (message %llu, byte %llu): "
        "expected 0x%02x, got 0x%02x",
        c->id, (unsigned long long)(c->recvd + i),
        (unsigned long long)((c->recvd + i) / (uint64_t)opt_size),
        (unsigned long long)((c->recvd + i) % (uint64_t)opt_size), want[i], got[i]);
}

static void read_conn(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            die("conn %d: recv failed: %s", c->id, strerror(errno));
        }
        if (n == 0)
            die("conn %d: server closed the connection after echoing %llu bytes",
                c->id, (unsigned long long)c->recvd);
        if (c->recvd + (uint64_t)n > c->sent)
            die("conn %d: server echoed %llu bytes but only %llu were sent",
                c->id, (unsigned long long)(c->recvd + (uint64_t)n),
                (unsigned long long)c->sent);
        if (memcmp(rbuf, pat + pat_pos(c, c->recvd), (size_t)n) != 0)
            report_mismatch(c, rbuf, (size_t)n);
        uint64_t size = (uint64_t)opt_size;
        uint64_t done = (c->recvd + (uint64_t)n) / size - c->recvd / size;
        c->recvd += (uint64_t)n;
        /* One new message per completed echo keeps exactly `depth` in flight. */
        c->target += done * size;
        msgs_total += done;
        /* A short read means the socket is drained; skip the EAGAIN syscall. */
        if ((size_t)n < RBUF_SIZE)
            break;
    }
    flush_conn(c);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    make_pattern();
    resolve_peer();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));

    struct conn *conns = calloc((size_t)opt_conns, sizeof(*conns));
    if (!conns)
        die("out of memory");
    /* Connect everything before sending, so warmup starts with all connections live. */
    for (int i = 0; i < opt_conns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        /* 7919 is coprime with the prime period, so shifts are distinct per connection. */
        c->shift = (uint32_t)(((uint64_t)i * 7919u) % PAT_PERIOD);
        c->fd = connect_one(i);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl add: %s", strerror(errno));
    }

    double t_start = now_s();
    double t_warm_end = t_start + opt_warmup;
    double t_end = t_warm_end + opt_duration;
    bool measuring = false;
    double m_t0 = 0, m_cpu0 = 0;
    uint64_t m_msgs0 = 0;
    if (opt_warmup <= 0) {
        measuring = true;
        m_t0 = t_start;
        m_cpu0 = cpu_s();
    }

    for (int i = 0; i < opt_conns; i++) {
        conns[i].target = (uint64_t)opt_depth * (uint64_t)opt_size;
        flush_conn(&conns[i]);
    }

    struct epoll_event evs[MAX_EVENTS];
    double t;
    for (;;) {
        t = now_s();
        if (!measuring && t >= t_warm_end) {
            measuring = true;
            m_t0 = t;
            m_cpu0 = cpu_s();
            m_msgs0 = msgs_total;
        }
        if (t >= t_end)
            break;
        double deadline = measuring ? t_end : t_warm_end;
        /* +1: round up so we never wake just before the deadline and spin. */
        int timeout_ms = (int)((deadline - t) * 1000.0) + 1;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            /* Read first even on EPOLLERR/HUP: recv reports the actual error. */
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                read_conn(c);
            else if (e & EPOLLOUT)
                flush_conn(c);
        }
    }

    double m_t1 = now_s();
    double m_cpu1 = cpu_s();
    uint64_t msgs = msgs_total - m_msgs0;
    double secs = m_t1 - m_t0;
    double rate = (double)msgs / secs;
    /* MB = 10^6 bytes of payload echoed back (one direction). */
    double mbps = rate * (double)opt_size / 1e6;
    double cpu_pct = (m_cpu1 - m_cpu0) / secs * 100.0;

    printf("RESULT msgs_per_s=%.1f mb_per_s=%.1f msgs=%llu seconds=%.2f client_cpu_pct=%.1f "
           "conns=%ld size=%ld depth=%ld\n",
           rate, mbps, (unsigned long long)msgs, secs, cpu_pct, opt_conns, opt_size, opt_depth);
    fflush(stdout);

    for (int i = 0; i < opt_conns; i++)
        close(conns[i].fd);
    free(conns);
    close(epfd);
    free(pat);
    free(rbuf);

    if (msgs == 0) {
        fprintf(stderr, "echo_load: no messages were echoed during the measured period\n");
        return 1;
    }
    return 0;
}
