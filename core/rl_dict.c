/* rl_dict.c: the process-wide shared dictionary of refcounted values.
 *
 * Layout: a key's SipHash-1-3 picks a stripe (top bits) and a bucket
 * (bottom bits).  A stripe is a mutex, a chained hash table that resizes
 * incrementally (a second table fills while every locked visit moves a
 * bucket over), an LRU list, a list of the entries that have an expiry,
 * and a memory budget.
 *
 * Memory: each stripe may hold entries up to its budget, which starts at
 * limit / stripes.  Budget is lent, never created: a global pool holds what
 * no stripe owns, a stripe short of budget takes from the pool, then (for
 * an entry bigger than its whole budget, or to win back a share it lent
 * out) from other stripes, which evict their least recently used entries to
 * give it up, and otherwise evicts its own.  The sum of budgets and pool is
 * the limit, so the bytes accounted never exceed it, and steady-state
 * eviction stays inside one stripe with no shared cache line written.
 */
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "rl_alloc.h"
#include "rl_dict.h"

#define MIN_BUCKETS 16
#define MAX_BUCKETS ((size_t)1 << 32)
#define CURSOR_BITS 40          /* scan cursor: stripe << 40 | bucket cursor */
#define CURSOR_MASK (((uint64_t)1 << CURSOR_BITS) - 1)
#define MAX_STRIPES 65536
#define SWEEP_BATCH 256         /* entries examined per stripe per sweep visit */
#define EVICT_PEEK 3            /* TTL-list entries checked for an expired victim */
#define WRITE_TRIES 6           /* rounds of taking budget from other stripes */
#define NUM_CAP 24              /* value capacity for counters: updates in place */

/* -- Lists --------------------------------------------------------------- */

struct dlist {
	struct dlist *prev, *next;
};

static void dl_init(struct dlist *h)
{
	h->prev = h->next = h;
}

static void dl_add_head(struct dlist *h, struct dlist *n)
{
	n->next = h->next;
	n->prev = h;
	h->next->prev = n;
	h->next = n;
}

static void dl_add_tail(struct dlist *h, struct dlist *n)
{
	dl_add_head(h->prev, n);
}

static void dl_del(struct dlist *n)
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

/* -- Counters -------------------------------------------------------------- */

static uint64_t ld(_Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

/* One writer at a time (the stripe lock holder): a plain load and store, no
 * locked instruction. */
static void add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, ld(c) + n, memory_order_relaxed);
}

static void sub(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, ld(c) - n, memory_order_relaxed);
}

/* -- Hash: SipHash-1-3 ----------------------------------------------------- */

static inline uint64_t rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

#define SIPROUND do {                                                   \
	v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);       \
	v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;                          \
	v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;                          \
	v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);       \
} while (0)

/* Keyed, so clients cannot pick keys that all land in one chain. */
static uint64_t siphash13(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n)
{
	uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
	uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
	uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
	uint64_t v3 = k1 ^ 0x7465646279746573ULL;
	uint64_t m, b = (uint64_t)n << 56;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&m, p + i, 8);
		m = le64toh(m);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; i + j < n; j++)
		b |= (uint64_t)p[i + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static struct stripe *key_init(rl_dict *d, struct key *k, const void *p,
			       size_t len)
{
	k->p = len ? p : (const uint8_t *)"";
	k->len = (uint32_t)len;
	k->hash = siphash13(d->k0, d->k1, k->p, len);
	/* Top bits pick the stripe, bottom bits the bucket: independent. */
	return &d->stripes[d->bits ? k->hash >> (64 - d->bits) : 0];
}

static bool key_eq(const struct entry *e, const struct key *k)
{
	return e->hash == k->hash && e->klen == k->len &&
	       (!k->len || !memcmp(e->key, k->p, k->len));
}

/* -- Blobs --------------------------------------------------------------- */

static rl_blob *blob_alloc(size_t cap)
{
	rl_blob *b = rl_malloc(sizeof(*b) + cap);

	if (!b)
		return NULL;
	b->refs = 1;
	b->len = 0;
	return b;
}

rl_blob *rl_blob_new(const void *p, size_t len)
{
	rl_blob *b;

	if (len > RL_DICT_VAL_MAX)
		return NULL;
	b = blob_alloc(len + 1);
	if (!b)
		return NULL;
	if (len)
		memcpy(b->data, p, len);
	b->data[len] = 0;
	b->len = (uint32_t)len;
	return b;
}

void rl_blob_ref(rl_blob *b)
{
	__atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
}

void rl_blob_unref(rl_blob *b)
{
	/* Release our reads of the bytes to whoever frees or reuses them. */
	if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(b);
}

/* Only the dictionary's reference left: nobody else can see the bytes, and
 * nobody can get a new reference without the stripe lock we hold. */
static bool blob_unshared(rl_blob *b)
{
	return __atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) == 1;
}

/* -- Tables -------------------------------------------------------------- */

static struct entry **bucket(const struct table *t, uint64_t hash)
{
	return &t->b[hash & t->mask];
}

