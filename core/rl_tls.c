/* rl_tls.c: the process's TLS server contexts: certificates chosen by SNI,
 * ALPN, protocol versions and ciphers; shared by every worker.
 *
 * One SSL_CTX per certificate: the first is the default, the one each new
 * session starts with, and the servername callback moves a session to the
 * context whose certificate names its SNI (exact names first, then
 * wildcards).  Session tickets are sealed with the process's ticket keys,
 * the same for every worker and every context (a session resumes on any
 * worker, and across certificate reloads), rotated every
 * --tls-ticket-rotation seconds: a ticket sealed with the newest key is
 * accepted for two more periods; a resumed session is given a new ticket
 * sealed with the newest key.  Workers take a reference on the set at each accept; a
 * new set (rl_tls_server_install) serves the next accepts while sessions
 * already begun keep theirs.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "rl_tls.h"

#define MAX_NAMES 64

struct tls_cert {
	SSL_CTX *ctx;
	char *names[MAX_NAMES];     /* DNS names, lower case; "*.x" wildcards */
	int nnames;
};

struct rl_tls_server {
	int refs;                   /* under lock */
	struct tls_cert certs[RL_MAX_TLS_CERTS];
	int ncerts;
	unsigned char alpn[256];    /* wire format: length-prefixed names */
	unsigned int alpn_len;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rl_tls_server *current;

static void free_server(struct rl_tls_server *s)
{
	for (int i = 0; i < s->ncerts; i++) {
		SSL_CTX_free(s->certs[i].ctx);
		for (int j = 0; j < s->certs[i].nnames; j++)
			free(s->certs[i].names[j]);
	}
	free(s);
}

struct rl_tls_server *rl_tls_server_get(void)
{
	struct rl_tls_server *s;

	pthread_mutex_lock(&lock);
	s = current;
	if (s)
		s->refs++;
	pthread_mutex_unlock(&lock);
	return s;
}

void rl_tls_server_put(struct rl_tls_server *s)
{
	int last;

	if (!s)
		return;
	pthread_mutex_lock(&lock);
	last = --s->refs == 0;
	pthread_mutex_unlock(&lock);
	if (last)
		free_server(s);
}

void rl_tls_server_install(struct rl_tls_server *s)
{
	struct rl_tls_server *old;

	pthread_mutex_lock(&lock);
	old = current;
	current = s;
	pthread_mutex_unlock(&lock);
	rl_tls_server_put(old);
}

/* -- Session ticket keys ---------------------------------------------------- */

#define TICKET_KEYS 3           /* the newest and two before it */

struct ticket_key {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
};

static struct ticket_key tkeys[TICKET_KEYS];   /* [0] the newest; under lock */
static int ntkeys;
static uint64_t tkey_born_s;
static uint32_t tkey_rotation_s = 3600;

static uint64_t mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec;
}

/* Under lock: a new newest key when the period is over (or none yet).
 * 0, or -1 when the random source failed (no ticket then). */
static int rotate_keys(void)
{
	uint64_t now = mono_s();
	struct ticket_key k;

	if (ntkeys && now - tkey_born_s < tkey_rotation_s)
		return 0;
	if (RAND_bytes((unsigned char *)&k, sizeof(k)) != 1)
		return -1;
	memmove(&tkeys[1], &tkeys[0], sizeof(tkeys[0]) * (TICKET_KEYS - 1));
	tkeys[0] = k;
	if (ntkeys < TICKET_KEYS)
		ntkeys++;
	/* Periods missed while idle age the old keys as well. */
	if (ntkeys > 1 && now - tkey_born_s >= 2ull * tkey_rotation_s)
		ntkeys = now - tkey_born_s >= 3ull * tkey_rotation_s ? 1 : 2;
	tkey_born_s = now;
	return 0;
}

/* OpenSSL seals (enc = 1) or opens (enc = 0) a ticket: AES-256-CBC and
 * HMAC-SHA256 with the key named in it.  Opening: 2 ok and renew, 0 an
 * unknown key (a full handshake). */
