/* test_dict.c: unit tests for the shared dictionary of refcounted values (core/rl_dict.c). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rl_dict.h"
#include "rl_worker.h"

#define NOW 1700000000000LL     /* a fixed "unix ms" clock */

static int setup(void **state)
{
	rl_dict *d = rl_dict_new(0, 16);

	if (!d)
		return -1;
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	rl_dict_free(*state);
	return 0;
}

static void put(rl_dict *d, const char *k, const char *v, int64_t at)
{
	assert_int_equal(rl_dict_set(d, k, strlen(k), v, strlen(v), at, 0, NOW,
				     NULL), 0);
}

/* k holds exactly v (binary-safe, with the trailing NUL). */
static void assert_val_n(rl_dict *d, const char *k, size_t klen,
			 const void *v, size_t vlen, int64_t now)
{
	rl_blob *b = NULL;

	assert_int_equal(rl_dict_get(d, k, klen, now, &b), 0);
	assert_non_null(b);
	assert_int_equal(b->len, vlen);
	if (vlen)
		assert_memory_equal(b->data, v, vlen);
	assert_int_equal(b->data[vlen], 0);
	rl_blob_unref(b);
}

static void assert_val(rl_dict *d, const char *k, const char *v)
{
	assert_val_n(d, k, strlen(k), v, strlen(v), NOW);
}

static void assert_absent(rl_dict *d, const char *k, int64_t now)
{
	rl_blob *b = (rl_blob *)1;

	assert_int_equal(rl_dict_get(d, k, strlen(k), now, &b), -ENOENT);
	assert_null(b);
}

static void assert_blob(const rl_blob *b, const char *v)
{
	assert_non_null(b);
	assert_int_equal(b->len, strlen(v));
	assert_memory_equal(b->data, v, b->len);
	assert_int_equal(b->data[b->len], 0);
}

static uint64_t cas_of(rl_dict *d, const char *k)
{
	uint64_t cas = 0;

	assert_int_equal(rl_dict_get_cas(d, k, strlen(k), NOW, NULL, &cas, NULL,
					 NULL), 0);
	return cas;
}

/* -- Basics ---------------------------------------------------------------- */

static void test_set_get_del_exists(void **state)
{
	rl_dict *d = *state;
	const char bin[] = { 'a', 0, 'b', 0 };

	assert_absent(d, "a", NOW);
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 0);
	put(d, "a", "1", 0);
	assert_val(d, "a", "1");
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 1);
	assert_int_equal(rl_dict_get(d, "a", 1, NOW, NULL), 0);
	put(d, "a", "two", 0);
	assert_val(d, "a", "two");
	assert_int_equal(rl_dict_del(d, "a", 1, NOW), 1);
	assert_int_equal(rl_dict_del(d, "a", 1, NOW), 0);
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 0);
	assert_absent(d, "a", NOW);

	/* Empty key and value, binary keys that differ after a NUL. */
	assert_int_equal(rl_dict_set(d, NULL, 0, NULL, 0, 0, 0, NOW, NULL), 0);
	assert_val_n(d, "", 0, "", 0, NOW);
	assert_int_equal(rl_dict_set(d, bin, 4, "x", 1, 0, 0, NOW, NULL), 0);
	assert_int_equal(rl_dict_set(d, bin, 3, "y", 1, 0, 0, NOW, NULL), 0);
	assert_val_n(d, bin, 4, "x", 1, NOW);
	assert_val_n(d, bin, 3, "y", 1, NOW);
	assert_int_equal(rl_dict_exists(d, bin, 2, NOW), 0);
	assert_int_equal(rl_dict_count(d, NOW), 3);
}

static void test_nx_xx_keepttl_old(void **state)
{
	rl_dict *d = *state;
	rl_blob *old = (rl_blob *)1;

	/* NX */
	assert_int_equal(rl_dict_set(d, "k", 1, "v1", 2, 0, RL_DICT_NX, NOW,
				     &old), 0);
	assert_null(old);
	assert_int_equal(rl_dict_set(d, "k", 1, "v2", 2, 0, RL_DICT_NX, NOW,
				     &old), -EEXIST);
	assert_blob(old, "v1");       /* SET NX GET reports the old value */
	rl_blob_unref(old);
	assert_val(d, "k", "v1");

	/* XX */
	assert_int_equal(rl_dict_set(d, "x", 1, "v", 1, 0, RL_DICT_XX, NOW,
				     &old), -ENOENT);
	assert_null(old);
	assert_int_equal(rl_dict_exists(d, "x", 1, NOW), 0);
	assert_int_equal(rl_dict_set(d, "k", 1, "v3", 2, 0, RL_DICT_XX, NOW,
				     &old), 0);
	assert_blob(old, "v1");
	rl_blob_unref(old);
	assert_val(d, "k", "v3");

	/* GETSET semantics on a plain set. */
	assert_int_equal(rl_dict_set(d, "k", 1, "v4", 2, 0, 0, NOW, &old), 0);
	assert_blob(old, "v3");
	rl_blob_unref(old);

	/* KEEPTTL keeps a present key's expiry, ignoring expire_at. */
	put(d, "t", "a", NOW + 5000);
	assert_int_equal(rl_dict_set(d, "t", 1, "b", 1, 0, RL_DICT_KEEPTTL,
				     NOW + 1000, NULL), 0);
	assert_int_equal(rl_dict_ttl_ms(d, "t", 1, NOW + 1000), 4000);
	assert_int_equal(rl_dict_set(d, "t", 1, "c", 1, NOW + 9000,
				     RL_DICT_KEEPTTL | RL_DICT_XX, NOW, NULL), 0);
	assert_int_equal(rl_dict_ttl_ms(d, "t", 1, NOW), 5000);
	/* Without it a set replaces the expiry. */
	put(d, "t", "d", 0);
	assert_int_equal(rl_dict_ttl_ms(d, "t", 1, NOW), -1);
	/* On an absent key KEEPTTL takes expire_at. */
	assert_int_equal(rl_dict_set(d, "u", 1, "e", 1, NOW + 300,
				     RL_DICT_KEEPTTL, NOW, NULL), 0);
	assert_int_equal(rl_dict_ttl_ms(d, "u", 1, NOW), 300);

	/* An expiry already past: stored and gone, old still reported. */
	assert_int_equal(rl_dict_set(d, "k", 1, "v5", 2, NOW, 0, NOW, &old), 0);
	assert_blob(old, "v4");
	rl_blob_unref(old);
	assert_absent(d, "k", NOW);
	put(d, "k", "v6", 0);
	assert_int_equal(rl_dict_set(d, "k", 1, "v7", 2, -1, 0, NOW, NULL), 0);
	assert_absent(d, "k", NOW);
	/* ... and the conditions still apply first. */
	put(d, "k", "v8", 0);
	assert_int_equal(rl_dict_set(d, "k", 1, "v9", 2, -1, RL_DICT_NX, NOW,
				     NULL), -EEXIST);
	assert_val(d, "k", "v8");
}

/* -- Expiry ---------------------------------------------------------------- */