static struct entry *find(struct stripe *s, const struct key *k)
{
	for (int i = 0; i < 2 && s->t[i].b; i++)
		for (struct entry *e = *bucket(&s->t[i], k->hash); e; e = e->next)
			if (key_eq(e, k))
				return e;
	return NULL;
}

static void chain_unlink(struct stripe *s, struct entry *e)
{
	for (int i = 0; i < 2 && s->t[i].b; i++)
		for (struct entry **pp = bucket(&s->t[i], e->hash); *pp;
		     pp = &(*pp)->next)
			if (*pp == e) {
				*pp = e->next;
				return;
			}
}

static void chain_insert(struct stripe *s, struct entry *e)
{
	struct entry **pp = bucket(&s->t[s->t[1].b ? 1 : 0], e->hash);

	e->next = *pp;
	*pp = e;
}

/* Move up to n chains (looking at no more than 10n empty buckets) from t[0]
 * to t[1]; finish the resize when t[0] is empty. */
static void move_some(struct stripe *s, unsigned n)
{
	struct table *from = &s->t[0], *to = &s->t[1];
	unsigned empty = n * 10;

	while (n && s->move_pos <= from->mask) {
		struct entry *e = from->b[s->move_pos];

		from->b[s->move_pos++] = NULL;
		if (!e) {
			if (!--empty)
				break;
			continue;
		}
		while (e) {
			struct entry *next = e->next;
			struct entry **pp = bucket(to, e->hash);

			e->next = *pp;
			*pp = e;
			e = next;
		}
		n--;
	}
	if (s->move_pos > from->mask) {
		free(from->b);
		*from = *to;
		to->b = NULL;
		to->mask = 0;
		s->move_pos = 0;
	}
}

static void resize_start(struct stripe *s, uint64_t nbuckets)
{
	struct entry **b;

	if (s->t[1].b || nbuckets == s->t[0].mask + 1)
		return;
	/* No memory for a bigger table: chains get longer, nothing fails. */
	b = rl_calloc(nbuckets, sizeof(*b));
	if (!b)
		return;
	s->t[1].b = b;
	s->t[1].mask = nbuckets - 1;
	s->move_pos = 0;
}

static void maybe_grow(struct stripe *s)
{
	uint64_t n = s->t[0].mask + 1;

	if (!s->t[1].b && ld(&s->count) > n && n < MAX_BUCKETS)
		resize_start(s, n * 2);
}

static void maybe_shrink(struct stripe *s)
{
	uint64_t n = s->t[0].mask + 1, count = ld(&s->count), want = MIN_BUCKETS;

	if (s->t[1].b || n <= MIN_BUCKETS || count * 8 >= n)
		return;
	while (want < count * 2)
		want *= 2;
	resize_start(s, want);
}

static void stripe_lock(struct stripe *s)
{
	pthread_mutex_lock(&s->lock);
	/* Every visit carries a resize along a little. */
	if (s->t[1].b)
		move_some(s, 1);
}

static void stripe_unlock(struct stripe *s)
{
	pthread_mutex_unlock(&s->lock);
}

/* -- Entries (stripe lock held) ------------------------------------------ */

static uint64_t charge_of(size_t klen, size_t vcap)
{
	return sizeof(struct entry) + klen + sizeof(rl_blob) + vcap;
}

static uint64_t charge(const struct entry *e)
{
	return charge_of(e->klen, e->vcap);
}

static bool expired(const struct entry *e, int64_t now)
{
	return e->expire_at && e->expire_at <= now;
}

static uint64_t next_cas(rl_dict *d, struct stripe *s)
{
	/* Unique across stripes without a shared counter: the stripe index
	 * sits in the low bits.  Never 0. */
	return (++s->cas_seq << d->bits) | s->idx;
}

static struct entry *entry_new(const struct key *k)
{
	struct entry *e = rl_malloc(sizeof(*e) + k->len);

	if (!e)
		return NULL;
	memset(e, 0, sizeof(*e));
	e->hash = k->hash;
	e->klen = k->len;
	memcpy(e->key, k->p, k->len);
	return e;
}

/* e has its value: make it visible. */
static void entry_link(struct stripe *s, struct entry *e)
{
	chain_insert(s, e);
	dl_add_head(&s->lru, &e->lru);
	e->lru_seq = ++s->lru_clock;
	add(&s->count, 1);
	add(&s->bytes, charge(e));
	maybe_grow(s);
}

static void entry_drop(struct stripe *s, struct entry *e)
{
	chain_unlink(s, e);
	dl_del(&e->lru);
	if (e->expire_at) {
		dl_del(&e->ttl);
		sub(&s->nttl, 1);
	}
	sub(&s->count, 1);
	sub(&s->bytes, charge(e));
	/* Readers' references keep the bytes; ours ends here. */
	rl_blob_unref(e->val);
	free(e);
}

/* e takes over the caller's reference on b. */
static void entry_replace(struct stripe *s, struct entry *e, rl_blob *b,
			  uint32_t cap)
{
	sub(&s->bytes, charge(e));
	rl_blob_unref(e->val);
	e->val = b;
	e->vcap = cap;
	add(&s->bytes, charge(e));
}

