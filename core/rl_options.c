/* rl_options.c: the command line, parsed into the process configuration. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_api.h"
#include "rl_log.h"
#include "rl_options.h"

static const char usage[] =
"usage: ringline [options] SCRIPT.lua\n"
"       ringline [options] --builtin echo\n"
"\n"
"  -l, --listen ADDR        listen on ADDR (tcp://host:port, tcp://[v6]:port,\n"
"                           unix:/path); repeatable; overrides the script's\n"
"  -w, --workers N          worker threads, one per core (default: online CPUs)\n"
"  -b, --buffers N          provided receive buffers per worker, a power of\n"
"                           two from 2 to 32768 (default 512)\n"
"  -s, --buffer-size BYTES  size of each receive buffer, 512 to 1m (default 16k)\n"
"  -c, --max-conns N        open connections in the whole process (default 65536)\n"
"      --high-water BYTES   unsent bytes that stop a connection's reads (default 32k)\n"
"      --low-water BYTES    unsent bytes that resume them (default 16k)\n"
"      --max-unconsumed BYTES  unconsumed bytes a connection may keep (default 1m)\n"
"      --max-client-memory BYTES  unsent and unconsumed bytes of all connections\n"
"                           together; past it the largest holders are closed\n"
"                           first (default a quarter of physical memory; 0: off)\n"
"      --drain-timeout MS   on SIGTERM, time to finish sends (default 5000)\n"
"      --handler-timeout MS  stop a handler call, timer callback or init that\n"
"                           runs longer (default 2000; 0 turns it off)\n"
"      --lua-memory BYTES   Lua memory per worker; an allocation past it fails\n"
"                           the handler that asked (default 1g)\n"
"      --ring-entries N     io_uring submission queue size per worker, a power\n"
"                           of two from 8 to 32768; the completion queue is 4x\n"
"                           (default 4096)\n"
"      --pin                pin worker i to CPU i\n"
"      --log-level LEVEL    error, warn, info or debug (default info)\n"
"      --builtin echo       serve with the C echo handler, no Lua (a baseline)\n"
"      --check              load the script in a scratch state and exit\n"
"      --dict-memory BYTES  memory of the shared dictionary (default: the\n"
"                           script's dict_memory, else 64m)\n"
"      --watch              reload when a .lua file in the script's directory\n"
"                           (or a subdirectory) changes; SIGHUP also reloads\n"
"      --tls-cert FILE      certificate chain (PEM) for tls:// listeners;\n"
"                           repeatable, each with a --tls-key; the client's\n"
"                           SNI picks by the certificates' names, the first\n"
"                           is the default\n"
"      --tls-key FILE       private key (PEM) of the --tls-cert before it\n"
"      --tls-alpn LIST      protocols offered by ALPN, comma separated\n"
"                           (e.g. http/1.1)\n"
"      --tls-ciphers LIST   TLS 1.2 ciphers (OpenSSL syntax)\n"
"      --tls-ciphersuites LIST  TLS 1.3 cipher suites (OpenSSL syntax)\n"
"      --tls-groups LIST    key exchange groups (e.g. X25519:P-256)\n"
"      --tls-min-version V  1.2 (default) or 1.3\n"
"      --tls-handshake-timeout MS  close a handshake not done by then\n"
"                           (default 10000)\n"
"      --tls-client-ca FILE  ask clients for a certificate and verify it\n"
"                           against these CAs (PEM); conn.tls.peer_subject\n"
"      --tls-client-verify M  required (default with --tls-client-ca): a\n"
"                           client without a valid certificate is refused;\n"
"                           optional: one without any is let in\n"
"      --tls-ticket-rotation S  session ticket keys (one set per process,\n"
"                           all workers) rotate every S seconds; a ticket\n"
"                           resumes for up to 2*S (default 3600)\n"
"      --tls-release-buffers  free a session's record buffers (~34 KiB)\n"
"                           between records: less memory per idle TLS\n"
"                           connection, slower keep-alive\n"
"  -h, --help               this text\n"
"  -V, --version            the version\n"
"\n"
"BYTES take a k, m or g suffix (powers of 1024).\n";

const char *rl_options_usage(void)
{
	return usage;
}

void rl_options_defaults(struct rl_config *cfg, int online_cpus)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->workers = online_cpus > 0 ? online_cpus : 1;
	cfg->buffers = 512;
	cfg->tls_handshake_timeout_ms = 10000;
	cfg->tls_ticket_rotation_s = 3600;
	cfg->buffer_size = 16384;
	cfg->max_conns = 65536;
	/* Measured (README, "Hostile clients"): a client that pipelines and
	 * never reads then costs ~64 KiB on every bundled script, and the
	 * echo, HTTP and proxy benchmarks do not move. */
	cfg->high_water = 32u << 10;
	cfg->low_water = 16u << 10;
	cfg->max_unconsumed = 1u << 20;
	/* A quarter of RAM: clients that never read (or send half a huge
	 * request) cannot push the appliance into swap or the OOM killer. */
	cfg->max_client_memory = (uint64_t)sysconf(_SC_PHYS_PAGES) *
				 (uint64_t)sysconf(_SC_PAGESIZE) / 4;
	cfg->drain_timeout_ms = 5000;
	cfg->handler_timeout_ms = 2000;
	cfg->lua_memory = 1ull << 30;
	cfg->ring_entries = 4096;
	cfg->log_level = RL_LOG_INFO;
}

