/* test_conntab.c: unit tests for the connection table and its (index, generation) handles (core/rl_conn.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rl_conn.h"

static void assert_fresh(struct rl_conn *c)
{
	assert_int_equal(c->state, RL_CONN_OPEN);
	assert_int_equal(c->fd, -1);
	assert_int_equal(c->rx_bid, -1);
	assert_int_equal(c->recv_armed, 0);
	assert_int_equal(c->slow, 0);
	assert_int_equal(c->close_req, 0);
	assert_int_equal(c->inflight_bytes, 0);
	assert_int_equal(c->rx.len, 0);
	assert_null(c->rx.data);
	assert_ptr_equal(c->sq.segs, c->sq.inline_segs);
	assert_int_equal(c->sq.count, 0);
	assert_int_equal(c->sq.cap, RL_SENDQ_INLINE);
	assert_int_equal(c->sq.bytes, 0);
}

static void test_init_limits(void **state)
{
	struct rl_conntab t;

	assert_int_equal(rl_conntab_init(&t, 0), -EINVAL);
	assert_int_equal(rl_conntab_init(&t, RL_CONN_MAX + 1), -EINVAL);
	assert_int_equal(rl_conntab_init(&t, UINT32_MAX), -EINVAL);

	assert_int_equal(rl_conntab_init(&t, 1), 0);
	assert_int_equal(t.npages, 1);
	assert_int_equal(t.used, 0);
	assert_int_equal(t.top, 0);
	rl_conntab_free(&t);

	assert_int_equal(rl_conntab_init(&t, RL_CONN_PAGE + 1), 0);
	assert_int_equal(t.npages, 2);
	rl_conntab_free(&t);

	assert_int_equal(rl_conntab_init(&t, RL_CONN_MAX), 0);
	assert_int_equal(t.npages, RL_CONN_MAX / RL_CONN_PAGE);
	/* No page is allocated before it is needed. */
	for (uint32_t i = 0; i < t.npages; i++)
		assert_null(t.pages[i]);
	rl_conntab_free(&t);
	assert_null(t.pages);
}

static void test_alloc_distinct_and_full(void **state)
{
	struct rl_conntab t;
	struct rl_conn *c[8];
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 8), 0);
	for (uint32_t i = 0; i < 8; i++) {
		idx = 999;
		c[i] = rl_conntab_alloc(&t, &idx);
		assert_non_null(c[i]);
		assert_int_equal(idx, i);
		assert_int_equal(c[i]->gen, 0);
		assert_fresh(c[i]);
		assert_ptr_equal(rl_conntab_at(&t, i), c[i]);
		assert_int_equal(t.used, i + 1);
		for (uint32_t j = 0; j < i; j++)
			assert_ptr_not_equal(c[i], c[j]);
	}
	/* Full. */
	idx = 999;
	assert_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 999);
	assert_int_equal(t.used, 8);
	for (uint32_t i = 0; i < 8; i++)
		assert_ptr_equal(rl_conntab_get(&t, i, 0), c[i]);

	/* One freed slot: exactly one more alloc, the same slot. */
	rl_conntab_release(&t, 5);
	assert_int_equal(t.used, 7);
	assert_ptr_equal(rl_conntab_alloc(&t, &idx), c[5]);
	assert_int_equal(idx, 5);
	assert_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(t.used, 8);
	rl_conntab_free(&t);
}

static void test_release_bumps_generation(void **state)
{
	struct rl_conntab t;
	struct rl_conn *c, *d;
	uint32_t idx, idx2;

	assert_int_equal(rl_conntab_init(&t, 4), 0);
	c = rl_conntab_alloc(&t, &idx);
	assert_non_null(c);
	assert_int_equal(c->gen, 0);
	assert_ptr_equal(rl_conntab_get(&t, idx, 0), c);
	assert_null(rl_conntab_get(&t, idx, 1));
	c->fd = 42;
	c->slow = 1;
	c->close_req = 1;
	c->inflight_bytes = 77;

	rl_conntab_release(&t, idx);
	assert_int_equal(c->state, RL_CONN_FREE);
	assert_int_equal(c->gen, 1);
	assert_int_equal(t.used, 0);
	/* Stale handle, and the new generation of a free slot. */
	assert_null(rl_conntab_get(&t, idx, 0));
	assert_null(rl_conntab_get(&t, idx, 1));

	/* Releasing a free slot is a no-op: no second bump, no double free. */
	rl_conntab_release(&t, idx);
	assert_int_equal(c->gen, 1);
	assert_int_equal(t.nfree, 1);
	assert_int_equal(t.used, 0);

	/* Reuse: same slot, reset, new generation; old handle still dead. */
	d = rl_conntab_alloc(&t, &idx2);
	assert_ptr_equal(d, c);
	assert_int_equal(idx2, idx);
	assert_int_equal(d->gen, 1);
	assert_fresh(d);
	assert_null(rl_conntab_get(&t, idx, 0));
	assert_ptr_equal(rl_conntab_get(&t, idx, 1), d);
	assert_int_equal(t.nfree, 0);

	/* Several turns. */
	for (uint32_t g = 1; g < 10; g++) {
		rl_conntab_release(&t, idx);
		assert_ptr_equal(rl_conntab_alloc(&t, &idx2), c);
		assert_int_equal(c->gen, g + 1);
		for (uint32_t old = 0; old <= g; old++)
			assert_null(rl_conntab_get(&t, idx, old));
		assert_ptr_equal(rl_conntab_get(&t, idx, g + 1), c);
	}
	rl_conntab_free(&t);
}

