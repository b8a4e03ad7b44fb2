/* rl_watchdog.c: the thread that notices handler calls running too long.
 *
 * It never touches a Lua state: it only reads each worker's rl_guard and,
 * when one call has run past --handler-timeout, asks that worker's Lua code
 * to stop by setting guard->stop.  The check compiled into script code
 * (ringline.guard) raises the error in the worker's own thread, at a point
 * where raising is safe, so a runaway costs its own request only. */

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_watchdog.h"

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int rl_watchdog_add(struct rl_watchdog *wd, rl_guard *g, int id)
{
	if (wd->n == RL_WATCHDOG_MAX)
		return -ENOSPC;
	memset(&wd->slot[wd->n], 0, sizeof(wd->slot[0]));
	wd->slot[wd->n].g = g;
	wd->slot[wd->n].id = id;
	wd->n++;
	return 0;
}

/* The worker writes seq and idle with plain stores (LuaJIT has no others);
 * a relaxed atomic load here reads some recent value, which is all a
 * timeout measured in milliseconds needs. */
static uint32_t load_u32(const uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static int scan_one(struct rl_watchdog *wd, struct rl_watch_slot *s,
		    uint64_t now)
{
	rl_guard *g = s->g;
	uint32_t seq = load_u32(&g->seq);
	uint64_t ran;

	if (!__atomic_load_n(&g->armed, __ATOMIC_RELAXED) ||
	    __atomic_load_n(&g->idle, __ATOMIC_RELAXED) || seq != s->last_seq ||
	    !s->since_ns) {
		/* Waiting, or a new call since the last look: its clock
		 * starts now (so detection is within timeout + one period). */
		s->last_seq = seq;
		s->since_ns = now;
		return 0;
	}
	ran = (now - s->since_ns) / 1000000u;
	if (ran < wd->timeout_ms)
		return 0;
	if (!s->fired || s->fired_seq != seq) {
		s->fired = 1;
		s->fired_seq = seq;
		s->warned = 0;
		g->stop_seq = seq;
		g->ran_ms = (uint32_t)ran;
		/* stop last: the worker reads stop_seq and ran_ms after it. */
		__atomic_store_n(&g->stop, 1, __ATOMIC_RELEASE);
		return 1;
	}
	/* Told to stop a timeout ago and still in the same call: it is in a
	 * C function or in code without checks (ringline's own modules), and
	 * stops only when it comes back to script code. */
	if (!s->warned && ran >= 2ull * wd->timeout_ms) {
		s->warned = 1;
		rl_warn(s->id, "a handler call has run %llu ms and has not "
			"reached script code where it can be stopped (a C "
			"function or a ringline module); it is stopped when "
			"it returns there", (unsigned long long)ran);
	}
	return 0;
}

int rl_watchdog_scan(struct rl_watchdog *wd, uint64_t now_ns)
{
	int fired = 0;

	for (int i = 0; i < wd->n; i++)
		fired += scan_one(wd, &wd->slot[i], now_ns);
	return fired;
}

static void *watchdog_main(void *arg)
{
	struct rl_watchdog *wd = arg;
	struct pollfd pfd = { .fd = wd->stop_fd, .events = POLLIN };

	for (;;) {
		int r = poll(&pfd, 1, (int)wd->period_ms);

		if (r > 0)
			break;
		if (r < 0 && errno != EINTR)
			break;
		rl_watchdog_scan(wd, mono_ns());
	}
	return NULL;
}

int rl_watchdog_start(struct rl_watchdog *wd, uint32_t timeout_ms)
{
	sigset_t all, old;
	int ret;

	wd->timeout_ms = timeout_ms;
	for (int i = 0; i < wd->n; i++)
		wd->slot[i].g->limit_ms = timeout_ms;
	if (!timeout_ms)
		return 0;
	/* A tenth of the timeout, 1..50 ms: detection within ~1.1x of it,
	 * and an idle process wakes this thread at most 20 times a second. */
	wd->period_ms = timeout_ms / 10;
	if (wd->period_ms < 1)
		wd->period_ms = 1;
	if (wd->period_ms > 50)
		wd->period_ms = 50;
	wd->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (wd->stop_fd < 0)
		return -errno;
	/* Signals go to main's signalfd: the thread must not take one (it
	 * starts before main blocks them, and would die of SIGTERM). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	ret = pthread_create(&wd->thread, NULL, watchdog_main, wd);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		close(wd->stop_fd);
		return -ret;
	}
	wd->running = 1;
	return 0;
}

void rl_watchdog_stop(struct rl_watchdog *wd)
{
	uint64_t one = 1;

	if (!wd->running)
		return;
	if (write(wd->stop_fd, &one, sizeof(one)) != sizeof(one))
		rl_warn(-1, "watchdog: cannot wake its thread: %s",
			strerror(errno));
	pthread_join(wd->thread, NULL);
	close(wd->stop_fd);
	wd->running = 0;
}
