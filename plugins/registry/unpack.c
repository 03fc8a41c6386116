#include "unpack.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "util.h"

#define WH_PREFIX ".wh."
#define WH_OPAQUE ".wh..wh..opq"
#define WH_META   ".wh..wh."
#define MAX_DEPTH 256

struct dirtime {
	char *path;
	struct timespec ts[2];
};

struct ux {
	int rootfd;
	const struct mbr_unpack_opts *opts;
	struct mbr_unpack_stats *st;
	mbr_strset layer_paths; /* paths (and their ancestors) written by this layer */
	struct dirtime *dts;
	size_t ndts, capdts;
};

static int resolve(int rootfd, const char *path, uint64_t flags)
{
	struct open_how how = {
		.flags = flags | O_CLOEXEC,
		.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
	};
	long r = syscall(SYS_openat2, rootfd, *path ? path : ".", &how, sizeof(how));
	return (int)r;
}

int mbr_clean_path(const char *in, char *out, size_t cap, mb_err *err)
{
	size_t n = 0;
	int depth = 0;
	const char *p = in;
	if (!p)
		return mb_err_set(err, -EINVAL, "entry without a name");
	if (strlen(in) >= PATH_MAX)
		return mb_err_set(err, -ENAMETOOLONG, "entry name longer than %d bytes", PATH_MAX);
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		size_t l = strcspn(p, "/");
		if (l == 1 && p[0] == '.') {
			p += l;
			continue;
		}
		if (l == 2 && p[0] == '.' && p[1] == '.')
			return mb_err_set(err, -EINVAL, "unsafe path \"%.200s\": contains '..'",
			                  in);
		if (l > NAME_MAX)
			return mb_err_set(err, -ENAMETOOLONG,
			                  "path component longer than %d bytes in \"%.100s...\"",
			                  NAME_MAX, in);
		if (++depth > MAX_DEPTH)
			return mb_err_set(err, -ENAMETOOLONG, "path deeper than %d levels",
			                  MAX_DEPTH);
		if (n + l + 2 > cap)
			return mb_err_set(err, -ENAMETOOLONG, "entry name too long");
		if (n)
			out[n++] = '/';
		memcpy(out + n, p, l);
		n += l;
		p += l;
	}
	out[n] = '\0';
	return 0;
}

static int note_path(struct ux *u, const char *path)
{
	/* record the path and each ancestor, so an opaque whiteout spares them */
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (;;) {
		int r = mbr_strset_add(&u->layer_paths, tmp);
		if (r < 0)
			return r;
		if (r == 0)
			return 0; /* present: so are its ancestors */
		char *s = strrchr(tmp, '/');
		if (!s)
			return 0;
		*s = '\0';
	}
}

static void split(const char *path, char *parent, const char **base)
{
	const char *s = strrchr(path, '/');
	if (s) {
		memcpy(parent, path, (size_t)(s - path));
		parent[s - path] = '\0';
		*base = s + 1;
	} else {
		parent[0] = '\0';
		*base = path;
	}
}

static int errno_msg(mb_err *err, int e, const char *what, const char *path)
{
	if (e == ENOSPC || e == EDQUOT)
		return mb_err_set(err, -ENOSPC, "no space left on device writing %.200s", path);
	return mb_err_set(err, -e, "%s %.200s: %s", what, path, strerror(e));
}

/* Open (creating missing directories) the directory `parent` inside the root, as an
 * O_PATH fd. Symlinks on the way resolve inside the root. */
