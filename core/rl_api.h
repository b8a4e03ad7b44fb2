/* rl_api.h: the structs and C functions LuaJIT reaches through the FFI.
 *
 * The Makefile runs this header through the preprocessor with RL_FFI_CDEF
 * defined and wraps the result into lua/ringline/cdef.lua, so every
 * declaration below is written once.  Keep it plain C that ffi.cdef parses:
 * no macros in declarations, no system headers inside the RL_FFI_CDEF part.
 */
#ifndef RL_API_H
#define RL_API_H

#ifndef RL_FFI_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

/* The shared dictionary's declarations join the cdef from their header. */
#include "rl_dict.h"
/* So do files sent from disk. */
#include "rl_file.h"

typedef struct rl_worker rl_worker;

/* What a worker hands Lua in each batch, in the order the kernel completed
 * the operations that caused them. */
enum rl_event_type {
	RL_EV_OPEN = 1,   /* a connection was accepted */
	RL_EV_DATA = 2,   /* bytes arrived, or (len 0) bytes held while paused
			   * are offered again after a resume; call
			   * rl_rx_begin before looking */
	RL_EV_CLOSE = 3,  /* the connection is gone; res is the reason */
	RL_EV_RELOAD = 4, /* the operator asked for a reload (SIGHUP) */
	RL_EV_CONNECT = 5,/* an outbound connection is established */
	RL_EV_EOF = 6,    /* the peer finished sending (eof events only);
			   * call rl_rx_eof before reporting it */
	RL_EV_DRAIN = 7,  /* unsent bytes fell to the low-water mark again */
	RL_EV_STOP = 8,   /* the worker is stopping (SIGTERM): tasks finish what
			   * they do on held connections, then close them */
};

typedef struct rl_event {
	uint32_t type;
	uint32_t conn;        /* connection slot */
	uint32_t gen;         /* slot generation, part of conn ids */
	int32_t bid;          /* DATA: ring buffer id, -1 = connection residue */
	const uint8_t *ptr;   /* DATA: first byte offered; CLOSE: the reason
			       * in words when len > 0 (valid until the next
			       * poll) */
	uint32_t len;         /* DATA: bytes offered; CLOSE: length of ptr */
	int32_t res;          /* CLOSE: 0 = peer closed, >0 RL_CLOSE_*, <0 -errno;
			       * OPEN: index of the listen address (0-based);
			       * DATA: RL_DATA_HELD for bytes held while the
			       * connection was paused, offered again */
} rl_event;

enum { RL_DATA_HELD = 1 };

/* Close reasons that are not an errno. */
enum rl_close_reason {
	RL_CLOSE_PEER = 0,       /* peer closed its side, all answers sent */
	RL_CLOSE_LOCAL = 1,      /* the handler called conn:close() */
	RL_CLOSE_ERROR = 2,      /* the handler raised a Lua error */
	RL_CLOSE_UNCONSUMED = 3, /* unconsumed bytes passed the limit */
	RL_CLOSE_SHUTDOWN = 4,   /* the process is stopping */
	RL_CLOSE_TIMEOUT = 5,    /* idle longer than the connection's timeout */
	RL_CLOSE_RESOLVE = 6,    /* the connect's host name did not resolve;
				  * the CLOSE event's text says which and why */
	RL_CLOSE_RUNAWAY = 7,    /* a handler ran past --handler-timeout */
	RL_CLOSE_NOMEM = 8,      /* a handler's allocation passed --lua-memory */
	RL_CLOSE_CLIENT_MEMORY = 9, /* among the largest holders of unsent and
				     * unconsumed bytes past --max-client-memory */
	RL_CLOSE_TLS = 10,       /* a TLS error (the text says which) */
};

/* A zero-copy view of received bytes.  C never builds one; the struct lives
 * here so the Lua side gets its layout from the same generated cdef. */