static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char *iv,
			 EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
	struct ticket_key k;
	OSSL_PARAM params[3];
	int which = -1;

	(void)ssl;
	pthread_mutex_lock(&lock);
	if (enc) {
		if (rotate_keys() == 0)
			which = 0;
	} else {
		if (ntkeys && mono_s() - tkey_born_s >= tkey_rotation_s)
			rotate_keys();
		for (int i = 0; i < ntkeys && which < 0; i++)
			if (!memcmp(name, tkeys[i].name, 16))
				which = i;
	}
	if (which >= 0)
		k = tkeys[which];
	pthread_mutex_unlock(&lock);
	if (which < 0)
		return 0;       /* sealing: no ticket; opening: unknown */
	if (enc) {
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
			return 0;
		memcpy(name, k.name, 16);
	}
	params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
						      k.hmac, sizeof(k.hmac));
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
						     (char *)"SHA256", 0);
	params[2] = OSSL_PARAM_construct_end();
	if (!EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv, enc) ||
	    !EVP_MAC_CTX_set_params(hctx, params))
		return -1;
	OPENSSL_cleanse(&k, sizeof(k));
	/* Opening: always "renew", so a resumed session gets a fresh ticket
	 * (a client uses each TLS 1.3 ticket once). */
	return enc ? 1 : 2;
}

/* -- Names ---------------------------------------------------------------- */

static int name_matches(const char *pattern, const char *name)
{
	const char *dot;

	if (!strcasecmp(pattern, name))
		return 2;
	/* "*.example.com" covers one label: "a.example.com", not
	 * "example.com" nor "a.b.example.com". */
	if (pattern[0] != '*' || pattern[1] != '.')
		return 0;
	dot = strchr(name, '.');
	return dot && dot != name && !strcasecmp(dot, pattern + 1);
}

static int pick_cert(const struct rl_tls_server *s, const char *name)
{
	int wild = -1;

	for (int i = 0; i < s->ncerts; i++)
		for (int j = 0; j < s->certs[i].nnames; j++) {
			int m = name_matches(s->certs[i].names[j], name);

			if (m == 2)
				return i;
			if (m && wild < 0)
				wild = i;
		}
	return wild;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
	struct rl_tls_server *s = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	int i;

	(void)alert;
	/* No name, or one no certificate has: the default answers. */
	if (!name || (i = pick_cert(s, name)) <= 0)
		return SSL_TLSEXT_ERR_OK;
	SSL_set_SSL_CTX(ssl, s->certs[i].ctx);
	return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		   const unsigned char *in, unsigned int inlen, void *arg)
{
	struct rl_tls_server *s = arg;
	unsigned char *sel;

	(void)ssl;
	if (SSL_select_next_proto(&sel, outlen, s->alpn, s->alpn_len, in,
				  inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;    /* none in common: no ALPN */
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

static void add_name(struct tls_cert *c, const char *n, size_t len)
{
	char *p;

	if (c->nnames == MAX_NAMES || !len || memchr(n, 0, len))
		return;
	p = strndup(n, len);
	if (p)
		c->names[c->nnames++] = p;
}

/* The certificate's DNS names (subjectAltName), else its common name. */
static void cert_names(struct tls_cert *c, X509 *x)
{
	GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL,
					       NULL);
	char cn[256];

	for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);

		if (g->type == GEN_DNS)
			add_name(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
				 (size_t)ASN1_STRING_length(g->d.dNSName));
	}
	GENERAL_NAMES_free(sans);
	if (!c->nnames && X509_NAME_get_text_by_NID(X509_get_subject_name(x),
						    NID_commonName, cn,
						    sizeof(cn)) > 0)
		add_name(c, cn, strlen(cn));
}

static int ssl_fail(char *err, size_t len, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char why[256];

	ERR_error_string_n(e, why, sizeof(why));
	ERR_clear_error();
	snprintf(err, len, "tls: %s '%s': %s", what, file ? file : "",
		 e ? why : "invalid");
	return -EINVAL;
}

/* "h2,http/1.1" into ALPN's wire format. */
int rl_tls_alpn_wire(const char *list, unsigned char *out, unsigned int *len,
		     char *err, size_t errlen)
{
	const char *p = list;

	*len = 0;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);

		if (n == 0 || n > 255 || *len + 1 + n > 256) {
			snprintf(err, errlen, "tls: invalid ALPN list '%s'", list);
			return -EINVAL;
		}
		out[(*len)++] = (unsigned char)n;
		memcpy(out + *len, p, n);
		*len += (unsigned int)n;
		p += n + (e ? 1 : 0);
	}
	return 0;
}

