/* test_bufring.c: unit tests for the provided buffer ring and its leases (core/rl_bufring.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "rl_bufring.h"

/* The ring entry at position pos (an unmasked ring index). */
static struct io_uring_buf *entry_at(const struct rl_bufring *r, uint32_t pos)
{
	return &r->br->bufs[pos & (r->nbufs - 1)];
}

/* The entry at pos names buffer bid with its full address and size. */
static void assert_entry(const struct rl_bufring *r, uint32_t pos, uint32_t bid)
{
	const struct io_uring_buf *b = entry_at(r, pos);

	assert_int_equal(b->bid, bid);
	assert_int_equal(b->len, r->size);
	assert_true(b->addr == (uint64_t)(uintptr_t)rl_bufring_addr(r, bid));
}

static uint16_t tail_of(const struct rl_bufring *r)
{
	return r->br->tail;
}

/* A small deterministic generator, so failures reproduce. */
#include "test_rng.h"

static void shuffle(uint32_t *a, uint32_t n)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = rnd() % i, t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}

static void test_init_rejects_bad_counts(void **state)
{
	static const uint32_t bad[] = { 0, 3, 5, 6, 12, 100, 32767, 32769,
					65535, 65536, 1u << 20, UINT32_MAX };
	struct rl_bufring r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&r, 0xa5, sizeof(r));
		assert_int_equal(rl_bufring_init(&r, bad[i], 4096, 0), -EINVAL);
		/* Nothing allocated, nothing left pointing anywhere. */
		assert_null(r.br);
		assert_null(r.mem);
		assert_null(r.leases);
	}
	assert_int_equal(rl_bufring_init(&r, 8, 0, 0), -EINVAL);
	assert_null(r.br);
}

static void test_init_accepts_powers_of_two(void **state)
{
	static const uint32_t good[] = { 1, 2, 4, 64, 1024, 32768 };
	struct rl_bufring r;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		assert_int_equal(rl_bufring_init(&r, good[i], 512, 0), 0);
		assert_int_equal(r.nbufs, good[i]);
		assert_int_equal(rl_bufring_available(&r), good[i]);
		/* Only up to RL_BUFRING_MIN_POSTED start in the kernel's ring;
		 * the rest wait on the stack. */
		uint32_t posted = good[i] < RL_BUFRING_MIN_POSTED ?
				  good[i] : RL_BUFRING_MIN_POSTED;
		assert_int_equal(tail_of(&r), (uint16_t)posted);
		assert_int_equal(r.posted, posted);
		assert_int_equal(r.nstack, good[i] - posted);
		rl_bufring_free(&r, NULL);
		assert_null(r.br);
	}
}

static void test_init_layout(void **state)
{
	struct rl_bufring r;

	assert_int_equal(rl_bufring_init(&r, 8, 64, 0), 0);
	assert_non_null(r.br);
	assert_non_null(r.mem);
	assert_non_null(r.leases);
	assert_int_equal(r.size, 64);
	assert_int_equal(r.staged, 0);
	assert_int_equal(r.leased, 0);
	assert_int_equal(r.bgid, -1);
	assert_int_equal(r.registered, 0);
	/* Every id is in the ring, at its own position, tail after them all. */
	assert_int_equal(tail_of(&r), 8);
	for (uint32_t bid = 0; bid < 8; bid++) {
		assert_int_equal(r.leases[bid], 0);
		assert_entry(&r, bid, bid);
		assert_ptr_equal(rl_bufring_addr(&r, bid), r.mem + bid * 64);
	}
	/* The buffer memory is usable. */
	memset(r.mem, 0x5a, 8 * 64);
	rl_bufring_free(&r, NULL);
}

