/* rl_connect.c: outbound connects: addresses tried in order, names handed
 * to the resolver threads, deadlines. */

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rl_worker_int.h"

/* What a connect needs until it ends.  The kernel reads sa when the
 * CONNECT is submitted (at the next poll), so it lives with the
 * connection; a name's addresses are tried in order. */
struct connect_arg {
	struct sockaddr_storage sa;     /* the address being connected to */
	socklen_t salen;
	struct __kernel_timespec ts;    /* its linked timeout */
	uint64_t deadline_ns;           /* 0 = none; covers name and connects */
	struct rl_resolve_req *req;     /* the name's request, while pending */
	int naddrs;                     /* the name's addresses ... */
	int next;                       /* ... and the one being tried */
	struct rl_resolve_addr addrs[RL_RESOLVE_MAX_ADDRS];
};

/* Connect through the ring to arg->sa, with a linked timeout for what is
 * left of the deadline.  0, or -errno with nothing submitted. */
static int start_connect(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct connect_arg *arg = c->connect_arg;
	struct io_uring_sqe *sqe;
	uint64_t now = 0, left;
	int fd;

	if (arg->deadline_ns) {
		now = now_ns();
		if (now >= arg->deadline_ns)
			return -ETIMEDOUT;
	}
	fd = socket(arg->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	c->fd = fd;
	sqe = get_sqe(w);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&arg->sa, arg->salen);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CONNECT, c->gen, idx));
	if (arg->deadline_ns) {
		left = arg->deadline_ns - now;
		arg->ts.tv_sec = left / 1000000000ull;
		arg->ts.tv_nsec = left % 1000000000ull;
		sqe->flags |= IOSQE_IO_LINK;
		sqe = get_sqe(w);
		io_uring_prep_link_timeout(sqe, &arg->ts, 0);
		io_uring_sqe_set_data64(sqe, ud_make(OP_LINK_TIMEOUT, 0, 0));
	}
	return 0;
}

/* The previous address of a name failed with res: try the next ones.  0
 * when a connect is under way, else the error to report. */
static int connect_next(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
			int res)
{
	struct connect_arg *arg = c->connect_arg;

	while (arg->next + 1 < arg->naddrs && res != -ETIMEDOUT) {
		rl_debug(w->id, "conn %u: address %d of %d: %s; trying the next",
			 idx, arg->next + 1, arg->naddrs, strerror(-res));
		/* Its connect has completed: nothing in the kernel uses it. */
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		arg->next++;
		memcpy(&arg->sa, &arg->addrs[arg->next].u,
		       arg->addrs[arg->next].len);
		arg->salen = arg->addrs[arg->next].len;
		res = start_connect(w, c, idx);
		if (res == 0)
			return 0;
	}
	return res;
}

/* A connect with nothing in the kernel (its name still resolving, or no
 * connect could start) ends at once.  Its request is cancelled, so no
 * answer comes for it; one already on its way finds the slot's generation
 * moved on. */
void rl_w_connect_abandon(struct rl_worker *w, struct rl_conn *c,
			  uint32_t idx, int reason)
{
	struct connect_arg *arg = c->connect_arg;

	if (arg && arg->req) {
		rl_resolve_cancel(w->inbox, arg->req);
		arg->req = NULL;
	}
	c->resolving = 0;
	if (!c->close_reason)
		c->close_reason = reason;
	c->aborting = 1;
	c->state = RL_CONN_CLOSING;
	queue_work(w, c, idx);
}