static int open_parent(struct ux *u, const char *parent, bool create, mb_err *err)
{
	int fd = resolve(u->rootfd, parent, O_PATH | O_DIRECTORY);
	if (fd >= 0 || errno != ENOENT || !create) {
		if (fd < 0)
			return errno_msg(err, errno, "open directory", parent);
		return fd;
	}
	char prefix[PATH_MAX];
	size_t plen = strlen(parent);
	for (size_t i = 0; i <= plen; i++) {
		if (parent[i] != '/' && parent[i] != '\0')
			continue;
		memcpy(prefix, parent, i);
		prefix[i] = '\0';
		fd = resolve(u->rootfd, prefix, O_PATH | O_DIRECTORY);
		if (fd >= 0) {
			if (i < plen)
				close(fd);
			continue;
		}
		if (errno != ENOENT)
			return errno_msg(err, errno, "open directory", prefix);
		char up[PATH_MAX];
		const char *name;
		split(prefix, up, &name);
		int pfd = resolve(u->rootfd, up, O_PATH | O_DIRECTORY);
		if (pfd < 0)
			return errno_msg(err, errno, "open directory", up);
		if (mkdirat(pfd, name, 0755) < 0 && errno != EEXIST) {
			int e = errno;
			close(pfd);
			return errno_msg(err, e, "mkdir", prefix);
		}
		close(pfd);
		fd = resolve(u->rootfd, prefix, O_PATH | O_DIRECTORY);
		if (fd < 0) /* e.g. a dangling symlink occupies the name */
			return errno_msg(err, errno, "open directory", prefix);
		if (i < plen)
			close(fd);
	}
	return fd;
}

static bool xattr_allowed(const char *name)
{
	if (!strncmp(name, "user.overlay.", 13))
		return false;
	return !strncmp(name, "user.", 5) || !strcmp(name, "security.capability");
}

static int apply_meta_fd(struct ux *u, int fd, struct archive_entry *e, const char *path,
                         bool is_dir, mb_err *err)
{
	if (u->opts->keep_owners &&
	    fchown(fd, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e)) < 0 &&
	    errno != EPERM)
		return errno_msg(err, errno, "chown", path);
	if (fchmod(fd, archive_entry_perm(e) & 07777) < 0)
		return errno_msg(err, errno, "chmod", path);
	if (u->opts->xattrs) {
		const char *name;
		const void *val;
		size_t sz;
		archive_entry_xattr_reset(e);
		while (archive_entry_xattr_next(e, &name, &val, &sz) == ARCHIVE_OK) {
			if (!xattr_allowed(name) || fsetxattr(fd, name, val, sz, 0) < 0)
				u->st->skipped++;
		}
	}
	if (!is_dir) {
		struct timespec ts[2] = {
			{ archive_entry_atime(e), archive_entry_atime_nsec(e) },
			{ archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
		};
		if (!archive_entry_atime_is_set(e))
			ts[0] = ts[1];
		futimens(fd, ts);
	}
	return 0;
}

static int defer_dirtime(struct ux *u, const char *path, struct archive_entry *e)
{
	if (u->ndts == u->capdts) {
		size_t cap = u->capdts ? u->capdts * 2 : 64;
		struct dirtime *d = realloc(u->dts, cap * sizeof(*d));
		if (!d)
			return -ENOMEM;
		u->dts = d;
		u->capdts = cap;
	}
	struct dirtime *d = &u->dts[u->ndts];
	d->path = strdup(path);
	if (!d->path)
		return -ENOMEM;
	d->ts[1] = (struct timespec){ archive_entry_mtime(e), archive_entry_mtime_nsec(e) };
	d->ts[0] = d->ts[1];
	u->ndts++;
	return 0;
}

