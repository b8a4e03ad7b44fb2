/* test_rxbuf_stop.c: unit tests for the residue when a connection stops: a handler stopping mid-offer, arrivals kept, residues offered again (core/rl_rxbuf.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rl_rxbuf.h"
#include "rxbuf_test.h"

/* A handler that stops (paused, over high water) mid-offer: what it did
 * not consume is the residue's rest followed by buf[off..), in order, at
 * every phase and cut; the arrival's bytes are never left in the residue. */
static void test_stop_keeps_rest_in_buffer(void **state)
{
	uint8_t a[300], b[4000], want[4300];
	uint64_t copied = 0;

	(void)state;
	fill(a, sizeof(a), 5);
	fill(b, sizeof(b), 6);
	/* DIRECT: no residue, the rest from the cut. */
	for (uint32_t n = 0; n <= sizeof(b); n += 333) {
		struct rl_rxbuf rx = { 0 };
		struct rl_rx_offer o;
		uint32_t off = 99;

		assert_int_equal(rl_rxbuf_begin(&rx, b, sizeof(b), LIMIT, &o, &copied), 0);
		assert_int_equal(rl_rxbuf_stop(&rx, n, &off), 1);
		assert_int_equal(off, n);
		assert_int_equal(rx.len, 0);
		assert_int_equal(rx.phase, RL_RX_IDLE);
		rl_rxbuf_free(&rx);
	}
	/* PREFIX (a 300-byte residue and a 600-byte prefix) and ALL (the
	 * handler asked for all of the arrival first), cut anywhere. */
	memcpy(want, a + 200, 100);
	memcpy(want + 100, b, sizeof(b));
	for (int all = 0; all < 2; all++) {
		for (uint32_t n = 0; n <= 100 + sizeof(b); n += all ? 97 : 7) {
			struct rl_rxbuf rx = { 0 };
			struct rl_rx_offer o;
			uint32_t off = 12345, rest;

			make_residue(&rx, a, 300, 100, &copied);
			assert_int_equal(rl_rxbuf_begin(&rx, b, sizeof(b), LIMIT, &o, &copied), 0);
			assert_int_equal(rx.phase, RL_RX_PREFIX);
			if (all) {
				/* Not past the residue: the whole buffer is
				 * appended and offered again. */
				assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 1);
				assert_int_equal(rx.phase, RL_RX_ALL);
			}
			if (n > o.len)
				break;
			assert_int_equal(rl_rxbuf_stop(&rx, n, &off), 1);
			assert_int_equal(rx.phase, RL_RX_IDLE);
			/* The residue's rest, then the buffer's from off: the
			 * unconsumed bytes, in order. */
			rest = 100 + sizeof(b) - n;
			assert_int_equal(rx.len + (sizeof(b) - off), rest);
			if (rx.len)
				assert_memory_equal(rx.data, want + n, rx.len);
			assert_memory_equal(b + off, want + n + rx.len, sizeof(b) - off);
			assert_true(rx.len <= 100);
			rl_rxbuf_free(&rx);
		}
	}
}

/* A residue offered again alone has no arrival to leave in place. */
static void test_stop_without_arrival(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100];
	uint64_t copied = 0;
	uint32_t off;

	(void)state;
	fill(a, sizeof(a), 7);
	make_residue(&rx, a, 100, 60, &copied);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_int_equal(rl_rxbuf_stop(&rx, 10, &off), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 10, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 50);
	rl_rxbuf_free(&rx);
}

/* Arrivals kept whole behind a residue, then offered together in order;
 * the limit holds and a refusal changes nothing. */
static void test_keep_then_reoffer(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[3000], c[500], all[3540];
	uint64_t copied = 0;

	(void)state;
	fill(a, sizeof(a), 1);
	fill(b, sizeof(b), 2);
	fill(c, sizeof(c), 3);
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_keep(&rx, b, sizeof(b), LIMIT, &copied), 0);
	assert_int_equal(rl_rxbuf_keep(&rx, c, sizeof(c), LIMIT, &copied), 0);
	assert_int_equal(copied, 40 + 3000 + 500);
	assert_int_equal(rx.phase, RL_RX_IDLE);
	memcpy(all, a + 60, 40);
	memcpy(all + 40, b, 3000);
	memcpy(all + 3040, c, 500);
	/* Over the limit: refused, the residue as it was. */
	assert_int_equal(rl_rxbuf_keep(&rx, b, sizeof(b), 4000, &copied), -EMSGSIZE);
	assert_int_equal(rx.len, 3540);
	assert_int_equal(copied, 3540);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_int_equal(o.len, 3540);
	assert_memory_equal(o.ptr, all, 3540);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1000, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 2540);
	assert_memory_equal(rx.data, all + 1000, 2540);
	/* Kept into an empty residue: the arrival alone. */
	rl_rxbuf_free(&rx);
	assert_int_equal(rl_rxbuf_keep(&rx, c, sizeof(c), LIMIT, &copied), 0);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_int_equal(o.len, 500);
	assert_memory_equal(o.ptr, c, 500);
	assert_int_equal(rl_rxbuf_consumed(&rx, 500, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	rl_rxbuf_free(&rx);
}

static void test_reoffer(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 6);
	fill(b, sizeof(b), 7);

	/* Nothing held: nothing to offer. */
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), -1);
	assert_int_equal(rx.phase, RL_RX_IDLE);

	/* The residue alone, in place, nothing copied. */
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(copied, 40);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_ptr_equal(o.ptr, rx.data);
	assert_int_equal(o.len, 40);
	assert_int_equal(o.in_buf, 0);
	assert_memory_equal(o.ptr, a + 60, 40);
	assert_int_equal(rx.phase, RL_RX_ALL);
	/* Nothing consumed: it all stays, the offer is over. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.phase, RL_RX_IDLE);
	assert_int_equal(rx.len, 40);
	assert_memory_equal(rx.data, a + 60, 40);
	assert_int_equal(copied, 40);

	/* Part consumed: the rest stays. */
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 15, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 25);
	assert_memory_equal(rx.data, a + 75, 25);
	assert_int_equal(rx.phase, RL_RX_IDLE);

	/* A later arrival still joins what is left, as usual. */
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(o.in_buf, 0);
	assert_int_equal(o.len, 25 + RL_RXBUF_MIN_PREFIX);
	assert_memory_equal(o.ptr, a + 75, 25);
	assert_memory_equal(o.ptr + 25, b, RL_RXBUF_MIN_PREFIX);
	assert_int_equal(rl_rxbuf_consumed(&rx, 30, LIMIT, &o, &copied), 1);
	assert_int_equal(o.in_buf, 1);
	assert_ptr_equal(o.ptr, b + 5);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1995, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);

	/* Consumed whole (or more than offered): the residue is freed. */
	make_residue(&rx, a, 100, 10, &copied);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 10, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	assert_int_equal(rl_rxbuf_reoffer(&rx, &o), -1);
	rl_rxbuf_free(&rx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stop_keeps_rest_in_buffer),
		cmocka_unit_test(test_stop_without_arrival),
		cmocka_unit_test(test_keep_then_reoffer),
		cmocka_unit_test(test_reoffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
