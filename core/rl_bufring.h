/* rl_bufring.h: a worker's provided buffer ring and the leases on its buffers.
 *
 * Ownership of a buffer id: the kernel owns it while it sits in the ring;
 * a recv completion hands it to us with one lease (the handler's); every
 * zero-copy send that references it adds a lease.  When the last lease ends
 * the id is staged for the ring, and rl_bufring_publish() makes every staged
 * id visible to the kernel with a single tail store.
 *
 * Behind the kernel's ids lie nplain more buffers the kernel never sees:
 * decrypted TLS bytes are written there (rl_tls_io.c).  They are leased and
 * referenced like the kernel's, so slices, holds and zero-copy sends treat
 * both alike; the last lease puts a plain id back on its own free stack.
 */
#ifndef RL_BUFRING_H
#define RL_BUFRING_H

#include <stdint.h>
#include <liburing.h>

struct rl_bufring {
	struct io_uring_buf_ring *br;  /* shared with the kernel */
	size_t br_bytes;
	uint8_t *mem;                  /* nbufs * size bytes of buffers */
	uint16_t *leases;              /* per buffer id; 0 = in the ring */
	uint32_t nbufs;
	uint32_t size;
	uint32_t staged;               /* ids added since the last publish */
	uint32_t leased;               /* ids out of the ring */
	uint16_t *stack;               /* free ids not posted, hottest on top */
	uint32_t nstack;
	uint32_t posted;               /* ids the kernel can pick (published) */
	uint32_t target;               /* ids to keep posted */
	uint32_t min_target;
	uint32_t taken;                /* ids picked since the last publish */
	uint32_t peak;                 /* most picked between two publishes */
	uint32_t window;               /* publishes since the target last moved */
	uint32_t nplain;               /* plain ids: nbufs .. nbufs+nplain */
	uint32_t plain_leased;
	uint16_t *plain_free;          /* free plain ids, hottest on top */
	uint32_t nplain_free;
	int bgid;
	int registered;
};

/* nplain: buffers behind the ring for decrypted bytes (may be 0). */
int rl_bufring_init(struct rl_bufring *r, uint32_t nbufs, uint32_t size,
		    uint32_t nplain);
int rl_bufring_register(struct rl_bufring *r, struct io_uring *ring, int bgid);
void rl_bufring_free(struct rl_bufring *r, struct io_uring *ring);

static inline uint8_t *rl_bufring_addr(const struct rl_bufring *r, uint32_t bid)
{
	return r->mem + (size_t)bid * r->size;
}

/* Which buffer p points into, or -1. */
static inline int32_t rl_bufring_bid_of(const struct rl_bufring *r,
					const void *p)
{
	const uint8_t *b = p;

	if (b < r->mem || b >= r->mem + (size_t)(r->nbufs + r->nplain) * r->size)
		return -1;
	return (int32_t)((size_t)(b - r->mem) / r->size);
}

/* A completion gave us bid: the handler's lease starts. */
int rl_bufring_take(struct rl_bufring *r, uint32_t bid);
/* A plain buffer with its first lease, or -1 when all are out. */
int32_t rl_bufring_take_plain(struct rl_bufring *r);
/* Another holder (a queued send) leases bid. */
int rl_bufring_ref(struct rl_bufring *r, uint32_t bid);
/* A holder is done; the last one stages bid for the ring. */
int rl_bufring_unref(struct rl_bufring *r, uint32_t bid);
/* Top the ring up to its target and make staged ids visible to the kernel:
 * one tail store.  Returns how many ids were published. */
uint32_t rl_bufring_publish(struct rl_bufring *r);
/* A receive found the ring empty: keep more ids posted if any were idle.
 * Returns 1 if the target grew. */
int rl_bufring_starved(struct rl_bufring *r);

#define RL_BUFRING_MIN_POSTED 64
#define RL_BUFRING_WINDOW 256   /* publishes between shrink decisions */

static inline uint32_t rl_bufring_available(const struct rl_bufring *r)
{
	return r->nbufs - r->leased;
}

/* Either pool is down to its last eighth: what is held goes back. */
static inline int rl_bufring_low(const struct rl_bufring *r)
{
	return rl_bufring_available(r) < r->nbufs / 8 ||
	       (r->nplain && r->nplain_free < r->nplain / 8);
}

/* bid's pool has buffers to spare for a zero-copy send's lease. */
static inline int rl_bufring_spare(const struct rl_bufring *r, uint32_t bid)
{
	if (bid < r->nbufs)
		return rl_bufring_available(r) > r->nbufs / 8;
	return r->nplain_free > r->nplain / 8;
}

#endif