typedef struct rl_slice {
	const uint8_t *base;   /* not ptr/len: those names are methods */
	uint32_t size;
	int32_t bid;     /* ring buffer the bytes live in, -1 = not a ring buffer */
	uint32_t epoch;  /* handler call the slice belongs to */
} rl_slice;

/* Counters a worker keeps; read-only for Lua. */
typedef struct rl_stats {
	uint64_t accepted;
	uint64_t rejected;        /* closed at once: over --max-conns */
	uint64_t closed;
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t enobufs;         /* recv parked because the ring was empty */
	uint64_t paused;          /* recv stopped by send backpressure */
	uint64_t residue_copied;  /* bytes copied because a frame spanned buffers */
	uint64_t handler_errors;
	uint64_t reloads;
	uint64_t reloads_failed;
	uint64_t handler_timeouts; /* handler calls stopped by the watchdog */
	uint64_t lua_memory;       /* bytes the worker's Lua state holds */
	uint64_t lua_memory_errors;/* allocations refused: over --lua-memory */
	uint64_t accept_errors;    /* accepts that failed (EMFILE, ENFILE, ...) */
	uint64_t sq_full;          /* submissions forced early: the SQ was full */
	uint64_t cq_overflows;     /* polls that found the CQ overflowed */
	uint64_t cq_dropped;       /* completions the kernel lost (never expected) */
	uint64_t heap_trims;       /* idle malloc_trim calls after closes */
	uint64_t client_memory_closes; /* closed past --max-client-memory */
	uint64_t held_copied;      /* bytes held in ring buffers for paused
				    * connections, copied: the ring ran low */
	uint64_t file_bytes_direct; /* file bytes sent by sendfile from the
				     * page cache (not read into a buffer) */
	uint64_t tls_handshakes;   /* TLS handshakes completed ... */
	uint64_t tls_resumed;      /* ... of which resumed a session */
	uint64_t tls_handshake_failures; /* refused or broken (logged at debug) */
	uint64_t tls_handshake_timeouts; /* not done by --tls-handshake-timeout */
	uint64_t tls_errors;       /* sessions ended by a TLS error after it */
	/* Gauges, read when rl_worker_stats is called. */
	uint64_t conns;            /* open connections on this worker */
	uint64_t buffers_leased;   /* receive buffers out of the ring */
	uint64_t client_memory;    /* unsent + unconsumed bytes held here */
	uint64_t buffers_held;     /* ring buffers paused connections hold */
} rl_stats;

/* -- Event loop ---------------------------------------------------------- */

/* Submit queued sends, wait for completions and fill up to max events.
 * Leases the previous batch handed out are released first: a DATA event's
 * buffer is only valid until the next call.  Returns the number of events,
 * or -1 once the worker has finished shutting down. */
int rl_worker_poll(rl_worker *w, rl_event *ev, int max);

/* Turn a DATA event into the bytes to offer: the event's buffer alone, or the
 * connection's unconsumed residue followed by (part of) the buffer.
 * Returns 0, or -1 if the connection is closing and the data must be
 * skipped. */
int rl_rx_begin(rl_worker *w, rl_event *ev);

/* The handler consumed this many bytes of the offer in ev.  Returns 1 when
 * ev now holds a further offer for the same connection (call the handler
 * again), 0 when the event is done, -1 when the connection was closed for
 * exceeding its unconsumed-bytes limit. */
int rl_rx_consumed(rl_worker *w, rl_event *ev, uint32_t consumed);

/* Before a batch is dispatched: every DATA event among ev[0..n) whose bytes
 * begin with prefix (plen bytes) names a key, the bytes after the prefix up
 * to the first space or to the end of the line (LF or CR LF; a line not
 * yet complete names none); those keys are prefetched in the shared
 * dictionary (rl_dict_prefetch), so that the batch's lookups overlap their
 * cache misses.  A hint: reads only, changes nothing.  Returns the keys
 * found. */
