/* rl_resolve.c: host names resolved by helper threads, answers handed back to the worker that asked.
 *
 * One mutex guards every list and counter below; nothing runs under it but
 * list edits and the eventfd write that wakes a worker (an eventfd write
 * never blocks), so a worker taking it waits at most for such an edit.
 * getaddrinfo() and the test delay run with the lock released.
 *
 * A request is on exactly one list, by state:
 *   QUEUED   r->queue      a cancel unlinks and frees it
 *   RUNNING  r->running    a thread resolves it; a cancel only clears
 *                          req->inbox and the thread frees it afterwards
 *   DONE     in->done      the worker takes (copies out, frees) or cancels it
 * The answer is delivered under the lock, so once rl_resolve_inbox_free has
 * cleared an inbox from its running requests no thread reaches that inbox
 * or its eventfd again.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rl_resolve.h"

enum req_state { REQ_QUEUED, REQ_RUNNING, REQ_DONE };

struct rl_resolve_req {
	struct rl_resolve_req *prev, *next;
	struct rl_resolve_inbox *inbox;   /* NULL once cancelled */
	int state;
	char port[8];
	struct rl_resolve_answer ans;     /* tag and host set at submission */
};

struct req_list {
	struct rl_resolve_req *head, *tail;
};

struct rl_resolve_inbox {
	struct rl_resolver *r;
	int wake_fd;
	struct req_list done;
};

struct rl_resolver {
	pthread_mutex_t lock;
	pthread_cond_t work;        /* a request was queued, or stop */
	pthread_cond_t cancelled;   /* a running request was cancelled, or stop */
	struct req_list queue;
	struct req_list running;
	unsigned nqueued;
	unsigned pending;           /* requests allocated and not yet freed */
	unsigned max_pending;
	unsigned delay_ms;
	int idle;                   /* threads waiting for work */
	int nthreads;
	int max_threads;
	int stop;
	pthread_t threads[RL_RESOLVE_THREADS];
	cpu_set_t cpus;             /* helpers run anywhere the creator could */
	int have_cpus;
	atomic_int refs;            /* the owner's, and one per thread */
};

/* -- Lists ----------------------------------------------------------------- */

static void list_push(struct req_list *l, struct rl_resolve_req *q)
{
	q->next = NULL;
	q->prev = l->tail;
	if (l->tail)
		l->tail->next = q;
	else
		l->head = q;
	l->tail = q;
}

static void list_del(struct req_list *l, struct rl_resolve_req *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		l->head = q->next;
	if (q->next)
		q->next->prev = q->prev;
	else
		l->tail = q->prev;
	q->prev = q->next = NULL;
}

/* -- Lifetime of the resolver ----------------------------------------------- */

static void resolver_put(struct rl_resolver *r)
{
	/* The last of the owner and the threads frees it: a thread left
	 * detached in getaddrinfo at exit still uses it when that returns. */
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->work);
	pthread_cond_destroy(&r->cancelled);
	free(r);
}

struct rl_resolver *rl_resolver_new(int max_threads, unsigned max_pending,
				    unsigned delay_ms)
{
	struct rl_resolver *r = calloc(1, sizeof(*r));
	pthread_condattr_t ca;

	if (!r)
		return NULL;
	if (max_threads < 1)
		max_threads = 1;
	if (max_threads > RL_RESOLVE_THREADS)
		max_threads = RL_RESOLVE_THREADS;
	r->max_threads = max_threads;
	r->max_pending = max_pending ? max_pending : 1;
	r->delay_ms = delay_ms;
	atomic_init(&r->refs, 1);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->work, NULL);
	/* The test delay is measured on the monotonic clock. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cancelled, &ca);
	pthread_condattr_destroy(&ca);
	r->have_cpus = sched_getaffinity(0, sizeof(r->cpus), &r->cpus) == 0;
	return r;
}

static void req_free(struct rl_resolver *r, struct rl_resolve_req *q)
{
	r->pending--;
	free(q);
}

void rl_resolver_free(struct rl_resolver *r, unsigned join_ms)
{
	struct timespec until;
	int n;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = 1;
	/* Inboxes are gone, so nothing queued has anyone to answer. */
	while (r->queue.head) {
		struct rl_resolve_req *q = r->queue.head;

		list_del(&r->queue, q);
		req_free(r, q);
	}
	r->nqueued = 0;
	pthread_cond_broadcast(&r->work);
	pthread_cond_broadcast(&r->cancelled);
	n = r->nthreads;
	pthread_mutex_unlock(&r->lock);

	/* pthread_timedjoin_np takes a CLOCK_REALTIME deadline. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += join_ms / 1000;
	until.tv_nsec += (long)(join_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	for (int i = 0; i < n; i++)
		if (pthread_timedjoin_np(r->threads[i], NULL, &until))
			pthread_detach(r->threads[i]);
	resolver_put(r);
}

unsigned rl_resolver_pending(struct rl_resolver *r)
{
	unsigned n;

	pthread_mutex_lock(&r->lock);
	n = r->pending;
	pthread_mutex_unlock(&r->lock);
	return n;
}

/* -- Helper threads ---------------------------------------------------------- */

