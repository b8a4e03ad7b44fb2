/* mc_load: single-threaded epoll load generator for the memcached text
 * protocol: a get/set mix over fixed-size keys and values, one request per
 * round trip or `depth` requests per write, every reply checked (a get hit
 * must return the value that key always gets).  Prints one RESULT line. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
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
#include <time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 5000
#define MAX_EVENTS 256
#define MAX_KEY 250
/* Latency histogram: 1 us buckets below 65536 us, 1024 us buckets above. */
#define HIST_FINE 65536
#define HIST_BUCKETS (2 * HIST_FINE)

struct conn {
    int fd;
    int id;
    uint64_t rng;
    bool want_out;
    /* Requests of the batch in flight: key index, is-get. */
    uint32_t *keys;
    uint8_t *is_get;
    int batch;          /* requests in the batch */
    int answered;       /* replies parsed so far */
    /* Outgoing bytes of the batch. */
    char *out;
    size_t out_len, out_sent;
    /* Unparsed reply bytes. */
    char *in;
    size_t in_len, in_cap;
    double t_sent;      /* when the batch was written */
};

static const char *opt_host = "127.0.0.1";
static const char *opt_port;
static long opt_conns = 50;
static long opt_depth = 1;
static long opt_keys = 10000;
static long opt_key_size = 32;
static long opt_value_size = 100;
static double opt_get_ratio = 0.9;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;
static bool opt_no_prefill;
static long opt_server_pid;

static int epfd;
static uint64_t ops_total, gets_total, hits_total, sets_total;
static bool measuring;
static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_n;
static char *values;        /* value of key i at values + i (a sliding window) */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mc_load: ", stderr);
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
        "usage: mc_load --port N [--host H] [--conns N] [--depth N] [--keys N]\n"
        "               [--key-size B] [--value-size B] [--get-ratio R]\n"
        "               [--duration S] [--warmup S] [--no-prefill] [--server-pid PID]\n"
        "defaults: --host 127.0.0.1 --conns 50 --depth 1 --keys 10000 --key-size 32\n"
        "          --value-size 100 --get-ratio 0.9 --duration 5 --warmup 1\n"
        "Every key is set once before the run (unless --no-prefill), so gets hit.\n"
        "--server-pid: also report that process's CPU use over the measured time.\n");
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

static double parse_num(const char *name, const char *s, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v || v < min || v > max)
        die("bad value for --%s: '%s' (want %g..%g)", name, s, min, max);
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},
        {"depth", required_argument, 0, 'd'},
        {"keys", required_argument, 0, 'k'},
        {"key-size", required_argument, 0, 'K'},
        {"value-size", required_argument, 0, 'V'},
        {"get-ratio", required_argument, 0, 'g'},
        {"duration", required_argument, 0, 't'},
        {"warmup", required_argument, 0, 'w'},
        {"no-prefill", no_argument, 0, 'n'},
        {"server-pid", required_argument, 0, 'P'},
        {"help", no_argument, 0, 'H'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = optarg; parse_long("port", optarg, 1, 65535); break;
        case 'c': opt_conns = parse_long("conns", optarg, 1, 60000); break;
        case 'd': opt_depth = parse_long("depth", optarg, 1, 4096); break;
        case 'k': opt_keys = parse_long("keys", optarg, 1, 100000000); break;
        case 'K': opt_key_size = parse_long("key-size", optarg, 12, MAX_KEY); break;
        case 'V': opt_value_size = parse_long("value-size", optarg, 1, 1 << 20); break;
        case 'g': opt_get_ratio = parse_num("get-ratio", optarg, 0, 1); break;
        case 't': opt_duration = parse_num("duration", optarg, 0.01, 86400); break;
        case 'w': opt_warmup = parse_num("warmup", optarg, 0, 86400); break;
        case 'n': opt_no_prefill = true; break;
        case 'P': opt_server_pid = parse_long("server-pid", optarg, 1, 1 << 30); break;
        case 'H': usage(stdout); exit(0);
        default: usage(stderr); exit(1);
        }
    }
    if (optind < argc) {
        usage(stderr);
        die("unexpected argument '%s'", argv[optind]);
    }
    if (!opt_port) {
        usage(stderr);
        die("need --port N");
    }
}

static inline uint64_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Key i: "key:" and the index zero-padded to the key size. */
static int put_key(char *p, uint32_t i)
{
    char digits[32];
    int n = snprintf(digits, sizeof(digits), "%u", i);
    int pad = (int)opt_key_size - 4 - n;
    memcpy(p, "key:", 4);
    memset(p + 4, '0', (size_t)pad);
    memcpy(p + 4 + pad, digits, (size_t)n);
    return (int)opt_key_size;
}

/* The value of key i: value-size bytes of a printable pattern. */
static const char *value_of(uint32_t i)
{
    return values + (i % 4096);
}

static void make_values(void)
{
    values = malloc((size_t)opt_value_size + 4096);
    if (!values)
        die("out of memory");
    for (long i = 0; i < opt_value_size + 4096; i++)
        values[i] = (char)('a' + (i * 7 + i / 26) % 26);
}

