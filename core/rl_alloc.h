/* rl_alloc.h: the allocator the core's data paths call, which fault tests can make fail. */
#ifndef RL_ALLOC_H
#define RL_ALLOC_H

#include <errno.h>
#include <stdlib.h>

/*
 * A normal build calls libc directly.  Built with -DRL_FAULT_INJECTION
 * (tests/unit/test_faults.c), every call counts down rl_fault_countdown
 * and the call that takes it from 1 to 0 returns NULL, as a failing
 * malloc would: the tests walk N = 1, 2, ... over an operation so that
 * each of its allocation sites fails once, and check that the caller gets
 * -ENOMEM and leaks nothing.  0 means "never fail".  With rl_fault_sticky
 * set, every call after that one fails too (memory that stays short).
 */
#ifdef RL_FAULT_INJECTION
extern unsigned long rl_fault_countdown;
extern unsigned long rl_fault_failed;   /* how many calls were made to fail */
extern int rl_fault_sticky;

static inline int rl_fault_fire(void)
{
	if (rl_fault_countdown == 0)
		return 0;
	if (rl_fault_countdown > 1) {
		rl_fault_countdown--;
		return 0;
	}
	/* The failing call.  Sticky stays at 1: the next call fails too. */
	if (!rl_fault_sticky)
		rl_fault_countdown = 0;
	rl_fault_failed++;
	errno = ENOMEM;
	return 1;
}

static inline void *rl_malloc(size_t n)
{
	return rl_fault_fire() ? NULL : malloc(n);
}

static inline void *rl_calloc(size_t n, size_t size)
{
	return rl_fault_fire() ? NULL : calloc(n, size);
}

/* A failed realloc leaves p as it was, as libc's does. */
static inline void *rl_realloc(void *p, size_t n)
{
	return rl_fault_fire() ? NULL : realloc(p, n);
}
#else
#define rl_malloc(n) malloc(n)
#define rl_calloc(n, size) calloc(n, size)
#define rl_realloc(p, n) realloc(p, n)
#endif

#endif
