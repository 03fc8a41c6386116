/* Daemon logging to stderr: "2026-11-22T10:00:00.123Z level [component] message". */
#ifndef MB_LOG_H
#define MB_LOG_H

#include <stdarg.h>

#include "moonbox/plugin.h"

void log_set_level(int level);
int log_get_level(void);
/* level: an MB_LOG_* value; component may be NULL. */
void mb_logv(int level, const char *component, const char *fmt, va_list ap);
void mb_log(int level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(...) mb_log(MB_LOG_ERROR, NULL, __VA_ARGS__)
#define log_warn(...)  mb_log(MB_LOG_WARN, NULL, __VA_ARGS__)
#define log_info(...)  mb_log(MB_LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...) mb_log(MB_LOG_DEBUG, NULL, __VA_ARGS__)

#endif
