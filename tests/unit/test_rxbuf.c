/* test_rxbuf.c: unit tests for the receive residue and how arrivals are offered (core/rl_rxbuf.c). */
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

static void test_direct_full_consumption(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t buf[100];
	uint64_t copied = 0;

	fill(buf, sizeof(buf), 1);
	assert_int_equal(rl_rxbuf_begin(&rx, buf, 100, LIMIT, &o, &copied), 0);
	assert_ptr_equal(o.ptr, buf);
	assert_int_equal(o.len, 100);
	assert_int_equal(o.in_buf, 1);
	assert_int_equal(rx.phase, RL_RX_DIRECT);
	assert_int_equal(rl_rxbuf_consumed(&rx, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(copied, 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	assert_int_equal(rx.phase, RL_RX_IDLE);

	/* Consuming more than offered is the same as all of it. */
	assert_int_equal(rl_rxbuf_begin(&rx, buf, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1000, LIMIT, &o, &copied), 0);
	assert_int_equal(copied, 0);
	assert_null(rx.data);

	/* An empty arrival. */
	assert_int_equal(rl_rxbuf_begin(&rx, buf, 0, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 0);
	assert_int_equal(o.in_buf, 1);
	assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 0);
	assert_int_equal(copied, 0);
	assert_null(rx.data);
	rl_rxbuf_free(&rx);
}

static void test_partial_keeps_tail(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t buf[100];
	uint64_t copied = 0;

	fill(buf, sizeof(buf), 2);
	assert_int_equal(rl_rxbuf_begin(&rx, buf, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 60, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 40);
	assert_non_null(rx.data);
	assert_memory_equal(rx.data, buf + 60, 40);
	assert_int_equal(copied, 40);
	assert_int_equal(rx.phase, RL_RX_IDLE);
	rl_rxbuf_free(&rx);
	assert_null(rx.data);
	assert_int_equal(rx.len, 0);

	/* Nothing consumed: the whole arrival is kept. */
	copied = 0;
	assert_int_equal(rl_rxbuf_begin(&rx, buf, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 100);
	assert_memory_equal(rx.data, buf, 100);
	assert_int_equal(copied, 100);
	rl_rxbuf_free(&rx);
}

static void test_residue_plus_prefix(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[1000], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 3);
	fill(b, sizeof(b), 99);

	/* Small residue: the prefix is the minimum. */
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(copied, 40);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(o.in_buf, 0);
	assert_ptr_equal(o.ptr, rx.data);
	assert_int_equal(o.len, 40 + RL_RXBUF_MIN_PREFIX);
	assert_memory_equal(o.ptr, a + 60, 40);
	assert_memory_equal(o.ptr + 40, b, RL_RXBUF_MIN_PREFIX);
	assert_int_equal(copied, 40 + RL_RXBUF_MIN_PREFIX);
	assert_int_equal(rx.phase, RL_RX_PREFIX);
	rl_rxbuf_free(&rx);

	/* Residue above half the minimum: twice the residue. */
	copied = 0;
	make_residue(&rx, a, 1000, 300, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 300 + 600);
	assert_memory_equal(o.ptr, a + 700, 300);
	assert_memory_equal(o.ptr + 300, b, 600);
	assert_int_equal(copied, 300 + 600);
	assert_int_equal(rx.phase, RL_RX_PREFIX);
	rl_rxbuf_free(&rx);

	/* Exactly half the minimum: 2 * 256 == 512. */
	copied = 0;
	make_residue(&rx, a, 1000, 256, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 256 + 512);
	rl_rxbuf_free(&rx);

	/* Residue 257: 514. */
	copied = 0;
	make_residue(&rx, a, 1000, 257, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 257 + 514);
	rl_rxbuf_free(&rx);

	/* Arrival shorter than the prefix: all of it, phase ALL. */
	copied = 0;
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 140);
	assert_int_equal(o.in_buf, 0);
	assert_memory_equal(o.ptr, a + 60, 40);
	assert_memory_equal(o.ptr + 40, b, 100);
	assert_int_equal(rx.phase, RL_RX_ALL);
	assert_int_equal(copied, 140);
	/* In ALL, what is not consumed stays, and the arrival is done. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 50, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 90);
	assert_memory_equal(rx.data, b + 10, 90);
	assert_int_equal(copied, 140);
	assert_int_equal(rx.phase, RL_RX_IDLE);
	rl_rxbuf_free(&rx);

	/* Arrival exactly the prefix length: ALL too. */
	copied = 0;
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 512, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 552);
	assert_int_equal(rx.phase, RL_RX_ALL);
	assert_int_equal(rl_rxbuf_consumed(&rx, 552, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	rl_rxbuf_free(&rx);
}

static void test_consume_past_residue_goes_in_place(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 4);
	fill(b, sizeof(b), 5);

	/* Consumed the residue and 10 bytes of the prefix. */
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 50, LIMIT, &o, &copied), 1);
	assert_int_equal(o.in_buf, 1);
	assert_ptr_equal(o.ptr, b + 10);
	assert_int_equal(o.len, 1990);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	assert_int_equal(rx.phase, RL_RX_DIRECT);
	assert_int_equal(copied, 40 + 512);
	/* The rest is handled in place: nothing more copied. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 1990, LIMIT, &o, &copied), 0);
	assert_int_equal(copied, 40 + 512);
	assert_null(rx.data);
	rl_rxbuf_free(&rx);

	/* Exactly the residue: the whole buffer in place. */
	copied = 0;
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 40, LIMIT, &o, &copied), 1);
	assert_ptr_equal(o.ptr, b);
	assert_int_equal(o.len, 2000);
	assert_int_equal(o.in_buf, 1);
	assert_null(rx.data);
	/* Then a partial consumption keeps the tail of the buffer. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 1500, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 500);
	assert_memory_equal(rx.data, b + 1500, 500);
	assert_int_equal(copied, 40 + 512 + 500);
	rl_rxbuf_free(&rx);

	/* All of the offer: in place from the end of the prefix. */
	copied = 0;
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 552, LIMIT, &o, &copied), 1);
	assert_ptr_equal(o.ptr, b + 512);
	assert_int_equal(o.len, 1488);
	assert_int_equal(o.in_buf, 1);
	assert_null(rx.data);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1488, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	rl_rxbuf_free(&rx);

	/* More than offered is clamped to the offer. */
	static const uint32_t over[] = { 553, 554, 5000, UINT32_MAX };
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
		uint32_t n = over[i];

		copied = 0;
		make_residue(&rx, a, 100, 40, &copied);
		assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o,
						&copied), 0);
		assert_int_equal(rl_rxbuf_consumed(&rx, n, LIMIT, &o, &copied),
				 1);
		assert_ptr_equal(o.ptr, b + 512);
		assert_int_equal(o.len, 1488);
		rl_rxbuf_free(&rx);
	}
}

