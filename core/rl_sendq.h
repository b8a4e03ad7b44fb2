/* rl_sendq.h: a connection's queue of bytes to send, copied or leased.
 *
 * A segment is either a chunk we own (a copy of a Lua string) or a range of
 * a ring buffer that the segment holds a lease on (a zero-copy send of a
 * received slice).  A segment's bytes are released only when a send
 * completion says the kernel is done with them.
 */
#ifndef RL_SENDQ_H
#define RL_SENDQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "rl_bufring.h"
#include "rl_dict.h"

#define RL_SENDQ_INLINE 4
#define RL_CHUNK_SIZE 4096
/* A copy that follows a zero-copy segment (a reply's framing around a
 * dictionary value or a received slice) starts in a small chunk: a
 * pipeline of such replies would otherwise hold 4 KiB per dozen bytes. */
#define RL_CHUNK_SMALL 256
#define RL_FILEBUF_SIZE (64 * 1024)  /* one read of a file segment */
#define RL_FILEBUF_KEEP 8            /* free file buffers a worker keeps */

/* Free list of send chunks, one per worker: no allocation per send once
 * traffic is steady. */
struct rl_chunkpool {
	void **free;
	uint32_t count;
	uint32_t max;
	void **free_small;    /* RL_CHUNK_SMALL chunks (same allocation) */
	uint32_t count_small;
	uint32_t nfilebufs;
	void *filebufs[RL_FILEBUF_KEEP];
};

#define RL_SEG_CHUNK (-1)    /* bid of an owned chunk */
#define RL_SEG_BLOB (-2)     /* bid of a range of a dictionary value */
#define RL_SEG_FILE (-3)     /* bid of a range of a file (struct rl_sendfile) */


/* A file range being sent: read a buffer at a time (by the worker, with
 * io_uring), sent, read again.  The queue owns fd. */
struct rl_sendfile {
	int fd;
	int64_t pos;          /* file offset of the next read */
	int64_t unread;       /* bytes still to read */
	uint8_t *buf;         /* RL_FILEBUF_SIZE bytes while reading */
	uint32_t buf_off;     /* bytes of buf already sent */
	uint32_t buf_len;     /* bytes read into buf */
	uint32_t reads;       /* reads done, for their size (rl_file.c) */
	uint8_t no_direct;    /* sendfile refused this file: read it */
};

struct rl_sendseg {
	uint8_t *base;
	uint32_t off;      /* bytes already sent */
	uint32_t len;      /* bytes queued */
	uint32_t cap;      /* chunk capacity; 0 for a ring buffer range */
	int32_t bid;       /* ring buffer leased, RL_SEG_CHUNK or RL_SEG_BLOB */
	union {
		rl_blob *blob;     /* RL_SEG_BLOB: the value it holds a ref on */
		struct rl_sendfile *file;  /* RL_SEG_FILE (len, off unused) */
	};
};

struct rl_sendq {
	struct rl_sendseg *segs;     /* inline or heap ring of segments */
	uint32_t head;
	uint32_t count;
	uint32_t cap;
	size_t bytes;                /* queued and not yet sent */
	size_t file_bytes;           /* of which in file segments, unread */
	size_t ref_bytes;            /* of which in leased ring buffers */
	struct rl_sendseg inline_segs[RL_SENDQ_INLINE];
};

int rl_chunkpool_init(struct rl_chunkpool *p, uint32_t max);
void rl_chunkpool_free(struct rl_chunkpool *p);

void rl_sendq_init(struct rl_sendq *q);
/* Copy len bytes in.  0 or -ENOMEM. */
int rl_sendq_push_copy(struct rl_sendq *q, struct rl_chunkpool *pool,
		       const void *p, size_t len);
/* Queue len bytes of ring buffer bid without copying; takes a lease. */
int rl_sendq_push_ref(struct rl_sendq *q, struct rl_bufring *br,
		      const void *p, size_t len, int32_t bid);
/* Queue len bytes of a dictionary value without copying; takes a ref on
 * the blob until they are sent. */
int rl_sendq_push_blob(struct rl_sendq *q, rl_blob *b, size_t off, size_t len);
/* Queue len bytes of file fd from offset; the queue owns fd from a 0
 * return (closed when sent or cleared).  0, -EINVAL or -ENOMEM. */
int rl_sendq_push_file(struct rl_sendq *q, int fd, int64_t offset,
		       int64_t len);
/* The first file segment, if its buffer is empty and it has bytes to
 * read, with its buffer taken from the pool; NULL if there is none (or
 * -ENOMEM: *err).  Read before sending what precedes it, both go out in
 * one send. */
struct rl_sendfile *rl_sendq_file_to_read(struct rl_sendq *q,
					  struct rl_chunkpool *pool,
					  int *err);
/* The file segment at the front (only emptied segments before it), with
 * nothing in its buffer and bytes still to send; else NULL.  Its bytes may
 * go straight from the page cache (sendfile), then rl_sendq_file_sent. */
struct rl_sendfile *rl_sendq_front_file(const struct rl_sendq *q);
/* n bytes of the front file segment went out without its buffer (n at most
 * its unread bytes): done segments are released. */
void rl_sendq_file_sent(struct rl_sendq *q, struct rl_chunkpool *pool,
			struct rl_bufring *br, size_t n);
/* Fill iov with up to max pieces from the front, up to a file segment's
 * unread bytes; returns pieces. */
int rl_sendq_iov(const struct rl_sendq *q, struct iovec *iov, int max,
		 size_t *bytes);
/* n bytes were sent: release what is done. */
void rl_sendq_advance(struct rl_sendq *q, struct rl_chunkpool *pool,
		      struct rl_bufring *br, size_t n);
/* Copy leased ranges into owned chunks and end their leases, so a peer that
 * reads slowly cannot keep ring buffers from everyone else.  Only call
 * while no send is in flight.  0 or -ENOMEM (queue unchanged). */
int rl_sendq_detach(struct rl_sendq *q, struct rl_chunkpool *pool,
		    struct rl_bufring *br);
/* Does any queued segment hold a ring buffer lease? */
int rl_sendq_has_refs(const struct rl_sendq *q);
void rl_sendq_clear(struct rl_sendq *q, struct rl_chunkpool *pool,
		    struct rl_bufring *br);

#endif