static void ttl_set(struct stripe *s, struct entry *e, int64_t at)
{
	if (at && !e->expire_at) {
		dl_add_tail(&s->ttl, &e->ttl);
		add(&s->nttl, 1);
	} else if (!at && e->expire_at) {
		dl_del(&e->ttl);
		sub(&s->nttl, 1);
	}
	e->expire_at = at;
}

static void lru_touch(struct stripe *s, struct entry *e)
{
	/* Everything ahead of e was put there after it, so the clock bounds
	 * its distance from the head.  In the front half, eviction is far
	 * off: leave it, and its neighbours' cache lines, alone. */
	if (s->lru_clock - e->lru_seq < ld(&s->count) / 2)
		return;
	dl_del(&e->lru);
	dl_add_head(&s->lru, &e->lru);
	e->lru_seq = ++s->lru_clock;
}

/* The live entry for k, deleting it instead if its time has come. */
static struct entry *find_live(struct stripe *s, const struct key *k,
			       int64_t now)
{
	struct entry *e = find(s, k);

	if (e && expired(e, now)) {
		entry_drop(s, e);
		add(&s->expired, 1);
		return NULL;
	}
	return e;
}

/* -- Memory budget ------------------------------------------------------- */

/* Drop one entry other than keep: an expired one near the head of the TTL
 * list if there is one (cheap to spot), else the least recently used. */
static bool evict_one(struct stripe *s, struct entry *keep, int64_t now)
{
	struct dlist *n = s->ttl.next;

	for (int i = 0; i < EVICT_PEEK && n != &s->ttl; i++, n = n->next) {
		struct entry *e = entry_of(n, ttl);

		if (e != keep && expired(e, now)) {
			entry_drop(s, e);
			add(&s->expired, 1);
			return true;
		}
	}
	for (n = s->lru.prev; n != &s->lru; n = n->prev) {
		struct entry *e = entry_of(n, lru);

		if (e == keep)
			continue;
		add(expired(e, now) ? &s->expired : &s->evictions, 1);
		entry_drop(s, e);
		return true;
	}
	return false;
}

static bool pool_take(rl_dict *d, struct stripe *s, uint64_t want)
{
	uint64_t p = atomic_load_explicit(&d->pool, memory_order_relaxed), x;

	do {
		if (p < want)
			return false;
		/* A chunk at a time, so small writes rarely come back. */
		x = want < d->chunk ? d->chunk : want;
		if (x > p)
			x = p;
	} while (!atomic_compare_exchange_weak_explicit(&d->pool, &p, p - x,
			memory_order_relaxed, memory_order_relaxed));
	add(&s->budget, x);
	return true;
}

/* A stripe above its share that has shed entries hands spare budget back
 * to the pool, so budget follows the data.  Stripe lock held. */
static void budget_trim(rl_dict *d, struct stripe *s)
{
	uint64_t budget = ld(&s->budget), bytes = ld(&s->bytes), keep;

	if (!d->limit || budget <= d->share || budget - bytes <= 2 * d->chunk)
		return;
	keep = bytes + d->chunk > d->share ? bytes + d->chunk : d->share;
	if (keep >= budget)
		return;
	atomic_store_explicit(&s->budget, keep, memory_order_relaxed);
	atomic_fetch_add_explicit(&d->pool, budget - keep, memory_order_relaxed);
}

/* A write in progress.  Writes run under their stripe's lock; when the
 * stripe lacks budget they return -EAGAIN, and write_op fetches budget from
 * other stripes with no lock held (so no two stripe locks are ever held)
 * and runs the write again from the lookup. */
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

/* Make room in w->s for an entry changing from old to new charged bytes
 * (old = 0 for a new one).  keep is the entry being changed, never
 * evicted.  0, -EAGAIN (w->want set) or -ENOMEM. */
static int fit(struct wctx *w, uint64_t old, uint64_t new, struct entry *keep)
{
	rl_dict *d = w->d;
	struct stripe *s = w->s;

	if (!d->limit || new <= old)
		return 0;
	if (new > d->limit)
		return -ENOMEM;
	for (;;) {
		uint64_t bytes = ld(&s->bytes), budget = ld(&s->budget) + w->stolen;

		if (bytes + new <= budget + old)
			return 0;
		w->want = bytes + new - budget - old;
		if (pool_take(d, s, w->want))
			continue;
		/* Before evicting here, borrow what other stripes own and do
		 * not use: while the dictionary is far from its limit nothing
		 * should be evicted.  Evicting in other stripes too only if
		 * evicting all of s would not do, or s lent out its share. */
		w->big = new > budget;
		w->spare_only = !w->big && budget >= d->share;
		if (!w->no_steal)
			return -EAGAIN;
		if (evict_one(s, keep, w->now))
			continue;
		return -ENOMEM;
	}
}

/* Stripe v gives up to x of its budget, evicting for it if evict is set;
 * with floor, not below its share.  Called with no lock held. */
