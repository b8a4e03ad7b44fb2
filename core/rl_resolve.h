/* rl_resolve.h: host names resolved by helper threads, answers handed back to the worker that asked.
 *
 * getaddrinfo() may block for seconds on a slow or unreachable DNS server,
 * and a worker must never block: the workers queue names here instead.  A
 * few helper threads per process (started as requests need them) take the
 * requests in order and resolve them; each answer is appended to the inbox
 * of the worker that asked, and that worker's wake eventfd, which its ring
 * always has a read on, is written so the answer is picked up at the next
 * poll.
 *
 * A request is the requester's until it is taken or cancelled: a cancel
 * frees a queued or answered request at once; one being resolved is freed
 * by its thread when the lookup returns, and its answer goes nowhere.
 */
#ifndef RL_RESOLVE_H
#define RL_RESOLVE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define RL_RESOLVE_THREADS 4          /* helper threads, at most */
#define RL_RESOLVE_MAX_PENDING 256    /* requests not yet taken, per process */
#define RL_RESOLVE_MAX_ADDRS 8        /* addresses kept from one answer */
#define RL_RESOLVE_HOST_MAX 256       /* a DNS name is at most 253 bytes */
#define RL_RESOLVE_JOIN_MS 200        /* how long exit waits for a lookup */

struct rl_resolver;
struct rl_resolve_inbox;
struct rl_resolve_req;

struct rl_resolve_addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} u;
	socklen_t len;
};

struct rl_resolve_answer {
	uint64_t tag;           /* the requester's, given at submission */
	int gai_err;            /* 0, or getaddrinfo's EAI_* code */
	int sys_err;            /* errno, when gai_err is EAI_SYSTEM */
	int naddrs;             /* IPv4 and IPv6 addresses, getaddrinfo's order */
	struct rl_resolve_addr addrs[RL_RESOLVE_MAX_ADDRS];
	char host[RL_RESOLVE_HOST_MAX];
};

/* Up to max_threads helper threads (started when requests wait and no
 * thread is free, with the CPU affinity of the calling thread, so create
 * it before workers pin themselves), at most max_pending requests in the
 * process.  delay_ms: a test knob, every lookup first waits that long
 * (interrupted by a cancel or by rl_resolver_free).  NULL when out of
 * memory. */
struct rl_resolver *rl_resolver_new(int max_threads, unsigned max_pending,
				    unsigned delay_ms);
/* Stop the threads: idle ones and ones in the test delay end at once;
 * waits up to join_ms for lookups in progress, then leaves those threads
 * detached (they free what they hold when getaddrinfo returns, or die with
 * the process).  Every inbox must have been freed first. */
void rl_resolver_free(struct rl_resolver *r, unsigned join_ms);
/* Requests not yet taken or freed, in the whole process. */
unsigned rl_resolver_pending(struct rl_resolver *r);

/* One worker's answers; wake_fd (an eventfd) is written for each answer.
 * NULL when out of memory. */
struct rl_resolve_inbox *rl_resolve_inbox_new(struct rl_resolver *r,
					      int wake_fd);
/* Cancel every request of the inbox and free it.  Afterwards no helper
 * thread touches the inbox or its wake_fd, so the worker may close it. */
void rl_resolve_inbox_free(struct rl_resolve_inbox *in);

/* Queue host (a name) and port (digits) for resolution; the answer carries
 * tag.  *req is the handle for rl_resolve_cancel, valid until the answer is
 * taken or the request cancelled.  0, or -errno with the reason in err:
 * -EAGAIN when max_pending requests are pending already, -ENAMETOOLONG,
 * -ENOMEM, or the error of starting the first helper thread. */
int rl_resolve_submit(struct rl_resolve_inbox *in, const char *host,
		      const char *port, uint64_t tag,
		      struct rl_resolve_req **req, char *err, size_t errlen);
/* The requester no longer wants the answer: it will not be delivered. */
void rl_resolve_cancel(struct rl_resolve_inbox *in, struct rl_resolve_req *req);
/* Move the oldest answer into *out and free its request.  1 if there was
 * one, 0 if the inbox is empty. */
int rl_resolve_take(struct rl_resolve_inbox *in, struct rl_resolve_answer *out);

/* "cannot resolve HOST: REASON" for a failed answer (gai_strerror, or
 * strerror for EAI_SYSTEM).  Returns what snprintf returns. */
int rl_resolve_strerror(const struct rl_resolve_answer *a, char *buf,
			size_t len);

#endif
