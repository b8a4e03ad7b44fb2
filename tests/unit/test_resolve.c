/* test_resolve.c: unit tests for the resolver threads and their per-worker inboxes (core/rl_resolve.c), and the numeric/name split of connect addresses (rl_addr_parse_numeric). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "rl_listen.h"
#include "rl_resolve.h"

static uint64_t ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until the eventfd was written (and reset it).  1, or 0 on timeout. */
static int wait_wake(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint64_t v;

	if (poll(&p, 1, timeout_ms) != 1)
		return 0;
	assert_int_equal(read(fd, &v, sizeof(v)), sizeof(v));
	return 1;
}

/* Take one answer, waiting for the wakeup if needed. */
static void take_one(struct rl_resolve_inbox *in, int fd,
		     struct rl_resolve_answer *a)
{
	uint64_t until = ms_now() + 10000;

	while (!rl_resolve_take(in, a)) {
		assert_true(ms_now() < until);
		wait_wake(fd, 1000);
	}
}

static int wait_pending(struct rl_resolver *r, unsigned want, int timeout_ms)
{
	uint64_t until = ms_now() + timeout_ms;

	while (rl_resolver_pending(r) != want) {
		if (ms_now() >= until)
			return 0;
		usleep(5000);
	}
	return 1;
}

static int is_loopback(const struct rl_resolve_addr *a)
{
	if (a->u.sa.sa_family == AF_INET)
		return ntohl(a->u.in.sin_addr.s_addr) >> 24 == 127;
	if (a->u.sa.sa_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&a->u.in6.sin6_addr);
	return 0;
}

static uint16_t port_of(const struct rl_resolve_addr *a)
{
	return ntohs(a->u.sa.sa_family == AF_INET ? a->u.in.sin_port
						   : a->u.in6.sin6_port);
}

