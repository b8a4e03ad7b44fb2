/* fuzz_input.h: reading a fuzz input as a stream of small numbers, and the
 * check that stops a harness when the code under test leaves its model. */
#ifndef FUZZ_INPUT_H
#define FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes not yet read.  Past the end every read gives 0, so a short input
 * is a valid (shorter) scenario rather than an error. */
struct fuzz_in {
	const uint8_t *p;
	size_t n;
};

static inline int in_left(const struct fuzz_in *in)
{
	return in->n > 0;
}

static inline uint8_t in_u8(struct fuzz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint16_t in_u16(struct fuzz_in *in)
{
	uint16_t lo = in_u8(in);

	return (uint16_t)(lo | in_u8(in) << 8);
}

static inline uint32_t in_u32(struct fuzz_in *in)
{
	uint32_t lo = in_u16(in);

	return lo | (uint32_t)in_u16(in) << 16;
}

static inline uint64_t in_u64(struct fuzz_in *in)
{
	uint64_t lo = in_u32(in);

	return lo | (uint64_t)in_u32(in) << 32;
}

/* Up to want bytes of the input itself (fewer near its end). */
static inline const uint8_t *in_bytes(struct fuzz_in *in, size_t want,
				      size_t *got)
{
	const uint8_t *p = in->p;

	*got = want < in->n ? want : in->n;
	in->p += *got;
	in->n -= *got;
	return p;
}

/* A divergence from the model is a bug: stop with a message, which
 * libFuzzer reports as a crash and saves the input for. */
#define FUZZ_CHECK(cond, ...) do { \
		if (!(cond)) { \
			fprintf(stderr, "%s:%d: model check failed: %s: ", \
				__FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
			abort(); \
		} \
	} while (0)

#endif
