/* rl_worker.h: one worker thread: its ring, buffers, connections and loop. */
#ifndef RL_WORKER_H
#define RL_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>
#include <liburing.h>

#include "rl_api.h"
#include "rl_bufring.h"
#include "rl_conn.h"
#include "rl_listen.h"
#include "rl_options.h"
#include "rl_reload.h"
#include "rl_resolve.h"
#include "rl_sendq.h"

#define RL_IOV_MAX 64          /* pieces in one sendmsg */
#define RL_SEND_SLOTS 64       /* sendmsg headers per submit */
#define RL_RING_ENTRIES 4096

/* What all workers of the process share. */
struct rl_shared {
	const struct rl_config *cfg;
	const char *lua_dir;
	atomic_uint live_conns;     /* for --max-conns, process-wide */
	int nworkers;
	struct rl_addr addrs[RL_MAX_LISTEN];
	int naddrs;
	/* Unix sockets cannot be spread by SO_REUSEPORT: main binds each one
	 * once and every worker accepts on a dup of it. */
	int unix_fds[RL_MAX_LISTEN];
	rl_dict *dict;              /* --dict-memory, shared by all workers */
	struct rl_resolver *resolver; /* host names of outbound connects */
	struct rl_reload reload;
	/* --max-client-memory: what each worker's connections hold, and its
	 * largest holder, published once per poll (one line each). */
	struct {
		_Atomic uint64_t bytes;
		_Atomic uint64_t largest;
		char pad[48];
	} client_mem[1024];
};

struct rl_listener {
	int fd;
	uint8_t armed;
	uint8_t is_unix;
	uint8_t tls;                /* tls://: a TLS session per connection */
	uint64_t retry_at_ns;       /* after an accept error, try again then */
	uint64_t failing;           /* accept errors in a row, for the log */
};

struct rl_vec {
	void *p;
	uint32_t n;
	uint32_t head;
	uint32_t cap;
};

struct rl_send_slot {
	struct msghdr msg;
	struct iovec iov[RL_IOV_MAX];
};

struct rl_worker {
	int id;
	struct rl_shared *shared;
	const struct rl_config *cfg;
	struct io_uring ring;
	int ring_ready;
	struct rl_bufring br;
	struct rl_chunkpool pool;
	struct rl_conntab conns;
	struct rl_listener ls[RL_MAX_LISTEN];
	int nls;

	struct rl_vec held;         /* u32 buffer ids leased to this batch */
	struct rl_vec work;         /* u32 slots with something to do */
	struct rl_vec parked;       /* u64 (gen << 32 | slot) waiting for buffers */
	struct rl_vec closed;       /* u32 slots whose CLOSE is not yet out */
	struct rl_vec released;     /* u32 slots whose CLOSE Lua is handling */
	struct rl_vec drained;      /* u64 (gen << 32 | slot): DRAIN to report */
	uint32_t epoch;             /* polls so far: which batch is current */
	struct rl_vec holding;      /* u64 (gen << 32 | slot): connections with
				     * held ring buffers (rl_pause.c) */
	struct rl_vec again;        /* u64 (gen << 32 | slot): held bytes to
				     * offer again, EOF events held back */
	struct rl_vec resolving;    /* u64 (gen << 32 | slot): connects waiting
				     * for a name, checked for their timeout */
	uint64_t resolve_due_ns;    /* earliest of their deadlines, 0 = none */
	struct rl_resolve_inbox *inbox; /* answers to our names */
	char connect_err[256];      /* why the last rl_conn_connect failed */

	struct rl_vec tls_pending;  /* u64 (gen << 32 | slot): TLS plaintext
				     * left to read (rl_tls_io.c) */
	struct rl_vec tls_spare;    /* the list being read, swapped with it */
	struct rl_vec tls_hs;       /* u64: handshakes, oldest first, for
				     * their deadline */
	uint8_t tls_stage[16384];   /* small sends gathered into a record */

	struct rl_send_slot slots[RL_SEND_SLOTS];
	int nslots;

	int wake_fd;
	uint64_t wake_buf;
	atomic_int stop_req;
	atomic_int reload_req;
	int stopping;
	int aborted;
	uint64_t deadline_ns;
	uint64_t wake_at_ns;        /* earliest Lua timer, 0 = none */
	uint64_t client_bytes;      /* sum of the connections' mem_counted */
	int published_largest;      /* client_mem[id].largest is not 0 */
	uint64_t trim_at_ns;        /* connections closed: give free heap back
				     * to the kernel then, if idle; 0 = none */
	rl_clock clock;             /* read once per poll, after the wait */
	int reload_pending;
	int stop_pending;           /* RL_EV_STOP not yet reported */
	uint64_t voted_round;       /* last reload round this worker voted in */

	size_t max_unconsumed;
	rl_stats stats;
	rl_guard guard;             /* shared with the watchdog thread */
	struct rl_luamem *luamem;   /* the Lua state's allocator (rl_lua.c) */

	pthread_t thread;
	void *lua;                  /* lua_State of this worker */
	int setup_status;           /* 0 ok, else exit code */
	char setup_err[1024];
};

/* Ring, buffers, table and listeners; in the worker's own thread because
 * the ring is SINGLE_ISSUER.  0 or -errno with the reason in w->setup_err. */
int rl_worker_setup(struct rl_worker *w);
void rl_worker_teardown(struct rl_worker *w);
/* From another thread: stop (SIGTERM) or reload (SIGHUP). */
void rl_worker_request_stop(struct rl_worker *w);
void rl_worker_request_reload(struct rl_worker *w);
/* The C echo handler: the same core without Lua, as a baseline. */
int rl_worker_run_builtin_echo(struct rl_worker *w);

#endif
