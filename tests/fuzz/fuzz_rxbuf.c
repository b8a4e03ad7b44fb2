/* fuzz_rxbuf.c: fuzzes core/rl_rxbuf.c (arrival splits, consume counts, stops mid-offer, reoffers, limits) against a model byte stream: every offer is the next unconsumed bytes, the residue is exactly what is left. */
#include <errno.h>

#include "fuzz_input.h"
#include "rl_rxbuf.h"

#define STREAM_MAX (1u << 20)   /* bytes received per input, at most */
#define STEPS_MAX 2048          /* offers within one arrival, at most */

/* The model: everything received, and how much of it was consumed.  The
 * unconsumed bytes are stream[consumed..received). */
struct model {
	uint8_t *stream;
	uint32_t received;
	uint32_t consumed;
};

/* Byte i of the stream: a hash of its position, so a byte offered out of
 * order or twice does not look right by accident. */
static uint8_t stream_byte(uint32_t i)
{
	return (uint8_t)((i * 2654435761u) >> 24 ^ i);
}

static size_t pick_limit(uint8_t b)
{
	if (b % 4 == 0)
		return (size_t)1 << 30;         /* effectively unlimited */
	return (size_t)1 << (4 + b % 15);       /* 16 bytes to 256 KiB */
}

static uint32_t pick_arrival_len(struct fuzz_in *in)
{
	uint8_t kind = in_u8(in);

	if (kind % 4 == 0)
		return 1 + in_u8(in) % 16;      /* tiny: frames span many */
	if (kind % 4 == 3)
		return 1 + in_u16(in);          /* up to 64 KiB */
	return 1 + in_u16(in) % 4096;           /* a ring buffer's worth */
}

static uint32_t pick_consume(struct fuzz_in *in, uint32_t offered)
{
	uint8_t kind = in_u8(in);

	switch (kind % 4) {
	case 0:
		return 0;                       /* an incomplete frame */
	case 1:
		return offered;                 /* all of it */
	default:
		return in_u16(in) % (offered + 1);
	}
}

/* An offer must be the next unconsumed bytes of the stream, non-empty. */
static void check_offer(const struct model *m, const struct rl_rx_offer *o)
{
	FUZZ_CHECK(o->len > 0, "empty offer");
	FUZZ_CHECK(o->len <= m->received - m->consumed,
		   "offer of %u bytes, only %u unconsumed", o->len,
		   m->received - m->consumed);
	FUZZ_CHECK(memcmp(o->ptr, m->stream + m->consumed, o->len) == 0,
		   "offer of %u bytes at stream offset %u differs", o->len,
		   m->consumed);
}

/* Between arrivals the residue holds exactly the unconsumed bytes. */
static void check_idle(const struct rl_rxbuf *rx, const struct model *m)
{
	uint32_t left = m->received - m->consumed;

	FUZZ_CHECK(rx->len == left, "residue %u bytes, model %u", rx->len, left);
	FUZZ_CHECK(rx->len <= rx->cap, "residue %u over capacity %u",
		   rx->len, rx->cap);
	FUZZ_CHECK(rx->len || !rx->data, "an empty residue keeps memory");
	if (left)
		FUZZ_CHECK(memcmp(rx->data, m->stream + m->consumed, left) == 0,
			   "residue bytes differ");
}

/* A limit error is only allowed when keeping the unconsumed bytes would
 * really pass the limit. */
static void check_error(int ret, const struct model *m, size_t limit)
{
	FUZZ_CHECK(ret == -EMSGSIZE, "unexpected error %d", ret);
	FUZZ_CHECK(m->received - m->consumed > limit,
		   "-EMSGSIZE with %u unconsumed, limit %zu",
		   m->received - m->consumed, limit);
}

/* The handler stops after n bytes (paused, over high water): the residue
 * keeps the older unconsumed bytes, the arrival's rest is left in its
 * buffer from off; together they are the unconsumed stream, in order.  The
 * rest is then copied in, as the worker does when the ring runs low. */
