/* rl_sendq.c: a connection's queue of bytes to send, copied or leased. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_alloc.h"
#include "rl_sendq.h"

/* -- Chunk pool ---------------------------------------------------------- */

int rl_chunkpool_init(struct rl_chunkpool *p, uint32_t max)
{
	/* One allocation for both free lists. */
	p->free = rl_calloc(max ? 2 * max : 1, sizeof(*p->free));
	p->free_small = p->free ? p->free + max : NULL;
	p->count = p->count_small = 0;
	p->nfilebufs = 0;
	p->max = max;
	return p->free ? 0 : -ENOMEM;
}

void rl_chunkpool_free(struct rl_chunkpool *p)
{
	while (p->nfilebufs)
		free(p->filebufs[--p->nfilebufs]);
	while (p->count)
		free(p->free[--p->count]);
	while (p->count_small)
		free(p->free_small[--p->count_small]);
	free(p->free);
	p->free = NULL;
}

static uint8_t *chunk_get(struct rl_chunkpool *p, uint32_t *cap, size_t want,
			  int small)
{
	/* Large strings get a piece of their own size: one copy, one iovec. */
	if (want > RL_CHUNK_SIZE) {
		*cap = (uint32_t)want;
		return rl_malloc(want);
	}
	if (small && want <= RL_CHUNK_SMALL / 2) {
		*cap = RL_CHUNK_SMALL;
		if (p->count_small)
			return p->free_small[--p->count_small];
		return rl_malloc(RL_CHUNK_SMALL);
	}
	*cap = RL_CHUNK_SIZE;
	if (p->count)
		return p->free[--p->count];
	return rl_malloc(RL_CHUNK_SIZE);
}

static void chunk_put(struct rl_chunkpool *p, uint8_t *c, uint32_t cap)
{
	if (cap == RL_CHUNK_SIZE && p->count < p->max)
		p->free[p->count++] = c;
	else if (cap == RL_CHUNK_SMALL && p->count_small < p->max)
		p->free_small[p->count_small++] = c;
	else
		free(c);
}

/* -- Segments ------------------------------------------------------------ */

void rl_sendq_init(struct rl_sendq *q)
{
	memset(q, 0, sizeof(*q));
	q->segs = q->inline_segs;
	q->cap = RL_SENDQ_INLINE;
}

static struct rl_sendseg *seg_at(const struct rl_sendq *q, uint32_t i)
{
	return &q->segs[(q->head + i) & (q->cap - 1)];
}

static int grow(struct rl_sendq *q)
{
	uint32_t cap = q->cap * 2;
	struct rl_sendseg *s = rl_malloc(cap * sizeof(*s));

	if (!s)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->count; i++)
		s[i] = *seg_at(q, i);
	if (q->segs != q->inline_segs)
		free(q->segs);
	q->segs = s;
	q->cap = cap;
	q->head = 0;
	return 0;
}

/* Back to the inline array once the queue empties: memory follows traffic. */
static void shrink_if_empty(struct rl_sendq *q)
{
	if (q->count)
		return;
	q->head = 0;
	if (q->segs != q->inline_segs) {
		free(q->segs);
		q->segs = q->inline_segs;
		q->cap = RL_SENDQ_INLINE;
	}
}

static struct rl_sendseg *seg_push(struct rl_sendq *q)
{
	if (q->count == q->cap && grow(q))
		return NULL;
	q->count++;
	return seg_at(q, q->count - 1);
}

int rl_sendq_push_copy(struct rl_sendq *q, struct rl_chunkpool *pool,
		       const void *p, size_t len)
{
	const uint8_t *src = p;
	struct rl_sendseg *t;
	size_t room = 0;
	uint8_t *base;
	uint32_t cap;
	int after_ref = 0;

	if (!len)
		return 0;
	if (q->count) {
		t = seg_at(q, q->count - 1);
		if (t->bid == RL_SEG_CHUNK && t->len < t->cap)
			room = t->cap - t->len;
		after_ref = t->bid >= 0 || t->bid == RL_SEG_BLOB;
	}
	if (len <= room) {
		t = seg_at(q, q->count - 1);
		memcpy(t->base + t->len, src, len);
		t->len += (uint32_t)len;
		q->bytes += len;
		return 0;
	}
	/* All or nothing: take the new segment and its chunk before any byte
	 * goes into the tail, so -ENOMEM leaves the queue as it was. */
	base = chunk_get(pool, &cap, len - room, after_ref);
	if (!base)
		return -ENOMEM;
	t = seg_push(q);
	if (!t) {
		chunk_put(pool, base, cap);
		return -ENOMEM;
	}
	if (room) {
		struct rl_sendseg *tail = seg_at(q, q->count - 2);

		memcpy(tail->base + tail->len, src, room);
		tail->len += (uint32_t)room;
		src += room;
	}
	t->base = base;
	t->cap = cap;
	memcpy(t->base, src, len - room);
	t->off = 0;
	t->len = (uint32_t)(len - room);
	t->bid = RL_SEG_CHUNK;
	t->blob = NULL;
	q->bytes += len;
	return 0;
}

