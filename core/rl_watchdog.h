/* rl_watchdog.h: the thread that notices handler calls running too long. */
#ifndef RL_WATCHDOG_H
#define RL_WATCHDOG_H

#include <pthread.h>
#include <stdint.h>

#include "rl_api.h"

#define RL_WATCHDOG_MAX 1025    /* guards: --workers' 1024 and main's check */

/* One watched guard's history, kept by the watchdog thread only. */
struct rl_watch_slot {
	rl_guard *g;
	int id;                 /* worker id for the log; -1 = main */
	uint32_t last_seq;
	uint64_t since_ns;      /* when last_seq was first seen busy */
	uint32_t fired_seq;     /* seq last stopped, valid when fired */
	int fired;
	int warned;             /* "not stoppable" logged for fired_seq */
};

struct rl_watchdog {
	pthread_t thread;
	int running;
	int stop_fd;            /* eventfd: rl_watchdog_stop wakes the thread */
	uint32_t timeout_ms;
	uint32_t period_ms;     /* how often guards are looked at */
	int n;
	struct rl_watch_slot slot[RL_WATCHDOG_MAX];
};

/* Watch guard g (worker id, or -1 for main's script check); before
 * rl_watchdog_start.  Sets g->limit_ms.  0 or -ENOSPC. */
int rl_watchdog_add(struct rl_watchdog *wd, rl_guard *g, int id);

/* Start the thread; timeout_ms 0 starts nothing.  0 or -errno. */
int rl_watchdog_start(struct rl_watchdog *wd, uint32_t timeout_ms);
void rl_watchdog_stop(struct rl_watchdog *wd);

/* One look at every guard at time now_ns (what the thread does each
 * period; tests call it with their own clock).  Returns how many guards
 * it told to stop. */
int rl_watchdog_scan(struct rl_watchdog *wd, uint64_t now_ns);

#endif