static int make_ctx(const struct rl_config *cfg, struct rl_tls_server *s,
		    int i, char *err, size_t len)
{
	struct tls_cert *c = &s->certs[i];
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx)
		return ssl_fail(err, len, "cannot make a context for", cfg->tls_cert[i]);
	c->ctx = ctx;
	SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version &&
				      !strcmp(cfg->tls_min_version, "1.3") ?
				      TLS1_3_VERSION : TLS1_2_VERSION);
	/* Renegotiation (TLS 1.2) refused; records of our own size. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
			    SSL_OP_CIPHER_SERVER_PREFERENCE |
			    SSL_OP_NO_COMPRESSION);
	/* OpenSSL's record buffers (~17 KiB each way) are kept by default:
	 * freeing them after every record cost 10-20% of keep-alive HTTPS
	 * throughput and multiplied p99 (README, TLS). */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
			 (cfg->tls_release_buffers ? SSL_MODE_RELEASE_BUFFERS : 0));
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Resumption by tickets only: no server-side cache to share. */
	SSL_CTX_set_num_tickets(ctx, 1);
	SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
	SSL_CTX_set_timeout(ctx, (long)cfg->tls_ticket_rotation_s * 2);
	/* Tickets carry it: a session resumes only where it began. */
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"ringline", 8);
	if (cfg->tls_ciphers && !SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers))
		return ssl_fail(err, len, "invalid --tls-ciphers", cfg->tls_ciphers);
	if (cfg->tls_ciphersuites &&
	    !SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites))
		return ssl_fail(err, len, "invalid --tls-ciphersuites",
				cfg->tls_ciphersuites);
	if (cfg->tls_groups && !SSL_CTX_set1_groups_list(ctx, cfg->tls_groups))
		return ssl_fail(err, len, "invalid --tls-groups", cfg->tls_groups);
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert[i]) != 1)
		return ssl_fail(err, len, "cannot load certificate", cfg->tls_cert[i]);
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key[i], SSL_FILETYPE_PEM) != 1)
		return ssl_fail(err, len, "cannot load key", cfg->tls_key[i]);
	if (SSL_CTX_check_private_key(ctx) != 1)
		return ssl_fail(err, len, "key does not match certificate",
				cfg->tls_cert[i]);
	cert_names(c, SSL_CTX_get0_certificate(ctx));
	if (cfg->tls_client_ca) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca);

		if (!names || SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca,
							     NULL) != 1) {
			sk_X509_NAME_pop_free(names, X509_NAME_free);
			return ssl_fail(err, len, "cannot load --tls-client-ca",
					cfg->tls_client_ca);
		}
		/* The CAs the client is told we accept. */
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
				   (cfg->tls_client_optional ? 0 :
				    SSL_VERIFY_FAIL_IF_NO_PEER_CERT), NULL);
	}
	SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
	SSL_CTX_set_tlsext_servername_arg(ctx, s);
	if (s->alpn_len)
		SSL_CTX_set_alpn_select_cb(ctx, on_alpn, s);
	return 0;
}

int rl_tls_server_load(const struct rl_config *cfg,
		       struct rl_tls_server **out, char *err, size_t errlen)
{
	struct rl_tls_server *s;
	int ret = 0;

	*out = NULL;
	if (!cfg->ntls_cert) {
		snprintf(err, errlen, "a tls:// listener needs --tls-cert FILE "
			 "and --tls-key FILE");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "tls: out of memory");
		return -ENOMEM;
	}
	s->refs = 1;
	if (cfg->tls_alpn)
		ret = rl_tls_alpn_wire(cfg->tls_alpn, s->alpn, &s->alpn_len, err,
				       errlen);
	pthread_mutex_lock(&lock);
	tkey_rotation_s = cfg->tls_ticket_rotation_s ? cfg->tls_ticket_rotation_s
						      : 3600;
	pthread_mutex_unlock(&lock);
	for (int i = 0; !ret && i < cfg->ntls_cert; i++) {
		s->ncerts = i + 1;
		ret = make_ctx(cfg, s, i, err, errlen);
	}
	if (ret) {
		free_server(s);
		return ret;
	}
	*out = s;
	return 0;
}

/* The context a new session starts with: the default certificate's. */
void *rl_tls_server_ctx(struct rl_tls_server *s)
{
	return s->certs[0].ctx;
}