static void test_take_ref_unref_counting(void **state)
{
	struct rl_bufring r;

	assert_int_equal(rl_bufring_init(&r, 8, 128, 0), 0);

	assert_int_equal(rl_bufring_take(&r, 3), 0);
	assert_int_equal(r.leases[3], 1);
	assert_int_equal(r.leased, 1);
	assert_int_equal(rl_bufring_available(&r), 7);
	/* A leased id cannot come from the ring again. */
	assert_int_equal(rl_bufring_take(&r, 3), -EINVAL);
	assert_int_equal(r.leases[3], 1);
	assert_int_equal(r.leased, 1);

	assert_int_equal(rl_bufring_ref(&r, 3), 0);
	assert_int_equal(rl_bufring_ref(&r, 3), 0);
	assert_int_equal(r.leases[3], 3);
	assert_int_equal(r.leased, 1);          /* one id, three leases */

	assert_int_equal(rl_bufring_unref(&r, 3), 0);
	assert_int_equal(r.leases[3], 2);
	assert_int_equal(rl_bufring_unref(&r, 3), 0);
	assert_int_equal(r.leases[3], 1);
	assert_int_equal(r.staged, 0);
	assert_int_equal(r.leased, 1);

	/* The last lease stages the id just past the tail. */
	uint16_t tail = tail_of(&r);
	assert_int_equal(rl_bufring_unref(&r, 3), 1);
	assert_int_equal(r.leases[3], 0);
	assert_int_equal(r.leased, 0);
	assert_int_equal(r.staged, 1);
	assert_int_equal(rl_bufring_available(&r), 8);
	assert_entry(&r, tail, 3);
	assert_int_equal(tail_of(&r), tail);     /* invisible until publish */

	/* Double unref, ref without a lease. */
	assert_int_equal(rl_bufring_unref(&r, 3), -EINVAL);
	assert_int_equal(rl_bufring_ref(&r, 3), -EINVAL);
	assert_int_equal(r.leases[3], 0);
	assert_int_equal(r.staged, 1);
	assert_int_equal(r.leased, 0);

	/* Ids out of range. */
	assert_int_equal(rl_bufring_take(&r, 8), -EINVAL);
	assert_int_equal(rl_bufring_ref(&r, 8), -EINVAL);
	assert_int_equal(rl_bufring_unref(&r, 8), -EINVAL);
	assert_int_equal(rl_bufring_take(&r, UINT32_MAX), -EINVAL);
	assert_int_equal(r.leased, 0);

	assert_int_equal(rl_bufring_publish(&r), 1);
	assert_int_equal(tail_of(&r), (uint16_t)(tail + 1));
	rl_bufring_free(&r, NULL);
}

static void test_ref_saturates(void **state)
{
	struct rl_bufring r;

	assert_int_equal(rl_bufring_init(&r, 2, 64, 0), 0);
	assert_int_equal(rl_bufring_take(&r, 1), 0);
	for (uint32_t i = 1; i < UINT16_MAX; i++)
		assert_int_equal(rl_bufring_ref(&r, 1), 0);
	assert_int_equal(r.leases[1], UINT16_MAX);
	/* One more would wrap the count to 0: refused. */
	assert_int_equal(rl_bufring_ref(&r, 1), -EINVAL);
	assert_int_equal(r.leases[1], UINT16_MAX);
	for (uint32_t i = 1; i < UINT16_MAX; i++)
		assert_int_equal(rl_bufring_unref(&r, 1), 0);
	assert_int_equal(rl_bufring_unref(&r, 1), 1);
	assert_int_equal(r.staged, 1);
	assert_int_equal(r.leased, 0);
	rl_bufring_free(&r, NULL);
}

