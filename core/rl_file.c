/* rl_file.c: files sent from disk: opening beneath a root, and the reads
 * that feed a send queue's file segments (rl_sendq.h) through the ring. */

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rl_file.h"
#include "rl_tls.h"
#include "rl_worker_int.h"

/* -- Opening ------------------------------------------------------------- */

int rl_file_open_root(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

static int file_kind(mode_t m)
{
	if (S_ISREG(m))
		return RL_FILE_REGULAR;
	return S_ISDIR(m) ? RL_FILE_DIRECTORY : RL_FILE_OTHER;
}

int rl_file_open_at(int root, const char *rel, rl_file_info *info)
{
	/* The kernel walks the path and refuses any step out of the root
	 * ("..", an absolute path, a symlink leading out): no window between
	 * a check and the open.  O_NONBLOCK: opening a fifo must not wait
	 * for a writer (it is refused by its kind afterwards). */
	struct open_how how = {
		.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	struct stat st;
	int fd;

	fd = (int)syscall(SYS_openat2, root, rel, &how, sizeof(how));
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		int err = -errno;

		close(fd);
		return err;
	}
	info->size = st.st_size;
	info->mtime_sec = st.st_mtim.tv_sec;
	info->mtime_nsec = st.st_mtim.tv_nsec;
	info->ino = st.st_ino;
	info->dev = st.st_dev;
	info->kind = file_kind(st.st_mode);
	return fd;
}

int rl_file_close(int fd)
{
	return close(fd) ? -errno : 0;
}

/* -- Sending ---------------------------------------------------------------- */

int rl_conn_send_file(rl_worker *w, uint32_t conn, uint32_t gen, int fd,
		      int64_t offset, int64_t len)
{
	struct rl_conn *c = rl_conntab_get(&w->conns, conn, gen);
	int ret;

	if (!may_send(c))
		return -EPIPE;
	if (len == 0) {
		if (fd < 0 || offset < 0)
			return -EINVAL;
		close(fd);      /* owned from a 0 return, nothing to read */
		return 0;
	}
	/* TLS: the file is read, encrypted and sent a record at a time. */
	ret = rl_sendq_push_file(c->tls ? &c->tls->plain : &c->sq, fd, offset,
				 len);
	if (ret)
		return ret;
	queue_work(w, c, conn);
	return 0;
}

/* The connection's queue holds a file range with nothing read: read a
 * buffer of it.  The read counts as the connection's send in flight, so
 * nothing else is sent meanwhile and the slot outlives it (finalize waits
 * for it).  0: a read started; 1: none needed (its buffer still has bytes
 * to send); -errno: none could start, the connection is aborted. */
int rl_w_submit_file_read(struct rl_worker *w, struct rl_conn *c,
			  uint32_t idx)
{
	struct rl_sendfile *f;
	struct io_uring_sqe *sqe;
	int64_t want;
	int err;

	f = rl_sendq_file_to_read(&c->sq, &w->pool, &err);
	if (unlikely(err)) {
		if (!c->close_reason)
			c->close_reason = err;
		c->aborting = 1;
		queue_work(w, c, idx);
		return err;
	}
	if (!f)
		return 1;
	/* A peer that reads slower than we send (its last send was short)
	 * gets a quarter buffer at a time: it waits in the socket either way,
	 * and a non-reading download then holds 16 KiB, not 64.  So does the
	 * first read of a range larger than a buffer, before the first send
	 * says which kind of peer this is (a range that fits is read whole:
	 * small files cost one read). */
	want = c->slow || (!f->reads && f->unread > RL_FILEBUF_SIZE)
		       ? RL_FILEBUF_SIZE / 4 : RL_FILEBUF_SIZE;
	f->reads++;
	if (f->unread < want)
		want = f->unread;
	sqe = get_sqe(w);
	/* A page-cache hit completes at submission; a miss goes to the
	 * kernel's workers, never blocking this thread. */
	io_uring_prep_read(sqe, f->fd, f->buf, (unsigned)want,
			   (uint64_t)f->pos);
	io_uring_sqe_set_data64(sqe, ud_make(OP_FILE_READ, c->gen, idx));
	c->send_inflight = 1;
	c->inflight_bytes = 0;
	return 0;
}

void rl_w_on_file_read(struct rl_worker *w, struct io_uring_cqe *cqe)
{
	uint32_t idx = ud_idx(cqe->user_data);
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   ud_gen(cqe->user_data));
	struct rl_sendfile *f;
	int res = cqe->res, err;

	if (unlikely(!c))
		return;         /* the slot waits for its read: not expected */
	c->send_inflight = 0;
	queue_work(w, c, idx);
	if (c->aborting)
		return;
	f = rl_sendq_file_to_read(&c->sq, &w->pool, &err);
	if (unlikely(!f))
		return;         /* cannot happen: nothing moved the queue */
	if (unlikely(res <= 0)) {
		/* A read error, or the file is shorter than the range queued:
		 * the response was promised whole, so the peer must see it
		 * cut, not padded. */
		rl_debug(w->id, "conn %u: file read at %lld: %s", idx,
			 (long long)f->pos, res ? strerror(-res) : "file ended early");
		if (!c->close_reason)
			c->close_reason = res ? res : -ENODATA;
		c->aborting = 1;
		return;
	}
	f->buf_off = 0;
	f->buf_len = (uint32_t)res;
	f->pos += res;
	f->unread -= res;
	c->sq.file_bytes -= (size_t)res;
}