int rl_worker_prefetch(rl_worker *w, const rl_event *ev, int n,
		       const char *prefix, size_t plen);

/* An EOF event is about to be reported.  Returns 0 to report it now, or -1
 * when the handler left bytes unconsumed while paused: the EOF is held back
 * and comes again as an EOF event once those bytes have been offered after
 * a resume. */
int rl_rx_eof(rl_worker *w, rl_event *ev);

/* -- Connections --------------------------------------------------------- */

/* Queue bytes for sending.  bid >= 0 means p lies in that ring buffer and is
 * sent without a copy, keeping the buffer leased until the send completes;
 * bid < 0 copies.  Returns 0 or -errno (-EPIPE: connection closing). */
int rl_conn_send(rl_worker *w, uint32_t conn, uint32_t gen, const void *p,
		 size_t len, int32_t bid);

/* Queue len bytes of a dictionary value from off: large values go out
 * without a copy (the blob stays referenced until sent), small ones are
 * copied with the rest of the reply. */
int rl_conn_send_blob(rl_worker *w, uint32_t conn, uint32_t gen, rl_blob *b,
		      size_t off, size_t len);

/* Close after queued sends finish (graceful), or at once if abort.
 * reason is an RL_CLOSE_* value reported in the CLOSE event. */
int rl_conn_close(rl_worker *w, uint32_t conn, uint32_t gen, int reason,
		  int abort);

/* How an outbound tls:// connection checks the server (NULL or zeroed
 * strings: the defaults).  The server's certificate chain is verified
 * against ca (a PEM file; NULL: the system's store) and its name against
 * sni, unless verify is 0. */
typedef struct rl_tls_client {
	const char *ca;       /* CA file; NULL: the system's trust store */
	const char *sni;      /* name sent and verified; NULL: the address's host */
	const char *alpn;     /* protocols offered, "h2,http/1.1"; NULL: none */
	const char *cert;     /* client certificate chain (PEM), with key */
	const char *key;
	int32_t verify;       /* 1: verify (the default when tls is NULL); 0: not */
} rl_tls_client;

/* Start an outbound connection to addr ("tcp://host:port", "unix:/path",
 * "tls://host:port": TLS, configured by tls, NULL for the defaults).
 * A numeric host is connected to at once; a host name is resolved by the
 * process's resolver threads (rl_resolve.h), never in the worker, and the
 * connect starts when the answer arrives, trying its addresses in order
 * until one connects.  timeout_ms (0: none) covers resolution and connects.
 * Returns the slot and sets *gen, or -errno with the reason in
 * rl_conn_connect_error.  Success arrives as a CONNECT event; failure or
 * timeout as a CLOSE event with the error (RL_CLOSE_RESOLVE and a text for
 * a name that did not resolve; RL_CLOSE_TLS and the reason for a failed
 * handshake, a certificate that did not verify).  For tls:// the CONNECT
 * event comes once the handshake is done.  Sends may be queued before it
 * connects. */
int rl_conn_connect(rl_worker *w, const char *addr, uint32_t timeout_ms,
		    uint32_t *gen, const struct rl_tls_client *tls);
/* Why this worker's last rl_conn_connect failed, in words. */
const char *rl_conn_connect_error(rl_worker *w);

/* Half-close: shut down our sending side once queued sends are out; reading
 * goes on. */
int rl_conn_shutdown(rl_worker *w, uint32_t conn, uint32_t gen);

/* Stop (1) or resume (0) reading from a connection, e.g. while the
 * connection its bytes are forwarded to is backed up.  Bytes the handler
 * leaves unconsumed while paused (or holds when it is paused) are offered
 * again at the next poll after the resume, before any newer bytes, without
 * waiting for the peer to send more; the peer's EOF (the EOF event, or the
 * close it causes) waits until then.  Bytes left unconsumed while not
 * paused are offered again only with the next bytes that arrive. */