static void lookup(struct rl_resolve_req *q)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV }, *res, *ai;
	struct rl_resolve_answer *a = &q->ans;
	int ret;

	ret = getaddrinfo(a->host, q->port, &hints, &res);
	if (ret) {
		a->gai_err = ret;
		a->sys_err = ret == EAI_SYSTEM ? errno : 0;
		return;
	}
	for (ai = res; ai && a->naddrs < RL_RESOLVE_MAX_ADDRS; ai = ai->ai_next) {
		struct rl_resolve_addr *d = &a->addrs[a->naddrs];

		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    ai->ai_addrlen > sizeof(d->u))
			continue;
		memcpy(&d->u, ai->ai_addr, ai->ai_addrlen);
		d->len = ai->ai_addrlen;
		a->naddrs++;
	}
	freeaddrinfo(res);
	if (!a->naddrs)
		a->gai_err = EAI_NONAME;
}

/* The test knob: wait delay_ms, unless the request is cancelled or the
 * resolver stops meanwhile.  Called and returns with the lock held. */
static void test_delay(struct rl_resolver *r, struct rl_resolve_req *q)
{
	struct timespec until;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += r->delay_ms / 1000;
	until.tv_nsec += (long)(r->delay_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	while (!r->stop && q->inbox &&
	       pthread_cond_timedwait(&r->cancelled, &r->lock, &until) != ETIMEDOUT)
		;
}

/* Hand a finished request to its inbox, or free it if nobody wants it. */
static void deliver(struct rl_resolver *r, struct rl_resolve_req *q)
{
	struct rl_resolve_inbox *in = q->inbox;
	uint64_t one = 1;

	list_del(&r->running, q);
	if (!in) {
		req_free(r, q);
		return;
	}
	q->state = REQ_DONE;
	list_push(&in->done, q);
	/* Under the lock: the inbox (and its eventfd) cannot be freed while
	 * we are here.  The worker's ring has a read on it. */
	if (write(in->wake_fd, &one, sizeof(one)) < 0)
		return;
}

static void *resolver_main(void *arg)
{
	struct rl_resolver *r = arg;
	struct rl_resolve_req *q;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		while (!r->stop && !r->queue.head) {
			r->idle++;
			pthread_cond_wait(&r->work, &r->lock);
			r->idle--;
		}
		if (r->stop)
			break;
		q = r->queue.head;
		list_del(&r->queue, q);
		r->nqueued--;
		q->state = REQ_RUNNING;
		list_push(&r->running, q);
		if (r->delay_ms)
			test_delay(r, q);
		if (q->inbox && !r->stop) {
			pthread_mutex_unlock(&r->lock);
			lookup(q);
			pthread_mutex_lock(&r->lock);
		}
		deliver(r, q);
	}
	pthread_mutex_unlock(&r->lock);
	resolver_put(r);
	return NULL;
}

/* With the lock held: one more thread when requests wait that no idle
 * thread will take.  0, or -errno when none could start. */
static int maybe_start_thread(struct rl_resolver *r)
{
	pthread_attr_t attr;
	int ret;

	if (r->nqueued <= (unsigned)r->idle || r->nthreads == r->max_threads)
		return 0;
	pthread_attr_init(&attr);
	/* A thread inherits its creator's CPU affinity: a pinned worker's
	 * would pin the resolver to that worker's core. */
	if (r->have_cpus)
		pthread_attr_setaffinity_np(&attr, sizeof(r->cpus), &r->cpus);
	atomic_fetch_add(&r->refs, 1);
	ret = pthread_create(&r->threads[r->nthreads], &attr, resolver_main, r);
	pthread_attr_destroy(&attr);
	if (ret) {
		atomic_fetch_sub(&r->refs, 1);
		/* Threads already running take the request in turn. */
		return r->nthreads ? 0 : -ret;
	}
	r->nthreads++;
	return 0;
}

