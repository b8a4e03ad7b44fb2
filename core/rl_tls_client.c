/* rl_tls_client.c: outbound TLS: a context per distinct client
 * configuration (trust store, client certificate, ALPN, verification),
 * made on first use and shared by all workers, and the last session each
 * server gave, offered again on the next connect to it.
 *
 * Verification is on by default: the chain against the CA file or the
 * system's store, and the server's name (the SNI, by default the host of
 * the address; a numeric address is checked against the certificate's IP
 * addresses).  Contexts live as long as the process (a handful: one per
 * configuration a script uses); CA files are read once, when the first
 * connect with them is made.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "rl_api.h"
#include "rl_tls.h"

#define MAX_CONTEXTS 32
#define MAX_SESSIONS 64         /* per context, the oldest replaced */

struct client_session {
	char *key;                  /* "sni addr" */
	SSL_SESSION *sess;
};

struct client_ctx {
	char *key;                  /* the configuration, as text */
	SSL_CTX *ctx;
	struct client_session sess[MAX_SESSIONS];
	int nsess, next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct client_ctx ctxs[MAX_CONTEXTS];
static int nctxs;
static int key_index = -1;      /* SSL ex_data: the session key */
static int ctx_index = -1;      /* SSL_CTX ex_data: its client_ctx */

static void free_key(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
		     long argl, void *argp)
{
	(void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
	free(ptr);
}

/* A session the server gave (a TLS 1.3 ticket after the handshake, or
 * the TLS 1.2 session): kept for the next connect to the same name and
 * address.  Returns 1: we keep the reference. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct client_ctx *cc = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl),
						    ctx_index);
	const char *key = SSL_get_ex_data(ssl, key_index);
	struct client_session *slot = NULL;
	char *copy;

	if (!cc || !key || !SSL_SESSION_is_resumable(sess))
		return 0;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < cc->nsess && !slot; i++)
		if (!strcmp(cc->sess[i].key, key))
			slot = &cc->sess[i];
	if (!slot) {
		copy = strdup(key);
		if (!copy) {
			pthread_mutex_unlock(&lock);
			return 0;
		}
		if (cc->nsess < MAX_SESSIONS) {
			slot = &cc->sess[cc->nsess++];
		} else {
			slot = &cc->sess[cc->next];
			cc->next = (cc->next + 1) % MAX_SESSIONS;
			free(slot->key);
		}
		slot->key = copy;
	} else {
		SSL_SESSION_free(slot->sess);   /* NULL when taken */
	}
	slot->sess = sess;
	pthread_mutex_unlock(&lock);
	return 1;
}

static int fail(char *err, size_t len, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char why[256];

	ERR_error_string_n(e, why, sizeof(why));
	ERR_clear_error();
	snprintf(err, len, "tls: %s%s%s%s: %s", what, file ? " '" : "",
		 file ? file : "", file ? "'" : "", e ? why : "invalid");
	return -EINVAL;
}

