/* load_common: what the load generators (echo_load, mc_load) share; see load_common.h. */
#define _GNU_SOURCE
#include "load_common.h"

#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 5000
#define MAX_EVENTS 256
#define HIST_FINE 65536
#define HIST_BUCKETS (2 * HIST_FINE)

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", load_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p)
        die("out of memory");
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        die("out of memory");
    return p;
}

int next_option(int argc, char **argv, const struct option *longopts, void (*usage)(FILE *f))
{
    int c = getopt_long(argc, argv, "", longopts, NULL);
    if (c == 'H') {
        usage(stdout);
        exit(0);
    }
    if (c == '?' || c == ':') {
        usage(stderr);
        exit(1);
    }
    if (c == -1 && optind < argc) {
        usage(stderr);
        die("unexpected argument '%s'", argv[optind]);
    }
    return c;
}

long parse_long(const char *name, const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        die("bad value for --%s: '%s' (want %ld..%ld)", name, s, min, max);
    return v;
}

/* unit ("" or e.g. "seconds, ") goes into the error before the range. */
static double parse_double(const char *name, const char *s, double min, double max,
                           const char *unit)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
        die("bad value for --%s: '%s' (want %s%g..%g)", name, s, unit, min, max);
    return v;
}

double parse_num(const char *name, const char *s, double min, double max)
{
    return parse_double(name, s, min, max, "");
}

double parse_secs(const char *name, const char *s)
{
    return parse_double(name, s, 0, 86400, "seconds, ");
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* After ") ": state is field 3; utime and stime are fields 14 and 15. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

void load_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void peer_resolve(struct peer *p, const char *host, const char *port, const char *unix_path)
{
    memset(p, 0, sizeof(*p));
    if (unix_path) {
        struct sockaddr_un *su = (struct sockaddr_un *)&p->addr;
        if (strlen(unix_path) >= sizeof(su->sun_path))
            die("unix socket path too long: %s", unix_path);
        su->sun_family = AF_UNIX;
        strcpy(su->sun_path, unix_path);
        p->len = sizeof(*su);
        p->family = AF_UNIX;
        snprintf(p->name, sizeof(p->name), "unix:%s", unix_path);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc)
        die("cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
    memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
    p->len = res->ai_addrlen;
    p->family = res->ai_family;
    freeaddrinfo(res);
    snprintf(p->name, sizeof(p->name), "%s:%s", host, port);
}

int peer_connect(const struct peer *p, int idx)
{
    int fd = socket(p->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (const struct sockaddr *)&p->addr, p->len) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN)
            die("connect #%d to %s failed: %s", idx, p->name, strerror(errno));
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int n;
        do {
            n = poll(&pfd, 1, CONNECT_TIMEOUT_MS);
        } while (n < 0 && errno == EINTR);
        if (n == 0)
            die("connect #%d to %s timed out after %d ms", idx, p->name, CONNECT_TIMEOUT_MS);
        int err = 0;
        socklen_t len = sizeof(err);
        if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err)
            die("connect #%d to %s failed: %s", idx, p->name, strerror(err));
    }
    if (p->family != AF_UNIX) {
        /* Small messages must go out immediately, not wait for Nagle. */
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
            die("TCP_NODELAY: %s", strerror(errno));
    }
    return fd;
}

/* send_some and recv_some in one: the error handling is the same.  buf is
 * only written when receiving. */
static ssize_t sock_io(int fd, void *buf, size_t len, int id, bool sending)
{
    for (;;) {
        ssize_t n = sending ? send(fd, buf, len, MSG_NOSIGNAL) : recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -1;
        if (errno != EINTR)
            die("conn %d: %s failed: %s", id, sending ? "send" : "recv", strerror(errno));
    }
}

ssize_t send_some(int fd, const void *buf, size_t len, int id)
{
    return sock_io(fd, (void *)buf, len, id, true);
}

ssize_t recv_some(int fd, void *buf, size_t len, int id)
{
    return sock_io(fd, buf, len, id, false);
}

int ep_create(void)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    return epfd;
}

void ep_add(int epfd, int fd, void *conn)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = conn};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl add: %s", strerror(errno));
}

void ep_dispatch(int epfd, double timeout_s, void (*on_read)(void *conn),
                 void (*on_write)(void *conn))
{
    struct epoll_event evs[MAX_EVENTS];
    /* +1: round up so we never wake just before the deadline and spin. */
    int timeout_ms = (int)(timeout_s * 1000.0) + 1;
    int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        uint32_t e = evs[i].events;
        /* Read first even on EPOLLERR/HUP: recv reports the actual error. */
        if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_read(evs[i].data.ptr);
        else if (e & EPOLLOUT)
            on_write(evs[i].data.ptr);
    }
}

static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_n;

void hist_add(double secs)
{
    uint64_t us = (uint64_t)(secs * 1e6);
    uint64_t b = us < HIST_FINE ? us : HIST_FINE + (us - HIST_FINE) / 1024;
    if (b >= HIST_BUCKETS)
        b = HIST_BUCKETS - 1;
    hist[b]++;
    hist_n++;
}

double hist_percentile(double q)
{
    uint64_t want = (uint64_t)(q * (double)hist_n), acc = 0;
    if (want < 1)
        want = 1;
    for (uint64_t b = 0; b < HIST_BUCKETS; b++) {
        acc += hist[b];
        if (acc >= want && hist_n)
            return b < HIST_FINE ? (double)b : (double)(HIST_FINE + (b - HIST_FINE) * 1024);
    }
    return 0;
}
