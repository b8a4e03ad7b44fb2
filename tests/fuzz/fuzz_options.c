/* fuzz_options.c: fuzzes core/rl_options.c (argv vectors, sizes) and core/rl_listen.c (listen/connect address strings) with getaddrinfo stubbed: parses are deterministic, results obey the documented ranges, addresses round-trip their port and path. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <sys/un.h>

#include "fuzz_input.h"
#include "rl_listen.h"
#include "rl_options.h"

#define MAX_ARGS 24

/* -- A resolver that never leaves the process ---------------------------- */

/* Numeric hosts as the libc would, "localhost" as 127.0.0.1, every other
 * name unknown: real lookups would be slow and differ between machines. */
int getaddrinfo(const char *host, const char *port,
		const struct addrinfo *hints, struct addrinfo **res)
{
	struct addrinfo *ai = calloc(1, sizeof(*ai) + sizeof(struct sockaddr_in6));
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(ai + 1);
	struct sockaddr_in *in4 = (struct sockaddr_in *)(ai + 1);
	char *end;
	long p = port ? strtol(port, &end, 10) : 0;

	if (!ai)
		return EAI_MEMORY;
	if (port && (*end || p < 0 || p > 65535)) {
		free(ai);
		return EAI_SERVICE;
	}
	ai->ai_socktype = hints ? hints->ai_socktype : 0;
	ai->ai_addr = (struct sockaddr *)(ai + 1);
	if (!host || inet_pton(AF_INET, host, &in4->sin_addr) == 1 ||
	    (!(hints && hints->ai_flags & AI_NUMERICHOST) &&
	     !strcmp(host, "localhost") &&
	     inet_pton(AF_INET, "127.0.0.1", &in4->sin_addr) == 1)) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)p);
		ai->ai_family = AF_INET;
		ai->ai_addrlen = sizeof(*in4);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		ai->ai_family = AF_INET6;
		ai->ai_addrlen = sizeof(*in6);
	} else {
		free(ai);
		return EAI_NONAME;
	}
	*res = ai;
	return 0;
}

void freeaddrinfo(struct addrinfo *ai)
{
	free(ai);
}

/* -- Splitting the input ------------------------------------------------- */

/* NUL-separated strings, each its own exact allocation (so a read past a
 * string's end is an ASan report); argv[argc] is NULL as main() gets it. */
static int split_args(struct fuzz_in *in, char **argv, int max)
{
	int argc = 0;

	argv[argc++] = strdup("ringline");
	while (in_left(in) && argc < max) {
		const uint8_t *nul = memchr(in->p, 0, in->n);
		size_t len = nul ? (size_t)(nul - in->p) : in->n, got;
		const uint8_t *p = in_bytes(in, len, &got);

		argv[argc] = malloc(got + 1);
		memcpy(argv[argc], p, got);
		argv[argc][got] = 0;
		argc++;
		in_u8(in);      /* the NUL */
	}
	argv[argc] = NULL;
	return argc;
}

static void free_args(char **argv, int argc)
{
	for (int i = 0; i < argc; i++)
		free(argv[i]);
}

/* -- Options ------------------------------------------------------------- */

/* A parse that says RUN leaves a configuration main() can use. */
static void check_config(const struct rl_config *c)
{
	FUZZ_CHECK(c->nlisten >= 0 && c->nlisten <= RL_MAX_LISTEN, "nlisten %d",
		   c->nlisten);
	FUZZ_CHECK(!c->script != !c->builtin, "script and builtin: one only");
	FUZZ_CHECK(c->low_water < c->high_water, "low-water %zu >= high-water %zu",
		   c->low_water, c->high_water);
	FUZZ_CHECK(c->buffers >= 2 && c->buffers <= 32768 &&
		   !(c->buffers & (c->buffers - 1)), "buffers %u", c->buffers);
	FUZZ_CHECK(c->buffer_size >= 512 && c->buffer_size <= 1u << 20,
		   "buffer size %u", c->buffer_size);
	FUZZ_CHECK(c->workers >= 1, "workers %d", c->workers);
	FUZZ_CHECK(c->max_conns >= 1, "max conns %u", c->max_conns);
	FUZZ_CHECK(!c->builtin || c->nlisten > 0, "builtin without listen");
	for (int i = 0; i < c->nlisten; i++)
		FUZZ_CHECK(c->listen[i], "listen %d is NULL", i);
}

static int config_equal(const struct rl_config *a, const struct rl_config *b)
{
	if ((!a->script != !b->script) || (a->script && strcmp(a->script, b->script)))
		return 0;
	if ((!a->builtin != !b->builtin) ||
	    (a->builtin && strcmp(a->builtin, b->builtin)))
		return 0;
	if (a->nlisten != b->nlisten)
		return 0;
	for (int i = 0; i < a->nlisten; i++)
		if (strcmp(a->listen[i], b->listen[i]))
			return 0;
	return a->workers == b->workers && a->buffers == b->buffers &&
	       a->buffer_size == b->buffer_size &&
	       a->max_conns == b->max_conns && a->high_water == b->high_water &&
	       a->low_water == b->low_water &&
	       a->max_unconsumed == b->max_unconsumed &&
	       a->drain_timeout_ms == b->drain_timeout_ms &&
	       a->handler_timeout_ms == b->handler_timeout_ms &&
	       a->lua_memory == b->lua_memory && a->log_level == b->log_level &&
	       a->pin == b->pin && a->check_only == b->check_only &&
	       a->watch == b->watch && a->dict_memory == b->dict_memory;
}

