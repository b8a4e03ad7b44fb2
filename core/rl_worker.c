/* rl_worker.c: one worker thread: its ring, buffers, connections and loop.
 *
 * The loop is driven from outside (Lua, or the C echo baseline): each
 * rl_worker_poll() call ends the previous batch (handler leases end,
 * queued sends are submitted, parked receives re-armed, the buffer ring
 * tail is published once), waits, and turns completions into events.
 *
 * Who owns what:
 * - A received buffer: the handler's lease lasts until the next poll; each
 *   send segment that points into it holds another lease until the send
 *   completion releases it (rl_bufring.h).
 * - A slot: freed only once its CLOSE event has been handed out, so an
 *   accept in the same batch cannot reuse it before Lua saw the close.
 * - An fd: closed only when no recv and no send is in the kernel for it,
 *   so a completion never refers to a recycled descriptor.
 * - user_data carries (op, generation, slot); a completion whose generation
 *   no longer matches its slot belongs to a connection that is gone.
 */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_worker.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define NOINLINE    __attribute__((noinline))

#define RL_BGID 0
#define ACCEPT_RETRY_NS (100ull * 1000000)

#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif

enum rl_op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_CANCEL,
	OP_WAKE,
	OP_CONNECT,
	OP_LINK_TIMEOUT,
};

static inline uint64_t ud_make(enum rl_op op, uint32_t gen, uint32_t idx)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & RL_CONN_GEN_MASK) << 32 | idx;
}

static inline enum rl_op ud_op(uint64_t ud) { return (enum rl_op)(ud >> 56); }
static inline uint32_t ud_gen(uint64_t ud) { return (ud >> 32) & RL_CONN_GEN_MASK; }
static inline uint32_t ud_idx(uint64_t ud) { return (uint32_t)ud; }

#define now_ns rl_now_ns

static void clock_read(rl_clock *c)
{
	struct timespec ts;

	c->mono_ns = now_ns();
	clock_gettime(CLOCK_REALTIME, &ts);
	c->unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -- Small vectors ------------------------------------------------------- */

static NOINLINE int vec_grow(struct rl_vec *v, size_t elem)
{
	uint32_t cap = v->cap ? v->cap * 2 : 64;
	void *p;

	/* Compact first: a FIFO whose head moved on has room at the front. */
	if (v->head) {
		memmove(v->p, (char *)v->p + (size_t)v->head * elem,
			(size_t)(v->n - v->head) * elem);
		v->n -= v->head;
		v->head = 0;
		if (v->n < v->cap)
			return 0;
	}
	p = realloc(v->p, (size_t)cap * elem);
	if (!p)
		return -ENOMEM;
	v->p = p;
	v->cap = cap;
	return 0;
}

static inline int vec_push32(struct rl_vec *v, uint32_t x)
{
	if (unlikely(v->n == v->cap) && vec_grow(v, sizeof(x)))
		return -ENOMEM;
	((uint32_t *)v->p)[v->n++] = x;
	return 0;
}

static inline int vec_push64(struct rl_vec *v, uint64_t x)
{
	if (unlikely(v->n == v->cap) && vec_grow(v, sizeof(x)))
		return -ENOMEM;
	((uint64_t *)v->p)[v->n++] = x;
	return 0;
}

static void vec_free(struct rl_vec *v)
{
	free(v->p);
	memset(v, 0, sizeof(*v));
}

static inline void fill_event(rl_event *ev, uint32_t type, uint32_t idx,
			      uint32_t gen, int32_t res)
{
	ev->type = type;
	ev->conn = idx;
	ev->gen = gen;
	ev->bid = -1;
	ev->ptr = NULL;
	ev->len = 0;
	ev->res = res;
}

/* -- Submission ---------------------------------------------------------- */

static void submit_now(struct rl_worker *w)
{
	int ret = io_uring_submit(&w->ring);

	/* sendmsg headers are copied by the kernel at submission, so the
	 * slots are free again once the SQEs are consumed. */
	if (ret >= 0 || io_uring_sq_ready(&w->ring) == 0)
		w->nslots = 0;
}

static struct io_uring_sqe *get_sqe(struct rl_worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	while (unlikely(!sqe)) {
		w->stats.sq_full++;
		submit_now(w);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void queue_work(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (c->queued)
		return;
	/* On allocation failure the connection is simply looked at on its
	 * next completion. */
	if (vec_push32(&w->work, idx) == 0)
		c->queued = 1;
}

static void arm_recv(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = w->br.bgid;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->gen, idx));
	c->recv_armed = 1;
}

static void cancel_recv(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_cancel64(sqe, ud_make(OP_RECV, c->gen, idx), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
}

static void cancel_connect(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_cancel64(sqe, ud_make(OP_CONNECT, c->gen, idx), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
}

static void arm_accept(struct rl_worker *w, int li)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_multishot_accept(sqe, w->ls[li].fd, NULL, NULL,
				       SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, (uint32_t)li));
	w->ls[li].armed = 1;
}

static void arm_wake(struct rl_worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

static void submit_send(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe;
	struct rl_send_slot *slot;
	size_t bytes;
	int niov;

	if (w->nslots == RL_SEND_SLOTS)
		submit_now(w);
	sqe = get_sqe(w);
	slot = &w->slots[w->nslots];
	niov = rl_sendq_iov(&c->sq, slot->iov, RL_IOV_MAX, &bytes);
	if (niov == 1) {
		io_uring_prep_send(sqe, c->fd, slot->iov[0].iov_base,
				   slot->iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		/* Queued sends go out together: one sendmsg, many pieces. */
		memset(&slot->msg, 0, sizeof(slot->msg));
		slot->msg.msg_iov = slot->iov;
		slot->msg.msg_iovlen = niov;
		io_uring_prep_sendmsg(sqe, c->fd, &slot->msg, MSG_NOSIGNAL);
		w->nslots++;
	}
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->gen, idx));
	c->send_inflight = 1;
	c->inflight_bytes = (uint32_t)(bytes > UINT32_MAX ? UINT32_MAX : bytes);
}

/* -- Connection life ------------------------------------------------------ */

static inline int want_recv(const struct rl_conn *c)
{
	return c->state == RL_CONN_OPEN && !c->rd_eof && !c->recv_paused &&
	       !c->user_paused && !c->close_req && !c->aborting;
}

/* Bytes may still be offered to the connection's handler. */
static inline int offer_live(const struct rl_conn *c)
{
	return c && c->state == RL_CONN_OPEN && !c->close_req && !c->aborting;
}

/* Unconsumed bytes the handler left while paused: they are offered again
 * when it resumes, and the peer's EOF waits until then. */
static inline int rx_holding(const struct rl_conn *c)
{
	return c->rx_held && c->rx.len;
}

/* Look at the connection at the next poll (emit_again). */
static inline int again_push(struct rl_worker *w, const struct rl_conn *c,
			     uint32_t idx)
{
	return vec_push64(&w->again, (uint64_t)c->gen << 32 | idx);
}

static void conn_shutdown(struct rl_conn *c)
{
	/* Wakes a recv or send waiting in the kernel, which then completes;
	 * with sends finished it also tells the peer we are done. */
	if (!c->shut) {
		if (c->fd >= 0)         /* none while a name was resolving */
			shutdown(c->fd, SHUT_RDWR);
		c->shut = 1;
	}
}

static void finalize(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->connect_arg);
	c->connect_arg = NULL;
	rl_rxbuf_free(&c->rx);
	rl_sendq_clear(&c->sq, &w->pool, &w->br);
	c->state = RL_CONN_DEAD;
	c->parked = 0;
	if (vec_push32(&w->closed, idx)) {
		/* Cannot report the close: free the slot now rather than leak
		 * it; Lua drops the connection when the slot's next OPEN
		 * arrives. */
		rl_conntab_release(&w->conns, idx);
	}
	atomic_fetch_sub(&w->shared->live_conns, 1);
	w->stats.closed++;
}

