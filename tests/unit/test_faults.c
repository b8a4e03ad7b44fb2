/* test_faults.c: allocation failures injected at every site of the send queue, residue and dictionary paths (core/rl_alloc.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rl_alloc.h"
#include "rl_bufring.h"
#include "rl_dict.h"
#include "rl_rxbuf.h"
#include "rl_rxhold.h"
#include "rl_sendq.h"

/*
 * Built with -DRL_FAULT_INJECTION and AddressSanitizer (Makefile): the
 * core's sources are compiled again for this binary only.  Each test walks
 * N = 1, 2, ... and makes the Nth allocation of one operation fail, until
 * an N passes every allocation the operation makes.  At each N the
 * operation must either succeed or return -ENOMEM with the structure as it
 * was (same bytes, same leases, same accounting), and the structure must
 * still work afterwards.  LeakSanitizer fails the binary at exit if a
 * failure path leaked.
 */
unsigned long rl_fault_countdown;
unsigned long rl_fault_failed;
int rl_fault_sticky;

#define NOW 1700000000000LL
#define MAX_WALK 64

/* Arm the Nth allocation from now to fail (0: none). */
static void fail_nth(unsigned long n, int sticky)
{
	rl_fault_countdown = n;
	rl_fault_sticky = sticky;
	rl_fault_failed = 0;
}

/* Did the armed failure happen?  Disarms. */
static int fired(void)
{
	int f = rl_fault_failed != 0;

	rl_fault_countdown = 0;
	rl_fault_sticky = 0;
	return f;
}

static void pattern(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed ^ (i * 31 + (i >> 7)));
}

/* -- Send queue ------------------------------------------------------------ */

#define NBUFS 8
#define BUFSZ 4096

struct sq_fixture {
	struct rl_bufring br;
	struct rl_chunkpool pool;
	struct rl_sendq q;
};

static void sq_open(struct sq_fixture *f)
{
	memset(f, 0, sizeof(*f));
	assert_int_equal(rl_bufring_init(&f->br, NBUFS, BUFSZ, 0), 0);
	assert_int_equal(rl_chunkpool_init(&f->pool, 4), 0);
	rl_sendq_init(&f->q);
	pattern(f->br.mem, (size_t)NBUFS * BUFSZ, 7);
}

static void sq_close(struct sq_fixture *f)
{
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	for (uint32_t i = 0; i < NBUFS; i++)
		assert_int_equal(f->br.leases[i], 0);
	rl_chunkpool_free(&f->pool);
	rl_bufring_free(&f->br, NULL);
}

/* The queue's bytes, front to back, into out (at most cap). */
static size_t sq_bytes(const struct rl_sendq *q, uint8_t *out, size_t cap)
{
	struct iovec iov[64];
	size_t total = 0, n = 0;
	int k = rl_sendq_iov(q, iov, 64, &total);

	assert_true(k < 64);
	for (int i = 0; i < k; i++) {
		assert_true(n + iov[i].iov_len <= cap);
		memcpy(out + n, iov[i].iov_base, iov[i].iov_len);
		n += iov[i].iov_len;
	}
	assert_int_equal(n, total);
	assert_int_equal(n, q->bytes);
	return n;
}

static void test_chunkpool_init_fails_cleanly(void **state)
{
	struct rl_chunkpool p;

	(void)state;
	fail_nth(1, 0);
	assert_int_equal(rl_chunkpool_init(&p, 16), -ENOMEM);
	assert_true(fired());
	assert_int_equal(rl_chunkpool_init(&p, 16), 0);
	rl_chunkpool_free(&p);
}

/* Small copies, large copies and leased ranges, enough to grow the segment
 * ring past its inline slots: every allocation fails once. */
