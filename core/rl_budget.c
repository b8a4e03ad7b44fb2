/* rl_budget.c: --max-client-memory, the process-wide bound on what clients
 * make the server hold (unsent bytes and unconsumed residues). */

#include <stdatomic.h>
#include <stdio.h>

#include "rl_worker_int.h"

/* Closed per poll at most: the rest wait for the next (memory is freed as
 * the closes complete, so the total is looked at again then). */
#define CLOSES_PER_POLL 16

static uint64_t process_total(struct rl_worker *w, uint64_t *largest_elsewhere)
{
	uint64_t sum = 0, big = 0;

	for (int i = 0; i < w->shared->nworkers; i++) {
		sum += atomic_load_explicit(&w->shared->client_mem[i].bytes,
					    memory_order_relaxed);
		if (i != w->id) {
			uint64_t l = atomic_load_explicit(
				&w->shared->client_mem[i].largest,
				memory_order_relaxed);

			big = l > big ? l : big;
		}
	}
	*largest_elsewhere = big;
	return sum;
}

/* This worker's largest holder not already closing, or NULL. */
static struct rl_conn *largest_holder(struct rl_worker *w, uint32_t *idx)
{
	struct rl_conn *best = NULL;

	for (uint32_t i = 0; i < w->conns.top; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, i);

		if (c->state != RL_CONN_OPEN || c->aborting || !c->mem_counted)
			continue;
		if (!best || c->mem_counted > best->mem_counted) {
			best = c;
			*idx = i;
		}
	}
	return best;
}

static void close_holder(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
			 uint64_t total)
{
	char peer[64] = "unknown";

	if (rl_conn_peer(w, idx, c->gen, peer, sizeof(peer)) < 0)
		snprintf(peer, sizeof(peer), "unknown");
	rl_warn(w->id, "conn %u (%s): closing: holds %llu bytes (%llu unsent, "
		"%u unconsumed), the largest while all clients hold %llu, "
		"over --max-client-memory %llu", idx, peer,
		(unsigned long long)c->mem_counted,
		(unsigned long long)(c->sq.bytes - c->sq.file_bytes),
		c->rx.cap, (unsigned long long)total,
		(unsigned long long)w->cfg->max_client_memory);
	c->close_reason = RL_CLOSE_CLIENT_MEMORY;
	c->aborting = 1;        /* what it holds is dropped, not sent */
	conn_mem_update(w, c);  /* no longer counted: it is being freed */
	w->stats.client_memory_closes++;
	queue_work(w, c, idx);
}

void rl_w_client_memory_check(struct rl_worker *w)
{
	uint64_t limit = w->cfg->max_client_memory, total, elsewhere, mine;
	struct rl_conn *c;
	uint32_t idx = 0;

	atomic_store_explicit(&w->shared->client_mem[w->id].bytes,
			      w->client_bytes, memory_order_relaxed);
	total = process_total(w, &elsewhere);
	if (likely(total <= limit)) {
		if (w->published_largest) {
			atomic_store_explicit(&w->shared->client_mem[w->id].largest,
					      0, memory_order_relaxed);
			w->published_largest = 0;
		}
		return;
	}
	/* Over: the largest holders go first, whichever worker has them.
	 * Each worker publishes its largest; one whose largest is below
	 * another's leaves the close to that one (Redis 7's
	 * maxmemory-clients rule).  A holder counted as closing no longer
	 * counts, so a few go per poll until the total is under. */
	mine = 0;
	for (int n = 0; n < CLOSES_PER_POLL && total > limit; n++) {
		c = largest_holder(w, &idx);
		mine = c ? c->mem_counted : 0;
		if (!c || mine < elsewhere)
			break;
		close_holder(w, c, idx, total);
		total -= mine < total ? mine : total;
		mine = 0;
	}
	if (!mine) {
		c = largest_holder(w, &idx);
		mine = c ? c->mem_counted : 0;
	}
	atomic_store_explicit(&w->shared->client_mem[w->id].largest, mine,
			      memory_order_relaxed);
	w->published_largest = 1;
}
