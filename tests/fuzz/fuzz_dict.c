/* fuzz_dict.c: fuzzes core/rl_dict.c with random set/get/del/expire/persist/incr/append/setrange/flush/sweep/scan sequences, at small memory limits, against a model map: values, flags and expiry match, keys vanish only when the dict counts evictions, bytes stay under the limit. */
#include <errno.h>
#include <inttypes.h>

#include "fuzz_input.h"
#include "rl_dict.h"

#define NKEYS 16
#define VAL_MAX 16384           /* the model's values stay below this */
#define NOW0 1700000000000LL

struct mkey {
	int present;
	uint8_t val[VAL_MAX];
	size_t len;
	uint32_t flags32;
	int64_t at;             /* 0: no expiry */
};

struct model {
	rl_dict *d;
	size_t limit;
	int64_t now;
	uint64_t evictions;     /* the dict's counter at the last check */
	struct mkey keys[NKEYS];
	uint8_t buf[VAL_MAX];
};

/* Key i: lengths differ, so entries charge differently. */
static size_t key_name(int i, char *out)
{
	size_t n = (size_t)snprintf(out, 64, "key%d", i);

	while (n < (size_t)(4 + i * 3))
		out[n++] = (char)('a' + i);
	out[n] = 0;
	return n;
}

/* Present and its time has not come. */
static int live(const struct model *m, int i)
{
	const struct mkey *k = &m->keys[i];

	return k->present && (k->at == 0 || k->at > m->now);
}

static void forget_expired(struct model *m)
{
	for (int i = 0; i < NKEYS; i++)
		if (!live(m, i))
			m->keys[i].present = 0;
}

static void store(struct mkey *k, const uint8_t *p, size_t n, uint32_t flags32,
		  int64_t at)
{
	if (n)
		memmove(k->val, p, n);
	k->len = n;
	k->present = 1;
	k->flags32 = flags32;
	k->at = at;
}

/* -ENOMEM is a legal answer to any write only under a memory limit. */
static void check_nomem(const struct model *m, int ret, const char *op)
{
	FUZZ_CHECK(ret == -ENOMEM && m->limit, "%s: unexpected %d", op, ret);
}

static int64_t pick_at(struct fuzz_in *in, const struct model *m)
{
	uint8_t kind = in_u8(in) % 8;

	if (kind < 3)
		return 0;
	if (kind == 3)
		return -1;
	return m->now + (int64_t)(in_u8(in) % 64) - 8;  /* past, now or soon */
}

static size_t pick_val(struct fuzz_in *in, struct model *m)
{
	uint8_t kind = in_u8(in) % 8;
	size_t n, got;
	const uint8_t *p;

	if (kind == 0) {        /* a number, for incr */
		n = (size_t)snprintf((char *)m->buf, sizeof(m->buf), "%" PRId64,
				     (int64_t)in_u64(in) >> (in_u8(in) % 64));
		if (in_u8(in) % 4 == 0) {       /* as a shortening decr leaves it */
			size_t pad = in_u8(in) % 48;

			memset(m->buf + n, ' ', pad);
			n += pad;
		}
		return n;
	}
	n = kind < 6 ? in_u8(in) % 64 : in_u16(in) % 4096;
	p = in_bytes(in, n, &got);
	memcpy(m->buf, p, got);
	memset(m->buf + got, 'v', n - got);
	return n;
}

static void op_set(struct fuzz_in *in, struct model *m, int i, const char *key,
		   size_t klen)
{
	struct mkey *k = &m->keys[i];
	int flags = in_u8(in) % 8, is_live = live(m, i), want = 0, ret;
	int64_t at = pick_at(in, m);
	uint32_t flags32 = in_u8(in) % 3 ? 0 : in_u32(in);
	size_t n = pick_val(in, m);
	rl_blob *old = (rl_blob *)1;

	ret = rl_dict_set_ex(m->d, key, klen, m->buf, n, at, flags, flags32, 0,
			     m->now, &old);
	if ((flags & RL_DICT_NX) && is_live)
		want = -EEXIST;
	else if ((flags & RL_DICT_XX) && !is_live)
		want = -ENOENT;
	if (ret == 0 || ret == -EEXIST || ret == -ENOENT) {
		FUZZ_CHECK(!old == !is_live, "old is %p, key live %d",
			   (void *)old, is_live);
		if (old)
			FUZZ_CHECK(old->len == k->len &&
				   !memcmp(old->data, k->val, k->len),
				   "old value differs");
		rl_blob_unref(old);
	} else {
		FUZZ_CHECK(!old, "old set on error %d", ret);
	}
	if (want || ret != 0) {
		if (want != ret)
			check_nomem(m, ret, "set");
		return;
	}
	if ((flags & RL_DICT_KEEPTTL) && is_live)
		at = k->at;
	if (at < 0 || (at && at <= m->now))
		k->present = 0;         /* stored and expired at once */
	else
		store(k, m->buf, n, flags32, at);
}

