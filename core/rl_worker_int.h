/* rl_worker_int.h: what the pieces of a worker share (rl_worker.c and the
 * files beside it); not part of the API.
 *
 * The helpers the hot path calls are defined here, so that splitting the
 * worker into files put no new call on it: static inline where they were
 * inline, plain static where the compiler chose (unused: not every piece
 * calls each).  arm_accept, arm_wake and release_held are NOINLINE because
 * that is what the compiler chose while all their callers were in one
 * file; with fewer callers per file it would inline them into
 * rl_worker_poll and on_wake and reshuffle their code.
 * Slow paths shared between files are ordinary functions, named rl_w_*. */
#ifndef RL_WORKER_INT_H
#define RL_WORKER_INT_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "rl_log.h"
#include "rl_tls.h"
#include "rl_worker.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define NOINLINE    __attribute__((noinline))
#define RL_W_SHARED static __attribute__((unused))

#define RL_BGID 0

enum rl_op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_CANCEL,
	OP_WAKE,
	OP_CONNECT,
	OP_LINK_TIMEOUT,
	OP_FILE_READ,
	OP_SEND_POLL,     /* a direct file send waits for room (rl_file.c) */
};

static inline uint64_t ud_make(enum rl_op op, uint32_t gen, uint32_t idx)
{
	return (uint64_t)op << 56 | (uint64_t)(gen & RL_CONN_GEN_MASK) << 32 | idx;
}

static inline enum rl_op ud_op(uint64_t ud) { return (enum rl_op)(ud >> 56); }
static inline uint32_t ud_gen(uint64_t ud) { return (ud >> 32) & RL_CONN_GEN_MASK; }
static inline uint32_t ud_idx(uint64_t ud) { return (uint32_t)ud; }

#define now_ns rl_now_ns