static void backpressure(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (!c->recv_paused && !c->no_self_pause &&
	    c->sq.bytes > w->cfg->high_water) {
		/* The peer does not read what we send: stop reading what it
		 * sends until our queue drains. */
		c->recv_paused = 1;
		c->drain_notify = 1;
		w->stats.paused++;
		if (c->recv_armed)
			cancel_recv(w, c, idx);
	} else if (c->recv_paused && c->sq.bytes <= w->cfg->low_water) {
		c->recv_paused = 0;
	}
	/* Paused by its handler (a proxy whose other side is backed up). */
	if (c->user_paused && c->recv_armed)
		cancel_recv(w, c, idx);
}

static void process_conn(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (unlikely(c->aborting)) {
		c->state = RL_CONN_CLOSING;
		conn_shutdown(c);
		if (!c->send_inflight)
			rl_sendq_clear(&c->sq, &w->pool, &w->br);
	} else if (c->state == RL_CONN_CONNECTING) {
		return;         /* sends wait for the connection */
	} else {
		if (c->sq.bytes && !c->send_inflight)
			submit_send(w, c, idx);
		backpressure(w, c, idx);
		if (unlikely(c->drain_notify) && c->sq.bytes <= w->cfg->low_water &&
		    !c->send_inflight)
			vec_push64(&w->drained, (uint64_t)c->gen << 32 | idx);
		if (c->wr_shut_req && !c->wr_shut && !c->sq.bytes &&
		    !c->send_inflight) {
			shutdown(c->fd, SHUT_WR);
			c->wr_shut = 1;
		}
		/* A close is acted on only once every answer is out.  With eof
		 * events the handler decides, unless both sides are done.  A
		 * peer's EOF also waits for bytes held while paused to be
		 * offered again (and for its EOF event, held back meanwhile). */
		if (c->state == RL_CONN_OPEN &&
		    ((c->rd_eof && !rx_holding(c) && !c->eof_pending &&
		      (!c->eof_event || c->wr_shut)) ||
		     c->close_req) &&
		    !c->sq.bytes && !c->send_inflight) {
			c->state = RL_CONN_CLOSING;
			conn_shutdown(c);
		}
		if (want_recv(c) && !c->recv_armed && !c->parked)
			arm_recv(w, c, idx);
	}
	if (c->state == RL_CONN_CLOSING && !c->recv_armed && !c->send_inflight)
		finalize(w, c, idx);
}

static void process_work(struct rl_worker *w)
{
	uint32_t *work = w->work.p;

	/* process_conn never queues work, so the list is stable here. */
	for (uint32_t i = 0; i < w->work.n; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, work[i]);

		c->queued = 0;
		if (c->state == RL_CONN_OPEN || c->state == RL_CONN_CLOSING)
			process_conn(w, c, work[i]);
	}
	w->work.n = 0;
}

/* Re-arm receives that stopped on ENOBUFS, oldest first, at most one per
 * buffer now in the ring: re-arming with nothing to give them would just
 * fail again at once and spin. */
static void rearm_parked(struct rl_worker *w)
{
	uint32_t avail = rl_bufring_available(&w->br);
	uint64_t *p = w->parked.p;

	while (w->parked.head < w->parked.n && avail) {
		uint64_t e = p[w->parked.head++];
		uint32_t idx = (uint32_t)e;
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(e >> 32));

		if (!c || !c->parked)
			continue;
		c->parked = 0;
		if (want_recv(c) && !c->recv_armed) {
			arm_recv(w, c, idx);
			avail--;
		}
	}
	if (w->parked.head == w->parked.n)
		w->parked.head = w->parked.n = 0;
}

static void rearm_listeners(struct rl_worker *w, uint64_t now)
{
	for (int i = 0; i < w->nls; i++)
		if (!w->ls[i].armed && w->ls[i].fd >= 0 &&
		    now >= w->ls[i].retry_at_ns)
			arm_accept(w, i);
}

static void release_held(struct rl_worker *w)
{
	uint32_t *bids = w->held.p, *slots = w->released.p;

	for (uint32_t i = 0; i < w->held.n; i++)
		rl_bufring_unref(&w->br, bids[i]);
	w->held.n = 0;
	for (uint32_t i = 0; i < w->released.n; i++)
		rl_conntab_release(&w->conns, slots[i]);
	w->released.n = 0;
}

