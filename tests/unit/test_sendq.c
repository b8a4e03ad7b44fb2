/* test_sendq.c: unit tests for the send queue of copied chunks and leased ring ranges (core/rl_sendq.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <unistd.h>

#include "rl_bufring.h"
#include "rl_sendq.h"

#include "sendq_test.h"

static void test_copy_coalesces(void **state)
{
	struct fixture *f = *state;
	uint8_t want[16384];
	size_t n = 0;
	const char *words[] = { "hello", ", ", "world", "", "!\n" };

	for (size_t i = 0; i < 5; i++) {
		size_t l = strlen(words[i]);

		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, words[i], l), 0);
		memcpy(want + n, words[i], l);
		n += l;
	}
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].cap, RL_CHUNK_SIZE);
	assert_int_equal(f->q.segs[0].len, 14);
	assert_int_equal(f->q.segs[0].bid, -1);
	assert_int_equal(f->q.bytes, 14);
	assert_queue(&f->q, want, n);

	/* Fill the chunk to the byte, then one more byte: a second chunk. */
	pattern(want + n, RL_CHUNK_SIZE - n, 1);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want + n,
					    RL_CHUNK_SIZE - n), 0);
	n = RL_CHUNK_SIZE;
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].len, RL_CHUNK_SIZE);
	want[n] = 'Z';
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "Z", 1), 0);
	n++;
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->q.segs[1].len, 1);
	assert_int_equal(f->q.segs[1].cap, RL_CHUNK_SIZE);
	assert_queue(&f->q, want, n);

	/* A string crossing the chunk end: split, the rest in a new chunk. */
	pattern(want + n, 4100, 2);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want + n, 4100), 0);
	n += 4100;
	assert_int_equal(f->q.count, 3);
	assert_int_equal(f->q.segs[1].len, RL_CHUNK_SIZE);
	assert_int_equal(f->q.segs[2].len, 4100 - (RL_CHUNK_SIZE - 1));
	assert_queue(&f->q, want, n);
}

static void test_big_string_own_segment(void **state)
{
	struct fixture *f = *state;
	static uint8_t want[30000];

	pattern(want, sizeof(want), 3);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want, 10000), 0);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].len, 10000);
	assert_int_equal(f->q.segs[0].cap, 10000);
	assert_int_equal(f->q.segs[0].bid, -1);
	/* Full: the next string starts a normal chunk. */
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want + 10000, 7), 0);
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->q.segs[1].len, 7);
	assert_int_equal(f->q.segs[1].cap, RL_CHUNK_SIZE);
	assert_queue(&f->q, want, 10007);

	/* RL_CHUNK_SIZE + 1 on an empty queue: a piece of its own size. */
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want,
					    RL_CHUNK_SIZE + 1), 0);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].cap, RL_CHUNK_SIZE + 1);
	assert_queue(&f->q, want, RL_CHUNK_SIZE + 1);

	/* Exactly RL_CHUNK_SIZE: a pool chunk. */
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want,
					    RL_CHUNK_SIZE), 0);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].cap, RL_CHUNK_SIZE);

	/* Zero bytes: nothing queued. */
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, want, 0), 0);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
}

static void test_pool_reuses_chunks(void **state)
{
	struct fixture *f = *state;
	uint8_t *first;

	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "abc", 3), 0);
	first = f->q.segs[0].base;
	rl_sendq_advance(&f->q, &f->pool, &f->br, 3);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->pool.count, 1);
	assert_ptr_equal(f->pool.free[0], first);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "de", 2), 0);
	assert_ptr_equal(f->q.segs[0].base, first);
	assert_int_equal(f->pool.count, 0);
	assert_queue(&f->q, (const uint8_t *)"de", 2);

	/* Big pieces are not pooled. */
	static uint8_t big[5000];
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, big, 4094), 0);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, big, 5000), 0);
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->q.segs[1].cap, 5000);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 2 + 4094 + 5000);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->pool.count, 1);

	/* The pool keeps at most max chunks. */
	for (int i = 0; i < 6; i++)
		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, big,
						    RL_CHUNK_SIZE), 0);
	assert_int_equal(f->pool.count, 0);
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(f->pool.count, 4);
}