static void op_get(struct model *m, int i, const char *key, size_t klen)
{
	rl_blob *b = NULL;
	int ret = rl_dict_get(m->d, key, klen, m->now, &b);

	FUZZ_CHECK(ret == (live(m, i) ? 0 : -ENOENT), "get %s: %d", key, ret);
	rl_blob_unref(b);       /* compared by check_all */
}

static void op_del(struct model *m, int i, const char *key, size_t klen)
{
	int ret = rl_dict_del(m->d, key, klen, m->now);

	FUZZ_CHECK(ret == live(m, i), "del %s: %d", key, ret);
	m->keys[i].present = 0;
}

static void op_expire(struct fuzz_in *in, struct model *m, int i,
		      const char *key, size_t klen)
{
	int64_t at = pick_at(in, m);
	int is_live = live(m, i), ret;

	ret = rl_dict_expire_at(m->d, key, klen, at, m->now);
	FUZZ_CHECK(ret == is_live, "expire_at %s: %d", key, ret);
	if (!is_live)
		return;
	if (at < 0 || (at && at <= m->now))
		m->keys[i].present = 0;
	else
		m->keys[i].at = at;
}

static void op_persist(struct model *m, int i, const char *key, size_t klen)
{
	int want = live(m, i) && m->keys[i].at, ret;

	ret = rl_dict_persist(m->d, key, klen, m->now);
	FUZZ_CHECK(ret == want, "persist %s: %d, want %d", key, ret, want);
	if (want)
		m->keys[i].at = 0;
}

static void op_ttl(struct model *m, int i, const char *key, size_t klen)
{
	int64_t want = !live(m, i) ? -2 : !m->keys[i].at ? -1
			: m->keys[i].at - m->now;
	int64_t ret = rl_dict_ttl_ms(m->d, key, klen, m->now);

	FUZZ_CHECK(ret == want, "ttl %s: %" PRId64 ", want %" PRId64, key, ret,
		   want);
}

/* Redis's rule, said independently of the parser: a canonical integer is
 * what printf would write for the number strtoll reads. */
static int canonical_i64(const struct mkey *k, int64_t *v)
{
	char s[32], back[32];
	char *end;

	/* A NUL inside would end strtoll's string early. */
	if (k->len == 0 || k->len > 20 || memchr(k->val, 0, k->len))
		return 0;
	memcpy(s, k->val, k->len);
	s[k->len] = 0;
	errno = 0;
	*v = strtoll(s, &end, 10);
	if (errno || *end)
		return 0;
	snprintf(back, sizeof(back), "%" PRId64, *v);
	return strcmp(s, back) == 0;
}

static void op_incr(struct fuzz_in *in, struct model *m, int i,
		    const char *key, size_t klen)
{
	struct mkey *k = &m->keys[i];
	int64_t delta = (int64_t)in_u64(in) >> (in_u8(in) % 64), cur = 0,
		sum = 0, res = 0;
	int want = 0, ret;
	char s[32];

	if (live(m, i) && !canonical_i64(k, &cur))
		want = -EINVAL;
	else if (__builtin_add_overflow(cur, delta, &sum))
		want = -ERANGE;
	ret = rl_dict_incr(m->d, key, klen, delta, m->now, &res);
	if (ret != want) {
		FUZZ_CHECK(want == 0, "incr %s: %d, want %d (value '%.*s')", key,
			   ret, want, (int)k->len, (const char *)k->val);
		check_nomem(m, ret, "incr");
		return;
	}
	if (want)
		return;
	FUZZ_CHECK(res == sum, "incr %s: %" PRId64 ", want %" PRId64, key, res,
		   sum);
	snprintf(s, sizeof(s), "%" PRId64, sum);
	if (live(m, i))
		store(k, (uint8_t *)s, strlen(s), k->flags32, k->at);
	else
		store(k, (uint8_t *)s, strlen(s), 0, 0);
}

/* memcached's rule: 1 to 20 digits that fit in 64 bits, then only spaces
 * (what a shortening update leaves), 64 bytes in all. */
