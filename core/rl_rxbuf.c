/* rl_rxbuf.c: a connection's unconsumed bytes and how each arrival is offered. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_alloc.h"
#include "rl_rxbuf.h"

static int reserve(struct rl_rxbuf *rx, size_t extra, size_t limit)
{
	size_t need = (size_t)rx->len + extra, cap;
	uint8_t *p;

	if (need > limit)
		return -EMSGSIZE;
	if (need <= rx->cap)
		return 0;
	cap = rx->cap ? rx->cap : 256;
	while (cap < need)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	p = rl_realloc(rx->data, cap);
	if (!p)
		return -ENOMEM;
	rx->data = p;
	rx->cap = (uint32_t)cap;
	return 0;
}

static int append(struct rl_rxbuf *rx, const uint8_t *p, uint32_t n,
		  size_t limit)
{
	int ret;

	if (!n)
		return 0;       /* nothing, and maybe no residue to point at */
	ret = reserve(rx, n, limit);
	if (ret)
		return ret;
	memcpy(rx->data + rx->len, p, n);
	rx->len += n;
	return 0;
}

/* Drop the first n residue bytes; free the residue once it is empty so an
 * idle connection holds no receive memory. */
static void drop(struct rl_rxbuf *rx, uint32_t n)
{
	if (n >= rx->len) {
		free(rx->data);
		rx->data = NULL;
		rx->len = rx->cap = 0;
		return;
	}
	memmove(rx->data, rx->data + n, rx->len - n);
	rx->len -= n;
}

static void offer_direct(struct rl_rxbuf *rx, uint32_t off,
			 struct rl_rx_offer *o)
{
	rx->phase = RL_RX_DIRECT;
	rx->buf_off = off;
	o->ptr = rx->buf + off;
	o->len = rx->buf_len - off;
	o->in_buf = 1;
}

static void offer_residue(struct rl_rxbuf *rx, struct rl_rx_offer *o)
{
	o->ptr = rx->data;
	o->len = rx->len;
	o->in_buf = 0;
}

int rl_rxbuf_begin(struct rl_rxbuf *rx, const uint8_t *buf, uint32_t len,
		   size_t limit, struct rl_rx_offer *o, uint64_t *copied)
{
	uint32_t prefix;
	int ret;

	rx->buf = buf;
	rx->buf_len = len;
	if (rx->len == 0) {
		offer_direct(rx, 0, o);
		return 0;
	}
	/* A frame started in an earlier buffer.  Copy only a prefix: twice the
	 * residue finishes most frames, and the rest is offered in place. */
	prefix = rx->len * 2 > RL_RXBUF_MIN_PREFIX ? rx->len * 2
						   : RL_RXBUF_MIN_PREFIX;
	if (prefix > len)
		prefix = len;
	rx->old_len = rx->len;
	ret = append(rx, buf, prefix, limit);
	if (ret)
		return ret;
	*copied += prefix;
	rx->appended = prefix;
	rx->phase = prefix == len ? RL_RX_ALL : RL_RX_PREFIX;
	offer_residue(rx, o);
	return 0;
}

static int keep_tail(struct rl_rxbuf *rx, uint32_t off, size_t limit,
		     uint64_t *copied)
{
	uint32_t n = rx->buf_len - off;
	int ret = n ? append(rx, rx->buf + off, n, limit) : 0;

	if (!ret)
		*copied += n;
	return ret;
}

int rl_rxbuf_consumed(struct rl_rxbuf *rx, uint32_t n, size_t limit,
		      struct rl_rx_offer *o, uint64_t *copied)
{
	uint32_t off;
	int ret;

	switch (rx->phase) {
	case RL_RX_DIRECT:
		off = rx->buf_off + n;
		if (off > rx->buf_len)
			off = rx->buf_len;
		rx->phase = RL_RX_IDLE;
		return keep_tail(rx, off, limit, copied);
	case RL_RX_PREFIX:
		if (n >= rx->old_len) {
			/* The spanning frame is done: the residue goes, the
			 * buffer is offered in place from the first byte not
			 * consumed. */
			off = n - rx->old_len;
			if (off > rx->appended)
				off = rx->appended;
			drop(rx, rx->len);
			if (off < rx->buf_len) {
				offer_direct(rx, off, o);
				return 1;
			}
			rx->phase = RL_RX_IDLE;
			return 0;
		}
		/* Still inside the spanning frame: it needs the whole buffer. */
		drop(rx, n);
		ret = append(rx, rx->buf + rx->appended,
			     rx->buf_len - rx->appended, limit);
		if (ret)
			return ret;
		*copied += rx->buf_len - rx->appended;
		rx->appended = rx->buf_len;     /* all of it is in now */
		rx->phase = RL_RX_ALL;
		offer_residue(rx, o);
		return 1;
	case RL_RX_ALL:
		drop(rx, n);
		rx->phase = RL_RX_IDLE;
		return 0;
	default:
		return 0;
	}
}

int rl_rxbuf_stop(struct rl_rxbuf *rx, uint32_t n, uint32_t *off)
{
	switch (rx->phase) {
	case RL_RX_DIRECT:
		*off = rx->buf_off + n;
		break;
	case RL_RX_PREFIX:
	case RL_RX_ALL:
		if (!rx->buf)
			return 0;       /* a residue offered again alone */
		/* The residue is the older bytes, then the arrival's first
		 * `appended` (all of it in ALL). */
		if (n >= rx->len - rx->appended) {
			*off = n - (rx->len - rx->appended);
			drop(rx, rx->len);
		} else {
			/* The arrival's bytes are the residue's tail. */
			rx->len -= rx->appended;
			*off = 0;
			drop(rx, n);
		}
		break;
	default:
		return 0;
	}
	if (*off > rx->buf_len)
		*off = rx->buf_len;
	rx->phase = RL_RX_IDLE;
	return 1;
}

int rl_rxbuf_keep(struct rl_rxbuf *rx, const uint8_t *buf, uint32_t len,
		  size_t limit, uint64_t *copied)
{
	int ret = append(rx, buf, len, limit);

	if (!ret)
		*copied += len;
	return ret;
}

int rl_rxbuf_reoffer(struct rl_rxbuf *rx, struct rl_rx_offer *o)
{
	if (rx->len == 0)
		return -1;
	/* As after an arrival that was copied whole: what is consumed is
	 * dropped from the residue, the rest stays. */
	rx->buf = NULL;
	rx->buf_len = 0;
	rx->buf_off = 0;
	rx->old_len = rx->len;
	rx->appended = 0;
	rx->phase = RL_RX_ALL;
	offer_residue(rx, o);
	return 0;
}

void rl_rxbuf_free(struct rl_rxbuf *rx)
{
	free(rx->data);
	memset(rx, 0, sizeof(*rx));
}
