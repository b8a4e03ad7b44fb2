/* rl_tls_io.c: a worker's TLS sessions: ciphertext from the ring into
 * OpenSSL, plaintext out into plain buffers (leased like ring buffers),
 * handler sends encrypted into the send queue, handshake deadlines.
 *
 * Receive: each ring buffer of ciphertext is written into the session's
 * memory BIO and goes back to the ring at once; one plain buffer of
 * plaintext is read per event, in order, and what is left waits on
 * w->tls_pending for the next poll (one event per completion, as reap
 * counts them).  While more than RX_BACKLOG bytes of ciphertext wait
 * there, the receive stops: a client cannot make us hold more.
 * Send: conn:send queues plaintext (leased slices stay zero-copy until
 * encrypted) in t->plain; it is encrypted before the connection's sends
 * are submitted, or as soon as a full record's worth is queued, straight
 * into the send queue by a BIO whose write is rl_sendq_push_copy.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "rl_tls.h"
#include "rl_worker_int.h"

#define RX_BACKLOG (64 * 1024)
#define RECORD_MAX 16384

/* -- The send queue as OpenSSL's write BIO ---------------------------------- */

static BIO_METHOD *sendq_method;
static pthread_once_t sendq_once = PTHREAD_ONCE_INIT;

static int sendq_write(BIO *b, const char *data, int len)
{
	struct rl_tls_conn *t = BIO_get_data(b);
	struct rl_worker *w = t->w;
	struct rl_conn *c = t->c;

	if (len <= 0)
		return 0;
	if (rl_sendq_push_copy(&c->sq, &w->pool, data, (size_t)len))
		return -1;
	return len;
}

static long sendq_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)b; (void)num; (void)ptr;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void make_method(void)
{
	sendq_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				    "ringline send queue");
	if (sendq_method) {
		BIO_meth_set_write(sendq_method, sendq_write);
		BIO_meth_set_ctrl(sendq_method, sendq_ctrl);
	}
}

/* -- Failures --------------------------------------------------------------- */

/* The session cannot go on: what OpenSSL queued (an alert) is sent, then
 * the connection closes.  Logged at debug: a client's broken handshake is
 * not the operator's problem, only counted. */
static NOINLINE void tls_fail(struct rl_worker *w, struct rl_conn *c,
			      uint32_t idx, const char *what, int timeout)
{
	struct rl_tls_conn *t = c->tls;
	unsigned long e = ERR_get_error();
	char why[200], text[256];

	long v = t->ssl ? SSL_get_verify_result(t->ssl) : X509_V_OK;

	if (timeout)
		snprintf(why, sizeof(why), "timed out");
	else if (t->handshaking && v != X509_V_OK)
		/* Which check of the peer's certificate failed, not just
		 * "certificate verify failed". */
		snprintf(why, sizeof(why), "certificate verify failed: %s",
			 X509_verify_cert_error_string(v));
	else if (e)
		ERR_error_string_n(e, why, sizeof(why));
	else
		snprintf(why, sizeof(why), "connection error");
	ERR_clear_error();
	snprintf(text, sizeof(text), "tls %s: %s", what, why);
	rl_debug(w->id, "conn %u: %s", idx, text);
	if (t->handshaking) {
		if (timeout)
			w->stats.tls_handshake_timeouts++;
		else
			w->stats.tls_handshake_failures++;
	} else {
		w->stats.tls_errors++;
	}
	t->failed = 1;
	t->more = 0;
	if (!c->close_reason) {
		c->close_reason = timeout ? RL_CLOSE_TIMEOUT : RL_CLOSE_TLS;
		free(c->close_text);
		c->close_text = strdup(text);
	}
	/* Nothing more is read; an alert OpenSSL queued still goes out. */
	c->close_req = 1;
	queue_work(w, c, idx);
}

/* -- Sessions --------------------------------------------------------------- */

/* A session over ssl for c (which owns ssl from now on, and srv's
 * reference): its BIOs, its state.  0 or -ENOMEM (ssl freed). */
static int session_new(struct rl_worker *w, struct rl_conn *c, SSL *ssl,
		       struct rl_tls_server *srv)
{
	struct rl_tls_conn *t = NULL;
	BIO *rbio = NULL, *wbio = NULL;