static void test_publish_is_one_batch(void **state)
{
	struct rl_bufring r;
	uint16_t tail;

	assert_int_equal(rl_bufring_init(&r, 8, 256, 0), 0);
	for (uint32_t bid = 0; bid < 8; bid++)
		assert_int_equal(rl_bufring_take(&r, bid), 0);
	assert_int_equal(rl_bufring_available(&r), 0);

	tail = tail_of(&r);
	assert_int_equal(rl_bufring_publish(&r), 0);   /* nothing staged */
	assert_int_equal(tail_of(&r), tail);

	assert_int_equal(rl_bufring_unref(&r, 5), 1);
	assert_int_equal(rl_bufring_unref(&r, 2), 1);
	assert_int_equal(rl_bufring_unref(&r, 7), 1);
	assert_int_equal(r.staged, 3);
	assert_int_equal(tail_of(&r), tail);
	/* Staged in release order at tail, tail+1, tail+2. */
	assert_entry(&r, tail + 0, 5);
	assert_entry(&r, tail + 1, 2);
	assert_entry(&r, tail + 2, 7);

	assert_int_equal(rl_bufring_publish(&r), 3);
	assert_int_equal(tail_of(&r), (uint16_t)(tail + 3));
	assert_int_equal(r.staged, 0);
	assert_int_equal(rl_bufring_available(&r), 3);
	/* Publishing again changes nothing. */
	assert_int_equal(rl_bufring_publish(&r), 0);
	assert_int_equal(tail_of(&r), (uint16_t)(tail + 3));

	/* The next release is staged at the new tail. */
	assert_int_equal(rl_bufring_unref(&r, 0), 1);
	assert_entry(&r, tail + 3, 0);
	assert_int_equal(rl_bufring_publish(&r), 1);
	assert_int_equal(tail_of(&r), (uint16_t)(tail + 4));

	/* A released id can be taken again. */
	assert_int_equal(rl_bufring_take(&r, 5), 0);
	assert_int_equal(r.leases[5], 1);
	rl_bufring_free(&r, NULL);
}

/* Many rounds of take/unref/publish, each a different number of ids in a
 * random order, until the 16-bit tail has wrapped more than twice. */
static void test_wraparound(void **state)
{
	enum { N = 16 };
	struct rl_bufring r;
	uint32_t ids[N], expect_tail = N, total = 0;

	rng_state = 777;
	assert_int_equal(rl_bufring_init(&r, N, 64, 0), 0);
	for (uint32_t round = 0; total < 3 * 65536 + 123; round++) {
		uint32_t k = 1 + rnd() % N;
		uint16_t tail = tail_of(&r);

		assert_int_equal(tail, (uint16_t)expect_tail);
		for (uint32_t i = 0; i < N; i++)
			ids[i] = i;
		shuffle(ids, N);
		for (uint32_t i = 0; i < k; i++)
			assert_int_equal(rl_bufring_take(&r, ids[i]), 0);
		assert_int_equal(rl_bufring_available(&r), N - k);
		shuffle(ids, k);
		for (uint32_t i = 0; i < k; i++) {
			/* Sometimes a second holder: only its end stages. */
			if (rnd() % 3 == 0) {
				assert_int_equal(rl_bufring_ref(&r, ids[i]), 0);
				assert_int_equal(rl_bufring_unref(&r, ids[i]), 0);
			}
			assert_int_equal(rl_bufring_unref(&r, ids[i]), 1);
			assert_int_equal(r.staged, i + 1);
		}
		for (uint32_t i = 0; i < k; i++)
			assert_entry(&r, (uint32_t)tail + i, ids[i]);
		assert_int_equal(tail_of(&r), tail);
		assert_int_equal(rl_bufring_publish(&r), k);
		expect_tail += k;
		total += k;
		assert_int_equal(tail_of(&r), (uint16_t)expect_tail);
		assert_int_equal(r.staged, 0);
		assert_int_equal(r.leased, 0);
	}
	assert_true(expect_tail > 3 * 65536);
	rl_bufring_free(&r, NULL);
}

/* Full cycles of every id, tail wrapping: the entries always land at the
 * masked positions, including on the wrap itself. */