static void test_expire_lazy(void **state)
{
	rl_dict *d = *state;
	rl_dict_stats st;

	put(d, "e", "v", NOW + 100);
	assert_val_n(d, "e", 1, "v", 1, NOW + 99);
	assert_int_equal(rl_dict_exists(d, "e", 1, NOW + 99), 1);
	assert_int_equal(rl_dict_count(d, NOW + 500), 1);   /* not swept yet */
	assert_absent(d, "e", NOW + 100);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.expired, 1);
	assert_int_equal(st.keys, 0);
	assert_int_equal(rl_dict_count(d, NOW + 100), 0);

	/* Every lookup sees through an expired key. */
	put(d, "e", "v", NOW + 100);
	assert_int_equal(rl_dict_exists(d, "e", 1, NOW + 100), 0);
	put(d, "e", "v", NOW + 100);
	assert_int_equal(rl_dict_ttl_ms(d, "e", 1, NOW + 200), -2);
	put(d, "e", "v", NOW + 100);
	assert_int_equal(rl_dict_del(d, "e", 1, NOW + 100), 0);
	put(d, "e", "v", NOW + 100);
	assert_int_equal(rl_dict_set(d, "e", 1, "w", 1, 0, RL_DICT_NX,
				     NOW + 100, NULL), 0);
	assert_val(d, "e", "w");
	put(d, "e", "v", NOW + 100);
	assert_int_equal(rl_dict_append(d, "e", 1, "x", 1, 0, 0, NOW + 100,
					NULL), -ENOENT);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.expired, 6);
}

static void test_sweep_budget(void **state)
{
	rl_dict *d = *state;
	char k[32];
	unsigned n, total = 0, calls = 0;
	rl_dict_stats st;

	for (int i = 0; i < 1000; i++) {
		snprintf(k, sizeof(k), "exp%d", i);
		put(d, k, "v", NOW + 10);
	}
	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof(k), "keep%d", i);
		put(d, k, "v", 0);
	}
	assert_int_equal(rl_dict_sweep(d, 1000, NOW), 0);   /* nothing due */
	/* Budget counts entries examined: with every TTL entry expired, a
	 * sweep of 10 deletes exactly 10, never more. */
	n = rl_dict_sweep(d, 10, NOW + 10);
	assert_int_equal(n, 10);
	assert_int_equal(rl_dict_count(d, NOW + 10), 1090);
	total = n;
	while (total < 1000) {
		n = rl_dict_sweep(d, 100, NOW + 10);
		assert_true(n <= 100);
		assert_true(n > 0);
		total += n;
		calls++;
	}
	assert_int_equal(total, 1000);
	assert_true(calls >= 10);
	assert_int_equal(rl_dict_sweep(d, 100, NOW + 10), 0);
	assert_int_equal(rl_dict_count(d, NOW + 10), 100);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.expired, 1000);
	assert_val(d, "keep7", "v");

	/* Live TTL keys are examined and kept, and the walk moves on: a
	 * later key due first is found within one pass. */
	for (int i = 0; i < 200; i++) {
		snprintf(k, sizeof(k), "late%d", i);
		put(d, k, "v", NOW + 1000000);
	}
	put(d, "soon", "v", NOW + 20);
	total = 0;
	for (int i = 0; i < 200 && !total; i++)
		total += rl_dict_sweep(d, 8, NOW + 20);
	assert_int_equal(total, 1);
	assert_int_equal(rl_dict_exists(d, "soon", 4, NOW), 0);
	assert_int_equal(rl_dict_count(d, NOW), 300);
}

static void test_ttl_expire_persist_touch(void **state)
{
	rl_dict *d = *state;

	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW), -2);
	put(d, "a", "v", 0);
	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW), -1);
	assert_int_equal(rl_dict_persist(d, "a", 1, NOW), 0);  /* no TTL */
	assert_int_equal(rl_dict_expire_at(d, "a", 1, NOW + 1500, NOW), 1);
	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW), 1500);
	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW + 1499), 1);
	assert_int_equal(rl_dict_persist(d, "a", 1, NOW), 1);
	assert_int_equal(rl_dict_persist(d, "a", 1, NOW), 0);
	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW + 99999), -1);
	assert_int_equal(rl_dict_persist(d, "zz", 2, NOW), 0);
	assert_int_equal(rl_dict_expire_at(d, "zz", 2, NOW + 5, NOW), 0);
	/* at == 0 through expire_at persists too, and counts as present. */
	assert_int_equal(rl_dict_expire_at(d, "a", 1, NOW + 10, NOW), 1);
	assert_int_equal(rl_dict_expire_at(d, "a", 1, 0, NOW), 1);
	assert_int_equal(rl_dict_ttl_ms(d, "a", 1, NOW), -1);
	/* A time already past deletes and still says 1. */
	assert_int_equal(rl_dict_expire_at(d, "a", 1, NOW, NOW), 1);
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 0);
	put(d, "a", "v", 0);
	assert_int_equal(rl_dict_expire_at(d, "a", 1, -5, NOW), 1);
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 0);

	/* touch: memcached's name for the same thing; keeps the cas. */
	put(d, "m", "v", NOW + 10);
	uint64_t cas = cas_of(d, "m");
	assert_int_equal(rl_dict_touch(d, "m", 1, NOW + 60000, NOW), 1);
	assert_int_equal(rl_dict_ttl_ms(d, "m", 1, NOW), 60000);
	assert_int_equal(cas_of(d, "m"), cas);
	assert_int_equal(rl_dict_touch(d, "m", 1, 0, NOW), 1);
	assert_int_equal(rl_dict_ttl_ms(d, "m", 1, NOW), -1);
	assert_int_equal(rl_dict_touch(d, "nope", 4, NOW + 1, NOW), 0);
	assert_int_equal(rl_dict_touch(d, "m", 1, -1, NOW), 1);
	assert_int_equal(rl_dict_exists(d, "m", 1, NOW), 0);
}

/* -- Counters -------------------------------------------------------------- */

static void test_incr_canonical(void **state)
{
	rl_dict *d = *state;
	static const struct {
		const char *v;
		int ok;
		int64_t n;
	} cases[] = {
		{ "0", 1, 0 },
		{ "1", 1, 1 },
		{ "-1", 1, -1 },
		{ "123", 1, 123 },
		{ "-4567", 1, -4567 },
		{ "9223372036854775806", 1, INT64_MAX - 1 },
		{ "-9223372036854775808", 1, INT64_MIN },
		{ "", 0, 0 },
		{ " 1", 0, 0 },
		{ "1 ", 0, 0 },
		{ "\t1", 0, 0 },
		{ "+1", 0, 0 },
		{ "01", 0, 0 },
		{ "00", 0, 0 },
		{ "-0", 0, 0 },
		{ "-01", 0, 0 },
		{ "-", 0, 0 },
		{ "1a", 0, 0 },
		{ "0x10", 0, 0 },
		{ "1.5", 0, 0 },
		{ "1e3", 0, 0 },
		{ "9223372036854775808", 0, 0 },
		{ "-9223372036854775809", 0, 0 },
		{ "99999999999999999999", 0, 0 },
		{ "123456789012345678901", 0, 0 },
	};
	char want[32];
	int64_t r;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		put(d, "n", cases[i].v, 0);
		r = 77;
		if (cases[i].ok) {
			assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r), 0);
			assert_true(r == cases[i].n + 1);
			snprintf(want, sizeof(want), "%lld",
				 (long long)(cases[i].n + 1));
			assert_val(d, "n", want);
		} else {
			assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r),
					 -EINVAL);
			assert_int_equal(r, 77);
			assert_val(d, "n", cases[i].v);
		}
	}
	/* A value with an embedded NUL is not a number either. */
	assert_int_equal(rl_dict_set(d, "n", 1, "1\0", 2, 0, 0, NOW, NULL), 0);
	assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r), -EINVAL);

	/* Absent counts as 0 and is created without expiry. */
	assert_int_equal(rl_dict_incr(d, "new", 3, -42, NOW, &r), 0);
	assert_int_equal(r, -42);
	assert_val(d, "new", "-42");
	assert_int_equal(rl_dict_ttl_ms(d, "new", 3, NOW), -1);
	assert_int_equal(rl_dict_incr(d, "new", 3, 0, NOW, NULL), 0);
	assert_val(d, "new", "-42");
}

