/* Small helpers of the vm plugin: strings, files, /proc, pidfds. */
#include "vm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mbp_cpio.h"
#include "mbp_proto.h"

long vm_env_long(const char *name, long lo, long hi, long dflt)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return dflt;
	char *end;
	errno = 0;
	long n = strtol(v, &end, 10);
	if (*end || errno || n < lo || n > hi) {
		vm_log(MB_LOG_WARN, "vm: %s=%s ignored (not an integer in %ld..%ld), using %ld",
		       name, v, lo, hi, dflt);
		return dflt;
	}
	return n;
}

char *vm_strf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		abort();
	return s;
}

int vm_random_hex(char *out, size_t nbytes, mb_err *err)
{
	uint8_t buf[64];
	if (nbytes > sizeof(buf))
		return mb_err_set(err, -EINVAL, "random: too many bytes");
	mbp_err e = { 0 };
	if (mbp_random(buf, nbytes, &e) < 0)
		return mb_err_set(err, e.code, "%s", e.msg);
	mbp_hex_encode(buf, nbytes, out);
	explicit_bzero(buf, sizeof(buf));
	return 0;
}

int vm_mkdir_p(const char *path, unsigned mode)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int rmtree_at(int dfd, const char *name, dev_t dev)
{
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(dfd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
	if (st.st_dev != dev)
		return -EXDEV; /* a mount point inside: never cross it */
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		int r = rmtree_at(fd, de->d_name, dev);
		if (r < 0 && rc == 0)
			rc = r;
	}
	closedir(d);
	if (unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && rc == 0)
		rc = -errno;
	return rc;
}

int vm_rmtree(const char *path)
{
	if (!path || !*path || strcmp(path, "/") == 0 || path[0] != '/')
		return -EINVAL;
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	return rmtree_at(AT_FDCWD, path, st.st_dev);
}

char *vm_file_tail(const char *path, size_t max, size_t *len)
{
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		char *e = malloc(1);
		if (e)
			e[0] = '\0';
		return e;
	}
	struct stat st;
	off_t start = 0;
	if (fstat(fd, &st) == 0 && (size_t)st.st_size > max)
		start = st.st_size - (off_t)max;
	char *buf = malloc(max + 1);
	if (!buf) {
		close(fd);
		return NULL;
	}
	size_t n = 0;
	while (n < max) {
		ssize_t r = pread(fd, buf + n, max - n, start + (off_t)n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
}

void vm_utf8_sanitize(char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		size_t n = c < 0x80         ? 1
		           : (c >> 5) == 6  ? 2
		           : (c >> 4) == 14 ? 3
		           : (c >> 3) == 30 ? 4
		                            : 0;
		bool ok = n > 0 && i + n <= len;
		for (size_t k = 1; ok && k < n; k++)
			ok = ((unsigned char)s[i + k] >> 6) == 2;
		if (n == 2 && ok && c < 0xc2)
			ok = false;
		if (!ok || (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
			s[i] = (c == '\r') ? ' ' : '?';
			i++;
			continue;
		}
		i += n;
	}
}

char *vm_console_tail(const struct vm *v, size_t max_bytes)
{
	char *p = vm_path(v, "console.log");
	size_t len;
	char *t = vm_file_tail(p, max_bytes, &len);
	free(p);
	if (!t)
		return NULL;
	/* start at a line boundary when we cut the file */
	char *start = t;
	if (len == max_bytes) {
		char *nl = memchr(t, '\n', len);
		if (nl)
			start = nl + 1;
	}
	size_t n = len - (size_t)(start - t);
	memmove(t, start, n);
	t[n] = '\0';
	vm_utf8_sanitize(t, n);
	return t;
}

int vm_write_file(const char *path, const void *data, size_t len, unsigned mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, mode) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	const uint8_t *p = data;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		p += w;
		len -= (size_t)w;
	}
	if (close(fd) < 0)
		return -errno;
	return 0;
}

