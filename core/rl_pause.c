/* rl_pause.c: bytes a paused or blocked connection holds, and their re-offer.
 *
 * A connection stops being offered bytes when its handler paused it
 * (rl_conn_pause) or stopped over high water (rl_conn_writable said no and
 * the handler left bytes: wr_blocked).  What it did not consume, and what
 * still arrives before the cancelled receive ends, is kept in order:
 * first the residue (bytes copied because a frame spans buffers), then
 * ranges of leased ring buffers (c->hold), never copied while the ring has
 * buffers to spare.  When the connection may go on, the ranges are offered
 * again one DATA event per poll, as if they had just arrived, before
 * anything received later; an EOF waits behind them.
 *
 * The ring is shared by every connection of the worker: when fewer than an
 * eighth of its buffers are left, the held ranges are copied into their
 * connections' residues (counted by --max-client-memory) and the buffers
 * go back, as slow readers' queued sends already are.
 */

#include <errno.h>
#include <stdint.h>

#include "rl_worker_int.h"

/* Held bytes are not the peer's choice of frame size but what was on its
 * way when the connection stopped (a batch of arrivals, bounded by the
 * ring): --max-unconsumed is not theirs to pass, --max-client-memory
 * counts them once copied.  This only keeps the residue's length in its
 * 32 bits. */
#define HELD_LIMIT (1u << 31)

static inline int ring_low(const struct rl_worker *w)
{
	return rl_bufring_low(&w->br);
}

NOINLINE void rl_w_close_unconsumed(struct rl_worker *w, struct rl_conn *c,
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

/* Remember that c holds buffers, for the copy when the ring runs low.  The
 * list is compacted when full, so it stays near the number of holders. */
static void holding_add(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_vec *v = &w->holding;

	if (c->on_holding)
		return;
	if (v->n == v->cap) {
		uint64_t *p = v->p;
		uint32_t k = 0;

		for (uint32_t i = 0; i < v->n; i++) {
			struct rl_conn *h = rl_conntab_get(&w->conns,
							   (uint32_t)p[i],
							   (uint32_t)(p[i] >> 32));

			if (h && h->hold.n)
				p[k++] = p[i];
			else if (h)
				h->on_holding = 0;
		}
		v->n = k;
	}
	/* Not listed (no memory): its buffers are not copied out early. */
	if (vec_push64(v, (uint64_t)c->gen << 32 | idx) == 0)
		c->on_holding = 1;
}

/* Copy the first n held ranges into the residue (all: n = hold.n). */
static int unhold_n(struct rl_worker *w, struct rl_conn *c, uint32_t n)
{
	struct rl_rxhold_ent e;
	int ret;

	while (n-- && c->hold.n) {
		e = c->hold.e[c->hold.head];
		ret = rl_rxbuf_keep(&c->rx, rl_bufring_addr(&w->br, e.bid) + e.off,
				    e.len, HELD_LIMIT, &w->stats.residue_copied);
		if (ret)
			return ret;
		rl_rxhold_pop(&c->hold, &e);
		rl_bufring_unref(&w->br, (uint32_t)e.bid);
		w->stats.buffers_held--;
		w->stats.held_copied += e.len;
		c->rx_slack += e.len;
	}
	return 0;
}

int rl_w_keep(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
	      int32_t bid, const uint8_t *p, uint32_t len, int front)
{
	uint32_t pos = c->hold.n;
	int ret;

	/* In front: before the ranges still held, but after those put back
	 * in front during this batch (held ranges offered together, in
	 * order, the handler stopping at the first). */
	if (front) {
		pos = c->rehold_epoch == w->epoch ? c->rehold_pos : 0;
		c->rehold_epoch = w->epoch;
		c->rehold_pos = pos + 1;
	}
	c->recv_once = 1;
	if (bid >= 0 && !ring_low(w)) {
		uint32_t off = (uint32_t)(p - rl_bufring_addr(&w->br, bid));

		if (rl_rxhold_insert(&c->hold, pos, bid, off, len) == 0) {
			rl_bufring_ref(&w->br, (uint32_t)bid);
			w->stats.buffers_held++;
			holding_add(w, c, idx);
			return 0;
		}
	}
	/* Copied into the residue, which comes before every held range: the
	 * ranges before pos are copied first. */
	if ((ret = unhold_n(w, c, pos)))
		return ret;
	if (front)
		c->rehold_pos = 0;      /* none is before it in the list now */
	ret = rl_rxbuf_keep(&c->rx, p, len, HELD_LIMIT,
			    &w->stats.residue_copied);
	if (!ret)
		c->rx_slack += len;
	return ret;
}

NOINLINE void rl_w_unhold_low(struct rl_worker *w)
{
	uint64_t *p = w->holding.p;

	for (uint32_t i = 0; i < w->holding.n; i++) {
		uint32_t idx = (uint32_t)p[i];
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(p[i] >> 32));
		int ret;

		if (!c)
			continue;
		c->on_holding = 0;
		if (c->hold.n && (ret = unhold_n(w, c, c->hold.n)))
			rl_w_close_unconsumed(w, c, idx, ret);
		conn_mem_update(w, c);
		queue_work(w, c, idx);      /* it may receive again */
	}
	w->holding.n = 0;
}

