#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void mbr_freep(void *p)
{
	free(*(void **)p);
}

int mbr_buf_append(mbr_buf *b, const void *p, size_t n)
{
	if (b->limit && b->len + n > b->limit)
		return -EFBIG;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *d = realloc(b->data, cap);
		if (!d)
			return -ENOMEM;
		b->data = d;
		b->cap = cap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

void mbr_buf_free(mbr_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

char *mbr_buf_steal(mbr_buf *b, size_t *len)
{
	char *d = b->data;
	if (!d)
		d = calloc(1, 1);
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return d;
}

char *mbr_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

char *mbr_strndup(const char *s, size_t n)
{
	return strndup(s, n);
}

char *mbr_sprintf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : s;
}

bool mbr_starts_with_ci(const char *s, const char *prefix)
{
	return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static uint64_t str_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static int strset_grow(mbr_strset *s)
{
	size_t cap = s->cap ? s->cap * 2 : 64;
	char **slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < s->cap; i++) {
		if (!s->slots[i])
			continue;
		size_t j = str_hash(s->slots[i]) & (cap - 1);
		while (slots[j])
			j = (j + 1) & (cap - 1);
		slots[j] = s->slots[i];
	}
	free(s->slots);
	s->slots = slots;
	s->cap = cap;
	return 0;
}

int mbr_strset_add(mbr_strset *s, const char *key)
{
	if (mbr_strset_has(s, key))
		return 0;
	if ((s->n + 1) * 2 > s->cap && strset_grow(s) < 0)
		return -ENOMEM;
	char *k = strdup(key);
	if (!k)
		return -ENOMEM;
	size_t j = str_hash(key) & (s->cap - 1);
	while (s->slots[j])
		j = (j + 1) & (s->cap - 1);
	s->slots[j] = k;
	s->n++;
	return 1;
}

bool mbr_strset_has(const mbr_strset *s, const char *key)
{
	if (!s->cap)
		return false;
	size_t j = str_hash(key) & (s->cap - 1);
	while (s->slots[j]) {
		if (strcmp(s->slots[j], key) == 0)
			return true;
		j = (j + 1) & (s->cap - 1);
	}
	return false;
}

void mbr_strset_free(mbr_strset *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->slots[i]);
	free(s->slots);
	memset(s, 0, sizeof(*s));
}

int mbr_mkdir_p(const char *path, mode_t mode, mb_err *err)
{
	_cleanup_free_ char *p = strdup(path);
	if (!p)
		return mb_err_set(err, -ENOMEM, "out of memory");
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, mode) < 0 && errno != EEXIST)
				return mb_err_set(err, -errno, "mkdir %s: %s", p, strerror(errno));
			*s = c;
			if (!c)
				break;
		}
	}
	return 0;
}

static int empty_dir_fd(int fd, bool (*keep)(const char *, void *), void *ud, mb_err *err)
{
	int dfd = dup(fd);
	if (dfd < 0)
		return mb_err_set(err, -errno, "dup: %s", strerror(errno));
	DIR *d = fdopendir(dfd);
	if (!d) {
		int e = errno;
		close(dfd);
		return mb_err_set(err, -e, "fdopendir: %s", strerror(e));
	}
	rewinddir(d);
	int r = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (keep && keep(de->d_name, ud))
			continue;
		r = mbr_rm_tree_at(fd, de->d_name, err);
		if (r < 0)
			break;
	}
	closedir(d);
	return r;
}

int mbr_empty_dir_at(int dirfd, bool (*keep)(const char *name, void *ud), void *ud, mb_err *err)
{
	return empty_dir_fd(dirfd, keep, ud, err);
}

int mbr_rm_tree_at(int dirfd, const char *name, mb_err *err)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return mb_err_set(err, -errno, "stat %s: %s", name, strerror(errno));
	}
	if (S_ISDIR(st.st_mode)) {
		int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return mb_err_set(err, -errno, "open %s: %s", name, strerror(errno));
		int r = empty_dir_fd(fd, NULL, NULL, err);
		close(fd);
		if (r < 0)
			return r;
		if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
			return mb_err_set(err, -errno, "rmdir %s: %s", name, strerror(errno));
		return 0;
	}
	if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
		return mb_err_set(err, -errno, "unlink %s: %s", name, strerror(errno));
	return 0;
}

int mbr_rm_tree(const char *path, mb_err *err)
{
	return mbr_rm_tree_at(AT_FDCWD, path, err);
}

int mbr_read_file(const char *path, size_t limit, char **out, size_t *len, mb_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mb_err_set(err, -errno, "open %s: %s", path, strerror(errno));
	mbr_buf b = { .limit = limit };
	char tmp[65536];
	int r = 0;
	for (;;) {
		ssize_t n = read(fd, tmp, sizeof(tmp));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = mb_err_set(err, -errno, "read %s: %s", path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if ((r = mbr_buf_append(&b, tmp, (size_t)n)) < 0) {
			mb_err_set(err, r, "read %s: %s", path,
			           r == -EFBIG ? "file too large" : "out of memory");
			break;
		}
	}
	close(fd);
	if (r < 0) {
		mbr_buf_free(&b);
		return r;
	}
	*out = mbr_buf_steal(&b, len);
	return *out ? 0 : mb_err_set(err, -ENOMEM, "out of memory");
}

int mbr_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, mb_err *err)
{
	static atomic_uint seq; /* unique per call: threads of one process may race here */
	_cleanup_free_ char *tmp =
	    mbr_sprintf("%s.tmp.%d.%u", path, (int)getpid(), atomic_fetch_add(&seq, 1));
	if (!tmp)
		return mb_err_set(err, -ENOMEM, "out of memory");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return mb_err_set(err, -errno, "create %s: %s", tmp, strerror(errno));
	const char *p = data;
	size_t left = len;
	while (left) {
		ssize_t n = write(fd, p, left);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			close(fd);
			unlink(tmp);
			return mb_err_set(err, -e, "write %s: %s", tmp, strerror(e));
		}
		p += n;
		left -= (size_t)n;
	}
	if (fchmod(fd, mode) < 0 || fsync(fd) < 0) {
		int e = errno;
		close(fd);
		unlink(tmp);
		return mb_err_set(err, -e, "sync %s: %s", tmp, strerror(e));
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		int e = errno;
		unlink(tmp);
		return mb_err_set(err, -e, "rename %s: %s", path, strerror(e));
	}
	return 0;
}

uint64_t mbr_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