/* DRAIN events asked for with rl_conn_want_drain whose queue is already
 * low: no send completion will come to report them. */
static int emit_drained(struct rl_worker *w, rl_event *ev, int n, int max)
{
	uint64_t *q = w->drained.p;

	while (w->drained.head < w->drained.n && n < max) {
		uint64_t e = q[w->drained.head++];
		uint32_t idx = (uint32_t)e;
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(e >> 32));

		if (!c || c->state != RL_CONN_OPEN || !c->drain_notify)
			continue;
		c->drain_notify = 0;
		fill_event(&ev[n++], RL_EV_DRAIN, idx, c->gen, 0);
	}
	if (w->drained.head == w->drained.n)
		w->drained.head = w->drained.n = 0;
	return n;
}

/* Connections resumed with bytes held while paused get them offered again,
 * as a DATA event with no new bytes (rl_rx_begin fills it in), before
 * anything received later; an EOF held back behind such bytes follows once
 * they have been offered and the handler did not keep them paused. */
static NOINLINE int emit_again(struct rl_worker *w, rl_event *ev, int n,
			       int max)
{
	uint64_t *q = w->again.p;

	while (w->again.head < w->again.n && n < max) {
		uint64_t e = q[w->again.head++];
		uint32_t idx = (uint32_t)e;
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(e >> 32));

		if (!c)
			continue;
		if (c->rx_reoffer) {
			c->rx_reoffer = 0;
			/* Paused again since the resume: the next resume
			 * offers them. */
			if (offer_live(c) && !c->user_paused && c->rx.len) {
				fill_event(&ev[n++], RL_EV_DATA, idx, c->gen, 0);
				continue;
			}
		}
		if (c->eof_pending && !rx_holding(c)) {
			c->eof_pending = 0;
			if (offer_live(c))
				fill_event(&ev[n++], RL_EV_EOF, idx, c->gen, 0);
			/* A close that waited for the EOF. */
			if (c->state == RL_CONN_OPEN)
				queue_work(w, c, idx);
		}
	}
	if (w->again.head == w->again.n)
		w->again.head = w->again.n = 0;
	return n;
}

/* -- Outbound connects ------------------------------------------------------ */

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
static void connect_abandon(struct rl_worker *w, struct rl_conn *c,
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
		connect_abandon(w, c, idx, RL_CLOSE_RESOLVE);
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
		connect_abandon(w, c, idx, ret);
}

/* Answers the resolver threads left for us (they wrote our wake_fd). */
static NOINLINE void take_answers(struct rl_worker *w)
{
	struct rl_resolve_answer a;

	while (rl_resolve_take(w->inbox, &a))
		on_resolved(w, &a);
}

/* Connects whose name is still resolving when their deadline passes time
 * out here (no operation of theirs is in the ring to carry a timeout). */
static NOINLINE void expire_resolving(struct rl_worker *w)
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
			connect_abandon(w, c, idx, -ETIMEDOUT);
			continue;
		}
		if (arg->deadline_ns && (!due || arg->deadline_ns < due))
			due = arg->deadline_ns;
		q[k++] = q[i];
	}
	w->resolving.n = k;
	w->resolve_due_ns = due;
}

static NOINLINE void begin_stop(struct rl_worker *w)
{
	w->stopping = 1;
	w->deadline_ns = now_ns() + (uint64_t)w->cfg->drain_timeout_ms * 1000000;
	for (int i = 0; i < w->nls; i++) {
		if (w->ls[i].armed) {
			struct io_uring_sqe *sqe = get_sqe(w);

			io_uring_prep_cancel64(sqe, ud_make(OP_ACCEPT, 0, i), 0);
			io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
		}
		/* The in-flight accept holds its own file reference. */
		if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
		w->ls[i].fd = -1;
	}
	for (uint32_t i = 0; i < w->conns.top; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, i);

		if (c->state != RL_CONN_OPEN && c->state != RL_CONN_CONNECTING)
			continue;
		/* Nothing of it in the kernel yet: it ends now, not when (or
		 * if) its name resolves. */
		if (c->resolving) {
			connect_abandon(w, c, i, RL_CLOSE_SHUTDOWN);
			continue;
		}
		c->close_req = 1;
		if (!c->close_reason)
			c->close_reason = RL_CLOSE_SHUTDOWN;
		if (c->state == RL_CONN_CONNECTING)
			cancel_connect(w, c, i);
		queue_work(w, c, i);
	}
	rl_info(w->id, "stopping: draining %u connection(s), up to %u ms",
		w->conns.used, w->cfg->drain_timeout_ms);
}

static NOINLINE void abort_all(struct rl_worker *w)
{
	w->aborted = 1;
	for (uint32_t i = 0; i < w->conns.top; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, i);

		if (c->state != RL_CONN_OPEN && c->state != RL_CONN_CLOSING)
			continue;
		c->aborting = 1;
		queue_work(w, c, i);
	}
	rl_warn(w->id, "drain timeout: aborting remaining connections");
}

/* -- Completions ---------------------------------------------------------- */