static void test_consume_within_residue_offers_all(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 6);
	fill(b, sizeof(b), 7);
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	/* 30 of the 40 old bytes: the frame spans on, all of b is needed. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 30, LIMIT, &o, &copied), 1);
	assert_int_equal(o.in_buf, 0);
	assert_ptr_equal(o.ptr, rx.data);
	assert_int_equal(o.len, 10 + 2000);
	assert_memory_equal(o.ptr, a + 90, 10);
	assert_memory_equal(o.ptr + 10, b, 2000);
	assert_int_equal(copied, 40 + 2000);       /* each byte of b once */
	assert_int_equal(rx.phase, RL_RX_ALL);
	/* The handler takes 1000: the rest is the residue. */
	assert_int_equal(rl_rxbuf_consumed(&rx, 1000, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 1010);
	assert_memory_equal(rx.data, b + 990, 1010);
	assert_int_equal(copied, 40 + 2000);
	assert_int_equal(rx.phase, RL_RX_IDLE);
	rl_rxbuf_free(&rx);

	/* Nothing consumed at all: old residue + all of b. */
	copied = 0;
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, LIMIT, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 1);
	assert_int_equal(o.len, 2040);
	assert_memory_equal(o.ptr, a + 60, 40);
	assert_memory_equal(o.ptr + 40, b, 2000);
	assert_int_equal(rl_rxbuf_consumed(&rx, 0, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 2040);
	assert_int_equal(copied, 2040);
	/* The next arrival starts from that residue. */
	assert_int_equal(rl_rxbuf_begin(&rx, a, 100, LIMIT, &o, &copied), 0);
	assert_int_equal(o.len, 2140);
	assert_memory_equal(o.ptr + 2040, a, 100);
	assert_int_equal(rl_rxbuf_consumed(&rx, 2140, LIMIT, &o, &copied), 0);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	rl_rxbuf_free(&rx);
}