static uint64_t give(rl_dict *d, struct stripe *v, uint64_t x, bool evict,
		     bool floor, int64_t now)
{
	uint64_t min = floor ? d->share : 0, budget, bytes;

	/* Unlocked peek: skip stripes with nothing to give. */
	budget = ld(&v->budget);
	if (budget <= min || (!evict && budget == ld(&v->bytes)))
		return 0;
	stripe_lock(v);
	budget = ld(&v->budget);
	if (budget <= min) {
		stripe_unlock(v);
		return 0;
	}
	if (x > budget - min)
		x = budget - min;
	while (evict && ld(&v->bytes) + x > budget && evict_one(v, NULL, now))
		;
	bytes = ld(&v->bytes);
	if (bytes + x > budget)
		x = budget - bytes;
	atomic_store_explicit(&v->budget, budget - x, memory_order_relaxed);
	stripe_unlock(v);
	return x;
}

/* Collect w->want of budget from other stripes.  Spare budget (what a
 * stripe owns but does not use) costs nobody anything, so it goes first:
 * a little from each stripe, then whatever any stripe can spare.  Only then
 * is room made by evicting, a little from each so that no one stripe's keys
 * pay for a big value; a stripe winning back its share evicts only in
 * stripes above theirs.  Taking spare greedily from a few stripes would
 * leave them nothing, and their next small write would have to evict the
 * big value to win its share back while the dictionary is nearly empty.
 * No lock held. */
static uint64_t steal(struct wctx *w)
{
	rl_dict *d = w->d;
	unsigned n = d->nstripes, start;
	uint64_t want = w->want < d->chunk ? d->chunk : w->want, got = 0;

	if (n == 1)
		return 0;
	start = atomic_fetch_add_explicit(&d->steal_next, 1, memory_order_relaxed);
	for (int pass = 0; pass < 4 && got < want; pass++) {
		bool evict = pass >= 2;

		if (evict && w->spare_only)
			break;
		uint64_t per = pass == 1 ? want - got : (want - got) / (n - 1) + 1;
		uint64_t got0 = got;

		if (per < d->chunk)
			per = d->chunk;
		for (unsigned i = 0; i < n && got < want; i++) {
			struct stripe *v = &d->stripes[(start + i) & (n - 1)];
			uint64_t x = want - got < per ? want - got : per;

			if (v != w->s)
				got += give(d, v, x, evict, evict && !w->big,
					    w->now);
		}
		if (evict && got == got0)
			break;
	}
	return got;
}

static int write_op(struct wctx *w, int (*op)(struct wctx *w, void *arg),
		    void *arg)
{
	uint64_t got;
	int ret;

	for (;;) {
		stripe_lock(w->s);
		ret = op(w, arg);
		if (ret != -EAGAIN && w->stolen) {
			add(&w->s->budget, w->stolen);
			w->stolen = 0;
		}
		stripe_unlock(w->s);
		if (ret != -EAGAIN || ++w->tries > WRITE_TRIES)
			break;
		got = steal(w);
		w->stolen += got;
		/* One try at winning back a share; after that, or when nobody
		 * had anything, make room locally. */
		if (!got || !w->big || w->tries == WRITE_TRIES)
			w->no_steal = true;
	}
	if (w->stolen) {
		/* Gave up (no room even so): the budget stays in the stripe. */
		stripe_lock(w->s);
		add(&w->s->budget, w->stolen);
		stripe_unlock(w->s);
	}
	return ret == -EAGAIN ? -ENOMEM : ret;
}

static void wctx_init(struct wctx *w, rl_dict *d, const void *key,
		      size_t klen, int64_t now)
{
	memset(w, 0, sizeof(*w));
	w->d = d;
	w->now = now;
	w->s = key_init(d, &w->k, key, klen);
}

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

