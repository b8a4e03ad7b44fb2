/* rl_conn.c: a worker's connection table: slots addressed by (index, generation). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_conn.h"

int rl_conntab_init(struct rl_conntab *t, uint32_t max)
{
	memset(t, 0, sizeof(*t));
	if (max == 0 || max > RL_CONN_MAX)
		return -EINVAL;
	t->max = max;
	t->npages = (max + RL_CONN_PAGE - 1) / RL_CONN_PAGE;
	t->pages = calloc(t->npages, sizeof(*t->pages));
	t->free = malloc(max * sizeof(*t->free));
	if (!t->pages || !t->free) {
		rl_conntab_free(t);
		return -ENOMEM;
	}
	return 0;
}

void rl_conntab_free(struct rl_conntab *t)
{
	if (t->pages)
		for (uint32_t i = 0; i < t->npages; i++)
			free(t->pages[i]);
	free(t->pages);
	free(t->free);
	memset(t, 0, sizeof(*t));
}

static void conn_reset(struct rl_conn *c, uint32_t gen)
{
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->gen = gen;
	c->rx_bid = -1;
	rl_sendq_init(&c->sq);
}

struct rl_conn *rl_conntab_alloc(struct rl_conntab *t, uint32_t *idx)
{
	struct rl_conn *c;
	uint32_t i;

	if (t->nfree) {
		i = t->free[--t->nfree];
	} else {
		if (t->top == t->max)
			return NULL;
		i = t->top;
		/* Pages come as traffic needs them and stay for reuse. */
		if (!t->pages[i >> RL_CONN_PAGE_SHIFT]) {
			t->pages[i >> RL_CONN_PAGE_SHIFT] =
				calloc(RL_CONN_PAGE, sizeof(struct rl_conn));
			if (!t->pages[i >> RL_CONN_PAGE_SHIFT])
				return NULL;
		}
		t->top++;
		conn_reset(rl_conntab_at(t, i), 0);
	}
	c = rl_conntab_at(t, i);
	conn_reset(c, c->gen);
	c->state = RL_CONN_OPEN;
	t->used++;
	*idx = i;
	return c;
}

void rl_conntab_release(struct rl_conntab *t, uint32_t idx)
{
	struct rl_conn *c = rl_conntab_at(t, idx);

	if (c->state == RL_CONN_FREE)
		return;
	c->state = RL_CONN_FREE;
	free(c->close_text);
	c->close_text = NULL;
	c->gen = (c->gen + 1) & RL_CONN_GEN_MASK;
	t->free[t->nfree++] = idx;
	t->used--;
}
