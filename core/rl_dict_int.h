/* rl_dict_int.h: what the pieces of the dictionary (rl_dict*.c) share; not part of the API. */

/* The structures, and the helpers the hot paths inline, are defined here
 * as static inline, so that splitting the file put no new call on get or
 * set.  Functions the compiler kept out of line while all their callers
 * were in one file are shared as ordinary functions named rld_*, hidden
 * from the dynamic symbol table (the binary is linked with -Wl,-E). */
#ifndef RL_DICT_INT_H
#define RL_DICT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rl_alloc.h"
#include "rl_dict.h"

#define RLD_HIDDEN __attribute__((visibility("hidden")))

#define MIN_BUCKETS 16

/* -- Lists --------------------------------------------------------------- */

struct dlist {
	struct dlist *prev, *next;
};

static inline void dl_init(struct dlist *h)
{
	h->prev = h->next = h;
}

static inline void dl_add_head(struct dlist *h, struct dlist *n)
{
	n->next = h->next;
	n->prev = h;
	h->next->prev = n;
	h->next = n;
}

static inline void dl_add_tail(struct dlist *h, struct dlist *n)
{
	dl_add_head(h->prev, n);
}

static inline void dl_del(struct dlist *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
}

/* -- Structures ---------------------------------------------------------- */

struct entry {
	struct entry *next;     /* bucket chain */
	struct dlist lru;       /* most recently used at the stripe's head */
	struct dlist ttl;       /* on the stripe's TTL list iff expire_at != 0 */
	uint64_t hash;
	uint64_t cas;
	int64_t expire_at;      /* unix ms, 0 = none */
	rl_blob *val;           /* the dictionary's reference */
	uint32_t vcap;          /* bytes allocated for val->data, >= len + 1 */
	uint32_t flags32;
	uint32_t klen;
	uint32_t lru_seq;       /* stripe's lru_clock when put at the head */
	uint8_t key[];
};

#define entry_of(ptr, member) \
	((struct entry *)((char *)(ptr) - offsetof(struct entry, member)))

struct table {
	struct entry **b;
	uint64_t mask;
};

/* Everything but the atomics is guarded by lock.  The atomics are written
 * only by the lock holder; they are atomic so that other stripes' writers
 * (budget, bytes), the sweeper (nttl) and stats can read them unlocked. */
struct stripe {
	pthread_mutex_t lock;
	struct table t[2];          /* t[1] exists only during a resize */
	uint64_t move_pos;          /* next t[0] bucket to move to t[1] */
	struct dlist lru;
	struct dlist ttl;           /* sweep examines the head, rotates to the tail */
	uint64_t cas_seq;
	uint32_t lru_clock;         /* entries put at the LRU head so far */
	unsigned idx;
	_Atomic uint64_t bytes, budget;
	_Atomic uint64_t count, nttl;
	_Atomic uint64_t hits, misses, evictions, expired, sets;
} __attribute__((aligned(64)));

struct rl_dict {
	uint64_t k0, k1;            /* SipHash key, random per dictionary */
	unsigned nstripes;
	unsigned bits;              /* log2(nstripes) */
	uint64_t limit, share, chunk;
	_Atomic uint64_t pool;      /* budget no stripe owns */
	_Atomic unsigned sweep_next, steal_next;
	struct stripe *stripes;
};

struct key {
	const uint8_t *p;
	uint32_t len;
	uint64_t hash;
};

/* A write in progress.  Writes run under their stripe's lock; when the
 * stripe lacks budget they return -EAGAIN, and rld_write_op fetches budget
 * from other stripes with no lock held (so no two stripe locks are ever
 * held) and runs the write again from the lookup. */
struct wctx {
	rl_dict *d;
	struct stripe *s;
	struct key k;
	int64_t now;
	uint64_t want;       /* after -EAGAIN: budget missing */
	uint64_t stolen;     /* taken from other stripes: this write's alone
			      * until it ends, so nobody takes it back
			      * between tries */
	int tries;
	bool big;            /* after -EAGAIN: bigger than s's whole budget */
	bool spare_only;     /* take only unused budget from others */
	bool no_steal;       /* make room by evicting from s only */
};

/* -- Shared functions (rl_dict.c) ----------------------------------------- */

RLD_HIDDEN uint64_t rld_siphash13(uint64_t k0, uint64_t k1, const uint8_t *p,
				  size_t n);