static void test_push_ref_leases(void **state)
{
	struct fixture *f = *state;
	uint8_t *b2 = buf(f, 2), *b3 = buf(f, 3);

	recv_into(f, 2);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b2, 100, 2), 0);
	assert_int_equal(f->br.leases[2], 2);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].bid, 2);
	assert_int_equal(f->q.segs[0].cap, 0);
	assert_ptr_equal(f->q.segs[0].base, b2);
	assert_int_equal(f->q.bytes, 100);

	/* Contiguous: the same segment grows, no new lease. */
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b2 + 100, 50, 2), 0);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->q.segs[0].len, 150);
	assert_int_equal(f->br.leases[2], 2);
	assert_int_equal(f->q.bytes, 150);

	/* A gap: a new segment and lease. */
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b2 + 200, 10, 2), 0);
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->br.leases[2], 3);

	/* Another buffer, adjacent in memory to the end of b2: not merged. */
	recv_into(f, 3);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b2 + BUFSZ - 6, 6, 2), 0);
	assert_int_equal(f->br.leases[2], 4);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b3, 20, 3), 0);
	assert_int_equal(f->q.count, 4);
	assert_int_equal(f->br.leases[3], 2);

	/* Zero bytes: nothing, no lease. */
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b3 + 20, 0, 3), 0);
	assert_int_equal(f->q.count, 4);
	assert_int_equal(f->br.leases[3], 2);

	/* A buffer nobody leases cannot be referenced. */
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 5), 10, 5),
			 -EINVAL);
	assert_int_equal(f->q.count, 4);
	assert_int_equal(f->br.leases[5], 0);
	assert_int_equal(f->q.bytes, 150 + 10 + 6 + 20);

	/* A copy after a ref is its own chunk; a ref after a copy too, even
	 * when contiguous with an earlier range. */
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "xy", 2), 0);
	assert_int_equal(f->q.count, 5);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b3 + 20, 5, 3), 0);
	assert_int_equal(f->q.count, 6);
	assert_int_equal(f->br.leases[3], 3);
	/* And a copy is never appended into a ref segment. */
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "z", 1), 0);
	assert_int_equal(f->q.count, 7);
	assert_int_equal(f->q.bytes, 150 + 10 + 6 + 20 + 2 + 5 + 1);

	/* Order and bytes. */
	struct iovec iov[16];
	size_t bytes;
	int k = rl_sendq_iov(&f->q, iov, 16, &bytes);

	assert_int_equal(k, 7);
	assert_int_equal(bytes, f->q.bytes);
	assert_ptr_equal(iov[0].iov_base, b2);
	assert_int_equal(iov[0].iov_len, 150);
	assert_ptr_equal(iov[1].iov_base, b2 + 200);
	assert_int_equal(iov[1].iov_len, 10);
	assert_ptr_equal(iov[2].iov_base, b2 + BUFSZ - 6);
	assert_int_equal(iov[2].iov_len, 6);
	assert_ptr_equal(iov[3].iov_base, b3);
	assert_int_equal(iov[3].iov_len, 20);
	assert_memory_equal(iov[4].iov_base, "xy", 2);
	assert_ptr_equal(iov[5].iov_base, b3 + 20);
	assert_int_equal(iov[5].iov_len, 5);
	assert_memory_equal(iov[6].iov_base, "z", 1);

	/* Fewer pieces than segments. */
	k = rl_sendq_iov(&f->q, iov, 3, &bytes);
	assert_int_equal(k, 3);
	assert_int_equal(bytes, 166);
	k = rl_sendq_iov(&f->q, iov, 0, &bytes);
	assert_int_equal(k, 0);
	assert_int_equal(bytes, 0);

	/* The handler's leases end; the queue's remain. */
	assert_int_equal(rl_bufring_unref(&f->br, 2), 0);
	assert_int_equal(rl_bufring_unref(&f->br, 3), 0);
	assert_int_equal(f->br.leases[2], 3);
	assert_int_equal(f->br.leases[3], 2);
	assert_true(rl_sendq_has_refs(&f->q));
}