static void test_limit_at_begin(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 8);
	fill(b, sizeof(b), 9);
	make_residue(&rx, a, 100, 40, &copied);
	assert_int_equal(copied, 40);
	/* 40 + 512 > 100. */
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 100, &o, &copied),
			 -EMSGSIZE);
	assert_int_equal(rx.len, 40);
	assert_memory_equal(rx.data, a + 60, 40);
	assert_int_equal(copied, 40);
	/* Exactly at the limit is allowed. */
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 552, &o, &copied), 0);
	assert_int_equal(o.len, 552);
	assert_int_equal(copied, 552);
	rl_rxbuf_free(&rx);
}

/* Keeping a tail beyond the limit fails and keeps nothing. */
static void test_limit_on_keep_tail(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t b[2000];
	uint64_t copied = 0;

	fill(b, sizeof(b), 10);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 100, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1899, 100, &o, &copied),
			 -EMSGSIZE);
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);

	/* Exactly the limit fits. */
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 100, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1900, 100, &o, &copied), 0);
	assert_int_equal(rx.len, 100);
	assert_memory_equal(rx.data, b + 1900, 100);
	rl_rxbuf_free(&rx);
}

/* The copied counter counts bytes copied: a refused copy adds nothing
 * (rl_rxbuf_begin already behaves so, see test_limit_at_begin). */
static void test_limit_on_keep_tail_copies_nothing(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t b[2000];
	uint64_t copied = 0;

	fill(b, sizeof(b), 11);
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 100, &o, &copied), 0);
	assert_int_equal(rl_rxbuf_consumed(&rx, 1000, 100, &o, &copied),
			 -EMSGSIZE);
	assert_int_equal(rx.len, 0);
	assert_int_equal(copied, 0);
	rl_rxbuf_free(&rx);
}

static void test_limit_when_spanning_frame_needs_all(void **state)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint8_t a[100], b[2000];
	uint64_t copied = 0;

	fill(a, sizeof(a), 12);
	fill(b, sizeof(b), 13);
	make_residue(&rx, a, 100, 40, &copied);
	/* The prefix fits in 600; residue + all of b does not. */
	assert_int_equal(rl_rxbuf_begin(&rx, b, 2000, 600, &o, &copied), 0);
	assert_int_equal(o.len, 552);
	assert_int_equal(rl_rxbuf_consumed(&rx, 10, 600, &o, &copied),
			 -EMSGSIZE);
	assert_true(rx.len <= 600);
	assert_int_equal(copied, 552);
	rl_rxbuf_free(&rx);
	assert_null(rx.data);
	assert_int_equal(rx.len, 0);
	assert_int_equal(rx.cap, 0);
}

/* -- Property: framed stream through random buffers ----------------------- */

struct frames {
	uint8_t *stream;
	size_t len;
	size_t *off;         /* frame i: header at off[i] */
	uint32_t *plen;      /* payload length */
	size_t n;
	size_t seen;         /* frames the handler has taken */
	int ok;
};

static void make_stream(struct frames *f, size_t nframes, uint32_t small_max,
			uint32_t big_max, uint32_t big_pct)
{
	size_t cap = 0;

	memset(f, 0, sizeof(*f));
	f->off = malloc(nframes * sizeof(*f->off));
	f->plen = malloc(nframes * sizeof(*f->plen));
	assert_non_null(f->off);
	assert_non_null(f->plen);
	for (size_t i = 0; i < nframes; i++) {
		uint32_t n = rnd() % 100 < big_pct ? rnd() % (big_max + 1)
						   : rnd() % (small_max + 1);

		if (f->len + 2 + n > cap) {
			cap = (f->len + 2 + n) * 2;
			f->stream = realloc(f->stream, cap);
			assert_non_null(f->stream);
		}
		f->off[i] = f->len;
		f->plen[i] = n;
		f->stream[f->len++] = (uint8_t)(n >> 8);
		f->stream[f->len++] = (uint8_t)n;
		for (uint32_t j = 0; j < n; j++)
			f->stream[f->len++] = (uint8_t)rnd();
	}
	f->n = nframes;
	f->ok = 1;
}