	pthread_once(&sendq_once, make_method);
	if (ssl && sendq_method && (t = calloc(1, sizeof(*t)))) {
		rbio = BIO_new(BIO_s_mem());
		wbio = BIO_new(sendq_method);
	}
	if (!rbio || !wbio) {
		BIO_free(rbio);
		BIO_free(wbio);
		SSL_free(ssl);
		rl_tls_server_put(srv);
		free(t);
		return -ENOMEM;
	}
	t->w = w;
	t->c = c;
	t->ssl = ssl;
	t->srv = srv;
	/* Empty means "more to come", not end of file. */
	BIO_set_mem_eof_return(rbio, -1);
	BIO_set_data(wbio, t);
	BIO_set_init(wbio, 1);
	SSL_set_bio(ssl, rbio, wbio);
	t->rbio = rbio;
	rl_sendq_init(&t->plain);
	t->handshaking = 1;
	c->tls = t;
	return 0;
}

/* The handshake must be over by --tls-handshake-timeout from now. */
static int deadline_start(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	if (vec_push64(&w->tls_hs, (uint64_t)c->gen << 32 | idx))
		return -ENOMEM;
	c->tls->hs_deadline_ns = w->clock.mono_ns +
		(uint64_t)w->cfg->tls_handshake_timeout_ms * 1000000;
	return 0;
}

int rl_w_tls_accept(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		    int listener)
{
	struct rl_tls_server *srv = rl_tls_server_get();
	SSL *ssl = srv ? SSL_new(rl_tls_server_ctx(srv)) : NULL;
	int ret;

	if ((ret = session_new(w, c, ssl, srv)))
		return ret;
	SSL_set_accept_state(ssl);
	c->tls->listener = listener;
	if ((ret = deadline_start(w, c, idx)))
		rl_w_tls_free(w, c);
	return ret;
}

int rl_w_tls_client(struct rl_worker *w, struct rl_conn *c,
		    const struct rl_tls_client *o, const char *host,
		    const char *addr)
{
	void *ssl;
	int ret = rl_tls_client_session(o, host, addr, &ssl, w->connect_err,
					sizeof(w->connect_err));

	if (ret)
		return ret;
	if ((ret = session_new(w, c, ssl, NULL))) {
		snprintf(w->connect_err, sizeof(w->connect_err),
			 "tls: out of memory for a session to '%s'", addr);
		return ret;
	}
	c->tls->client = 1;
	return 0;
}

int rl_w_tls_connected(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_tls_conn *t = c->tls;
	int r;

	if (deadline_start(w, c, idx))
		return -ENOMEM;
	/* The ClientHello goes into the send queue, out with the next
	 * submission; the server's answer comes as any receive. */
	r = SSL_do_handshake(t->ssl);
	if (r != 1 && SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ) {
		tls_fail(w, c, idx, "handshake", 0);
		return 0;
	}
	queue_work(w, c, idx);
	return 0;
}

void rl_w_tls_free(struct rl_worker *w, struct rl_conn *c)
{
	struct rl_tls_conn *t = c->tls;

	if (!t)
		return;
	SSL_free(t->ssl);       /* and both BIOs */
	rl_sendq_clear(&t->plain, &w->pool, &w->br);
	rl_tls_server_put(t->srv);
	free(t);
	c->tls = NULL;
}

static void pending_push(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_tls_conn *t = c->tls;

	if (!t->on_pending &&
	    vec_push64(&w->tls_pending, (uint64_t)c->gen << 32 | idx) == 0)
		t->on_pending = 1;
}

static int handshake(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		     rl_event *ev)
{
	struct rl_tls_conn *t = c->tls;
	int r = SSL_do_handshake(t->ssl);

	queue_work(w, c, idx);          /* its records are in the queue */
	if (r != 1) {
		int e = SSL_get_error(t->ssl, r);

		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			tls_fail(w, c, idx, "handshake", 0);
		return 0;
	}
	t->handshaking = 0;
	w->stats.tls_handshakes++;
	if (SSL_session_reused(t->ssl))
		w->stats.tls_resumed++;
	/* Application data may have come with the last handshake flight. */
	t->more = 1;
	pending_push(w, c, idx);
	if (t->client)
		fill_event(ev, RL_EV_CONNECT, idx, c->gen, 0);
	else
		fill_event(ev, RL_EV_OPEN, idx, c->gen, t->listener);
	return 1;
}

/* One plain buffer of plaintext as a DATA event: 1, or 0 when there is
 * none now. */
