/* rl_bufring.c: a worker's provided buffer ring and the leases on its buffers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "rl_bufring.h"

int rl_bufring_init(struct rl_bufring *r, uint32_t nbufs, uint32_t size,
		    uint32_t nplain)
{
	memset(r, 0, sizeof(*r));
	/* The kernel indexes the ring with a mask and ids are 16 bits. */
	if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)))
		return -EINVAL;
	if (size == 0 || nplain > 65536 - nbufs)
		return -EINVAL;
	r->nbufs = nbufs;
	r->nplain = nplain;
	r->size = size;
	r->bgid = -1;
	r->br_bytes = nbufs * sizeof(struct io_uring_buf);
	/* Page-aligned memory, as io_uring_register_buf_ring requires. */
	r->br = mmap(NULL, r->br_bytes, PROT_READ | PROT_WRITE,
		     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->br == MAP_FAILED) {
		r->br = NULL;
		return -ENOMEM;
	}
	/* MAP_NORESERVE: pages come as buffers are first used (only the hot
	 * ones are, rl_bufring_publish); it also keeps the mapping from
	 * merging with its neighbours, so /proc/PID/smaps shows the ring on
	 * its own (VmFlags "nr"), and tests and benchmarks can tell what it
	 * holds from what connections hold. */
	r->mem = mmap(NULL, (size_t)(nbufs + nplain) * size, PROT_READ | PROT_WRITE,
		      MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
	if (r->mem == MAP_FAILED) {
		r->mem = NULL;
		goto err;
	}
	r->leases = calloc(nbufs + nplain, sizeof(*r->leases));
	r->stack = malloc(nbufs * sizeof(*r->stack));
	r->plain_free = malloc((nplain ? nplain : 1) * sizeof(*r->plain_free));
	if (!r->leases || !r->stack || !r->plain_free)
		goto err;
	/* Lowest id on top: the same few pages stay hot. */
	for (uint32_t i = nplain; i > 0; i--)
		r->plain_free[r->nplain_free++] = (uint16_t)(nbufs + i - 1);
	r->min_target = nbufs < RL_BUFRING_MIN_POSTED ? nbufs
						       : RL_BUFRING_MIN_POSTED;
	r->target = r->min_target;
	io_uring_buf_ring_init(r->br);
	for (uint32_t bid = 0; bid < r->target; bid++)
		io_uring_buf_ring_add(r->br, rl_bufring_addr(r, bid), size, bid,
				      io_uring_buf_ring_mask(nbufs), bid);
	io_uring_buf_ring_advance(r->br, r->target);
	r->posted = r->target;
	/* The rest wait, lowest id on top. */
	for (uint32_t bid = nbufs; bid > r->target; bid--)
		r->stack[r->nstack++] = (uint16_t)(bid - 1);
	return 0;
err:
	rl_bufring_free(r, NULL);
	return -ENOMEM;
}

int rl_bufring_register(struct rl_bufring *r, struct io_uring *ring, int bgid)
{
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)r->br,
		.ring_entries = r->nbufs,
		.bgid = bgid,
	};
	int ret = io_uring_register_buf_ring(ring, &reg, 0);

	if (ret)
		return ret;
	r->bgid = bgid;
	r->registered = 1;
	return 0;
}

void rl_bufring_free(struct rl_bufring *r, struct io_uring *ring)
{
	if (r->registered && ring)
		io_uring_unregister_buf_ring(ring, r->bgid);
	if (r->br)
		munmap(r->br, r->br_bytes);
	if (r->mem)
		munmap(r->mem, (size_t)(r->nbufs + r->nplain) * r->size);
	free(r->leases);
	free(r->plain_free);
	free(r->stack);
	memset(r, 0, sizeof(*r));
}

int rl_bufring_take(struct rl_bufring *r, uint32_t bid)
{
	if (bid >= r->nbufs || r->leases[bid] != 0)
		return -EINVAL;
	r->leases[bid] = 1;
	r->leased++;
	r->posted--;
	r->taken++;
	return 0;
}

int32_t rl_bufring_take_plain(struct rl_bufring *r)
{
	uint32_t bid;

	if (!r->nplain_free)
		return -1;
	bid = r->plain_free[--r->nplain_free];
	r->leases[bid] = 1;
	r->plain_leased++;
	return (int32_t)bid;
}

int rl_bufring_ref(struct rl_bufring *r, uint32_t bid)
{
	if (bid >= r->nbufs + r->nplain || r->leases[bid] == 0 || r->leases[bid] == UINT16_MAX)
		return -EINVAL;
	r->leases[bid]++;
	return 0;
}

static void stage(struct rl_bufring *r, uint32_t bid)
{
	/* Written past the tail the kernel sees; invisible until publish. */
	io_uring_buf_ring_add(r->br, rl_bufring_addr(r, bid), r->size, bid,
			      io_uring_buf_ring_mask(r->nbufs), r->staged);
	r->staged++;
}

int rl_bufring_unref(struct rl_bufring *r, uint32_t bid)
{
	if (bid >= r->nbufs + r->nplain || r->leases[bid] == 0)
		return -EINVAL;
	if (--r->leases[bid])
		return 0;
	if (bid >= r->nbufs) {
		r->plain_leased--;
		r->plain_free[r->nplain_free++] = (uint16_t)bid;
		return 1;
	}
	r->leased--;
	/* Just used, so the hottest id there is: straight to the ring if it
	 * is below target, else on top of the stack. */
	if (r->posted + r->staged < r->target)
		stage(r, bid);
	else
		r->stack[r->nstack++] = (uint16_t)bid;
	return 1;
}

static void adapt_target(struct rl_bufring *r)
{
	if (r->taken > r->peak)
		r->peak = r->taken;
	r->taken = 0;
	if (++r->window < RL_BUFRING_WINDOW)
		return;
	/* A long stretch that never needed a quarter of the target. */
	if (r->peak * 4 < r->target && r->target > r->min_target) {
		r->target /= 2;
		if (r->target < r->min_target)
			r->target = r->min_target;
	}
	r->peak = 0;
	r->window = 0;
}

uint32_t rl_bufring_publish(struct rl_bufring *r)
{
	uint32_t n;

	adapt_target(r);
	while (r->nstack && r->posted + r->staged < r->target)
		stage(r, r->stack[--r->nstack]);
	n = r->staged;
	/* io_uring_buf_ring_advance is a release store of the tail: the
	 * entries written by stage() are visible before the kernel sees it. */
	if (n)
		io_uring_buf_ring_advance(r->br, n);
	r->posted += n;
	r->staged = 0;
	return n;
}

int rl_bufring_starved(struct rl_bufring *r)
{
	if (!r->nstack || r->target == r->nbufs)
		return 0;
	r->target = r->target * 2 > r->nbufs ? r->nbufs : r->target * 2;
	r->window = 0;
	r->peak = 0;
	return 1;
}