static void free_stream(struct frames *f)
{
	free(f->stream);
	free(f->off);
	free(f->plen);
}

/* The handler: take whole frames at the front of the offer (at most max of
 * them), check each is the next frame of the stream, byte for byte.  Returns
 * bytes consumed. */
static uint32_t handle_max(struct frames *f, const struct rl_rx_offer *o,
			   uint32_t max)
{
	uint32_t pos = 0, taken = 0;

	while (o->len - pos >= 2 && taken < max) {
		uint32_t n = (uint32_t)o->ptr[pos] << 8 | o->ptr[pos + 1];

		if (o->len - pos - 2 < n)
			break;
		if (f->seen >= f->n || n != f->plen[f->seen] ||
		    memcmp(o->ptr + pos, f->stream + f->off[f->seen], 2 + n)) {
			f->ok = 0;
			return o->len;
		}
		f->seen++;
		taken++;
		pos += 2 + n;
	}
	return pos;
}

static uint32_t handle(struct frames *f, const struct rl_rx_offer *o)
{
	return handle_max(f, o, UINT32_MAX);
}

/* Feed the stream in buffers of [bmin, bmax] bytes.  Returns bytes copied. */
static uint64_t feed(struct frames *f, uint32_t bmin, uint32_t bmax)
{
	struct rl_rxbuf rx = { 0 };
	struct rl_rx_offer o;
	uint64_t copied = 0;
	size_t pos = 0;
	uint8_t *buf = malloc(bmax);

	assert_non_null(buf);
	while (pos < f->len) {
		uint32_t len = bmin + rnd() % (bmax - bmin + 1);
		int ret, offers = 0;

		if (len > f->len - pos)
			len = (uint32_t)(f->len - pos);
		/* A fresh copy in a reused buffer, as a ring would give it:
		 * stale pointers into the previous arrival would show. */
		memset(buf, 0xee, bmax);
		memcpy(buf, f->stream + pos, len);
		pos += len;
		ret = rl_rxbuf_begin(&rx, buf, len, LIMIT, &o, &copied);
		assert_int_equal(ret, 0);
		do {
			uint32_t n;

			if (o.in_buf) {
				assert_true(o.ptr >= buf);
				assert_true(o.ptr + o.len == buf + len);
			} else {
				assert_ptr_equal(o.ptr, rx.data);
				assert_int_equal(o.len, rx.len);
			}
			n = handle(f, &o);
			assert_true(f->ok);
			ret = rl_rxbuf_consumed(&rx, n, LIMIT, &o, &copied);
			assert_true(ret == 0 || ret == 1);
			assert_true(++offers <= 2);
		} while (ret == 1);
		assert_int_equal(rx.phase, RL_RX_IDLE);
		/* An empty residue holds no memory. */
		if (rx.len == 0)
			assert_null(rx.data);
	}
	/* The stream ends on a frame boundary: everything was taken. */
	assert_int_equal(rx.len, 0);
	assert_null(rx.data);
	assert_int_equal(f->seen, f->n);
	rl_rxbuf_free(&rx);
	free(buf);
	return copied;
}

static void test_property_random_cuts(void **state)
{
	for (uint32_t seed = 1; seed <= 40; seed++) {
		struct frames f;

		rng_state = seed;
		/* Mostly small frames, some spanning many buffers. */
		make_stream(&f, 400, 300, 20000, 10);
		/* Tiny buffers, medium buffers, mixed. */
		if (seed % 3 == 0)
			feed(&f, 1, 16);
		else if (seed % 3 == 1)
			feed(&f, 100, 3000);
		else
			feed(&f, 1, 9000);
		free_stream(&f);
	}
}

