/* rl_dict_rmw.c: the dictionary's read-modify-write operations: incr, incr_u64, append/prepend, setrange. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_dict_int.h"

#define NUM_CAP 24              /* value capacity for counters: updates in place */

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
	ret = rld_fit(w, e ? charge(e) : 0, charge_of(w->k.len, cap), e);
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
		v->e = rld_entry_new(&w->k);
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
		rld_entry_link(s, e);
	} else {
		if (!v->inplace)
			entry_replace(s, e, v->b, v->cap);
		rld_lru_touch(s, e);
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

/* memcached's rule: 1 to 20 digits, leading zeros allowed, fits 64 bits;
 * then the spaces an earlier in-place decrement left (up to U64_TEXT_MAX
 * bytes in all: longer or other forms take the caller's strtoull path). */
#define U64_TEXT_MAX 64
static int parse_u64(const uint8_t *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	size_t digits = 0;

	if (n == 0 || n > U64_TEXT_MAX)
		return -EINVAL;
	while (digits < n && p[digits] != ' ') {
		unsigned dgt = p[digits] - '0';

		if (dgt > 9 || v > (UINT64_MAX - dgt) / 10 || digits == 20)
			return -EINVAL;
		v = v * 10 + dgt;
		digits++;
	}
	if (digits == 0)
		return -EINVAL;
	for (size_t i = digits; i < n; i++)
		if (p[i] != ' ')
			return -EINVAL;
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
	struct entry *e = rld_find_live(w->s, &w->k, w->now);
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
	return rld_write_op(&w, incr_op, &a);
}

struct incr_u64_arg {
	uint64_t delta;
	int decr;
	uint64_t *result;
};

static int incr_u64_op(struct wctx *w, void *arg)
{
	struct incr_u64_arg *a = arg;
	struct entry *e = rld_find_live(w->s, &w->k, w->now);
	uint64_t cur, res;
	char buf[U64_TEXT_MAX];
	size_t len;
	int ret;

	if (!e)
		return -ENOENT;
	if ((ret = parse_u64(e->val->data, e->val->len, &cur)))
		return ret;
	if (a->decr)
		res = cur > a->delta ? cur - a->delta : 0;
	else
		res = cur + a->delta;      /* wraps, as memcached does */
	/* memcached writes a number that fits over the old one, padded with
	 * spaces ("10" decr 1 reads back "9 "); clients see the same bytes. */
	len = fmt_u64(buf, res);
	if (len < e->val->len) {
		memset(buf + len, ' ', e->val->len - len);
		len = e->val->len;
	}
	ret = num_store(w, e, buf, len);
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
	return rld_write_op(&w, incr_u64_op, &a);
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
	struct entry *e = rld_find_live(w->s, &w->k, w->now);
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
	return rld_write_op(&w, append_op, &a);
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
	struct entry *e = rld_find_live(w->s, &w->k, w->now);
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
	return rld_write_op(&w, setrange_op, &a);
}