/* Answers go to the inbox that asked, with its tag, and wake its fd only. */
static void test_answers_reach_their_worker(void **state)
{
	struct rl_resolver *r = rl_resolver_new(2, 16, 0);
	int fa = eventfd(0, EFD_CLOEXEC), fb = eventfd(0, EFD_CLOEXEC);
	struct rl_resolve_inbox *a, *b;
	struct rl_resolve_req *q;
	struct rl_resolve_answer ans;
	char err[256];

	assert_non_null(r);
	a = rl_resolve_inbox_new(r, fa);
	b = rl_resolve_inbox_new(r, fb);
	assert_int_equal(rl_resolve_submit(a, "localhost", "8080", 0xa1, &q,
					   err, sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(b, "127.0.0.1", "9090", 0xb1, &q,
					   err, sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(a, "localhost", "8081", 0xa2, &q,
					   err, sizeof(err)), 0);

	take_one(b, fb, &ans);
	assert_int_equal(ans.tag, 0xb1);
	assert_int_equal(ans.gai_err, 0);
	assert_int_equal(ans.naddrs, 1);
	assert_int_equal(ans.addrs[0].u.sa.sa_family, AF_INET);
	assert_int_equal(ans.addrs[0].len, sizeof(struct sockaddr_in));
	assert_true(is_loopback(&ans.addrs[0]));
	assert_int_equal(port_of(&ans.addrs[0]), 9090);
	assert_string_equal(ans.host, "127.0.0.1");

	/* Both of a's, whatever order the threads finished in. */
	for (int i = 0; i < 2; i++) {
		take_one(a, fa, &ans);
		assert_true(ans.tag == 0xa1 || ans.tag == 0xa2);
		assert_int_equal(ans.gai_err, 0);
		assert_true(ans.naddrs >= 1);
		for (int k = 0; k < ans.naddrs; k++) {
			assert_true(is_loopback(&ans.addrs[k]));
			assert_int_equal(port_of(&ans.addrs[k]),
					 ans.tag == 0xa1 ? 8080 : 8081);
		}
	}
	/* Nothing else for either. */
	assert_int_equal(rl_resolve_take(a, &ans), 0);
	assert_int_equal(rl_resolve_take(b, &ans), 0);
	assert_int_equal(rl_resolver_pending(r), 0);

	rl_resolve_inbox_free(a);
	rl_resolve_inbox_free(b);
	rl_resolver_free(r, 1000);
	close(fa);
	close(fb);
}

static void test_failure_names_the_host(void **state)
{
	struct rl_resolver *r = rl_resolver_new(1, 4, 0);
	int fd = eventfd(0, EFD_CLOEXEC);
	struct rl_resolve_inbox *in = rl_resolve_inbox_new(r, fd);
	struct rl_resolve_answer ans;
	struct rl_resolve_req *q;
	char err[256], text[512];

	assert_int_equal(rl_resolve_submit(in, "no-such-host.invalid", "80", 7,
					   &q, err, sizeof(err)), 0);
	take_one(in, fd, &ans);
	assert_int_equal(ans.tag, 7);
	assert_int_not_equal(ans.gai_err, 0);
	assert_int_equal(ans.naddrs, 0);
	rl_resolve_strerror(&ans, text, sizeof(text));
	assert_non_null(strstr(text, "cannot resolve no-such-host.invalid: "));
	assert_non_null(strstr(text, gai_strerror(ans.gai_err)));

	rl_resolve_inbox_free(in);
	rl_resolver_free(r, 1000);
	close(fd);
}

/* At most max_pending requests; a refusal says why; cancels make room. */
static void test_pending_bound(void **state)
{
	/* One thread that sits 10 s in the test delay: nothing completes
	 * by itself during the test. */
	struct rl_resolver *r = rl_resolver_new(1, 2, 10000);
	int fd = eventfd(0, EFD_CLOEXEC);
	struct rl_resolve_inbox *in = rl_resolve_inbox_new(r, fd);
	struct rl_resolve_req *qa, *qb, *qc, *qx = NULL;
	char err[256] = "";
	char longname[300];
	uint64_t t0;

	assert_int_equal(rl_resolve_submit(in, "localhost", "1", 1, &qa, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(in, "localhost", "2", 2, &qb, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolver_pending(r), 2);
	assert_int_equal(rl_resolve_submit(in, "example.test", "3", 3, &qx,
					   err, sizeof(err)), -EAGAIN);
	assert_null(qx);
	assert_non_null(strstr(err, "example.test"));
	assert_non_null(strstr(err, "2 name resolutions pending"));

	/* b waits behind a (one thread): cancelled, it is freed at once. */
	rl_resolve_cancel(in, qb);
	assert_int_equal(rl_resolver_pending(r), 1);
	assert_int_equal(rl_resolve_submit(in, "localhost", "4", 4, &qc, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolver_pending(r), 2);

	/* a is in its thread's delay: the cancel cuts the delay short and
	 * the thread frees it; then c runs (and waits). */
	assert_true(wait_pending(r, 2, 100));
	rl_resolve_cancel(in, qa);
	assert_true(wait_pending(r, 1, 2000));

	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(rl_resolve_submit(in, longname, "5", 5, &qx, err,
					   sizeof(err)), -ENAMETOOLONG);
	assert_int_equal(rl_resolver_pending(r), 1);

	/* Freeing the inbox cancels c; freeing the resolver does not wait
	 * out the delay. */
	rl_resolve_inbox_free(in);
	assert_true(wait_pending(r, 0, 2000));
	t0 = ms_now();
	rl_resolver_free(r, 5000);
	assert_true(ms_now() - t0 < 1000);
	/* Nobody was answered. */
	assert_int_equal(wait_wake(fd, 0), 0);
	close(fd);
}

/* A cancelled request is never answered: not while it waits in a thread,
 * nor once its answer is already in the inbox. */
static void test_cancel_drops_late_answer(void **state)
{
	struct rl_resolver *r = rl_resolver_new(1, 8, 200);
	int fd = eventfd(0, EFD_CLOEXEC);
	struct rl_resolve_inbox *in = rl_resolve_inbox_new(r, fd);
	struct rl_resolve_answer ans;
	struct rl_resolve_req *q, *keep;
	char err[256];

	/* Cancelled during the lookup (the 200 ms delay). */
	assert_int_equal(rl_resolve_submit(in, "localhost", "80", 1, &q, err,
					   sizeof(err)), 0);
	usleep(50000);
	rl_resolve_cancel(in, q);
	assert_true(wait_pending(r, 0, 2000));
	assert_int_equal(wait_wake(fd, 300), 0);
	assert_int_equal(rl_resolve_take(in, &ans), 0);

	/* Answered, then cancelled before it was taken; one after it is
	 * still delivered. */
	assert_int_equal(rl_resolve_submit(in, "localhost", "81", 2, &q, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(in, "localhost", "82", 3, &keep,
					   err, sizeof(err)), 0);
	assert_true(wait_wake(fd, 5000));
	rl_resolve_cancel(in, q);
	take_one(in, fd, &ans);
	assert_int_equal(ans.tag, 3);
	assert_int_equal(rl_resolve_take(in, &ans), 0);
	assert_int_equal(rl_resolver_pending(r), 0);

	rl_resolve_inbox_free(in);
	rl_resolver_free(r, 1000);
	close(fd);
}

/* A worker that goes away with requests in every state: nothing reaches
 * its inbox or eventfd afterwards, and everything is freed. */
static void test_inbox_free_with_requests(void **state)
{
	struct rl_resolver *r = rl_resolver_new(1, 8, 150);
	int fd = eventfd(0, EFD_CLOEXEC), other = eventfd(0, EFD_CLOEXEC);
	struct rl_resolve_inbox *in = rl_resolve_inbox_new(r, fd);
	struct rl_resolve_inbox *in2 = rl_resolve_inbox_new(r, other);
	struct rl_resolve_answer ans;
	struct rl_resolve_req *q;
	char err[256];

	assert_int_equal(rl_resolve_submit(in, "localhost", "1", 1, &q, err,
					   sizeof(err)), 0);
	assert_true(wait_wake(fd, 5000));           /* 1 answered */
	assert_int_equal(rl_resolve_submit(in, "localhost", "2", 2, &q, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(in, "localhost", "3", 3, &q, err,
					   sizeof(err)), 0);
	assert_int_equal(rl_resolve_submit(in2, "localhost", "4", 4, &q, err,
					   sizeof(err)), 0);
	usleep(30000);                              /* 2 in the delay */
	assert_int_equal(rl_resolver_pending(r), 4);
	rl_resolve_inbox_free(in);
	close(fd);      /* as a worker's teardown does */
	/* The other worker's request still arrives. */
	take_one(in2, other, &ans);
	assert_int_equal(ans.tag, 4);
	assert_true(wait_pending(r, 0, 2000));

	rl_resolve_inbox_free(in2);
	rl_resolver_free(r, 1000);
	close(other);
}

/* What rl_conn_connect does at once and what it leaves to the resolver. */
static void test_connect_address_split(void **state)
{
	char host[RL_RESOLVE_HOST_MAX], port[8], err[256];
	struct rl_addr a;

	assert_int_equal(rl_addr_parse_numeric("tcp://127.0.0.1:80", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), 0);
	assert_int_equal(a.sa.ss_family, AF_INET);
	assert_int_equal(rl_addr_parse_numeric("[::1]:6379", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), 0);
	assert_int_equal(a.sa.ss_family, AF_INET6);
	assert_int_equal(rl_addr_parse_numeric("unix:/tmp/x.sock", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), 0);
	assert_int_equal(a.is_unix, 1);

	assert_int_equal(rl_addr_parse_numeric("localhost:8080", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), 1);
	assert_string_equal(host, "localhost");
	assert_string_equal(port, "8080");
	assert_int_equal(rl_addr_parse_numeric("tcp://db.example.test:5432", &a,
					       host, sizeof(host), port,
					       sizeof(port), err, sizeof(err)), 1);
	assert_string_equal(host, "db.example.test");
	assert_string_equal(port, "5432");

	assert_int_equal(rl_addr_parse_numeric("localhost", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "invalid address 'localhost'"));
	assert_int_equal(rl_addr_parse_numeric("localhost:99999", &a, host,
					       sizeof(host), port, sizeof(port),
					       err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_answers_reach_their_worker),
		cmocka_unit_test(test_failure_names_the_host),
		cmocka_unit_test(test_pending_bound),
		cmocka_unit_test(test_cancel_drops_late_answer),
		cmocka_unit_test(test_inbox_free_with_requests),
		cmocka_unit_test(test_connect_address_split),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