int rl_sendq_push_blob(struct rl_sendq *q, rl_blob *b, size_t off, size_t len)
{
	struct rl_sendseg *t;

	if (!len)
		return 0;
	if (off + len > b->len || len > UINT32_MAX)
		return -EINVAL;
	t = seg_push(q);
	if (!t)
		return -ENOMEM;
	rl_blob_ref(b);
	t->base = b->data + off;
	t->off = 0;
	t->len = (uint32_t)len;
	t->cap = 0;
	t->bid = RL_SEG_BLOB;
	t->blob = b;
	q->bytes += len;
	return 0;
}

int rl_sendq_push_ref(struct rl_sendq *q, struct rl_bufring *br,
		      const void *p, size_t len, int32_t bid)
{
	struct rl_sendseg *t;

	if (!len)
		return 0;
	/* Contiguous with the last range of the same buffer: extend it, the
	 * lease it holds covers both. */
	if (q->count) {
		t = seg_at(q, q->count - 1);
		if (t->bid == bid && t->base + t->len == (const uint8_t *)p) {
			t->len += (uint32_t)len;
			q->bytes += len;
			q->ref_bytes += len;
			return 0;
		}
	}
	if (rl_bufring_ref(br, (uint32_t)bid))
		return -EINVAL;
	t = seg_push(q);
	if (!t) {
		rl_bufring_unref(br, (uint32_t)bid);
		return -ENOMEM;
	}
	t->base = (uint8_t *)p;
	t->off = 0;
	t->len = (uint32_t)len;
	t->cap = 0;
	t->bid = bid;
	t->blob = NULL;
	q->bytes += len;
	q->ref_bytes += len;
	return 0;
}

int rl_sendq_push_file(struct rl_sendq *q, int fd, int64_t offset,
		       int64_t len)
{
	struct rl_sendfile *f;
	struct rl_sendseg *t;

	if (fd < 0 || offset < 0 || len < 0 || offset > INT64_MAX - len)
		return -EINVAL;
	if (!len)
		return 0;       /* nothing to send; the caller closes fd */
	f = rl_calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	t = seg_push(q);
	if (!t) {
		free(f);
		return -ENOMEM;
	}
	f->fd = fd;
	f->pos = offset;
	f->unread = len;
	t->base = NULL;
	t->off = t->len = t->cap = 0;
	t->bid = RL_SEG_FILE;
	t->file = f;
	q->bytes += (size_t)len;
	q->file_bytes += (size_t)len;
	return 0;
}

static void filebuf_put(struct rl_chunkpool *p, uint8_t *b)
{
	if (!b)
		return;
	if (p->nfilebufs < RL_FILEBUF_KEEP)
		p->filebufs[p->nfilebufs++] = b;
	else
		free(b);
}

struct rl_sendfile *rl_sendq_file_to_read(struct rl_sendq *q,
					  struct rl_chunkpool *pool, int *err)
{
	*err = 0;
	for (uint32_t i = 0; i < q->count; i++) {
		struct rl_sendseg *s = seg_at(q, i);
		struct rl_sendfile *f;

		/* Bytes queued before it do not wait: reading first lets
		 * them and the file's first buffer go out in one send. */
		if (s->bid != RL_SEG_FILE)
			continue;
		f = s->file;
		if (f->buf_off < f->buf_len || !f->unread)
			return NULL;
		if (!f->buf) {
			f->buf = pool->nfilebufs ? pool->filebufs[--pool->nfilebufs]
						 : rl_malloc(RL_FILEBUF_SIZE);
			if (!f->buf) {
				*err = -ENOMEM;
				return NULL;
			}
		}
		f->buf_off = f->buf_len = 0;
		return f;
	}
	return NULL;
}

int rl_sendq_iov(const struct rl_sendq *q, struct iovec *iov, int max,
		 size_t *bytes)
{
	int n = 0;

	*bytes = 0;
	for (uint32_t i = 0; i < q->count && n < max; i++) {
		struct rl_sendseg *s = seg_at(q, i);

		if (s->bid == RL_SEG_FILE) {
			struct rl_sendfile *f = s->file;

			if (f->buf_off < f->buf_len) {
				iov[n].iov_base = f->buf + f->buf_off;
				iov[n].iov_len = f->buf_len - f->buf_off;
				*bytes += iov[n].iov_len;
				n++;
			}
			if (f->unread)
				break;  /* what follows waits for the read */
			continue;
		}
		if (s->len == s->off)
			continue;
		iov[n].iov_base = s->base + s->off;
		iov[n].iov_len = s->len - s->off;
		*bytes += iov[n].iov_len;
		n++;
	}
	return n;
}

