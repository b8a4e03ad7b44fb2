/* test_rxhold.c: unit tests for the held ranges of paused connections (core/rl_rxhold.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rl_rxhold.h"

static uint32_t rng_state;
static uint32_t rnd(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return rng_state >> 8;
}

static void test_empty(void **state)
{
	struct rl_rxhold h = {0};
	struct rl_rxhold_ent e;

	(void)state;
	assert_int_equal(rl_rxhold_pop(&h, &e), -1);
	assert_int_equal(h.n, 0);
	assert_int_equal(h.bytes, 0);
	rl_rxhold_free(&h);
	rl_rxhold_free(&h);     /* twice is harmless */
}

/* Arrivals behind, the range being offered in front: popped in order. */
static void test_front_and_back_order(void **state)
{
	struct rl_rxhold h = {0};
	struct rl_rxhold_ent e;

	(void)state;
	assert_int_equal(rl_rxhold_push(&h, 5, 100, 16284, 1), 0);
	assert_int_equal(rl_rxhold_push(&h, 6, 0, 16384, 0), 0);
	assert_int_equal(rl_rxhold_push(&h, 7, 0, 10, 0), 0);
	assert_int_equal(rl_rxhold_push(&h, 4, 300, 1, 1), 0);
	assert_int_equal(h.n, 4);
	assert_int_equal(h.bytes, 16284 + 16384 + 10 + 1);
	int want[] = { 4, 5, 6, 7 };
	for (int i = 0; i < 4; i++) {
		assert_int_equal(rl_rxhold_pop(&h, &e), 0);
		assert_int_equal(e.bid, want[i]);
	}
	assert_int_equal(e.len, 10);
	assert_int_equal(h.bytes, 0);
	assert_int_equal(rl_rxhold_pop(&h, &e), -1);
	rl_rxhold_free(&h);
}

/* Random pushes at both ends and pops against a model deque; growth and
 * sliding at every size keep the order and the byte count. */
static void test_property_model(void **state)
{
	enum { MAXN = 600 };
	int32_t model[2 * MAXN + 2];
	int mh = MAXN + 1, mn = 0;
	uint32_t bytes = 0;
	struct rl_rxhold h = {0};
	struct rl_rxhold_ent e;

	(void)state;
	rng_state = 12345;
	for (int step = 0; step < 200000; step++) {
		uint32_t r = rnd() % 10;
		int32_t bid = (int32_t)(rnd() % 4096);
		uint32_t len = rnd() % 16384 + 1;

		/* Drift the size up and down so small and large lists both
		 * see every operation. */
		int grow = (step / 5000) % 2 == 0;
		if (mn < MAXN && (r < (grow ? 6u : 3u))) {
			int front = rnd() & 1;

			/* Re-centre the model before it reaches an end. */
			if (mh < 1 || mh + mn >= 2 * MAXN + 1) {
				int to = MAXN + 1 - mn / 2;
				memmove(model + to, model + mh, mn * sizeof(*model));
				mh = to;
			}
			assert_int_equal(rl_rxhold_push(&h, bid, len / 2, len,
							front), 0);
			if (front)
				model[--mh] = bid;
			else
				model[mh + mn] = bid;
			mn++;
			bytes += len;
		} else if (mn) {
			assert_int_equal(rl_rxhold_pop(&h, &e), 0);
			assert_int_equal(e.bid, model[mh]);
			assert_int_equal(e.off, e.len / 2);
			mh++;
			mn--;
			bytes -= e.len;
		} else {
			assert_int_equal(rl_rxhold_pop(&h, &e), -1);
		}
		assert_int_equal(h.n, (uint32_t)mn);
		assert_int_equal(h.bytes, bytes);
		assert_true(h.head + h.n <= h.cap || h.n == 0);
	}
	rl_rxhold_free(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_front_and_back_order),
		cmocka_unit_test(test_property_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
