/*
 * File operations inside the container's root (copy in/out, chunked): every path is
 * resolved with openat2(RESOLVE_IN_ROOT) against the running container's root
 * (/proc/<pid>/root, so its volumes are visible) or, when no container runs, against the
 * rootfs mount. Symlinks and ".." can therefore never leave the container's root.
 */
#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int root_fd(struct mb_agent *a)
{
	pid_t pid = mb_procs_main_pid(a);
	char p[64];
	if (pid > 0) {
		snprintf(p, sizeof(p), "/proc/%d/root", pid);
		int fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
	int fd = open(MB_ROOTFS_DIR, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int open_in(int root, const char *path, int flags, mode_t mode)
{
	struct open_how how = { .flags = (uint64_t)(flags | O_CLOEXEC),
		                .mode = (flags & O_CREAT) ? mode : 0,
		                .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
	long fd = syscall(SYS_openat2, root, path, &how, sizeof(how));
	return fd < 0 ? -errno : (int)fd;
}

/* Split path into its parent (opened as a directory fd) and its last component. */
static int open_parent(int root, const char *path, char *last, size_t lastlen)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	size_t n = strlen(tmp);
	while (n > 1 && tmp[n - 1] == '/')
		tmp[--n] = 0;
	char *slash = strrchr(tmp, '/');
	const char *name = slash ? slash + 1 : tmp;
	if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	snprintf(last, lastlen, "%s", name);
	if (slash == tmp)
		tmp[1] = 0;
	else if (slash)
		*slash = 0;
	else
		snprintf(tmp, sizeof(tmp), "/");
	return open_in(root, tmp, O_PATH | O_DIRECTORY, 0);
}

static const char *type_name(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "dir";
	if (S_ISLNK(m))
		return "symlink";
	if (S_ISCHR(m))
		return "char";
	if (S_ISBLK(m))
		return "block";
	if (S_ISFIFO(m))
		return "fifo";
	return "socket";
}

/* New reference (caller decrefs). */
static json_t *stat_json(const struct stat *st)
{
	return json_pack("{s:s,s:i,s:I,s:i,s:i,s:I}", "type", type_name(st->st_mode), "mode",
	                 (int)(st->st_mode & 07777), "size", (json_int_t)st->st_size, "uid",
	                 (int)st->st_uid, "gid", (int)st->st_gid, "mtime",
	                 (json_int_t)st->st_mtim.tv_sec);
}

static json_t *fs_stat(int root, json_t *req)
{
	const char *path = mbp_get_str(req, "path", "");
	bool follow = mbp_get_bool(req, "follow", 0);
	int fd = open_in(root, path, O_PATH | (follow ? 0 : O_NOFOLLOW), 0);
	if (fd < 0)
		return mbp_reply_error(fd, "%s: %s", path, strerror(-fd));
	struct stat st;
	if (fstatat(fd, "", &st, AT_EMPTY_PATH) < 0) {
		int e = errno;
		close(fd);
		return mbp_reply_error(-e, "stat %s: %s", path, strerror(e));
	}
	json_t *r = stat_json(&st);
	json_object_set_new(r, "ok", json_true());
	if (S_ISLNK(st.st_mode)) {
		char target[4096];
		ssize_t n = readlinkat(fd, "", target, sizeof(target) - 1);
		if (n >= 0) {
			target[n] = 0;
			json_object_set_new(r, "link", json_string(target));
		}
	}
	close(fd);
	return r;
}

/* On success *payload is malloc'ed (caller frees). Every fs_* handler returns a new
 * reply reference (caller decrefs) and borrows req. */
static json_t *fs_read(int root, json_t *req, uint8_t **payload, size_t *plen)
{
	const char *path = mbp_get_str(req, "path", "");
	int64_t off = mbp_get_int(req, "offset", 0);
	int64_t max = mbp_get_int(req, "max", MBP_MAX_CHUNK);
	if (max <= 0 || max > MBP_MAX_CHUNK)
		max = MBP_MAX_CHUNK;
	if (off < 0)
		return mbp_reply_error(-EINVAL, "negative offset");
	int fd = open_in(root, path, O_RDONLY, 0);
	if (fd < 0)
		return mbp_reply_error(fd, "%s: %s", path, strerror(-fd));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return mbp_reply_error(-EISDIR, "%s is not a regular file", path);
	}
	uint8_t *buf = malloc((size_t)max);
	if (!buf) {
		close(fd);
		return mbp_reply_error(-ENOMEM, "out of memory");
	}
	size_t got = 0;
	while (got < (size_t)max) {
		ssize_t r = pread(fd, buf + got, (size_t)max - got, off + (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			close(fd);
			return mbp_reply_error(-e, "read %s: %s", path, strerror(e));
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	*payload = buf;
	*plen = got;
	json_t *r = stat_json(&st);
	json_object_set_new(r, "ok", json_true());
	json_object_set_new(r, "offset", json_integer(off));
	json_object_set_new(r, "len", json_integer((json_int_t)got));
	json_object_set_new(r, "eof", json_boolean(got < (size_t)max));
	return r;
}

static json_t *fs_write(int root, json_t *req, const uint8_t *data, size_t len)
{
	const char *path = mbp_get_str(req, "path", "");
	int64_t off = mbp_get_int(req, "offset", 0);
	int mode = (int)mbp_get_int(req, "mode", 0644) & 07777;
	if (off < 0)
		return mbp_reply_error(-EINVAL, "negative offset");
	/* offset 0 starts the file afresh; later chunks (or resends) write in place. */
	int flags = O_WRONLY | O_NOFOLLOW | (off == 0 ? O_CREAT | O_TRUNC : 0);
	int fd = open_in(root, path, flags, (mode_t)mode);
	if (fd < 0)
		return mbp_reply_error(fd, "%s: %s", path, strerror(-fd));
	size_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(fd, data + done, len - done, off + (off_t)done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = errno;
			close(fd);
			return mbp_reply_error(-e, "write %s: %s", path, strerror(e));
		}
		done += (size_t)w;
	}
	if (off == 0) {
		fchmod(fd, (mode_t)mode);
		json_t *uid = json_object_get(req, "uid"), *gid = json_object_get(req, "gid");
		if (json_is_integer(uid) || json_is_integer(gid)) {
			if (fchown(fd,
			           json_is_integer(uid) ? (uid_t)json_integer_value(uid)
			                                : (uid_t)-1,
			           json_is_integer(gid) ? (gid_t)json_integer_value(gid)
			                                : (gid_t)-1) < 0) {
				int e = errno;
				close(fd);
				return mbp_reply_error(-e, "chown %s: %s", path, strerror(e));
			}
		}
	}
	close(fd);
	return json_pack("{s:b,s:I}", "ok", 1, "offset", (json_int_t)(off + (int64_t)len));
}

static int mkdir_one(int root, const char *path, mode_t mode)
{
	char last[256];
	int dfd = open_parent(root, path, last, sizeof(last));
	if (dfd < 0)
		return dfd;
	int rc = mkdirat(dfd, last, mode) < 0 ? -errno : 0;
	close(dfd);
	return rc;
}

static json_t *fs_mkdir(int root, json_t *req)
{
	const char *path = mbp_get_str(req, "path", "");
	mode_t mode = (mode_t)(mbp_get_int(req, "mode", 0755) & 07777);
	bool parents = mbp_get_bool(req, "parents", 0);
	if (!parents) {
		int rc = mkdir_one(root, path, mode);
		if (rc == -EEXIST) {
			/* a repeated request: fine if a directory is there */
			int fd = open_in(root, path, O_PATH | O_DIRECTORY, 0);
			if (fd >= 0) {
				close(fd);
				rc = 0;
			}
		}
		if (rc < 0)
			return mbp_reply_error(rc, "mkdir %s: %s", path, strerror(-rc));
		return mbp_reply_ok();
	}
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1;; p++) {
		if (*p == '/' || !*p) {
			char c = *p;
			*p = 0;
			int rc = mkdir_one(root, tmp, mode);
			if (rc < 0 && rc != -EEXIST)
				return mbp_reply_error(rc, "mkdir %s: %s", tmp, strerror(-rc));
			*p = c;
			if (!c)
				break;
		}
	}
	return mbp_reply_ok();
}

static json_t *fs_symlink(int root, json_t *req)
{
	const char *path = mbp_get_str(req, "path", "");
	const char *target = mbp_get_str(req, "target", NULL);
	if (!target)
		return mbp_reply_error(-EINVAL, "target missing");
	char last[256];
	int dfd = open_parent(root, path, last, sizeof(last));
	if (dfd < 0)
		return mbp_reply_error(dfd, "%s: %s", path, strerror(-dfd));
	int rc = symlinkat(target, dfd, last) < 0 ? -errno : 0;
	if (rc == -EEXIST && mbp_get_bool(req, "replace", 1)) {
		unlinkat(dfd, last, 0);
		rc = symlinkat(target, dfd, last) < 0 ? -errno : 0;
	}
	close(dfd);
	if (rc < 0)
		return mbp_reply_error(rc, "symlink %s: %s", path, strerror(-rc));
	return mbp_reply_ok();
}

static json_t *fs_readdir(int root, json_t *req)
{
	const char *path = mbp_get_str(req, "path", "/");
	int fd = open_in(root, path, O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0)
		return mbp_reply_error(fd, "%s: %s", path, strerror(-fd));
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return mbp_reply_error(-errno, "opendir %s", path);
	}
	json_t *arr = json_array();
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		json_t *o = stat_json(&st);
		json_object_set_new(o, "name", json_string(de->d_name));
		json_array_append_new(arr, o);
	}
	closedir(d);
	return json_pack("{s:b,s:o}", "ok", 1, "entries", arr);
}

json_t *mb_op_fs(struct mb_agent *a, const char *op, json_t *req, const uint8_t *data, size_t len,
                 uint8_t **payload, size_t *plen)
{
	const char *path = mbp_get_str(req, "path", NULL);
	if (!path || path[0] != '/')
		return mbp_reply_error(-EINVAL, "path must be absolute");
	int root = root_fd(a);
	if (root < 0)
		return mbp_reply_error(root, "no container root: %s", strerror(-root));
	json_t *r;
	if (strcmp(op, MBP_OP_FS_STAT) == 0)
		r = fs_stat(root, req);
	else if (strcmp(op, MBP_OP_FS_READ) == 0)
		r = fs_read(root, req, payload, plen);
	else if (strcmp(op, MBP_OP_FS_WRITE) == 0)
		r = fs_write(root, req, data, len);
	else if (strcmp(op, MBP_OP_FS_MKDIR) == 0)
		r = fs_mkdir(root, req);
	else if (strcmp(op, MBP_OP_FS_READDIR) == 0)
		r = fs_readdir(root, req);
	else if (strcmp(op, MBP_OP_FS_SYMLINK) == 0)
		r = fs_symlink(root, req);
	else
		r = mbp_reply_error(-ENOSYS, "unknown op '%s'", op);
	close(root);
	return r;
}