static int read_plain(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		      rl_event *ev)
{
	struct rl_tls_conn *t = c->tls;
	int32_t bid = rl_bufring_take_plain(&w->br);
	uint32_t size = w->br.size, n = 0;
	size_t queued = c->sq.bytes;
	uint8_t *p;
	int r = 0, e = SSL_ERROR_NONE;

	if (bid < 0) {
		t->more = 1;            /* read when a plain buffer is back */
		pending_push(w, c, idx);
		return 0;
	}
	p = rl_bufring_addr(&w->br, (uint32_t)bid);
	while (n < size && (r = SSL_read(t->ssl, p + n, (int)(size - n))) > 0)
		n += (uint32_t)r;
	if (n < size)
		e = SSL_get_error(t->ssl, r);
	/* Reading can write: an alert (a refused renegotiation), a TLS 1.3
	 * key update's answer. */
	if (c->sq.bytes != queued)
		queue_work(w, c, idx);
	t->more = n == size || (n && e != SSL_ERROR_WANT_READ);
	if (BIO_ctrl_pending(t->rbio) < RX_BACKLOG / 2 && t->rx_full) {
		t->rx_full = 0;
		queue_work(w, c, idx);  /* receive again */
	}
	if (n == 0) {
		rl_bufring_unref(&w->br, (uint32_t)bid);
		if (e == SSL_ERROR_ZERO_RETURN) {
			t->peer_notify = 1;     /* close_notify: the peer's EOF */
			t->eof_deferred = 0;
			return rl_w_recv_ended(w, c, idx, 0, ev);
		}
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
			tls_fail(w, c, idx, "read", 0);
			return 0;
		}
		if (t->eof_deferred) {
			/* The TCP stream ended (maybe mid-record, without a
			 * close_notify: the end is the peer's, as for TCP). */
			t->eof_deferred = 0;
			return rl_w_recv_ended(w, c, idx, t->eof_res, ev);
		}
		return 0;
	}
	if (unlikely(vec_push32(&w->held, (uint32_t)bid))) {
		rl_bufring_unref(&w->br, (uint32_t)bid);
		c->close_reason = -ENOMEM;
		c->aborting = 1;
		queue_work(w, c, idx);
		return 0;
	}
	if (t->more || t->eof_deferred)
		pending_push(w, c, idx);
	ev->type = RL_EV_DATA;
	ev->conn = idx;
	ev->gen = c->gen;
	ev->bid = bid;
	ev->ptr = p;
	ev->len = n;
	ev->res = 0;
	return 1;
}

/* The handler may be offered more now (not paused, nothing held). */
static inline int may_offer(const struct rl_conn *c)
{
	return offer_live(c) && !c->user_paused && !c->wr_blocked &&
	       !rx_holding(c);
}

int rl_w_tls_recv(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		  int32_t bid, int res, void *evp)
{
	struct rl_tls_conn *t = c->tls;
	rl_event *ev = evp;
	int live = offer_live(c) && !t->failed;

	if (bid >= 0) {
		if (res > 0 && live) {
			w->stats.bytes_in += (uint64_t)res;
			c->active_ns = w->clock.mono_ns;
			if (BIO_write(t->rbio, rl_bufring_addr(&w->br, (uint32_t)bid),
				      res) != res) {
				c->close_reason = -ENOMEM;
				c->aborting = 1;
				live = 0;
			}
		}
		/* Copied into the session: the buffer is the ring's again. */
		rl_bufring_unref(&w->br, (uint32_t)bid);
	}
	if (res <= 0) {
		if (res == 0 && live && !t->handshaking) {
			/* The end comes after the plaintext before it. */
			t->eof_deferred = 1;
			t->eof_res = 0;
			pending_push(w, c, idx);
			queue_work(w, c, idx);
			return 0;
		}
		return rl_w_recv_ended(w, c, idx, res, ev);
	}
	if (!live)
		return 0;
	if (BIO_ctrl_pending(t->rbio) > RX_BACKLOG) {
		t->rx_full = 1;         /* the receive stops (process_conn) */
		queue_work(w, c, idx);
	}
	if (t->handshaking)
		return handshake(w, c, idx, ev);
	if (t->on_pending || !may_offer(c)) {
		/* Older plaintext waits to be read first, or the handler is not
		 * to see more now: read in its turn. */
		t->more = 1;
		if (may_offer(c))
			pending_push(w, c, idx);
		return 0;
	}
	return read_plain(w, c, idx, ev);
}

/* -- Sending ---------------------------------------------------------------- */