static void test_sendq_push_walk(void **state)
{
	static uint8_t big[3 * RL_CHUNK_SIZE + 17], want[64 * 1024],
		got[64 * 1024];
	int failures = 0;

	(void)state;
	pattern(big, sizeof(big), 3);
	for (unsigned long n = 1; n <= MAX_WALK; n++) {
		struct sq_fixture f;
		size_t wlen = 0;
		int ret = 0, done;

		sq_open(&f);
		assert_int_equal(rl_bufring_take(&f.br, 1), 0);
		fail_nth(n, 0);
		for (int step = 0; step < 12 && !ret; step++) {
			const uint8_t *p;
			size_t len;

			switch (step % 3) {
			case 0:     /* a small copy into a chunk */
				p = big + step;
				len = 100 + step;
				ret = rl_sendq_push_copy(&f.q, &f.pool, p, len);
				break;
			case 1:     /* a copy bigger than a chunk */
				p = big;
				len = sizeof(big);
				ret = rl_sendq_push_copy(&f.q, &f.pool, p, len);
				break;
			default:    /* a leased range of buffer 1 */
				p = rl_bufring_addr(&f.br, 1) + step * 10;
				len = 300;
				ret = rl_sendq_push_ref(&f.q, &f.br, p, len, 1);
				break;
			}
			if (ret)
				break;
			memcpy(want + wlen, p, len);
			wlen += len;
		}
		done = !fired();
		if (ret) {
			assert_int_equal(ret, -ENOMEM);
			failures++;
		}
		/* What was queued before the failure is all there, in order. */
		assert_int_equal(sq_bytes(&f.q, got, sizeof(got)), wlen);
		assert_memory_equal(got, want, wlen);
		/* And the queue takes more and drains. */
		assert_int_equal(rl_sendq_push_copy(&f.q, &f.pool, "tail", 4), 0);
		rl_sendq_advance(&f.q, &f.pool, &f.br, f.q.bytes);
		assert_int_equal(f.q.bytes, 0);
		assert_int_equal(f.br.leases[1], 1);
		assert_int_equal(rl_bufring_unref(&f.br, 1), 1);
		sq_close(&f);
		if (done)
			break;
	}
	assert_true(failures >= 3);   /* segment ring, chunk, big piece */
}

/* Detaching leased ranges copies each: a failure mid-way leaves every byte
 * in place and every lease either held or ended with its copy made. */
static void test_sendq_detach_walk(void **state)
{
	static uint8_t want[16 * 1024], got[16 * 1024];
	int failures = 0;

	(void)state;
	for (unsigned long n = 1; n <= MAX_WALK; n++) {
		struct sq_fixture f;
		size_t wlen = 0;
		int ret, done;

		sq_open(&f);
		for (uint32_t b = 0; b < 3; b++) {
			const uint8_t *p = rl_bufring_addr(&f.br, b) + 5;

			assert_int_equal(rl_bufring_take(&f.br, b), 0);
			assert_int_equal(rl_sendq_push_ref(&f.q, &f.br, p, 700, (int32_t)b), 0);
			assert_int_equal(rl_sendq_push_copy(&f.q, &f.pool, "|", 1), 0);
			memcpy(want + wlen, p, 700);
			want[wlen + 700] = '|';
			wlen += 701;
		}
		fail_nth(n, 0);
		ret = rl_sendq_detach(&f.q, &f.pool, &f.br);
		done = !fired();
		assert_int_equal(sq_bytes(&f.q, got, sizeof(got)), wlen);
		assert_memory_equal(got, want, wlen);
		if (ret) {
			assert_int_equal(ret, -ENOMEM);
			assert_true(rl_sendq_has_refs(&f.q));
			failures++;
			/* Memory is back: the retry finishes the job. */
			assert_int_equal(rl_sendq_detach(&f.q, &f.pool, &f.br), 0);
		}
		assert_false(rl_sendq_has_refs(&f.q));
		for (uint32_t b = 0; b < 3; b++) {
			assert_int_equal(f.br.leases[b], 1);  /* ours, not the queue's */
			assert_int_equal(rl_bufring_unref(&f.br, b), 1);
		}
		sq_close(&f);
		if (done)
			break;
	}
	assert_int_equal(failures, 3);
}

/* -- Receive residue --------------------------------------------------------- */

/* A frame spanning three arrivals: every growth of the residue fails once.
 * A failure reports -ENOMEM and keeps the residue readable and freeable. */