static void entries_free(struct dlist *h)
{
	struct dlist *n = h->next;

	while (n != h) {
		struct entry *e = entry_of(n, lru);

		n = n->next;
		rl_blob_unref(e->val);
		free(e);
	}
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

/* -- Strings ------------------------------------------------------------- */

struct set_arg {
	rl_blob *b;             /* ours until stored, then NULL */
	int64_t at;
	int flags;
	uint32_t flags32;
	uint64_t cas_expect;
	rl_blob **old;
};

static void old_out(struct entry *e, rl_blob **old)
{
	if (!old)
		return;
	*old = e ? e->val : NULL;
	if (e)
		rl_blob_ref(e->val);
}

static int set_op(struct wctx *w, void *arg)
{
	struct set_arg *a = arg;
	struct stripe *s = w->s;
	struct entry *e = find_live(s, &w->k, w->now);
	int64_t at = a->at;
	int ret = 0;

	if ((a->flags & RL_DICT_NX) && e)
		ret = -EEXIST;
	else if ((a->flags & RL_DICT_XX) && !e)
		ret = -ENOENT;
	else if (a->cas_expect && !e)
		ret = -ENOENT;
	else if (a->cas_expect && e->cas != a->cas_expect)
		ret = -EEXIST;
	if (ret) {
		old_out(e, a->old);
		return ret;
	}
	if (e && (a->flags & RL_DICT_KEEPTTL))
		at = e->expire_at;
	if (at < 0 || (at && at <= w->now)) {
		/* Stored and expired at once. */
		old_out(e, a->old);
		if (e) {
			entry_drop(s, e);
			budget_trim(w->d, s);
		}
		return 0;
	}
	ret = fit(w, e ? charge(e) : 0, charge_of(w->k.len, a->b->len + 1), e);
	if (ret)
		return ret;
	if (e) {
		old_out(e, a->old);
		entry_replace(s, e, a->b, a->b->len + 1);
		lru_touch(s, e);
	} else {
		e = entry_new(&w->k);
		if (!e)
			return -ENOMEM;
		old_out(NULL, a->old);
		e->val = a->b;
		e->vcap = a->b->len + 1;
		entry_link(s, e);
	}
	a->b = NULL;
	ttl_set(s, e, at);
	e->flags32 = a->flags32;
	e->cas = next_cas(w->d, s);
	add(&s->sets, 1);
	return 0;
}

int rl_dict_set_ex(rl_dict *d, const void *key, size_t klen, const void *val,
		   size_t vlen, int64_t expire_at_ms, int flags,
		   uint32_t flags32, uint64_t cas_expect, int64_t now_ms,
		   rl_blob **old)
{
	struct set_arg a = {
		.at = expire_at_ms, .flags = flags, .flags32 = flags32,
		.cas_expect = cas_expect, .old = old,
	};
	struct wctx w;
	int ret;

	if (old)
		*old = NULL;
	if (klen > RL_DICT_KEY_MAX || vlen > RL_DICT_VAL_MAX)
		return -E2BIG;
	if (d->limit && charge_of(klen, vlen + 1) > d->limit)
		return -ENOMEM;
	/* Copy outside the lock. */
	a.b = rl_blob_new(val, vlen);
	if (!a.b)
		return -ENOMEM;
	wctx_init(&w, d, key, klen, now_ms);
	ret = write_op(&w, set_op, &a);
	rl_blob_unref(a.b);
	return ret;
}

int rl_dict_set(rl_dict *d, const void *key, size_t klen, const void *val,
		size_t vlen, int64_t expire_at_ms, int flags, int64_t now_ms,
		rl_blob **old)
{
	return rl_dict_set_ex(d, key, klen, val, vlen, expire_at_ms, flags, 0,
			      0, now_ms, old);
}

int rl_dict_get_cas(rl_dict *d, const void *key, size_t klen, int64_t now_ms,
		    rl_blob **out, uint64_t *cas, uint32_t *flags32,
		    int64_t *expire_at_ms)
{
	struct stripe *s;
	struct entry *e;
	struct key k;

	if (out)
		*out = NULL;
	if (klen > RL_DICT_KEY_MAX)
		return -ENOENT;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	e = find_live(s, &k, now_ms);
	if (!e) {
		add(&s->misses, 1);
		stripe_unlock(s);
		return -ENOENT;
	}
	add(&s->hits, 1);
	lru_touch(s, e);
	if (out) {
		rl_blob_ref(e->val);
		*out = e->val;
	}
	if (cas)
		*cas = e->cas;
	if (flags32)
		*flags32 = e->flags32;
	if (expire_at_ms)
		*expire_at_ms = e->expire_at;
	stripe_unlock(s);
	return 0;
}

/* Lookups this many at a time: enough to keep the misses in flight. */
enum { PREFETCH_GROUP = 16 };

int rl_dict_prefetch(rl_dict *d, const uint8_t *const *keys,
		     const uint32_t *lens, int n)
{
	struct key k[PREFETCH_GROUP];
	struct stripe *s[PREFETCH_GROUP];
	int found = 0;

	for (int base = 0; base < n; base += PREFETCH_GROUP) {
		int m = n - base < PREFETCH_GROUP ? n - base : PREFETCH_GROUP;

		/* 1: hash every key and start the loads of their bucket
		 * slots.  The table pointer is read without the lock: a
		 * stale one only wastes the prefetch (prefetches do not
		 * fault). */
		for (int i = 0; i < m; i++) {
			const struct table *t;

			if (lens[base + i] > RL_DICT_KEY_MAX) {
				s[i] = NULL;
				continue;
			}
			s[i] = key_init(d, &k[i], keys[base + i], lens[base + i]);
			t = &s[i]->t[0];
			__builtin_prefetch(&__atomic_load_n(&t->b, __ATOMIC_RELAXED)
				[k[i].hash & __atomic_load_n(&t->mask, __ATOMIC_RELAXED)]);
		}
		/* 2: under each stripe's lock (another worker may free what
		 * the table points to otherwise), read the slot, now arriving,
		 * and start the load of the first entry of its chain. */
		for (int i = 0; i < m; i++) {
			if (!s[i])
				continue;
			pthread_mutex_lock(&s[i]->lock);
			__builtin_prefetch(*bucket(&s[i]->t[0], k[i].hash));
			pthread_mutex_unlock(&s[i]->lock);
		}
		/* 3: find the entries, now arriving, and start the loads of
		 * their values. */
		for (int i = 0; i < m; i++) {
			struct entry *e;

			if (!s[i])
				continue;
			pthread_mutex_lock(&s[i]->lock);
			e = find(s[i], &k[i]);
			if (e) {
				__builtin_prefetch(e->val);
				__builtin_prefetch((char *)e->val + 64);
				found++;
			}
			pthread_mutex_unlock(&s[i]->lock);
		}
	}
	return found;
}

int rl_dict_get(rl_dict *d, const void *key, size_t klen, int64_t now_ms,
		rl_blob **out)
{
	return rl_dict_get_cas(d, key, klen, now_ms, out, NULL, NULL, NULL);
}

int rl_dict_del(rl_dict *d, const void *key, size_t klen, int64_t now_ms)
{
	struct stripe *s;
	struct entry *e;
	struct key k;

	if (klen > RL_DICT_KEY_MAX)
		return 0;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	e = find_live(s, &k, now_ms);
	if (e) {
		entry_drop(s, e);
		maybe_shrink(s);
		budget_trim(d, s);
	}
	stripe_unlock(s);
	return e != NULL;
}

int rl_dict_exists(rl_dict *d, const void *key, size_t klen, int64_t now_ms)
{
	struct stripe *s;
	struct key k;
	int ret;

	if (klen > RL_DICT_KEY_MAX)
		return 0;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	ret = find_live(s, &k, now_ms) != NULL;
	stripe_unlock(s);
	return ret;
}

/* -- Expiry -------------------------------------------------------------- */

int64_t rl_dict_ttl_ms(rl_dict *d, const void *key, size_t klen,
		       int64_t now_ms)
{
	struct stripe *s;
	struct entry *e;
	struct key k;
	int64_t ret;

	if (klen > RL_DICT_KEY_MAX)
		return -2;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	e = find_live(s, &k, now_ms);
	ret = !e ? -2 : !e->expire_at ? -1 : e->expire_at - now_ms;
	stripe_unlock(s);
	return ret;
}

int rl_dict_expire_at(rl_dict *d, const void *key, size_t klen, int64_t at_ms,
		      int64_t now_ms)
{
	struct stripe *s;
	struct entry *e;
	struct key k;

	if (klen > RL_DICT_KEY_MAX)
		return 0;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	e = find_live(s, &k, now_ms);
	if (e && (at_ms < 0 || (at_ms && at_ms <= now_ms))) {
		/* Like Redis: a deletion, not counted as an expiry. */
		entry_drop(s, e);
		budget_trim(d, s);
		stripe_unlock(s);
		return 1;
	}
	if (e)
		ttl_set(s, e, at_ms);
	stripe_unlock(s);
	return e != NULL;
}

int rl_dict_persist(rl_dict *d, const void *key, size_t klen, int64_t now_ms)
{
	struct stripe *s;
	struct entry *e;
	struct key k;
	int ret = 0;

	if (klen > RL_DICT_KEY_MAX)
		return 0;
	s = key_init(d, &k, key, klen);
	stripe_lock(s);
	e = find_live(s, &k, now_ms);
	if (e && e->expire_at) {
		ttl_set(s, e, 0);
		ret = 1;
	}
	stripe_unlock(s);
	return ret;
}

int rl_dict_touch(rl_dict *d, const void *key, size_t klen,
		  int64_t expire_at_ms, int64_t now_ms)
{
	return rl_dict_expire_at(d, key, klen, expire_at_ms, now_ms);
}

/* -- Read-modify-write --------------------------------------------------- */

/* A value about to change: either the stored blob itself (unshared, grown
 * if need be), or a new blob the caller fills.  e is NULL until then for a
 * key being created. */
struct newval {
	struct entry *e;
	rl_blob *b;
	uint32_t cap;
	bool inplace;
	bool created;
};

/* Room for len bytes with headroom, so repeated appends copy O(n) in all. */
static uint64_t roomy(uint64_t len)
{
	uint64_t cap = len < (1 << 20) ? len * 2 : len + (1 << 20);

	return cap > (uint64_t)RL_DICT_VAL_MAX + 1 ? (uint64_t)RL_DICT_VAL_MAX + 1
						   : cap;
}

/* Get a blob that can hold newlen bytes for e (NULL: create w->k).  min_cap
 * is the capacity to allocate at least; greedy adds headroom when an
 * existing value grows.  Nothing is changed if this fails. */
static int value_prepare(struct wctx *w, struct entry *e, size_t newlen,
			 size_t min_cap, bool greedy, struct newval *v)
{
	struct stripe *s = w->s;
	uint64_t cap = newlen + 1 > min_cap ? newlen + 1 : min_cap;
	int ret;

	memset(v, 0, sizeof(*v));
	v->e = e;
	if (e && blob_unshared(e->val) && e->vcap >= newlen + 1) {
		v->b = e->val;
		v->cap = e->vcap;
		v->inplace = true;
		return 0;
	}
	if (e && greedy && newlen + 1 > e->vcap) {
		cap = roomy(newlen + 1);
		if (w->d->limit && charge_of(w->k.len, cap) > w->d->limit)
			cap = newlen + 1;
	}
	ret = fit(w, e ? charge(e) : 0, charge_of(w->k.len, cap), e);
	if (ret)
		return ret;
	if (e && blob_unshared(e->val)) {
		/* Ours alone: grow it where it is, realloc copies if it must. */
		rl_blob *b = rl_realloc(e->val, sizeof(*b) + cap);

		if (!b)
			return -ENOMEM;
		sub(&s->bytes, charge(e));
		e->val = b;
		e->vcap = (uint32_t)cap;
		add(&s->bytes, charge(e));
		v->b = b;
		v->cap = (uint32_t)cap;
		v->inplace = true;
		return 0;
	}
	v->b = blob_alloc(cap);
	if (!v->b)
		return -ENOMEM;
	v->cap = (uint32_t)cap;
	if (!e) {
		v->e = entry_new(&w->k);
		if (!v->e) {
			free(v->b);
			return -ENOMEM;
		}
		v->created = true;
	}
	return 0;
}

/* The bytes are in v->b: publish them, keeping expiry and flags. */
static void value_commit(struct wctx *w, struct newval *v, size_t newlen)
{
	struct stripe *s = w->s;
	struct entry *e = v->e;

	v->b->len = (uint32_t)newlen;
	v->b->data[newlen] = 0;
	if (v->created) {
		e->val = v->b;
		e->vcap = v->cap;
		entry_link(s, e);
	} else {
		if (!v->inplace)
			entry_replace(s, e, v->b, v->cap);
		lru_touch(s, e);
	}
	e->cas = next_cas(w->d, s);
	add(&s->sets, 1);
}

/* The value's current bytes, or none. */
static const uint8_t *cur_data(const struct entry *e, size_t *len)
{
	*len = e ? e->val->len : 0;
	return e ? e->val->data : NULL;
}

/* Redis's rule: what "%lld" prints, and nothing else. */
static int parse_i64(const uint8_t *p, size_t n, int64_t *out)
{
	uint64_t v = 0;
	size_t i = 0;
	bool neg;

	if (n == 1 && p[0] == '0') {
		*out = 0;
		return 0;
	}
	if (n == 0 || n > 20)
		return -EINVAL;
	neg = p[0] == '-';
	i = neg;
	if (i == n || p[i] < '1' || p[i] > '9')
		return -EINVAL;
	for (; i < n; i++) {
		unsigned dgt = p[i] - '0';

		if (dgt > 9 || v > (UINT64_MAX - dgt) / 10)
			return -EINVAL;
		v = v * 10 + dgt;
	}
	if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
		return -EINVAL;
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
}

/* memcached's rule: 1 to 20 digits, leading zeros allowed, fits 64 bits. */
static int parse_u64(const uint8_t *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned dgt = p[i] - '0';

		if (dgt > 9 || v > (UINT64_MAX - dgt) / 10)
			return -EINVAL;
		v = v * 10 + dgt;
	}
	*out = v;
	return 0;
}