static void test_get_out_of_range(void **state)
{
	struct rl_conntab t;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 600), 0);
	assert_null(rl_conntab_get(&t, 0, 0));          /* nothing handed out */
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_non_null(rl_conntab_get(&t, 1, 0));
	assert_null(rl_conntab_get(&t, 2, 0));
	assert_null(rl_conntab_get(&t, 599, 0));
	assert_null(rl_conntab_get(&t, 600, 0));
	assert_null(rl_conntab_get(&t, UINT32_MAX, 0));
	rl_conntab_free(&t);
}

static void test_free_slots_reused_lifo(void **state)
{
	struct rl_conntab t;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 10), 0);
	for (int i = 0; i < 6; i++)
		assert_non_null(rl_conntab_alloc(&t, &idx));
	rl_conntab_release(&t, 2);
	rl_conntab_release(&t, 5);
	rl_conntab_release(&t, 0);
	assert_int_equal(t.used, 3);
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 0);
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 5);
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 2);
	/* Free slots exhausted: a new one from the top. */
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 6);
	assert_int_equal(t.top, 7);
	assert_int_equal(t.used, 7);
	rl_conntab_free(&t);
}

static void test_pages(void **state)
{
	struct rl_conntab t;
	struct rl_conn *first, *c;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 1000), 0);
	assert_int_equal(t.npages, 4);
	first = rl_conntab_alloc(&t, &idx);
	assert_non_null(first);
	assert_non_null(t.pages[0]);
	assert_null(t.pages[1]);
	for (uint32_t i = 1; i < 600; i++) {
		c = rl_conntab_alloc(&t, &idx);
		assert_non_null(c);
		assert_int_equal(idx, i);
		assert_ptr_equal(c, &t.pages[i / RL_CONN_PAGE][i % RL_CONN_PAGE]);
		assert_fresh(c);
	}
	assert_non_null(t.pages[1]);
	assert_non_null(t.pages[2]);
	assert_null(t.pages[3]);                /* 600 < 768 */
	/* Slots never move once handed out. */
	assert_ptr_equal(rl_conntab_at(&t, 0), first);
	assert_ptr_equal(rl_conntab_at(&t, 256), t.pages[1]);
	assert_ptr_equal(rl_conntab_at(&t, 257), t.pages[1] + 1);
	assert_ptr_equal(rl_conntab_at(&t, 599), t.pages[2] + (599 - 512));

	for (uint32_t i = 0; i < 600; i++)
		assert_ptr_equal(rl_conntab_get(&t, i, 0), rl_conntab_at(&t, i));

	/* Slots on later pages are released and reused like the first. */
	rl_conntab_release(&t, 300);
	rl_conntab_release(&t, 513);
	assert_null(rl_conntab_get(&t, 300, 0));
	assert_null(rl_conntab_get(&t, 513, 0));
	assert_ptr_equal(rl_conntab_get(&t, 299, 0), rl_conntab_at(&t, 299));
	c = rl_conntab_alloc(&t, &idx);
	assert_int_equal(idx, 513);
	assert_ptr_equal(c, t.pages[2] + 1);
	assert_ptr_equal(rl_conntab_get(&t, 513, 1), c);
	assert_null(rl_conntab_get(&t, 513, 0));

	/* Fill to the limit: page 3 appears, then the table is full. */
	c = rl_conntab_alloc(&t, &idx);
	assert_int_equal(idx, 300);
	for (uint32_t i = 600; i < 1000; i++) {
		assert_non_null(rl_conntab_alloc(&t, &idx));
		assert_int_equal(idx, i);
	}
	assert_non_null(t.pages[3]);
	assert_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(t.used, 1000);
	rl_conntab_free(&t);
}

