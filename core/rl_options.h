/* rl_options.h: the command line, parsed into the process configuration. */
#ifndef RL_OPTIONS_H
#define RL_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#define RL_MAX_LISTEN 16
#define RL_MAX_TLS_CERTS 16
#define RL_CONN_MAX_PROCESS (1u << 20)  /* a worker table holds at most this */

struct rl_config {
	const char *script;
	const char *listen[RL_MAX_LISTEN];
	int nlisten;
	int workers;
	uint32_t buffers;         /* provided ring entries per worker */
	uint32_t buffer_size;     /* bytes per provided buffer */
	uint32_t max_conns;       /* process-wide */
	size_t high_water;        /* unsent bytes that pause a connection's recv */
	size_t low_water;         /* ... and that resume it */
	size_t max_unconsumed;    /* residue limit per connection */
	uint64_t max_client_memory; /* unsent + residues, process-wide; 0 = off */
	uint32_t drain_timeout_ms;
	uint32_t handler_timeout_ms; /* --handler-timeout; 0 = no watchdog */
	size_t lua_memory;        /* --lua-memory: per worker Lua state */
	uint32_t ring_entries;    /* --ring-entries: SQ size; the CQ is 4x */
	int log_level;
	int pin;                  /* pin worker i to CPU i */
	int check_only;           /* --check: load the script and exit */
	int watch;                /* --watch: reload when the script changes */
	size_t dict_memory;       /* shared dictionary limit; 0 = script's/default */
	const char *builtin;      /* "echo": C handler, no script */
	/* TLS listeners (rl_tls.h): certificate and key files in pairs, the
	 * first the default; the rest passed to OpenSSL as given. */
	const char *tls_cert[RL_MAX_TLS_CERTS];
	const char *tls_key[RL_MAX_TLS_CERTS];
	int ntls_cert, ntls_key;
	const char *tls_alpn;         /* "h2,http/1.1": offered by ALPN */
	const char *tls_ciphers;      /* TLS 1.2 cipher list */
	const char *tls_ciphersuites; /* TLS 1.3 suites */
	const char *tls_groups;       /* key exchange groups */
	const char *tls_min_version;  /* "1.2" (default) or "1.3" */
	uint32_t tls_handshake_timeout_ms;
	const char *tls_client_ca;    /* verify client certificates with it */
	int tls_client_optional;      /* --tls-client-verify optional */
	uint32_t tls_ticket_rotation_s;
	int tls_release_buffers;      /* free OpenSSL's buffers when idle */
};

enum rl_options_result {
	RL_OPT_RUN = 0,
	RL_OPT_HELP = 1,     /* --help printed: exit 0 */
	RL_OPT_VERSION = 2,  /* --version printed: exit 0 */
};

void rl_options_defaults(struct rl_config *cfg, int online_cpus);
/* Parse argv into cfg.  Returns an rl_options_result, or -EINVAL with a
 * one-line explanation in err. */
int rl_options_parse(struct rl_config *cfg, int argc, char **argv,
		     char *err, size_t errlen);
/* "64k", "1m", "4096" -> bytes.  -EINVAL on junk or overflow. */
int rl_parse_size(const char *s, uint64_t *out);
const char *rl_options_usage(void);

#endif
