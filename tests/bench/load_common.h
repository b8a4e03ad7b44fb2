/* load_common: what the load generators (echo_load, mc_load) share: errors, option values, clocks, CPU accounting, connecting, the epoll loop, a latency histogram. */
#ifndef LOAD_COMMON_H
#define LOAD_COMMON_H

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* Each program defines its name: die() prefixes every message with it. */
extern const char load_prog[];

void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);

/* getopt_long over longopts (which map --help to 'H'): the next option's
 * val, or -1 at the end.  --help prints usage to stdout and exits 0; an
 * unknown option or a leftover operand prints it to stderr and fails. */
int next_option(int argc, char **argv, const struct option *longopts, void (*usage)(FILE *f));

/* Option values; a bad one is fatal, with the option's name and range. */
long parse_long(const char *name, const char *s, long min, long max);
double parse_num(const char *name, const char *s, double min, double max);
/* parse_num for seconds, 0..86400, saying "seconds" in its error. */
double parse_secs(const char *name, const char *s);

double now_s(void);             /* CLOCK_MONOTONIC, seconds */
double cpu_s(void);             /* this process's user + system seconds */
/* utime + stime of process pid in seconds, from /proc; -1 if unreadable. */
double proc_cpu_s(long pid);
/* Before any connection: SIGPIPE ignored (a peer that closes is an error
 * from send, reported, not a silent death) and the descriptor limit raised
 * to the hard limit (thousands of connections). */
void load_init(void);

/* The server's address, resolved once; every connection reuses it. */
struct peer {
    struct sockaddr_storage addr;
    socklen_t len;
    int family;
    char name[300];             /* "host:port" or "unix:path", for errors */
};

/* TCP host:port, or a unix socket when unix_path is not NULL. */
void peer_resolve(struct peer *p, const char *host, const char *port, const char *unix_path);
/* A connected non-blocking socket (TCP_NODELAY on TCP); fatal on failure
 * or after a timeout, so a server that never accepts cannot hang the run.
 * idx numbers the connection in errors. */
int peer_connect(const struct peer *p, int idx);

/* send / recv on non-blocking socket fd of connection id: the bytes moved,
 * or -1 when the socket is full (send) or drained (recv); EINTR is retried
 * and any other error is fatal.  recv_some returns 0 at end of stream. */
ssize_t send_some(int fd, const void *buf, size_t len, int id);
ssize_t recv_some(int fd, void *buf, size_t len, int id);

/* The epoll set of the connections: data.ptr is the connection. */
int ep_create(void);
void ep_add(int epfd, int fd, void *conn);

/* Registers EPOLLOUT only while output is pending (*want_out tracks it),
 * so the common case, everything sent at once, costs no epoll_ctl. */
static inline void ep_want_out(int epfd, int fd, void *conn, bool *want_out, bool on)
{
    if (*want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = conn};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    *want_out = on;
}

/* Waits up to timeout_s for events and hands each connection to on_read
 * (readable, or an error or hangup: the read reports it) or on_write. */
void ep_dispatch(int epfd, double timeout_s, void (*on_read)(void *conn),
                 void (*on_write)(void *conn));

/* Latency histogram: 1 us buckets below 65536 us, 1024 us buckets above. */
void hist_add(double secs);
/* The q-quantile (0..1) of what hist_add recorded, in microseconds. */
double hist_percentile(double q);

/* xorshift64: a fast reproducible stream (fixed seeds: every run sends the
 * same bytes and keys). */
static inline uint64_t xorshift64(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

#endif
