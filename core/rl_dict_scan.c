/* rl_dict_scan.c: the dictionary as a whole: new and free, count, flush, scan, sweep, stats. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "rl_dict_int.h"

#define MAX_STRIPES 65536
#define CURSOR_BITS 40          /* scan cursor: stripe << 40 | bucket cursor */
#define CURSOR_MASK (((uint64_t)1 << CURSOR_BITS) - 1)
#define SWEEP_BATCH 256         /* entries examined per stripe per sweep visit */

/* -- Life ---------------------------------------------------------------- */

static void seed(rl_dict *d)
{
	uint64_t k[2];
	struct timespec ts;

	if (getrandom(k, sizeof(k), GRND_NONBLOCK) == (ssize_t)sizeof(k)) {
		d->k0 = k[0];
		d->k1 = k[1];
		return;
	}
	/* No entropy yet (early boot): weaker, still not guessable offline. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	d->k0 = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uintptr_t)d;
	clock_gettime(CLOCK_REALTIME, &ts);
	d->k1 = (uint64_t)ts.tv_sec * 0xff51afd7ed558ccdULL ^ (uint64_t)getpid() ^
		(uint64_t)ts.tv_nsec;
}

rl_dict *rl_dict_new(size_t mem_limit, unsigned stripes)
{
	pthread_mutexattr_t attr;
	rl_dict *d;

	if (!stripes)
		stripes = 64;
	if (stripes > MAX_STRIPES || (stripes & (stripes - 1))) {
		errno = EINVAL;
		return NULL;
	}
	d = rl_calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->stripes = aligned_alloc(64, stripes * sizeof(*d->stripes));
	if (!d->stripes) {
		free(d);
		return NULL;
	}
	memset(d->stripes, 0, stripes * sizeof(*d->stripes));
	seed(d);
	d->nstripes = stripes;
	d->bits = (unsigned)__builtin_ctz(stripes);
	d->limit = mem_limit;
	d->share = mem_limit / stripes;
	d->chunk = d->share / 8 > 1024 ? d->share / 8 : 1024;
	atomic_init(&d->pool, d->limit - d->share * stripes);
	/* Sections are short: spinning briefly before sleeping measured as
	 * fast as a spinlock with a core per thread and far better than one
	 * when threads outnumber cores. */
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
	for (unsigned i = 0; i < stripes; i++) {
		struct stripe *s = &d->stripes[i];

		s->t[0].b = rl_calloc(MIN_BUCKETS, sizeof(*s->t[0].b));
		if (!s->t[0].b) {
			d->nstripes = i;
			pthread_mutexattr_destroy(&attr);
			rl_dict_free(d);
			errno = ENOMEM;
			return NULL;
		}
		s->t[0].mask = MIN_BUCKETS - 1;
		pthread_mutex_init(&s->lock, &attr);
		dl_init(&s->lru);
		dl_init(&s->ttl);
		s->idx = i;
		atomic_init(&s->budget, d->share);
	}
	pthread_mutexattr_destroy(&attr);
	return d;
}

void rl_dict_free(rl_dict *d)
{
	if (!d)
		return;
	for (unsigned i = 0; i < d->nstripes; i++) {
		struct stripe *s = &d->stripes[i];

		entries_free(&s->lru);
		free(s->t[0].b);
		free(s->t[1].b);
		pthread_mutex_destroy(&s->lock);
	}
	free(d->stripes);
	free(d);
}

/* -- Whole dictionary ---------------------------------------------------- */

uint64_t rl_dict_count(rl_dict *d, int64_t now_ms)
{
	uint64_t n = 0;

	(void)now_ms;
	for (unsigned i = 0; i < d->nstripes; i++)
		n += ld(&d->stripes[i].count);
	return n;
}

void rl_dict_flush(rl_dict *d)
{
	for (unsigned i = 0; i < d->nstripes; i++) {
		struct stripe *s = &d->stripes[i];
		struct entry **fresh = rl_calloc(MIN_BUCKETS, sizeof(*fresh));
		struct dlist all;

		stripe_lock(s);
		dl_init(&all);
		if (s->lru.next != &s->lru) {
			all.next = s->lru.next;
			all.prev = s->lru.prev;
			all.next->prev = &all;
			all.prev->next = &all;
			dl_init(&s->lru);
		}
		free(s->t[1].b);
		s->t[1].b = NULL;
		s->t[1].mask = 0;
		s->move_pos = 0;
		if (fresh) {
			free(s->t[0].b);
			s->t[0].b = fresh;
			s->t[0].mask = MIN_BUCKETS - 1;
		} else {
			memset(s->t[0].b, 0, (s->t[0].mask + 1) * sizeof(*fresh));
		}
		dl_init(&s->ttl);
		atomic_store_explicit(&s->nttl, 0, memory_order_relaxed);
		atomic_store_explicit(&s->count, 0, memory_order_relaxed);
		atomic_store_explicit(&s->bytes, 0, memory_order_relaxed);
		rld_budget_trim(d, s);
		stripe_unlock(s);
		/* Nobody can reach these any more: free them unlocked. */
		entries_free(&all);
	}
}