static void test_incr_overflow_keepttl(void **state)
{
	rl_dict *d = *state;
	uint32_t fl = 0;
	int64_t r, at = 0;
	uint64_t cas;

	put(d, "n", "9223372036854775807", 0);
	assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r), -ERANGE);
	assert_val(d, "n", "9223372036854775807");
	assert_int_equal(rl_dict_incr(d, "n", 1, INT64_MIN, NOW, &r), 0);
	assert_int_equal(r, -1);
	put(d, "n", "-9223372036854775808", 0);
	assert_int_equal(rl_dict_incr(d, "n", 1, -1, NOW, &r), -ERANGE);
	assert_int_equal(rl_dict_incr(d, "n", 1, INT64_MIN, NOW, &r), -ERANGE);
	assert_val(d, "n", "-9223372036854775808");
	assert_int_equal(rl_dict_incr(d, "z", 1, INT64_MIN, NOW, &r), 0);
	assert_true(r == INT64_MIN);
	assert_int_equal(rl_dict_incr(d, "z", 1, -1, NOW, &r), -ERANGE);
	assert_int_equal(rl_dict_incr(d, "z", 1, INT64_MAX, NOW, &r), 0);
	assert_int_equal(r, -1);

	/* Keeps expiry and flags; a new cas each time; growing digits. */
	assert_int_equal(rl_dict_set_ex(d, "t", 1, "8", 1, NOW + 5000, 0, 99, 0,
					NOW, NULL), 0);
	cas = cas_of(d, "t");
	for (int i = 0; i < 3; i++)
		assert_int_equal(rl_dict_incr(d, "t", 1, 1, NOW + 10, &r), 0);
	assert_int_equal(r, 11);
	assert_val(d, "t", "11");
	assert_int_equal(rl_dict_get_cas(d, "t", 1, NOW, NULL, NULL, &fl, &at),
			 0);
	assert_int_equal(fl, 99);
	assert_int_equal(at, NOW + 5000);
	assert_true(cas_of(d, "t") != cas);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(rl_dict_incr(d, "t", 1, -7, NOW, &r), 0);
	assert_int_equal(r, 11 - 7000);
	assert_val(d, "t", "-6989");
}

static void test_incr_u64(void **state)
{
	rl_dict *d = *state;
	static const char *bad[] = {
		"", "-1", "abc", " ", " 1", "1 x", "1\t", "+1", "1.0", "18446744073709551616",
		"99999999999999999999", "000000000000000000001",
	};
	uint64_t r = 5;
	uint32_t fl;

	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r), -ENOENT);
	assert_int_equal(r, 5);
	assert_int_equal(rl_dict_exists(d, "c", 1, NOW), 0);

	put(d, "c", "10", 0);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 5, 0, NOW, &r), 0);
	assert_int_equal(r, 15);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 20, 1, NOW, &r), 0);
	assert_int_equal(r, 0);                 /* decr stops at 0 */
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 1, NOW, &r), 0);
	assert_int_equal(r, 0);
	assert_val(d, "c", "0 ");     /* memcached pads what it shortens */

	put(d, "c", "18446744073709551615", 0);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r), 0);
	assert_int_equal(r, 0);                 /* incr wraps */
	put(d, "c", "18446744073709551615", 0);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 2, 0, NOW, &r), 0);
	assert_int_equal(r, 1);
	put(d, "c", "007", 0);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r), 0);
	assert_int_equal(r, 8);
	assert_val(d, "c", "8  ");
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 992, 0, NOW, &r), 0);
	assert_val(d, "c", "1000");        /* longer: no padding left */
	put(d, "c", "5                                                      "
		    "         ", 0);          /* 64 bytes: still the fast path */
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 10, 0, NOW, &r), 0);
	assert_int_equal(r, 15);
	put(d, "c", "5                                                      "
		    "          ", 0);         /* 65: the caller's strtoull */
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 10, 0, NOW, &r),
			 -EINVAL);
	put(d, "c", "00000000000000000001", 0);     /* 20 digits: fine */
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r), 0);
	assert_int_equal(r, 2);
	put(d, "c", "99", 0);
	assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r), 0);
	assert_val(d, "c", "100");

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put(d, "c", bad[i], 0);
		assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 0, NOW, &r),
				 -EINVAL);
		assert_int_equal(rl_dict_incr_u64(d, "c", 1, 1, 1, NOW, &r),
				 -EINVAL);
		assert_val(d, "c", bad[i]);
	}

	assert_int_equal(rl_dict_set_ex(d, "f", 1, "1", 1, NOW + 700, 0, 7, 0,
					NOW, NULL), 0);
	assert_int_equal(rl_dict_incr_u64(d, "f", 1, 1, 0, NOW, &r), 0);
	assert_int_equal(rl_dict_ttl_ms(d, "f", 1, NOW), 700);
	assert_int_equal(rl_dict_get_cas(d, "f", 1, NOW, NULL, NULL, &fl, NULL),
			 0);
	assert_int_equal(fl, 7);
}

/* -- Append / prepend / setrange ------------------------------------------ */