int rl_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	/* strtoull would skip white space and accept a sign: digits only. */
	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	}
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int bad(char *err, size_t len, const char *fmt, const char *a,
	       const char *b)
{
	snprintf(err, len, fmt, a, b);
	return -EINVAL;
}

/* A number in [lo, hi], with size suffixes when sized. */
static int num(const char *opt, const char *arg, uint64_t lo, uint64_t hi,
	       uint64_t *out, char *err, size_t len)
{
	char range[64];

	if (rl_parse_size(arg, out) || *out < lo || *out > hi) {
		snprintf(range, sizeof(range), "%llu to %llu",
			 (unsigned long long)lo, (unsigned long long)hi);
		snprintf(err, len, "invalid value '%s' for --%s: expected %s",
			 arg, opt, range);
		return -EINVAL;
	}
	return 0;
}

enum {
	OPT_HIGH = 256, OPT_LOW, OPT_UNCONSUMED, OPT_DRAIN, OPT_PIN,
	OPT_LOGLEVEL, OPT_BUILTIN, OPT_CHECK, OPT_WATCH, OPT_DICT,
	OPT_HANDLER_TIMEOUT, OPT_LUA_MEMORY, OPT_RING, OPT_CLIENT_MEMORY,
	OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_ALPN, OPT_TLS_CIPHERS,
	OPT_TLS_SUITES, OPT_TLS_GROUPS, OPT_TLS_MIN, OPT_TLS_HS_TIMEOUT,
	OPT_TLS_CLIENT_CA, OPT_TLS_CLIENT_VERIFY, OPT_TLS_TICKET_ROTATION, OPT_TLS_RELEASE,
};

static const struct option longopts[] = {
	{ "listen", required_argument, NULL, 'l' },
	{ "workers", required_argument, NULL, 'w' },
	{ "buffers", required_argument, NULL, 'b' },
	{ "buffer-size", required_argument, NULL, 's' },
	{ "max-conns", required_argument, NULL, 'c' },
	{ "high-water", required_argument, NULL, OPT_HIGH },
	{ "low-water", required_argument, NULL, OPT_LOW },
	{ "max-unconsumed", required_argument, NULL, OPT_UNCONSUMED },
	{ "drain-timeout", required_argument, NULL, OPT_DRAIN },
	{ "pin", no_argument, NULL, OPT_PIN },
	{ "log-level", required_argument, NULL, OPT_LOGLEVEL },
	{ "builtin", required_argument, NULL, OPT_BUILTIN },
	{ "check", no_argument, NULL, OPT_CHECK },
	{ "watch", no_argument, NULL, OPT_WATCH },
	{ "dict-memory", required_argument, NULL, OPT_DICT },
	{ "handler-timeout", required_argument, NULL, OPT_HANDLER_TIMEOUT },
	{ "lua-memory", required_argument, NULL, OPT_LUA_MEMORY },
	{ "max-client-memory", required_argument, NULL, OPT_CLIENT_MEMORY },
	{ "ring-entries", required_argument, NULL, OPT_RING },
	{ "tls-cert", required_argument, NULL, OPT_TLS_CERT },
	{ "tls-key", required_argument, NULL, OPT_TLS_KEY },
	{ "tls-alpn", required_argument, NULL, OPT_TLS_ALPN },
	{ "tls-ciphers", required_argument, NULL, OPT_TLS_CIPHERS },
	{ "tls-ciphersuites", required_argument, NULL, OPT_TLS_SUITES },
	{ "tls-groups", required_argument, NULL, OPT_TLS_GROUPS },
	{ "tls-min-version", required_argument, NULL, OPT_TLS_MIN },
	{ "tls-handshake-timeout", required_argument, NULL, OPT_TLS_HS_TIMEOUT },
	{ "tls-client-ca", required_argument, NULL, OPT_TLS_CLIENT_CA },
	{ "tls-client-verify", required_argument, NULL, OPT_TLS_CLIENT_VERIFY },
	{ "tls-ticket-rotation", required_argument, NULL, OPT_TLS_TICKET_ROTATION },
	{ "tls-release-buffers", no_argument, NULL, OPT_TLS_RELEASE },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 },
};