static struct sockaddr_storage peer;
static socklen_t peer_len;
static int peer_family;

static void resolve_peer(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(opt_host, opt_port, &hints, &res);
    if (rc)
        die("cannot resolve %s:%s: %s", opt_host, opt_port, gai_strerror(rc));
    memcpy(&peer, res->ai_addr, res->ai_addrlen);
    peer_len = res->ai_addrlen;
    peer_family = res->ai_family;
    freeaddrinfo(res);
}

static int connect_one(int idx)
{
    int fd = socket(peer_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&peer, peer_len) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN)
            die("connect #%d to %s:%s failed: %s", idx, opt_host, opt_port, strerror(errno));
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do {
            n = poll(&p, 1, CONNECT_TIMEOUT_MS);
        } while (n < 0 && errno == EINTR);
        if (n == 0)
            die("connect #%d timed out", idx);
        int err = 0;
        socklen_t len = sizeof(err);
        if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err)
            die("connect #%d to %s:%s failed: %s", idx, opt_host, opt_port, strerror(err));
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        die("TCP_NODELAY: %s", strerror(errno));
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

static void flush_conn(struct conn *c)
{
    while (c->out_sent < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(c, true);
                return;
            }
            die("conn %d: send failed: %s", c->id, strerror(errno));
        }
        c->out_sent += (size_t)n;
    }
    set_events(c, false);
}

/* Build and write the next batch: `depth` requests, or the prefill sets
 * [*next_key, ...) when prefill is not NULL. */
static void send_batch(struct conn *c, uint32_t *prefill, uint32_t prefill_end)
{
    char *p = c->out;
    int n = 0;
    for (; n < opt_depth; n++) {
        uint32_t k;
        bool get;
        if (prefill) {
            if (*prefill >= prefill_end)
                break;
            k = (*prefill)++;
            get = false;
        } else {
            uint64_t r = next_rand(&c->rng);
            k = (uint32_t)((r >> 11) % (uint64_t)opt_keys);
            get = (double)(r & 0x3ff) < opt_get_ratio * 1024.0;
        }
        c->keys[n] = k;
        c->is_get[n] = get;
        if (get) {
            memcpy(p, "get ", 4);
            p += 4;
            p += put_key(p, k);
            memcpy(p, "\r\n", 2);
            p += 2;
        } else {
            memcpy(p, "set ", 4);
            p += 4;
            p += put_key(p, k);
            p += sprintf(p, " 0 0 %ld\r\n", opt_value_size);
            memcpy(p, value_of(k), (size_t)opt_value_size);
            p += opt_value_size;
            memcpy(p, "\r\n", 2);
            p += 2;
        }
    }
    c->batch = n;
    c->answered = 0;
    c->out_len = (size_t)(p - c->out);
    c->out_sent = 0;
    c->t_sent = now_s();
    if (n)
        flush_conn(c);
}

static void record_latency(double secs)
{
    uint64_t us = (uint64_t)(secs * 1e6);
    uint64_t b = us < HIST_FINE ? us : HIST_FINE + (us - HIST_FINE) / 1024;
    if (b >= HIST_BUCKETS)
        b = HIST_BUCKETS - 1;
    hist[b]++;
    hist_n++;
}

static double percentile(double q)
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

static char *find_crlf(char *p, char *end)
{
    char *q = memchr(p, '\n', (size_t)(end - p));
    if (!q || q == p || q[-1] != '\r')
        return q ? (char *)-1 : NULL;
    return q - 1;
}

/* Parse as many replies of the batch as the buffer holds.  Returns false
 * when more bytes are needed. */
static void parse_replies(struct conn *c)
{
    char *p = c->in, *end = c->in + c->in_len;
    char key[MAX_KEY + 1];
    while (c->answered < c->batch) {
        int i = c->answered;
        char *e = find_crlf(p, end);
        if (!e)
            break;
        if (e == (char *)-1)
            die("conn %d: reply line without CRLF", c->id);
        if (!c->is_get[i]) {
            if (e - p != 6 || memcmp(p, "STORED", 6))
                die("conn %d: set: unexpected reply '%.*s'", c->id, (int)(e - p), p);
            p = e + 2;
            if (measuring)
                sets_total++;
        } else if (e - p == 3 && !memcmp(p, "END", 3)) {
            p = e + 2;          /* a miss */
            if (measuring)
                gets_total++;
        } else {
            int kl = put_key(key, c->keys[i]);
            char *v = p + 6 + kl + 1;
            if (e - p < 6 + kl + 4 || memcmp(p, "VALUE ", 6) || memcmp(p + 6, key, (size_t)kl) ||
                p[6 + kl] != ' ')
                die("conn %d: get: unexpected reply '%.*s'", c->id, (int)(e - p), p);
            /* flags, then the length */
            while (v < e && *v != ' ')
                v++;
            long len = strtol(v + 1, NULL, 10);
            if (len != opt_value_size)
                die("conn %d: get %s: value of %ld bytes, want %ld", c->id, key, len,
                    opt_value_size);
            char *data = e + 2;
            if (end - data < len + 7)
                break;          /* value or END not here yet */
            if (memcmp(data, value_of(c->keys[i]), (size_t)len) ||
                memcmp(data + len, "\r\nEND\r\n", 7))
                die("conn %d: get %s: wrong value or framing", c->id, key);
            p = data + len + 7;
            if (measuring) {
                gets_total++;
                hits_total++;
            }
        }
        c->answered++;
        if (measuring)
            ops_total++;
    }
    size_t left = (size_t)(end - p);
    memmove(c->in, p, left);
    c->in_len = left;
}