static void test_append_prepend(void **state)
{
	rl_dict *d = *state;
	char big[10001];
	size_t n = 0;
	rl_blob *held;

	assert_int_equal(rl_dict_append(d, "a", 1, "x", 1, 0, 0, NOW, &n),
			 -ENOENT);
	assert_int_equal(rl_dict_exists(d, "a", 1, NOW), 0);
	assert_int_equal(rl_dict_append(d, "a", 1, "abc", 3, 0, 1, NOW, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(rl_dict_append(d, "a", 1, "def", 3, 0, 0, NOW, &n), 0);
	assert_int_equal(n, 6);
	assert_val(d, "a", "abcdef");
	assert_int_equal(rl_dict_append(d, "a", 1, "xy", 2, 1, 0, NOW, &n), 0);
	assert_int_equal(n, 8);
	assert_val(d, "a", "xyabcdef");
	assert_int_equal(rl_dict_append(d, "a", 1, "", 0, 0, 0, NOW, &n), 0);
	assert_int_equal(n, 8);
	/* An empty APPEND still creates the key. */
	assert_int_equal(rl_dict_append(d, "e", 1, "", 0, 0, 1, NOW, &n), 0);
	assert_int_equal(n, 0);
	assert_val(d, "e", "");

	/* Many small appends; keeps expiry and flags. */
	assert_int_equal(rl_dict_set_ex(d, "g", 1, "", 0, NOW + 900, 0, 5, 0,
					NOW, NULL), 0);
	for (int i = 0; i < 1000; i++) {
		memcpy(big + i * 10, "0123456789", 10);
		assert_int_equal(rl_dict_append(d, "g", 1, "0123456789", 10, 0,
						0, NOW, &n), 0);
	}
	assert_int_equal(n, 10000);
	assert_val_n(d, "g", 1, big, 10000, NOW);
	assert_int_equal(rl_dict_ttl_ms(d, "g", 1, NOW), 900);
	uint32_t fl = 0;
	assert_int_equal(rl_dict_get_cas(d, "g", 1, NOW, NULL, NULL, &fl, NULL),
			 0);
	assert_int_equal(fl, 5);

	/* A held value never changes under its holder. */
	put(d, "h", "base", 0);
	assert_int_equal(rl_dict_get(d, "h", 1, NOW, &held), 0);
	assert_int_equal(rl_dict_append(d, "h", 1, "+tail", 5, 0, 0, NOW, &n), 0);
	assert_int_equal(rl_dict_append(d, "h", 1, "head+", 5, 1, 0, NOW, &n), 0);
	assert_blob(held, "base");
	assert_val(d, "h", "head+base+tail");
	rl_blob_unref(held);
	assert_int_equal(rl_dict_append(d, "h", 1, "!", 1, 0, 0, NOW, &n), 0);
	assert_val(d, "h", "head+base+tail!");

	/* Limits: checked before p is read. */
	assert_int_equal(rl_dict_append(d, "h", 1, "x",
					(size_t)RL_DICT_VAL_MAX - 14, 0, 0, NOW,
					&n), -E2BIG);
	assert_int_equal(rl_dict_append(d, "new", 3, "x",
					(size_t)RL_DICT_VAL_MAX + 1, 0, 1, NOW,
					&n), -E2BIG);
	assert_int_equal(rl_dict_exists(d, "new", 3, NOW), 0);
	assert_val(d, "h", "head+base+tail!");
}

static void test_setrange(void **state)
{
	rl_dict *d = *state;
	size_t n = 99;
	rl_blob *held;

	assert_int_equal(rl_dict_setrange(d, "s", 1, 5, "", 0, NOW, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(rl_dict_exists(d, "s", 1, NOW), 0);
	assert_int_equal(rl_dict_setrange(d, "s", 1, 5, "ab", 2, NOW, &n), 0);
	assert_int_equal(n, 7);
	assert_val_n(d, "s", 1, "\0\0\0\0\0ab", 7, NOW);

	put(d, "h", "Hello World", NOW + 800);
	assert_int_equal(rl_dict_setrange(d, "h", 1, 6, "Redis", 5, NOW, &n), 0);
	assert_int_equal(n, 11);
	assert_val(d, "h", "Hello Redis");
	assert_int_equal(rl_dict_setrange(d, "h", 1, 100, "", 0, NOW, &n), 0);
	assert_int_equal(n, 11);
	assert_val(d, "h", "Hello Redis");
	assert_int_equal(rl_dict_ttl_ms(d, "h", 1, NOW), 800);

	/* Extend past the end with a zero gap, while a reader holds it. */
	put(d, "x", "abc", 0);
	assert_int_equal(rl_dict_get(d, "x", 1, NOW, &held), 0);
	assert_int_equal(rl_dict_setrange(d, "x", 1, 5, "xy", 2, NOW, &n), 0);
	assert_int_equal(n, 7);
	assert_val_n(d, "x", 1, "abc\0\0xy", 7, NOW);
	assert_blob(held, "abc");
	rl_blob_unref(held);
	/* Unshared now: changed in place, same result rules. */
	assert_int_equal(rl_dict_setrange(d, "x", 1, 1, "Z", 1, NOW, &n), 0);
	assert_val_n(d, "x", 1, "aZc\0\0xy", 7, NOW);
	assert_int_equal(rl_dict_setrange(d, "x", 1, 9, "!", 1, NOW, &n), 0);
	assert_int_equal(n, 10);
	assert_val_n(d, "x", 1, "aZc\0\0xy\0\0!", 10, NOW);

	/* 512 MiB cap on the result. */
	assert_int_equal(rl_dict_setrange(d, "x", 1, RL_DICT_VAL_MAX, "a", 1,
					  NOW, &n), -E2BIG);
	assert_int_equal(rl_dict_setrange(d, "x", 1, SIZE_MAX, "a", 1, NOW, &n),
			 -E2BIG);
	assert_int_equal(rl_dict_setrange(d, "x", 1, RL_DICT_VAL_MAX - 1, "ab",
					  2, NOW, &n), -E2BIG);
	assert_int_equal(rl_dict_setrange(d, "x", 1, SIZE_MAX, "", 0, NOW, &n),
			 0);
	assert_int_equal(n, 10);
}

/* -- memcached bits -------------------------------------------------------- */

static void test_cas_flags(void **state)
{
	rl_dict *d = *state;
	uint64_t cas = 0, cas2 = 0, *all;
	uint32_t fl = 0;
	int64_t at = -7;
	rl_blob *b = NULL, *old = NULL;
	char k[32];

	assert_int_equal(rl_dict_set_ex(d, "m", 1, "v1", 2, NOW + 50, 0,
					0xdeadbeef, 0, NOW, NULL), 0);
	assert_int_equal(rl_dict_get_cas(d, "m", 1, NOW, &b, &cas, &fl, &at), 0);
	assert_blob(b, "v1");
	rl_blob_unref(b);
	assert_true(cas != 0);
	assert_int_equal(fl, 0xdeadbeef);
	assert_int_equal(at, NOW + 50);

	/* cas mismatch, match, absent. */
	assert_int_equal(rl_dict_set_ex(d, "m", 1, "v2", 2, 0, 0, 1, cas + 1,
					NOW, &old), -EEXIST);
	assert_blob(old, "v1");
	rl_blob_unref(old);
	assert_val(d, "m", "v1");
	assert_int_equal(rl_dict_set_ex(d, "m", 1, "v3", 2, 0, 0, 2, cas, NOW,
					NULL), 0);
	assert_int_equal(rl_dict_get_cas(d, "m", 1, NOW, NULL, &cas2, &fl, &at),
			 0);
	assert_true(cas2 != cas);
	assert_int_equal(fl, 2);
	assert_int_equal(at, 0);
	assert_int_equal(rl_dict_set_ex(d, "m", 1, "v4", 2, 0, 0, 2, cas, NOW,
					NULL), -EEXIST);   /* stale now */
	assert_int_equal(rl_dict_set_ex(d, "q", 1, "v", 1, 0, 0, 0, 12345, NOW,
					NULL), -ENOENT);
	assert_int_equal(rl_dict_exists(d, "q", 1, NOW), 0);
	/* rl_dict_set clears the flags. */
	put(d, "m", "v5", 0);
	assert_int_equal(rl_dict_get_cas(d, "m", 1, NOW, NULL, NULL, &fl, NULL),
			 0);
	assert_int_equal(fl, 0);

	/* Every stored value gets a cas never seen before, across keys;
	 * append, incr and setrange change it too. */
	all = calloc(2003, sizeof(*all));
	assert_non_null(all);
	for (int i = 0; i < 2000; i++) {
		snprintf(k, sizeof(k), "c%d", i % 500);
		put(d, k, "1", 0);
		all[i] = cas_of(d, k);
	}
	assert_int_equal(rl_dict_append(d, "c1", 2, "2", 1, 0, 0, NOW, NULL), 0);
	all[2000] = cas_of(d, "c1");
	assert_int_equal(rl_dict_incr(d, "c1", 2, 1, NOW, NULL), 0);
	all[2001] = cas_of(d, "c1");
	assert_int_equal(rl_dict_setrange(d, "c1", 2, 0, "5", 1, NOW, NULL), 0);
	all[2002] = cas_of(d, "c1");
	for (int i = 0; i < 2003; i++) {
		assert_true(all[i] != 0);
		for (int j = 0; j < i; j++)
			assert_true(all[i] != all[j]);
	}
	free(all);
}

/* -- Whole dictionary ------------------------------------------------------ */

static void test_count_flush_stats(void **state)
{
	rl_dict *d = *state;
	rl_dict_stats st;
	rl_blob *held;
	char k[32];

	for (int i = 0; i < 100; i++) {
		snprintf(k, sizeof(k), "k%d", i);
		put(d, k, "value", 0);
	}
	put(d, "k0", "again", 0);
	assert_int_equal(rl_dict_count(d, NOW), 100);
	assert_int_equal(rl_dict_get(d, "k1", 2, NOW, &held), 0);
	assert_int_equal(rl_dict_get(d, "k2", 2, NOW, NULL), 0);
	assert_int_equal(rl_dict_get(d, "zz", 2, NOW, NULL), -ENOENT);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.keys, 100);
	assert_int_equal(st.sets, 101);
	assert_int_equal(st.hits, 2);
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(st.limit, 0);
	assert_true(st.bytes >= 100 * (2 + 6));

	rl_dict_flush(d);
	assert_int_equal(rl_dict_count(d, NOW), 0);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.keys, 0);
	assert_int_equal(st.bytes, 0);
	assert_absent(d, "k5", NOW);
	assert_blob(held, "value");     /* a reference outlives the flush */
	rl_blob_unref(held);
	put(d, "k5", "back", 0);
	assert_val(d, "k5", "back");
	assert_int_equal(rl_dict_count(d, NOW), 1);
}

/* -- Scan ------------------------------------------------------------------ */

struct seen {
	unsigned *hits;     /* per key number */
	unsigned nkeys;
	char prefix;
	unsigned reported;
};

static void on_key(void *ud, const uint8_t *key, size_t klen)
{
	struct seen *s = ud;
	char buf[32];

	s->reported++;
	assert_true(klen > 1 && klen < sizeof(buf));
	memcpy(buf, key, klen);
	buf[klen] = 0;
	if (buf[0] == s->prefix) {
		unsigned n = (unsigned)atoi(buf + 1);

		assert_true(n < s->nkeys);
		s->hits[n]++;
	}
}

/* Keys s0..s{stable-1} stay for the whole scan while others come and go:
 * the tables grow during the first calls, then most keys go at once and
 * they shrink.  Each stable key is reported at least once. */
static void scan_churn(unsigned stripes)
{
	rl_dict *d = rl_dict_new(0, stripes);
	unsigned stable = 500, calls = 0, added = 0;
	struct seen seen = { .nkeys = stable, .prefix = 's' };
	uint64_t cursor = 0;
	char k[32];

	assert_non_null(d);
	seen.hits = calloc(stable, sizeof(*seen.hits));
	assert_non_null(seen.hits);
	for (unsigned i = 0; i < stable; i++) {
		snprintf(k, sizeof(k), "s%u", i);
		put(d, k, "v", 0);
	}
	for (unsigned i = 0; i < 1500; i++) {
		snprintf(k, sizeof(k), "d%u", i);
		put(d, k, "v", 0);
	}
	do {
		cursor = rl_dict_scan(d, cursor, 3, NOW, on_key, &seen);
		calls++;
		if (calls < 60) {
			for (int j = 0; j < 50; j++, added++) {
				snprintf(k, sizeof(k), "n%u", added);
				put(d, k, "v", 0);
			}
		} else if (calls == 60) {
			for (unsigned i = 0; i < 1500; i++) {
				snprintf(k, sizeof(k), "d%u", i);
				assert_int_equal(rl_dict_del(d, k, strlen(k),
							     NOW), 1);
			}
			for (unsigned i = 0; i < added; i++) {
				snprintf(k, sizeof(k), "n%u", i);
				assert_int_equal(rl_dict_del(d, k, strlen(k),
							     NOW), 1);
			}
		}
	} while (cursor);
	assert_true(calls > 60);
	assert_int_equal(rl_dict_count(d, NOW), stable);
	for (unsigned i = 0; i < stable; i++)
		assert_true(seen.hits[i] >= 1);
	free(seen.hits);
	rl_dict_free(d);
}

static void test_scan_churn(void **state)
{
	(void)state;
	scan_churn(1);
	scan_churn(8);
}

static void test_scan_static_and_buf(void **state)
{
	rl_dict *d = *state;
	unsigned n = 3000;
	struct seen seen = { .nkeys = n, .prefix = 'k' };
	uint64_t cursor = 0;
	uint8_t buf[512], tiny[4];
	size_t used;
	unsigned total = 0;
	char k[32];
	int r;

	seen.hits = calloc(n, sizeof(*seen.hits));
	assert_non_null(seen.hits);
	for (unsigned i = 0; i < n; i++) {
		snprintf(k, sizeof(k), "k%u", i);
		put(d, k, "v", 0);
	}
	/* An expired key is skipped. */
	put(d, "kexp", "v", NOW + 1);

	/* No writes meanwhile: every key exactly once. */
	do {
		cursor = rl_dict_scan(d, cursor, 10, NOW + 1, on_key, &seen);
	} while (cursor);
	assert_int_equal(seen.reported, n);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(seen.hits[i], 1);

	/* The same walk into a buffer. */
	memset(seen.hits, 0, n * sizeof(*seen.hits));
	seen.reported = 0;
	cursor = 0;
	do {
		r = rl_dict_scan_buf(d, &cursor, 50, NOW + 1, buf, sizeof(buf),
				     &used);
		assert_true(r >= 0);
		assert_true(used <= sizeof(buf));
		for (size_t off = 0; off < used;) {
			uint32_t klen;

			memcpy(&klen, buf + off, 4);
			on_key(&seen, buf + off + 4, klen);
			off += 4 + klen;
		}
		total += (unsigned)r;
	} while (cursor);
	assert_int_equal(total, n);
	assert_int_equal(seen.reported, n);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(seen.hits[i], 1);

	/* A buffer too small for the first bucket: -ENOSPC, the size it
	 * needs, and the cursor left alone. */
	cursor = 0;
	do {
		uint64_t before = cursor;

		r = rl_dict_scan_buf(d, &cursor, 1, NOW + 1, tiny, sizeof(tiny),
				     &used);
		if (r == -ENOSPC) {
			assert_int_equal(cursor, before);
			assert_true(used > sizeof(tiny));
			assert_true(used >= 4 + 2);
			break;
		}
		assert_int_equal(r, 0);
	} while (cursor);
	assert_int_equal(r, -ENOSPC);

	/* Garbage cursors end the walk instead of crashing. */
	assert_int_equal(rl_dict_scan(d, UINT64_MAX, 10, NOW, on_key, &seen), 0);
	free(seen.hits);
}

/* -- Memory limit ---------------------------------------------------------- */

static void test_memory_limit_lru(void **state)
{
	size_t limit = 1 << 20;
	rl_dict *d = rl_dict_new(limit, 16);
	char k[32], v[100];
	rl_dict_stats st;
	unsigned inserted = 0;
	(void)state;

	assert_non_null(d);
	memset(v, 'v', sizeof(v));
	for (int i = 0; i < 32; i++) {
		snprintf(k, sizeof(k), "hot%d", i);
		assert_int_equal(rl_dict_set(d, k, strlen(k), v, sizeof(v), 0,
					     0, NOW, NULL), 0);
	}
	/* Ten times the limit in value bytes alone. */
	for (size_t bytes = 0; bytes < 10 * limit; bytes += sizeof(v)) {
		snprintf(k, sizeof(k), "cold%u", inserted++);
		assert_int_equal(rl_dict_set(d, k, strlen(k), v, sizeof(v), 0,
					     0, NOW, NULL), 0);
		if (inserted % 256 == 0) {
			for (int i = 0; i < 32; i++) {
				snprintf(k, sizeof(k), "hot%d", i);
				assert_int_equal(rl_dict_get(d, k, strlen(k),
							     NOW, NULL), 0);
			}
			rl_dict_stats_get(d, &st);
			assert_true(st.bytes <= limit);
		}
	}
	rl_dict_stats_get(d, &st);
	assert_true(st.evictions > 0);
	assert_true(st.bytes <= limit);
	assert_true(st.bytes > limit / 2);
	assert_true(st.keys < inserted);
	assert_int_equal(st.keys + st.evictions, inserted + 32);
	for (int i = 0; i < 32; i++) {
		snprintf(k, sizeof(k), "hot%d", i);
		assert_int_equal(rl_dict_exists(d, k, strlen(k), NOW), 1);
	}
	/* The newest survive, the oldest cold ones went first. */
	snprintf(k, sizeof(k), "cold%u", inserted - 1);
	assert_int_equal(rl_dict_exists(d, k, strlen(k), NOW), 1);
	assert_int_equal(rl_dict_exists(d, "cold0", 5, NOW), 0);
	rl_dict_free(d);
}

/* Values bigger than a stripe's share fit as long as they fit the limit;
 * bigger than the limit fails at once without evicting anything. */
static void test_big_values(void **state)
{
	size_t limit = 1 << 20;
	rl_dict *d = rl_dict_new(limit, 16);     /* 64 KiB per stripe */
	uint8_t *big = malloc(limit);
	char k[32], v[200];
	rl_dict_stats st, st2;
	(void)state;

	assert_non_null(d);
	assert_non_null(big);
	memset(big, 'B', limit);
	memset(v, 's', sizeof(v));
	for (int i = 0; i < 8000; i++) {
		snprintf(k, sizeof(k), "s%d", i);
		assert_int_equal(rl_dict_set(d, k, strlen(k), v, sizeof(v), 0,
					     0, NOW, NULL), 0);
	}
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	assert_true(st.evictions > 0);

	/* Bigger than the whole limit: -ENOMEM, nothing evicted for it. */
	assert_int_equal(rl_dict_set(d, "huge", 4, big, limit, 0, 0, NOW, NULL),
			 -ENOMEM);
	rl_dict_stats_get(d, &st2);
	assert_int_equal(st2.evictions, st.evictions);
	assert_int_equal(st2.keys, st.keys);

	/* Five stripes' worth in one value. */
	assert_int_equal(rl_dict_set(d, "big", 3, big, 5 * 65536, 0, 0, NOW,
				     NULL), 0);
	assert_val_n(d, "big", 3, big, 5 * 65536, NOW);
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	/* Nearly all of it. */
	assert_int_equal(rl_dict_set(d, "big2", 4, big, limit - 4096, 0, 0, NOW,
				     NULL), 0);
	assert_val_n(d, "big2", 4, big, limit - 4096, NOW);
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	assert_int_equal(rl_dict_exists(d, "big", 3, NOW), 0);

	/* Small writes still always succeed afterwards, and the big value
	 * makes way for them in LRU order. */
	for (int i = 0; i < 8000; i++) {
		snprintf(k, sizeof(k), "t%d", i);
		assert_int_equal(rl_dict_set(d, k, strlen(k), v, sizeof(v), 0,
					     0, NOW, NULL), 0);
		if (i % 500 == 0) {
			rl_dict_stats_get(d, &st);
			assert_true(st.bytes <= limit);
		}
	}
	assert_int_equal(rl_dict_exists(d, "big2", 4, NOW), 0);
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	assert_true(st.bytes > limit / 2);

	/* A big append grows through the same path. */
	assert_int_equal(rl_dict_set(d, "ap", 2, big, 1000, 0, 0, NOW, NULL), 0);
	for (int i = 0; i < 300; i++)
		assert_int_equal(rl_dict_append(d, "ap", 2, big, 1000, 0, 0,
						NOW, NULL), 0);
	assert_val_n(d, "ap", 2, big, 301000, NOW);
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	free(big);
	rl_dict_free(d);
}

/* -- References ------------------------------------------------------------ */

static void test_blob_refs(void **state)
{
	rl_dict *d = *state;
	rl_blob *b1, *b2, *b3, *n1, *b;
	char k[32], v[64];
	int64_t r;

	b = rl_blob_new("xyz", 3);
	assert_non_null(b);
	assert_int_equal(b->refs, 1);
	assert_blob(b, "xyz");
	rl_blob_ref(b);
	assert_int_equal(b->refs, 2);
	rl_blob_unref(b);
	rl_blob_unref(b);
	rl_blob_unref(NULL);
	assert_null(rl_blob_new("x", (size_t)RL_DICT_VAL_MAX + 1));

	put(d, "k", "first", 0);
	assert_int_equal(rl_dict_get(d, "k", 1, NOW, &b1), 0);
	put(d, "k", "second", 0);
	assert_int_equal(rl_dict_get(d, "k", 1, NOW, &b2), 0);
	assert_int_equal(rl_dict_del(d, "k", 1, NOW), 1);
	put(d, "k", "third", NOW + 5);
	assert_int_equal(rl_dict_get(d, "k", 1, NOW, &b3), 0);
	assert_absent(d, "k", NOW + 5);     /* expired while held */
	assert_blob(b1, "first");
	assert_blob(b2, "second");
	assert_blob(b3, "third");
	assert_int_equal(b1->refs, 1);      /* only ours left */
	rl_blob_unref(b1);
	rl_blob_unref(b2);
	rl_blob_unref(b3);

	/* A counter changes in place only when nobody holds it. */
	put(d, "n", "1", 0);
	assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r), 0);
	assert_int_equal(rl_dict_get(d, "n", 1, NOW, &n1), 0);
	assert_int_equal(rl_dict_incr(d, "n", 1, 1, NOW, &r), 0);
	assert_blob(n1, "2");
	assert_val(d, "n", "3");
	rl_blob_unref(n1);

	/* Evicted while held. */
	rl_dict *small = rl_dict_new(64 * 1024, 4);
	assert_non_null(small);
	memset(v, 'q', sizeof(v));
	assert_int_equal(rl_dict_set(small, "held", 4, v, sizeof(v), 0, 0, NOW,
				     NULL), 0);
	assert_int_equal(rl_dict_get(small, "held", 4, NOW, &b), 0);
	for (int i = 0; i < 5000; i++) {
		snprintf(k, sizeof(k), "f%d", i);
		assert_int_equal(rl_dict_set(small, k, strlen(k), v, sizeof(v),
					     0, 0, NOW, NULL), 0);
	}
	assert_int_equal(rl_dict_exists(small, "held", 4, NOW), 0);
	assert_int_equal(b->len, sizeof(v));
	assert_memory_equal(b->data, v, sizeof(v));
	rl_blob_unref(b);
	rl_dict_free(small);

	/* Freeing the dictionary leaves references valid too. */
	small = rl_dict_new(0, 2);
	assert_non_null(small);
	assert_int_equal(rl_dict_set(small, "a", 1, "alive", 5, 0, 0, NOW,
				     NULL), 0);
	assert_int_equal(rl_dict_get(small, "a", 1, NOW, &b), 0);
	rl_dict_free(small);
	assert_blob(b, "alive");
	rl_blob_unref(b);
}