/* A maximal table whose last slot sits at the end of the last page. */
static void test_max_table_last_slot(void **state)
{
	struct rl_conntab t;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 3 * RL_CONN_PAGE), 0);
	for (uint32_t i = 0; i < 3 * RL_CONN_PAGE; i++)
		assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 3 * RL_CONN_PAGE - 1);
	assert_ptr_equal(rl_conntab_at(&t, idx), t.pages[2] + RL_CONN_PAGE - 1);
	assert_null(rl_conntab_alloc(&t, &idx));
	rl_conntab_release(&t, 3 * RL_CONN_PAGE - 1);
	assert_non_null(rl_conntab_alloc(&t, &idx));
	assert_int_equal(idx, 3 * RL_CONN_PAGE - 1);
	rl_conntab_free(&t);
}

/* Generations live in 24 bits: after 2^24 releases a slot's generation is
 * back to 0, and handles compare only the low 24 bits. */
static void test_generation_wraps(void **state)
{
	struct rl_conntab t;
	struct rl_conn *c;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 1), 0);
	c = rl_conntab_alloc(&t, &idx);
	assert_non_null(c);
	for (uint32_t g = 0; g < RL_CONN_GEN_MASK; g++) {
		rl_conntab_release(&t, idx);
		if (rl_conntab_alloc(&t, &idx) != c)
			fail_msg("alloc after release %u failed", g);
	}
	assert_int_equal(c->gen, RL_CONN_GEN_MASK);
	assert_ptr_equal(rl_conntab_get(&t, idx, RL_CONN_GEN_MASK), c);
	/* Bits above the mask are ignored, in the handle. */
	assert_ptr_equal(rl_conntab_get(&t, idx, 0xff000000u | RL_CONN_GEN_MASK), c);
	assert_ptr_equal(rl_conntab_get(&t, idx, 0x7fffffffu), c);
	assert_null(rl_conntab_get(&t, idx, 0));
	assert_null(rl_conntab_get(&t, idx, RL_CONN_GEN_MASK - 1));

	/* The wrap itself. */
	rl_conntab_release(&t, idx);
	assert_int_equal(c->gen, 0);
	assert_null(rl_conntab_get(&t, idx, 0));       /* free */
	assert_ptr_equal(rl_conntab_alloc(&t, &idx), c);
	assert_int_equal(c->gen, 0);
	assert_ptr_equal(rl_conntab_get(&t, idx, 0), c);
	assert_ptr_equal(rl_conntab_get(&t, idx, RL_CONN_GEN_MASK + 1), c);
	assert_ptr_equal(rl_conntab_get(&t, idx, 0x5000000u), c);
	assert_null(rl_conntab_get(&t, idx, RL_CONN_GEN_MASK));
	assert_null(rl_conntab_get(&t, idx, 1));

	rl_conntab_release(&t, idx);
	assert_int_equal(c->gen, 1);
	rl_conntab_free(&t);
}

/* The same wrap, quickly: a generation set near the top of the mask wraps to
 * 0 on the second release and never leaves the mask. */
static void test_generation_mask_on_release(void **state)
{
	struct rl_conntab t;
	struct rl_conn *c;
	uint32_t idx;

	assert_int_equal(rl_conntab_init(&t, 2), 0);
	c = rl_conntab_alloc(&t, &idx);
	c->gen = RL_CONN_GEN_MASK - 1;
	assert_ptr_equal(rl_conntab_get(&t, idx, RL_CONN_GEN_MASK - 1), c);
	rl_conntab_release(&t, idx);
	assert_int_equal(c->gen, RL_CONN_GEN_MASK);
	assert_ptr_equal(rl_conntab_alloc(&t, &idx), c);
	rl_conntab_release(&t, idx);
	assert_int_equal(c->gen, 0);
	assert_true(c->gen <= RL_CONN_GEN_MASK);
	rl_conntab_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_limits),
		cmocka_unit_test(test_alloc_distinct_and_full),
		cmocka_unit_test(test_release_bumps_generation),
		cmocka_unit_test(test_get_out_of_range),
		cmocka_unit_test(test_free_slots_reused_lifo),
		cmocka_unit_test(test_pages),
		cmocka_unit_test(test_max_table_last_slot),
		cmocka_unit_test(test_generation_wraps),
		cmocka_unit_test(test_generation_mask_on_release),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
