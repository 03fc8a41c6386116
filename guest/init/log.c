/* Logging to /dev/console: the host keeps the serial console as the VM's log file. */
#include "init.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int console_fd = 2;

void mb_log_open(void)
{
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd >= 0)
		console_fd = fd;
}

uint64_t mb_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void mb_log(const char *fmt, ...)
{
	char buf[1024];
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	int n = snprintf(buf, sizeof(buf), "moonbox-init[%5ld.%03ld]: ", (long)ts.tv_sec,
	                 ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(buf) - 2)
		len = sizeof(buf) - 2;
	buf[len++] = '\n';
	ssize_t w = write(console_fd, buf, len);
	(void)w;
}