static void test_wraparound_full_cycles(void **state)
{
	enum { N = 8 };
	struct rl_bufring r;
	uint32_t cycles = 0;

	assert_int_equal(rl_bufring_init(&r, N, 32, 0), 0);
	for (uint32_t c = 0; c < 70000 / N + 10; c++) {
		uint16_t tail = tail_of(&r);

		for (uint32_t bid = 0; bid < N; bid++)
			assert_int_equal(rl_bufring_take(&r, bid), 0);
		assert_int_equal(rl_bufring_available(&r), 0);
		/* Release in reverse order every other cycle. */
		for (uint32_t i = 0; i < N; i++) {
			uint32_t bid = (c & 1) ? N - 1 - i : i;

			assert_int_equal(rl_bufring_unref(&r, bid), 1);
		}
		for (uint32_t i = 0; i < N; i++)
			assert_entry(&r, (uint32_t)tail + i,
				     (c & 1) ? N - 1 - i : i);
		assert_int_equal(rl_bufring_publish(&r), N);
		assert_int_equal(tail_of(&r), (uint16_t)(tail + N));
		cycles++;
	}
	assert_true(cycles * N > 65536);
	/* N + cycles * N, modulo 2^16. */
	assert_int_equal(tail_of(&r), (uint16_t)(N + cycles * N));
	rl_bufring_free(&r, NULL);
}

static void test_exhaustion(void **state)
{
	struct rl_bufring r;

	assert_int_equal(rl_bufring_init(&r, 16, 64, 0), 0);
	for (uint32_t bid = 0; bid < 16; bid++) {
		assert_int_equal(rl_bufring_available(&r), 16 - bid);
		assert_int_equal(rl_bufring_take(&r, bid), 0);
	}
	assert_int_equal(rl_bufring_available(&r), 0);
	assert_int_equal(r.leased, 16);
	for (uint32_t bid = 0; bid < 16; bid++)
		assert_int_equal(rl_bufring_take(&r, bid), -EINVAL);
	assert_int_equal(rl_bufring_available(&r), 0);
	/* A lease held by a second holder does not give the id back. */
	assert_int_equal(rl_bufring_ref(&r, 9), 0);
	assert_int_equal(rl_bufring_unref(&r, 9), 0);
	assert_int_equal(rl_bufring_available(&r), 0);
	assert_int_equal(rl_bufring_unref(&r, 9), 1);
	assert_int_equal(rl_bufring_available(&r), 1);
	/* Available counts staged ids even before publish. */
	assert_int_equal(r.staged, 1);
	assert_int_equal(rl_bufring_publish(&r), 1);
	assert_int_equal(rl_bufring_available(&r), 1);
	rl_bufring_free(&r, NULL);
}

static void test_bid_of(void **state)
{
	struct rl_bufring r;
	int local;

	assert_int_equal(rl_bufring_init(&r, 4, 1000, 0), 0);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem), 0);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 999), 0);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 1000), 1);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 2500), 2);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 3999), 3);
	for (uint32_t bid = 0; bid < 4; bid++)
		assert_int_equal(rl_bufring_bid_of(&r, rl_bufring_addr(&r, bid)),
				 bid);
	/* One past the end, one before the start, elsewhere. */
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 4000), -1);
	assert_int_equal(rl_bufring_bid_of(&r, r.mem + 100000), -1);
	assert_int_equal(rl_bufring_bid_of(&r,
		(const void *)((uintptr_t)r.mem - 1)), -1);
	assert_int_equal(rl_bufring_bid_of(&r, &local), -1);
	assert_int_equal(rl_bufring_bid_of(&r, NULL), -1);
	assert_int_equal(rl_bufring_bid_of(&r, r.br), -1);
	rl_bufring_free(&r, NULL);
}

/* A large ring keeps only its target posted; a released id goes back to the
 * ring before colder ids waiting on the stack. */