static NOINLINE int on_accept(struct rl_worker *w, struct io_uring_cqe *cqe,
			      rl_event *ev)
{
	struct rl_listener *l = &w->ls[ud_idx(cqe->user_data)];
	const struct rl_config *cfg = w->cfg;
	int fd = cqe->res, one = 1;
	struct rl_conn *c;
	uint32_t idx;

	if (!(cqe->flags & IORING_CQE_F_MORE))
		l->armed = 0;
	if (fd < 0) {
		if (fd != -ECANCELED && !w->stopping) {
			/* EMFILE and friends: try again later, not at once (the
			 * pending connections wait in the listen backlog).  One
			 * line when it starts and one when it ends, not ten a
			 * second for as long as it lasts. */
			w->stats.accept_errors++;
			if (!l->failing++)
				rl_warn(w->id, "accept failed: %s; retrying every "
					"100 ms", strerror(-fd));
			l->retry_at_ns = now_ns() + ACCEPT_RETRY_NS;
		}
		return 0;
	}
	if (unlikely(l->failing)) {
		rl_info(w->id, "accepting again after %llu failed accepts",
			(unsigned long long)l->failing);
		l->failing = 0;
	}
	if (w->stopping)
		goto reject;
	if (atomic_fetch_add(&w->shared->live_conns, 1) >= cfg->max_conns) {
		atomic_fetch_sub(&w->shared->live_conns, 1);
		goto reject;
	}
	c = rl_conntab_alloc(&w->conns, &idx);
	if (!c) {
		atomic_fetch_sub(&w->shared->live_conns, 1);
		goto reject;
	}
	c->fd = fd;
	c->active_ns = w->clock.mono_ns;
	if (!l->is_unix)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	w->stats.accepted++;
	arm_recv(w, c, idx);
	/* res: which listen address accepted it, for multi-protocol scripts. */
	fill_event(ev, RL_EV_OPEN, idx, c->gen, (int32_t)ud_idx(cqe->user_data));
	return 1;
reject:
	/* Over the limit: closed at once, existing connections unaffected. */
	w->stats.rejected++;
	close(fd);
	if (w->stats.rejected == 1 || (w->stats.rejected & 1023) == 0)
		rl_warn(w->id, "connection limit (%u) reached: %llu rejected",
			cfg->max_conns, (unsigned long long)w->stats.rejected);
	return 0;
}

static NOINLINE int recv_ended(struct rl_worker *w, struct rl_conn *c,
			       uint32_t idx, int res, rl_event *ev)
{
	int nev = 0;

	if (res == 0) {
		c->rd_eof = 1;
		if (c->eof_event && c->state == RL_CONN_OPEN && !c->close_req &&
		    !c->aborting) {
			fill_event(ev, RL_EV_EOF, idx, c->gen, 0);
			nev = 1;
		}
	} else if (res == -ENOBUFS) {
		/* The ring is empty.  The bytes wait in the socket; the recv
		 * is re-armed when buffers come back (at once if ids were
		 * only waiting off the ring). */
		rl_bufring_starved(&w->br);
		if (want_recv(c) && !c->parked &&
		    vec_push64(&w->parked, (uint64_t)c->gen << 32 | idx) == 0) {
			c->parked = 1;
			w->stats.enobufs++;
		}
	} else if (res < 0 && res != -ECANCELED) {
		if (!c->close_reason)
			c->close_reason = res;
		c->aborting = 1;
	}
	queue_work(w, c, idx);
	return nev;
}

static inline int on_recv(struct rl_worker *w, struct io_uring_cqe *cqe,
			  rl_event *ev)
{
	uint32_t idx = ud_idx(cqe->user_data);
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   ud_gen(cqe->user_data));
	int res = cqe->res;
	int32_t bid = -1;

	if (cqe->flags & IORING_CQE_F_BUFFER) {
		bid = (int32_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		rl_bufring_take(&w->br, (uint32_t)bid);
	}
	if (c && !(cqe->flags & IORING_CQE_F_MORE)) {
		/* Multishot ended; process_conn re-arms it if wanted. */
		c->recv_armed = 0;
		queue_work(w, c, idx);
	}
	if (likely(res > 0 && bid >= 0 && c && c->state == RL_CONN_OPEN &&
		   !c->close_req && !c->aborting)) {
		w->stats.bytes_in += (uint64_t)res;
		c->active_ns = w->clock.mono_ns;
		if (likely(vec_push32(&w->held, (uint32_t)bid) == 0)) {
			ev->type = RL_EV_DATA;
			ev->conn = idx;
			ev->gen = c->gen;
			ev->bid = bid;
			ev->ptr = rl_bufring_addr(&w->br, (uint32_t)bid);
			ev->len = (uint32_t)res;
			ev->res = 0;
			return 1;
		}
		/* Cannot track the lease: the connection cannot be served
		 * without losing bytes, so it ends. */
		c->close_reason = -ENOMEM;
		c->aborting = 1;
	}
	/* Nobody will look at these bytes: the connection is gone or
	 * closing. */
	if (bid >= 0)
		rl_bufring_unref(&w->br, (uint32_t)bid);
	if (c && res <= 0)
		return recv_ended(w, c, idx, res, ev);
	return 0;
}

static int on_send(struct rl_worker *w, struct io_uring_cqe *cqe,
		   rl_event *ev)
{
	uint32_t idx = ud_idx(cqe->user_data);
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   ud_gen(cqe->user_data));
	int res = cqe->res;

	/* A slot is never freed with a send in flight, so c is live. */
	if (unlikely(!c))
		return 0;
	c->send_inflight = 0;
	if (likely(res > 0)) {
		rl_sendq_advance(&c->sq, &w->pool, &w->br, (size_t)res);
		w->stats.bytes_out += (uint64_t)res;
		c->active_ns = w->clock.mono_ns;
		/* A short send means the peer reads slower than we write:
		 * give its ring buffers back by copying what is left. */
		c->slow = (uint32_t)res < c->inflight_bytes;
		if (unlikely(c->slow) && rl_sendq_has_refs(&c->sq))
			rl_sendq_detach(&c->sq, &w->pool, &w->br);
	} else if (res < 0) {
		if (!c->close_reason)
			c->close_reason = res;
		c->aborting = 1;
	}
	queue_work(w, c, idx);
	/* It was backed up; whoever paused because of it may go on. */
	if (unlikely(c->drain_notify) && c->sq.bytes <= w->cfg->low_water &&
	    c->state == RL_CONN_OPEN && !c->aborting) {
		c->drain_notify = 0;
		fill_event(ev, RL_EV_DRAIN, idx, c->gen, 0);
		return 1;
	}
	return 0;
}

