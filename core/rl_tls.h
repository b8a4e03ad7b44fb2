/* rl_tls.h: TLS with OpenSSL: the process's server contexts (certificates
 * chosen by SNI, ALPN, session tickets) and each connection's session.
 *
 * The ring still receives ciphertext into its buffers; OpenSSL decrypts it
 * into plain buffers behind the ring (rl_bufring.h), which handlers see as
 * slices like any received bytes.  What a handler sends is queued as plain
 * text and encrypted once, a record of up to 16 KiB at a time, into the
 * connection's send queue (rl_tls_io.c).  No TLS code of our own: records,
 * handshakes and crypto are OpenSSL's.
 */
#ifndef RL_TLS_H
#define RL_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "rl_options.h"
#include "rl_sendq.h"

struct rl_worker;
struct rl_conn;
struct rl_tls_server;           /* opaque: contexts of all certificates */

/* A connection's TLS state (c->tls). */
struct rl_tls_conn {
	void *ssl;                  /* SSL * */
	struct rl_worker *w;        /* for the send queue BIO */
	struct rl_conn *c;
	void *rbio;                 /* ciphertext received, not yet read */
	struct rl_tls_server *srv;  /* holds a reference while in use */
	struct rl_sendq plain;      /* plaintext queued, not yet encrypted */
	uint64_t hs_deadline_ns;    /* handshake must be done by then */
	int32_t listener;           /* accepted by listen address (OPEN) */
	uint8_t handshaking;
	uint8_t more;               /* plaintext may be left to read */
	uint8_t on_pending;         /* listed in w->tls_pending */
	uint8_t rx_full;            /* ciphertext backlog: receive stopped */
	uint8_t notify_sent;        /* close_notify queued */
	uint8_t peer_notify;        /* the peer's close_notify was read */
	uint8_t failed;             /* a fatal TLS error: no shutdown record */
	int eof_res;                /* a recv end seen while plaintext was left */
	uint8_t eof_deferred;
	uint8_t client;             /* outbound: CONNECT, not OPEN */
};

/* Process start: contexts from the --tls-* options.  0, or -EINVAL with
 * the reason in err (a bad file, a key that does not match). */
int rl_tls_server_load(const struct rl_config *cfg,
		       struct rl_tls_server **out, char *err, size_t errlen);
/* The contexts in use now, with a reference for the caller. */
struct rl_tls_server *rl_tls_server_get(void);
void rl_tls_server_put(struct rl_tls_server *s);
/* Install s as the contexts new connections use (NULL: none). */
void rl_tls_server_install(struct rl_tls_server *s);
/* The SSL_CTX * new sessions start with (the default certificate's). */
void *rl_tls_server_ctx(struct rl_tls_server *s);
/* "h2,http/1.1" into ALPN's wire format (out: 256 bytes).  0 or -EINVAL. */
int rl_tls_alpn_wire(const char *list, unsigned char *out, unsigned int *len,
		     char *err, size_t errlen);

/* -- Outbound (rl_tls_client.c) ------------------------------------------- */

struct rl_tls_client;
/* A client session (SSL *) for a connect to host (the address's host, a
 * name or a numeric address) configured by o (NULL: verify against the
 * system's store, SNI = host).  The context for o's files is made on
 * first use and kept; the last session a server gave for this name and
 * addr is offered again.  0, or -errno with the reason in err. */
int rl_tls_client_session(const struct rl_tls_client *o, const char *host,
			  const char *addr, void **ssl, char *err,
			  size_t errlen);

/* -- Worker side (rl_tls_io.c) -------------------------------------------- */

/* An accepted connection on a TLS listener: its session starts.  0 or
 * -errno (the caller closes it). */
int rl_w_tls_accept(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		    int listener);
/* An outbound tls:// connect to addr (host its host): its client session,
 * configured by o.  0, or -errno with the reason in w->connect_err. */
int rl_w_tls_client(struct rl_worker *w, struct rl_conn *c,
		    const struct rl_tls_client *o, const char *host,
		    const char *addr);
/* Its TCP connect completed: the handshake starts (the CONNECT event
 * comes when it is done).  0 or -errno (the caller closes it). */
int rl_w_tls_connected(struct rl_worker *w, struct rl_conn *c, uint32_t idx);
/* Ciphertext arrived in ring buffer bid (res bytes; res <= 0: the receive
 * ended).  Returns the events made (0 or 1). */
int rl_w_tls_recv(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		  int32_t bid, int res, void *ev);
/* conn:send on a TLS connection: plaintext queued for encryption. */
int rl_w_tls_send(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		  const void *p, size_t len, int32_t bid);
/* Before the connection's sends are submitted: encrypt queued plaintext,
 * add close_notify when it is closing. */
void rl_w_tls_process(struct rl_worker *w, struct rl_conn *c, uint32_t idx);
/* Plaintext left while the handler was not to see it: read it now if
 * it may (after process_conn's unblock and re-arm). */
void rl_w_tls_kick(struct rl_worker *w, struct rl_conn *c, uint32_t idx);
/* Plaintext left to read, handshakes to time out: events for this batch. */
int rl_w_tls_emit(struct rl_worker *w, void *ev, int n, int max);
/* Earliest handshake deadline (0: none). */
uint64_t rl_w_tls_due(const struct rl_worker *w);
void rl_w_tls_free(struct rl_worker *w, struct rl_conn *c);

#endif
