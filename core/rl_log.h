/* rl_log.h: leveled logging to stderr, one line per message, safe from any thread. */
#ifndef RL_LOG_H
#define RL_LOG_H

#include "rl_api.h"

extern int rl_log_level;

void rl_logf(int level, int worker, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int rl_log_parse_level(const char *name);

#define rl_err(w, ...)   rl_logf(RL_LOG_ERROR, (w), __VA_ARGS__)
#define rl_warn(w, ...)  rl_logf(RL_LOG_WARN, (w), __VA_ARGS__)
#define rl_info(w, ...)  rl_logf(RL_LOG_INFO, (w), __VA_ARGS__)
#define rl_debug(w, ...) do { if (rl_log_level >= RL_LOG_DEBUG) \
	rl_logf(RL_LOG_DEBUG, (w), __VA_ARGS__); } while (0)

#endif