static size_t fmt_u64(char *buf, uint64_t v)
{
	char tmp[20];
	size_t n = 0, i = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		buf[i++] = tmp[--n];
	return i;
}

static size_t fmt_i64(char *buf, int64_t v)
{
	if (v >= 0)
		return fmt_u64(buf, (uint64_t)v);
	buf[0] = '-';
	return 1 + fmt_u64(buf + 1, 0 - (uint64_t)v);
}

/* Store the number text in buf as e's value (or create w->k). */
static int num_store(struct wctx *w, struct entry *e, const char *buf,
		     size_t len)
{
	struct newval v;
	int ret = value_prepare(w, e, len, NUM_CAP, false, &v);

	if (ret)
		return ret;
	memcpy(v.b->data, buf, len);
	value_commit(w, &v, len);
	return 0;
}

struct incr_arg {
	int64_t delta;
	int64_t *result;
};

static int incr_op(struct wctx *w, void *arg)
{
	struct incr_arg *a = arg;
	struct entry *e = find_live(w->s, &w->k, w->now);
	int64_t cur = 0, res;
	char buf[NUM_CAP];
	int ret;

	if (e && (ret = parse_i64(e->val->data, e->val->len, &cur)))
		return ret;
	if (__builtin_add_overflow(cur, a->delta, &res))
		return -ERANGE;
	ret = num_store(w, e, buf, fmt_i64(buf, res));
	if (!ret && a->result)
		*a->result = res;
	return ret;
}