RLD_HIDDEN void rld_resize_step(struct stripe *s);
RLD_HIDDEN void rld_maybe_shrink(struct stripe *s);
RLD_HIDDEN struct entry *rld_entry_new(const struct key *k);
RLD_HIDDEN void rld_entry_link(struct stripe *s, struct entry *e);
RLD_HIDDEN void rld_entry_drop(struct stripe *s, struct entry *e);
RLD_HIDDEN void rld_lru_touch(struct stripe *s, struct entry *e);
RLD_HIDDEN struct entry *rld_find_live(struct stripe *s, const struct key *k,
				       int64_t now);
RLD_HIDDEN void rld_budget_trim(rl_dict *d, struct stripe *s);
RLD_HIDDEN int rld_fit(struct wctx *w, uint64_t old, uint64_t new,
		       struct entry *keep);
RLD_HIDDEN int rld_write_op(struct wctx *w,
			    int (*op)(struct wctx *w, void *arg), void *arg);

/* -- Counters -------------------------------------------------------------- */

static inline uint64_t ld(_Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

/* One writer at a time (the stripe lock holder): a plain load and store, no
 * locked instruction. */
static inline void add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, ld(c) + n, memory_order_relaxed);
}

static inline void sub(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, ld(c) - n, memory_order_relaxed);
}

/* -- Keys ---------------------------------------------------------------- */

static inline struct stripe *key_init(rl_dict *d, struct key *k,
				      const void *p, size_t len)
{
	k->p = len ? p : (const uint8_t *)"";
	k->len = (uint32_t)len;
	k->hash = rld_siphash13(d->k0, d->k1, k->p, len);
	/* Top bits pick the stripe, bottom bits the bucket: independent. */
	return &d->stripes[d->bits ? k->hash >> (64 - d->bits) : 0];
}

/* -- Blobs --------------------------------------------------------------- */

static inline rl_blob *blob_alloc(size_t cap)
{
	rl_blob *b = rl_malloc(sizeof(*b) + cap);

	if (!b)
		return NULL;
	b->refs = 1;
	b->len = 0;
	return b;
}

/* rl_blob_unref, inline for the other files' paths. */
static inline void blob_put(rl_blob *b)
{
	/* Release our reads of the bytes to whoever frees or reuses them. */
	if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(b);
}

/* Only the dictionary's reference left: nobody else can see the bytes, and
 * nobody can get a new reference without the stripe lock we hold. */
static inline bool blob_unshared(rl_blob *b)
{
	return __atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) == 1;
}

static inline struct entry **bucket(const struct table *t, uint64_t hash)
{
	return &t->b[hash & t->mask];
}

/* -- Stripes ------------------------------------------------------------- */

static inline void stripe_lock(struct stripe *s)
{
	pthread_mutex_lock(&s->lock);
	/* Every visit carries a resize along a little. */
	if (s->t[1].b)
		rld_resize_step(s);
}

static inline void stripe_unlock(struct stripe *s)
{
	pthread_mutex_unlock(&s->lock);
}

/* -- Entries (stripe lock held) ------------------------------------------ */

static inline uint64_t charge_of(size_t klen, size_t vcap)
{
	return sizeof(struct entry) + klen + sizeof(rl_blob) + vcap;
}

static inline uint64_t charge(const struct entry *e)
{
	return charge_of(e->klen, e->vcap);
}

static inline bool expired(const struct entry *e, int64_t now)
{
	return e->expire_at && e->expire_at <= now;
}

static inline uint64_t next_cas(rl_dict *d, struct stripe *s)
{
	/* Unique across stripes without a shared counter: the stripe index
	 * sits in the low bits.  Never 0. */
	return (++s->cas_seq << d->bits) | s->idx;
}

/* e takes over the caller's reference on b. */
static inline void entry_replace(struct stripe *s, struct entry *e,
				 rl_blob *b, uint32_t cap)
{
	sub(&s->bytes, charge(e));
	blob_put(e->val);
	e->val = b;
	e->vcap = cap;
	add(&s->bytes, charge(e));
}

static inline void wctx_init(struct wctx *w, rl_dict *d, const void *key,
			     size_t klen, int64_t now)
{
	memset(w, 0, sizeof(*w));
	w->d = d;
	w->now = now;
	w->s = key_init(d, &w->k, key, klen);
}

/* Free a list of entries nobody can reach any more. */
static inline void entries_free(struct dlist *h)
{
	struct dlist *n = h->next;

	while (n != h) {
		struct entry *e = entry_of(n, lru);

		n = n->next;
		blob_put(e->val);
		free(e);
	}
}

#endif
