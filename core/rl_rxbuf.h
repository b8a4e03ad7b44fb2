/* rl_rxbuf.h: a connection's unconsumed bytes and how each arrival is offered.
 *
 * Bytes live in ring buffers; a handler sees them in place.  Only what it
 * leaves unconsumed is copied, into a residue that exists while non-empty.
 * When a residue exists and a buffer arrives, the residue is offered with a
 * prefix of the buffer (enough to finish a frame that spans the two); once
 * the handler has consumed past the residue, the rest of the buffer is
 * offered in place again.  So copying is bounded by the frames that span
 * buffers, not by the traffic.
 *
 * A residue can also be offered again on its own, with no new arrival
 * (rl_rxbuf_reoffer): the worker does that when a paused connection that
 * holds unconsumed bytes is resumed.
 */
#ifndef RL_RXBUF_H
#define RL_RXBUF_H

#include <stddef.h>
#include <stdint.h>

/* Smallest prefix of a new buffer appended to a residue. */
#define RL_RXBUF_MIN_PREFIX 512

enum rl_rx_phase {
	RL_RX_IDLE = 0,
	RL_RX_DIRECT,   /* offering buf[off..len) in place */
	RL_RX_PREFIX,   /* offering residue = old residue + buf[0..appended) */
	RL_RX_ALL,      /* offering residue = old residue + all of buf */
};

struct rl_rxbuf {
	uint8_t *data;       /* residue, malloc'd while len > 0 */
	uint32_t len;
	uint32_t cap;
	/* The arrival being offered. */
	const uint8_t *buf;
	uint32_t buf_len;
	uint32_t buf_off;    /* DIRECT: where the offer starts in buf */
	uint32_t old_len;    /* PREFIX: residue length before the arrival */
	uint32_t appended;   /* PREFIX/ALL: bytes of buf copied to the residue */
	uint8_t phase;
};

struct rl_rx_offer {
	const uint8_t *ptr;
	uint32_t len;
	int in_buf;          /* 1: ptr points into the arrival's buffer */
};

/* An arrival: decide the first offer.  -EMSGSIZE if the residue would pass
 * limit, -ENOMEM if it cannot grow.  Bytes copied are added to *copied. */
int rl_rxbuf_begin(struct rl_rxbuf *rx, const uint8_t *buf, uint32_t len,
		   size_t limit, struct rl_rx_offer *o, uint64_t *copied);

/* The handler consumed n bytes of the current offer.  Returns 1 with a new
 * offer in o, 0 when the arrival is fully handled (unconsumed bytes are kept
 * in the residue), or -EMSGSIZE / -ENOMEM. */
int rl_rxbuf_consumed(struct rl_rxbuf *rx, uint32_t n, size_t limit,
		      struct rl_rx_offer *o, uint64_t *copied);

/* The handler consumed n bytes of the current offer and stops there (its
 * connection is paused or over high water): what is left of the arrival
 * stays in its buffer rather than in the residue.  Returns 1 with *off set:
 * buf[*off..buf_len) is to be kept by the caller, after what the residue
 * still holds (bytes of the arrival already copied in are taken back out);
 * 0 when the offer has no arrival of its own (finish it with
 * rl_rxbuf_consumed). */
int rl_rxbuf_stop(struct rl_rxbuf *rx, uint32_t n, uint32_t *off);

/* Keep all of an arrival in the residue without offering it (the handler
 * is not to see it yet).  Only between offers.  0, -EMSGSIZE or -ENOMEM. */
int rl_rxbuf_keep(struct rl_rxbuf *rx, const uint8_t *buf, uint32_t len,
		  size_t limit, uint64_t *copied);

/* Offer the residue again by itself, with no arrival (nothing is copied).
 * Returns 0 with the offer in o, or -1 when there is no residue.  Finish it
 * with rl_rxbuf_consumed, which then returns 0. */
int rl_rxbuf_reoffer(struct rl_rxbuf *rx, struct rl_rx_offer *o);

void rl_rxbuf_free(struct rl_rxbuf *rx);

#endif
