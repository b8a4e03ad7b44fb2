/* sendq_test.h: what the send queue's unit tests share (test_sendq.c,
 * test_sendq_file.c): a ring of distinct bytes, a pool, a queue, and a
 * check of the queue against a model. */
#ifndef SENDQ_TEST_H
#define SENDQ_TEST_H

#define NBUFS 8
#define BUFSZ 4096

struct fixture {
	struct rl_bufring br;
	struct rl_chunkpool pool;
	struct rl_sendq q;
};

static inline int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f || rl_bufring_init(&f->br, NBUFS, BUFSZ, 0) ||
	    rl_chunkpool_init(&f->pool, 4))
		return -1;
	rl_sendq_init(&f->q);
	/* Distinct bytes in every ring buffer. */
	for (uint32_t i = 0; i < NBUFS * BUFSZ; i++)
		f->br.mem[i] = (uint8_t)(i * 13 + (i >> 9));
	*state = f;
	return 0;
}

static inline int teardown(void **state)
{
	struct fixture *f = *state;

	rl_sendq_clear(&f->q, &f->pool, &f->br);
	rl_chunkpool_free(&f->pool);
	rl_bufring_free(&f->br, NULL);
	free(f);
	return 0;
}

#include "test_rng.h"

static inline void pattern(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed ^ (i * 31 + (i >> 7)));
}

/* The queue, flattened through rl_sendq_iov, equals want[0..n). */
static inline void assert_queue(const struct rl_sendq *q, const uint8_t *want,
			 size_t n)
{
	struct iovec *iov = malloc((q->count + 1) * sizeof(*iov));
	size_t bytes = 12345, pos = 0;
	int k;

	assert_non_null(iov);
	k = rl_sendq_iov(q, iov, (int)q->count + 1, &bytes);
	assert_true(k <= (int)q->count);
	assert_int_equal(bytes, n);
	assert_int_equal(q->bytes, n);
	{
		size_t refs = 0;    /* what --high-water leaves out */

		for (uint32_t i = 0; i < q->count; i++) {
			const struct rl_sendseg *sg =
				&q->segs[(q->head + i) & (q->cap - 1)];

			if (sg->bid >= 0)
				refs += sg->len - sg->off;
		}
		assert_int_equal(q->ref_bytes, refs);
	}
	for (int i = 0; i < k; i++) {
		assert_true(iov[i].iov_len > 0);
		assert_true(pos + iov[i].iov_len <= n);
		assert_memory_equal(iov[i].iov_base, want + pos, iov[i].iov_len);
		pos += iov[i].iov_len;
	}
	assert_int_equal(pos, n);
	free(iov);
}

/* Leases each segment holds, by buffer. */
static inline void count_refs(const struct rl_sendq *q, uint32_t *refs)
{
	memset(refs, 0, NBUFS * sizeof(*refs));
	for (uint32_t i = 0; i < q->count; i++) {
		const struct rl_sendseg *s = &q->segs[(q->head + i) & (q->cap - 1)];

		if (s->bid >= 0) {
			assert_true(s->bid < NBUFS);
			refs[s->bid]++;
		}
	}
}

/* A received arrival in bid: the handler's lease. */
static inline void recv_into(struct fixture *f, uint32_t bid)
{
	assert_int_equal(rl_bufring_take(&f->br, bid), 0);
}

static inline uint8_t *buf(struct fixture *f, uint32_t bid)
{
	return rl_bufring_addr(&f->br, bid);
}

#endif