/* Keys copied out under the lock, to be reported without it: each a
 * uint32_t length then the bytes.  len past cap means the last step did
 * not fit (nothing of it was written). */
struct keybuf {
	uint8_t *p;
	size_t len, cap;
	unsigned n;
	bool fixed;     /* the caller's buffer, never grown */
	bool heap;      /* p is ours to realloc and free */
};

static void kb_chain(struct keybuf *kb, struct entry *e, int64_t now)
{
	size_t need = 0;

	for (struct entry *x = e; x; x = x->next)
		if (!expired(x, now))
			need += sizeof(uint32_t) + x->klen;
	if (!need)
		return;
	if (kb->len + need > kb->cap && !kb->fixed) {
		size_t cap = kb->cap ? kb->cap : 4096;
		uint8_t *p;

		while (cap < kb->len + need)
			cap *= 2;
		p = kb->heap ? rl_realloc(kb->p, cap) : rl_malloc(cap);
		if (p) {
			if (!kb->heap && kb->len)
				memcpy(p, kb->p, kb->len);
			kb->p = p;
			kb->cap = cap;
			kb->heap = true;
		}
	}
	if (kb->len + need > kb->cap) {
		kb->len += need;
		return;
	}
	for (; e; e = e->next) {
		if (expired(e, now))
			continue;
		memcpy(kb->p + kb->len, &e->klen, sizeof(uint32_t));
		memcpy(kb->p + kb->len + sizeof(uint32_t), e->key, e->klen);
		kb->len += sizeof(uint32_t) + e->klen;
		kb->n++;
	}
}

static uint64_t rev64(uint64_t v)
{
	v = ((v >> 1) & 0x5555555555555555ULL) | ((v & 0x5555555555555555ULL) << 1);
	v = ((v >> 2) & 0x3333333333333333ULL) | ((v & 0x3333333333333333ULL) << 2);
	v = ((v >> 4) & 0x0f0f0f0f0f0f0f0fULL) | ((v & 0x0f0f0f0f0f0f0f0fULL) << 4);
	return __builtin_bswap64(v);
}

/* Increment the cursor's bits under mask, most significant first: a
 * bucket's keys move only to buckets that come later in this order when
 * the table doubles, and to one that came earlier only together with all
 * of its siblings when it halves, so nothing present throughout is
 * missed. */
static uint64_t cursor_next(uint64_t v, uint64_t mask)
{
	v |= ~mask;
	return rev64(rev64(v) + 1);
}

/* Report the bucket at cursor v (during a resize: the smaller table's
 * bucket and all its expansions in the larger) and return the next v, 0
 * when the stripe is done.  Stripe lock held. */
static uint64_t scan_step(struct stripe *s, uint64_t v, int64_t now,
			  struct keybuf *kb)
{
	struct table *t0 = &s->t[0], *t1 = &s->t[1];

	if (!t1->b) {
		kb_chain(kb, *bucket(t0, v), now);
		return cursor_next(v, t0->mask);
	}
	if (t0->mask > t1->mask) {
		t0 = &s->t[1];
		t1 = &s->t[0];
	}
	kb_chain(kb, *bucket(t0, v), now);
	do {
		kb_chain(kb, *bucket(t1, v), now);
		v = cursor_next(v, t1->mask);
	} while (v & (t0->mask ^ t1->mask));
	return v;
}

static void kb_emit(struct keybuf *kb,
		    void (*fn)(void *ud, const uint8_t *key, size_t klen),
		    void *ud)
{
	for (size_t off = 0; off < kb->len;) {
		uint32_t klen;

		memcpy(&klen, kb->p + off, sizeof(klen));
		fn(ud, kb->p + off + sizeof(klen), klen);
		off += sizeof(klen) + klen;
	}
	kb->len = 0;
	kb->n = 0;
}