/* -- Requests ------------------------------------------------------------------ */

struct rl_resolve_inbox *rl_resolve_inbox_new(struct rl_resolver *r,
					      int wake_fd)
{
	struct rl_resolve_inbox *in = calloc(1, sizeof(*in));

	if (!in)
		return NULL;
	in->r = r;
	in->wake_fd = wake_fd;
	return in;
}

void rl_resolve_inbox_free(struct rl_resolve_inbox *in)
{
	struct rl_resolver *r;
	struct rl_resolve_req *q, *next;

	if (!in)
		return;
	r = in->r;
	pthread_mutex_lock(&r->lock);
	for (q = r->queue.head; q; q = next) {
		next = q->next;
		if (q->inbox != in)
			continue;
		list_del(&r->queue, q);
		r->nqueued--;
		req_free(r, q);
	}
	for (q = r->running.head; q; q = q->next)
		if (q->inbox == in)
			q->inbox = NULL;
	while (in->done.head) {
		q = in->done.head;
		list_del(&in->done, q);
		req_free(r, q);
	}
	pthread_cond_broadcast(&r->cancelled);
	pthread_mutex_unlock(&r->lock);
	free(in);
}

int rl_resolve_submit(struct rl_resolve_inbox *in, const char *host,
		      const char *port, uint64_t tag,
		      struct rl_resolve_req **req, char *err, size_t errlen)
{
	struct rl_resolver *r = in->r;
	struct rl_resolve_req *q;
	int ret;

	if (strlen(host) >= sizeof(q->ans.host) ||
	    strlen(port) >= sizeof(q->port)) {
		snprintf(err, errlen, "host name '%.64s...' too long", host);
		return -ENAMETOOLONG;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		snprintf(err, errlen, "out of memory for resolving '%s'", host);
		return -ENOMEM;
	}
	strcpy(q->ans.host, host);
	strcpy(q->port, port);
	q->ans.tag = tag;
	q->inbox = in;
	pthread_mutex_lock(&r->lock);
	if (r->pending >= r->max_pending) {
		pthread_mutex_unlock(&r->lock);
		free(q);
		snprintf(err, errlen, "cannot resolve '%s': %u name resolutions "
			 "pending already (the limit)", host, r->max_pending);
		return -EAGAIN;
	}
	r->pending++;
	q->state = REQ_QUEUED;
	list_push(&r->queue, q);
	r->nqueued++;
	ret = maybe_start_thread(r);
	if (ret) {
		list_del(&r->queue, q);
		r->nqueued--;
		req_free(r, q);
		pthread_mutex_unlock(&r->lock);
		snprintf(err, errlen, "cannot resolve '%s': no resolver thread: "
			 "%s", host, strerror(-ret));
		return ret;
	}
	pthread_cond_signal(&r->work);
	pthread_mutex_unlock(&r->lock);
	*req = q;
	return 0;
}

void rl_resolve_cancel(struct rl_resolve_inbox *in, struct rl_resolve_req *q)
{
	struct rl_resolver *r = in->r;

	pthread_mutex_lock(&r->lock);
	switch (q->state) {
	case REQ_QUEUED:
		list_del(&r->queue, q);
		r->nqueued--;
		req_free(r, q);
		break;
	case REQ_RUNNING:
		/* Its thread frees it; one in the test delay stops waiting. */
		q->inbox = NULL;
		pthread_cond_broadcast(&r->cancelled);
		break;
	case REQ_DONE:
		list_del(&in->done, q);
		req_free(r, q);
		break;
	}
	pthread_mutex_unlock(&r->lock);
}

int rl_resolve_take(struct rl_resolve_inbox *in, struct rl_resolve_answer *out)
{
	struct rl_resolver *r = in->r;
	struct rl_resolve_req *q;

	pthread_mutex_lock(&r->lock);
	q = in->done.head;
	if (q) {
		list_del(&in->done, q);
		*out = q->ans;
		req_free(r, q);
	}
	pthread_mutex_unlock(&r->lock);
	return q != NULL;
}

int rl_resolve_strerror(const struct rl_resolve_answer *a, char *buf,
			size_t len)
{
	return snprintf(buf, len, "cannot resolve %s: %s", a->host,
			a->gai_err == EAI_SYSTEM ? strerror(a->sys_err)
						 : gai_strerror(a->gai_err));
}
