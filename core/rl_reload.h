/* rl_reload.h: hot reload: an all-or-nothing vote among workers, and --watch.
 *
 * A round starts in main (SIGHUP or a change seen by the watch).  Each
 * worker loads the new code into its own Lua state and votes; only when every
 * worker succeeded does any of them switch, so the process never runs half
 * old, half new code.  A worker that does not vote in time counts as a
 * failure.
 */
#ifndef RL_RELOAD_H
#define RL_RELOAD_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#define RL_RELOAD_TIMEOUT_MS 2000
#define RL_WATCH_DEBOUNCE_MS 100
#define RL_WATCH_MAX_DIRS 64

struct rl_reload {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t round;         /* rounds started */
	int nworkers;
	int votes;
	int failed;
	int decision;           /* -1 undecided, 0 keep old, 1 switch */
	uint64_t started_ns;
	uint64_t deadline_ns;
};

void rl_reload_init(struct rl_reload *r, int nworkers);
/* Start a round.  -EBUSY while the previous one is undecided. */
int rl_reload_begin(struct rl_reload *r);
/* From main's loop: a round past its deadline that no waiting worker
 * decided (every worker failed before voting) is rejected and logged.
 * Returns 1 while a round is undecided. */
int rl_reload_expire(struct rl_reload *r);

/* Watches the script's directory and its subdirectories for .lua changes. */
struct rl_watch {
	int fd;
	uint64_t due_ns;        /* reload when quiet until then; 0 = nothing */
	char dir[PATH_MAX];
};

int rl_watch_open(struct rl_watch *wt, const char *script, char *err,
		  size_t len);
/* Drain events; a .lua change (re)arms the debounce deadline. */
void rl_watch_read(struct rl_watch *wt, uint64_t now_ns);
void rl_watch_close(struct rl_watch *wt);

uint64_t rl_now_ns(void);

#endif
