/* rl_file.h: files a handler sends without reading them into Lua: open
 * beneath a root, and the send queue's file segments read by io_uring.
 *
 * Part of the FFI cdef (included by rl_api.h): plain C declarations only.
 */
#ifndef RL_FILE_H
#define RL_FILE_H

#ifndef RL_FFI_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

struct rl_worker;

enum rl_file_kind {
	RL_FILE_REGULAR = 1,
	RL_FILE_DIRECTORY = 2,
	RL_FILE_OTHER = 3,       /* device, fifo, socket: never served */
};

/* What fstat said about an open file. */
typedef struct rl_file_info {
	int64_t size;
	int64_t mtime_sec;       /* last modification, unix seconds */
	int64_t mtime_nsec;
	uint64_t ino;
	uint64_t dev;
	int32_t kind;            /* enum rl_file_kind */
} rl_file_info;

/* Open a directory to serve files from; an fd or -errno. */
int rl_file_open_root(const char *path);
/* Open rel (a relative path) read-only beneath the root dirfd and fstat
 * it: no ".." or symlink may lead out of the root (openat2 with
 * RESOLVE_BENEATH: -EXDEV), no magic links; a fifo or device is opened
 * without blocking and reported as RL_FILE_OTHER.  An fd or -errno. */
int rl_file_open_at(int root, const char *rel, rl_file_info *info);
/* Close an fd these returned (one not handed to rl_conn_send_file). */
int rl_file_close(int fd);

/* Queue len bytes of the regular file fd from offset, after what is
 * already queued.  The worker reads them with io_uring, a chunk at a time
 * (a page-cache miss never blocks it), into one buffer per connection
 * that goes back to the pool after the last chunk; they count as unsent
 * bytes (rl_conn_writable, DRAIN) but hold no memory until read.  From a
 * 0 return the queue owns fd and closes it once the range is sent or the
 * connection closes; on -errno the caller keeps it.  A file that ends
 * before offset + len closes the connection (its response was promised
 * whole).  0, -EPIPE (closing), -EINVAL (offset/len), -ENOMEM. */
int rl_conn_send_file(struct rl_worker *w, uint32_t conn, uint32_t gen, int fd,
		      int64_t offset, int64_t len);

#endif
