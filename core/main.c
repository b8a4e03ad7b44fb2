/* main.c: the ringline executable: options, script check, workers, signals. */

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <stdatomic.h>

#include <luajit.h>

#include "rl_log.h"
#include "rl_lua.h"
#include "rl_options.h"
#include "rl_reload.h"
#include "rl_watchdog.h"
#include "rl_tls.h"
#include "rl_worker.h"

#include <openssl/opensslv.h>

#define RL_VERSION "0.1.0"
#define RL_DICT_DEFAULT_MEMORY (64u << 20)

const char *rl_version(void)
{
	return RL_VERSION;
}

/* Exit codes: 2 for what the operator can fix in the command or script. */
enum { EXIT_USAGE = 2 };

static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t setup_cond = PTHREAD_COND_INITIALIZER;
static int setup_done;
static pthread_t main_thread;
static atomic_int workers_exited;

static void report_setup(void)
{
	pthread_mutex_lock(&setup_lock);
	setup_done++;
	pthread_cond_broadcast(&setup_cond);  /* main and workers wait on it */
	pthread_mutex_unlock(&setup_lock);
}

static void pin_to_cpu(struct rl_worker *w)
{
	cpu_set_t set;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	CPU_ZERO(&set);
	CPU_SET(w->id % (ncpu > 0 ? ncpu : 1), &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
		rl_warn(w->id, "cannot pin to CPU %d", w->id);
}

static void *worker_main(void *arg)
{
	struct rl_worker *w = arg;
	char err[1024];
	int ret;

	if (w->cfg->pin)
		pin_to_cpu(w);
	ret = rl_worker_setup(w);
	if (ret) {
		w->setup_status = ret == -EADDRINUSE || ret == -EACCES ||
				  ret == -EADDRNOTAVAIL ? EXIT_USAGE : 1;
	} else if (!w->cfg->builtin &&
		   rl_lua_worker_start(w, err, sizeof(err))) {
		snprintf(w->setup_err, sizeof(w->setup_err), "%s", err);
		w->setup_status = EXIT_USAGE;
	}
	report_setup();
	if (w->setup_status)
		goto out;
	/* Wait until main has seen every worker come up (or told us to stop
	 * because one did not). */
	pthread_mutex_lock(&setup_lock);
	while (setup_done >= 0)
		pthread_cond_wait(&setup_cond, &setup_lock);
	pthread_mutex_unlock(&setup_lock);
	if (w->cfg->builtin) {
		rl_worker_run_builtin_echo(w);
	} else if (rl_lua_worker_run(w, err, sizeof(err))) {
		rl_err(w->id, "worker loop failed: %s", err);
		w->setup_status = 1;
	}
out:
	rl_lua_worker_close(w);
	rl_worker_teardown(w);
	/* Wake main's sigwait so it notices a worker that ended early. */
	atomic_fetch_add(&workers_exited, 1);
	pthread_kill(main_thread, SIGUSR1);
	return NULL;
}

/* RINGLINE_TEST_RESOLVE_DELAY_MS: a test knob, read once here.  Every host
 * name lookup of an outbound connect first waits this long in its resolver
 * thread, so tests can show that a slow resolution stalls nobody. */
static unsigned test_resolve_delay_ms(void)
{
	const char *s = getenv("RINGLINE_TEST_RESOLVE_DELAY_MS");
	unsigned long ms;
	char *end;

	if (!s || !*s)
		return 0;
	ms = strtoul(s, &end, 10);
	if (*end || ms > 600000) {
		rl_warn(-1, "RINGLINE_TEST_RESOLVE_DELAY_MS=%s ignored: not a "
			"number of ms up to 600000", s);
		return 0;
	}
	if (ms)
		rl_warn(-1, "RINGLINE_TEST_RESOLVE_DELAY_MS=%lu: every host "
			"name lookup waits that long first (test knob)", ms);
	return (unsigned)ms;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	/* Every connection is a descriptor; --max-conns means little under a
	 * soft limit of 1024. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int resolve_listen(struct rl_shared *sh, const struct rl_config *cfg,
			  char script_listen[][128], int nscript)
{
	char err[256];
	int n = cfg->nlisten ? cfg->nlisten : nscript;

	if (n == 0) {
		fprintf(stderr, "ringline: no listen address: give --listen or "
			"set listen in the script\n");
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const char *s = cfg->nlisten ? cfg->listen[i] : script_listen[i];

		if (rl_addr_parse(s, &sh->addrs[i], err, sizeof(err))) {
			fprintf(stderr, "ringline: %s\n", err);
			return -1;
		}
	}
	sh->naddrs = n;
	for (int i = 0; i < n; i++) {
		sh->unix_fds[i] = -1;
		if (rl_listen_probe(&sh->addrs[i], err, sizeof(err))) {
			fprintf(stderr, "ringline: %s\n", err);
			return -1;
		}
		if (!sh->addrs[i].is_unix)
			continue;
		sh->unix_fds[i] = rl_listen_open(&sh->addrs[i], err, sizeof(err));
		if (sh->unix_fds[i] < 0) {
			fprintf(stderr, "ringline: %s\n", err);
			return -1;
		}
	}
	return 0;
}

/* TLS contexts, when a listener is tls:// (all workers share them). */
static int load_tls(struct rl_shared *sh, const struct rl_config *cfg)
{
	struct rl_tls_server *srv;
	char err[512];
	int ntls = 0;

	for (int i = 0; i < sh->naddrs; i++)
		ntls += sh->addrs[i].tls;
	if (!ntls) {
		if (cfg->ntls_cert)
			fprintf(stderr, "ringline: --tls-cert given but no "
				"tls:// listener: the certificates are unused\n");
		return 0;
	}
	if (rl_tls_server_load(cfg, &srv, err, sizeof(err))) {
		fprintf(stderr, "ringline: %s\n", err);
		return EXIT_USAGE;
	}
	rl_tls_server_install(srv);
	rl_info(-1, "tls: %d listener(s), %d certificate(s), user-space "
		"records (OpenSSL %s; no kernel TLS here)", ntls,
		cfg->ntls_cert, OPENSSL_VERSION_STR);
	return 0;
}

/* SIGHUP: the certificate and key files again, all or nothing: any that
 * fails to load leaves the contexts in use serving.  New handshakes get the
 * new ones; sessions already begun keep theirs. */
static void reload_tls(struct rl_shared *sh)
{
	struct rl_tls_server *srv;
	char err[512];
	int ntls = 0;

	for (int i = 0; i < sh->naddrs; i++)
		ntls += sh->addrs[i].tls;
	if (!ntls)
		return;
	if (rl_tls_server_load(sh->cfg, &srv, err, sizeof(err))) {
		rl_err(-1, "SIGHUP: certificates not reloaded, the old ones "
		       "still serve: %s", err);
		return;
	}
	rl_tls_server_install(srv);
	rl_info(-1, "SIGHUP: tls: %d certificate(s) reloaded",
		sh->cfg->ntls_cert);
}

/* Unix listeners were bound by main: close them and remove their files. */
static void close_unix_listeners(struct rl_shared *sh)
{
	for (int i = 0; i < sh->naddrs; i++) {
		if (sh->unix_fds[i] < 0)
			continue;
		close(sh->unix_fds[i]);
		unlink(((struct sockaddr_un *)&sh->addrs[i].sa)->sun_path);
	}
}

static int wait_for_setup(struct rl_worker *ws, int n)
{
	int status = 0;

	pthread_mutex_lock(&setup_lock);
	while (setup_done < n)
		pthread_cond_wait(&setup_cond, &setup_lock);
	for (int i = 0; i < n; i++) {
		if (ws[i].setup_status && !status) {
			status = ws[i].setup_status;
			fprintf(stderr, "ringline: worker %d: %s\n", i,
				ws[i].setup_err);
		}
	}
	setup_done = -1;     /* releases the workers */
	pthread_cond_broadcast(&setup_cond);
	pthread_mutex_unlock(&setup_lock);
	return status;
}

static int all_exited(int n)
{
	return atomic_load(&workers_exited) == n;
}

static void start_reload(struct rl_shared *sh, struct rl_worker *ws, int n,
			 int *pending)
{
	/* One round at a time; a request during a round runs after it. */
	if (rl_reload_begin(&sh->reload) == -EBUSY) {
		*pending = 1;
		return;
	}
	*pending = 0;
	rl_info(-1, "reload %llu: loading %s in %d worker(s)",
		(unsigned long long)sh->reload.round, sh->cfg->script, n);
	for (int i = 0; i < n; i++)
		rl_worker_request_reload(&ws[i]);
}

/* Main's loop: signals (through a signalfd; blocked in every thread) and
 * the --watch inotify descriptor.  Returns when the process should stop. */
static void serve_signals(struct rl_shared *sh, struct rl_worker *ws, int n,
			  const sigset_t *set, struct rl_watch *wt)
{
	struct pollfd pfd[2];
	struct signalfd_siginfo si;
	int sfd = signalfd(-1, set, SFD_CLOEXEC), pending = 0;

	if (sfd < 0) {
		rl_err(-1, "signalfd: %s", strerror(errno));
		return;
	}
	pfd[0] = (struct pollfd){ .fd = sfd, .events = POLLIN };
	pfd[1] = (struct pollfd){ .fd = wt ? wt->fd : -1, .events = POLLIN };
	for (;;) {
		uint64_t now = rl_now_ns();
		int timeout = -1;

		if (wt && wt->due_ns)
			timeout = wt->due_ns > now ?
				(int)((wt->due_ns - now) / 1000000) + 1 : 0;
		if (pending && (timeout < 0 || timeout > 50))
			timeout = 50;
		/* A round nobody can decide ends at its deadline. */
		if (rl_reload_expire(&sh->reload) && (timeout < 0 || timeout > 250))
			timeout = 250;
		if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
			break;
		now = rl_now_ns();
		if (wt && (pfd[1].revents & POLLIN))
			rl_watch_read(wt, now);
		if (wt && wt->due_ns && now >= wt->due_ns) {
			wt->due_ns = 0;
			rl_info(-1, "--watch: change seen under %s", wt->dir);
			start_reload(sh, ws, n, &pending);
		} else if (pending) {
			start_reload(sh, ws, n, &pending);
		}
		if (!(pfd[0].revents & POLLIN) ||
		    read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			rl_info(-1, "%s: stopping", si.ssi_signo == SIGTERM ?
				"SIGTERM" : "SIGINT");
			for (int i = 0; i < n; i++)
				rl_worker_request_stop(&ws[i]);
			break;
		}
		if (si.ssi_signo == SIGHUP) {
			reload_tls(sh);
			if (sh->cfg->builtin)
				rl_warn(-1, "SIGHUP: --builtin has no script to reload");
			else
				start_reload(sh, ws, n, &pending);
			continue;
		}
		/* SIGUSR1: a worker ended on its own; stop the rest. */
		for (int i = 0; i < n; i++)
			if (ws[i].setup_status) {
				for (int j = 0; j < n; j++)
					if (!ws[j].setup_status)
						rl_worker_request_stop(&ws[j]);
				goto out;
			}
		if (all_exited(n))
			break;
	}
out:
	close(sfd);
}

/* Join the workers, which were all asked to stop (or ended on their own).
 * One that is not done when the drain timeout plus the handler timeout
 * (and a second) have passed is stuck in a C function, where the watchdog
 * cannot stop it: it must not keep SIGTERM from ending the process. */
static int join_workers(struct rl_worker *ws, int n, const struct rl_config *cfg)
{
	uint64_t limit_ms = (uint64_t)cfg->drain_timeout_ms +
			    cfg->handler_timeout_ms + 1000;
	struct timespec until;
	int status = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)(limit_ms / 1000);
	until.tv_nsec += (long)(limit_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	for (int i = 0; i < n; i++) {
		if (!cfg->handler_timeout_ms)
			pthread_join(ws[i].thread, NULL);
		else if (pthread_timedjoin_np(ws[i].thread, NULL, &until)) {
			rl_err(i, "did not stop within %llu ms of the stop "
			       "request (a handler stuck outside script code); "
			       "exiting without it", (unsigned long long)limit_ms);
			fflush(stderr);
			_exit(1);
		}
		if (ws[i].setup_status && !status)
			status = ws[i].setup_status;
	}
	return status;
}

int main(int argc, char **argv)
{
	static struct rl_config cfg;
	static struct rl_shared sh;
	static struct rl_watchdog watchdog;
	static rl_guard check_guard;
	char err[1024], lua_dir[PATH_MAX], script_listen[RL_MAX_LISTEN][128];
	int nscript = 0, ret, status = 0;
	size_t script_dict = 0;
	struct rl_worker *ws;
	struct rl_watch watch = { .fd = -1 };
	sigset_t set;

	rl_options_defaults(&cfg, (int)sysconf(_SC_NPROCESSORS_ONLN));
	ret = rl_options_parse(&cfg, argc, argv, err, sizeof(err));
	if (ret < 0) {
		fprintf(stderr, "ringline: %s\n", err);
		return EXIT_USAGE;
	}
	if (ret == RL_OPT_HELP) {
		fputs(rl_options_usage(), stdout);
		return 0;
	}
	if (ret == RL_OPT_VERSION) {
		printf("ringline %s (%s)\n", RL_VERSION, LUAJIT_VERSION);
		return 0;
	}
	rl_log_level = cfg.log_level;
	raise_nofile();

	ws = calloc(cfg.workers, sizeof(*ws));
	if (!ws) {
		fprintf(stderr, "ringline: out of memory\n");
		return 1;
	}
	/* Before the script check: its top level runs under the watchdog
	 * too.  Workers' guards wait unarmed until their Lua starts. */
	rl_watchdog_add(&watchdog, &check_guard, -1);
	for (int i = 0; i < cfg.workers; i++)
		rl_watchdog_add(&watchdog, &ws[i].guard, i);
	if (!cfg.builtin && (ret = rl_watchdog_start(&watchdog,
						     cfg.handler_timeout_ms))) {
		fprintf(stderr, "ringline: cannot start the watchdog: %s\n",
			strerror(-ret));
		return 1;
	}

	if (!cfg.builtin) {
		if (rl_lua_find_dir(lua_dir, sizeof(lua_dir))) {
			fprintf(stderr, "ringline: cannot find the ringline Lua "
				"modules next to the executable (set "
				"RINGLINE_LUA_DIR)\n");
			return EXIT_USAGE;
		}
		if (access(cfg.script, R_OK)) {
			fprintf(stderr, "ringline: cannot read script '%s': %s\n",
				cfg.script, strerror(errno));
			return EXIT_USAGE;
		}
		if (rl_lua_check(lua_dir, cfg.script, script_listen,
				 RL_MAX_LISTEN, &nscript, &script_dict,
				 cfg.lua_memory, &check_guard, err,
				 sizeof(err))) {
			fprintf(stderr, "ringline: %s\n", err);
			return EXIT_USAGE;
		}
		if (cfg.check_only) {
			printf("%s: ok\n", cfg.script);
			return 0;
		}
		sh.lua_dir = lua_dir;
	}
	if (resolve_listen(&sh, &cfg, script_listen, nscript))
		return EXIT_USAGE;
	if ((ret = load_tls(&sh, &cfg)))
		return ret;
	sh.cfg = &cfg;
	sh.nworkers = cfg.workers;
	rl_reload_init(&sh.reload, cfg.workers);
	/* Allocated as it fills: the limit costs nothing until used. */
	sh.dict = rl_dict_new(cfg.dict_memory ? cfg.dict_memory :
			      script_dict ? script_dict : RL_DICT_DEFAULT_MEMORY, 64);
	if (!sh.dict) {
		fprintf(stderr, "ringline: cannot create the shared dictionary\n");
		return 1;
	}
	/* Before the workers: helper threads take main's CPU affinity, not
	 * that of a pinned worker. */
	sh.resolver = rl_resolver_new(RL_RESOLVE_THREADS, RL_RESOLVE_MAX_PENDING,
				      test_resolve_delay_ms());
	if (!sh.resolver) {
		fprintf(stderr, "ringline: out of memory for the resolver\n");
		return 1;
	}
	if (cfg.watch && rl_watch_open(&watch, cfg.script, err, sizeof(err))) {
		fprintf(stderr, "ringline: %s\n", err);
		return EXIT_USAGE;
	}

	/* Workers inherit this mask: only main takes signals, by sigwait. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	main_thread = pthread_self();

	for (int i = 0; i < cfg.workers; i++) {
		ws[i].id = i;
		ws[i].shared = &sh;
		ws[i].cfg = &cfg;
		ws[i].wake_fd = -1;
		if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i])) {
			fprintf(stderr, "ringline: cannot start worker %d\n", i);
			return 1;
		}
	}
	status = wait_for_setup(ws, cfg.workers);
	if (status) {
		/* A worker that failed has torn down already. */
		for (int i = 0; i < cfg.workers; i++)
			if (!ws[i].setup_status)
				rl_worker_request_stop(&ws[i]);
	} else {
		rl_info(-1, "serving %s with %d worker(s), %u x %u byte buffers each",
			cfg.builtin ? "builtin echo" : cfg.script, cfg.workers,
			cfg.buffers, cfg.buffer_size);
		serve_signals(&sh, ws, cfg.workers, &set,
			      cfg.watch ? &watch : NULL);
	}
	ret = join_workers(ws, cfg.workers, &cfg);
	if (ret && !status)
		status = ret;
	rl_watchdog_stop(&watchdog);
	free(ws);
	/* Workers freed their inboxes: only lookups still running in
	 * getaddrinfo may outlast this, detached. */
	rl_resolver_free(sh.resolver, RL_RESOLVE_JOIN_MS);
	close_unix_listeners(&sh);
	rl_dict_free(sh.dict);
	rl_watch_close(&watch);
	if (!status)
		rl_info(-1, "stopped");
	return status;
}