static int set_option(struct rl_config *cfg, int opt, const char *arg,
		      char *err, size_t len)
{
	uint64_t v;
	int ret = 0;

	switch (opt) {
	case 'l':
		if (cfg->nlisten == RL_MAX_LISTEN)
			return bad(err, len, "too many --listen (at most %s)%s",
				   "16", "");
		cfg->listen[cfg->nlisten++] = arg;
		return 0;
	case 'w':
		if (!(ret = num("workers", arg, 1, 1024, &v, err, len)))
			cfg->workers = (int)v;
		break;
	case 'b':
		if ((ret = num("buffers", arg, 2, 32768, &v, err, len)))
			break;
		if (v & (v - 1))
			return bad(err, len, "invalid value '%s' for --buffers: "
				   "must be a power of two%s", arg, "");
		cfg->buffers = (uint32_t)v;
		break;
	case 's':
		if (!(ret = num("buffer-size", arg, 512, 1u << 20, &v, err, len)))
			cfg->buffer_size = (uint32_t)v;
		break;
	case 'c':
		if (!(ret = num("max-conns", arg, 1, RL_CONN_MAX_PROCESS, &v, err, len)))
			cfg->max_conns = (uint32_t)v;
		break;
	case OPT_HIGH:
		if (!(ret = num("high-water", arg, 1, 1ull << 40, &v, err, len)))
			cfg->high_water = v;
		break;
	case OPT_LOW:
		if (!(ret = num("low-water", arg, 0, 1ull << 40, &v, err, len)))
			cfg->low_water = v;
		break;
	case OPT_UNCONSUMED:
		if (!(ret = num("max-unconsumed", arg, 1, 1u << 30, &v, err, len)))
			cfg->max_unconsumed = v;
		break;
	case OPT_DRAIN:
		if (!(ret = num("drain-timeout", arg, 0, 3600000, &v, err, len)))
			cfg->drain_timeout_ms = (uint32_t)v;
		break;
	case OPT_PIN:
		cfg->pin = 1;
		return 0;
	case OPT_LOGLEVEL:
		cfg->log_level = rl_log_parse_level(arg);
		if (cfg->log_level < 0)
			return bad(err, len, "invalid value '%s' for --log-level: "
				   "expected error, warn, info or debug%s", arg, "");
		return 0;
	case OPT_BUILTIN:
		if (strcmp(arg, "echo"))
			return bad(err, len, "unknown --builtin '%s' (known: echo)%s",
				   arg, "");
		cfg->builtin = arg;
		return 0;
	case OPT_CHECK:
		cfg->check_only = 1;
		return 0;
	case OPT_WATCH:
		cfg->watch = 1;
		return 0;
	case OPT_DICT:
		if (!(ret = num("dict-memory", arg, 1u << 20, 1ull << 40, &v, err,
				len)))
			cfg->dict_memory = v;
		break;
	case OPT_HANDLER_TIMEOUT:
		if (!(ret = num("handler-timeout", arg, 0, 3600000, &v, err, len)))
			cfg->handler_timeout_ms = (uint32_t)v;
		break;
	case OPT_CLIENT_MEMORY:
		if (!(ret = num("max-client-memory", arg, 0, 1ull << 50, &v, err,
				len)))
			cfg->max_client_memory = v;
		break;
	case OPT_LUA_MEMORY:
		/* Below a few MiB the ringline modules themselves do not load. */
		if (!(ret = num("lua-memory", arg, 8u << 20, 1ull << 40, &v, err,
				len)))
			cfg->lua_memory = v;
		break;
	case OPT_TLS_CERT:
	case OPT_TLS_KEY: {
		int *n = opt == OPT_TLS_CERT ? &cfg->ntls_cert : &cfg->ntls_key;

		if (*n == RL_MAX_TLS_CERTS)
			return bad(err, len, "too many --%s (at most %s)",
				   opt == OPT_TLS_CERT ? "tls-cert" : "tls-key",
				   "16");
		(opt == OPT_TLS_CERT ? cfg->tls_cert : cfg->tls_key)[(*n)++] = arg;
		return 0;
	}
	case OPT_TLS_ALPN:
		cfg->tls_alpn = arg;
		return 0;
	case OPT_TLS_CIPHERS:
		cfg->tls_ciphers = arg;
		return 0;
	case OPT_TLS_SUITES:
		cfg->tls_ciphersuites = arg;
		return 0;
	case OPT_TLS_GROUPS:
		cfg->tls_groups = arg;
		return 0;
	case OPT_TLS_MIN:
		if (strcmp(arg, "1.2") && strcmp(arg, "1.3"))
			return bad(err, len, "invalid value '%s' for "
				   "--tls-min-version: expected 1.2 or 1.3%s",
				   arg, "");
		cfg->tls_min_version = arg;
		return 0;
	case OPT_TLS_HS_TIMEOUT:
		if (!(ret = num("tls-handshake-timeout", arg, 1, 3600000, &v,
				err, len)))
			cfg->tls_handshake_timeout_ms = (uint32_t)v;
		break;
	case OPT_TLS_CLIENT_CA:
		cfg->tls_client_ca = arg;
		return 0;
	case OPT_TLS_CLIENT_VERIFY:
		if (strcmp(arg, "required") && strcmp(arg, "optional"))
			return bad(err, len, "invalid value '%s' for "
				   "--tls-client-verify: expected required or "
				   "optional%s", arg, "");
		cfg->tls_client_optional = arg[0] == 'o';
		return 0;
	case OPT_TLS_RELEASE:
		cfg->tls_release_buffers = 1;
		return 0;
	case OPT_TLS_TICKET_ROTATION:
		if (!(ret = num("tls-ticket-rotation", arg, 1, 7 * 86400, &v,
				err, len)))
			cfg->tls_ticket_rotation_s = (uint32_t)v;
		break;
	case OPT_RING:
		if (!(ret = num("ring-entries", arg, 8, 32768, &v, err, len)) &&
		    (v & (v - 1)))
			ret = bad(err, len, "invalid value '%s' for --ring-entries: "
				  "must be a power of two%s", arg, "");
		if (!ret)
			cfg->ring_entries = (uint32_t)v;
		break;
	}
	return ret;
}