static void test_limits(void **state)
{
	rl_dict *d = *state, *d2;
	char *key = malloc(RL_DICT_KEY_MAX + 1);
	char v[100 * 1024];

	assert_non_null(key);
	memset(key, 'K', RL_DICT_KEY_MAX + 1);
	assert_int_equal(rl_dict_set(d, key, RL_DICT_KEY_MAX, "v", 1, 0, 0, NOW,
				     NULL), 0);
	assert_val_n(d, key, RL_DICT_KEY_MAX, "v", 1, NOW);
	assert_int_equal(rl_dict_set(d, key, RL_DICT_KEY_MAX + 1, "v", 1, 0, 0,
				     NOW, NULL), -E2BIG);
	assert_int_equal(rl_dict_get(d, key, RL_DICT_KEY_MAX + 1, NOW, NULL),
			 -ENOENT);
	assert_int_equal(rl_dict_del(d, key, RL_DICT_KEY_MAX + 1, NOW), 0);
	assert_int_equal(rl_dict_exists(d, key, RL_DICT_KEY_MAX + 1, NOW), 0);
	assert_int_equal(rl_dict_ttl_ms(d, key, RL_DICT_KEY_MAX + 1, NOW), -2);
	assert_int_equal(rl_dict_incr(d, key, RL_DICT_KEY_MAX + 1, 1, NOW, NULL),
			 -E2BIG);
	assert_int_equal(rl_dict_append(d, key, RL_DICT_KEY_MAX + 1, "x", 1, 0,
					1, NOW, NULL), -E2BIG);
	/* Value size is checked before the value is read. */
	assert_int_equal(rl_dict_set(d, "k", 1, "v", (size_t)RL_DICT_VAL_MAX + 1,
				     0, 0, NOW, NULL), -E2BIG);
	free(key);

	/* A value over the whole memory limit. */
	d2 = rl_dict_new(64 * 1024, 4);
	assert_non_null(d2);
	memset(v, 'v', sizeof(v));
	assert_int_equal(rl_dict_set(d2, "k", 1, v, sizeof(v), 0, 0, NOW, NULL),
			 -ENOMEM);
	assert_int_equal(rl_dict_set(d2, "k", 1, v, 32 * 1024, 0, 0, NOW, NULL),
			 0);
	rl_dict_free(d2);

	errno = 0;
	assert_null(rl_dict_new(0, 3));
	assert_int_equal(errno, EINVAL);
	assert_null(rl_dict_new(0, 1 << 17));
	d2 = rl_dict_new(0, 0);
	assert_non_null(d2);
	rl_dict_free(d2);
}

