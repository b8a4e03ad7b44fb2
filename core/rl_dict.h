/* rl_dict.h: the process-wide shared dictionary of refcounted values.
 *
 * One table for all workers (like lua_shared_dict), reached from LuaJIT
 * through the FFI, serving a Redis-like and a memcached-like store.
 *
 * Ownership: a value is an rl_blob.  The dictionary holds one reference on
 * each stored value; rl_dict_get and friends hand the caller another one,
 * which the caller ends with rl_blob_unref (a send path keeps it until the
 * kernel is done with the bytes).  Overwriting, deleting, expiring or
 * evicting a key only drops the dictionary's reference, so a value someone
 * holds stays readable and unchanged.
 *
 * Locking: keys hash to stripes, each with its own mutex, table, LRU list
 * and share of the memory limit.  Every function may be called from any
 * thread at any time, except rl_dict_free.  No function holds two stripe
 * locks at once, and none calls a callback with a lock held.
 *
 * Time: callers pass now_ms (unix epoch milliseconds) to every call that
 * looks at expiry, so tests control the clock.  A key with expire_at != 0
 * is gone once expire_at <= now_ms.
 *
 * Everything below is plain C that LuaJIT's ffi.cdef parses: preprocess
 * with -DRL_FFI_CDEF to get the declarations without system headers.
 */
#ifndef RL_DICT_H
#define RL_DICT_H

#ifndef RL_FFI_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

typedef struct rl_dict rl_dict;

/* A value.  Immutable from the moment it is visible to anyone but the
 * dictionary: the dictionary only ever changes a stored blob in place while
 * its own reference is the only one (refs == 1 under the stripe lock), and
 * nobody can take a new one without that lock. */
typedef struct rl_blob {
	uint32_t refs;      /* atomic: use the __atomic builtins on it */
	uint32_t len;
	uint8_t data[];     /* len bytes, then a NUL for convenience */
} rl_blob;

enum rl_dict_limits {
	RL_DICT_KEY_MAX = 65536,        /* bytes in a key */
	RL_DICT_VAL_MAX = 536870912,    /* bytes in a value: 512 MiB */
};

enum rl_dict_flags {
	RL_DICT_NX = 1,        /* store only if absent */
	RL_DICT_XX = 2,        /* store only if present */
	RL_DICT_KEEPTTL = 4,   /* a present key keeps its expiry */
};

/* Sums of per-stripe counters read without locks: while writes run, bytes
 * can momentarily read above the limit (stripes are read at different
 * instants); the bytes actually held never exceed it. */
typedef struct rl_dict_stats {
	uint64_t keys;        /* stored, including expired ones not yet swept */
	uint64_t bytes;       /* accounted: entries, keys and value capacity */
	uint64_t limit;       /* 0 = unlimited */
	uint64_t hits;        /* rl_dict_get / rl_dict_get_cas found the key */
	uint64_t misses;      /* ... did not */
	uint64_t evictions;   /* live entries dropped to make room */
	uint64_t expired;     /* entries dropped because their time had come */
	uint64_t sets;        /* writes that stored a value */
} rl_dict_stats;

/* -- Blobs --------------------------------------------------------------- */

/* A copy of p[0..len) with refs = 1; NULL when out of memory or
 * len > RL_DICT_VAL_MAX. */
rl_blob *rl_blob_new(const void *p, size_t len);
void rl_blob_ref(rl_blob *b);
/* Ends a reference; the last one frees the blob.  NULL is ignored. */
void rl_blob_unref(rl_blob *b);

/* -- Life ---------------------------------------------------------------- */

/* mem_limit: bytes of entries to keep before evicting, 0 = unlimited.
 * stripes: a power of two up to 65536, 0 = 64.  NULL (errno set) on bad
 * arguments or no memory. */
rl_dict *rl_dict_new(size_t mem_limit, unsigned stripes);
/* Not concurrently with anything else; outstanding blob references stay
 * valid. */
void rl_dict_free(rl_dict *d);

/* -- Strings ------------------------------------------------------------- */

