/* rl_reload.c: hot reload: an all-or-nothing vote among workers, and --watch. */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_reload.h"
#include "rl_worker.h"

uint64_t rl_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* -- The vote -------------------------------------------------------------- */

void rl_reload_init(struct rl_reload *r, int nworkers)
{
	pthread_condattr_t ca;

	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cond, &ca);
	pthread_condattr_destroy(&ca);
	r->nworkers = nworkers;
	r->decision = 0;
}

int rl_reload_begin(struct rl_reload *r)
{
	uint64_t now = rl_now_ns();
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	if (r->round && r->decision < 0 && now < r->deadline_ns) {
		ret = -EBUSY;
	} else {
		r->round++;
		r->votes = r->failed = 0;
		r->decision = -1;
		r->started_ns = now;
		r->deadline_ns = now + RL_RELOAD_TIMEOUT_MS * 1000000ull;
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

static void decide(struct rl_reload *r, int decision, const char *why)
{
	double ms = (rl_now_ns() - r->started_ns) / 1e6;

	r->decision = decision;
	pthread_cond_broadcast(&r->cond);
	if (decision)
		rl_info(-1, "reload %llu: all %d worker(s) switched in %.2f ms",
			(unsigned long long)r->round, r->nworkers, ms);
	else
		rl_err(-1, "reload %llu rejected (%s): every worker keeps the "
		       "old code (%.2f ms)", (unsigned long long)r->round, why, ms);
}

uint64_t rl_reload_round(rl_worker *w)
{
	struct rl_reload *r = &w->shared->reload;
	uint64_t round;

	pthread_mutex_lock(&r->lock);
	round = r->round;
	pthread_mutex_unlock(&r->lock);
	return round;
}

int rl_reload_expire(struct rl_reload *r)
{
	int open;

	pthread_mutex_lock(&r->lock);
	if (r->round && r->decision < 0 && rl_now_ns() >= r->deadline_ns)
		decide(r, 0, "no worker answered in time");
	open = r->round && r->decision < 0;
	pthread_mutex_unlock(&r->lock);
	return open;
}

int rl_reload_vote(rl_worker *w, int ok, uint64_t round)
{
	struct rl_reload *r = &w->shared->reload;
	struct timespec ts;
	char why[64];
	int decision;

	pthread_mutex_lock(&r->lock);
	if (round != r->round) {
		/* Loaded for a round that is over: not this round's code. */
		pthread_mutex_unlock(&r->lock);
		return 0;
	}
	/* One vote per worker per round, even if its events come late. */
	if (r->decision < 0 && w->voted_round != r->round) {
		w->voted_round = r->round;
		r->votes++;
		if (!ok)
			r->failed++;
		if (r->failed) {
			snprintf(why, sizeof(why), "worker %d failed", w->id);
			decide(r, 0, why);
		} else if (r->votes == r->nworkers) {
			decide(r, 1, NULL);
		}
	}
	ts.tv_sec = r->deadline_ns / 1000000000ull;
	ts.tv_nsec = r->deadline_ns % 1000000000ull;
	/* Waiting for the other workers' votes is not this worker's Lua
	 * running: the watchdog must not stop the reload for it. */
	__atomic_store_n(&w->guard.idle, 1, __ATOMIC_RELAXED);
	while (r->decision < 0) {
		if (pthread_cond_timedwait(&r->cond, &r->lock, &ts) == ETIMEDOUT &&
		    r->decision < 0) {
			snprintf(why, sizeof(why), "%d of %d worker(s) did not "
				 "answer in time", r->nworkers - r->votes,
				 r->nworkers);
			decide(r, 0, why);
		}
	}
	decision = ok ? r->decision : 0;
	pthread_mutex_unlock(&r->lock);
	w->guard.seq++;
	__atomic_store_n(&w->guard.idle, 0, __ATOMIC_RELAXED);
	if (decision)
		w->stats.reloads++;
	else
		w->stats.reloads_failed++;
	return decision;
}

/* -- --watch ----------------------------------------------------------------- */

#define WATCH_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | \
		    IN_MOVED_FROM)

int rl_watch_open(struct rl_watch *wt, const char *script, char *err,
		  size_t len)
{
	char path[2 * PATH_MAX];
	struct dirent *de;
	DIR *d;
	int n = 0;

	memset(wt, 0, sizeof(*wt));
	snprintf(path, sizeof(path), "%s", script);
	snprintf(wt->dir, sizeof(wt->dir), "%s", dirname(path));
	wt->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (wt->fd < 0 || inotify_add_watch(wt->fd, wt->dir, WATCH_MASK) < 0) {
		snprintf(err, len, "--watch: cannot watch '%s': %s", wt->dir,
			 strerror(errno));
		if (wt->fd >= 0)
			close(wt->fd);
		wt->fd = -1;
		return -1;
	}
	/* Modules in subdirectories (require "lib.util") count too. */
	d = opendir(wt->dir);
	while (d && (de = readdir(d)) && n < RL_WATCH_MAX_DIRS) {
		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", wt->dir, de->d_name);
		if (inotify_add_watch(wt->fd, path, WATCH_MASK) >= 0)
			n++;
	}
	if (d)
		closedir(d);
	return 0;
}

static int is_lua_name(const char *name, size_t len)
{
	size_t n = strnlen(name, len);

	return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

void rl_watch_read(struct rl_watch *wt, uint64_t now_ns)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while ((n = read(wt->fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;

			/* An editor's save (write a temp file, rename it over)
			 * is several events: each pushes the deadline on, so
			 * the save reloads once. */
			if (ev->len && is_lua_name(ev->name, ev->len))
				wt->due_ns = now_ns + RL_WATCH_DEBOUNCE_MS * 1000000ull;
			p += sizeof(*ev) + ev->len;
		}
	}
}

void rl_watch_close(struct rl_watch *wt)
{
	if (wt->fd >= 0)
		close(wt->fd);
	wt->fd = -1;
}