/* -- Sending straight from the page cache ---------------------------------- */

/* cachestat(2) (Linux 6.5); Debian's headers may predate it. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct rl_cachestat_range {
	uint64_t off;
	uint64_t len;
};

struct rl_cachestat {
	uint64_t nr_cache;
	uint64_t nr_dirty;
	uint64_t nr_writeback;
	uint64_t nr_evicted;
	uint64_t nr_recently_evicted;
};

/* At most this much per sendfile: it takes what the socket has room for,
 * and the residency check walks as many pages. */
#define DIRECT_MAX (512 * 1024)
#define PAGE_BYTES 4096

/* Is every page of the range in the page cache?  Only then may sendfile
 * run on this thread: a page it has to read from disk would block the
 * worker (the io_uring read path takes those).  1, 0, or -errno. */
static int range_cached(int fd, int64_t off, int64_t len)
{
	struct rl_cachestat_range r = { .off = (uint64_t)off, .len = (uint64_t)len };
	struct rl_cachestat cs;
	uint64_t first = (uint64_t)off / PAGE_BYTES;
	uint64_t end = ((uint64_t)(off + len) + PAGE_BYTES - 1) / PAGE_BYTES;

	if (syscall(__NR_cachestat, fd, &r, &cs, 0))
		return -errno;
	return cs.nr_cache >= end - first;
}

/* Wait for room in the socket: the wait counts as the send in flight, as a
 * send would (finalize waits for it; a shutdown wakes it). */
static void wait_writable(struct rl_worker *w, struct rl_conn *c, uint32_t idx)
{
	struct io_uring_sqe *sqe = get_sqe(w);

	io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND_POLL, c->gen, idx));
	c->send_inflight = 1;
	c->inflight_bytes = 0;
}

void rl_w_on_send_poll(struct rl_worker *w, struct io_uring_cqe *cqe)
{
	uint32_t idx = ud_idx(cqe->user_data);
	struct rl_conn *c = rl_conntab_get(&w->conns, idx,
					   ud_gen(cqe->user_data));

	if (unlikely(!c))
		return;
	/* Room, or an error the next send reports. */
	c->send_inflight = 0;
	queue_work(w, c, idx);
}

/* A send from this thread failed: EAGAIN waits for room, anything else
 * ends the connection.  Returns 0 (handled). */