static void on_resolved(struct rl_worker *w, const struct rl_resolve_answer *a)
{
	uint32_t idx = (uint32_t)a->tag;
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   (uint32_t)(a->tag >> 32));
	struct connect_arg *arg;
	char text[512];
	int ret;

	/* Closed meanwhile (cancels normally keep such answers away). */
	if (!c || c->state != RL_CONN_CONNECTING || !c->resolving)
		return;
	arg = c->connect_arg;
	arg->req = NULL;
	c->resolving = 0;
	if (a->gai_err) {
		rl_resolve_strerror(a, text, sizeof(text));
		rl_debug(w->id, "conn %u: %s", idx, text);
		c->close_text = strdup(text);
		rl_w_connect_abandon(w, c, idx, RL_CLOSE_RESOLVE);
		return;
	}
	rl_debug(w->id, "conn %u: %s resolved to %d address(es)", idx, a->host,
		 a->naddrs);
	arg->naddrs = a->naddrs;
	memcpy(arg->addrs, a->addrs, sizeof(a->addrs[0]) * a->naddrs);
	arg->next = 0;
	memcpy(&arg->sa, &arg->addrs[0].u, arg->addrs[0].len);
	arg->salen = arg->addrs[0].len;
	ret = start_connect(w, c, idx);
	if (ret)
		ret = connect_next(w, c, idx, ret);
	if (ret)
		rl_w_connect_abandon(w, c, idx, ret);
}

/* Answers the resolver threads left for us (they wrote our wake_fd). */
NOINLINE void rl_w_take_answers(struct rl_worker *w)
{
	struct rl_resolve_answer a;

	while (rl_resolve_take(w->inbox, &a))
		on_resolved(w, &a);
}

/* Connects whose name is still resolving when their deadline passes time
 * out here (no operation of theirs is in the ring to carry a timeout). */
NOINLINE void rl_w_expire_resolving(struct rl_worker *w)
{
	uint64_t *q = w->resolving.p, now = w->clock.mono_ns, due = 0;
	uint32_t k = 0;

	for (uint32_t i = 0; i < w->resolving.n; i++) {
		uint32_t idx = (uint32_t)q[i];
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(q[i] >> 32));
		struct connect_arg *arg;

		if (!c || c->state != RL_CONN_CONNECTING || !c->resolving)
			continue;       /* answered or closed: forget it */
		arg = c->connect_arg;
		if (arg->deadline_ns && now >= arg->deadline_ns) {
			rl_w_connect_abandon(w, c, idx, -ETIMEDOUT);
			continue;
		}
		if (arg->deadline_ns && (!due || arg->deadline_ns < due))
			due = arg->deadline_ns;
		q[k++] = q[i];
	}
	w->resolving.n = k;
	w->resolve_due_ns = due;
}


NOINLINE int rl_w_on_connect(struct rl_worker *w, struct io_uring_cqe *cqe,
			     rl_event *ev)
{
	uint32_t idx = ud_idx(cqe->user_data);
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   ud_gen(cqe->user_data));
	int res = cqe->res, one = 1;

	if (!c || c->state != RL_CONN_CONNECTING)
		return 0;
	/* Refused (not timed out or cancelled): a name may have more
	 * addresses to try. */
	if (res < 0 && res != -ECANCELED && !c->aborting &&
	    (!w->stopping || c->task_held) &&
	    connect_next(w, c, idx, res) == 0)
		return 0;
	free(c->connect_arg);
	c->connect_arg = NULL;
	/* While stopping, only a task's connect goes on (its work drains). */
	if (res < 0 || c->aborting || (w->stopping && !c->task_held)) {
		/* The linked timeout cancels the connect: report it as such. */
		if (!c->close_reason)
			c->close_reason = res == -ECANCELED ? -ETIMEDOUT :
					  res < 0 ? res : -ECONNABORTED;
		c->aborting = 1;
		c->state = RL_CONN_CLOSING;
		queue_work(w, c, idx);
		return 0;
	}
	c->state = RL_CONN_OPEN;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	queue_work(w, c, idx);  /* sends queued while connecting, recv */
	if (c->tls) {
		/* Connected once the handshake is done (rl_tls_io.c). */
		if (rl_w_tls_connected(w, c, idx)) {
			c->close_reason = -ENOMEM;
			c->aborting = 1;
		}
		return 0;
	}
	fill_event(ev, RL_EV_CONNECT, idx, c->gen, 0);
	return 1;
}