static int parse_copy(char **args, int argc, struct rl_config *cfg, char *err,
		      size_t errlen)
{
	/* getopt_long permutes argv: each parse gets its own vector. */
	char *argv[MAX_ARGS + 1];

	memcpy(argv, args, sizeof(*argv) * (argc + 1));
	rl_options_defaults(cfg, 4);
	err[0] = 0;
	return rl_options_parse(cfg, argc, argv, err, errlen);
}

/* Twice over the same vector: the same answer (getopt's state is reset),
 * an error always explained. */
static void fuzz_options(struct fuzz_in *in)
{
	char *args[MAX_ARGS + 1], err1[256], err2[256];
	struct rl_config c1, c2;
	int argc = split_args(in, args, MAX_ARGS);
	int r1 = parse_copy(args, argc, &c1, err1, sizeof(err1));
	int r2 = parse_copy(args, argc, &c2, err2, sizeof(err2));

	FUZZ_CHECK(r1 == r2, "parsed %d then %d", r1, r2);
	FUZZ_CHECK(r1 == RL_OPT_RUN || r1 == RL_OPT_HELP ||
		   r1 == RL_OPT_VERSION || r1 == -EINVAL, "result %d", r1);
	if (r1 == -EINVAL) {
		FUZZ_CHECK(err1[0] && memchr(err1, 0, sizeof(err1)), "no reason");
		FUZZ_CHECK(!strcmp(err1, err2), "'%s' then '%s'", err1, err2);
	}
	if (r1 == RL_OPT_RUN) {
		check_config(&c1);
		FUZZ_CHECK(config_equal(&c1, &c2), "two parses differ");
	}
	free_args(args, argc);
}

/* -- Sizes --------------------------------------------------------------- */

/* Digits, then at most one of k/m/g and an optional b: the value times the
 * power of 1024, if that fits 64 bits. */
static void fuzz_size(const char *s)
{
	uint64_t got = 12345, v = 0;
	int ret = rl_parse_size(s, &got);
	const char *p = s;
	unsigned shift = 0;
	int ok = *p >= '0' && *p <= '9';

	for (; ok && *p >= '0' && *p <= '9'; p++)
		if (__builtin_mul_overflow(v, 10, &v) ||
		    __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
			ok = 0;
	if (ok && *p && strchr("kKmMgG", *p))
		shift = *p == 'k' || *p == 'K' ? 10 : *p == 'm' || *p == 'M' ? 20
									: 30, p++;
	if (ok && (*p == 'b' || *p == 'B'))
		p++;
	ok = ok && !*p && (v << shift >> shift) == v;
	FUZZ_CHECK(ret == (ok ? 0 : -EINVAL), "parse_size('%s'): %d", s, ret);
	if (ok)
		FUZZ_CHECK(got == v << shift, "parse_size('%s'): %llu", s,
			   (unsigned long long)got);
}

/* -- Addresses ----------------------------------------------------------- */

static uint16_t port_of(const struct rl_addr *a)
{
	const struct sockaddr_in *in4 = (const struct sockaddr_in *)&a->sa;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;

	return ntohs(a->sa.ss_family == AF_INET ? in4->sin_port : in6->sin6_port);
}

/* What a parsed address says agrees with its text. */
static void check_addr(const char *s, const struct rl_addr *a)
{
	const char *colon = strrchr(s, ':');

	FUZZ_CHECK(memchr(a->text, 0, sizeof(a->text)), "text not terminated");
	if (a->is_unix) {
		const struct sockaddr_un *un = (const struct sockaddr_un *)&a->sa;
		const char *path = s + 5 + (strncmp(s + 5, "//", 2) ? 0 : 2);

		FUZZ_CHECK(!strncmp(s, "unix:", 5), "unix without 'unix:'");
		FUZZ_CHECK(un->sun_family == AF_UNIX, "family %d", un->sun_family);
		FUZZ_CHECK(!strcmp(un->sun_path, path), "path '%s' for '%s'",
			   un->sun_path, s);
		return;
	}
	FUZZ_CHECK(a->sa.ss_family == AF_INET || a->sa.ss_family == AF_INET6,
		   "family %d", a->sa.ss_family);
	FUZZ_CHECK(a->len == (a->sa.ss_family == AF_INET
			      ? sizeof(struct sockaddr_in)
			      : sizeof(struct sockaddr_in6)), "len %u", a->len);
	FUZZ_CHECK(colon && port_of(a) == atoi(colon + 1), "port %u for '%s'",
		   port_of(a), s);
}

static void fuzz_addr(const char *s, int numeric)
{
	struct rl_addr a;
	char err[256] = "", host[256], port[8];
	int ret;

	if (numeric)
		ret = rl_addr_parse_numeric(s, &a, host, sizeof(host), port,
					    sizeof(port), err, sizeof(err));
	else
		ret = rl_addr_parse(s, &a, err, sizeof(err));
	FUZZ_CHECK(ret == 0 || ret == -EINVAL || (numeric && ret == 1),
		   "addr '%s': %d", s, ret);
	if (ret == -EINVAL)
		FUZZ_CHECK(err[0], "addr '%s': no reason", s);
	if (ret == 0)
		check_addr(s, &a);
	if (ret == 1) {
		/* A name, left for the resolver: host and port as written. */
		FUZZ_CHECK(memchr(host, 0, sizeof(host)) && memchr(port, 0, sizeof(port)),
			   "host or port not terminated");
		FUZZ_CHECK(strstr(s, host) && strstr(s, port), "'%s':'%s' not in '%s'",
			   host, port, s);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t mode = in_u8(&in) % 4;
	char *s;

	if (mode == 0) {
		fuzz_options(&in);
		return 0;
	}
	/* One string, as an operator would type it (up to its first NUL). */
	s = strndup((const char *)in.p, in.n);
	if (mode == 1)
		fuzz_size(s);
	else
		fuzz_addr(s, mode == 3);
	free(s);
	return 0;
}