/* Store a value.  expire_at_ms: 0 = no expiry, < 0 or <= now_ms = already
 * expired (the conditions are checked, then the key is deleted, and 0 is
 * returned).  KEEPTTL keeps a present key's expiry and ignores
 * expire_at_ms; an absent key gets expire_at_ms.
 * Returns 0 stored; -EEXIST (NX and present); -ENOENT (XX and absent);
 * -E2BIG (key or value over RL_DICT_KEY_MAX / RL_DICT_VAL_MAX); -ENOMEM
 * (bigger than the whole limit, out of memory, or no room even after
 * eviction).  If old != NULL, *old gets a reference to the value before
 * the call, or NULL, whenever the return is 0, -EEXIST or -ENOENT; NULL
 * otherwise. */
int rl_dict_set(rl_dict *d, const void *key, size_t klen, const void *val,
		size_t vlen, int64_t expire_at_ms, int flags, int64_t now_ms,
		rl_blob **old);
/* rl_dict_set plus the memcached parts: flags32 is stored with the value,
 * and cas_expect != 0 stores only over a present key whose cas id matches
 * (-ENOENT absent, -EEXIST mismatch).  rl_dict_set is this with
 * flags32 = 0 and cas_expect = 0. */
int rl_dict_set_ex(rl_dict *d, const void *key, size_t klen, const void *val,
		   size_t vlen, int64_t expire_at_ms, int flags,
		   uint32_t flags32, uint64_t cas_expect, int64_t now_ms,
		   rl_blob **old);
/* 0 and a reference in *out (out may be NULL), or -ENOENT when absent or
 * expired (an expired entry is deleted here).  Marks the key recently
 * used. */
int rl_dict_get(rl_dict *d, const void *key, size_t klen, int64_t now_ms,
		rl_blob **out);
/* rl_dict_get that also reports the value's cas id, client flags and
 * absolute expiry (0 = none).  Any out pointer may be NULL. */
int rl_dict_get_cas(rl_dict *d, const void *key, size_t klen, int64_t now_ms,
		    rl_blob **out, uint64_t *cas, uint32_t *flags32,
		    int64_t *expire_at_ms);
/* A hint that lookups of these n keys follow soon (keys[i], lens[i] bytes).
 * Starts the loads of their buckets, entries and values together, so that
 * the cache misses of a batch of lookups overlap instead of each lookup
 * waiting for its own.  Changes nothing; a key that is absent, or changes
 * meanwhile, costs only the wasted loads.  Returns how many were found. */
int rl_dict_prefetch(rl_dict *d, const uint8_t *const *keys,
		     const uint32_t *lens, int n);
/* 1 deleted, 0 absent (or expired). */
int rl_dict_del(rl_dict *d, const void *key, size_t klen, int64_t now_ms);
/* 1 present, 0 absent. */
int rl_dict_exists(rl_dict *d, const void *key, size_t klen, int64_t now_ms);

/* -- Expiry -------------------------------------------------------------- */

/* -2 absent, -1 no expiry, else milliseconds left (> 0). */
int64_t rl_dict_ttl_ms(rl_dict *d, const void *key, size_t klen,
		       int64_t now_ms);
/* 1 present (at_ms <= now_ms or < 0 deletes it and still returns 1;
 * at_ms == 0 removes the expiry), 0 absent. */
int rl_dict_expire_at(rl_dict *d, const void *key, size_t klen, int64_t at_ms,
		      int64_t now_ms);
/* 1 an expiry was removed, 0 absent or no expiry. */
int rl_dict_persist(rl_dict *d, const void *key, size_t klen, int64_t now_ms);
/* memcached touch: rl_dict_expire_at by another name. */
int rl_dict_touch(rl_dict *d, const void *key, size_t klen,
		  int64_t expire_at_ms, int64_t now_ms);

/* -- Read-modify-write (atomic under the key's stripe lock) -------------- */