/* Remove whatever occupies parentfd/base unless keep_dir and it is a directory. */
static int clear_slot(int parentfd, const char *base, bool keep_dir, const char *path, bool *is_dir,
                      mb_err *err)
{
	struct stat st;
	*is_dir = false;
	if (fstatat(parentfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return errno_msg(err, errno, "stat", path);
	}
	if (S_ISDIR(st.st_mode)) {
		if (keep_dir) {
			*is_dir = true;
			return 0;
		}
		return mbr_rm_tree_at(parentfd, base, err);
	}
	if (unlinkat(parentfd, base, 0) < 0 && errno != ENOENT)
		return errno_msg(err, errno, "unlink", path);
	return 0;
}

static int write_file(struct ux *u, struct archive *a, struct archive_entry *e, int parentfd,
                      const char *base, const char *path, mb_err *err)
{
	int fd = openat(parentfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno_msg(err, errno, "create", path);
	const void *buf;
	size_t size;
	la_int64_t off;
	int r;
	while ((r = archive_read_data_block(a, &buf, &size, &off)) == ARCHIVE_OK) {
		const char *p = buf;
		while (size) {
			ssize_t n = pwrite(fd, p, size, off);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				int er = errno;
				close(fd);
				return errno_msg(err, er, "write", path);
			}
			p += n;
			size -= (size_t)n;
			off += n;
			u->st->bytes += (uint64_t)n;
		}
	}
	if (r != ARCHIVE_EOF) {
		close(fd);
		return mb_err_set(err, -EBADMSG, "corrupt layer data in %.200s: %s", path,
		                  archive_error_string(a) ? archive_error_string(a) : "read error");
	}
	if (ftruncate(fd, archive_entry_size(e)) < 0) {
		int er = errno;
		close(fd);
		return errno_msg(err, er, "truncate", path);
	}
	r = apply_meta_fd(u, fd, e, path, false, err);
	close(fd);
	u->st->files++;
	return r;
}

static bool keep_in_opaque(const char *name, void *ud)
{
	const char **ctx = ud; /* [0] = dir path, [1] = (struct ux *) */
	struct ux *u = (struct ux *)ctx[1];
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s%s%s", ctx[0], *ctx[0] ? "/" : "", name);
	return mbr_strset_has(&u->layer_paths, p);
}

static int do_whiteout(struct ux *u, const char *parent, const char *base, const char *path,
                       mb_err *err)
{
	u->st->whiteouts++;
	if (!strcmp(base, WH_OPAQUE)) {
		int dfd = resolve(u->rootfd, parent, O_RDONLY | O_DIRECTORY);
		if (dfd < 0) {
			if (errno == ENOENT)
				return 0;
			return errno_msg(err, errno, "open", parent);
		}
		const void *ctx[2] = { parent, u };
		int r = mbr_empty_dir_at(dfd, keep_in_opaque, ctx, err);
		close(dfd);
		return r;
	}
	if (!strncmp(base, WH_META, strlen(WH_META))) {
		u->st->skipped++; /* other AUFS metadata (.wh..wh.plnk, ...) */
		return 0;
	}
	const char *victim = base + strlen(WH_PREFIX);
	if (!*victim || !strcmp(victim, ".") || !strcmp(victim, ".."))
		return mb_err_set(err, -EINVAL, "unsafe whiteout \"%.200s\"", path);
	char vpath[PATH_MAX];
	snprintf(vpath, sizeof(vpath), "%s%s%s", parent, *parent ? "/" : "", victim);
	if (mbr_strset_has(&u->layer_paths, vpath))
		return 0; /* whiteouts hide lower layers only */
	int pfd = resolve(u->rootfd, parent, O_PATH | O_DIRECTORY);
	if (pfd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		return errno_msg(err, errno, "open", parent);
	}
	int r = mbr_rm_tree_at(pfd, victim, err);
	close(pfd);
	return r;
}

static int do_entry(struct ux *u, struct archive *a, struct archive_entry *e, mb_err *err)
{
	char path[PATH_MAX], parent[PATH_MAX];
	const char *base;
	int r = mbr_clean_path(archive_entry_pathname(e), path, sizeof(path), err);
	if (r < 0)
		return r;
	mode_t type = archive_entry_filetype(e);
	const char *hl = archive_entry_hardlink(e);
	u->st->entries++;

	if (!path[0]) { /* the root itself ("./") */
		if (type != AE_IFDIR || hl)
			return mb_err_set(err, -EINVAL,
			                  "layer replaces the root with a non-directory");
		u->st->dirs++;
		return apply_meta_fd(u, u->rootfd, e, "/", true, err);
	}
	split(path, parent, &base);
	if (!strncmp(base, WH_PREFIX, strlen(WH_PREFIX)))
		return do_whiteout(u, parent, base, path, err);

	if (!hl && (type == AE_IFCHR || type == AE_IFBLK) && !u->opts->allow_devices) {
		u->st->skipped++;
		return 0;
	}
	if (!hl && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK && type != AE_IFIFO &&
	    type != AE_IFCHR && type != AE_IFBLK) {
		u->st->skipped++;
		return 0;
	}
	if ((r = note_path(u, path)) < 0)
		return mb_err_set(err, r, "out of memory");

	if (hl) { /* a link to itself is a no-op (and must not unlink the file first) */
		char tp[PATH_MAX];
		if ((r = mbr_clean_path(hl, tp, sizeof(tp), err)) < 0)
			return r;
		if (!strcmp(tp, path))
			return 0;
	}
	int pfd = open_parent(u, parent, true, err);
	if (pfd < 0)
		return pfd;
	bool is_dir;
	r = clear_slot(pfd, base, !hl && type == AE_IFDIR, path, &is_dir, err);
	if (r < 0)
		goto out;

	if (hl) {
		char tpath[PATH_MAX], tparent[PATH_MAX];
		const char *tbase;
		if ((r = mbr_clean_path(hl, tpath, sizeof(tpath), err)) < 0)
			goto out;
		if (!tpath[0]) {
			r = mb_err_set(err, -EINVAL, "hard link %.200s to the root", path);
			goto out;
		}
		split(tpath, tparent, &tbase);
		int tfd = resolve(u->rootfd, tparent, O_PATH | O_DIRECTORY);
		if (tfd < 0) {
			r = mb_err_set(err, -EINVAL, "hard link %.200s: target %.200s not found",
			               path, tpath);
			goto out;
		}
		struct stat st;
		if (fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode)) {
			close(tfd);
			r = mb_err_set(err, -EINVAL,
			               "hard link %.200s: target %.200s missing or a directory",
			               path, tpath);
			goto out;
		}
		/* flags 0: never follows a symlink at the target; the inode is inside root */
		if (linkat(tfd, tbase, pfd, base, 0) < 0)
			r = errno_msg(err, errno, "link", path);
		close(tfd);
		u->st->hardlinks++;
		goto out;
	}

	switch (type) {
	case AE_IFREG:
		r = write_file(u, a, e, pfd, base, path, err);
		break;
	case AE_IFDIR: {
		if (!is_dir && mkdirat(pfd, base, 0700) < 0) {
			r = errno_msg(err, errno, "mkdir", path);
			break;
		}
		int dfd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0) {
			r = errno_msg(err, errno, "open", path);
			break;
		}
		r = apply_meta_fd(u, dfd, e, path, true, err);
		close(dfd);
		if (r == 0 && defer_dirtime(u, path, e) < 0)
			r = mb_err_set(err, -ENOMEM, "out of memory");
		u->st->dirs++;
		break;
	}
	case AE_IFLNK: {
		const char *target = archive_entry_symlink(e);
		if (!target || !*target || strlen(target) >= PATH_MAX) {
			r = mb_err_set(err, -EINVAL, "symlink %.200s has a bad target", path);
			break;
		}
		if (symlinkat(target, pfd, base) < 0) {
			r = errno_msg(err, errno, "symlink", path);
			break;
		}
		if (u->opts->keep_owners)
			fchownat(pfd, base, (uid_t)archive_entry_uid(e),
			         (gid_t)archive_entry_gid(e), AT_SYMLINK_NOFOLLOW);
		struct timespec ts[2] = { { archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
			                  { archive_entry_mtime(e), archive_entry_mtime_nsec(e) } };
		utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW);
		u->st->symlinks++;
		break;
	}
	case AE_IFIFO:
	case AE_IFCHR:
	case AE_IFBLK: {
		mode_t m = (type == AE_IFIFO   ? S_IFIFO
		            : type == AE_IFCHR ? S_IFCHR
		                               : S_IFBLK) |
		           0600;
		dev_t dev = type == AE_IFIFO
		                ? 0
		                : makedev(archive_entry_rdevmajor(e), archive_entry_rdevminor(e));
		if (mknodat(pfd, base, m, dev) < 0) {
			if (errno == EPERM && type != AE_IFIFO) {
				u->st->skipped++;
				break;
			}
			r = errno_msg(err, errno, "mknod", path);
			break;
		}
		int nfd = openat(pfd, base, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (nfd >= 0) {
			/* chown/chmod through the O_PATH fd via fchownat(AT_EMPTY_PATH) */
			if (u->opts->keep_owners)
				fchownat(nfd, "", (uid_t)archive_entry_uid(e),
				         (gid_t)archive_entry_gid(e), AT_EMPTY_PATH);
			close(nfd);
		}
		fchmodat(pfd, base, archive_entry_perm(e) & 07777, 0);
		break;
	}
	}
out:
	close(pfd);
	return r;
}

