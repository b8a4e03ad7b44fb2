/* rl_worker.c: one worker thread: its ring, buffers, connections and loop.
 *
 * The loop is driven from outside (Lua, or the C echo baseline): each
 * rl_worker_poll() call ends the previous batch (handler leases end,
 * queued sends are submitted, parked receives re-armed, the buffer ring
 * tail is published once), waits, and turns completions into events.
 *
 * This file is the loop: submission, connection life, completions and
 * rl_worker_poll().  Beside it: rl_conn_io.c (receive offers, sends),
 * rl_conn_api.c (the other calls handlers make), rl_tls_io.c (TLS
 * sessions), rl_connect.c (outbound
 * connects and names), rl_worker_setup.c (setup, teardown, wakes);
 * rl_worker_int.h holds what they share.
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
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_tls.h"
#include "rl_worker_int.h"

#define ACCEPT_RETRY_NS (100ull * 1000000)

#ifndef IORING_CQE_BUFFER_SHIFT
#define IORING_CQE_BUFFER_SHIFT 16
#endif

/* -- Small vectors ------------------------------------------------------- */

NOINLINE int rl_w_vec_grow(struct rl_vec *v, size_t elem)
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

/* -- Submission ---------------------------------------------------------- */

static void arm_recv(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	/* After a pause, one buffer first: a multishot receive takes every
	 * buffer it can fill while the socket has bytes, and a client that
	 * pipelines without reading has MiBs there; they would all be held
	 * again at the handler's next stop. */
	if (unlikely(c->recv_once))
		io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
	else
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

static void submit_send(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe;
	struct rl_send_slot *slot;
	size_t bytes;
	int niov;

	if (w->nslots == RL_SEND_SLOTS)
		submit_now(w);
	slot = &w->slots[w->nslots];
	/* A file's bytes go from the page cache with sendfile (what
	 * precedes them first, on this thread), or are read first and sent
	 * with what precedes them. */
	if (unlikely(c->sq.file_bytes) && !rl_w_send_files_direct(w, c, idx))
		return;
	if (!c->sq.bytes)
		return;
	niov = rl_sendq_iov(&c->sq, slot->iov, RL_IOV_MAX, &bytes);
	sqe = get_sqe(w);
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

#define RL_TRIM_DELAY_NS 1000000000ull  /* closes to trim_heap, if idle */

static void finalize(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->connect_arg);
	c->connect_arg = NULL;
	rl_rxbuf_free(&c->rx);
	rl_w_hold_clear(w, c);
	rl_sendq_clear(&c->sq, &w->pool, &w->br);
	if (c->tls)
		rl_w_tls_free(w, c);
	w->client_bytes -= c->mem_counted;
	c->mem_counted = 0;
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
	if (!w->trim_at_ns)
		w->trim_at_ns = w->clock.mono_ns + RL_TRIM_DELAY_NS;
}

static void backpressure(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (!c->recv_paused && !c->no_self_pause &&
	    sq_marked(c) > w->cfg->high_water) {
		/* The peer does not read what we send: stop reading what it
		 * sends until our queue drains. */
		c->recv_paused = 1;
		c->recv_once = 1;
		c->drain_notify = 1;
		w->stats.paused++;
		if (c->recv_armed)
			cancel_recv(w, c, idx);
	} else if (c->recv_paused && sq_marked(c) <= w->cfg->low_water) {
		c->recv_paused = 0;
	}
	/* Paused by its handler (a proxy whose other side is backed up), or
	 * a TLS session's ciphertext backlog is full. */
	if ((c->user_paused || (c->tls && c->tls->rx_full)) && c->recv_armed) {
		cancel_recv(w, c, idx);
		c->recv_once = 1;
	}
}

static void process_conn(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (unlikely(c->aborting)) {
		c->state = RL_CONN_CLOSING;
		conn_shutdown(c);
		/* After SHUT_RD the kernel still queues what the peer sends,
		 * and a multishot recv goes on delivering it: a peer that keeps
		 * sending would keep the connection (and its fd) forever. */
		if (c->recv_armed)
			cancel_recv(w, c, idx);
		if (!c->send_inflight)
			rl_sendq_clear(&c->sq, &w->pool, &w->br);
	} else if (c->state == RL_CONN_CONNECTING) {
		return;         /* sends wait for the connection */
	} else {
		if (unlikely(c->tls))
			rl_w_tls_process(w, c, idx);
		if (c->sq.bytes && !c->send_inflight)
			submit_send(w, c, idx);
		backpressure(w, c, idx);
		if (unlikely(c->wr_blocked) && sq_marked(c) <= w->cfg->low_water)
			rl_w_unblock(w, c, idx);
		if (unlikely(c->drain_notify) && sq_marked(c) <= w->cfg->low_water &&
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
		    (!c->tls || !c->tls->plain.bytes) &&
		    ((c->rd_eof && !rx_holding(c) && !c->eof_pending &&
		      (!c->eof_event || c->wr_shut)) ||
		     c->close_req) &&
		    !c->sq.bytes && !c->send_inflight) {
			c->state = RL_CONN_CLOSING;
			conn_shutdown(c);
		}
		if (want_recv(c) && !c->recv_armed && !c->parked)
			arm_recv(w, c, idx);
		/* Plaintext left while it was paused or blocked. */
		if (unlikely(c->tls))
			rl_w_tls_kick(w, c, idx);
	}
	conn_mem_update(w, c);
	if (c->state == RL_CONN_CLOSING && !c->recv_armed && !c->send_inflight)
		finalize(w, c, idx);
}

static void process_work(struct rl_worker *w)
{
	/* process_conn seldom queues work (a TLS error found while
	 * encrypting): the list is read afresh at each step, as it may have
	 * grown and moved, and what joined it is processed in this pass. */
	for (uint32_t i = 0; i < w->work.n; i++) {
		uint32_t idx = ((uint32_t *)w->work.p)[i];
		struct rl_conn *c = rl_conntab_at(&w->conns, idx);

		c->queued = 0;
		if (c->state == RL_CONN_OPEN || c->state == RL_CONN_CLOSING)
			process_conn(w, c, idx);
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

static NOINLINE void begin_stop(struct rl_worker *w)
{
	w->stopping = 1;
	w->stop_pending = 1;
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
			rl_w_connect_abandon(w, c, i, RL_CLOSE_SHUTDOWN);
			continue;
		}
		/* A task's: closed by the task when its work is done. */
		if (c->task_held)
			continue;
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
	if (l->tls) {
		/* The handler sees it once the handshake is done. */
		if (rl_w_tls_accept(w, c, idx, (int)ud_idx(cqe->user_data))) {
			c->close_reason = -ENOMEM;
			c->aborting = 1;
			queue_work(w, c, idx);
		}
		return 0;
	}
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
		/* Multishot ended, or the one receive after a pause did;
		 * process_conn re-arms it if wanted (multishot, unless the
		 * handler stops again at these bytes). */
		c->recv_armed = 0;
		c->recv_once = 0;
		queue_work(w, c, idx);
	}
	if (unlikely(c && c->tls))
		return rl_w_tls_recv(w, c, idx, bid, res, ev);
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
		return rl_w_recv_ended(w, c, idx, res, ev);
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
		sent_bytes(w, c, (size_t)res, (uint32_t)res < c->inflight_bytes);
	} else if (res < 0) {
		if (!c->close_reason)
			c->close_reason = res;
		c->aborting = 1;
	}
	queue_work(w, c, idx);
	/* It was backed up; whoever paused because of it may go on. */
	if (unlikely(c->drain_notify) && sq_marked(c) <= w->cfg->low_water &&
	    c->state == RL_CONN_OPEN && !c->aborting) {
		c->drain_notify = 0;
		fill_event(ev, RL_EV_DRAIN, idx, c->gen, 0);
		return 1;
	}
	return 0;
}

