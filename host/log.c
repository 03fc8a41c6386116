#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static int cur_level = MB_LOG_INFO;

void log_set_level(int level)
{
	cur_level = level;
}

int log_get_level(void)
{
	return cur_level;
}

void mb_logv(int level, const char *component, const char *fmt, va_list ap)
{
	static const char *names[] = { "error", "warn", "info", "debug" };
	if (level > cur_level)
		return;
	if (level < 0)
		level = 0;
	if (level > 3)
		level = 3;
	struct timespec ts;
	struct tm tm;
	char when[32], line[2048];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	int n = snprintf(line, sizeof(line), "%s.%03ldZ %-5s %s%s%s", when, ts.tv_nsec / 1000000,
	                 names[level], component ? "[" : "", component ? component : "",
	                 component ? "] " : "");
	if (n < 0)
		return;
	if ((size_t)n < sizeof(line))
		vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	size_t len = strlen(line);
	if (len && line[len - 1] == '\n')
		line[--len] = '\0';
	/* One fputs per line keeps lines whole even with worker threads logging. */
	fprintf(stderr, "%s\n", line);
}

void mb_log(int level, const char *component, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mb_logv(level, component, fmt, ap);
	va_end(ap);
}