/* One stripe, so its table grows many times and shrinks back; lookups stay
 * right while entries move between tables. */
/* The prefetch hint finds the present keys and changes nothing. */
static void test_prefetch(void **state)
{
	rl_dict *d = rl_dict_new(0, 4);
	static uint8_t big[RL_DICT_KEY_MAX + 1];
	const uint8_t *keys[40];
	uint32_t lens[40];
	char names[40][16];
	rl_dict_stats st0, st1;
	(void)state;

	assert_non_null(d);
	/* 40 keys, every third present: more than one group of lookups. */
	for (int i = 0; i < 40; i++) {
		snprintf(names[i], sizeof(names[i]), "pf%d", i);
		if (i % 3 == 0)
			put(d, names[i], "v", 0);
		keys[i] = (const uint8_t *)names[i];
		lens[i] = (uint32_t)strlen(names[i]);
	}
	keys[39] = big;              /* too long to be a key: skipped */
	lens[39] = sizeof(big);
	rl_dict_stats_get(d, &st0);
	assert_int_equal(rl_dict_prefetch(d, keys, lens, 40), 13);
	assert_int_equal(rl_dict_prefetch(d, keys, lens, 0), 0);
	rl_dict_stats_get(d, &st1);
	assert_int_equal(st1.hits, st0.hits);
	assert_int_equal(st1.misses, st0.misses);
	assert_int_equal(st1.keys, st0.keys);
	assert_val_n(d, "pf3", 3, "v", 1, NOW);
	rl_dict_free(d);
}