RL_W_SHARED void clock_read(rl_clock *c)
{
	struct timespec ts;

	c->mono_ns = now_ns();
	clock_gettime(CLOCK_REALTIME, &ts);
	c->unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -- Small vectors ------------------------------------------------------- */

NOINLINE int rl_w_vec_grow(struct rl_vec *v, size_t elem);

static inline int vec_push32(struct rl_vec *v, uint32_t x)
{
	if (unlikely(v->n == v->cap) && rl_w_vec_grow(v, sizeof(x)))
		return -ENOMEM;
	((uint32_t *)v->p)[v->n++] = x;
	return 0;
}

static inline int vec_push64(struct rl_vec *v, uint64_t x)
{
	if (unlikely(v->n == v->cap) && rl_w_vec_grow(v, sizeof(x)))
		return -ENOMEM;
	((uint64_t *)v->p)[v->n++] = x;
	return 0;
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

RL_W_SHARED void submit_now(struct rl_worker *w)
{
	int ret = io_uring_submit(&w->ring);

	/* sendmsg headers are copied by the kernel at submission, so the
	 * slots are free again once the SQEs are consumed. */
	if (ret >= 0 || io_uring_sq_ready(&w->ring) == 0)
		w->nslots = 0;
}

RL_W_SHARED struct io_uring_sqe *get_sqe(struct rl_worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);

	while (unlikely(!sqe)) {
		w->stats.sq_full++;
		submit_now(w);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

RL_W_SHARED void queue_work(struct rl_worker *w, struct rl_conn *c,
			    uint32_t idx)
{
	if (c->queued)
		return;
	/* On allocation failure the connection is simply looked at on its
	 * next completion. */
	if (vec_push32(&w->work, idx) == 0)
		c->queued = 1;
}

RL_W_SHARED void cancel_connect(struct rl_worker *w, struct rl_conn *c,
				uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_cancel64(sqe, ud_make(OP_CONNECT, c->gen, idx), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
}

RL_W_SHARED NOINLINE void arm_accept(struct rl_worker *w, int li)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_multishot_accept(sqe, w->ls[li].fd, NULL, NULL,
				       SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, (uint32_t)li));
	w->ls[li].armed = 1;
}

RL_W_SHARED NOINLINE void arm_wake(struct rl_worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

/* -- Connection state ------------------------------------------------------ */

/* Bytes may still be offered to the connection's handler. */
static inline int offer_live(const struct rl_conn *c)
{
	return c && c->state == RL_CONN_OPEN && !c->close_req && !c->aborting;
}

/* Open (or connecting: sends queue until it is established) and not
 * closing or shut for writing. */
static inline int may_send(const struct rl_conn *c)
{
	return c && (c->state == RL_CONN_OPEN ||
		     c->state == RL_CONN_CONNECTING) &&
	       !c->close_req && !c->aborting && !c->wr_shut_req;
}

/* Unconsumed bytes the handler left while paused or blocked (a residue,
 * ranges of ring buffers): they are offered again when it may go on, and
 * the peer's EOF waits until then. */
static inline int rx_holding(const struct rl_conn *c)
{
	return c->rx_held && (c->rx.len || c->hold.n);
}

/* Not while bytes held from a pause or a block are still to be offered
 * again: arrivals behind them would only pile up (copied, once the ring
 * runs low) while the handler takes a few requests per drain. */
static inline int want_recv(const struct rl_conn *c)
{
	return c->state == RL_CONN_OPEN && !c->rd_eof && !c->recv_paused &&
	       !c->user_paused && !c->close_req && !c->aborting &&
	       !rx_holding(c) && !(c->tls && c->tls->rx_full);
}

/* The residue's limit: max_unconsumed, plus what held bytes copied into it
 * (rl_pause.c, when the ring ran low): those were on their way when the
 * connection stopped, not a frame the peer made that large. */
static inline size_t rx_limit(const struct rl_worker *w, struct rl_conn *c)
{
	if (!c->rx.len)
		c->rx_slack = 0;
	return w->max_unconsumed + c->rx_slack;
}

/* The unsent bytes --high-water and --low-water count: not those still in
 * the receive buffers they arrived in (an echo's, a proxy's), which cost
 * no memory of their own.  A peer that reads slower than we send gets them
 * copied (on_send, rl_sendq_detach), and then they count; so do all of
 * them once the ring runs low (rl_conn_send copies instead of leasing). */
static inline size_t sq_marked(const struct rl_conn *c)
{
	return c->sq.bytes - c->sq.ref_bytes;
}

/* n bytes went out (already advanced in the queue); short: fewer than
 * offered, so the peer reads slower than we write: its ring buffers go
 * back, what is left is copied (and counts for the marks from then on). */
static inline void sent_bytes(struct rl_worker *w, struct rl_conn *c,
			      size_t n, int short_send)
{
	w->stats.bytes_out += n;
	if (n)
		c->active_ns = w->clock.mono_ns;
	c->slow = short_send != 0;
	if (unlikely(c->slow) && rl_sendq_has_refs(&c->sq))
		rl_sendq_detach(&c->sq, &w->pool, &w->br);
}

/* What a connection holds for --max-client-memory: queued bytes (a file
 * range's only once read) and the residue's allocation. */
static inline uint64_t conn_mem(const struct rl_conn *c)
{
	return c->sq.bytes - c->sq.file_bytes + c->rx.cap;
}

static inline void conn_mem_update(struct rl_worker *w, struct rl_conn *c)
{
	/* An aborting connection's bytes are being dropped. */
	uint64_t m = c->aborting ? 0 : conn_mem(c);

	w->client_bytes += m - c->mem_counted;
	c->mem_counted = m;
}

/* Look at the connection at the next poll (emit_again). */
static inline int again_push(struct rl_worker *w, const struct rl_conn *c,
			     uint32_t idx)
{
	return vec_push64(&w->again, (uint64_t)c->gen << 32 | idx);
}

RL_W_SHARED NOINLINE void release_held(struct rl_worker *w)
{
	uint32_t *bids = w->held.p, *slots = w->released.p;

	for (uint32_t i = 0; i < w->held.n; i++)
		rl_bufring_unref(&w->br, bids[i]);
	w->held.n = 0;
	for (uint32_t i = 0; i < w->released.n; i++)
		rl_conntab_release(&w->conns, slots[i]);
	w->released.n = 0;
}

/* A receive ended (res <= 0): EOF, ENOBUFS, an error.  1 when it made an
 * event (EOF events). */
NOINLINE int rl_w_recv_ended(struct rl_worker *w, struct rl_conn *c,
			     uint32_t idx, int res, rl_event *ev);

/* -- Outbound connects (rl_connect.c) ------------------------------------ */

void rl_w_connect_abandon(struct rl_worker *w, struct rl_conn *c,
			  uint32_t idx, int reason);
/* Answers the resolver threads left for us (on a wake). */
NOINLINE void rl_w_take_answers(struct rl_worker *w);
/* Connects whose name is still resolving at their deadline. */
NOINLINE void rl_w_expire_resolving(struct rl_worker *w);
/* A CONNECT completion: 1 when it made an event. */
NOINLINE int rl_w_on_connect(struct rl_worker *w, struct io_uring_cqe *cqe,
			     rl_event *ev);

/* -- File segments of send queues (rl_file.c) ----------------------------- */

/* Read the connection's next file bytes: 0 when a read started, 1 when
 * none is needed now, -errno when none could start (it is aborted). */
int rl_w_submit_file_read(struct rl_worker *w, struct rl_conn *c,
			  uint32_t idx);
NOINLINE void rl_w_on_file_read(struct rl_worker *w, struct io_uring_cqe *cqe);
/* Send file bytes from the page cache with sendfile: 1 when the caller is
 * to send what is left, 0 when handled. */
NOINLINE int rl_w_send_files_direct(struct rl_worker *w, struct rl_conn *c,
				    uint32_t idx);
NOINLINE void rl_w_on_send_poll(struct rl_worker *w, struct io_uring_cqe *cqe);

/* -- Bytes held while paused or blocked (rl_pause.c) --------------------- */

NOINLINE void rl_w_close_unconsumed(struct rl_worker *w, struct rl_conn *c,
				    uint32_t idx, int err);
/* Keep len bytes at p, in ring buffer bid (-1: not one), for a later offer:
 * behind what is held, or (front) before it.  In place while the ring has
 * buffers to spare, else copied into the residue.  0 or -ENOMEM. */
int rl_w_keep(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
	      int32_t bid, const uint8_t *p, uint32_t len, int front);
/* The ring runs low: copy every held range into its residue. */
NOINLINE void rl_w_unhold_low(struct rl_worker *w);
/* A connection ends: its held ranges' leases end. */
void rl_w_hold_clear(struct rl_worker *w, struct rl_conn *c);
/* Offer held bytes again at the next poll. */
void rl_w_schedule_reoffer(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx);
/* A blocked connection's queue drained to low water. */
NOINLINE void rl_w_unblock(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx);
/* Held bytes and held-back EOFs, as events. */
NOINLINE int rl_w_emit_again(struct rl_worker *w, rl_event *ev, int n,
			     int max);

/* -- --max-client-memory (rl_budget.c) ------------------------------------ */

/* Once per poll: publish what this worker's connections hold and, while
 * the process is over the budget, close the largest holders first. */
NOINLINE void rl_w_client_memory_check(struct rl_worker *w);

#endif