int rl_dict_incr(rl_dict *d, const void *key, size_t klen, int64_t delta,
		 int64_t now_ms, int64_t *result)
{
	struct incr_arg a = { .delta = delta, .result = result };
	struct wctx w;

	if (klen > RL_DICT_KEY_MAX)
		return -E2BIG;
	wctx_init(&w, d, key, klen, now_ms);
	return write_op(&w, incr_op, &a);
}

struct incr_u64_arg {
	uint64_t delta;
	int decr;
	uint64_t *result;
};

static int incr_u64_op(struct wctx *w, void *arg)
{
	struct incr_u64_arg *a = arg;
	struct entry *e = find_live(w->s, &w->k, w->now);
	uint64_t cur, res;
	char buf[NUM_CAP];
	int ret;

	if (!e)
		return -ENOENT;
	if ((ret = parse_u64(e->val->data, e->val->len, &cur)))
		return ret;
	if (a->decr)
		res = cur > a->delta ? cur - a->delta : 0;
	else
		res = cur + a->delta;      /* wraps, as memcached does */
	ret = num_store(w, e, buf, fmt_u64(buf, res));
	if (!ret && a->result)
		*a->result = res;
	return ret;
}

int rl_dict_incr_u64(rl_dict *d, const void *key, size_t klen,
		     uint64_t delta, int decr, int64_t now_ms,
		     uint64_t *result)
{
	struct incr_u64_arg a = { .delta = delta, .decr = decr,
				  .result = result };
	struct wctx w;

	if (klen > RL_DICT_KEY_MAX)
		return -ENOENT;
	wctx_init(&w, d, key, klen, now_ms);
	return write_op(&w, incr_u64_op, &a);
}