/* rl_worker_prefetch: which bytes of a batch name a key. */
static void test_worker_prefetch(void **state)
{
	struct rl_shared sh;
	struct rl_worker w;
	rl_event ev[8];
	const char *data[8] = {
		"get k1\r\n",         /* found */
		"get k2 k3\r\n",      /* k2: found (first key only) */
		"get k3",             /* runs to the end: may go on, skipped */
		"set k1 0 0 1\r\n",   /* other commands: skipped */
		"get nope\r\n",       /* absent */
		"get \r\n",           /* empty key: skipped */
		"get k3\n",           /* LF ends a key too: found */
		"get k1\r\n",         /* not DATA below: skipped */
	};
	(void)state;

	memset(&sh, 0, sizeof(sh));
	memset(&w, 0, sizeof(w));
	sh.dict = rl_dict_new(0, 2);
	assert_non_null(sh.dict);
	w.shared = &sh;
	put(sh.dict, "k1", "a", 0);
	put(sh.dict, "k2", "b", 0);
	put(sh.dict, "k3", "c", 0);
	memset(ev, 0, sizeof(ev));
	for (int i = 0; i < 8; i++) {
		ev[i].type = RL_EV_DATA;
		ev[i].ptr = (const uint8_t *)data[i];
		ev[i].len = (uint32_t)strlen(data[i]);
	}
	ev[7].type = RL_EV_CLOSE;
	assert_int_equal(rl_worker_prefetch(&w, ev, 8, "get ", 4), 3);
	assert_int_equal(rl_worker_prefetch(&w, ev, 8, "gets ", 5), 0);
	assert_int_equal(rl_worker_prefetch(&w, ev, 0, "get ", 4), 0);
	rl_dict_free(sh.dict);
}

static void test_resize(void **state)
{
	rl_dict *d = rl_dict_new(0, 1);
	unsigned n = 100000;
	char k[32], v[32];
	(void)state;

	assert_non_null(d);
	for (unsigned i = 0; i < n; i++) {
		snprintf(k, sizeof(k), "r%u", i);
		snprintf(v, sizeof(v), "%u", i * 3);
		put(d, k, v, 0);
		if (i % 97 == 0) {
			unsigned j = (i * 7919u) % (i + 1);

			snprintf(k, sizeof(k), "r%u", j);
			snprintf(v, sizeof(v), "%u", j * 3);
			assert_val(d, k, v);
		}
	}
	assert_int_equal(rl_dict_count(d, NOW), n);
	for (unsigned i = 0; i < n; i++) {
		if (i % 100 == 0)
			continue;
		snprintf(k, sizeof(k), "r%u", i);
		assert_int_equal(rl_dict_del(d, k, strlen(k), NOW), 1);
	}
	assert_int_equal(rl_dict_count(d, NOW), n / 100);
	for (unsigned i = 0; i < n; i += 50) {
		snprintf(k, sizeof(k), "r%u", i);
		if (i % 100) {
			assert_int_equal(rl_dict_exists(d, k, strlen(k), NOW), 0);
		} else {
			snprintf(v, sizeof(v), "%u", i * 3);
			assert_val(d, k, v);
		}
	}
	rl_dict_free(d);
}

/* -- Threads --------------------------------------------------------------- */

#define INCR_THREADS 4
#define INCR_OPS 100000
#define INCR_KEYS 16

struct incr_job {
	rl_dict *d;
	int64_t delta;
};

static void *incr_thread(void *arg)
{
	struct incr_job *j = arg;
	char k[16];

	for (int i = 0; i < INCR_OPS; i++) {
		int len = snprintf(k, sizeof(k), "%c%d", i & 1 ? 'u' : 'i',
				   i % INCR_KEYS);

		if (i & 1) {
			if (rl_dict_incr_u64(j->d, k, len, (uint64_t)j->delta,
					     0, NOW, NULL))
				abort();
		} else if (rl_dict_incr(j->d, k, len, j->delta, NOW, NULL)) {
			abort();
		}
	}
	return NULL;
}

static void test_threads_incr(void **state)
{
	rl_dict *d = *state;
	pthread_t th[INCR_THREADS];
	struct incr_job jobs[INCR_THREADS];
	int64_t sum = 0, r;
	uint64_t u;
	char k[16];

	/* memcached incr needs the key to exist. */
	for (int i = 0; i < INCR_KEYS; i++) {
		snprintf(k, sizeof(k), "u%d", i);
		put(d, k, "0", 0);
	}
	for (int t = 0; t < INCR_THREADS; t++) {
		jobs[t].d = d;
		jobs[t].delta = t + 1;
		sum += t + 1;
		assert_int_equal(pthread_create(&th[t], NULL, incr_thread,
						&jobs[t]), 0);
	}
	for (int t = 0; t < INCR_THREADS; t++)
		pthread_join(th[t], NULL);
	/* Even op numbers went to i<even>, odd ones to u<odd>: each of those
	 * keys got INCR_OPS / INCR_KEYS increments from every thread. */
	for (int i = 0; i < INCR_KEYS; i++) {
		snprintf(k, sizeof(k), "u%d", i);
		assert_int_equal(rl_dict_incr_u64(d, k, strlen(k), 0, 0, NOW,
						  &u), 0);
		snprintf(k, sizeof(k), "i%d", i);
		if (i % 2) {
			assert_int_equal(u, INCR_OPS / INCR_KEYS * sum);
			assert_int_equal(rl_dict_exists(d, k, strlen(k), NOW), 0);
			continue;
		}
		assert_int_equal(u, 0);
		assert_int_equal(rl_dict_incr(d, k, strlen(k), 0, NOW, &r), 0);
		assert_int_equal(r, INCR_OPS / INCR_KEYS * sum);
	}
}