static NOINLINE int on_connect(struct rl_worker *w, struct io_uring_cqe *cqe,
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
	if (res < 0 && res != -ECANCELED && !c->aborting && !w->stopping &&
	    connect_next(w, c, idx, res) == 0)
		return 0;
	free(c->connect_arg);
	c->connect_arg = NULL;
	if (res < 0 || c->aborting || w->stopping) {
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
	fill_event(ev, RL_EV_CONNECT, idx, c->gen, 0);
	return 1;
}

static NOINLINE void on_wake(struct rl_worker *w, struct io_uring_cqe *cqe)
{
	(void)cqe;
	if (atomic_exchange(&w->reload_req, 0))
		w->reload_pending = 1;
	if (w->inbox)
		take_answers(w);
	if (!atomic_load(&w->stop_req))
		arm_wake(w);
}

static inline int on_cqe(struct rl_worker *w, struct io_uring_cqe *cqe,
			 rl_event *ev)
{
	switch (ud_op(cqe->user_data)) {
	case OP_RECV:
		return on_recv(w, cqe, ev);
	case OP_SEND:
		return on_send(w, cqe, ev);
	case OP_CONNECT:
		return on_connect(w, cqe, ev);
	case OP_ACCEPT:
		return on_accept(w, cqe, ev);
	case OP_WAKE:
		on_wake(w, cqe);
		return 0;
	default:
		return 0;
	}
}

static int reap(struct rl_worker *w, rl_event *ev, int n, int max)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	/* Each completion makes at most one event: stop while there is room
	 * for it; the rest wait in the CQ for the next batch. */
	io_uring_for_each_cqe(&w->ring, head, cqe) {
		if (n >= max)
			break;
		n += on_cqe(w, cqe, &ev[n]);
		seen++;
	}
	io_uring_cq_advance(&w->ring, seen);
	/* More completions than the CQ holds: the kernel keeps the rest and
	 * posts them at our next io_uring_enter (every poll enters). */
	if (unlikely(IO_URING_READ_ONCE(*w->ring.sq.kflags) &
		     IORING_SQ_CQ_OVERFLOW))
		w->stats.cq_overflows++;
	return n;
}

static int emit_closed(struct rl_worker *w, rl_event *ev, int n, int max)
{
	uint32_t *q = w->closed.p;

	while (w->closed.head < w->closed.n && n < max) {
		uint32_t idx = q[w->closed.head++];
		struct rl_conn *c = rl_conntab_at(&w->conns, idx);

		ev[n].type = RL_EV_CLOSE;
		ev[n].conn = idx;
		ev[n].gen = c->gen;
		ev[n].bid = -1;
		/* The slot owns the text: it lives until the slot is freed. */
		ev[n].ptr = (const uint8_t *)c->close_text;
		ev[n].len = c->close_text ? (uint32_t)strlen(c->close_text) : 0;
		ev[n].res = c->close_reason;
		n++;
		/* Freed at the next poll, once Lua has run on_close: a handler
		 * earlier in this batch must not get this slot for a new
		 * connection while its CLOSE is still to be dispatched. */
		if (vec_push32(&w->released, idx)) {
			ev[n - 1].ptr = NULL;
			ev[n - 1].len = 0;
			rl_conntab_release(&w->conns, idx);
		}
	}
	if (w->closed.head == w->closed.n)
		w->closed.head = w->closed.n = 0;
	return n;
}

/* now: the clock if the caller read it, else 0 (read here only when a
 * deadline needs it: the common wait has none). */
static void wait_completions(struct rl_worker *w, int block, uint64_t now)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts;
	uint64_t until = UINT64_MAX;
	int ret;

	if (!block) {
		/* DEFER_TASKRUN: completions are posted only when we enter
		 * the kernel asking for events. */
		ret = io_uring_submit_and_get_events(&w->ring);
		goto out;
	}
	if (w->stopping) {
		if (!now)
			now = now_ns();
		until = w->aborted ? now + 100000000ull : w->deadline_ns;
	}
	if (w->wake_at_ns && w->wake_at_ns < until)
		until = w->wake_at_ns;
	if (w->resolve_due_ns && w->resolve_due_ns < until)
		until = w->resolve_due_ns;
	for (int i = 0; i < w->nls; i++)
		if (!w->ls[i].armed && w->ls[i].fd >= 0 &&
		    w->ls[i].retry_at_ns < until)
			until = w->ls[i].retry_at_ns;
	/* The watchdog does not count time spent waiting against Lua. */
	__atomic_store_n(&w->guard.idle, 1, __ATOMIC_RELAXED);
	if (until == UINT64_MAX) {
		ret = io_uring_submit_and_wait(&w->ring, 1);
	} else {
		uint64_t d;

		if (!now)
			now = now_ns();
		d = until > now ? until - now : 0;

		ts.tv_sec = d / 1000000000ull;
		ts.tv_nsec = d % 1000000000ull;
		ret = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts,
						       NULL);
	}
	w->guard.seq++;
	__atomic_store_n(&w->guard.idle, 0, __ATOMIC_RELAXED);
out:
	if (ret >= 0 || ret == -ETIME || ret == -EINTR)
		w->nslots = 0;
	else if (ret != -EBUSY && ret != -EAGAIN)
		rl_err(w->id, "io_uring_enter failed: %s", strerror(-ret));
}

int rl_worker_poll(rl_worker *w, rl_event *ev, int max)
{
	uint64_t now = 0;
	int n;

	if (unlikely(max <= 0))
		return 0;
	release_held(w);
	if (unlikely(atomic_load_explicit(&w->stop_req, memory_order_relaxed)) &&
	    !w->stopping)
		begin_stop(w);
	if (unlikely(w->resolving.n))
		expire_resolving(w);
	process_work(w);
	if (w->parked.n)
		rearm_parked(w);
	rl_bufring_publish(&w->br);

	n = emit_closed(w, ev, 0, max);
	if (unlikely(w->drained.n))
		n = emit_drained(w, ev, n, max);
	if (unlikely(w->again.n))
		n = emit_again(w, ev, n, max);
	if (unlikely(w->reload_pending) && n < max) {
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n++].type = RL_EV_RELOAD;
		w->reload_pending = 0;
	}
	if (unlikely(w->stopping)) {
		now = now_ns();
		if (w->conns.used == 0 && n == 0)
			return -1;
		if (!w->aborted && now >= w->deadline_ns)
			abort_all(w);
	}
	for (int i = 0; i < w->nls; i++) {
		if (unlikely(!w->ls[i].armed && w->ls[i].fd >= 0)) {
			if (!now)
				now = now_ns();
			rearm_listeners(w, now);
			break;
		}
	}
	wait_completions(w, n == 0 && w->work.n == 0 && w->closed.n == 0 &&
			 w->drained.n == 0 && w->again.n == 0, now);
	clock_read(&w->clock);
	n = reap(w, ev, n, max);
	return emit_closed(w, ev, n, max);
}

