/* fuzz_sendq.c: fuzzes core/rl_sendq.c (copies, ring leases, dictionary blobs, short sends, detach, clear) against a byte model of what must go out in order, and counts every lease and blob reference. */
#include <errno.h>

#include "fuzz_input.h"
#include "rl_bufring.h"
#include "rl_dict.h"
#include "rl_sendq.h"

#define NBUFS 8
#define BUFSZ 4096
#define NBLOBS 4
#define MODEL_MAX (1u << 20)    /* unsent bytes the model holds, at most */
#define SCRIBBLE 0xEE           /* what the "kernel" writes into free buffers */

struct fixture {
	struct rl_bufring br;
	struct rl_chunkpool pool;
	struct rl_sendq q;
	rl_blob *blobs[NBLOBS];         /* each with our own reference */
	uint8_t *model;                 /* queued and not yet sent, in order */
	size_t mlen;
	uint8_t src[3 * RL_CHUNK_SIZE];
	struct iovec iov[4096];
};

static void pattern(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed ^ (i * 31 + (i >> 7)));
}

static void model_add(struct fixture *f, const uint8_t *p, size_t n)
{
	memcpy(f->model + f->mlen, p, n);
	f->mlen += n;
}

static size_t pick_len(struct fuzz_in *in, size_t max)
{
	uint8_t kind = in_u8(in);
	size_t n = kind % 3 ? in_u8(in) : in_u16(in);

	return n % (max + 1);
}

static void push_copy(struct fuzz_in *in, struct fixture *f)
{
	size_t len = pick_len(in, sizeof(f->src));

	if (f->mlen + len > MODEL_MAX)
		return;
	pattern(f->src, len, in_u8(in));
	FUZZ_CHECK(rl_sendq_push_copy(&f->q, &f->pool, f->src, len) == 0,
		   "push_copy of %zu failed", len);
	model_add(f, f->src, len);
	/* The caller's string may change once pushed: the queue copied it. */
	memset(f->src, 0, len);
}

/* A receive into a free buffer, sliced into a few zero-copy sends, then
 * the handler's own lease ends. */
static void push_refs(struct fuzz_in *in, struct fixture *f)
{
	uint32_t bid = in_u8(in) % NBUFS, off = 0;
	uint8_t *buf = rl_bufring_addr(&f->br, bid);

	if (f->br.leases[bid])
		return;                 /* not in the ring */
	FUZZ_CHECK(rl_bufring_take(&f->br, bid) == 0, "take %u", bid);
	pattern(buf, BUFSZ, in_u8(in));         /* the kernel wrote it */
	for (int s = in_u8(in) % 5; s >= 0; s--) {
		uint32_t len = (uint32_t)pick_len(in, BUFSZ);

		off += in_u8(in) % 2 ? in_u8(in) % 32 : 0;  /* a gap */
		if (off + len > BUFSZ || f->mlen + len > MODEL_MAX)
			break;
		FUZZ_CHECK(rl_sendq_push_ref(&f->q, &f->br, buf + off, len,
					     (int32_t)bid) == 0,
			   "push_ref %u+%u of %u", off, len, bid);
		model_add(f, buf + off, len);
		off += len;
	}
	rl_bufring_unref(&f->br, bid);
}

static void push_blob(struct fuzz_in *in, struct fixture *f)
{
	rl_blob *b = f->blobs[in_u8(in) % NBLOBS];
	size_t off = in_u16(in) % (b->len + 1);
	size_t len = in_u16(in) % (b->len - off + 1);

	if (f->mlen + len > MODEL_MAX)
		return;
	FUZZ_CHECK(rl_sendq_push_blob(&f->q, b, off, len) == 0,
		   "push_blob %zu+%zu of %u", off, len, b->len);
	model_add(f, b->data + off, len);
	/* Past the end must be refused and change nothing. */
	FUZZ_CHECK(rl_sendq_push_blob(&f->q, b, b->len, 1) == -EINVAL,
		   "push_blob past the end accepted");
}

/* The kernel takes the first n bytes of what the iovec offers (a short
 * send when n is smaller), then the completion advances the queue. */
static void send_some(struct fuzz_in *in, struct fixture *f)
{
	int max = 1 + in_u8(in) % 8, k;
	size_t offered, n, pos = 0;

	k = rl_sendq_iov(&f->q, f->iov, max, &offered);
	FUZZ_CHECK(k <= max, "%d pieces for %d", k, max);
	for (int i = 0; i < k; i++) {
		FUZZ_CHECK(pos + f->iov[i].iov_len <= f->mlen, "iov past model");
		FUZZ_CHECK(memcmp(f->iov[i].iov_base, f->model + pos,
				  f->iov[i].iov_len) == 0,
			   "iov %d differs from model at %zu", i, pos);
		pos += f->iov[i].iov_len;
	}
	FUZZ_CHECK(pos == offered, "iov sums to %zu, reported %zu", pos, offered);
	n = in_u8(in) % 4 == 0 ? offered : pick_len(in, offered);
	rl_sendq_advance(&f->q, &f->pool, &f->br, n);
	memmove(f->model, f->model + n, f->mlen - n);
	f->mlen -= n;
}

static void detach(struct fixture *f)
{
	FUZZ_CHECK(rl_sendq_detach(&f->q, &f->pool, &f->br) == 0, "detach");
	FUZZ_CHECK(!rl_sendq_has_refs(&f->q), "refs after detach");
}

