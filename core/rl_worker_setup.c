/* rl_worker_setup.c: a worker's ring, buffers, table and listeners set up
 * and torn down; stop and reload requests from other threads. */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rl_tls.h"
#include "rl_worker_int.h"

static void vec_free(struct rl_vec *v)
{
	free(v->p);
	memset(v, 0, sizeof(*v));
}

/* -- Setup and teardown ------------------------------------------------------ */

static int setup_ring(struct rl_worker *w)
{
	/* A config filled by hand (the unit tests) may leave it 0. */
	unsigned entries = w->cfg->ring_entries ? w->cfg->ring_entries
						: RL_RING_ENTRIES;
	struct io_uring_params p;
	int ret;

	memset(&p, 0, sizeof(p));
	/* One thread submits; task work runs when we ask for completions,
	 * not by interrupting us mid-batch. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
	p.cq_entries = entries * 4;
	ret = io_uring_queue_init_params(entries, &w->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			  IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &w->ring, &p);
	}
	if (ret)
		return ret;
	w->ring_ready = 1;
	return 0;
}

int rl_worker_setup(struct rl_worker *w)
{
	const struct rl_config *cfg = w->cfg;
	uint32_t nplain;
	char err[256];
	int ret;

	w->max_unconsumed = cfg->max_unconsumed;
	w->wake_fd = -1;
	clock_read(&w->clock);
	ret = setup_ring(w);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "io_uring setup failed: %s", strerror(-ret));
		return ret;
	}
	/* Plain buffers for decrypted bytes, as many as the ring has: for
	 * TLS listeners and for any script's outbound tls:// connects (in
	 * the same mapping, virtual until used, as the ring's). */
	nplain = cfg->buffers;
	ret = rl_bufring_init(&w->br, cfg->buffers, cfg->buffer_size, nplain);
	if (!ret)
		ret = rl_bufring_register(&w->br, &w->ring, RL_BGID);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "provided buffer ring (%u x %u bytes) failed: %s",
			 cfg->buffers, cfg->buffer_size, strerror(-ret));
		return ret;
	}
	ret = rl_chunkpool_init(&w->pool, 1024);
	if (!ret)
		ret = rl_conntab_init(&w->conns, cfg->max_conns);
	if (ret) {
		snprintf(w->setup_err, sizeof(w->setup_err),
			 "out of memory for the connection table");
		return ret;
	}
	w->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		ret = -errno;
		snprintf(w->setup_err, sizeof(w->setup_err), "eventfd: %s",
			 strerror(errno));
		return ret;
	}
	/* Answers to our names arrive through the wake eventfd too. */
	if (w->shared->resolver) {
		w->inbox = rl_resolve_inbox_new(w->shared->resolver, w->wake_fd);
		if (!w->inbox) {
			snprintf(w->setup_err, sizeof(w->setup_err),
				 "out of memory for the resolver inbox");
			return -ENOMEM;
		}
	}
	for (int i = 0; i < w->shared->naddrs; i++) {
		const struct rl_addr *a = &w->shared->addrs[i];

		if (a->is_unix) {
			ret = fcntl(w->shared->unix_fds[i], F_DUPFD_CLOEXEC, 0);
			if (ret < 0) {
				ret = -errno;
				snprintf(err, sizeof(err), "dup of '%s': %s",
					 a->text, strerror(errno));
			}
		} else {
			ret = rl_listen_open(a, err, sizeof(err));
		}
		if (ret < 0) {
			snprintf(w->setup_err, sizeof(w->setup_err), "%s", err);
			return ret;
		}
		w->ls[i].fd = ret;
		w->ls[i].is_unix = a->is_unix;
		w->ls[i].tls = (uint8_t)a->tls;
		w->nls++;
		arm_accept(w, i);
		if (w->id == 0)
			rl_info(-1, "listening on %s", a->text);
	}
	arm_wake(w);
	io_uring_submit(&w->ring);
	return 0;
}

void rl_worker_teardown(struct rl_worker *w)
{
	/* The ring goes first: once it is gone no operation can still be
	 * reading memory we free below. */
	if (w->ring_ready)
		io_uring_queue_exit(&w->ring);
	w->ring_ready = 0;
	/* No resolver thread touches the inbox or wake_fd after this; the
	 * request handles still in connect_args are dead and not used. */
	rl_resolve_inbox_free(w->inbox);
	w->inbox = NULL;
	release_held(w);
	for (uint32_t i = 0; w->conns.pages && i < w->conns.top; i++) {
		struct rl_conn *c = rl_conntab_at(&w->conns, i);

		if (c->state == RL_CONN_FREE)
			continue;
		if (c->fd >= 0)
			close(c->fd);
		free(c->connect_arg);
		free(c->close_text);
		rl_rxbuf_free(&c->rx);
		rl_rxhold_free(&c->hold);   /* the ring's leases go with it */
		rl_sendq_clear(&c->sq, &w->pool, &w->br);
		rl_w_tls_free(w, c);
	}
	for (int i = 0; i < w->nls; i++)
		if (w->ls[i].fd >= 0)
			close(w->ls[i].fd);
	rl_bufring_free(&w->br, NULL);
	rl_chunkpool_free(&w->pool);
	rl_conntab_free(&w->conns);
	vec_free(&w->held);
	vec_free(&w->work);
	vec_free(&w->parked);
	vec_free(&w->closed);
	vec_free(&w->released);
	vec_free(&w->drained);
	vec_free(&w->again);
	vec_free(&w->tls_pending);
	vec_free(&w->tls_hs);
	vec_free(&w->tls_spare);
	vec_free(&w->holding);
	vec_free(&w->resolving);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	w->wake_fd = -1;
}

static void wake(struct rl_worker *w)
{
	uint64_t one = 1;

	if (w->wake_fd >= 0 && write(w->wake_fd, &one, sizeof(one)) < 0)
		return;
}

void rl_worker_request_stop(struct rl_worker *w)
{
	atomic_store(&w->stop_req, 1);
	wake(w);
}

void rl_worker_request_reload(struct rl_worker *w)
{
	atomic_store(&w->reload_req, 1);
	wake(w);
}