static void test_advance_partial(void **state)
{
	struct fixture *f = *state;
	uint8_t want[1024];
	uint8_t copy[300];
	size_t n = 0;
	uint16_t tail = f->br.br->tail;

	/* ref 200 of bid 1, copy 300, ref 50 of bid 2; handler leases end. */
	recv_into(f, 1);
	recv_into(f, 2);
	pattern(copy, sizeof(copy), 4);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 1) + 10, 200, 1), 0);
	memcpy(want + n, buf(f, 1) + 10, 200);
	n += 200;
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, copy, 300), 0);
	memcpy(want + n, copy, 300);
	n += 300;
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 2), 50, 2), 0);
	memcpy(want + n, buf(f, 2), 50);
	n += 50;
	assert_int_equal(rl_bufring_unref(&f->br, 1), 0);
	assert_int_equal(rl_bufring_unref(&f->br, 2), 0);
	assert_int_equal(f->br.leases[1], 1);
	assert_int_equal(f->br.leases[2], 1);
	assert_queue(&f->q, want, 550);

	/* Inside the first segment. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 150);
	assert_int_equal(f->q.count, 3);
	assert_int_equal(f->br.leases[1], 1);
	assert_int_equal(f->br.staged, 0);
	assert_queue(&f->q, want + 150, 400);

	/* Exactly its end: the lease ends, bid 1 is staged at the tail. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 50);
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->br.leases[1], 0);
	assert_int_equal(f->br.staged, 1);
	assert_int_equal(f->br.br->bufs[tail & (NBUFS - 1)].bid, 1);
	assert_int_equal(f->br.leases[2], 1);
	assert_queue(&f->q, want + 200, 350);

	/* Zero bytes: nothing moves. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 0);
	assert_int_equal(f->q.count, 2);
	assert_queue(&f->q, want + 200, 350);

	/* Across a boundary: the copy done, 1 byte into the last ref. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 299);
	assert_int_equal(f->q.count, 2);
	assert_queue(&f->q, want + 499, 51);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 2);
	assert_int_equal(f->q.count, 1);
	assert_int_equal(f->pool.count, 1);        /* the chunk went back */
	assert_int_equal(f->br.leases[2], 1);      /* one byte still unsent */
	assert_queue(&f->q, want + 501, 49);

	rl_sendq_advance(&f->q, &f->pool, &f->br, 49);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	assert_int_equal(f->br.leases[2], 0);
	assert_int_equal(f->br.staged, 2);
	assert_int_equal(f->br.br->bufs[(tail + 1) & (NBUFS - 1)].bid, 2);
	assert_int_equal(f->br.leased, 0);
	assert_false(rl_sendq_has_refs(&f->q));
	assert_ptr_equal(f->q.segs, f->q.inline_segs);
	assert_int_equal(rl_bufring_publish(&f->br), 2);
}

static void test_advance_all_at_once(void **state)
{
	struct fixture *f = *state;

	recv_into(f, 4);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "head", 4), 0);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 4), 1000, 4), 0);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "tail", 4), 0);
	assert_int_equal(f->br.leases[4], 2);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 1008);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	/* The handler still holds its lease: not staged yet. */
	assert_int_equal(f->br.leases[4], 1);
	assert_int_equal(f->br.staged, 0);
	assert_int_equal(rl_bufring_unref(&f->br, 4), 1);
	assert_int_equal(f->br.staged, 1);
	/* "tail" followed a ring range: it took a small chunk. */
	assert_int_equal(f->pool.count, 1);
	assert_int_equal(f->pool.count_small, 1);
}

/* A reply's framing between zero-copy values (a pipeline of GETs) takes
 * small chunks, not 4 KiB apiece; a copy too large for one, or a run of
 * copies that fills one, goes on in ordinary chunks. */