static void clear(struct fixture *f)
{
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	f->mlen = 0;
}

/* The whole queue, flattened, is the model. */
static void check_bytes(struct fixture *f)
{
	size_t bytes, pos = 0;
	int k = rl_sendq_iov(&f->q, f->iov, 4096, &bytes);

	FUZZ_CHECK(f->q.count < 4096, "%u segments", f->q.count);
	FUZZ_CHECK(f->q.bytes == f->mlen, "q.bytes %zu, model %zu", f->q.bytes,
		   f->mlen);
	FUZZ_CHECK(bytes == f->mlen, "iov bytes %zu, model %zu", bytes, f->mlen);
	{
		size_t refs = 0;

		for (uint32_t i = 0; i < f->q.count; i++) {
			const struct rl_sendseg *sg =
				&f->q.segs[(f->q.head + i) & (f->q.cap - 1)];

			if (sg->bid >= 0)
				refs += sg->len - sg->off;
		}
		FUZZ_CHECK(f->q.ref_bytes == refs, "ref_bytes %zu, segments %zu",
			   f->q.ref_bytes, refs);
	}
	for (int i = 0; i < k; i++) {
		FUZZ_CHECK(f->iov[i].iov_len > 0, "empty iov piece");
		FUZZ_CHECK(memcmp(f->iov[i].iov_base, f->model + pos,
				  f->iov[i].iov_len) == 0,
			   "queue differs from model at %zu", pos);
		pos += f->iov[i].iov_len;
	}
}

/* Each ring buffer has one lease per segment naming it, each blob one
 * reference per segment plus ours; a buffer back in the ring is reused
 * by the kernel at once (scribbled), so a segment still reading it would
 * show in check_bytes. */
static void check_refs(struct fixture *f)
{
	uint32_t leases[NBUFS] = { 0 }, refs[NBLOBS] = { 0 };

	for (uint32_t i = 0; i < f->q.count; i++) {
		const struct rl_sendseg *s =
			&f->q.segs[(f->q.head + i) & (f->q.cap - 1)];

		FUZZ_CHECK(s->off < s->len, "a finished segment is kept");
		if (s->bid >= 0) {
			FUZZ_CHECK(s->bid < NBUFS, "bid %d", s->bid);
			leases[s->bid]++;
		}
		for (int b = 0; b < NBLOBS; b++)
			refs[b] += s->bid == RL_SEG_BLOB && s->blob == f->blobs[b];
	}
	for (uint32_t b = 0; b < NBUFS; b++) {
		FUZZ_CHECK(f->br.leases[b] == leases[b],
			   "bid %u: %u leases, %u segments", b, f->br.leases[b],
			   leases[b]);
		if (!leases[b])
			memset(rl_bufring_addr(&f->br, b), SCRIBBLE, BUFSZ);
	}
	for (int b = 0; b < NBLOBS; b++)
		FUZZ_CHECK(f->blobs[b]->refs == 1 + refs[b],
			   "blob %d: %u refs, %u segments", b, f->blobs[b]->refs,
			   refs[b]);
	FUZZ_CHECK(rl_sendq_has_refs(&f->q) == (f->br.leased > 0),
		   "has_refs disagrees with the ring");
	FUZZ_CHECK(f->q.count || f->q.segs == f->q.inline_segs,
		   "an empty queue keeps heap segments");
	FUZZ_CHECK(f->q.count <= f->q.cap, "count over cap");
	FUZZ_CHECK(f->pool.count <= f->pool.max, "pool over max");
}

static struct fixture *fixture_new(void)
{
	static uint8_t val[3 * RL_CHUNK_SIZE];
	static const size_t blob_lens[NBLOBS] = { 0, 7, 600, sizeof(val) };
	/* Static: zeroing a fresh megabyte per input would dominate. */
	static uint8_t model[MODEL_MAX];
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f || rl_bufring_init(&f->br, NBUFS, BUFSZ, 0) ||
	    rl_chunkpool_init(&f->pool, 4))
		abort();
	rl_sendq_init(&f->q);
	f->model = model;
	pattern(val, sizeof(val), 0x5a);
	for (int b = 0; b < NBLOBS; b++) {
		f->blobs[b] = rl_blob_new(val + b, blob_lens[b] - (b ? b : 0));
		if (!f->blobs[b])
			abort();
	}
	return f;
}

static void fixture_free(struct fixture *f)
{
	clear(f);
	check_refs(f);
	FUZZ_CHECK(f->br.leased == 0, "%u buffers still leased", f->br.leased);
	for (int b = 0; b < NBLOBS; b++)
		rl_blob_unref(f->blobs[b]);     /* the last: freed (ASan) */
	rl_chunkpool_free(&f->pool);
	rl_bufring_free(&f->br, NULL);
	free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	struct fixture *f = fixture_new();

	while (in_left(&in)) {
		uint8_t op = in_u8(&in) % 16;

		if (op < 4)
			push_copy(&in, f);
		else if (op < 7)
			push_refs(&in, f);
		else if (op < 9)
			push_blob(&in, f);
		else if (op < 14)
			send_some(&in, f);
		else if (op == 14)
			detach(f);
		else
			clear(f);
		if (in_u8(&in) % 8 == 0)
			rl_bufring_publish(&f->br);
		check_bytes(f);
		check_refs(f);
	}
	fixture_free(f);
	return 0;
}