void rl_w_hold_clear(struct rl_worker *w, struct rl_conn *c)
{
	struct rl_rxhold_ent e;

	while (rl_rxhold_pop(&c->hold, &e) == 0) {
		rl_bufring_unref(&w->br, (uint32_t)e.bid);
		w->stats.buffers_held--;
	}
	rl_rxhold_free(&c->hold);
	c->on_holding = 0;
}

void rl_w_schedule_reoffer(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx)
{
	if (!c->rx_reoffer && again_push(w, c, idx) == 0)
		c->rx_reoffer = 1;
}

/* The queue of a connection whose handler stopped over high water has
 * drained: what it left is offered again at this poll, before anything
 * received later. */
NOINLINE void rl_w_unblock(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx)
{
	if (c->user_paused || !rx_holding(c) || c->rx.phase != RL_RX_IDLE ||
	    c->rx_reoffer) {
		c->wr_blocked = 0;      /* a resume or an offer will see them */
		return;
	}
	if (again_push(w, c, idx) == 0) {   /* else: tried again next time */
		c->rx_reoffer = 1;
		c->wr_blocked = 0;
	}
}

/* The oldest held range as a DATA event (res RL_DATA_HELD): its lease
 * moves to the batch. */
static int emit_held(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		     rl_event *ev)
{
	struct rl_rxhold_ent e = c->hold.e[c->hold.head];

	if (vec_push32(&w->held, (uint32_t)e.bid))
		return 0;
	rl_rxhold_pop(&c->hold, &e);
	w->stats.buffers_held--;
	fill_event(ev, RL_EV_DATA, idx, c->gen, RL_DATA_HELD);
	ev->bid = e.bid;
	ev->ptr = rl_bufring_addr(&w->br, (uint32_t)e.bid) + e.off;
	ev->len = e.len;
	return 1;
}

/* Connections resumed with bytes held get them offered again, before
 * anything received later: held ranges first as arrivals (all that fit in
 * the batch; a handler that stops at one puts the rest back, in order,
 * rl_w_keep), then a residue alone as a
 * DATA event with no new bytes (rl_rx_begin fills it in).  An EOF held back
 * behind such bytes follows once they have been offered and the handler
 * did not keep them paused. */
NOINLINE int rl_w_emit_again(struct rl_worker *w, rl_event *ev, int n,
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
			if (offer_live(c) && !c->user_paused && !c->wr_blocked) {
				if (c->hold.n) {
					/* All of them that fit, in order: a
					 * handler that stops at one puts the
					 * rest back in the same order. */
					while (c->hold.n && n < max &&
					       emit_held(w, c, idx, &ev[n]))
						n++;
					if (!c->hold.n)
						continue;
					/* No room: next poll (the push may
					 * move q: stop here). */
					rl_w_schedule_reoffer(w, c, idx);
					break;
				}
				if (c->rx.len) {
					fill_event(&ev[n++], RL_EV_DATA, idx,
						   c->gen, 0);
					continue;
				}
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
