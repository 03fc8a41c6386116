#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include "moonbox/plugin.h"

static void oom(void)
{
	static const char msg[] = "moonbox: out of memory\n";
	ssize_t r = write(2, msg, sizeof(msg) - 1);
	(void)r;
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		oom();
	return p;
}

char *xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);
	if (!p)
		oom();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		oom();
	return s;
}

uint64_t mb_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

double mb_wall_time(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void buf_reserve(buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
}

void buf_append(buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void buf_appendf(buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void buf_consume(buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
	} else {
		memmove(b->data, b->data + n, b->len - n);
		b->len -= n;
	}
	if (b->data)
		b->data[b->len] = '\0';
}

void buf_free(buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

char *buf_steal(buf *b)
{
	if (!b->data)
		buf_reserve(b, 0);
	b->data[b->len] = '\0';
	char *p = b->data;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

static const struct {
	int err;
	const char *code;
} codes[] = {
	{ ENOENT, "not_found" },
	{ EEXIST, "conflict" },
	{ EBUSY, "conflict" },
	{ EINVAL, "invalid" },
	{ ETIMEDOUT, "timeout" },
	{ EACCES, "denied" },
	{ EPERM, "denied" },
	{ ENOSPC, "no_space" },
	{ ECONNREFUSED, "unreachable" },
	{ EHOSTUNREACH, "unreachable" },
	{ ECANCELED, "cancelled" },
	{ EPIPE, "closed" },
	{ ECONNRESET, "closed" },
	{ ENOTSUP, "unsupported" },
	{ E2BIG, "too_large" },
	{ EMSGSIZE, "too_large" },
	{ EAGAIN, "busy" },
	{ EPROTO, "protocol" },
	{ EBADMSG, "corrupt" },
	{ ENOMEM, "no_memory" },
	{ ESRCH, "not_found" },
	{ EALREADY, "conflict" },
	{ EADDRINUSE, "conflict" },
	{ ENOEXEC, "invalid" },
	{ ENOTCONN, "unreachable" },
	{ ENOTTY, "invalid" },
	{ ERANGE, "invalid" },
	{ ESHUTDOWN, "closed" },
};

const char *mb_errcode(int code)
{
	int e = code < 0 ? -code : code;
	for (size_t i = 0; i < ARRAY_SIZE(codes); i++)
		if (codes[i].err == e)
			return codes[i].code;
	return "io";
}

int mb_errcode_parse(const char *code)
{
	for (size_t i = 0; i < ARRAY_SIZE(codes); i++)
		if (strcmp(codes[i].code, code) == 0)
			return -codes[i].err;
	return -EIO;
}

int mb_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
	char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0) {
		int e = -errno;
		free(tmp);
		return e;
	}
	if (fchmod(fd, mode) < 0)
		goto fail;
	const char *p = data;
	size_t left = len;
	while (left) {
		ssize_t w = write(fd, p, left);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		p += w;
		left -= (size_t)w;
	}
	if (fsync(fd) < 0)
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto fail;
	free(tmp);
	return 0;
fail:;
	int e = -errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return e;
}

int mb_read_file(const char *path, char **out, size_t *len, size_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	buf b = { 0 };
	char chunk[8192];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof(chunk));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;
			close(fd);
			buf_free(&b);
			return e;
		}
		if (r == 0)
			break;
		if (b.len + (size_t)r > max) {
			close(fd);
			buf_free(&b);
			return -EFBIG;
		}
		buf_append(&b, chunk, (size_t)r);
	}
	close(fd);
	if (len)
		*len = b.len;
	*out = buf_steal(&b);
	return 0;
}

int mb_mkdir_p(const char *path, unsigned mode)
{
	char *p = xstrdup(path);
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST) {
			int e = -errno;
			free(p);
			return e;
		}
		*s = '/';
	}
	int r = 0;
	if (mkdir(p, mode) < 0 && errno != EEXIST)
		r = -errno;
	free(p);
	return r;
}