static void test_small_chunks_between_refs(void **state)
{
	struct fixture *f = *state;
	uint8_t want[8192], big[600];
	size_t n = 0;

	recv_into(f, 1);
	pattern(big, sizeof(big), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "$100\r\n", 6), 0);
		memcpy(want + n, "$100\r\n", 6);
		n += 6;
		assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 1) + i * 200,
						   100, 1), 0);
		memcpy(want + n, buf(f, 1) + i * 200, 100);
		n += 100;
		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "\r\n", 2), 0);
		memcpy(want + n, "\r\n", 2);
		n += 2;
	}
	assert_queue(&f->q, want, n);
	/* The first copy opened the queue: an ordinary chunk; the ones after
	 * a range: small. */
	assert_int_equal(f->q.segs[0].cap, RL_CHUNK_SIZE);
	assert_int_equal(f->q.segs[(f->q.head + 2) & (f->q.cap - 1)].cap,
			 RL_CHUNK_SMALL);
	/* Filling the small chunk spills into an ordinary one. */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, big, 100), 0);
		memcpy(want + n, big, 100);
		n += 100;
	}
	assert_queue(&f->q, want, n);
	assert_int_equal(f->q.segs[(f->q.head + f->q.count - 1) & (f->q.cap - 1)].cap,
			 RL_CHUNK_SIZE);
	/* A copy over half a small chunk after a range: ordinary. */
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 1) + 1000, 10, 1), 0);
	memcpy(want + n, buf(f, 1) + 1000, 10);
	n += 10;
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, big, sizeof(big)), 0);
	memcpy(want + n, big, sizeof(big));
	n += sizeof(big);
	assert_queue(&f->q, want, n);
	assert_int_equal(f->q.segs[(f->q.head + f->q.count - 1) & (f->q.cap - 1)].cap,
			 RL_CHUNK_SIZE);
	rl_sendq_advance(&f->q, &f->pool, &f->br, n);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->pool.count_small, 3);
	assert_int_equal(rl_bufring_unref(&f->br, 1), 1);
}

static void test_detach(void **state)
{
	struct fixture *f = *state;
	uint8_t want[1024];
	size_t n = 0;
	uint8_t *b1 = buf(f, 1), *b2 = buf(f, 2);

	recv_into(f, 1);
	recv_into(f, 2);
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b1, 200, 1), 0);
	memcpy(want + n, b1, 200);
	n += 200;
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "0123456789", 10), 0);
	memcpy(want + n, "0123456789", 10);
	n += 10;
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, b2 + 7, 30, 2), 0);
	memcpy(want + n, b2 + 7, 30);
	n += 30;
	/* The handler is done with bid 1 but still holds bid 2. */
	assert_int_equal(rl_bufring_unref(&f->br, 1), 0);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 50);
	assert_queue(&f->q, want + 50, n - 50);

	assert_int_equal(rl_sendq_detach(&f->q, &f->pool, &f->br), 0);
	assert_false(rl_sendq_has_refs(&f->q));
	assert_int_equal(f->q.count, 3);
	assert_int_equal(f->q.bytes, n - 50);
	/* Leases ended: bid 1 staged, bid 2 back to the handler's lease. */
	assert_int_equal(f->br.leases[1], 0);
	assert_int_equal(f->br.staged, 1);
	assert_int_equal(f->br.leases[2], 1);
	for (uint32_t i = 0; i < f->q.count; i++) {
		struct rl_sendseg *s = &f->q.segs[(f->q.head + i) & (f->q.cap - 1)];

		assert_int_equal(s->bid, -1);
		assert_true(rl_bufring_bid_of(&f->br, s->base) < 0);
	}
	/* The buffers may now be reused: the queue keeps its bytes. */
	memset(b1, 0xAA, BUFSZ);
	memset(b2, 0xBB, BUFSZ);
	assert_queue(&f->q, want + 50, n - 50);

	/* A copy made by detach is not appended to by later pushes. */
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "!", 1), 0);
	want[n++] = '!';
	assert_int_equal(f->q.count, 4);
	assert_queue(&f->q, want + 50, n - 50);

	/* Detach of a queue without refs changes nothing. */
	assert_int_equal(rl_sendq_detach(&f->q, &f->pool, &f->br), 0);
	assert_queue(&f->q, want + 50, n - 50);

	/* Sending the rest frees the copies. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 100);
	assert_queue(&f->q, want + 150, n - 150);
	rl_sendq_advance(&f->q, &f->pool, &f->br, n - 150);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	assert_int_equal(rl_bufring_unref(&f->br, 2), 1);
}

static void test_clear(void **state)
{
	struct fixture *f = *state;

	recv_into(f, 0);
	recv_into(f, 6);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(rl_sendq_push_ref(&f->q, &f->br,
						   buf(f, 0) + i * 100, 50, 0), 0);
		assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "copy", 4), 0);
	}
	assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, buf(f, 6), 9, 6), 0);
	assert_int_equal(f->q.count, 13);
	assert_int_equal(f->br.leases[0], 7);
	assert_int_equal(rl_bufring_unref(&f->br, 0), 0);
	assert_int_equal(rl_bufring_unref(&f->br, 6), 0);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 20);

	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	assert_int_equal(f->q.head, 0);
	assert_ptr_equal(f->q.segs, f->q.inline_segs);
	assert_int_equal(f->q.cap, RL_SENDQ_INLINE);
	assert_int_equal(f->br.leases[0], 0);
	assert_int_equal(f->br.leases[6], 0);
	assert_int_equal(f->br.leased, 0);
	assert_int_equal(f->br.staged, 2);
	/* Each copy followed a ring range: small chunks, up to the max. */
	assert_int_equal(f->pool.count, 0);
	assert_int_equal(f->pool.count_small, 4);
	assert_false(rl_sendq_has_refs(&f->q));

	/* Usable again. */
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "again", 5), 0);
	assert_queue(&f->q, (const uint8_t *)"again", 5);
	/* Clearing an empty queue is fine. */
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(f->q.bytes, 0);
}


