/* rl_conn.h: a worker's connection table: slots addressed by (index, generation).
 *
 * Completions carry the index and generation of the connection they were
 * submitted for.  A slot's generation changes every time it is freed, so a
 * completion that arrives after its connection closed (and the slot maybe
 * went to a new connection) no longer matches and is ignored.  Slots live
 * in fixed pages, so a connection's address never moves.
 */
#ifndef RL_CONN_H
#define RL_CONN_H

#include <stdint.h>
#include <sys/socket.h>

#include "rl_rxbuf.h"
#include "rl_rxhold.h"
#include "rl_sendq.h"

struct rl_tls_conn;

#define RL_CONN_PAGE_SHIFT 8
#define RL_CONN_PAGE (1u << RL_CONN_PAGE_SHIFT)
#define RL_CONN_GEN_MASK 0xffffffu      /* generations fit in 24 bits */
#define RL_CONN_MAX (1u << 20)         /* slots fit in 20 bits of conn ids */

enum rl_conn_state {
	RL_CONN_FREE = 0,
	RL_CONN_CONNECTING,/* outbound: name being resolved, or connect in
			    * the kernel */
	RL_CONN_OPEN,      /* serving */
	RL_CONN_CLOSING,   /* no more reads; waiting for operations to end */
	RL_CONN_DEAD,      /* fd closed; slot freed once CLOSE reaches Lua */
};

struct rl_conn {
	int fd;
	uint32_t gen;
	uint8_t state;
	uint8_t recv_armed;     /* a multishot recv is in the kernel */
	uint8_t recv_paused;    /* backpressure: recv stopped */
	uint8_t parked;         /* recv ended with ENOBUFS; waiting for buffers */
	uint8_t rd_eof;         /* peer finished sending */
	uint8_t close_req;      /* close once queued sends are out */
	uint8_t aborting;       /* close now, queued sends dropped */
	uint8_t send_inflight;
	uint8_t slow;           /* last send was short: copy, don't lease */
	uint8_t queued;         /* on the worker's work list */
	uint8_t shut;           /* shutdown(2) already called */
	uint8_t user_paused;    /* the handler paused reading */
	uint8_t eof_event;      /* report EOF, don't close on it */
	uint8_t wr_shut_req;    /* shut down writing once sends are out */
	uint8_t wr_shut;        /* ... done */
	uint8_t drain_notify;   /* went over high water: report the drain */
	uint8_t no_self_pause;  /* its own unsent bytes do not stop its reads */
	uint8_t rx_held;        /* bytes left while paused or blocked: offered
				 * again when it may go on (rx, hold) */
	uint8_t on_holding;     /* listed in w->holding */
	uint32_t rx_slack;      /* held bytes copied into rx (rx_limit) */
	uint32_t rehold_pos;    /* ranges put back in front this batch ... */
	uint32_t rehold_epoch;  /* ... the batch (w->epoch) they were in */
	uint8_t recv_once;      /* paused or held since the last receive: the
				 * next one takes one buffer, not many */
	uint8_t rx_reoffer;     /* resumed with held bytes: on w->again */
	uint8_t wr_full_seen;   /* rl_conn_writable said 0 during this offer */
	uint8_t wr_blocked;     /* ... and the handler stopped there with
				 * bytes left: they are held (rx_held) until
				 * the queue drains to low water */
	uint8_t eof_pending;    /* EOF event held back until the held bytes
				 * have been offered */
	uint8_t nonblock;       /* O_NONBLOCK set, for sendfile (rl_file.c) */
	uint8_t task_held;      /* a coroutine task is using it: a stop leaves
				 * it to the task (Lua closes it when done),
				 * up to the drain deadline */
	uint8_t resolving;      /* CONNECTING: waiting for its host name's
				 * addresses (rl_resolve); no fd yet */
	int32_t rx_bid;         /* buffer of the arrival being offered */
	int close_reason;
	uint32_t inflight_bytes;
	uint64_t active_ns;     /* last receive or send completion */
	uint64_t mem_counted;   /* unsent + residue bytes in w->client_bytes */
	void *connect_arg;      /* address and timeout, until connect ends */
	char *close_text;       /* the close reason in words, when a code says
				 * too little; freed with the slot */
	struct rl_rxbuf rx;
	struct rl_rxhold hold;  /* held ranges of ring buffers, after rx */
	struct rl_sendq sq;
	struct rl_tls_conn *tls;  /* a TLS session (rl_tls.h), else NULL */
};

struct rl_conntab {
	struct rl_conn **pages;
	uint32_t npages;
	uint32_t max;           /* slots this table may grow to */
	uint32_t top;           /* slots ever handed out */
	uint32_t *free;         /* stack of freed slots */
	uint32_t nfree;
	uint32_t used;
};

int rl_conntab_init(struct rl_conntab *t, uint32_t max);
void rl_conntab_free(struct rl_conntab *t);
/* A free slot in state OPEN, or NULL when the table is full. */
struct rl_conn *rl_conntab_alloc(struct rl_conntab *t, uint32_t *idx);
/* Give the slot back (and its close_text); its generation moves on. */
void rl_conntab_release(struct rl_conntab *t, uint32_t idx);

static inline struct rl_conn *rl_conntab_at(const struct rl_conntab *t,
					    uint32_t idx)
{
	return &t->pages[idx >> RL_CONN_PAGE_SHIFT][idx & (RL_CONN_PAGE - 1)];
}

/* The live connection (idx, gen) names, or NULL if it is gone. */
static inline struct rl_conn *rl_conntab_get(const struct rl_conntab *t,
					     uint32_t idx, uint32_t gen)
{
	struct rl_conn *c;

	if (idx >= t->top)
		return NULL;
	c = rl_conntab_at(t, idx);
	if (c->state == RL_CONN_FREE ||
	    (c->gen & RL_CONN_GEN_MASK) != (gen & RL_CONN_GEN_MASK))
		return NULL;
	return c;
}

#endif