static void encrypt(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_tls_conn *t = c->tls;
	struct iovec iov[16];

	while (t->plain.bytes && !t->failed) {
		size_t bytes, len = 0;
		struct rl_sendfile *f = rl_sendq_front_file(&t->plain);
		int niov, r;
		const void *src;

		if (f) {
			/* A file's bytes are read as the send queue has room
			 * (a slow reader holds one record's worth, not the
			 * file), from the page cache or, cold, from disk on
			 * this thread. */
			ssize_t got;

			if (sq_marked(c) > w->cfg->high_water)
				break;
			len = f->unread < RECORD_MAX ? (size_t)f->unread : RECORD_MAX;
			got = pread(f->fd, w->tls_stage, len, f->pos);
			if (got <= 0) {
				rl_warn(w->id, "conn %u: file read failed or cut "
					"short: closing", idx);
				c->close_reason = got < 0 ? -errno : -EIO;
				c->aborting = 1;
				break;
			}
			r = SSL_write(t->ssl, w->tls_stage, (int)got);
			if (r != (int)got) {
				tls_fail(w, c, idx, "write", 0);
				c->aborting = 1;
				break;
			}
			rl_sendq_file_sent(&t->plain, &w->pool, &w->br, (size_t)r);
			continue;
		}
		niov = rl_sendq_iov(&t->plain, iov, 16, &bytes);
		if (niov <= 0)
			break;
		if (niov == 1 || iov[0].iov_len >= RECORD_MAX) {
			src = iov[0].iov_base;
			len = iov[0].iov_len < RECORD_MAX ? iov[0].iov_len : RECORD_MAX;
		} else {
			/* Small pieces (a pipeline's replies) make one record. */
			for (int i = 0; i < niov && len < RECORD_MAX; i++) {
				size_t n = iov[i].iov_len;

				if (n > RECORD_MAX - len)
					n = RECORD_MAX - len;
				memcpy(w->tls_stage + len, iov[i].iov_base, n);
				len += n;
			}
			src = w->tls_stage;
		}
		r = SSL_write(t->ssl, src, (int)len);
		if (r <= 0) {
			tls_fail(w, c, idx, "write", 0);
			c->aborting = 1;
			break;
		}
		rl_sendq_advance(&t->plain, &w->pool, &w->br, (size_t)r);
	}
	/* No queue_work: process_conn, which calls this, submits next. */
}

int rl_w_tls_send(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		  const void *p, size_t len, int32_t bid)
{
	struct rl_tls_conn *t = c->tls;
	int ret;

	if (bid >= 0 && rl_bufring_spare(&w->br, (uint32_t)bid))
		ret = rl_sendq_push_ref(&t->plain, &w->br, p, len, bid);
	else
		ret = rl_sendq_push_copy(&t->plain, &w->pool, p, len);
	if (ret)
		return ret;
	/* A full record is ready: encrypt now, so what a handler queued
	 * counts (--high-water, rl_conn_writable) while it is still
	 * running. */
	if (t->plain.bytes >= RECORD_MAX && !t->handshaking && !t->failed)
		encrypt(w, c, idx);
	queue_work(w, c, idx);
	return 0;
}

void rl_w_tls_process(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_tls_conn *t = c->tls;

	if (t->handshaking || t->failed)
		return;
	if (t->plain.bytes)
		encrypt(w, c, idx);
	/* Closing, or done writing: close_notify is the last record. */
	if (!t->notify_sent && !t->plain.bytes &&
	    (c->close_req || c->wr_shut_req ||
	     (c->rd_eof && !c->eof_event && !rx_holding(c) && !c->eof_pending))) {
		SSL_shutdown(t->ssl);
		ERR_clear_error();
		t->notify_sent = 1;
	}
}

void rl_w_tls_kick(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct rl_tls_conn *t = c->tls;

	if ((t->more || t->eof_deferred) && !t->handshaking && may_offer(c))
		pending_push(w, c, idx);
}

/* -- Each poll ----------------------------------------------------------- */

static void expire_handshakes(struct rl_worker *w)
{
	uint64_t *q = w->tls_hs.p;

	while (w->tls_hs.head < w->tls_hs.n) {
		uint64_t e = q[w->tls_hs.head];
		uint32_t idx = (uint32_t)e;
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(e >> 32));

		if (c && c->tls && c->tls->handshaking && !c->tls->failed &&
		    c->state == RL_CONN_OPEN) {
			/* Same timeout for all: the first is the earliest. */
			if (c->tls->hs_deadline_ns > w->clock.mono_ns)
				break;
			tls_fail(w, c, idx, "handshake", 1);
			c->aborting = 1;
		}
		w->tls_hs.head++;
	}
	if (w->tls_hs.head == w->tls_hs.n)
		w->tls_hs.head = w->tls_hs.n = 0;
}

