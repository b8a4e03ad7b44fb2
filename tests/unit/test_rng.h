/* test_rng.h: the unit tests' small reproducible random numbers (an LCG:
 * a test sets rng_state to its seed). */
#ifndef TEST_RNG_H
#define TEST_RNG_H

#include <stdint.h>

static uint32_t rng_state;
static inline uint32_t rnd(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return rng_state >> 8;
}

#endif