/* -- Receive offers -------------------------------------------------------- */

static NOINLINE void close_unconsumed(struct rl_worker *w, struct rl_conn *c,
				      uint32_t idx, int err)
{
	rl_warn(w->id, "conn %u: closing: %s (limit %zu bytes)", idx,
		err == -EMSGSIZE ? "unconsumed bytes over the limit"
				 : "no memory for unconsumed bytes",
		w->max_unconsumed);
	c->close_reason = err == -EMSGSIZE ? RL_CLOSE_UNCONSUMED : err;
	c->close_req = 1;
	queue_work(w, c, idx);
}

/* An offer ended: what the handler left is held for a re-offer on resume
 * only if it is paused now, as it returns (it has just seen these bytes). */
static void offer_done(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	c->rx_held = c->user_paused && c->rx.len;
	c->rx_reoffer = 0;
	if (unlikely(c->eof_pending || c->rd_eof)) {
		/* An EOF event or a close waited for these bytes. */
		if (c->eof_pending && !c->rx_held)
			again_push(w, c, idx);
		queue_work(w, c, idx);
	}
}

int rl_rx_begin(rl_worker *w, rl_event *ev)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, ev->conn, ev->gen);
	struct rl_rx_offer o;
	int ret;

	if (unlikely(!offer_live(c)))
		return -1;
	/* The common case: nothing left over, the buffer is offered as is. */
	if (likely(c->rx.len == 0)) {
		if (unlikely(ev->len == 0))
			return -1;      /* a re-offer with nothing left */
		c->rx.buf = ev->ptr;
		c->rx.buf_len = ev->len;
		c->rx.buf_off = 0;
		c->rx.phase = RL_RX_DIRECT;
		c->rx_bid = ev->bid;
		return 0;
	}
	if (unlikely(ev->len == 0)) {
		/* Bytes held while paused, offered again after a resume
		 * (emit_again); paused again since, they wait. */
		if (c->user_paused || rl_rxbuf_reoffer(&c->rx, &o))
			return -1;
		c->rx_bid = -1;
		ev->ptr = o.ptr;
		ev->len = o.len;
		ev->bid = -1;
		return 0;
	}
	c->rx_bid = ev->bid;
	ret = rl_rxbuf_begin(&c->rx, ev->ptr, ev->len, w->max_unconsumed, &o,
			     &w->stats.residue_copied);
	if (unlikely(ret)) {
		close_unconsumed(w, c, ev->conn, ret);
		return -1;
	}
	ev->ptr = o.ptr;
	ev->len = o.len;
	ev->bid = o.in_buf ? c->rx_bid : -1;
	return 0;
}

int rl_rx_consumed(rl_worker *w, rl_event *ev, uint32_t consumed)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, ev->conn, ev->gen);
	struct rl_rx_offer o;
	int ret;

	if (unlikely(!offer_live(c)))
		return 0;
	if (likely(c->rx.phase == RL_RX_DIRECT && c->rx.len == 0 &&
		   consumed >= ev->len)) {
		c->rx.phase = RL_RX_IDLE;
		return 0;
	}
	if (consumed > ev->len)
		consumed = ev->len;
	ret = rl_rxbuf_consumed(&c->rx, consumed, w->max_unconsumed, &o,
				&w->stats.residue_copied);
	if (unlikely(ret < 0)) {
		close_unconsumed(w, c, ev->conn, ret);
		return -1;
	}
	if (ret == 1) {
		ev->ptr = o.ptr;
		ev->len = o.len;
		ev->bid = o.in_buf ? c->rx_bid : -1;
	} else {
		offer_done(w, c, ev->conn);
	}
	return ret;
}

int rl_rx_eof(rl_worker *w, rl_event *ev)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, ev->conn, ev->gen);

	/* The handler paused with bytes left: they come first, on resume. */
	if (c && rx_holding(c)) {
		c->eof_pending = 1;
		return -1;
	}
	return 0;
}

/* The connection a handler names, unless it is gone or only waiting for
 * its CLOSE event to reach Lua. */
static struct rl_conn *live_conn(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	return c && c->state != RL_CONN_DEAD ? c : NULL;
}

/* -- Connection calls from handlers ----------------------------------------- */

int rl_conn_send(rl_worker *w, uint32_t conn, uint32_t gen, const void *p,
		 size_t len, int32_t bid)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);
	int ret;

	if (unlikely(!c || (c->state != RL_CONN_OPEN &&
			    c->state != RL_CONN_CONNECTING) ||
		     c->close_req || c->aborting || c->wr_shut_req))
		return -EPIPE;
	if (unlikely(!len))
		return 0;
	/* Zero-copy only for a range that really lies in the leased buffer,
	 * and not for a slow reader or when the ring runs low: a lease held
	 * by a send that does not complete starves every other connection. */
	if (bid >= 0 && !c->slow &&
	    rl_bufring_bid_of(&w->br, p) == bid &&
	    (const uint8_t *)p + len <= rl_bufring_addr(&w->br, bid) + w->br.size &&
	    rl_bufring_available(&w->br) > w->br.nbufs / 8)
		ret = rl_sendq_push_ref(&c->sq, &w->br, p, len, bid);
	else
		ret = rl_sendq_push_copy(&c->sq, &w->pool, p, len);
	if (unlikely(ret))
		return ret;
	queue_work(w, c, conn);
	return 0;
}

/* Below this a copy into the reply's chunk is cheaper than a segment. */
#define BLOB_COPY_MAX 512

int rl_conn_send_blob(rl_worker *w, uint32_t conn, uint32_t gen, rl_blob *b,
		      size_t off, size_t len)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);
	int ret;

	if (unlikely(!c || (c->state != RL_CONN_OPEN &&
			    c->state != RL_CONN_CONNECTING) ||
		     c->close_req || c->aborting || c->wr_shut_req))
		return -EPIPE;
	if (off > b->len || len > b->len - off)
		return -EINVAL;
	if (len <= BLOB_COPY_MAX)
		ret = rl_sendq_push_copy(&c->sq, &w->pool, b->data + off, len);
	else
		ret = rl_sendq_push_blob(&c->sq, b, off, len);
	if (unlikely(ret))
		return ret;
	queue_work(w, c, conn);
	return 0;
}