int rl_options_parse(struct rl_config *cfg, int argc, char **argv,
		     char *err, size_t len)
{
	int opt, ret;

	optind = 0;     /* 0, not 1: glibc then forgets a half-read "-hV" */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":l:w:b:s:c:hV", longopts,
				  NULL)) != -1) {
		switch (opt) {
		case 'h':
			return RL_OPT_HELP;
		case 'V':
			return RL_OPT_VERSION;
		case ':':
			return bad(err, len, "option '%s' needs a value%s",
				   argv[optind - 1], "");
		case '?':
			if (optopt > 0 && optopt < 256) {
				char o[3] = { '-', (char)optopt, 0 };

				return bad(err, len, "unknown option '%s' (see "
					   "--help)%s", o, "");
			}
			return bad(err, len, "unknown option '%s' (see --help)%s",
				   argv[optind - 1], "");
		default:
			ret = set_option(cfg, opt, optarg, err, len);
			if (ret)
				return ret;
		}
	}
	if (optind < argc)
		cfg->script = argv[optind++];
	if (optind < argc)
		return bad(err, len, "unexpected argument '%s' (one script only)%s",
			   argv[optind], "");
	if (!cfg->script && !cfg->builtin)
		return bad(err, len, "no script given (usage: ringline [options] "
			   "SCRIPT.lua, see --help)%s%s", "", "");
	if (cfg->script && cfg->builtin)
		return bad(err, len, "give a script or --builtin, not both%s%s",
			   "", "");
	if (cfg->builtin && cfg->watch)
		return bad(err, len, "--watch needs a script%s%s", "", "");
	if (cfg->builtin && cfg->nlisten == 0)
		return bad(err, len, "--builtin needs --listen%s%s", "", "");
	if (cfg->ntls_cert != cfg->ntls_key)
		return bad(err, len, "--tls-cert and --tls-key come in pairs "
			   "(one key for each certificate)%s%s", "", "");
	if (cfg->low_water >= cfg->high_water)
		return bad(err, len, "--low-water must be below --high-water%s%s",
			   "", "");
	return RL_OPT_RUN;
}
