/* echo_load: single-threaded epoll echo load generator that verifies every echoed byte and prints one RESULT line. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <unistd.h>

#include "load_common.h"

/* Every read uses one big buffer so a burst of echoes costs one syscall. */
#define RBUF_SIZE (256 * 1024)
/* The expected stream is a repeating random pattern. A prime period that is not
 * a multiple of any message size means a duplicated, dropped or reordered
 * message shows up as a mismatch, not as an identical copy. */
#define PAT_PERIOD 65521u
/* The pattern buffer is PERIOD + RBUF_SIZE long, so any stream offset has up to
 * RBUF_SIZE contiguous expected bytes: one memcmp per read, one send per chunk. */
#define PAT_LEN (PAT_PERIOD + RBUF_SIZE)

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

const char load_prog[] = "echo_load";

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

static void usage(FILE *f)
{
    fprintf(f,
        "usage: echo_load [--host H --port N | --unix PATH] [--conns N] [--size BYTES]\n"
        "                 [--depth N] [--duration SECONDS] [--warmup SECONDS]\n"
        "defaults: --host 127.0.0.1 --conns 50 --size 64 --depth 1 --duration 5 --warmup 1\n");
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
    while ((c = next_option(argc, argv, longopts, usage)) != -1) {
        switch (c) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = optarg; parse_long("port", optarg, 1, 65535); break;
        case 'u': opt_unix = optarg; break;
        case 'c': opt_conns = parse_long("conns", optarg, 1, 60000); break;
        case 's': opt_size = parse_long("size", optarg, 1, 64L << 20); break;
        case 'd': opt_depth = parse_long("depth", optarg, 1, 1 << 20); break;
        case 't': opt_duration = parse_secs("duration", optarg); break;
        case 'w': opt_warmup = parse_secs("warmup", optarg); break;
        }
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
    pat = xmalloc(PAT_LEN);
    rbuf = xmalloc(RBUF_SIZE);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < PAT_PERIOD; i++)
        pat[i] = (uint8_t)(xorshift64(&x) >> 32);
    for (uint32_t i = PAT_PERIOD; i < PAT_LEN; i++)
        pat[i] = pat[i - PAT_PERIOD];
}

static struct peer peer;

static void set_events(struct conn *c, bool want_out)
{
    ep_want_out(epfd, c->fd, c, &c->want_out, want_out);
}

static inline uint32_t pat_pos(const struct conn *c, uint64_t off)
{
    return (uint32_t)((off + c->shift) % PAT_PERIOD);
}

/* Write as much of [sent, target) as the socket takes; EPOLLOUT only while
 * something is left. */
static void flush_conn(struct conn *c)
{
    while (c->sent < c->target) {
        uint64_t left = c->target - c->sent;
        size_t len = left > RBUF_SIZE ? RBUF_SIZE : (size_t)left;
        ssize_t n = send_some(c->fd, pat + pat_pos(c, c->sent), len, c->id);
        if (n < 0) {
            set_events(c, true);
            return;
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

static void read_conn(void *conn)
{
    struct conn *c = conn;
    for (;;) {
        ssize_t n = recv_some(c->fd, rbuf, RBUF_SIZE, c->id);
        if (n < 0)
            break;
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

static void write_conn(void *conn)
{
    flush_conn(conn);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    load_init();
    make_pattern();
    peer_resolve(&peer, opt_host, opt_port, opt_unix);
    epfd = ep_create();

    struct conn *conns = xcalloc((size_t)opt_conns, sizeof(*conns));
    /* Connect everything before sending, so warmup starts with all connections live. */
    for (int i = 0; i < opt_conns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        /* 7919 is coprime with the prime period, so shifts are distinct per connection. */
        c->shift = (uint32_t)(((uint64_t)i * 7919u) % PAT_PERIOD);
        c->fd = peer_connect(&peer, i);
        ep_add(epfd, c->fd, c);
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
        ep_dispatch(epfd, deadline - t, read_conn, write_conn);
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
