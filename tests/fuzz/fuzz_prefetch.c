/* fuzz_prefetch.c: fuzzes rl_worker_prefetch (core/rl_conn_api.c) and rl_dict_prefetch with arbitrary event bytes, each in its own exact allocation: no read out of bounds, and the count found equals a model of the key each line names. */
#include <errno.h>

#include "fuzz_input.h"
#include "rl_dict.h"
#include "rl_worker.h"

#define MAX_EVENTS 80           /* more than one group of 32 lookups */
#define NOW 1700000000000LL

static const char *const prefixes[] = { "get ", "gets ", "", "mg " };

/* The model of which bytes name a key: after the prefix, up to the line's
 * LF; the key ends at the first space before it, else at a CR just before
 * the LF.  No LF, or an empty key: none.  Returns the key length or -1. */
static long model_key(const rl_event *ev, const char *prefix, size_t plen,
		      const uint8_t **key)
{
	const uint8_t *p, *lf, *sp, *end;

	if (ev->type != RL_EV_DATA || ev->len <= plen ||
	    memcmp(ev->ptr, prefix, plen))
		return -1;
	p = ev->ptr + plen;
	end = ev->ptr + ev->len;
	for (lf = p; lf < end && *lf != '\n'; lf++)
		;
	if (lf == end)
		return -1;
	for (sp = p; sp < lf && *sp != ' '; sp++)
		;
	if (sp == lf && lf > p && lf[-1] == '\r')
		sp--;
	*key = p;
	return sp == p ? -1 : sp - p;
}

static int model_found(rl_dict *d, const rl_event *ev, int n,
		       const char *prefix, size_t plen)
{
	int found = 0;

	for (int i = 0; i < n; i++) {
		const uint8_t *key;
		long klen = model_key(&ev[i], prefix, plen, &key);

		if (klen > 0 && klen <= RL_DICT_KEY_MAX)
			found += rl_dict_exists(d, key, (size_t)klen, NOW);
	}
	return found;
}

/* A few keys, taken from the input so that events can name them. */
static void preset_keys(struct fuzz_in *in, rl_dict *d)
{
	for (int k = in_u8(in) % 8; k > 0; k--) {
		size_t want = 1 + in_u8(in) % 24, got;
		const uint8_t *p = in_bytes(in, want, &got);

		if (got && rl_dict_set(d, p, got, "v", 1, 0, 0, NOW, NULL))
			abort();
	}
}

/* Events whose bytes are copies in exact allocations: reading one byte
 * past any of them is an ASan report. */
static int read_events(struct fuzz_in *in, rl_event *ev)
{
	int n = 0;

	while (in_left(in) && n < MAX_EVENTS) {
		uint8_t type = in_u8(in);
		size_t want = in_u16(in) % 1024, got;
		const uint8_t *p = in_bytes(in, want, &got);
		uint8_t *copy = malloc(got ? got : 1);

		memcpy(copy, p, got);
		memset(&ev[n], 0, sizeof(ev[n]));
		ev[n].type = type % 4 ? RL_EV_DATA : type % 8;
		ev[n].ptr = copy;
		ev[n].len = (uint32_t)got;
		n++;
	}
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Static: a worker is large (its ring, tables, send slots). */
	static struct rl_worker w;
	static struct rl_shared sh;
	static rl_event ev[MAX_EVENTS];
	struct fuzz_in in = { data, size };
	const char *prefix = prefixes[in_u8(&in) % 4];
	size_t plen = strlen(prefix);
	int n, found, want;

	memset(&w, 0, sizeof(w));
	memset(&sh, 0, sizeof(sh));
	sh.dict = rl_dict_new(0, 1u << (in_u8(&in) % 4));
	FUZZ_CHECK(sh.dict, "rl_dict_new: %d", errno);
	w.shared = &sh;
	preset_keys(&in, sh.dict);
	n = read_events(&in, ev);
	found = rl_worker_prefetch(&w, ev, n, prefix, plen);
	want = model_found(sh.dict, ev, n, prefix, plen);
	FUZZ_CHECK(found == want, "prefetch found %d of %d events, model %d",
		   found, n, want);
	for (int i = 0; i < n; i++)
		free((void *)ev[i].ptr);
	rl_dict_free(sh.dict);
	return 0;
}