static void test_rxbuf_walk(void **state)
{
	static uint8_t a[3][2000], whole[6000];
	int failures = 0;

	(void)state;
	for (int i = 0; i < 3; i++) {
		pattern(a[i], sizeof(a[i]), (uint8_t)(i * 50));
		memcpy(whole + i * 2000, a[i], 2000);
	}
	for (unsigned long n = 1; n <= MAX_WALK; n++) {
		struct rl_rxbuf rx;
		struct rl_rx_offer o;
		uint64_t copied = 0;
		int ret = 0, done;
		size_t seen = 0;

		memset(&rx, 0, sizeof(rx));
		fail_nth(n, 0);
		/* Nothing is consumed until all 6000 bytes are offered. */
		for (int i = 0; i < 3 && !ret; i++) {
			ret = rl_rxbuf_begin(&rx, a[i], 2000, 1u << 20, &o, &copied);
			while (!ret) {
				assert_memory_equal(o.ptr, whole, o.len);
				seen = o.len;
				if (seen == 6000)
					break;
				ret = rl_rxbuf_consumed(&rx, 0, 1u << 20, &o, &copied);
				if (ret == 0)
					break;        /* kept whole, next arrival */
				if (ret == 1)
					ret = 0;
			}
		}
		done = !fired();
		if (ret) {
			assert_int_equal(ret, -ENOMEM);
			failures++;
			/* What the residue holds is still a prefix of the frame. */
			assert_true(rx.len <= 6000);
			assert_memory_equal(rx.data ? rx.data : whole, whole, rx.len);
		} else {
			assert_int_equal(seen, 6000);
			assert_int_equal(rl_rxbuf_consumed(&rx, 6000, 1u << 20, &o, &copied), 0);
			assert_int_equal(rx.len, 0);
		}
		rl_rxbuf_free(&rx);
		if (done)
			break;
	}
	assert_true(failures >= 2);
}

/* -- Held ranges ------------------------------------------------------------ */

/* Pushes at both ends with growth failing at each allocation: a refused
 * push is -ENOMEM and leaves the list as it was, in order. */
static void test_rxhold_walk(void **state)
{
	(void)state;
	for (unsigned long n = 1; n <= MAX_WALK; n++) {
		struct rl_rxhold h = {0};
		struct rl_rxhold_ent e;
		int32_t want[40];
		int nw = 0, refused = 0;

		fail_nth(n, n & 1);
		for (int i = 0; i < 40; i++) {
			int front = i % 3 == 0;
			uint32_t before = h.n, bytes = h.bytes;

			if (rl_rxhold_push(&h, i, 0, 100 + i, front)) {
				assert_int_equal(h.n, before);
				assert_int_equal(h.bytes, bytes);
				refused++;
				continue;
			}
			if (front) {
				memmove(want + 1, want, nw * sizeof(*want));
				want[0] = i;
			} else {
				want[nw] = i;
			}
			nw++;
		}
		if (fired())
			assert_true(refused > 0);
		for (int i = 0; i < nw; i++) {
			assert_int_equal(rl_rxhold_pop(&h, &e), 0);
			assert_int_equal(e.bid, want[i]);
		}
		assert_int_equal(rl_rxhold_pop(&h, &e), -1);
		rl_rxhold_free(&h);
	}
}

/* -- Dictionary ---------------------------------------------------------------- */

struct dict_view {
	uint64_t keys, bytes;
};

static struct dict_view view(rl_dict *d)
{
	rl_dict_stats st;

	rl_dict_stats_get(d, &st);
	return (struct dict_view){ st.keys, st.bytes };
}

static void assert_value(rl_dict *d, const char *k, const void *v, size_t n)
{
	rl_blob *b = NULL;

	assert_int_equal(rl_dict_get(d, k, strlen(k), NOW, &b), 0);
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, v, n);
	rl_blob_unref(b);
}

static void assert_absent(rl_dict *d, const char *k)
{
	assert_int_equal(rl_dict_get(d, k, strlen(k), NOW, NULL), -ENOENT);
}