int rl_conn_pause(rl_worker *w, uint32_t conn, uint32_t gen, int pause);

/* Ask for a DRAIN event once the connection's unsent bytes are at or below
 * --low-water (at once if they already are).  The core asks by itself when
 * a connection passes --high-water. */
int rl_conn_want_drain(rl_worker *w, uint32_t conn, uint32_t gen);

/* On (the default), a connection stops reading while its own unsent bytes
 * are over --high-water: a client that never reads cannot make the server
 * buffer without bound.  A proxy turns it off on both sides of a pair and
 * pauses the source instead: reading replies must go on while requests
 * queue, or proxy and a blocking upstream wait for each other forever. */
int rl_conn_set_backpressure(rl_worker *w, uint32_t conn, uint32_t gen,
			     int on);

/* With eof events on, the peer's EOF is reported as an EOF event and the
 * connection stays open for sending until the handler closes or shuts it
 * down; off (the default), EOF closes once every answer is sent. */
int rl_conn_set_eof_event(rl_worker *w, uint32_t conn, uint32_t gen, int on);

/* Held by a coroutine task (cosockets): on SIGTERM the core does not close
 * it when its sends drain but leaves it to the task, which closes it when
 * its work is done, until the drain deadline aborts what is left. */
int rl_conn_set_held(rl_worker *w, uint32_t conn, uint32_t gen, int on);

/* When the connection last received or finished sending bytes
 * (CLOCK_MONOTONIC ms, at the granularity of a loop iteration): what idle
 * timeouts measure. */
double rl_conn_last_active_ms(rl_worker *w, uint32_t conn, uint32_t gen);

/* Unsent bytes queued on a connection. */
size_t rl_conn_unsent(rl_worker *w, uint32_t conn, uint32_t gen);

/* 1 while the connection's unsent bytes are at most --high-water, 0 when
 * they are over it (or the connection is gone).  A handler that answers
 * many requests from one offer checks it as it goes and, at 0, returns the
 * bytes consumed so far: the rest is held, no further bytes of the
 * connection reach the handler, and when the queue has drained to
 * --low-water what it left is offered again, in order, before anything
 * newer.  Output is bounded where it is produced, not only between
 * calls. */
int rl_conn_writable(rl_worker *w, uint32_t conn, uint32_t gen);

/* Peer address as text ("127.0.0.1:5000", "[::1]:5000", "unix").
 * Returns the length or -errno. */
int rl_conn_peer(rl_worker *w, uint32_t conn, uint32_t gen, char *buf,
		 size_t len);

/* What rl_conn_tls_info tells about a TLS connection. */
enum rl_tls_info {
	RL_TLS_VERSION = 0,  /* "TLSv1.3" */
	RL_TLS_CIPHER = 1,   /* "TLS_AES_128_GCM_SHA256" */
	RL_TLS_ALPN = 2,     /* the protocol ALPN chose, "" for none */
	RL_TLS_SNI = 3,      /* the name the client asked for, "" for none */
	RL_TLS_RESUMED = 4,  /* "1" when the session was resumed, else "" */
	RL_TLS_PEER_SUBJECT = 5, /* the verified peer certificate's subject
				  * ("CN=a,O=b"), "" for none */
};

/* Copies the answer into buf (at most len bytes) and returns its length,
 * or -ENOTCONN when the connection is not TLS (or gone). */
int rl_conn_tls_info(rl_worker *w, uint32_t conn, uint32_t gen, int what,
		     char *buf, size_t len);

/* -- Time --------------------------------------------------------------- */

/* The next poll returns by this CLOCK_MONOTONIC time in nanoseconds (0: no
 * deadline), so Lua timers fire even when no I/O happens. */
void rl_worker_wake_at(rl_worker *w, uint64_t ns);