static int digits_u64(const struct mkey *k, uint64_t *v)
{
	char s[80];
	char *end;
	size_t nd = 0;

	if (k->len == 0 || k->len > 64)
		return 0;
	while (nd < k->len && k->val[nd] >= '0' && k->val[nd] <= '9')
		nd++;
	if (nd == 0 || nd > 20)
		return 0;
	for (size_t j = nd; j < k->len; j++)
		if (k->val[j] != ' ')
			return 0;
	memcpy(s, k->val, nd);
	s[nd] = 0;
	errno = 0;
	*v = strtoull(s, &end, 10);
	return !errno;
}

static void op_incr_u64(struct fuzz_in *in, struct model *m, int i,
			const char *key, size_t klen)
{
	struct mkey *k = &m->keys[i];
	uint64_t delta = in_u64(in) >> (in_u8(in) % 64), cur = 0, res = 0, want_v;
	int decr = in_u8(in) % 2, want = 0, ret;
	char s[80];
	size_t n;

	if (!live(m, i))
		want = -ENOENT;
	else if (!digits_u64(k, &cur))
		want = -EINVAL;
	ret = rl_dict_incr_u64(m->d, key, klen, delta, decr, m->now, &res);
	if (ret != want) {
		FUZZ_CHECK(want == 0, "incr_u64 %s: %d, want %d", key, ret, want);
		check_nomem(m, ret, "incr_u64");
		return;
	}
	if (want)
		return;
	want_v = decr ? (cur > delta ? cur - delta : 0) : cur + delta;
	FUZZ_CHECK(res == want_v, "incr_u64 %s: %" PRIu64 ", want %" PRIu64,
		   key, res, want_v);
	n = (size_t)snprintf(s, sizeof(s), "%" PRIu64, want_v);
	if (n < k->len) {               /* padded to the old length */
		memset(s + n, ' ', k->len - n);
		n = k->len;
	}
	store(k, (uint8_t *)s, n, k->flags32, k->at);
}

static void op_append(struct fuzz_in *in, struct model *m, int i,
		      const char *key, size_t klen)
{
	struct mkey *k = &m->keys[i];
	int prepend = in_u8(in) % 2, create = in_u8(in) % 2, is_live = live(m, i);
	size_t n = pick_val(in, m), newlen = 0, cur = is_live ? k->len : 0;
	int ret;

	if (cur + n >= VAL_MAX)
		return;
	ret = rl_dict_append(m->d, key, klen, m->buf, n, prepend, create,
			     m->now, &newlen);
	if (!is_live && !create) {
		FUZZ_CHECK(ret == -ENOENT, "append %s absent: %d", key, ret);
		return;
	}
	if (ret) {
		check_nomem(m, ret, "append");
		return;
	}
	FUZZ_CHECK(newlen == cur + n, "append %s: newlen %zu, want %zu", key,
		   newlen, cur + n);
	if (!is_live)
		store(k, NULL, 0, 0, 0);
	if (prepend) {
		memmove(k->val + n, k->val, cur);
		memcpy(k->val, m->buf, n);
	} else {
		memcpy(k->val + cur, m->buf, n);
	}
	k->len = cur + n;
}

static void op_setrange(struct fuzz_in *in, struct model *m, int i,
			const char *key, size_t klen)
{
	struct mkey *k = &m->keys[i];
	size_t off = in_u16(in) % 1024, n = pick_val(in, m) % 256, newlen = 0;
	int is_live = live(m, i), ret;
	size_t cur = is_live ? k->len : 0, want_len;

	want_len = !n ? cur : off + n > cur ? off + n : cur;
	if (want_len >= VAL_MAX)
		return;
	ret = rl_dict_setrange(m->d, key, klen, off, m->buf, n, m->now, &newlen);
	if (ret) {
		check_nomem(m, ret, "setrange");
		return;
	}
	FUZZ_CHECK(newlen == want_len, "setrange %s: newlen %zu, want %zu", key,
		   newlen, want_len);
	if (!n)
		return;         /* creates and changes nothing */
	if (!is_live)
		store(k, NULL, 0, 0, 0);
	if (off > cur)
		memset(k->val + cur, 0, off - cur);
	memcpy(k->val + off, m->buf, n);
	k->len = want_len;
}

static void note_key(void *ud, const uint8_t *key, size_t klen)
{
	int *seen = ud;
	char name[64];

	for (int i = 0; i < NKEYS; i++)
		if (key_name(i, name) == klen && !memcmp(name, key, klen))
			seen[i] = 1;
}