static void test_dict_new_walk(void **state)
{
	int failures = 0;

	(void)state;
	for (unsigned long n = 1; n <= MAX_WALK; n++) {
		rl_dict *d;
		int done;

		fail_nth(n, 0);
		d = rl_dict_new(0, 4);
		done = !fired();
		if (!d) {
			assert_int_equal(errno, ENOMEM);
			failures++;
			continue;
		}
		assert_true(done);
		assert_int_equal(rl_dict_set(d, "k", 1, "v", 1, 0, 0, NOW, NULL), 0);
		rl_dict_free(d);
		break;
	}
	assert_int_equal(failures, 5);   /* the dict, then each stripe's table */
}

/* Each write kind over an absent key and over a present one, with each of
 * its allocations failing in turn. */
enum write_kind { W_SET, W_APPEND, W_PREPEND, W_SETRANGE, W_INCR, W_INCR_U64 };

static int do_write(rl_dict *d, enum write_kind w, const char *k)
{
	size_t kl = strlen(k), nl;
	int64_t r;
	uint64_t u;
	static const char grow[] = "0123456789abcdefghijklmnopqrstuvwxyz"
				   "0123456789abcdefghijklmnopqrstuvwxyz";

	switch (w) {
	case W_SET:
		return rl_dict_set(d, k, kl, grow, sizeof(grow) - 1, 0, 0, NOW, NULL);
	case W_APPEND:
		return rl_dict_append(d, k, kl, grow, sizeof(grow) - 1, 0, 1, NOW, &nl);
	case W_PREPEND:
		return rl_dict_append(d, k, kl, grow, 3, 1, 1, NOW, &nl);
	case W_SETRANGE:
		return rl_dict_setrange(d, k, kl, 200, "xyz", 3, NOW, &nl);
	case W_INCR:
		return rl_dict_incr(d, k, kl, 99999999999LL, NOW, &r);
	default:
		return rl_dict_incr_u64(d, k, kl, 99999999999ULL, 0, NOW, &u);
	}
}

static void test_dict_write_walk(void **state)
{
	(void)state;
	for (int w = W_SET; w <= W_INCR_U64; w++) {
		/* memcached incr of an absent key is -ENOENT, nothing to fail. */
		for (int present = w == W_INCR_U64; present < 2; present++) {
			int failures = 0, done = 0;

			for (unsigned long n = 1; n <= MAX_WALK && !done; n++) {
				rl_dict *d = rl_dict_new(0, 4);
				struct dict_view before;
				rl_blob *old = NULL;
				int ret;

				assert_non_null(d);
				/* Neighbours that must not change. */
				assert_int_equal(rl_dict_set(d, "a", 1, "1", 1, 0, 0, NOW, NULL), 0);
				assert_int_equal(rl_dict_set(d, "b", 1, "22", 2, 0, 0, NOW, NULL), 0);
				if (present)
					assert_int_equal(rl_dict_set(d, "k", 1, "7", 1, 0, 0, NOW, NULL), 0);
				if (present)
					assert_int_equal(rl_dict_get(d, "k", 1, NOW, &old), 0);
				before = view(d);
				fail_nth(n, 0);
				ret = do_write(d, (enum write_kind)w, "k");
				done = !fired();
				if (ret) {
					struct dict_view after = view(d);

					assert_int_equal(ret, -ENOMEM);
					failures++;
					assert_int_equal(after.keys, before.keys);
					assert_int_equal(after.bytes, before.bytes);
					if (present)
						assert_value(d, "k", "7", 1);
					else
						assert_absent(d, "k");
				} else {
					assert_int_equal(rl_dict_exists(d, "k", 1, NOW), 1);
				}
				assert_value(d, "a", "1", 1);
				assert_value(d, "b", "22", 2);
				/* A reader's reference to the old value stays whole. */
				if (old) {
					assert_int_equal(old->len, 1);
					assert_int_equal(old->data[0], '7');
					rl_blob_unref(old);
				}
				/* The same write succeeds once memory is back. */
				if (ret)
					assert_int_equal(do_write(d, (enum write_kind)w, "k"), 0);
				rl_dict_free(d);
			}
			assert_true(done);
			assert_true(failures >= 1);
		}
	}
}

/* Memory that stays short while a dictionary fills: table growth fails and
 * chains get longer; entry and value allocations fail with -ENOMEM; every
 * key stored before keeps its value and the accounting stays exact. */
