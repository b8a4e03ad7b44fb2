/* test_sendq_file.c: unit tests for the send queue's file segments
 * (core/rl_sendq.c): read a buffer at a time, or sent straight from the
 * page cache (rl_sendq_front_file, rl_sendq_file_sent). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <fcntl.h>
#include <unistd.h>

#include "rl_bufring.h"
#include "rl_sendq.h"

#include "sendq_test.h"

/* What the worker does for a file segment: read into its buffer (here
 * pread instead of the ring), then send what rl_sendq_iov offers. */
static int fake_read(struct fixture *f)
{
	int err;
	struct rl_sendfile *sf = rl_sendq_file_to_read(&f->q, &f->pool, &err);
	ssize_t n;

	if (!sf)
		return 0;
	n = pread(sf->fd, sf->buf, sf->unread < RL_FILEBUF_SIZE ?
		  (size_t)sf->unread : RL_FILEBUF_SIZE, sf->pos);
	assert_true(n > 0);
	sf->buf_off = 0;
	sf->buf_len = (uint32_t)n;
	sf->pos += n;
	sf->unread -= n;
	f->q.file_bytes -= (size_t)n;
	return 1;
}

static void test_file_segments(void **state)
{
	struct fixture *f = *state;
	char path[] = "/tmp/rl-test-sendq-XXXXXX";
	size_t size = 3 * RL_FILEBUF_SIZE + 1234, got = 0, sent_max = 7000;
	uint8_t *file = malloc(size), *out = malloc(size + 64);
	int fd = mkstemp(path), fd2;
	struct iovec iov[16];
	size_t bytes;
	int n;

	assert_true(fd >= 0);
	unlink(path);
	pattern(file, size, 9);
	assert_int_equal(write(fd, file, size), (ssize_t)size);
	fd2 = dup(fd);

	assert_int_equal(rl_sendq_push_file(&f->q, fd, -1, 5), -EINVAL);
	assert_int_equal(rl_sendq_push_file(&f->q, fd, 0, -5), -EINVAL);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "head", 4), 0);
	assert_int_equal(rl_sendq_push_file(&f->q, fd, 100, size - 100), 0);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "tail", 4), 0);
	assert_int_equal(f->q.bytes, size - 100 + 8);
	assert_int_equal(f->q.file_bytes, size - 100);

	/* Before a read only the head can go; the file's first buffer is
	 * read first, to go out with it. */
	n = rl_sendq_iov(&f->q, iov, 16, &bytes);
	assert_int_equal(n, 1);
	assert_int_equal(bytes, 4);
	assert_int_equal(fake_read(f), 1);
	assert_int_equal(fake_read(f), 0);          /* its buffer is full */
	n = rl_sendq_iov(&f->q, iov, 16, &bytes);
	assert_int_equal(n, 2);
	assert_int_equal(bytes, 4 + RL_FILEBUF_SIZE);
	memcpy(out, iov[0].iov_base, 4);
	assert_memory_equal(out, "head", 4);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 4);
	/* Now the file, a buffer at a time, sent in pieces; the tail only
	 * once the last bytes are read. */
	for (;;) {
		fake_read(f);
		n = rl_sendq_iov(&f->q, iov, 16, &bytes);
		if (!n)
			break;
		if (bytes > sent_max)
			bytes = sent_max;       /* a short send */
		for (int i = 0, left = (int)bytes; i < n && left; i++) {
			size_t k = iov[i].iov_len < (size_t)left ? iov[i].iov_len
								 : (size_t)left;

			memcpy(out + got, iov[i].iov_base, k);
			got += k;
			left -= (int)k;
		}
		rl_sendq_advance(&f->q, &f->pool, &f->br, bytes);
		sent_max = sent_max * 3 + 1;
	}
	assert_int_equal(got, size - 100 + 4);
	assert_memory_equal(out, file + 100, size - 100);
	assert_memory_equal(out + size - 100, "tail", 4);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	assert_int_equal(f->q.file_bytes, 0);
	assert_int_equal(f->pool.nfilebufs, 1);        /* the buffer is kept */
	assert_int_equal(fcntl(fd, F_GETFD), -1);      /* the queue closed fd */

	/* Cleared with bytes read and unread: fd closed, buffer back. */
	fd = dup(fd2);
	assert_int_equal(rl_sendq_push_file(&f->q, fd, 0, size), 0);
	assert_int_equal(fake_read(f), 1);
	assert_int_equal(f->pool.nfilebufs, 0);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 10);
	rl_sendq_clear(&f->q, &f->pool, &f->br);
	assert_int_equal(f->q.file_bytes, 0);
	assert_int_equal(f->pool.nfilebufs, 1);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	close(fd2);
	free(file);
	free(out);
}
static int temp_file(const uint8_t *data, size_t n)
{
	char path[] = "/tmp/rl-test-sendq-XXXXXX";
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	return fd;
}