/* The worker's clock, read once per poll right after the wait: every
 * handler of one batch sees one time (as nginx's cached time and Redis's
 * cached mstime), and no handler pays a clock read per request.  Lua reads
 * the fields through the pointer; they change only inside rl_worker_poll. */
typedef struct rl_clock {
	uint64_t mono_ns;       /* CLOCK_MONOTONIC: timers, idle timeouts */
	int64_t unix_ms;        /* CLOCK_REALTIME in ms: expiry times */
} rl_clock;
const rl_clock *rl_worker_clock(rl_worker *w);

/* -- Runaway handlers ---------------------------------------------------- */

/* What the watchdog thread (rl_watchdog.h) and the worker's Lua code share.
 * The loop bumps seq before every handler call, timer callback and init;
 * rl_worker_poll bumps it after every wait and sets idle around it.  When
 * seq stays put for --handler-timeout while the worker is not idle, the
 * watchdog stores stop_seq and ran_ms, then stop.  Script code is compiled
 * with a check at every loop body and function entry (ringline.guard):
 * a one-byte ffi.fill into barrier (which keeps LuaJIT from hoisting the
 * next load out of a compiled loop) and a load of stop; a set stop raises
 * a Lua error there, in compiled code too. */
typedef struct rl_guard {
	int32_t stop;           /* set by the watchdog; cleared by Lua */
	uint8_t barrier[4];     /* the guard's store target: never read */
	uint32_t seq;           /* handler calls and waits so far (wraps) */
	uint32_t stop_seq;      /* the call the stop is meant for */
	uint32_t ran_ms;        /* how long that call had run */
	uint32_t limit_ms;      /* --handler-timeout (0: no watchdog) */
	int32_t idle;           /* 1 while the worker waits (not Lua's time) */
	int32_t armed;          /* 0 until the worker's Lua runs */
} rl_guard;

rl_guard *rl_worker_guard(rl_worker *w);

/* While on, the worker's Lua allocations may pass --lua-memory by a
 * reserve (an eighth of it plus 1 MiB).  A refused allocation turns it on
 * (the error path needs room to log and close); the loop turns it off
 * once it has collected the failed call's garbage. */
void rl_lua_memory_relax(rl_worker *w, int on);

/* -- Reload -------------------------------------------------------------- */

/* A RELOAD event asks every worker to load the new code into its own state
 * (compile, top level, init, reload(old)) and vote.  Blocks until all
 * workers voted or the vote timed out; returns 1 when every worker succeeded
 * and all switch to the new code, 0 when all keep the old code. */
int rl_reload_vote(rl_worker *w, int ok, uint64_t round);
/* The round in progress: read it before loading, pass it to the vote.  A
 * vote for an older round is not counted (the code loaded may predate the
 * newer round's change); the newer round's event arrives too. */
uint64_t rl_reload_round(rl_worker *w);

/* -- Shared dictionary ---------------------------------------------------- */

/* The process's dictionary (--dict-memory), shared by every worker. */
rl_dict *rl_shared_dict(rl_worker *w);
/* Wall clock in ms since the epoch, read now (rl_worker_clock has the
 * batch's cached value). */
int64_t rl_unix_ms(void);

/* -- Worker facts -------------------------------------------------------- */

int rl_worker_id(rl_worker *w);
int rl_worker_count(rl_worker *w);
rl_stats *rl_worker_stats(rl_worker *w);
/* Per-service limit on unconsumed bytes (0 keeps the option's value). */
void rl_worker_set_max_unconsumed(rl_worker *w, size_t bytes);
const char *rl_close_reason_text(int reason);
const char *rl_version(void);

/* -- Logging ------------------------------------------------------------- */

enum rl_log_level {
	RL_LOG_ERROR = 0,
	RL_LOG_WARN = 1,
	RL_LOG_INFO = 2,
	RL_LOG_DEBUG = 3,
};

int rl_log_enabled(int level);
void rl_log_msg(int level, int worker, const char *msg);

#endif