rl_dict *rl_shared_dict(rl_worker *w)
{
	return w->shared->dict;
}

int rl_worker_prefetch(rl_worker *w, const rl_event *ev, int n,
		       const char *prefix, size_t plen)
{
	enum { GROUP = 32 };
	const uint8_t *keys[GROUP];
	uint32_t lens[GROUP];
	int m = 0, found = 0;

	/* The events' buffers are all still leased: nothing of the batch has
	 * been dispatched (or released) yet. */
	for (int i = 0; i < n; i++) {
		const uint8_t *p, *q, *sp, *end;

		if (ev[i].type != RL_EV_DATA || ev[i].len <= plen ||
		    memcmp(ev[i].ptr, prefix, plen))
			continue;
		p = (const uint8_t *)ev[i].ptr + plen;
		end = (const uint8_t *)ev[i].ptr + ev[i].len;
		/* The key ends at a space, CR or LF: find the line's LF, then
		 * a space before it (memchr twice beats a loop over three
		 * bytes).  No LF: the key may go on in the next bytes. */
		q = memchr(p, '\n', (size_t)(end - p));
		if (!q)
			continue;
		sp = memchr(p, ' ', (size_t)(q - p));
		if (sp)
			q = sp;
		else if (q > p && q[-1] == '\r')
			q--;
		if (q == p)
			continue;
		keys[m] = p;
		lens[m] = (uint32_t)(q - p);
		if (++m == GROUP) {
			found += rl_dict_prefetch(w->shared->dict, keys, lens, m);
			m = 0;
		}
	}
	if (m)
		found += rl_dict_prefetch(w->shared->dict, keys, lens, m);
	return found;
}

const rl_clock *rl_worker_clock(rl_worker *w)
{
	return &w->clock;
}

int64_t rl_unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rl_conn_close(rl_worker *w, uint32_t conn, uint32_t gen, int reason,
		  int abort)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	if (!c->close_reason)
		c->close_reason = reason;
	/* Waiting for its name with nothing queued to send: no reason to
	 * wait for the answer (queued bytes still go out once connected). */
	if (c->resolving && (abort || !c->sq.bytes)) {
		connect_abandon(w, c, conn, reason);
		return 0;
	}
	if (abort)
		c->aborting = 1;
	else
		c->close_req = 1;
	/* An abort does not wait for a connect in flight to time out. */
	if (abort && c->state == RL_CONN_CONNECTING)
		cancel_connect(w, c, conn);
	queue_work(w, c, conn);
	return 0;
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
		    uint32_t *gen)
{
	char host[RL_RESOLVE_HOST_MAX], port[8];
	struct connect_arg *arg;
	struct rl_addr a;
	struct rl_conn *c;
	uint32_t idx;
	int ret;

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
		connect_abandon(w, c, idx, RL_CLOSE_SHUTDOWN);
		ret = 0;
	} else {
		ret = start_resolve(w, c, idx, host, port);
	}
	if (ret) {
		/* Lua never saw the slot: give it back now. */
		free(arg);
		c->connect_arg = NULL;
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

int rl_conn_shutdown(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->wr_shut_req = 1;
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_pause(rl_worker *w, uint32_t conn, uint32_t gen, int pause)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	if (pause) {
		/* Bytes already left unconsumed wait for the resume.  During
		 * an offer to this connection, how the offer ends decides
		 * (offer_done). */
		if (c->rx.len && c->rx.phase == RL_RX_IDLE)
			c->rx_held = 1;
		c->user_paused = 1;
	} else {
		/* Resumed with bytes held: offered again at the next poll,
		 * without waiting for more from the peer. */
		if (c->user_paused && rx_holding(c) &&
		    c->rx.phase == RL_RX_IDLE && !c->rx_reoffer &&
		    again_push(w, c, conn) == 0)
			c->rx_reoffer = 1;
		c->user_paused = 0;
	}
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_want_drain(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->drain_notify = 1;
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_set_backpressure(rl_worker *w, uint32_t conn, uint32_t gen,
			     int on)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->no_self_pause = !on;
	if (!on && c->recv_paused) {
		c->recv_paused = 0;
		queue_work(w, c, conn);
	}
	return 0;
}

int rl_conn_set_eof_event(rl_worker *w, uint32_t conn, uint32_t gen, int on)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->eof_event = on != 0;
	return 0;
}

double rl_conn_last_active_ms(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	return c ? c->active_ns / 1e6 : 0;
}

size_t rl_conn_unsent(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	return c ? c->sq.bytes : 0;
}

int rl_conn_peer(rl_worker *w, uint32_t conn, uint32_t gen, char *buf,
		 size_t len)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	if (!c || c->fd < 0)
		return -ENOTCONN;
	return rl_addr_peer_text(c->fd, buf, len);
}

/* -- Worker facts ----------------------------------------------------------- */

int rl_worker_id(rl_worker *w) { return w->id; }
int rl_worker_count(rl_worker *w) { return w->shared->nworkers; }
rl_stats *rl_worker_stats(rl_worker *w)
{
	w->stats.conns = w->conns.used;
	w->stats.buffers_leased = w->br.leased;
	if (w->ring_ready)
		w->stats.cq_dropped = IO_URING_READ_ONCE(*w->ring.cq.koverflow);
	return &w->stats;
}
rl_guard *rl_worker_guard(rl_worker *w) { return &w->guard; }

void rl_worker_wake_at(rl_worker *w, uint64_t ns)
{
	w->wake_at_ns = ns;
}

void rl_worker_set_max_unconsumed(rl_worker *w, size_t bytes)
{
	if (bytes)
		w->max_unconsumed = bytes;
}