static uint32_t prefill_next, prefill_end;
static bool prefilling;

static void read_conn(struct conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap *= 2;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in)
                die("out of memory");
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            die("conn %d: recv failed: %s", c->id, strerror(errno));
        }
        if (n == 0)
            die("conn %d: server closed the connection", c->id);
        c->in_len += (size_t)n;
        parse_replies(c);
        if ((size_t)n < c->in_cap - c->in_len)
            break;
    }
    if (c->answered == c->batch && c->batch > 0) {
        if (measuring && !prefilling)
            record_latency(now_s() - c->t_sent);
        if (prefilling)
            send_batch(c, &prefill_next, prefill_end);
        else
            send_batch(c, NULL, 0);
    }
}

/* utime + stime of a process in seconds, from /proc; -1 if unreadable. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* After ") ": state is field 3; utime and stime are fields 14 and 15. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void run_loop(struct conn *conns, double until, bool (*done)(struct conn *))
{
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        double t = now_s();
        if (done ? done(conns) : t >= until)
            return;
        if (t >= until)
            die("timed out");
        int timeout_ms = (int)((until - t) * 1000.0) + 1;
        int n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                read_conn(c);
            else if (e & EPOLLOUT)
                flush_conn(c);
        }
    }
}

static bool prefill_done(struct conn *conns)
{
    if (prefill_next < prefill_end)
        return false;
    for (int i = 0; i < opt_conns; i++)
        if (conns[i].answered < conns[i].batch)
            return false;
    return true;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    make_values();
    resolve_peer();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    struct conn *conns = calloc((size_t)opt_conns, sizeof(*conns));
    if (!conns)
        die("out of memory");
    size_t req_max = 4 + MAX_KEY + 32 + (size_t)opt_value_size + 2;
    for (int i = 0; i < opt_conns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        c->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) * 0x2545f4914f6cdd1dull);
        c->keys = calloc((size_t)opt_depth, sizeof(*c->keys));
        c->is_get = calloc((size_t)opt_depth, 1);
        c->out = malloc(req_max * (size_t)opt_depth);
        c->in_cap = 1 << 17;
        c->in = malloc(c->in_cap);
        if (!c->keys || !c->is_get || !c->out || !c->in)
            die("out of memory");
        c->fd = connect_one(i);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl add: %s", strerror(errno));
    }

    /* Every key once, so that gets hit. */
    if (!opt_no_prefill) {
        prefilling = true;
        prefill_next = 0;
        prefill_end = (uint32_t)opt_keys;
        for (int i = 0; i < opt_conns; i++)
            send_batch(&conns[i], &prefill_next, prefill_end);
        run_loop(conns, now_s() + 60, prefill_done);
        prefilling = false;
    }

    for (int i = 0; i < opt_conns; i++)
        send_batch(&conns[i], NULL, 0);
    if (opt_warmup > 0)
        run_loop(conns, now_s() + opt_warmup, NULL);
    measuring = true;
    double s0 = opt_server_pid ? proc_cpu_s(opt_server_pid) : -1;
    double t0 = now_s(), c0 = cpu_s();
    run_loop(conns, t0 + opt_duration, NULL);
    double secs = now_s() - t0, cpu = cpu_s() - c0;
    double s1 = opt_server_pid ? proc_cpu_s(opt_server_pid) : -1;
    measuring = false;
    double server_pct = s0 >= 0 && s1 >= 0 ? (s1 - s0) / secs * 100.0 : -1;

    double rate = (double)ops_total / secs;
    printf("RESULT ops_per_s=%.1f ops=%llu gets=%llu hits=%llu sets=%llu seconds=%.2f "
           "client_cpu_pct=%.1f server_cpu_pct=%.1f p50_us=%.0f p99_us=%.0f conns=%ld "
           "depth=%ld keys=%ld key_size=%ld value_size=%ld get_ratio=%.2f\n",
           rate, (unsigned long long)ops_total, (unsigned long long)gets_total,
           (unsigned long long)hits_total, (unsigned long long)sets_total, secs,
           cpu / secs * 100.0, server_pct, percentile(0.5), percentile(0.99), opt_conns, opt_depth,
           opt_keys, opt_key_size, opt_value_size, opt_get_ratio);
    fflush(stdout);
    for (int i = 0; i < opt_conns; i++) {
        close(conns[i].fd);
        free(conns[i].keys);
        free(conns[i].is_get);
        free(conns[i].out);
        free(conns[i].in);
    }
    free(conns);
    free(values);
    close(epfd);
    if (ops_total == 0) {
        fprintf(stderr, "mc_load: no replies during the measured period\n");
        return 1;
    }
    return 0;
}