static int send_failed(struct rl_worker *w, struct rl_conn *c, uint32_t idx,
		       int err)
{
	if (err == EAGAIN || err == EINTR) {
		sent_bytes(w, c, 0, 1);
		wait_writable(w, c, idx);
		return 0;
	}
	if (!c->close_reason)
		c->close_reason = -err;
	c->aborting = 1;
	queue_work(w, c, idx);
	return 0;
}

/* The bytes queued before a file (and a read buffer's), sent from this
 * thread so that the file's pages can follow at once; MSG_MORE holds a
 * response's head for them.  1: all sent; 0: waiting or failed. */
static int send_before_file(struct rl_worker *w, struct rl_conn *c,
			    uint32_t idx)
{
	struct iovec iov[RL_IOV_MAX];
	struct msghdr msg = { .msg_iov = iov };
	size_t bytes;
	ssize_t n;

	msg.msg_iovlen = (size_t)rl_sendq_iov(&c->sq, iov, RL_IOV_MAX, &bytes);
	if (!bytes)
		return 1;
	n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT |
		    (c->sq.file_bytes ? MSG_MORE : 0));
	if (n < 0)
		return send_failed(w, c, idx, errno);
	rl_sendq_advance(&c->sq, &w->pool, &w->br, (size_t)n);
	sent_bytes(w, c, (size_t)n, (size_t)n < bytes);
	if ((size_t)n < bytes) {
		wait_writable(w, c, idx);
		return 0;
	}
	return 1;
}

/* The connection's queue holds file bytes not yet read: send them with
 * sendfile(2) from the page cache, on this thread, with what precedes
 * them; no copy into a buffer of ours, no buffer held per download (a
 * non-reading peer holds only the socket's pages).  A range not all in
 * the cache is read with io_uring instead (rl_w_submit_file_read).
 * Returns 1 when nothing is left for this path (the queue has no unread
 * file bytes, or a file sendfile refuses): the caller sends the rest; 0
 * when handled (sent, waiting for room or a read, or failed). */
int rl_w_send_files_direct(struct rl_worker *w, struct rl_conn *c,
			   uint32_t idx)
{
	struct rl_sendfile *f;

	if (unlikely(!c->nonblock)) {
		/* sendfile has no MSG_DONTWAIT: a full socket must say
		 * EAGAIN, not block the worker.  io_uring's own sends and
		 * receives do not mind (they wait by polling either way). */
		int fl = fcntl(c->fd, F_GETFL);

		if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK))
			return 1;
		c->nonblock = 1;
	}
	while (c->sq.file_bytes) {
		int64_t want;
		ssize_t n;
		int cached;

		if (!send_before_file(w, c, idx))
			return 0;
		f = rl_sendq_front_file(&c->sq);
		if (!f)
			return 1;       /* a read's buffer, sent by the caller */
		if (f->no_direct)
			return rl_w_submit_file_read(w, c, idx) <= 0 ? 0 : 1;
		want = f->unread < DIRECT_MAX ? f->unread : DIRECT_MAX;
		cached = range_cached(f->fd, f->pos, want);
		if (cached < 0)
			f->no_direct = 1;       /* no cachestat: reads only */
		if (cached <= 0)
			return rl_w_submit_file_read(w, c, idx) <= 0 ? 0 : 1;
		n = sendfile(c->fd, f->fd, &(off_t){ f->pos }, (size_t)want);
		if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
			f->no_direct = 1;       /* a file system without it */
			continue;
		}
		if (n < 0)
			return send_failed(w, c, idx, errno);
		if (n == 0) {
			/* The file is shorter than the range queued: the
			 * response was promised whole, so it is cut. */
			rl_debug(w->id, "conn %u: file ended early at %lld", idx,
				 (long long)f->pos);
			return send_failed(w, c, idx, ENODATA);
		}
		rl_sendq_file_sent(&c->sq, &w->pool, &w->br, (size_t)n);
		w->stats.file_bytes_direct += (uint64_t)n;
		sent_bytes(w, c, (size_t)n, n < want);
		if (n < want) {
			wait_writable(w, c, idx);
			return 0;
		}
	}
	return 1;
}
