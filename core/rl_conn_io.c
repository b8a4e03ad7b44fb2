/* rl_conn_io.c: the calls a handler makes for every message: receive
 * offers and sends; and the C echo baseline, which makes only these. */

#include <errno.h>
#include <stdint.h>

#include "rl_tls.h"
#include "rl_worker_int.h"

/* -- Receive offers -------------------------------------------------------- */

/* An offer ended: what the handler left is held for a re-offer only if the
 * connection is paused or blocked now, as it returns (it has just seen
 * these bytes). */
static void offer_done(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	int left = c->rx.len || c->hold.n;

	/* Told its queue was over high water (rl_conn_writable), the handler
	 * stopped with bytes left: they wait for the drain, and so does
	 * everything the peer sends meanwhile.  Bytes left for want of more
	 * (a frame not complete) are not held: they need the next arrival. */
	c->wr_blocked = left && c->wr_full_seen &&
			sq_marked(c) > w->cfg->high_water;
	c->wr_full_seen = 0;
	/* Ranges still held (a resume offers them one per poll) keep the
	 * connection holding until the last one was offered. */
	c->rx_held = ((c->user_paused || c->wr_blocked) && left) || c->hold.n;
	c->rx_reoffer = 0;
	if (unlikely(c->hold.n) && !c->user_paused && !c->wr_blocked)
		rl_w_schedule_reoffer(w, c, idx);
	else if (!rx_holding(c) && !c->recv_armed)
		queue_work(w, c, idx);      /* receive again (want_recv) */
	if (unlikely(c->wr_blocked || conn_mem(c) != c->mem_counted ||
		     c->tls))
		queue_work(w, c, idx);      /* and its memory is counted again;
					     * TLS: plaintext left (kick) */
	if (unlikely(c->eof_pending || c->rd_eof)) {
		/* An EOF event or a close waited for these bytes. */
		if (c->eof_pending && !c->rx_held)
			again_push(w, c, idx);
		queue_work(w, c, idx);
	}
}

/* An arrival the handler is not to see yet: the connection is blocked
 * (offer_done), or ranges held before it are still to be offered.  It joins
 * the held bytes, in order (the receive is cancelled; these were on their
 * way); the drain or the resume offers them all.  A handler that consumed
 * everything is not blocked: its next arrivals are offered as before (an
 * echo queues them without a copy). */
static NOINLINE int hold_arrival(struct rl_worker *w, struct rl_conn *c,
				 rl_event *ev)
{
	int ret;

	if (ev->len) {
		ret = rl_w_keep(w, c, ev->conn, ev->bid, ev->ptr, ev->len, 0);
		if (ret) {
			rl_w_close_unconsumed(w, c, ev->conn, ret);
			return -1;
		}
	}
	if (c->rx.len || c->hold.n)
		c->rx_held = 1;
	queue_work(w, c, ev->conn);
	return -1;
}

/* A held range offered again, but its connection was paused or blocked
 * again since the event was made: back to the front of the held bytes (the
 * batch's lease on it ends at the next poll; the list takes its own). */
static NOINLINE int rehold(struct rl_worker *w, struct rl_conn *c,
			   rl_event *ev)
{
	int ret = rl_w_keep(w, c, ev->conn, ev->bid, ev->ptr, ev->len, 1);

	if (ret)
		rl_w_close_unconsumed(w, c, ev->conn, ret);
	else
		c->rx_held = 1;
	return -1;
}

int rl_rx_begin(rl_worker *w, rl_event *ev)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, ev->conn, ev->gen);
	struct rl_rx_offer o;
	int ret;

	if (unlikely(!offer_live(c)))
		return -1;
	if (unlikely(ev->res == RL_DATA_HELD)) {
		if (sq_marked(c) > w->cfg->high_water && !c->no_self_pause)
			c->wr_blocked = 1;      /* as below */
		if (c->user_paused || c->wr_blocked)
			return rehold(w, c, ev);
	} else if (unlikely(c->wr_blocked || c->hold.n)) {
		return hold_arrival(w, c, ev);
	} else if (unlikely(sq_marked(c) > w->cfg->high_water) &&
		   !c->no_self_pause) {
		/* Over the mark already (arrivals on their way when the
		 * receive was cancelled, or a handler that does not look at
		 * conn:writable(), as echo.lua): held until the drain, as if
		 * the handler had stopped. */
		c->wr_blocked = 1;
		return hold_arrival(w, c, ev);
	}
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
	ret = rl_rxbuf_begin(&c->rx, ev->ptr, ev->len, rx_limit(w, c), &o,
			     &w->stats.residue_copied);
	if (unlikely(ret)) {
		rl_w_close_unconsumed(w, c, ev->conn, ret);
		return -1;
	}
	ev->ptr = o.ptr;
	ev->len = o.len;
	ev->bid = o.in_buf ? c->rx_bid : -1;
	return 0;
}

/* The handler stopped, paused or over high water, inside an offer that
 * holds an arrival: the arrival's rest stays in its buffer (rl_w_keep),
 * not copied; what the residue held before it stays there. */
static NOINLINE int keep_in_place(struct rl_worker *w, struct rl_conn *c,
				  rl_event *ev, uint32_t consumed)
{
	uint32_t off;
	int ret = 0;

	if (!rl_rxbuf_stop(&c->rx, consumed, &off))
		return -2;      /* no arrival in this offer */
	if (off < c->rx.buf_len)
		ret = rl_w_keep(w, c, ev->conn, c->rx_bid, c->rx.buf + off,
				c->rx.buf_len - off, 1);
	if (unlikely(ret)) {
		rl_w_close_unconsumed(w, c, ev->conn, ret);
		return -1;
	}
	offer_done(w, c, ev->conn);
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
		/* A held range: the next one, or the EOF behind them. */
		if (unlikely(c->rx_held))
			offer_done(w, c, ev->conn);
		return 0;
	}
	if (consumed > ev->len)
		consumed = ev->len;
	if (c->rx_bid >= 0 && (c->user_paused ||
	    (c->wr_full_seen && sq_marked(c) > w->cfg->high_water)) &&
	    (ret = keep_in_place(w, c, ev, consumed)) != -2)
		return ret;
	ret = rl_rxbuf_consumed(&c->rx, consumed, rx_limit(w, c), &o,
				&w->stats.residue_copied);
	if (unlikely(ret < 0)) {
		rl_w_close_unconsumed(w, c, ev->conn, ret);
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

/* -- Receive ends (EOF, an empty ring, errors) ----------------------------- */

NOINLINE int rl_w_recv_ended(struct rl_worker *w, struct rl_conn *c,
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
	if (unlikely(c->tls))
		return rl_w_tls_send(w, c, conn, p, len, bid);
	/* Zero-copy only for a range that really lies in the leased buffer,
	 * and not for a slow reader or when the ring runs low: a lease held
	 * by a send that does not complete starves every other connection. */
	if (bid >= 0 && !c->slow &&
	    rl_bufring_bid_of(&w->br, p) == bid &&
	    (const uint8_t *)p + len <= rl_bufring_addr(&w->br, bid) + w->br.size &&
	    rl_bufring_spare(&w->br, (uint32_t)bid))
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
	if (unlikely(c->tls))   /* encrypted from a copy, as TLS sends are */
		return rl_w_tls_send(w, c, conn, b->data + off, len, -1);
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