/* Past the inline segments with the ring's head in the middle, so growing
 * has to unwrap it; then back to inline once empty. */
static void test_grow_and_shrink(void **state)
{
	struct fixture *f = *state;
	static uint8_t want[4096];
	size_t sent = 0, n = 0;

	recv_into(f, 7);
	/* Refs to every other 10 bytes: each its own segment. */
#define PUSH() do { \
		assert_int_equal(rl_sendq_push_ref(&f->q, &f->br, \
			buf(f, 7) + n * 2, 10, 7), 0); \
		memcpy(want + n, buf(f, 7) + n * 2, 10); \
		n += 10; \
	} while (0)
	for (int i = 0; i < 4; i++)
		PUSH();
	assert_ptr_equal(f->q.segs, f->q.inline_segs);
	assert_int_equal(f->q.cap, 4);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 25);
	sent = 25;
	assert_int_equal(f->q.count, 2);
	assert_int_equal(f->q.head, 2);
	PUSH();
	PUSH();                          /* wraps inside the inline array */
	assert_int_equal(f->q.count, 4);
	assert_ptr_equal(f->q.segs, f->q.inline_segs);
	assert_queue(&f->q, want + sent, n - sent);
	PUSH();                          /* grows to 8 */
	assert_int_equal(f->q.count, 5);
	assert_int_equal(f->q.cap, 8);
	assert_ptr_not_equal(f->q.segs, f->q.inline_segs);
	assert_int_equal(f->q.head, 0);
	assert_queue(&f->q, want + sent, n - sent);
	for (int i = 0; i < 12; i++)
		PUSH();                  /* grows to 32 */
	assert_int_equal(f->q.count, 17);
	assert_int_equal(f->q.cap, 32);
	assert_int_equal(f->br.leases[7], 1 + 4 + 2 + 1 + 12 - 2);
	assert_queue(&f->q, want + sent, n - sent);

	/* Advance through most of it: stays on the heap while non-empty. */
	rl_sendq_advance(&f->q, &f->pool, &f->br, n - sent - 3);
	sent = n - 3;
	assert_int_equal(f->q.count, 1);
	assert_ptr_not_equal(f->q.segs, f->q.inline_segs);
	assert_queue(&f->q, want + sent, 3);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 3);
	assert_int_equal(f->q.count, 0);
	assert_ptr_equal(f->q.segs, f->q.inline_segs);
	assert_int_equal(f->q.cap, RL_SENDQ_INLINE);
	assert_int_equal(f->q.head, 0);
	assert_int_equal(f->br.leases[7], 1);
	assert_int_equal(rl_bufring_unref(&f->br, 7), 1);
