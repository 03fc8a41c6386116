/*
 * Lua module `fs` (the io library is not available to scripts):
 *   fs.read(path [, max_bytes])        -> string | nil, msg, code
 *   fs.read_at(path, offset, len)      -> string (up to len bytes from offset; shorter at
 *                                         the end of the file, "" past it; len <= 16 MiB)
 *   fs.write(path, data [, {mode=0644}]) -> true  (atomic: temp file + fsync + rename)
 *   fs.append(path, data)              -> true
 *   fs.exists(path)                    -> boolean
 *   fs.stat(path)                      -> {type=, size=, mode=, mtime=} | nil, msg, code
 *   fs.mkdir(path [, mode])            -> true  (with parents)
 *   fs.remove(path)                    -> true  (a file or an empty directory)
 *   fs.rename(from, to)                -> true  (atomic within a file system)
 *   fs.list(dir)                       -> { name, ... } sorted
 *   fs.rmtree(path)                    -> true  (waits: runs on a worker; stays on one
 *                                                file system, never follows symlinks)
 *   fs.copy(src, dst)                  -> true  (waits: worker; keeps holes, tries reflink)
 *   fs.truncate(path, size)            -> true  (creates a sparse file of that size)
 *   fs.symlink(target, path)           -> true  (a symbolic link at path pointing to target)
 *   fs.readlink(path)                  -> target string
 * Small reads and writes run inline; anything that can take long runs on a worker.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bindings.h"
#include "task.h"
#include "work.h"

static int fail_errno(lua_State *L, const char *what, const char *path)
{
	int e = errno;
	return lua_failf(L, -e, "%s %s: %s", what, path, strerror(e));
}

static int l_read(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer max = luaL_optinteger(L, 2, 16 << 20);
	char *data;
	size_t len;
	int r = mb_read_file(path, &data, &len, (size_t)max);
	if (r < 0)
		return lua_failf(L, r, "read %s: %s", path,
		                 r == -EFBIG ? "file too large" : strerror(-r));
	lua_pushlstring(L, data, len);
	free(data);
	return 1;
}

/* A range of a file, for reading large files (uploads, archives) piece by piece. */
static int l_read_at(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer off = luaL_checkinteger(L, 2);
	lua_Integer want = luaL_checkinteger(L, 3);
	luaL_argcheck(L, off >= 0, 2, "offset must be >= 0");
	luaL_argcheck(L, want >= 0 && want <= (16 << 20), 3, "len must be 0..16 MiB");
	luaL_Buffer b; /* first: it may raise, and nothing is open yet */
	char *dst = luaL_buffinitsize(L, &b, (size_t)want);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail_errno(L, "read", path);
	size_t got = 0;
	while (got < (size_t)want) {
		ssize_t n = pread(fd, dst + got, (size_t)want - got, (off_t)off + (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			close(fd);
			return lua_failf(L, -e, "read %s: %s", path, strerror(e));
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	luaL_pushresultsize(&b, got);
	return 1;
}

static int l_write(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	unsigned mode = 0644;
	if (lua_istable(L, 3)) {
		lua_getfield(L, 3, "mode");
		mode = (unsigned)luaL_optinteger(L, -1, 0644);
		lua_pop(L, 1);
	}
	int r = mb_write_file_atomic(path, data, len, mode);
	if (r < 0)
		return lua_failf(L, r, "write %s: %s", path, strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_append(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return fail_errno(L, "append", path);
	ssize_t w = write(fd, data, len);
	int e = errno;
	close(fd);
	if (w != (ssize_t)len) {
		errno = w < 0 ? e : EIO;
		return fail_errno(L, "append", path);
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int l_exists(lua_State *L)
{
	struct stat st;
	lua_pushboolean(L, lstat(luaL_checkstring(L, 1), &st) == 0);
	return 1;
}

static int l_stat(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	if (lstat(path, &st) < 0)
		return fail_errno(L, "stat", path);
	lua_createtable(L, 0, 5);
	const char *type = S_ISREG(st.st_mode)    ? "file"
	                   : S_ISDIR(st.st_mode)  ? "directory"
	                   : S_ISLNK(st.st_mode)  ? "link"
	                   : S_ISSOCK(st.st_mode) ? "socket"
	                   : S_ISBLK(st.st_mode)  ? "block"
	                   : S_ISCHR(st.st_mode)  ? "char"
	                                          : "other";
	lua_pushstring(L, type);
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)st.st_size);
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, (lua_Integer)st.st_blocks * 512);
	lua_setfield(L, -2, "allocated");
	lua_pushinteger(L, st.st_mode & 07777);
	lua_setfield(L, -2, "mode");
	lua_pushnumber(L, (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec / 1e9);
	lua_setfield(L, -2, "mtime");
	return 1;
}

static int l_mkdir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	unsigned mode = (unsigned)luaL_optinteger(L, 2, 0755);
	int r = mb_mkdir_p(path, mode);
	if (r < 0)
		return lua_failf(L, r, "mkdir %s: %s", path, strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_remove(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	if (remove(path) < 0)
		return fail_errno(L, "remove", path);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_rename(lua_State *L)
{
	const char *from = luaL_checkstring(L, 1);
	const char *to = luaL_checkstring(L, 2);
	if (rename(from, to) < 0)
		return fail_errno(L, "rename", from);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_symlink(lua_State *L)
{
	const char *target = luaL_checkstring(L, 1);
	const char *path = luaL_checkstring(L, 2);
	if (symlink(target, path) < 0)
		return fail_errno(L, "symlink", path);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_readlink(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char target[PATH_MAX];
	ssize_t n = readlink(path, target, sizeof(target));
	if (n < 0)
		return fail_errno(L, "readlink", path);
	if ((size_t)n == sizeof(target))
		return lua_failf(L, -ENAMETOOLONG, "readlink %s: %s", path, strerror(ENAMETOOLONG));
	lua_pushlstring(L, target, (size_t)n);
	return 1;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int l_list(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	DIR *d = opendir(path);
	if (!d)
		return fail_errno(L, "list", path);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushstring(L, names[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		free(names[i]);
	}
	free(names);
	return 1;
}

static int l_truncate(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer size = luaL_checkinteger(L, 2);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return fail_errno(L, "truncate", path);
	int r = ftruncate(fd, (off_t)size);
	int e = errno;
	close(fd);
	if (r < 0) {
		errno = e;
		return fail_errno(L, "truncate", path);
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* --- worker jobs --- */

struct fsjob {
	mb_wait *w;
	bool cancelled;
	int op;
	char *a, *b;
	int result; /* 0 or -errno */
	char msg[256];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	int r = flag == FTW_DP ? rmdir(path) : unlink(path);
	return r < 0 && errno != ENOENT ? -errno : 0;
}

static int copy_file(const char *src, const char *dst, char *msg, size_t msglen)
{
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		snprintf(msg, msglen, "open %s: %s", src, strerror(errno));
		return -errno;
	}
	struct stat st;
	fstat(in, &st);
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0777);
	if (out < 0) {
		int e = errno;
		close(in);
		snprintf(msg, msglen, "open %s: %s", dst, strerror(e));
		return -e;
	}
	int r = 0;
	if (ioctl(out, FICLONE, in) == 0)
		goto done; /* reflink: instant */
	if (ftruncate(out, st.st_size) < 0) {
		r = -errno;
		goto done;
	}
	off_t pos = 0;
	while (pos < st.st_size) {
		off_t data = lseek(in, pos, SEEK_DATA);
		if (data < 0)
			break; /* the rest is a hole */
		off_t hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			hole = st.st_size;
		loff_t io = data, oo = data;
		while (io < hole) {
			ssize_t n = copy_file_range(in, &io, out, &oo, (size_t)(hole - io), 0);
			if (n < 0) {
				r = -errno;
				goto done;
			}
			if (n == 0)
				break;
		}
		pos = hole;
	}
	if (fsync(out) < 0)
		r = -errno;
done:
	if (r < 0)
		snprintf(msg, msglen, "copy %s -> %s: %s", src, dst, strerror(-r));
	close(in);
	if (close(out) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		unlink(dst);
	return r;
}

static void job_work(void *ud)
{
	struct fsjob *j = ud;
	if (j->op == 0) {
		int r = nftw(j->a, rm_one, 64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
		if (r != 0 && errno != ENOENT) {
			j->result = r < 0 ? r : -errno;
			snprintf(j->msg, sizeof(j->msg), "rmtree %s: %s", j->a,
			         strerror(-j->result));
		}
	} else {
		j->result = copy_file(j->a, j->b, j->msg, sizeof(j->msg));
	}
}

static void job_done(void *ud)
{
	struct fsjob *j = ud;
	if (!j->cancelled) {
		lua_State *T = rt_wait_thread(j->w);
		int n;
		if (j->result < 0) {
			n = lua_failf(T, j->result, "%s", j->msg);
		} else {
			lua_pushboolean(T, 1);
			n = 1;
		}
		rt_wait_done(j->w, n);
	}
	free(j->a);
	free(j->b);
	free(j);
}

static void job_cancel(void *ud)
{
	struct fsjob *j = ud; /* the worker still runs; job_done frees */
	j->cancelled = true;
}

static int start_job(lua_State *L, int op, const char *a, const char *b)
{
	rt_wait_check(L);
	struct fsjob *j = xcalloc(1, sizeof(*j));
	j->op = op;
	j->a = xstrdup(a);
	j->b = b ? xstrdup(b) : NULL;
	mb_err err = { 0 };
	if (work_submit(job_work, job_done, j, &err) < 0) {
		free(j->a);
		free(j->b);
		free(j);
		return lua_fail(L, &err);
	}
	j->w = rt_wait_begin(L, job_cancel, j);
	return rt_wait_yield(L, j->w, NULL, 0);
}

static int l_rmtree(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	if (!*path || strcmp(path, "/") == 0 || path[0] != '/')
		return luaL_argerror(L, 1, "refusing an empty, relative or root path");
	struct stat st;
	if (lstat(path, &st) < 0) {
		lua_pushboolean(L, 1); /* already gone */
		return 1;
	}
	return start_job(L, 0, path, NULL);
}

static int l_copy(lua_State *L)
{
	const char *src = luaL_checkstring(L, 1);
	const char *dst = luaL_checkstring(L, 2);
	return start_job(L, 1, src, dst);
}

static const luaL_Reg funcs[] = {
	{ "read", l_read },         { "read_at", l_read_at },
	{ "write", l_write },       { "append", l_append },
	{ "exists", l_exists },     { "stat", l_stat },
	{ "mkdir", l_mkdir },       { "remove", l_remove },
	{ "rename", l_rename },     { "list", l_list },
	{ "rmtree", l_rmtree },     { "copy", l_copy },
	{ "truncate", l_truncate }, { "symlink", l_symlink },
	{ "readlink", l_readlink }, { NULL, NULL },
};

int luaopen_mb_fs(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
