/* rl_file.c: files sent from disk: opening beneath a root, and the reads
 * that feed a send queue's file segments (rl_sendq.h) through the ring. */

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rl_file.h"
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
	ret = rl_sendq_push_file(&c->sq, fd, offset, len);
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