static NOINLINE void on_wake(struct rl_worker *w, struct io_uring_cqe *cqe)
{
	(void)cqe;
	if (atomic_exchange(&w->reload_req, 0))
		w->reload_pending = 1;
	if (w->inbox)
		rl_w_take_answers(w);
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
		return rl_w_on_connect(w, cqe, ev);
	case OP_ACCEPT:
		return on_accept(w, cqe, ev);
	case OP_WAKE:
		on_wake(w, cqe);
		return 0;
	case OP_FILE_READ:
		rl_w_on_file_read(w, cqe);
		return 0;
	case OP_SEND_POLL:
		rl_w_on_send_poll(w, cqe);
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
/* A second after connections closed, with nothing to do: what they held
 * (send chunks, residues, replies) went back to malloc, which keeps freed
 * memory; malloc_trim returns its free pages to the kernel, so RSS follows
 * an attack's end instead of staying at its peak.  Only when idle, and at
 * most once a second: it walks the whole heap. */
static NOINLINE void trim_heap(struct rl_worker *w)
{
	malloc_trim(0);
	w->trim_at_ns = 0;
	w->stats.heap_trims++;
}

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
	if (unlikely(w->tls_hs.n)) {
		uint64_t due = rl_w_tls_due(w);

		if (due && due < until)
			until = due;
	}
	if (unlikely(w->trim_at_ns)) {
		if (!now)
			now = now_ns();
		if (now >= w->trim_at_ns)
			trim_heap(w);
		else if (w->trim_at_ns < until)
			until = w->trim_at_ns;
	}
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
	w->epoch++;
	if (unlikely(atomic_load_explicit(&w->stop_req, memory_order_relaxed)) &&
	    !w->stopping)
		begin_stop(w);
	if (unlikely(w->resolving.n))
		rl_w_expire_resolving(w);
	process_work(w);
	if (w->cfg->max_client_memory)
		rl_w_client_memory_check(w);
	/* Buffers held for paused connections go back before the ring runs
	 * dry: their bytes are copied (rl_pause.c). */
	if (unlikely(w->holding.n) && rl_bufring_low(&w->br))
		rl_w_unhold_low(w);
	if (w->parked.n)
		rearm_parked(w);
	rl_bufring_publish(&w->br);

	n = emit_closed(w, ev, 0, max);
	if (unlikely(w->drained.n))
		n = emit_drained(w, ev, n, max);
	if (unlikely(w->again.n))
		n = rl_w_emit_again(w, ev, n, max);
	if (unlikely(w->tls_pending.n || w->tls_hs.n))
		n = rl_w_tls_emit(w, ev, n, max);
	if (unlikely(w->reload_pending) && n < max) {
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n++].type = RL_EV_RELOAD;
		w->reload_pending = 0;
	}
	if (unlikely(w->stop_pending) && n < max) {
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n++].type = RL_EV_STOP;
		w->stop_pending = 0;
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
			 w->drained.n == 0 && w->again.n == 0 &&
			 (w->tls_pending.n == 0 || !w->br.nplain_free), now);
	clock_read(&w->clock);
	n = reap(w, ev, n, max);
	return emit_closed(w, ev, n, max);
}
