/* rl_conn_io.c: the calls a handler makes for every message: receive
 * offers and sends; and the C echo baseline, which makes only these. */

#include <errno.h>
#include <stdint.h>

#include "rl_worker_int.h"

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
	/* Told its queue was over high water (rl_conn_writable), the handler
	 * stopped with bytes left: they wait for the drain, and so does
	 * everything the peer sends meanwhile.  Bytes left for want of more
	 * (a frame not complete) are not held: they need the next arrival. */
	c->wr_blocked = c->rx.len && c->wr_full_seen &&
			c->sq.bytes > w->cfg->high_water;
	c->wr_full_seen = 0;
	c->rx_held = (c->user_paused || c->wr_blocked) && c->rx.len;
	c->rx_reoffer = 0;
	if (unlikely(c->wr_blocked || conn_mem(c) != c->mem_counted))
		queue_work(w, c, idx);      /* and its memory is counted again */
	if (unlikely(c->eof_pending || c->rd_eof)) {
		/* An EOF event or a close waited for these bytes. */
		if (c->eof_pending && !c->rx_held)
			again_push(w, c, idx);
		queue_work(w, c, idx);
	}
}

/* The handler stopped with bytes left while the connection's queue was over
 * high water (offer_done): it sees nothing more of the connection until the
 * queue drains to low water.  Arrivals still on their way (the receive is
 * cancelled) join the held bytes, in order; the drain offers them all
 * (process_conn, unblock).  A handler that consumed everything is not
 * stopped: its next arrivals are offered as before (an echo queues them
 * without a copy). */
static NOINLINE int hold_arrival(struct rl_worker *w, struct rl_conn *c,
				 rl_event *ev)
{
	int ret;

	c->wr_blocked = 1;
	if (ev->len) {
		ret = rl_rxbuf_keep(&c->rx, ev->ptr, ev->len,
				    w->max_unconsumed, &w->stats.residue_copied);
		if (ret) {
			close_unconsumed(w, c, ev->conn, ret);
			return -1;
		}
	}
	if (c->rx.len)
		c->rx_held = 1;
	queue_work(w, c, ev->conn);
	return -1;
}

int rl_rx_begin(rl_worker *w, rl_event *ev)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, ev->conn, ev->gen);
	struct rl_rx_offer o;
	int ret;

	if (unlikely(!offer_live(c)))
		return -1;
	if (unlikely(c->wr_blocked))
		return hold_arrival(w, c, ev);
	c->wr_full_seen = 0;
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

/* -- Sends ---------------------------------------------------------------- */

int rl_conn_send(rl_worker *w, uint32_t conn, uint32_t gen, const void *p,
		 size_t len, int32_t bid)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);
	int ret;

	if (unlikely(!may_send(c)))
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

	if (unlikely(!may_send(c)))
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