/* A name: queue it for the resolver threads; the connect starts when the
 * answer comes (on_resolved), or the connection ends at its deadline. */
static int start_resolve(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
			 const char *host, const char *port)
{
	struct connect_arg *arg = c->connect_arg;
	uint64_t tag = (uint64_t)c->gen << 32 | idx;
	int ret;

	if (!w->inbox) {
		snprintf(w->connect_err, sizeof(w->connect_err),
			 "cannot resolve '%.200s': no resolver", host);
		return -ENOSYS;
	}
	if (vec_push64(&w->resolving, tag)) {
		snprintf(w->connect_err, sizeof(w->connect_err),
			 "cannot resolve '%.200s': out of memory", host);
		return -ENOMEM;
	}
	ret = rl_resolve_submit(w->inbox, host, port, tag, &arg->req,
				w->connect_err, sizeof(w->connect_err));
	if (ret) {
		w->resolving.n--;
		return ret;
	}
	c->resolving = 1;
	return 0;
}

int rl_conn_connect(rl_worker *w, const char *addr, uint32_t timeout_ms,
		    uint32_t *gen, const struct rl_tls_client *tls)
{
	char host[RL_RESOLVE_HOST_MAX], port[8];
	struct connect_arg *arg;
	struct rl_addr a;
	struct rl_conn *c;
	uint32_t idx;
	int ret;

	w->connect_err[0] = 0;
	ret = rl_addr_parse_numeric(addr, &a, host, sizeof(host), port,
				    sizeof(port), w->connect_err,
				    sizeof(w->connect_err));
	if (ret < 0)
		return ret;
	if (atomic_fetch_add(&w->shared->live_conns, 1) >= w->cfg->max_conns) {
		atomic_fetch_sub(&w->shared->live_conns, 1);
		snprintf(w->connect_err, sizeof(w->connect_err),
			 "connection limit (%u) reached", w->cfg->max_conns);
		return -EMFILE;
	}
	arg = calloc(1, sizeof(*arg));
	c = arg ? rl_conntab_alloc(&w->conns, &idx) : NULL;
	if (!c) {
		free(arg);
		atomic_fetch_sub(&w->shared->live_conns, 1);
		snprintf(w->connect_err, sizeof(w->connect_err),
			 "out of memory for a connection to '%s'", addr);
		return -ENOMEM;
	}
	c->state = RL_CONN_CONNECTING;
	c->connect_arg = arg;
	/* Its session first: a configuration that fails (a CA file that
	 * does not load) fails the call, never a plaintext connect. */
	if (a.tls && rl_w_tls_client(w, c, tls, host, addr + 6) < 0) {
		free(arg);
		c->connect_arg = NULL;
		rl_conntab_release(&w->conns, idx);
		atomic_fetch_sub(&w->shared->live_conns, 1);
		return -EINVAL;
	}
	if (timeout_ms)
		arg->deadline_ns = now_ns() + (uint64_t)timeout_ms * 1000000;
	if (ret == 0) {
		/* Numeric: no thread hop. */
		memcpy(&arg->sa, &a.sa, a.len);
		arg->salen = a.len;
		ret = start_connect(w, c, idx);
		if (ret)
			snprintf(w->connect_err, sizeof(w->connect_err),
				 "cannot connect to '%s': %s", addr,
				 strerror(-ret));
	} else if (w->stopping) {
		/* It would be abandoned at once anyway. */
		rl_w_connect_abandon(w, c, idx, RL_CLOSE_SHUTDOWN);
		ret = 0;
	} else {
		ret = start_resolve(w, c, idx, host, port);
	}
	if (ret) {
		/* Lua never saw the slot: give it back now. */
		free(arg);
		c->connect_arg = NULL;
		rl_w_tls_free(w, c);
		rl_conntab_release(&w->conns, idx);
		atomic_fetch_sub(&w->shared->live_conns, 1);
		return ret;
	}
	*gen = c->gen;
	return (int)idx;
}

const char *rl_conn_connect_error(rl_worker *w)
{
	return w->connect_err;
}