static SSL_CTX *make_ctx(const struct rl_tls_client *o, char *err, size_t len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	unsigned char alpn[256];
	unsigned int alpn_len = 0;

	if (!ctx) {
		fail(err, len, "cannot make a client context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	/* Buffers kept, as the server side's (rl_tls.c). */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
	/* Our own store of sessions, by server: OpenSSL's client cache is
	 * not looked up by itself. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
				       SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, on_new_session);
	if (o->verify) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		if (o->ca ? SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1
			  : SSL_CTX_set_default_verify_paths(ctx) != 1) {
			fail(err, len, "cannot load CA file", o->ca ? o->ca
								   : "(system)");
			goto bad;
		}
	}
	if (o->cert || o->key) {
		if (!o->cert || !o->key) {
			snprintf(err, len, "tls: a client certificate needs both "
				 "cert and key");
			goto bad;
		}
		if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1) {
			fail(err, len, "cannot load client certificate", o->cert);
			goto bad;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			fail(err, len, "cannot load client key (or it does not "
			     "match)", o->key);
			goto bad;
		}
	}
	if (o->alpn && o->alpn[0]) {
		if (rl_tls_alpn_wire(o->alpn, alpn, &alpn_len, err, len))
			goto bad;
		/* 0 is success here. */
		if (SSL_CTX_set_alpn_protos(ctx, alpn, alpn_len)) {
			fail(err, len, "cannot set ALPN", o->alpn);
			goto bad;
		}
	}
	return ctx;
bad:
	SSL_CTX_free(ctx);
	return NULL;
}

/* Under lock: the context for o, made now if it is new. */
static struct client_ctx *context_for(const struct rl_tls_client *o,
				      char *err, size_t len)
{
	char key[4096];
	struct client_ctx *cc;

	snprintf(key, sizeof(key), "%d\x1f%s\x1f%s\x1f%s\x1f%s", o->verify ? 1 : 0,
		 o->ca ? o->ca : "", o->cert ? o->cert : "",
		 o->key ? o->key : "", o->alpn ? o->alpn : "");
	for (int i = 0; i < nctxs; i++)
		if (!strcmp(ctxs[i].key, key))
			return &ctxs[i];
	if (nctxs == MAX_CONTEXTS) {
		snprintf(err, len, "tls: too many client configurations (at "
			 "most %d different ca/cert/key/alpn/verify)", MAX_CONTEXTS);
		return NULL;
	}
	cc = &ctxs[nctxs];
	memset(cc, 0, sizeof(*cc));
	if (!(cc->key = strdup(key))) {
		snprintf(err, len, "tls: out of memory");
		return NULL;
	}
	if (!(cc->ctx = make_ctx(o, err, len))) {
		free(cc->key);
		return NULL;
	}
	SSL_CTX_set_ex_data(cc->ctx, ctx_index, cc);
	nctxs++;
	return cc;
}

static int is_numeric(const char *host)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, host, buf) == 1 ||
	       inet_pton(AF_INET6, host, buf) == 1;
}

int rl_tls_client_session(const struct rl_tls_client *opts, const char *host,
			  const char *addr, void **out, char *err,
			  size_t errlen)
{
	static const struct rl_tls_client defaults = { .verify = 1 };
	const struct rl_tls_client *o = opts ? opts : &defaults;
	const char *name = o->sni && o->sni[0] ? o->sni : host;
	SSL_SESSION *resume = NULL;
	struct client_ctx *cc;
	char skey[512];
	SSL *ssl;

	*out = NULL;
	pthread_mutex_lock(&lock);
	if (key_index < 0) {
		key_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_key);
		ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	}
	cc = context_for(o, err, errlen);
	snprintf(skey, sizeof(skey), "%s %s", name, addr);
	for (int i = 0; cc && i < cc->nsess; i++)
		if (!strcmp(cc->sess[i].key, skey) && cc->sess[i].sess) {
			/* A TLS 1.3 ticket is used once (RFC 8446, C.4; OpenSSL
			 * marks it spent): the server's next one replaces it. */
			resume = cc->sess[i].sess;
			cc->sess[i].sess = NULL;
			break;
		}
	pthread_mutex_unlock(&lock);
	if (!cc)
		return -EINVAL;
	ssl = SSL_new(cc->ctx);
	if (!ssl) {
		SSL_SESSION_free(resume);
		return fail(err, errlen, "cannot make a client session", NULL);
	}
	SSL_set_connect_state(ssl);
	if (!SSL_set_ex_data(ssl, key_index, strdup(skey)))
		goto bad;
	/* SNI names only: an address is not sent (RFC 6066, 3). */
	if (!is_numeric(name) && !SSL_set_tlsext_host_name(ssl, name))
		goto bad;
	if (o->verify) {
		if (is_numeric(name) ?
		    !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) :
		    !SSL_set1_host(ssl, name))
			goto bad;
	}
	if (resume) {
		SSL_set_session(ssl, resume);
		SSL_SESSION_free(resume);
	}
	*out = ssl;
	return 0;
bad:
	SSL_SESSION_free(resume);
	SSL_free(ssl);
	return fail(err, errlen, "cannot set up a client session for", name);
}