const char *rl_close_reason_text(int reason)
{
	switch (reason) {
	case RL_CLOSE_PEER: return "closed by peer";
	case RL_CLOSE_LOCAL: return "closed by handler";
	case RL_CLOSE_ERROR: return "handler error";
	case RL_CLOSE_UNCONSUMED: return "unconsumed bytes over the limit";
	case RL_CLOSE_SHUTDOWN: return "server shutting down";
	case RL_CLOSE_TIMEOUT: return "idle timeout";
	case RL_CLOSE_RESOLVE: return "host name did not resolve";
	case RL_CLOSE_RUNAWAY: return "handler ran past --handler-timeout";
	case RL_CLOSE_NOMEM: return "handler passed --lua-memory";
	}
	return reason < 0 ? strerror(-reason) : "unknown";
}

/* -- Setup and teardown ------------------------------------------------------ */

static int setup_ring(struct rl_worker *w)
{
	/* A config filled by hand (the unit tests) may leave it 0. */
	unsigned entries = w->cfg->ring_entries ? w->cfg->ring_entries
						: RL_RING_ENTRIES;
	struct io_uring_params p;
	int ret;

	memset(&p, 0, sizeof(p));
	/* One thread submits; task work runs when we ask for completions,
	 * not by interrupting us mid-batch. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
	p.cq_entries = entries * 4;
	ret = io_uring_queue_init_params(entries, &w->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			  IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &w->ring, &p);
	}
	if (ret)
		return ret;
	w->ring_ready = 1;
	return 0;
}

int rl_worker_setup(struct rl_worker *w)
{
	const struct rl_config *cfg = w->cfg;
	char err[256];
	int ret;

	w->max_unconsumed = cfg->max_unconsumed;
	w->wake_fd = -1;
	clock_read(&w->clock);
	ret = setup_ring(w);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "io_uring setup failed: %s", strerror(-ret));
		return ret;
	}
	ret = rl_bufring_init(&w->br, cfg->buffers, cfg->buffer_size);
	if (!ret)
		ret = rl_bufring_register(&w->br, &w->ring, RL_BGID);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "provided buffer ring (%u x %u bytes) failed: %s",
			 cfg->buffers, cfg->buffer_size, strerror(-ret));
		return ret;
	}
	ret = rl_chunkpool_init(&w->pool, 1024);
	if (!ret)
		ret = rl_conntab_init(&w->conns, cfg->max_conns);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "out of memory for the connection table");
		return ret;
	}
	w->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		ret = -errno;
		snprintf(w->setup_err, sizeof(w->setup_err), "eventfd: %s",
			 strerror(errno));
		return ret;
	}
	/* Answers to our names arrive through the wake eventfd too. */
	if (w->shared->resolver) {
		w->inbox = rl_resolve_inbox_new(w->shared->resolver, w->wake_fd);
		if (!w->inbox) {
			snprintf(w->setup_err, sizeof(w->setup_err),
				 "out of memory for the resolver inbox");
			return -ENOMEM;
		}
	}
	for (int i = 0; i < w->shared->naddrs; i++) {
		const struct rl_addr *a = &w->shared->addrs[i];

		if (a->is_unix) {
			ret = fcntl(w->shared->unix_fds[i], F_DUPFD_CLOEXEC, 0);
			if (ret < 0) {
				ret = -errno;
				snprintf(err, sizeof(err), "dup of '%s': %s",
					 a->text, strerror(errno));
			}
		} else {
			ret = rl_listen_open(a, err, sizeof(err));
		}
		if (ret < 0) {
			snprintf(w->setup_err, sizeof(w->setup_err), "%s", err);
			return ret;
		}
		w->ls[i].fd = ret;
		w->ls[i].is_unix = a->is_unix;
		w->nls++;
		arm_accept(w, i);
		if (w->id == 0)
			rl_info(-1, "listening on %s", a->text);
	}
	arm_wake(w);
	io_uring_submit(&w->ring);
	return 0;
}

void rl_worker_teardown(struct rl_worker *w)
{
	/* The ring goes first: once it is gone no operation can still be
	 * reading memory we free below. */
	if (w->ring_ready)
		io_uring_queue_exit(&w->ring);
	w->ring_ready = 0;
	/* No resolver thread touches the inbox or wake_fd after this; the
	 * request handles still in connect_args are dead and not used. */
	rl_resolve_inbox_free(w->inbox);
	w->inbox = NULL;
	release_held(w);
	for (uint32_t i = 0; w->conns.pages && i < w->conns.top; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, i);

		if (c->state == RL_CONN_FREE)
			continue;
		if (c->fd >= 0)
			close(c->fd);
		free(c->connect_arg);
		free(c->close_text);
		rl_rxbuf_free(&c->rx);
		rl_sendq_clear(&c->sq, &w->pool, &w->br);
	}
	for (int i = 0; i < w->nls; i++)
		if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
	rl_bufring_free(&w->br, NULL);
	rl_chunkpool_free(&w->pool);
	rl_conntab_free(&w->conns);
	vec_free(&w->held);
	vec_free(&w->work);
	vec_free(&w->parked);
	vec_free(&w->closed);
	vec_free(&w->released);
	vec_free(&w->drained);
	vec_free(&w->again);
	vec_free(&w->resolving);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	w->wake_fd = -1;
}

static void wake(struct rl_worker *w)
{
	uint64_t one = 1;

	if (w->wake_fd >= 0 && write(w->wake_fd, &one, sizeof(one)) < 0)
		return;
}

void rl_worker_request_stop(struct rl_worker *w)
{
	atomic_store(&w->stop_req, 1);
	wake(w);
}

void rl_worker_request_reload(struct rl_worker *w)
{
	atomic_store(&w->reload_req, 1);
	wake(w);
}

/* -- The C echo baseline ---------------------------------------------------- */

int rl_worker_run_builtin_echo(struct rl_worker *w)
{
	rl_event ev[256];
	int n;

	while ((n = rl_worker_poll(w, ev, 256)) >= 0) {
		for (int i = 0; i < n; i++) {
			rl_event *e = &ev[i];

			if (e->type != RL_EV_DATA || rl_rx_begin(w, e))
				continue;
			do {
				rl_conn_send(w, e->conn, e->gen, e->ptr, e->len,
					     e->bid);
			} while (rl_rx_consumed(w, e, e->len) == 1);
		}
	}
	return 0;
}