/* Redis INCRBY: an absent key counts as 0 and is created without expiry.
 * The value must be a canonical signed 64-bit decimal ("0", "-12", no
 * spaces, no '+', no leading zeros, not "-0"): else -EINVAL.  Overflow:
 * -ERANGE.  Keeps expiry and flags.  0 and *result on success. */
int rl_dict_incr(rl_dict *d, const void *key, size_t klen, int64_t delta,
		 int64_t now_ms, int64_t *result);
/* memcached incr/decr: absent -ENOENT; the value must be 1 to 20 decimal
 * digits that fit in 64 bits, maybe followed by spaces (64 bytes at most),
 * else -EINVAL.  incr wraps modulo 2^64, decr stops at 0.  A result
 * shorter than the value is padded with spaces to its length, as memcached
 * updates in place.  Keeps expiry and flags. */
int rl_dict_incr_u64(rl_dict *d, const void *key, size_t klen,
		     uint64_t delta, int decr, int64_t now_ms,
		     uint64_t *result);
/* Add p[0..n) after (or, with prepend, before) the value.  An absent key
 * is created (no expiry) when create is set, else -ENOENT.  Result over
 * RL_DICT_VAL_MAX: -E2BIG.  Keeps expiry and flags.  *newlen (may be NULL)
 * gets the new length. */
int rl_dict_append(rl_dict *d, const void *key, size_t klen, const void *p,
		   size_t n, int prepend, int create, int64_t now_ms,
		   size_t *newlen);
/* Redis SETRANGE: overwrite from off, zero-padding any gap.  n == 0 never
 * creates or changes anything (*newlen = current length, 0 if absent).
 * off + n over RL_DICT_VAL_MAX: -E2BIG.  Keeps expiry and flags. */
int rl_dict_setrange(rl_dict *d, const void *key, size_t klen, size_t off,
		     const void *p, size_t n, int64_t now_ms, size_t *newlen);

/* -- Whole dictionary ---------------------------------------------------- */

/* Keys stored, including expired ones nobody has swept or touched yet. */
uint64_t rl_dict_count(rl_dict *d, int64_t now_ms);
/* Delete everything (FLUSHALL). */
void rl_dict_flush(rl_dict *d);
/* Redis SCAN: start with cursor 0, pass back what it returns until 0.
 * Every key present for the whole scan is reported at least once; keys
 * may repeat.  count bounds the buckets visited per call (0 means 1), so a
 * call may report nothing and still return a cursor.  fn runs without any
 * lock held and may call into the dictionary.  Expired keys are skipped.
 * Out of memory, a bucket whose keys pass 4 KiB is not reported and the
 * cursor stays at it, so the caller calling again makes progress once
 * memory is back (a walk that fails so on its very first bucket returns
 * 0, as if done). */
uint64_t rl_dict_scan(rl_dict *d, uint64_t cursor, unsigned count,
		      int64_t now_ms,
		      void (*fn)(void *ud, const uint8_t *key, size_t klen),
		      void *ud);
/* The same walk without a callback (FFI callbacks are slow and cannot be
 * compiled): keys are copied into buf, each as a uint32_t length in host
 * byte order (unaligned) followed by the key bytes.  *cursor is read and
 * advanced (0 when done); the walk stops early before a bucket whose keys
 * do not fit.  Returns the number of keys written, with *used = bytes
 * written; or -ENOSPC when the first bucket alone needs more than cap
 * bytes: *used then says how many, and *cursor is unchanged. */
int rl_dict_scan_buf(rl_dict *d, uint64_t *cursor, unsigned count,
		     int64_t now_ms, uint8_t *buf, size_t cap, size_t *used);
/* Background expiry: check at most budget entries that have an expiry
 * (budget counts entries examined, not deleted; at most 256 per stripe and
 * one visit to each stripe per call), continuing where the last call left
 * off, and delete the expired ones.  Returns how many were deleted; a
 * result close to budget suggests calling again soon. */
unsigned rl_dict_sweep(rl_dict *d, unsigned budget, int64_t now_ms);
void rl_dict_stats_get(rl_dict *d, rl_dict_stats *out);

#endif
