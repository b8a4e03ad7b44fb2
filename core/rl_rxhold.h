/* rl_rxhold.h: received bytes a paused connection keeps in their ring buffers.
 *
 * A handler that stops because its connection's queue is over high water
 * (or that paused reading) leaves bytes it has not looked at yet.  Copying
 * them into a residue would cost a copy and up to a buffer of heap per
 * connection; instead each range stays in its leased buffer, listed here in
 * arrival order, and is offered again from there when the connection may go
 * on.  The caller takes and drops the buffer leases (rl_bufring_ref/unref);
 * this is only the ordered list.
 */
#ifndef RL_RXHOLD_H
#define RL_RXHOLD_H

#include <stdint.h>

struct rl_rxhold_ent {
	int32_t bid;        /* ring buffer the bytes are in */
	uint32_t off;       /* first byte kept */
	uint32_t len;
};

struct rl_rxhold {
	struct rl_rxhold_ent *e;    /* e[head .. head + n), oldest first */
	uint32_t head;
	uint32_t n;
	uint32_t cap;
	uint32_t bytes;             /* sum of the entries' len */
};

/* Keep a range after every other (front: before them, for bytes that were
 * being offered when the connection stopped).  0 or -ENOMEM. */
int rl_rxhold_push(struct rl_rxhold *h, int32_t bid, uint32_t off,
		   uint32_t len, int front);

/* Keep a range at position pos (0: first; n or more: last).  0 or -ENOMEM. */
int rl_rxhold_insert(struct rl_rxhold *h, uint32_t pos, int32_t bid,
		     uint32_t off, uint32_t len);

/* Take the oldest range: 0, or -1 when none is kept. */
int rl_rxhold_pop(struct rl_rxhold *h, struct rl_rxhold_ent *out);

/* The memory of an empty list (a non-empty one: its leases are the
 * caller's to drop first). */
void rl_rxhold_free(struct rl_rxhold *h);

#endif
