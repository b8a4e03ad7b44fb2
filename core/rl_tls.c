/* rl_tls.c: the process's TLS server contexts: certificates chosen by SNI,
 * ALPN, protocol versions and ciphers; shared by every worker.
 *
 * One SSL_CTX per certificate: the first is the default, the one each new
 * session starts with, and the servername callback moves a session to the
 * context whose certificate names its SNI (exact names first, then
 * wildcards).  Session tickets are encrypted with the keys of the context
 * a session started with, the same for all workers, so a session resumes
 * on any of them.  Workers take a reference on the set at each accept; a
 * new set (rl_tls_server_install) serves the next accepts while sessions
 * already begun keep theirs.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
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
static int alpn_wire(const char *list, unsigned char *out, unsigned int *len,
		     char *err, size_t errlen)
{
	const char *p = list;

	*len = 0;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);

		if (n == 0 || n > 255 || *len + 1 + n > 256) {
			snprintf(err, errlen, "tls: invalid --tls-alpn '%s'", list);
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
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
			 SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Resumption by tickets only: no server-side cache to share. */
	SSL_CTX_set_num_tickets(ctx, 1);
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
		ret = alpn_wire(cfg->tls_alpn, s->alpn, &s->alpn_len, err, errlen);
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