#define MIX_KEYS 2000
#define MIX_OPS 150000

struct mix_job {
	rl_dict *d;
	uint32_t seed;
	unsigned bad;
	const uint8_t *src;
};

static uint32_t mix_rnd(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Every value of key m<i> is made of (i & 0x7f) + 1 bytes, and zeros
 * where SETRANGE padded: a value of another key, or a torn read, shows. */
static int blob_ok(const rl_blob *b, unsigned i)
{
	uint8_t c = (uint8_t)((i & 0x7f) + 1);

	for (uint32_t j = 0; j < b->len; j++)
		if (b->data[j] != c && b->data[j] != 0)
			return 0;
	return b->data[b->len] == 0;
}

static uint64_t blob_sum(const rl_blob *b)
{
	uint64_t h = b->len;

	for (uint32_t j = 0; j < b->len; j++)
		h = h * 31 + b->data[j];
	return h;
}

static void mix_key(char *k, size_t cap, unsigned i, size_t *len)
{
	*len = (size_t)snprintf(k, cap, "m%u", i);
}

static void *mix_thread(void *arg)
{
	struct mix_job *j = arg;
	rl_blob *held = NULL;
	uint64_t held_sum = 0;
	char k[32];
	size_t klen;

	for (int op = 0; op < MIX_OPS; op++) {
		uint32_t r = mix_rnd(&j->seed);
		unsigned i = r % MIX_KEYS;
		int64_t now = NOW + op / 50;
		uint8_t c = (uint8_t)((i & 0x7f) + 1);
		rl_blob *b = NULL;
		size_t len;

		mix_key(k, sizeof(k), i, &klen);
		switch ((r >> 16) % 12) {
		case 0: case 1: case 2:
			/* Mostly small values, now and then one bigger than a
			 * stripe's share. */
			len = (r >> 24) == 0 ? 40000 : (r >> 20) % 600;
			rl_dict_set(j->d, k, klen, j->src + (size_t)c * 65536,
				    len, (r & 1) ? now + (r >> 8) % 200 : 0, 0,
				    now, NULL);
			break;
		case 3: case 4: case 5:
			if (!rl_dict_get(j->d, k, klen, now, &b)) {
				j->bad += !blob_ok(b, i);
				rl_blob_unref(b);
			}
			break;
		case 6:
			rl_dict_del(j->d, k, klen, now);
			break;
		case 7:
			rl_dict_append(j->d, k, klen, j->src + (size_t)c * 65536,
				       (r >> 20) % 50, (r >> 8) & 1, 1, now, NULL);
			break;
		case 8:
			rl_dict_setrange(j->d, k, klen, (r >> 20) % 300,
					 j->src + (size_t)c * 65536, 20, now,
					 NULL);
			break;
		case 9:
			rl_dict_sweep(j->d, 16, now);
			rl_dict_expire_at(j->d, k, klen, now + (r >> 20) % 100,
					  now);
			break;
		case 10: {
			char nk[16];
			int nl = snprintf(nk, sizeof(nk), "n%u", i % 16);

			rl_dict_incr(j->d, nk, (size_t)nl, 1, now, NULL);
			break;
		}
		case 11:
			/* Keep a value a while, as a send in flight would. */
			if (held) {
				j->bad += blob_sum(held) != held_sum;
				rl_blob_unref(held);
				held = NULL;
			}
			if (!rl_dict_get(j->d, k, klen, now, &held)) {
				j->bad += !blob_ok(held, i);
				held_sum = blob_sum(held);
			}
			break;
		}
	}
	if (held) {
		j->bad += blob_sum(held) != held_sum;
		rl_blob_unref(held);
	}
	return NULL;
}

static void count_key(void *ud, const uint8_t *key, size_t klen)
{
	(void)key;
	(void)klen;
	(*(uint64_t *)ud)++;
}

static void test_threads_mixed(void **state)
{
	size_t limit = 512 * 1024;
	rl_dict *d = rl_dict_new(limit, 16);     /* 32 KiB per stripe */
	uint8_t *src = malloc(129 * 65536);
	pthread_t th[2];
	struct mix_job jobs[2];
	rl_dict_stats st;
	uint64_t scanned = 0, cursor = 0;
	(void)state;

	assert_non_null(d);
	assert_non_null(src);
	for (unsigned c = 0; c < 129; c++)
		memset(src + (size_t)c * 65536, (int)c, 65536);
	for (int t = 0; t < 2; t++) {
		jobs[t] = (struct mix_job){ .d = d, .seed = 0x9e3779b9u * (t + 1),
					    .src = src };
		assert_int_equal(pthread_create(&th[t], NULL, mix_thread,
						&jobs[t]), 0);
	}
	for (int t = 0; t < 2; t++) {
		pthread_join(th[t], NULL);
		assert_int_equal(jobs[t].bad, 0);
	}
	rl_dict_stats_get(d, &st);
	assert_true(st.bytes <= limit);
	assert_true(st.sets > 0);
	/* Quiet now: after sweeping everything due, scan and count agree. */
	while (rl_dict_sweep(d, 1000, NOW + 1000000))
		;
	do {
		cursor = rl_dict_scan(d, cursor, 100, NOW + 1000000, count_key,
				      &scanned);
	} while (cursor);
	assert_int_equal(scanned, rl_dict_count(d, NOW + 1000000));
	free(src);
	rl_dict_free(d);
}

/* A value far bigger than one stripe's share borrows unused budget from
 * the others; small writes afterwards, in its stripe or elsewhere, must
 * borrow too rather than evict it while the dictionary is nearly empty. */
static void test_big_value_not_evicted_below_limit(void **state)
{
	rl_dict *d = rl_dict_new(256u << 20, 64);
	size_t big = 40u << 20;
	char *v = malloc(big), key[32];
	rl_dict_stats st;

	(void)state;
	assert_non_null(d);
	assert_non_null(v);
	memset(v, 'b', big);
	assert_int_equal(rl_dict_set(d, "big", 3, v, big, 0, 0, NOW, NULL), 0);
	for (int i = 0; i < 20000; i++) {
		int n = snprintf(key, sizeof(key), "k%d", i);

		assert_int_equal(rl_dict_set(d, key, n, "v", 1, 0, 0, NOW, NULL), 0);
	}
	assert_int_equal(rl_dict_exists(d, "big", 3, NOW), 1);
	rl_dict_stats_get(d, &st);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(st.keys, 20001);
	free(v);
	rl_dict_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_set_get_del_exists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_nx_xx_keepttl_old, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expire_lazy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sweep_budget, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ttl_expire_persist_touch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incr_canonical, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incr_overflow_keepttl, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incr_u64, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_prepend, setup, teardown),
		cmocka_unit_test_setup_teardown(test_setrange, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cas_flags, setup, teardown),
		cmocka_unit_test_setup_teardown(test_count_flush_stats, setup, teardown),
		cmocka_unit_test(test_scan_churn),
		cmocka_unit_test_setup_teardown(test_scan_static_and_buf, setup, teardown),
		cmocka_unit_test(test_memory_limit_lru),
		cmocka_unit_test(test_big_values),
		cmocka_unit_test_setup_teardown(test_blob_refs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
		cmocka_unit_test(test_resize),
		cmocka_unit_test(test_prefetch),
		cmocka_unit_test(test_worker_prefetch),
		cmocka_unit_test(test_big_value_not_evicted_below_limit),
		cmocka_unit_test_setup_teardown(test_threads_incr, setup, teardown),
		cmocka_unit_test(test_threads_mixed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