static void seg_release(struct rl_sendseg *s, struct rl_chunkpool *pool,
			struct rl_bufring *br)
{
	if (s->bid >= 0) {
		rl_bufring_unref(br, (uint32_t)s->bid);
	} else if (s->bid == RL_SEG_BLOB) {
		rl_blob_unref(s->blob);
	} else if (s->bid == RL_SEG_FILE) {
		close(s->file->fd);
		filebuf_put(pool, s->file->buf);
		free(s->file);
	} else {
		chunk_put(pool, s->base, s->cap);
	}
}

/* n bytes of a file segment's buffer were sent (n at most what it holds).
 * Returns 1 when the segment is done. */
static int file_advance(struct rl_sendq *q, struct rl_sendfile *f, size_t n)
{
	f->buf_off += (uint32_t)n;
	q->bytes -= n;
	if (f->buf_off < f->buf_len)
		return 0;
	f->buf_off = f->buf_len = 0;
	return f->unread == 0;
}

void rl_sendq_advance(struct rl_sendq *q, struct rl_chunkpool *pool,
		      struct rl_bufring *br, size_t n)
{
	while (q->count) {
		struct rl_sendseg *s = seg_at(q, 0);
		size_t left = s->len - s->off;

		if (s->bid == RL_SEG_FILE) {
			struct rl_sendfile *f = s->file;
			size_t held = f->buf_len - f->buf_off;
			size_t k = n < held ? n : held;

			n -= k;
			if (!file_advance(q, f, k))
				return;     /* more to read, or to send */
			seg_release(s, pool, br);
			q->head = (q->head + 1) & (q->cap - 1);
			q->count--;
			continue;
		}
		if (n < left) {
			s->off += (uint32_t)n;
			q->bytes -= n;
			if (s->bid >= 0)
				q->ref_bytes -= n;
			return;
		}
		/* Released even if it could take more bytes: an idle
		 * connection keeps no send memory; the pool makes the next
		 * chunk cheap. */
		n -= left;
		q->bytes -= left;
		if (s->bid >= 0)
			q->ref_bytes -= left;
		seg_release(s, pool, br);
		q->head = (q->head + 1) & (q->cap - 1);
		q->count--;
	}
	shrink_if_empty(q);
}

struct rl_sendfile *rl_sendq_front_file(const struct rl_sendq *q)
{
	for (uint32_t i = 0; i < q->count; i++) {
		struct rl_sendseg *s = seg_at(q, i);

		if (s->bid != RL_SEG_FILE) {
			if (s->len != s->off)
				return NULL;
			continue;
		}
		if (s->file->buf_off < s->file->buf_len || !s->file->unread)
			return NULL;
		return s->file;
	}
	return NULL;
}

void rl_sendq_file_sent(struct rl_sendq *q, struct rl_chunkpool *pool,
			struct rl_bufring *br, size_t n)
{
	struct rl_sendseg *s;
	struct rl_sendfile *f;

	/* Pops the emptied segments before it (advancing by nothing stops
	 * at the first segment with bytes: this file). */
	rl_sendq_advance(q, pool, br, 0);
	s = seg_at(q, 0);
	f = s->file;
	f->pos += (int64_t)n;
	f->unread -= (int64_t)n;
	q->bytes -= n;
	q->file_bytes -= n;
	if (f->unread)
		return;
	seg_release(s, pool, br);
	q->head = (q->head + 1) & (q->cap - 1);
	q->count--;
	shrink_if_empty(q);
}

int rl_sendq_has_refs(const struct rl_sendq *q)
{
	for (uint32_t i = 0; i < q->count; i++)
		if (seg_at(q, i)->bid >= 0)
			return 1;
	return 0;
}

int rl_sendq_detach(struct rl_sendq *q, struct rl_chunkpool *pool,
		    struct rl_bufring *br)
{
	(void)pool;
	for (uint32_t i = 0; i < q->count; i++) {
		struct rl_sendseg *s = seg_at(q, i);
		uint32_t n = s->len - s->off;
		uint8_t *copy;

		if (s->bid < 0)
			continue;       /* chunks and blobs hold no ring buffer */
		/* Exact size: this only happens for slow readers, and the
		 * copy must not be appended to (it sits mid-queue). */
		copy = rl_malloc(n ? n : 1);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, s->base + s->off, n);
		rl_bufring_unref(br, (uint32_t)s->bid);
		q->ref_bytes -= n;
		s->base = copy;
		s->off = 0;
		s->len = n;
		s->cap = n;
		s->bid = RL_SEG_CHUNK;
	}
	return 0;
}

void rl_sendq_clear(struct rl_sendq *q, struct rl_chunkpool *pool,
		    struct rl_bufring *br)
{
	while (q->count) {
		seg_release(seg_at(q, 0), pool, br);
		q->head = (q->head + 1) & (q->cap - 1);
		q->count--;
	}
	q->bytes = 0;
	q->file_bytes = 0;
	q->ref_bytes = 0;
	shrink_if_empty(q);
}