/* Direct sends (sendfile from the page cache) take a file segment's bytes
 * only once everything before it is sent, in any split; a read buffer in
 * between is sent from the buffer first; the counts the marks use follow. */
static void test_direct_file_sends(void **state)
{
	struct fixture *f = *state;
	size_t size = 2 * RL_FILEBUF_SIZE + 777;
	uint8_t *file = malloc(size);
	struct rl_sendfile *sf;
	struct iovec iov[8];
	size_t bytes;
	int fd, fd2;

	pattern(file, size, 4);
	fd = temp_file(file, size);
	fd2 = dup(fd);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "head", 4), 0);
	assert_int_equal(rl_sendq_push_file(&f->q, fd, 10, 1000), 0);
	assert_int_equal(rl_sendq_push_copy(&f->q, &f->pool, "mid", 3), 0);
	assert_int_equal(rl_sendq_push_file(&f->q, fd2, 0, size), 0);
	assert_null(rl_sendq_front_file(&f->q));    /* the head goes first */
	rl_sendq_advance(&f->q, &f->pool, &f->br, 3);
	assert_null(rl_sendq_front_file(&f->q));
	rl_sendq_advance(&f->q, &f->pool, &f->br, 1);
	sf = rl_sendq_front_file(&f->q);
	assert_non_null(sf);
	assert_int_equal(sf->pos, 10);
	rl_sendq_file_sent(&f->q, &f->pool, &f->br, 400);
	assert_int_equal(sf->pos, 410);
	assert_int_equal(f->q.bytes, 600 + 3 + size);
	assert_int_equal(f->q.file_bytes, 600 + size);
	assert_ptr_equal(rl_sendq_front_file(&f->q), sf);
	rl_sendq_file_sent(&f->q, &f->pool, &f->br, 600);
	assert_int_equal(fcntl(fd, F_GETFD), -1);   /* done: closed */
	/* "mid" is next, then the second file. */
	assert_null(rl_sendq_front_file(&f->q));
	assert_int_equal(rl_sendq_iov(&f->q, iov, 8, &bytes), 1);
	assert_int_equal(bytes, 3);
	assert_memory_equal(iov[0].iov_base, "mid", 3);
	rl_sendq_advance(&f->q, &f->pool, &f->br, 3);
	sf = rl_sendq_front_file(&f->q);
	assert_non_null(sf);
	/* A page-cache miss: one buffer read, sent from the buffer, then
	 * direct again from where the read stopped. */
	assert_int_equal(fake_read(f), 1);
	assert_null(rl_sendq_front_file(&f->q));
	assert_int_equal(rl_sendq_iov(&f->q, iov, 8, &bytes), 1);
	assert_int_equal(bytes, RL_FILEBUF_SIZE);
	assert_memory_equal(iov[0].iov_base, file, RL_FILEBUF_SIZE);
	rl_sendq_advance(&f->q, &f->pool, &f->br, RL_FILEBUF_SIZE);
	assert_ptr_equal(rl_sendq_front_file(&f->q), sf);
	assert_int_equal(sf->pos, RL_FILEBUF_SIZE);
	assert_int_equal(f->q.bytes, size - RL_FILEBUF_SIZE);
	assert_int_equal(f->q.file_bytes, size - RL_FILEBUF_SIZE);
	rl_sendq_file_sent(&f->q, &f->pool, &f->br, size - RL_FILEBUF_SIZE);
	assert_int_equal(f->q.count, 0);
	assert_int_equal(f->q.bytes, 0);
	assert_int_equal(f->q.file_bytes, 0);
	assert_int_equal(fcntl(fd2, F_GETFD), -1);
	assert_int_equal(f->pool.nfilebufs, 1);     /* the read's buffer */
	free(file);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_file_segments, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_file_sends, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