static void test_hot_ids_reused_first(void **state)
{
	struct rl_bufring r;
	uint16_t tail;

	(void)state;
	assert_int_equal(rl_bufring_init(&r, 256, 64, 0), 0);
	assert_int_equal(r.target, RL_BUFRING_MIN_POSTED);
	assert_int_equal(r.posted, 64);
	assert_int_equal(r.nstack, 192);
	/* The kernel hands out ids 0..63 in ring order. */
	for (uint32_t bid = 0; bid < 64; bid++)
		assert_int_equal(rl_bufring_take(&r, bid), 0);
	assert_int_equal(r.posted, 0);
	assert_int_equal(rl_bufring_available(&r), 192);
	tail = tail_of(&r);
	/* Release 5 then 9: both below target, staged at once, in order. */
	assert_int_equal(rl_bufring_unref(&r, 5), 1);
	assert_int_equal(rl_bufring_unref(&r, 9), 1);
	assert_int_equal(r.staged, 2);
	assert_entry(&r, tail, 5);
	assert_entry(&r, tail + 1, 9);
	/* Publish tops up to the target from the stack: 62 more ids. */
	assert_int_equal(rl_bufring_publish(&r), 64);
	assert_int_equal(r.posted, 64);
	assert_int_equal(r.nstack, 130);
	assert_int_equal(tail_of(&r), (uint16_t)(tail + 64));
	/* The stack gives lowest waiting id first (64, 65, ...). */
	assert_entry(&r, tail + 2, 64);
	assert_entry(&r, tail + 3, 65);
	/* At target, a release waits on top of the stack. */
	assert_int_equal(rl_bufring_unref(&r, 7), 1);
	assert_int_equal(r.staged, 0);
	assert_int_equal(r.nstack, 131);
	assert_int_equal(r.stack[r.nstack - 1], 7);
	rl_bufring_free(&r, NULL);
}

static void test_target_grows_when_starved(void **state)
{
	struct rl_bufring r;

	(void)state;
	assert_int_equal(rl_bufring_init(&r, 256, 64, 0), 0);
	assert_int_equal(rl_bufring_starved(&r), 1);
	assert_int_equal(r.target, 128);
	assert_int_equal(rl_bufring_publish(&r), 64);
	assert_int_equal(r.posted, 128);
	assert_int_equal(rl_bufring_starved(&r), 1);
	assert_int_equal(r.target, 256);
	/* Everything posted: nothing idle to add. */
	assert_int_equal(rl_bufring_publish(&r), 128);
	assert_int_equal(r.nstack, 0);
	assert_int_equal(rl_bufring_starved(&r), 0);
	assert_int_equal(r.target, 256);
	/* A small ring never grows: all of it is posted from the start. */
	rl_bufring_free(&r, NULL);
	assert_int_equal(rl_bufring_init(&r, 8, 64, 0), 0);
	assert_int_equal(rl_bufring_starved(&r), 0);
	assert_int_equal(r.target, 8);
	rl_bufring_free(&r, NULL);
}

/* What the kernel does: pick the id at the ring's head. */
static uint32_t kernel_pick(struct rl_bufring *r, uint16_t *head)
{
	uint32_t bid = entry_at(r, *head)->bid;

	(*head)++;
	assert_int_equal(rl_bufring_take(r, bid), 0);
	return bid;
}

static void test_target_shrinks_when_idle(void **state)
{
	struct rl_bufring r;
	uint16_t head = 0;

	(void)state;
	assert_int_equal(rl_bufring_init(&r, 1024, 64, 0), 0);
	rl_bufring_starved(&r);
	rl_bufring_starved(&r);
	assert_int_equal(r.target, 256);
	rl_bufring_publish(&r);
	assert_int_equal(r.posted, 256);
	/* A window of publishes each taking only 10 ids (under a quarter of
	 * the target), then some more so the ring drains to the new target:
	 * ids already posted stay until the kernel uses them. */
	for (int round = 0; round < RL_BUFRING_WINDOW + 20; round++) {
		uint32_t bids[10];

		for (int i = 0; i < 10; i++)
			bids[i] = kernel_pick(&r, &head);
		for (int i = 0; i < 10; i++)
			assert_int_equal(rl_bufring_unref(&r, bids[i]), 1);
		rl_bufring_publish(&r);
		assert_int_equal(r.posted + r.nstack + r.leased, 1024);
		/* The publish before the loop opened the window. */
		if (round < RL_BUFRING_WINDOW - 2)
			assert_int_equal(r.target, 256);
	}
	assert_int_equal(r.target, 128);
	assert_int_equal(r.posted, 128);
	assert_int_equal(r.nstack, 1024 - 128);
	rl_bufring_free(&r, NULL);
}