static void apply_dirtimes(struct ux *u)
{
	for (size_t i = u->ndts; i-- > 0;) {
		int fd = resolve(u->rootfd, u->dts[i].path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
		if (fd >= 0) {
			futimens(fd, u->dts[i].ts);
			close(fd);
		}
		free(u->dts[i].path);
	}
	u->ndts = 0;
}

int mbr_unpack_fd(int rootfd, int layer_fd, const struct mbr_unpack_opts *opts,
                  struct mbr_unpack_stats *stats, mb_err *err)
{
	struct mbr_unpack_stats local = { 0 };
	struct mbr_unpack_opts defopts = { .keep_owners = true, .xattrs = true };
	struct ux u = {
		.rootfd = rootfd,
		.opts = opts ? opts : &defopts,
		.st = stats ? stats : &local,
	};
	memset(u.st, 0, sizeof(*u.st));
	/* Refuse to run without openat2: there is no safe fallback. */
	int probe = resolve(rootfd, "", O_PATH | O_DIRECTORY);
	if (probe < 0)
		return mb_err_set(err, errno == ENOSYS ? -ENOSYS : -errno,
		                  "openat2 on the unpack root failed: %s (Linux >= 5.6 required)",
		                  strerror(errno));
	close(probe);

	struct archive *a = archive_read_new();
	if (!a)
		return mb_err_set(err, -ENOMEM, "out of memory");
	archive_read_support_filter_gzip(a);
	archive_read_support_filter_zstd(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_empty(a);
	int r = 0;
	if (archive_read_open_fd(a, layer_fd, 1 << 17) != ARCHIVE_OK) {
		r = mb_err_set(err, -EBADMSG, "layer is not a tar archive: %s",
		               archive_error_string(a) ? archive_error_string(a) : "?");
		goto done;
	}
	for (;;) {
		struct archive_entry *e;
		int ar = archive_read_next_header(a, &e);
		if (ar == ARCHIVE_EOF)
			break;
		if (ar == ARCHIVE_WARN) {
			/* e.g. charset conversion problems: the entry is still usable */
		} else if (ar != ARCHIVE_OK) {
			r = mb_err_set(err, -EBADMSG, "corrupt layer: %s",
			               archive_error_string(a) ? archive_error_string(a) : "?");
			goto done;
		}
		r = do_entry(&u, a, e, err);
		if (r < 0)
			goto done;
	}
done:
	apply_dirtimes(&u);
	free(u.dts);
	mbr_strset_free(&u.layer_paths);
	archive_read_free(a);
	return r;
}

int mbr_unpack_path(const char *root, const char *layer, const struct mbr_unpack_opts *opts,
                    struct mbr_unpack_stats *stats, mb_err *err)
{
	int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return mb_err_set(err, -errno, "open %s: %s", root, strerror(errno));
	int fd = open(layer, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		close(rootfd);
		return mb_err_set(err, -e, "open %s: %s", layer, strerror(e));
	}
	int r = mbr_unpack_fd(rootfd, fd, opts, stats, err);
	close(fd);
	close(rootfd);
	return r;
}