/* Every key live for the whole scan is reported at least once. */
static void op_scan(struct fuzz_in *in, struct model *m)
{
	int seen[NKEYS] = { 0 }, calls = 0;
	unsigned count = in_u8(in) % 8;
	uint64_t cursor = 0;

	do {
		cursor = rl_dict_scan(m->d, cursor, count, m->now, note_key, seen);
		FUZZ_CHECK(++calls < 1 << 20, "scan does not end");
	} while (cursor);
	for (int i = 0; i < NKEYS; i++)
		FUZZ_CHECK(seen[i] || !live(m, i), "scan missed key %d", i);
}

/* Every model key is in the dict exactly as modelled, or gone by an
 * eviction the dict counted; then the model forgets the evicted ones.
 * Reading marks keys recently used, so the order starts at first: else
 * the LRU order would always end up as the key order. */
static void check_all(struct model *m, int first)
{
	rl_dict_stats st;
	uint64_t vanished = 0;
	char key[64];

	rl_dict_stats_get(m->d, &st);
	if (m->limit)
		FUZZ_CHECK(st.bytes <= m->limit, "bytes %" PRIu64 " over limit %zu",
			   st.bytes, m->limit);
	for (int j = 0; j < NKEYS; j++) {
		int i = (first + j) % NKEYS;
		struct mkey *k = &m->keys[i];
		size_t klen = key_name(i, key);
		rl_blob *b = NULL;
		uint32_t flags32 = 0;
		int64_t at = 0;
		int ret = rl_dict_get_cas(m->d, key, klen, m->now, &b, NULL,
					  &flags32, &at);

		if (!live(m, i)) {
			FUZZ_CHECK(ret == -ENOENT, "key %d present, model has none", i);
			continue;
		}
		if (ret == -ENOENT) {
			vanished++;
			k->present = 0;
			continue;
		}
		FUZZ_CHECK(ret == 0 && b, "get_cas %d: %d", i, ret);
		FUZZ_CHECK(b->len == k->len && !memcmp(b->data, k->val, k->len),
			   "key %d: value of %u bytes differs (model %zu)", i,
			   b->len, k->len);
		FUZZ_CHECK(b->data[b->len] == 0, "key %d: no NUL after value", i);
		FUZZ_CHECK(flags32 == k->flags32, "key %d: flags %u, model %u", i,
			   flags32, k->flags32);
		FUZZ_CHECK(at == k->at, "key %d: expiry %" PRId64 ", model %" PRId64,
			   i, at, k->at);
		rl_blob_unref(b);
	}
	FUZZ_CHECK(vanished <= st.evictions - m->evictions,
		   "%" PRIu64 " keys vanished, %" PRIu64 " evictions", vanished,
		   st.evictions - m->evictions);
	m->evictions = st.evictions;
}

static void step(struct fuzz_in *in, struct model *m)
{
	uint8_t op = in_u8(in) % 32;
	int i = in_u8(in) % NKEYS;
	char key[64];
	size_t klen = key_name(i, key);

	forget_expired(m);
	if (op < 8)
		op_set(in, m, i, key, klen);
	else if (op < 11)
		op_get(m, i, key, klen);
	else if (op < 13)
		op_del(m, i, key, klen);
	else if (op < 15)
		op_expire(in, m, i, key, klen);
	else if (op == 15)
		op_persist(m, i, key, klen);
	else if (op == 16)
		op_ttl(m, i, key, klen);
	else if (op < 19)
		op_incr(in, m, i, key, klen);
	else if (op < 21)
		op_incr_u64(in, m, i, key, klen);
	else if (op < 24)
		op_append(in, m, i, key, klen);
	else if (op < 26)
		op_setrange(in, m, i, key, klen);
	else if (op < 29)
		m->now += in_u8(in) % 32;       /* the clock moves */
	else if (op == 29)
		rl_dict_sweep(m->d, in_u8(in), m->now);
	else if (op == 30)
		op_scan(in, m);
	else if (in_u8(in) % 4 == 0) {
		rl_dict_flush(m->d);
		for (int j = 0; j < NKEYS; j++)
			m->keys[j].present = 0;
	}
	forget_expired(m);
	check_all(m, (i + op) % NKEYS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned stripes[4] = { 1, 2, 4, 16 };
	static struct model m;
	struct fuzz_in in = { data, size };
	uint8_t setup = in_u8(&in);

	memset(&m, 0, sizeof(m));
	m.limit = setup % 4 == 0 ? 0 : (size_t)2048 << (setup >> 2) % 6;
	m.now = NOW0;
	m.d = rl_dict_new(m.limit, stripes[(setup >> 5) % 4]);
	FUZZ_CHECK(m.d, "rl_dict_new(%zu): %d", m.limit, errno);
	for (int ops = 0; in_left(&in) && ops < 4096; ops++)
		step(&in, &m);
	rl_dict_free(m.d);
	return 0;
}
