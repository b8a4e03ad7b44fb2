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
 *
 * This file holds the per-key paths.  Read-modify-write is in
 * rl_dict_rmw.c; creating, freeing and walking the whole dictionary in
 * rl_dict_scan.c; what they share in rl_dict_int.h.
 */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_dict_int.h"

#define MAX_BUCKETS ((size_t)1 << 32)
#define EVICT_PEEK 3            /* TTL-list entries checked for an expired victim */
#define WRITE_TRIES 6           /* rounds of taking budget from other stripes */

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
uint64_t rld_siphash13(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n)
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

static bool key_eq(const struct entry *e, const struct key *k)
{
	return e->hash == k->hash && e->klen == k->len &&
	       (!k->len || !memcmp(e->key, k->p, k->len));
}

/* -- Blobs --------------------------------------------------------------- */

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
	blob_put(b);
}

/* -- Tables -------------------------------------------------------------- */

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
static inline void move_some(struct stripe *s, unsigned n)
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

void rld_maybe_shrink(struct stripe *s)
{
	uint64_t n = s->t[0].mask + 1, count = ld(&s->count), want = MIN_BUCKETS;

	if (s->t[1].b || n <= MIN_BUCKETS || count * 8 >= n)
		return;
	while (want < count * 2)
		want *= 2;
	resize_start(s, want);
}

/* stripe_lock's slow path: the resize it carries along.  Out of line, as
 * the compiler chose when stripe_lock was in this file: inlined, the loop
 * would swell every locked path. */
__attribute__((noinline)) void rld_resize_step(struct stripe *s)
{
	move_some(s, 1);
}

/* -- Entries (stripe lock held) ------------------------------------------ */

struct entry *rld_entry_new(const struct key *k)
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
void rld_entry_link(struct stripe *s, struct entry *e)
{
	chain_insert(s, e);
	dl_add_head(&s->lru, &e->lru);
	e->lru_seq = ++s->lru_clock;
	add(&s->count, 1);
	add(&s->bytes, charge(e));
	maybe_grow(s);
}

void rld_entry_drop(struct stripe *s, struct entry *e)
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

void rld_lru_touch(struct stripe *s, struct entry *e)
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
struct entry *rld_find_live(struct stripe *s, const struct key *k,
			    int64_t now)
{
	struct entry *e = find(s, k);

	if (e && expired(e, now)) {
		rld_entry_drop(s, e);
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
			rld_entry_drop(s, e);
			add(&s->expired, 1);
			return true;
		}
	}
	for (n = s->lru.prev; n != &s->lru; n = n->prev) {
		struct entry *e = entry_of(n, lru);

		if (e == keep)
			continue;
		add(expired(e, now) ? &s->expired : &s->evictions, 1);
		rld_entry_drop(s, e);
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
void rld_budget_trim(rl_dict *d, struct stripe *s)
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

/* Make room in w->s for an entry changing from old to new charged bytes
 * (old = 0 for a new one).  keep is the entry being changed, never
 * evicted.  0, -EAGAIN (w->want set) or -ENOMEM. */
int rld_fit(struct wctx *w, uint64_t old, uint64_t new, struct entry *keep)
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

int rld_write_op(struct wctx *w, int (*op)(struct wctx *w, void *arg),
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
	struct entry *e = rld_find_live(s, &w->k, w->now);
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
			rld_entry_drop(s, e);
			rld_budget_trim(w->d, s);
		}
		return 0;
	}
	ret = rld_fit(w, e ? charge(e) : 0, charge_of(w->k.len, a->b->len + 1), e);
	if (ret)
		return ret;
	if (e) {
		old_out(e, a->old);
		entry_replace(s, e, a->b, a->b->len + 1);
		rld_lru_touch(s, e);
	} else {
		e = rld_entry_new(&w->k);
		if (!e)
			return -ENOMEM;
		old_out(NULL, a->old);
		e->val = a->b;
		e->vcap = a->b->len + 1;
		rld_entry_link(s, e);
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
	ret = rld_write_op(&w, set_op, &a);
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
	e = rld_find_live(s, &k, now_ms);
	if (!e) {
		add(&s->misses, 1);
		stripe_unlock(s);
		return -ENOENT;
	}
	add(&s->hits, 1);
	rld_lru_touch(s, e);
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
	e = rld_find_live(s, &k, now_ms);
	if (e) {
		rld_entry_drop(s, e);
		rld_maybe_shrink(s);
		rld_budget_trim(d, s);
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
	ret = rld_find_live(s, &k, now_ms) != NULL;
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
	e = rld_find_live(s, &k, now_ms);
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
	e = rld_find_live(s, &k, now_ms);
	if (e && (at_ms < 0 || (at_ms && at_ms <= now_ms))) {
		/* Like Redis: a deletion, not counted as an expiry. */
		rld_entry_drop(s, e);
		rld_budget_trim(d, s);
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
	e = rld_find_live(s, &k, now_ms);
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
