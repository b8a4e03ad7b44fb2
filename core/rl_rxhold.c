/* rl_rxhold.c: received bytes a paused connection keeps in their ring buffers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_alloc.h"
#include "rl_rxhold.h"

/* Room for one more entry at the back (or, front, at the front). */
static int make_room(struct rl_rxhold *h, int front)
{
	uint32_t cap;
	struct rl_rxhold_ent *p;

	if (front ? h->head > 0 : h->head + h->n < h->cap)
		return 0;
	if (h->n < h->cap) {
		/* Room at the other end: slide the entries over (few). */
		uint32_t to = front ? h->cap - h->n : 0;

		memmove(h->e + to, h->e + h->head, h->n * sizeof(*h->e));
		h->head = to;
		return 0;
	}
	cap = h->cap ? h->cap * 2 : 4;
	p = rl_realloc(h->e, cap * sizeof(*p));
	if (!p)
		return -ENOMEM;
	h->e = p;
	h->cap = cap;
	if (front) {
		memmove(h->e + cap - h->n, h->e + h->head, h->n * sizeof(*p));
		h->head = cap - h->n;
	}
	return 0;
}

int rl_rxhold_push(struct rl_rxhold *h, int32_t bid, uint32_t off,
		   uint32_t len, int front)
{
	struct rl_rxhold_ent *e;

	if (make_room(h, front))
		return -ENOMEM;
	if (front)
		e = &h->e[--h->head];
	else
		e = &h->e[h->head + h->n];
	e->bid = bid;
	e->off = off;
	e->len = len;
	h->n++;
	h->bytes += len;
	return 0;
}

int rl_rxhold_insert(struct rl_rxhold *h, uint32_t pos, int32_t bid,
		     uint32_t off, uint32_t len)
{
	struct rl_rxhold_ent e, *base;

	if (pos == 0 || pos >= h->n)
		return rl_rxhold_push(h, bid, off, len, pos == 0);
	if (rl_rxhold_push(h, bid, off, len, 0))
		return -ENOMEM;
	/* Appended; move it back to pos (the entries after pos are few). */
	base = h->e + h->head;
	e = base[h->n - 1];
	memmove(base + pos + 1, base + pos, (h->n - 1 - pos) * sizeof(e));
	base[pos] = e;
	return 0;
}

int rl_rxhold_pop(struct rl_rxhold *h, struct rl_rxhold_ent *out)
{
	if (!h->n)
		return -1;
	*out = h->e[h->head++];
	h->n--;
	h->bytes -= out->len;
	if (!h->n)
		h->head = 0;
	return 0;
}

void rl_rxhold_free(struct rl_rxhold *h)
{
	free(h->e);
	memset(h, 0, sizeof(*h));
}