char *vm_read_file(const char *path, size_t max, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *buf = malloc(max + 1);
	size_t n = 0;
	while (buf && n < max) {
		ssize_t r = read(fd, buf + n, max - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (buf)
		buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

/* Fields of /proc/<pid>/stat after the ")" of comm; field 3 is index 0. */
static int stat_fields(pid_t pid, unsigned long long *out, int want_from, int count)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	size_t len;
	char *s = vm_read_file(path, 4096, &len);
	if (!s)
		return -1;
	char *p = strrchr(s, ')');
	if (!p) {
		free(s);
		return -1;
	}
	p += 2;
	int field = 3, got = 0;
	while (*p && got < count) {
		if (field >= want_from)
			out[got++] = strtoull(p, NULL, 10);
		char *sp = strchr(p, ' ');
		if (!sp)
			break;
		p = sp + 1;
		field++;
	}
	free(s);
	return got == count ? 0 : -1;
}

uint64_t vm_proc_starttime(pid_t pid)
{
	unsigned long long v[20];
	/* fields 3..22: starttime is field 22 */
	if (stat_fields(pid, v, 3, 20) < 0)
		return 0;
	return v[19];
}

int vm_proc_usage(pid_t pid, int64_t *rss_bytes, int64_t *cpu_usec)
{
	*rss_bytes = -1;
	*cpu_usec = -1;
	unsigned long long v[13];
	if (stat_fields(pid, v, 3, 13) == 0) {
		long hz = sysconf(_SC_CLK_TCK);
		/* utime = field 14, stime = field 15 */
		*cpu_usec = (int64_t)((v[11] + v[12]) * 1000000ULL / (unsigned long long)hz);
	}
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	char *s = vm_read_file(path, 8192, NULL);
	if (s) {
		char *r = strstr(s, "VmRSS:");
		if (r)
			*rss_bytes = strtoll(r + 6, NULL, 10) * 1024;
		free(s);
	}
	return *cpu_usec >= 0 ? 0 : -1;
}

bool vm_proc_cmdline_has(pid_t pid, const char *const needles[], int n)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	size_t len;
	char *s = vm_read_file(path, 64 * 1024, &len);
	if (!s)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0')
			s[i] = '\n';
	bool all = len > 0;
	for (int i = 0; all && i < n; i++)
		all = strstr(s, needles[i]) != NULL;
	free(s);
	return all;
}

int vm_pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int vm_pidfd_kill(int pidfd, pid_t pid, int sig)
{
	/* Through the pidfd when we have one: a recycled pid is never hit. */
	if (pidfd >= 0)
		return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
	return kill(pid, sig);
}

int vm_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in sa = { .sin_family = AF_INET,
		                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int port = -EADDRNOTAVAIL;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

double vm_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

uint64_t vm_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int vm_build_initrd(const char *base, const json_t *cfg, const char *out, mb_err *err)
{
	size_t blen = 0;
	char *b = vm_read_file(base, 256u << 20, &blen);
	if (!b)
		return mb_err_set(err, -errno ? -errno : -EIO, "reading %s: %s", base,
		                  strerror(errno));
	uint8_t *cpio = NULL;
	size_t clen = 0;
	mbp_err pe = { 0 };
	if (mbp_cpio_boot_config(cfg, &cpio, &clen, &pe) < 0) {
		free(b);
		return mb_err_set(err, pe.code, "boot config: %s", pe.msg);
	}
	/* 4-byte alignment for the appended archive (the images are padded to 512) */
	size_t pad = (4 - blen % 4) % 4;
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	int rc = 0;
	if (fd < 0) {
		rc = mb_err_set(err, -errno, "creating %s: %s", out, strerror(errno));
	} else {
		static const char zeros[4];
		struct {
			const void *p;
			size_t n;
		} parts[3] = { { b, blen }, { zeros, pad }, { cpio, clen } };
		if (fchmod(fd, 0600) < 0)
			rc = mb_err_set(err, -errno, "chmod %s: %s", out, strerror(errno));
		for (int i = 0; i < 3 && rc == 0; i++) {
			const uint8_t *p = parts[i].p;
			size_t n = parts[i].n;
			while (n && rc == 0) {
				ssize_t w = write(fd, p, n);
				if (w < 0 && errno == EINTR)
					continue;
				if (w < 0)
					rc = mb_err_set(err, -errno, "writing %s: %s", out,
					                strerror(errno));
				else {
					p += w;
					n -= (size_t)w;
				}
			}
		}
		if (close(fd) < 0 && rc == 0)
			rc = mb_err_set(err, -errno, "writing %s: %s", out, strerror(errno));
		if (rc < 0)
			unlink(out);
	}
	explicit_bzero(cpio, clen);
	free(cpio);
	free(b);
	return rc;
}