/* The cursor walk behind both scans.  With fn, keys are reported after
 * each stripe's lock is dropped; without, they pile up in kb.  Returns the
 * steps done; *need is the size of a step that did not fit. */
static unsigned scan_walk(rl_dict *d, uint64_t *cursor, unsigned count,
			  int64_t now, struct keybuf *kb,
			  void (*fn)(void *ud, const uint8_t *key, size_t klen),
			  void *ud, size_t *need)
{
	uint64_t si = *cursor >> CURSOR_BITS, v = *cursor & CURSOR_MASK;
	unsigned steps = 0;
	bool full = false;

	*need = 0;
	if (si >= d->nstripes) {
		*cursor = 0;
		return 0;
	}
	if (!count)
		count = 1;
	while (steps < count && !full) {
		struct stripe *s = &d->stripes[si];

		stripe_lock(s);
		while (steps < count) {
			size_t mark = kb->len;
			unsigned nmark = kb->n;
			uint64_t nv = scan_step(s, v, now, kb);

			if (kb->len > kb->cap) {
				*need = kb->len - mark;
				kb->len = mark;
				kb->n = nmark;
				full = true;
				break;
			}
			v = nv;
			steps++;
			if (!v)
				break;
		}
		stripe_unlock(s);
		if (fn)
			kb_emit(kb, fn, ud);
		if (!full && !v && ++si == d->nstripes) {
			*cursor = 0;
			return steps;
		}
	}
	*cursor = si << CURSOR_BITS | v;
	return steps;
}

uint64_t rl_dict_scan(rl_dict *d, uint64_t cursor, unsigned count,
		      int64_t now_ms,
		      void (*fn)(void *ud, const uint8_t *key, size_t klen),
		      void *ud)
{
	/* Most walks fit here; short of memory, one still reports every
	 * bucket whose keys fit, and the cursor stops at the first that does
	 * not (the caller calls again). */
	uint8_t first[4096];
	struct keybuf kb = { .p = first, .cap = sizeof(first) };
	size_t need;

	scan_walk(d, &cursor, count, now_ms, &kb, fn, ud, &need);
	if (kb.heap)
		free(kb.p);
	return cursor;
}

int rl_dict_scan_buf(rl_dict *d, uint64_t *cursor, unsigned count,
		     int64_t now_ms, uint8_t *buf, size_t cap, size_t *used)
{
	struct keybuf kb = { .p = buf, .cap = cap, .fixed = true };
	uint64_t c = *cursor;
	size_t need;
	unsigned steps;

	steps = scan_walk(d, &c, count, now_ms, &kb, NULL, NULL, &need);
	if (!steps && need) {
		*used = need;
		return -ENOSPC;
	}
	*cursor = c;
	*used = kb.len;
	return (int)kb.n;
}

unsigned rl_dict_sweep(rl_dict *d, unsigned budget, int64_t now_ms)
{
	unsigned left = budget, deleted = 0;

	for (unsigned i = 0; i < d->nstripes && left; i++) {
		unsigned si = atomic_fetch_add_explicit(&d->sweep_next, 1,
					memory_order_relaxed) & (d->nstripes - 1);
		struct stripe *s = &d->stripes[si];
		uint64_t n;

		if (!ld(&s->nttl))
			continue;
		stripe_lock(s);
		n = ld(&s->nttl);
		if (n > left)
			n = left;
		if (n > SWEEP_BATCH)
			n = SWEEP_BATCH;
		/* The list rotates: what was examined goes to the back, so the
		 * head is always where the last visit stopped. */
		for (; n; n--, left--) {
			struct entry *e = entry_of(s->ttl.next, ttl);

			if (expired(e, now_ms)) {
				rld_entry_drop(s, e);
				add(&s->expired, 1);
				deleted++;
			} else {
				dl_del(&e->ttl);
				dl_add_tail(&s->ttl, &e->ttl);
			}
		}
		rld_maybe_shrink(s);
		rld_budget_trim(d, s);
		stripe_unlock(s);
	}
	return deleted;
}

void rl_dict_stats_get(rl_dict *d, rl_dict_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->limit = d->limit;
	for (unsigned i = 0; i < d->nstripes; i++) {
		struct stripe *s = &d->stripes[i];

		out->keys += ld(&s->count);
		out->bytes += ld(&s->bytes);
		out->hits += ld(&s->hits);
		out->misses += ld(&s->misses);
		out->evictions += ld(&s->evictions);
		out->expired += ld(&s->expired);
		out->sets += ld(&s->sets);
	}
}
