/* rxbuf_test.h: what the receive residue's unit tests share (test_rxbuf.c,
 * test_rxbuf_stop.c): a limit, bytes that differ everywhere, a residue. */
#ifndef RXBUF_TEST_H
#define RXBUF_TEST_H

#define LIMIT (1u << 20)

#include "test_rng.h"

/* Bytes that differ from buffer to buffer and position to position. */
static inline void fill(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed + i * 7 + (i >> 8));
}

/* Leave a residue of the last `keep` bytes of an arrival of `n` bytes. */
static inline void make_residue(struct rl_rxbuf *rx, uint8_t *buf, uint32_t n,
				uint32_t keep, uint64_t *copied)
{
	struct rl_rx_offer o;

	assert_int_equal(rl_rxbuf_begin(rx, buf, n, LIMIT, &o, copied), 0);
	assert_int_equal(o.in_buf, 1);
	assert_int_equal(rl_rxbuf_consumed(rx, n - keep, LIMIT, &o, copied), 0);
	assert_int_equal(rx->len, keep);
}

#endif