/* Frames small against the buffers: copying stays a small part of the
 * traffic, since only frames spanning two buffers are copied. */
static void test_property_copy_is_bounded(void **state)
{
	for (uint32_t seed = 100; seed < 110; seed++) {
		struct frames f;
		uint64_t copied;

		rng_state = seed;
		make_stream(&f, 20000, 200, 200, 0);
		copied = feed(&f, 4096, 16384);
		if (copied * 2 >= f.len)
			fail_msg("seed %u: copied %llu of %zu bytes", seed,
				 (unsigned long long)copied, f.len);
		/* Far below, in fact: at most a frame and a prefix per
		 * buffer boundary. */
		assert_true(copied * 10 < f.len);
		free_stream(&f);
	}
}

/* A handler that takes at most a few frames per offer, as one that pauses
 * with whole frames left: between arrivals its residue is offered again
 * (as on resume) until it takes nothing more.  Every frame arrives once,
 * in order, and a re-offer never copies. */
static void test_property_reoffer_between_arrivals(void **state)
{
	for (uint32_t seed = 200; seed < 230; seed++) {
		struct rl_rxbuf rx = { 0 };
		struct rl_rx_offer o;
		struct frames f;
		uint64_t copied = 0, before;
		uint8_t *buf = malloc(9000);
		size_t pos = 0;

		assert_non_null(buf);
		rng_state = seed;
		make_stream(&f, 300, 300, 5000, 10);
		while (pos < f.len) {
			uint32_t len = 1 + rnd() % 9000;
			int ret;

			if (len > f.len - pos)
				len = (uint32_t)(f.len - pos);
			memset(buf, 0xee, 9000);
			memcpy(buf, f.stream + pos, len);
			pos += len;
			assert_int_equal(rl_rxbuf_begin(&rx, buf, len, LIMIT,
							&o, &copied), 0);
			do {
				ret = rl_rxbuf_consumed(&rx,
					handle_max(&f, &o, rnd() % 3), LIMIT,
					&o, &copied);
				assert_true(f.ok);
				assert_true(ret == 0 || ret == 1);
			} while (ret == 1);
			/* The buffer is gone (the lease ended): scribble on
			 * it, then offer what is held until nothing moves. */
			memset(buf, 0xdd, 9000);
			while (rx.len) {
				uint32_t held = rx.len, n;

				before = copied;
				assert_int_equal(rl_rxbuf_reoffer(&rx, &o), 0);
				assert_int_equal(o.len, held);
				n = handle_max(&f, &o, 1 + rnd() % 2);
				assert_true(f.ok);
				assert_int_equal(rl_rxbuf_consumed(&rx, n, LIMIT,
								   &o, &copied), 0);
				assert_int_equal(copied, before);
				assert_int_equal(rx.len, held - n);
				assert_int_equal(rx.phase, RL_RX_IDLE);
				if (n == 0)
					break;
			}
		}
		/* Whatever whole frames are still held come out now. */
		while (rl_rxbuf_reoffer(&rx, &o) == 0) {
			uint32_t n = handle(&f, &o);

			assert_true(f.ok);
			assert_true(n > 0);
			assert_int_equal(rl_rxbuf_consumed(&rx, n, LIMIT, &o,
							   &copied), 0);
		}
		assert_int_equal(f.seen, f.n);
		assert_null(rx.data);
		rl_rxbuf_free(&rx);
		free_stream(&f);
		free(buf);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_direct_full_consumption),
		cmocka_unit_test(test_partial_keeps_tail),
		cmocka_unit_test(test_residue_plus_prefix),
		cmocka_unit_test(test_consume_past_residue_goes_in_place),
		cmocka_unit_test(test_consume_within_residue_offers_all),
		cmocka_unit_test(test_limit_at_begin),
		cmocka_unit_test(test_limit_on_keep_tail),
		cmocka_unit_test(test_limit_on_keep_tail_copies_nothing),
		cmocka_unit_test(test_limit_when_spanning_frame_needs_all),
		cmocka_unit_test(test_property_random_cuts),
		cmocka_unit_test(test_property_copy_is_bounded),
		cmocka_unit_test(test_property_reoffer_between_arrivals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