#undef PUSH
}

/* Random pushes, sends, detaches and clears against a byte model: the
 * queue always holds exactly the unsent bytes, in order, and each ring
 * buffer carries exactly one lease per segment naming it. */
static void test_property_model(void **state)
{
	struct fixture *f = *state;
	size_t model_cap = 1 << 20, mlen = 0;
	uint8_t *model = malloc(model_cap), *src = malloc(20000);
	uint32_t refs[NBUFS];

	assert_non_null(model);
	assert_non_null(src);
	for (uint32_t seed = 1; seed <= 30; seed++) {
		rng_state = seed;
		for (int step = 0; step < 400; step++) {
			uint32_t op = rnd() % 100;

			if (op < 35) {                  /* copy */
				size_t len = rnd() % 3 ? rnd() % 300
						       : rnd() % 12000;

				pattern(src, len, (uint8_t)rnd());
				if (mlen + len > model_cap)
					continue;
				assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool,
								    src, len), 0);
				memcpy(model + mlen, src, len);
				mlen += len;
			} else if (op < 60) {           /* an arrival, sliced */
				uint32_t bid = rnd() % NBUFS, off = 0;

				if (f->br.leases[bid])
					continue;       /* not in the ring */
				recv_into(f, bid);
				/* The kernel wrote new bytes into it. */
				pattern(buf(f, bid), BUFSZ, (uint8_t)rnd());
				for (int s = rnd() % 4; s >= 0; s--) {
					uint32_t len = rnd() % 500;

					/* Sometimes skip: a gap, a new segment. */
					if (rnd() % 2)
						off += rnd() % 20;
					if (off + len > BUFSZ)
						break;
					assert_int_equal(rl_sendq_push_ref(&f->q,
						&f->br, buf(f, bid) + off, len,
						(int32_t)bid), 0);
					memcpy(model + mlen, buf(f, bid) + off, len);
					mlen += len;
					off += len;
				}
				rl_bufring_unref(&f->br, bid);
			} else if (op < 92) {           /* a send completes */
				size_t n = mlen ? rnd() % (mlen + 1) : 0;

				if (rnd() % 4 == 0)
					n = mlen;
				rl_sendq_advance(&f->q, &f->pool, &f->br, n);
				memmove(model, model + n, mlen - n);
				mlen -= n;
			} else if (op < 97) {           /* slow reader */
				assert_int_equal(rl_sendq_detach(&f->q, &f->pool,
								 &f->br), 0);
				assert_false(rl_sendq_has_refs(&f->q));
			} else {                        /* connection gone */
				rl_sendq_clear(&f->q, &f->pool, &f->br);
				mlen = 0;
			}
			if (rnd() % 8 == 0)
				rl_bufring_publish(&f->br);

			assert_queue(&f->q, model, mlen);
			count_refs(&f->q, refs);
			for (uint32_t b = 0; b < NBUFS; b++)
				if (f->br.leases[b] != refs[b])
					fail_msg("seed %u step %d: bid %u has %u "
						 "leases, %u segments", seed, step,
						 b, f->br.leases[b], refs[b]);
			assert_int_equal(rl_sendq_has_refs(&f->q),
					 f->br.leased > 0);
			if (f->q.count == 0)
				assert_ptr_equal(f->q.segs, f->q.inline_segs);
			assert_true(f->q.count <= f->q.cap);
			assert_true(f->pool.count <= f->pool.max);
		}
		rl_sendq_clear(&f->q, &f->pool, &f->br);
		mlen = 0;
		assert_int_equal(f->br.leased, 0);
		rl_bufring_publish(&f->br);
	}
	free(model);
	free(src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copy_coalesces, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_string_own_segment, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pool_reuses_chunks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_push_ref_leases, setup, teardown),
		cmocka_unit_test_setup_teardown(test_advance_partial, setup, teardown),
		cmocka_unit_test_setup_teardown(test_advance_all_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_small_chunks_between_refs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_detach, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clear, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grow_and_shrink, setup, teardown),
		cmocka_unit_test_setup_teardown(test_property_model, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
