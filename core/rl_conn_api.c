/* rl_conn_api.c: the calls handlers make that are not per message:
 * closing, pausing, connection and worker facts, the shared dict. */

#include <errno.h>
#include <string.h>
#include <time.h>

#include "rl_tls.h"
#include "rl_worker_int.h"

/* The connection a handler names, unless it is gone or only waiting for
 * its CLOSE event to reach Lua. */
static inline struct rl_conn *live_conn(rl_worker *w, uint32_t conn,
					uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	return c && c->state != RL_CONN_DEAD ? c : NULL;
}

/* -- Connection calls from handlers ----------------------------------------- */

rl_dict *rl_shared_dict(rl_worker *w)
{
	return w->shared->dict;
}

int rl_worker_prefetch(rl_worker *w, const rl_event *ev, int n,
		       const char *prefix, size_t plen)
{
	enum { GROUP = 32 };
	const uint8_t *keys[GROUP];
	uint32_t lens[GROUP];
	int m = 0, found = 0;

	/* The events' buffers are all still leased: nothing of the batch has
	 * been dispatched (or released) yet. */
	for (int i = 0; i < n; i++) {
		const uint8_t *p, *q, *sp, *end;

		if (ev[i].type != RL_EV_DATA || ev[i].len <= plen ||
		    memcmp(ev[i].ptr, prefix, plen))
			continue;
		p = (const uint8_t *)ev[i].ptr + plen;
		end = (const uint8_t *)ev[i].ptr + ev[i].len;
		/* The key ends at a space, CR or LF: find the line's LF, then
		 * a space before it (memchr twice beats a loop over three
		 * bytes).  No LF: the key may go on in the next bytes. */
		q = memchr(p, '\n', (size_t)(end - p));
		if (!q)
			continue;
		sp = memchr(p, ' ', (size_t)(q - p));
		if (sp)
			q = sp;
		else if (q > p && q[-1] == '\r')
			q--;
		if (q == p)
			continue;
		keys[m] = p;
		lens[m] = (uint32_t)(q - p);
		if (++m == GROUP) {
			found += rl_dict_prefetch(w->shared->dict, keys, lens, m);
			m = 0;
		}
	}
	if (m)
		found += rl_dict_prefetch(w->shared->dict, keys, lens, m);
	return found;
}

const rl_clock *rl_worker_clock(rl_worker *w)
{
	return &w->clock;
}

int64_t rl_unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rl_conn_close(rl_worker *w, uint32_t conn, uint32_t gen, int reason,
		  int abort)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	if (!c->close_reason)
		c->close_reason = reason;
	/* Waiting for its name with nothing queued to send: no reason to
	 * wait for the answer (queued bytes still go out once connected). */
	if (c->resolving && (abort || !c->sq.bytes)) {
		rl_w_connect_abandon(w, c, conn, reason);
		return 0;
	}
	if (abort)
		c->aborting = 1;
	else
		c->close_req = 1;
	/* An abort does not wait for a connect in flight to time out. */
	if (abort && c->state == RL_CONN_CONNECTING)
		cancel_connect(w, c, conn);
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_shutdown(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->wr_shut_req = 1;
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_pause(rl_worker *w, uint32_t conn, uint32_t gen, int pause)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	if (pause) {
		/* Bytes already left unconsumed wait for the resume.  During
		 * an offer to this connection, how the offer ends decides
		 * (offer_done). */
		if (c->rx.len && c->rx.phase == RL_RX_IDLE)
			c->rx_held = 1;
		c->user_paused = 1;
	} else {
		/* Resumed with bytes held: offered again at the next poll,
		 * without waiting for more from the peer. */
		if (c->user_paused && rx_holding(c) &&
		    c->rx.phase == RL_RX_IDLE && !c->rx_reoffer &&
		    again_push(w, c, conn) == 0)
			c->rx_reoffer = 1;
		c->user_paused = 0;
	}
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_want_drain(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->drain_notify = 1;
	queue_work(w, c, conn);
	return 0;
}

int rl_conn_set_backpressure(rl_worker *w, uint32_t conn, uint32_t gen,
			     int on)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->no_self_pause = !on;
	if (!on && c->recv_paused) {
		c->recv_paused = 0;
		queue_work(w, c, conn);
	}
	return 0;
}

int rl_conn_set_eof_event(rl_worker *w, uint32_t conn, uint32_t gen, int on)
{
	struct rl_conn *c = live_conn(w, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->eof_event = on != 0;
	return 0;
}

int rl_conn_set_held(rl_worker *w, uint32_t conn, uint32_t gen, int on)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	if (!c)
		return -ENOTCONN;
	c->task_held = on != 0;
	/* Let go while stopping (back to a pool, say): closed as the stop
	 * closed the others. */
	if (!on && w->stopping && c->state == RL_CONN_OPEN)
		return rl_conn_close(w, conn, gen, RL_CLOSE_SHUTDOWN, 0);
	return 0;
}

double rl_conn_last_active_ms(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	return c ? c->active_ns / 1e6 : 0;
}

size_t rl_conn_unsent(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	if (!c)
		return 0;
	return c->sq.bytes + (c->tls ? c->tls->plain.bytes : 0);
}

int rl_conn_writable(rl_worker *w, uint32_t conn, uint32_t gen)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	if (!c)
		return 0;
	if (sq_marked(c) <= w->cfg->high_water)
		return 1;
	/* The handler was told: bytes it leaves now wait for the drain. */
	c->wr_full_seen = 1;
	return 0;
}

int rl_conn_peer(rl_worker *w, uint32_t conn, uint32_t gen, char *buf,
		 size_t len)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);

	if (!c || c->fd < 0)
		return -ENOTCONN;
	return rl_addr_peer_text(c->fd, buf, len);
}

/* -- Worker facts ----------------------------------------------------------- */

int rl_worker_id(rl_worker *w) { return w->id; }
int rl_worker_count(rl_worker *w) { return w->shared->nworkers; }
rl_stats *rl_worker_stats(rl_worker *w)
{
	w->stats.conns = w->conns.used;
	w->stats.buffers_leased = w->br.leased;
	w->stats.client_memory = w->client_bytes;
	if (w->ring_ready)
		w->stats.cq_dropped = IO_URING_READ_ONCE(*w->ring.cq.koverflow);
	return &w->stats;
}
rl_guard *rl_worker_guard(rl_worker *w) { return &w->guard; }

void rl_worker_wake_at(rl_worker *w, uint64_t ns)
{
	w->wake_at_ns = ns;
}

void rl_worker_set_max_unconsumed(rl_worker *w, size_t bytes)
{
	if (bytes)
		w->max_unconsumed = bytes;
}

const char *rl_close_reason_text(int reason)
{
	switch (reason) {
	case RL_CLOSE_PEER: return "closed by peer";
	case RL_CLOSE_LOCAL: return "closed by handler";
	case RL_CLOSE_ERROR: return "handler error";
	case RL_CLOSE_UNCONSUMED: return "unconsumed bytes over the limit";
	case RL_CLOSE_SHUTDOWN: return "server shutting down";
	case RL_CLOSE_TIMEOUT: return "idle timeout";
	case RL_CLOSE_RESOLVE: return "host name did not resolve";
	case RL_CLOSE_RUNAWAY: return "handler ran past --handler-timeout";
	case RL_CLOSE_NOMEM: return "handler passed --lua-memory";
	case RL_CLOSE_CLIENT_MEMORY: return "largest holder past --max-client-memory";
	case RL_CLOSE_TLS: return "tls error";
	}
	return reason < 0 ? strerror(-reason) : "unknown";
}
