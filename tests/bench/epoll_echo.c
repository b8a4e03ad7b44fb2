/* epoll_echo: plain single-threaded level-triggered epoll echo server on 127.0.0.1:PORT, the baseline for ringline benchmarks. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

/* One per client. Unsent bytes live in `pend`; while any are pending the
 * connection stops reading (EPOLLOUT only), which bounds `pend` to one read. */
struct conn {
    int fd;
    char *pend;
    size_t pend_off, pend_len;
};

/* Tags for the two non-connection fds, compared by address in data.ptr. */
static int listen_tag, signal_tag;
static int epfd;
static char buf[BUF_SIZE];

static void fatal(const char *what)
{
    fprintf(stderr, "epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void close_conn(struct conn *c)
{
    close(c->fd);   /* also removes it from the epoll set */
    free(c->pend);
    free(c);
}

static void watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        fatal("epoll_ctl mod");
}

/* Returns 0 when everything went out, 1 if bytes remain, -1 on a dead socket. */
static int send_all(struct conn *c, const char *p, size_t len, size_t *done)
{
    while (*done < len) {
        ssize_t n = send(c->fd, p + *done, len - *done, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return -1;
        }
        *done += (size_t)n;
    }
    return 0;
}

static void on_readable(struct conn *c)
{
    ssize_t n;
    do {
        n = recv(c->fd, buf, BUF_SIZE, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        close_conn(c);
        return;
    }
    size_t done = 0;
    int rc = send_all(c, buf, (size_t)n, &done);
    if (rc < 0) {
        close_conn(c);
        return;
    }
    if (rc > 0) {
        if (!c->pend && !(c->pend = malloc(BUF_SIZE)))
            fatal("malloc");
        c->pend_len = (size_t)n - done;
        c->pend_off = 0;
        memcpy(c->pend, buf + done, c->pend_len);
        watch(c, EPOLLOUT);
    }
}

static void on_writable(struct conn *c)
{
    int rc = send_all(c, c->pend, c->pend_len, &c->pend_off);
    if (rc < 0) {
        close_conn(c);
        return;
    }
    if (rc == 0) {
        c->pend_len = c->pend_off = 0;
        watch(c, EPOLLIN);
    }
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("epoll_echo: accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        if (!c)
            fatal("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            fatal("epoll_ctl add");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: epoll_echo PORT\n");
        return 1;
    }
    char *end;
    long port = strtol(argv[1], &end, 10);
    if (*end || end == argv[1] || port < 1 || port > 65535) {
        fprintf(stderr, "epoll_echo: bad port '%s'\n", argv[1]);
        return 1;
    }

    /* SIGTERM/SIGINT arrive through a signalfd in the epoll set: no race
     * between checking a flag and blocking in epoll_wait. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) < 0)
        fatal("sigprocmask");
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        fatal("signalfd");
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        fatal("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        fatal("bind");
    if (listen(lfd, SOMAXCONN) < 0)
        fatal("listen");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fatal("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0)
        fatal("epoll_ctl listen");
    ev.data.ptr = &signal_tag;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) < 0)
        fatal("epoll_ctl signalfd");

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fatal("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &signal_tag)
                return 0;
            if (p == &listen_tag) {
                on_accept(lfd);
                continue;
            }
            struct conn *c = p;
            /* A connection is in exactly one mode: reading, or draining pend. */
            if (c->pend_len)
                on_writable(c);
            else
                on_readable(c);
        }
    }
}
