/* Small helpers shared by the core. Nothing here allocates except the x*() family,
 * which aborts on out-of-memory (an allocation failure in the daemon is not an
 * operational error we can meaningfully report). */
#ifndef MB_UTIL_H
#define MB_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ARRAY_SIZE(a)                   (sizeof(a) / sizeof((a)[0]))
#define MB_MIN(a, b)                    ((a) < (b) ? (a) : (b))
#define MB_MAX(a, b)                    ((a) > (b) ? (a) : (b))
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Returns a new allocation; caller frees. Abort on OOM. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a new string; caller frees. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Milliseconds on CLOCK_MONOTONIC. */
uint64_t mb_now_ms(void);
/* Seconds since the epoch with sub-second precision (CLOCK_REALTIME). */
double mb_wall_time(void);

/* Growable byte buffer. Zero-initialise to use; buf_free() releases. */
typedef struct buf {
	char *data;
	size_t len, cap;
} buf;
void buf_reserve(buf *b, size_t extra);
void buf_append(buf *b, const void *p, size_t n);
void buf_appendf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_consume(buf *b, size_t n); /* drop n bytes from the front */
void buf_free(buf *b);
/* Give the NUL-terminated contents away; caller frees; b is reset. */
char *buf_steal(buf *b);

/* Cleanup attributes for locals. */
static inline void freep(void *p)
{
	free(*(void **)p);
}
static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
#define _cleanup_free_  __attribute__((cleanup(freep)))
#define _cleanup_close_ __attribute__((cleanup(closep)))

/* Machine-readable code string for a negative errno ("not_found", "conflict", ...). */
const char *mb_errcode(int code);
/* Inverse: the negative errno for a code string, -EIO for unknown codes. */
int mb_errcode_parse(const char *code);

/* Write all of data to path atomically (temp file + fsync + rename), with mode. */
int mb_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* Read a whole (small) file; *out is NUL-terminated, caller frees. */
int mb_read_file(const char *path, char **out, size_t *len, size_t max);
/* mkdir -p with mode for the created components. */
int mb_mkdir_p(const char *path, unsigned mode);

#endif