uint64_t rl_w_tls_due(const struct rl_worker *w)
{
	const uint64_t *q = w->tls_hs.p;
	const struct rl_conn *c;
	uint64_t e;

	if (w->tls_hs.head == w->tls_hs.n)
		return 0;
	e = q[w->tls_hs.head];
	c = rl_conntab_get(&w->conns, (uint32_t)e, (uint32_t)(e >> 32));
	/* One gone: look again at once, to move past it. */
	return c && c->tls ? c->tls->hs_deadline_ns : 1;
}

int rl_w_tls_emit(struct rl_worker *w, void *evp, int n, int max)
{
	rl_event *ev = evp;
	struct rl_vec cur;
	uint64_t *q;

	if (w->tls_hs.n)
		expire_handshakes(w);
	if (!w->tls_pending.n)
		return n;
	/* Only those listed now: a connection listed again (read_plain)
	 * goes on the fresh list and waits a poll. */
	cur = w->tls_pending;
	w->tls_pending = w->tls_spare;
	q = cur.p;
	while (cur.head < cur.n) {
		uint64_t e = q[cur.head];
		uint32_t idx = (uint32_t)e;
		struct rl_conn *c = rl_conntab_get(&w->conns, idx,
						   (uint32_t)(e >> 32));

		if (n >= max || !w->br.nplain_free)
			break;
		cur.head++;
		if (!c || !c->tls)
			continue;
		c->tls->on_pending = 0;
		if (!may_offer(c) || c->tls->failed)
			continue;       /* process_conn lists it on resume */
		n += read_plain(w, c, idx, &ev[n]);
	}
	/* Not reached this time: listed again, still flagged. */
	for (; cur.head < cur.n; cur.head++)
		if (vec_push64(&w->tls_pending, q[cur.head])) {
			uint32_t idx = (uint32_t)q[cur.head];
			struct rl_conn *c = rl_conntab_get(&w->conns, idx,
				(uint32_t)(q[cur.head] >> 32));

			if (c && c->tls)
				c->tls->on_pending = 0;
		}
	cur.head = cur.n = 0;
	w->tls_spare = cur;
	return n;
}

/* -- What handlers ask --------------------------------------------------- */

/* The peer certificate's subject, RFC 2253 ("CN=a,O=b"), when it was
 * verified; "" for none. */
static int peer_subject(SSL *ssl, char *buf, size_t len)
{
	X509 *x = SSL_get0_peer_certificate(ssl);
	BIO *b;
	int n;

	if (!x || SSL_get_verify_result(ssl) != X509_V_OK ||
	    SSL_get_verify_mode(ssl) == SSL_VERIFY_NONE)
		return 0;
	if (!(b = BIO_new(BIO_s_mem())))
		return -ENOMEM;
	X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
	n = BIO_read(b, buf, (int)len);
	BIO_free(b);
	return n > 0 ? n : 0;
}

int rl_conn_tls_info(rl_worker *w, uint32_t conn, uint32_t gen, int what,
		     char *buf, size_t len)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);
	const unsigned char *a = NULL;
	unsigned int alen = 0;
	const char *s = NULL;
	SSL *ssl;

	if (!c || !c->tls)
		return -ENOTCONN;
	ssl = c->tls->ssl;
	switch (what) {
	case RL_TLS_VERSION:
		s = SSL_get_version(ssl);
		break;
	case RL_TLS_CIPHER:
		s = SSL_get_cipher_name(ssl);
		break;
	case RL_TLS_ALPN:
		SSL_get0_alpn_selected(ssl, &a, &alen);
		break;
	case RL_TLS_SNI:
		s = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
		break;
	case RL_TLS_RESUMED:
		s = SSL_session_reused(ssl) ? "1" : "";
		break;
	case RL_TLS_PEER_SUBJECT:
		return peer_subject(ssl, buf, len);
	default:
		return -EINVAL;
	}
	if (s) {
		a = (const unsigned char *)s;
		alen = (unsigned int)strlen(s);
	}
	if (alen > len)
		alen = (unsigned int)len;
	if (alen)
		memcpy(buf, a, alen);
	return (int)alen;
}
