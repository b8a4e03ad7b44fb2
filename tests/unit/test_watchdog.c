/* test_watchdog.c: unit tests for rl_watchdog_scan (core/rl_watchdog.c) with a clock of the test's own. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "rl_api.h"
#include "rl_watchdog.h"

#define MS 1000000ull
#define T0 (1000 * MS)          /* 0 means "not started" to the scanner */

static struct rl_watchdog wd;
static rl_guard g[2];

static int setup(void **state)
{
	(void)state;
	memset(&wd, 0, sizeof(wd));
	memset(g, 0, sizeof(g));
	assert_int_equal(rl_watchdog_add(&wd, &g[0], 0), 0);
	assert_int_equal(rl_watchdog_add(&wd, &g[1], 1), 0);
	wd.timeout_ms = 100;    /* as rl_watchdog_start sets it, no thread */
	g[0].armed = g[1].armed = 1;
	g[0].seq = g[1].seq = 7;
	return 0;
}

/* A call that keeps the same seq past the timeout is told to stop, once,
 * with the seq it is meant for and how long it ran. */
static void fires_after_timeout(void **state)
{
	(void)state;
	assert_int_equal(rl_watchdog_scan(&wd, T0), 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 99 * MS), 0);
	assert_int_equal(g[0].stop, 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 100 * MS), 2);
	assert_int_equal(g[0].stop, 1);
	assert_int_equal(g[0].stop_seq, 7);
	assert_int_equal(g[0].ran_ms, 100);
	/* still in the same call: no second stop for it */
	g[0].stop = g[1].stop = 0;
	assert_int_equal(wd.slot[0].warned, 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 300 * MS), 0);
	assert_int_equal(g[0].stop, 0);
	assert_int_equal(wd.slot[0].warned, 1);   /* stuck in C: logged once */
}

/* Every new call (seq moved) starts its own clock. */
static void new_call_restarts_the_clock(void **state)
{
	(void)state;
	assert_int_equal(rl_watchdog_scan(&wd, T0), 0);
	for (int i = 1; i <= 10; i++) {
		g[0].seq++;
		rl_watchdog_scan(&wd, T0 + i * 60 * MS);
		assert_int_equal(g[0].stop, 0);
	}
	assert_int_equal(g[0].stop, 0);
	assert_int_equal(g[1].stop, 1);     /* the other kept its seq */
	/* and the next runaway call is stopped in its turn */
	g[0].seq++;
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 700 * MS), 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 800 * MS), 1);
	assert_int_equal(g[0].stop_seq, g[0].seq);
}

/* A worker waiting in the ring, or whose Lua is not running, is never
 * stopped however long it stays so. */
static void idle_or_unarmed_never_fires(void **state)
{
	(void)state;
	g[0].idle = 1;
	g[1].armed = 0;
	for (int i = 0; i < 20; i++)
		assert_int_equal(rl_watchdog_scan(&wd, T0 + i * 100 * MS), 0);
	/* waking up (the loop bumps seq for the event) starts the clock
	 * then, not at the wait's start */
	g[0].idle = 0;
	g[0].seq++;
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 2000 * MS), 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 2050 * MS), 0);
	assert_int_equal(rl_watchdog_scan(&wd, T0 + 2100 * MS), 1);
	assert_int_equal(g[1].stop, 0);
}

static void slots_are_bounded(void **state)
{
	(void)state;
	while (wd.n < RL_WATCHDOG_MAX)
		assert_int_equal(rl_watchdog_add(&wd, &g[0], wd.n), 0);
	assert_int_equal(rl_watchdog_add(&wd, &g[0], 0), -ENOSPC);
}

/* timeout 0: no thread, and the guards say so to Lua. */
static void zero_timeout_starts_nothing(void **state)
{
	(void)state;
	g[0].limit_ms = 5;
	assert_int_equal(rl_watchdog_start(&wd, 0), 0);
	assert_int_equal(wd.running, 0);
	assert_int_equal(g[0].limit_ms, 0);
	rl_watchdog_stop(&wd);
}

/* The real thread stops a busy guard within timeout + a period. */
static void thread_stops_a_busy_guard(void **state)
{
	struct timespec ts = { 0, 5 * 1000000 };
	int waited = 0;

	(void)state;
	assert_int_equal(rl_watchdog_start(&wd, 20), 0);
	assert_int_equal(g[0].limit_ms, 20);
	while (!__atomic_load_n(&g[0].stop, __ATOMIC_ACQUIRE) && waited < 2000) {
		nanosleep(&ts, NULL);
		waited += 5;
	}
	rl_watchdog_stop(&wd);
	assert_int_equal(g[0].stop, 1);
	assert_true(waited >= 15 && waited < 1500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(fires_after_timeout, setup),
		cmocka_unit_test_setup(new_call_restarts_the_clock, setup),
		cmocka_unit_test_setup(idle_or_unarmed_never_fires, setup),
		cmocka_unit_test_setup(slots_are_bounded, setup),
		cmocka_unit_test_setup(zero_timeout_starts_nothing, setup),
		cmocka_unit_test_setup(thread_stops_a_busy_guard, setup),
	};

	return cmocka_run_group_tests_name("watchdog", tests, NULL, NULL);
}