/* Plain buffers (decrypted TLS bytes) lie behind the ring: leased, referenced
 * and found by address like ring buffers; never posted to the kernel. */
static void test_plain_buffers(void **state)
{
	struct rl_bufring r;
	int32_t a, b;

	assert_int_equal(rl_bufring_init(&r, 8, 64, 2), 0);
	assert_int_equal(r.nplain_free, 2);
	a = rl_bufring_take_plain(&r);
	b = rl_bufring_take_plain(&r);
	assert_int_equal(a, 8);         /* lowest first */
	assert_int_equal(b, 9);
	assert_int_equal(rl_bufring_take_plain(&r), -1);
	assert_int_equal(rl_bufring_available(&r), 8);  /* the ring's untouched */
	assert_int_equal(rl_bufring_bid_of(&r, rl_bufring_addr(&r, 9) + 63), 9);
	assert_int_equal(rl_bufring_bid_of(&r, rl_bufring_addr(&r, 9) + 64), -1);
	memset(rl_bufring_addr(&r, 9), 0x5a, 64);
	/* A send's lease keeps it out after the handler's ends. */
	assert_int_equal(rl_bufring_ref(&r, 9), 0);
	assert_int_equal(rl_bufring_unref(&r, 9), 0);
	assert_int_equal(rl_bufring_unref(&r, 9), 1);
	assert_int_equal(r.nplain_free, 1);
	assert_int_equal(rl_bufring_unref(&r, 9), -EINVAL);
	/* Nothing of it went to the kernel's ring. */
	assert_int_equal(r.staged, 0);
	assert_int_equal(rl_bufring_take_plain(&r), 9);
	rl_bufring_unref(&r, 8);
	rl_bufring_unref(&r, 9);
	assert_int_equal(r.nplain_free, 2);
	assert_int_equal(r.plain_leased, 0);
	rl_bufring_free(&r, NULL);

	/* Down to its last eighth, the plain pool is low (held bytes are
	 * copied, sends copy instead of leasing), whatever the ring has. */
	assert_int_equal(rl_bufring_init(&r, 8, 64, 16), 0);
	for (int i = 0; i < 14; i++)
		rl_bufring_take_plain(&r);
	assert_false(rl_bufring_low(&r));
	assert_false(rl_bufring_spare(&r, 8));
	assert_true(rl_bufring_spare(&r, 0));
	rl_bufring_take_plain(&r);
	assert_true(rl_bufring_low(&r));
	rl_bufring_free(&r, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_rejects_bad_counts),
		cmocka_unit_test(test_init_accepts_powers_of_two),
		cmocka_unit_test(test_init_layout),
		cmocka_unit_test(test_take_ref_unref_counting),
		cmocka_unit_test(test_ref_saturates),
		cmocka_unit_test(test_publish_is_one_batch),
		cmocka_unit_test(test_wraparound),
		cmocka_unit_test(test_wraparound_full_cycles),
		cmocka_unit_test(test_exhaustion),
		cmocka_unit_test(test_bid_of),
		cmocka_unit_test(test_hot_ids_reused_first),
		cmocka_unit_test(test_target_grows_when_starved),
		cmocka_unit_test(test_target_shrinks_when_idle),
		cmocka_unit_test(test_plain_buffers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
