/* rl_log.c: leveled logging to stderr, one line per message, safe from any thread. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rl_log.h"

int rl_log_level = RL_LOG_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int rl_log_parse_level(const char *name)
{
	for (int i = 0; i <= RL_LOG_DEBUG; i++)
		if (strcmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

int rl_log_enabled(int level)
{
	return level <= rl_log_level;
}

void rl_logf(int level, int worker, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n;

	if (level > rl_log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld ringline[%d] ",
		     tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
		     (int)getpid());
	if (worker >= 0)
		n += snprintf(line + n, sizeof(line) - n, "w%d ", worker);
	n += snprintf(line + n, sizeof(line) - n, "%s: ", level_names[level]);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so lines from workers never interleave. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void rl_log_msg(int level, int worker, const char *msg)
{
	if (level < RL_LOG_ERROR)
		level = RL_LOG_ERROR;
	if (level > RL_LOG_DEBUG)
		level = RL_LOG_DEBUG;
	rl_logf(level, worker, "%s", msg);
}