static int stop(struct rl_rxbuf *rx, struct model *m, uint32_t n, size_t limit)
{
	uint64_t copied = 0;
	uint32_t off = 0, left = m->received - m->consumed, tail;
	const uint8_t *buf = rx->buf;
	int ret;

	ret = rl_rxbuf_stop(rx, n, &off);
	if (!ret) {
		/* A residue offered alone: the normal path. */
		struct rl_rx_offer o;

		ret = rl_rxbuf_consumed(rx, n, limit, &o, &copied);
		FUZZ_CHECK(ret == 0, "a reoffer went on after its stop: %d", ret);
		return 0;
	}
	FUZZ_CHECK(rx->phase == RL_RX_IDLE, "stop left phase %u", rx->phase);
	FUZZ_CHECK(off <= rx->buf_len, "off %u past the arrival's %u", off,
		   rx->buf_len);
	tail = rx->buf_len - off;
	FUZZ_CHECK(rx->len + tail == left, "residue %u + tail %u, model %u",
		   rx->len, tail, left);
	if (rx->len)
		FUZZ_CHECK(memcmp(rx->data, m->stream + m->consumed, rx->len) == 0,
			   "residue differs after stop");
	FUZZ_CHECK(memcmp(buf + off, m->stream + m->consumed + rx->len, tail) == 0,
		   "arrival's rest differs after stop");
	ret = rl_rxbuf_keep(rx, buf + off, tail, (size_t)1 << 31, &copied);
	FUZZ_CHECK(ret == 0, "keeping the rest failed: %d", ret);
	return 0;
}

/* Offer, consume, repeat until the arrival is handled.  Returns 0, or -1
 * when the connection would be closed (limit passed). */
static int handle_offers(struct fuzz_in *in, struct rl_rxbuf *rx,
			 struct model *m, size_t limit, struct rl_rx_offer *o)
{
	uint64_t copied = 0;

	for (int step = 0; step < STEPS_MAX; step++) {
		uint32_t n;
		int ret;

		check_offer(m, o);
		n = pick_consume(in, o->len);
		m->consumed += n;
		if (in_u8(in) % 8 == 5)
			return stop(rx, m, n, limit);
		ret = rl_rxbuf_consumed(rx, n, limit, o, &copied);
		if (ret < 0) {
			check_error(ret, m, limit);
			return -1;
		}
		if (ret == 0)
			return 0;
	}
	FUZZ_CHECK(0, "an arrival still offered after %d steps", STEPS_MAX);
	return -1;
}

/* A new buffer of len bytes: its own allocation, exactly sized and freed
 * once handled, so any read past it or kept pointer into it is caught. */
static int arrive(struct fuzz_in *in, struct rl_rxbuf *rx, struct model *m,
		  size_t limit, uint32_t len)
{
	uint8_t *buf = malloc(len);
	struct rl_rx_offer o;
	uint64_t copied = 0;
	int ret;

	for (uint32_t i = 0; i < len; i++)
		buf[i] = m->stream[m->received + i] = stream_byte(m->received + i);
	m->received += len;
	ret = rl_rxbuf_begin(rx, buf, len, limit, &o, &copied);
	if (ret < 0)
		check_error(ret, m, limit);
	else
		ret = handle_offers(in, rx, m, limit, &o);
	free(buf);
	return ret;
}

/* A paused connection resumed: the residue alone, all of it. */
static int reoffer(struct fuzz_in *in, struct rl_rxbuf *rx, struct model *m,
		   size_t limit)
{
	struct rl_rx_offer o;

	if (rl_rxbuf_reoffer(rx, &o)) {
		FUZZ_CHECK(m->received == m->consumed,
			   "no reoffer with %u bytes unconsumed",
			   m->received - m->consumed);
		return 0;
	}
	FUZZ_CHECK(o.len == m->received - m->consumed,
		   "reoffer of %u bytes, %u unconsumed", o.len,
		   m->received - m->consumed);
	return handle_offers(in, rx, m, limit, &o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	/* Static: a fresh megabyte per input would dominate the run time. */
	static uint8_t stream[STREAM_MAX];
	struct model m = { stream, 0, 0 };
	struct rl_rxbuf rx;
	size_t limit = pick_limit(in_u8(&in));

	memset(&rx, 0, sizeof(rx));
	while (in_left(&in)) {
		uint8_t op = in_u8(&in);
		int ret;

		if (op % 8 == 7) {
			ret = reoffer(&in, &rx, &m, limit);
		} else {
			uint32_t len = pick_arrival_len(&in);

			if (len > STREAM_MAX - m.received)
				break;
			ret = arrive(&in, &rx, &m, limit, len);
		}
		if (ret < 0)
			break;          /* the worker closes the connection */
		check_idle(&rx, &m);
	}
	rl_rxbuf_free(&rx);
	return 0;
}