struct append_arg {
	const uint8_t *p;
	size_t n;
	int prepend;
	int create;
	size_t *newlen;
};

static int append_op(struct wctx *w, void *arg)
{
	struct append_arg *a = arg;
	struct entry *e = find_live(w->s, &w->k, w->now);
	const uint8_t *src;
	struct newval v;
	size_t len, newlen;
	uint8_t *dst;
	int ret;

	if (!e && !a->create)
		return -ENOENT;
	src = cur_data(e, &len);
	if (a->n > RL_DICT_VAL_MAX - len)
		return -E2BIG;
	newlen = len + a->n;
	ret = value_prepare(w, e, newlen, 0, true, &v);
	if (ret)
		return ret;
	dst = v.b->data;
	if (v.inplace)
		src = dst;     /* realloc may have moved it */
	if (a->prepend) {
		if (len)
			memmove(dst + a->n, src, len);
		if (a->n)
			memcpy(dst, a->p, a->n);
	} else {
		if (len && src != dst)
			memcpy(dst, src, len);
		if (a->n)
			memcpy(dst + len, a->p, a->n);
	}
	value_commit(w, &v, newlen);
	if (a->newlen)
		*a->newlen = newlen;
	return 0;
}

int rl_dict_append(rl_dict *d, const void *key, size_t klen, const void *p,
		   size_t n, int prepend, int create, int64_t now_ms,
		   size_t *newlen)
{
	struct append_arg a = { .p = p, .n = n, .prepend = prepend,
				.create = create, .newlen = newlen };
	struct wctx w;

	if (klen > RL_DICT_KEY_MAX)
		return -E2BIG;
	if (n > RL_DICT_VAL_MAX)
		return -E2BIG;
	wctx_init(&w, d, key, klen, now_ms);
	return write_op(&w, append_op, &a);
}

struct setrange_arg {
	size_t off;
	const uint8_t *p;
	size_t n;
	size_t *newlen;
};

static int setrange_op(struct wctx *w, void *arg)
{
	struct setrange_arg *a = arg;
	struct entry *e = find_live(w->s, &w->k, w->now);
	const uint8_t *src;
	struct newval v;
	size_t len, newlen;
	uint8_t *dst;
	int ret;

	src = cur_data(e, &len);
	if (!a->n) {
		/* Redis: nothing to write changes nothing, not even size. */
		if (a->newlen)
			*a->newlen = len;
		return 0;
	}
	newlen = a->off + a->n > len ? a->off + a->n : len;
	ret = value_prepare(w, e, newlen, 0, newlen > len, &v);
	if (ret)
		return ret;
	dst = v.b->data;
	if (!v.inplace && len)
		memcpy(dst, src, len);
	if (a->off > len)
		memset(dst + len, 0, a->off - len);
	memcpy(dst + a->off, a->p, a->n);
	value_commit(w, &v, newlen);
	if (a->newlen)
		*a->newlen = newlen;
	return 0;
}

int rl_dict_setrange(rl_dict *d, const void *key, size_t klen, size_t off,
		     const void *p, size_t n, int64_t now_ms, size_t *newlen)
{
	struct setrange_arg a = { .off = off, .p = p, .n = n,
				  .newlen = newlen };
	struct wctx w;

	if (klen > RL_DICT_KEY_MAX)
		return -E2BIG;
	if (n && (off > RL_DICT_VAL_MAX || n > RL_DICT_VAL_MAX - off))
		return -E2BIG;
	wctx_init(&w, d, key, klen, now_ms);
	return write_op(&w, setrange_op, &a);
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
		budget_trim(d, s);
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
				entry_drop(s, e);
				add(&s->expired, 1);
				deleted++;
			} else {
				dl_del(&e->ttl);
				dl_add_tail(&s->ttl, &e->ttl);
			}
		}
		maybe_shrink(s);
		budget_trim(d, s);
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
