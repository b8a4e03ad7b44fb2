/* mc_load: single-threaded epoll load generator for the memcached text
 * protocol: a get/set mix over fixed-size keys and values, one request per
 * round trip or `depth` requests per write, every reply checked (a get hit
 * must return the value that key always gets).  Prints one RESULT line. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <unistd.h>

#include "load_common.h"

#define MAX_KEY 250

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

const char load_prog[] = "mc_load";

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
static char *values;        /* value of key i at values + i (a sliding window) */

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
    while ((c = next_option(argc, argv, longopts, usage)) != -1) {
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
        }
    }
    if (!opt_port) {
        usage(stderr);
        die("need --port N");
    }
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
    values = xmalloc((size_t)opt_value_size + 4096);
    for (long i = 0; i < opt_value_size + 4096; i++)
        values[i] = (char)('a' + (i * 7 + i / 26) % 26);
}

static struct peer peer;

static void set_events(struct conn *c, bool want_out)
{
    ep_want_out(epfd, c->fd, c, &c->want_out, want_out);
}

static void flush_conn(struct conn *c)
{
    while (c->out_sent < c->out_len) {
        ssize_t n = send_some(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, c->id);
        if (n < 0) {
            set_events(c, true);
            return;
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
            uint64_t r = xorshift64(&c->rng);
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

static void read_conn(void *conn)
{
    struct conn *c = conn;
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap *= 2;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in)
                die("out of memory");
        }
        ssize_t n = recv_some(c->fd, c->in + c->in_len, c->in_cap - c->in_len, c->id);
        if (n < 0)
            break;
        if (n == 0)
            die("conn %d: server closed the connection", c->id);
        c->in_len += (size_t)n;
        parse_replies(c);
        if ((size_t)n < c->in_cap - c->in_len)
            break;
    }
    if (c->answered == c->batch && c->batch > 0) {
        if (measuring && !prefilling)
            hist_add(now_s() - c->t_sent);
        if (prefilling)
            send_batch(c, &prefill_next, prefill_end);
        else
            send_batch(c, NULL, 0);
    }
}

static void write_conn(void *conn)
{
    flush_conn(conn);
}

static void run_loop(struct conn *conns, double until, bool (*done)(struct conn *))
{
    for (;;) {
        double t = now_s();
        if (done ? done(conns) : t >= until)
            return;
        if (t >= until)
            die("timed out");
        ep_dispatch(epfd, until - t, read_conn, write_conn);
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
    load_init();
    make_values();
    peer_resolve(&peer, opt_host, opt_port, NULL);
    epfd = ep_create();
    struct conn *conns = xcalloc((size_t)opt_conns, sizeof(*conns));
    size_t req_max = 4 + MAX_KEY + 32 + (size_t)opt_value_size + 2;
    for (int i = 0; i < opt_conns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        c->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) * 0x2545f4914f6cdd1dull);
        c->keys = xcalloc((size_t)opt_depth, sizeof(*c->keys));
        c->is_get = xcalloc((size_t)opt_depth, 1);
        c->out = xmalloc(req_max * (size_t)opt_depth);
        c->in_cap = 1 << 17;
        c->in = xmalloc(c->in_cap);
        c->fd = peer_connect(&peer, i);
        ep_add(epfd, c->fd, c);
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
           cpu / secs * 100.0, server_pct, hist_percentile(0.5), hist_percentile(0.99), opt_conns, opt_depth,
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