static void test_dict_sticky_shortage(void **state)
{
	rl_dict *d = rl_dict_new(0, 1);
	char k[32], v[32];
	int stored = 0, refused = 0;
	struct dict_view before, after;

	(void)state;
	assert_non_null(d);
	for (int i = 0; i < 3000; i++) {
		int ret;

		snprintf(k, sizeof(k), "key:%d", i);
		snprintf(v, sizeof(v), "val:%d", i);
		if (i == 1500) {
			before = view(d);
			fail_nth(1, 1);
		}
		ret = rl_dict_set(d, k, strlen(k), v, strlen(v), 0, 0, NOW, NULL);
		if (ret) {
			assert_int_equal(ret, -ENOMEM);
			refused++;
		} else {
			stored++;
		}
	}
	assert_true(fired());
	after = view(d);
	assert_int_equal(stored, 1500);
	assert_int_equal(refused, 1500);
	assert_int_equal(after.keys, before.keys);
	assert_int_equal(after.bytes, before.bytes);
	for (int i = 0; i < 3000; i += 7) {
		snprintf(k, sizeof(k), "key:%d", i);
		snprintf(v, sizeof(v), "val:%d", i);
		if (i < 1500)
			assert_value(d, k, v, strlen(v));
		else
			assert_absent(d, k);
	}
	/* Deletes need no memory and work during the shortage too. */
	fail_nth(1, 1);
	assert_int_equal(rl_dict_del(d, "key:3", 5, NOW), 1);
	assert_false(fired());
	assert_int_equal(rl_dict_count(d, NOW), 1499);
	rl_dict_free(d);
}

static void count_key(void *ud, const uint8_t *key, size_t klen)
{
	(void)key;
	(void)klen;
	(*(uint64_t *)ud)++;
}

/* FLUSHALL when a fresh table cannot be had clears the old one in place;
 * a scan whose key buffer cannot grow reports what fits and goes on. */
static void test_dict_flush_and_scan_short(void **state)
{
	rl_dict *d = rl_dict_new(0, 2);
	char k[64];
	uint8_t buf[64 * 1024];
	uint64_t cursor = 0, seen = 0;
	size_t used;
	int r;

	(void)state;
	assert_non_null(d);
	/* Keys long enough that a stripe's pass 4 KiB. */
	for (int i = 0; i < 500; i++) {
		snprintf(k, sizeof(k), "k%d-long-enough-to-need-memory", i);
		assert_int_equal(rl_dict_set(d, k, strlen(k), "v", 1, 0, 0, NOW, NULL), 0);
	}
	/* The callback scan copies keys into a buffer it grows: short of
	 * memory it reports fewer keys per bucket visit, never none. */
	fail_nth(1, 1);
	do {
		cursor = rl_dict_scan(d, cursor, 1000, NOW, count_key, &seen);
	} while (cursor);
	assert_true(fired());
	assert_true(seen >= 500);
	seen = 0;
	do {
		r = rl_dict_scan_buf(d, &cursor, 16, NOW, buf, sizeof(buf), &used);
		assert_true(r >= 0);
		seen += (uint64_t)r;
	} while (cursor);
	assert_true(seen >= 500);
	fail_nth(1, 1);
	rl_dict_flush(d);
	assert_true(fired());
	assert_int_equal(rl_dict_count(d, NOW), 0);
	assert_int_equal(view(d).bytes, 0);
	assert_absent(d, "k1-long-enough-to-need-memory");
	assert_int_equal(rl_dict_set(d, "k1", 2, "w", 1, 0, 0, NOW, NULL), 0);
	assert_value(d, "k1", "w", 1);
	rl_dict_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chunkpool_init_fails_cleanly),
		cmocka_unit_test(test_sendq_push_walk),
		cmocka_unit_test(test_sendq_detach_walk),
		cmocka_unit_test(test_rxbuf_walk),
		cmocka_unit_test(test_rxhold_walk),
		cmocka_unit_test(test_dict_new_walk),
		cmocka_unit_test(test_dict_write_walk),
		cmocka_unit_test(test_dict_sticky_shortage),
		cmocka_unit_test(test_dict_flush_and_scan_short),
	};

	return cmocka_run_group_tests_name("faults", tests, NULL, NULL);
}
