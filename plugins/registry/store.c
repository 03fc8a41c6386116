#include "store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct mbr_blobw {
	char digest[MBR_DIGEST_LEN + 1];
	char *partial;
	char *final;
	char *blobdir;
	int fd;
	int64_t expected;
	mbr_sha256 *h;
	uint64_t off;
};

mbr_store *mbr_store_open(const char *root, mb_err *err)
{
	mbr_store *s = calloc(1, sizeof(*s));
	if (!s) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	s->root = strdup(root);
	s->blobs = mbr_sprintf("%s/blobs/sha256", root);
	s->disks = mbr_sprintf("%s/disks", root);
	s->tmp = mbr_sprintf("%s/tmp", root);
	if (!s->root || !s->blobs || !s->disks || !s->tmp) {
		mb_err_set(err, -ENOMEM, "out of memory");
		mbr_store_free(s);
		return NULL;
	}
	if (mbr_mkdir_p(s->blobs, 0700, err) < 0 || mbr_mkdir_p(s->disks, 0700, err) < 0 ||
	    mbr_mkdir_p(s->tmp, 0700, err) < 0) {
		mbr_store_free(s);
		return NULL;
	}
	return s;
}

void mbr_store_free(mbr_store *s)
{
	if (!s)
		return;
	free(s->root);
	free(s->blobs);
	free(s->disks);
	free(s->tmp);
	free(s->ram_tmp);
	free(s);
}

char *mbr_store_blob_path(const mbr_store *s, const char *digest)
{
	const char *hex;
	if (mbr_digest_parse(digest, &hex, NULL) < 0)
		return NULL;
	return mbr_sprintf("%s/%s", s->blobs, hex);
}

char *mbr_store_disk_path(const mbr_store *s, const char *image_id)
{
	const char *hex;
	if (mbr_digest_parse(image_id, &hex, NULL) < 0)
		return NULL;
	return mbr_sprintf("%s/sha256-%s.erofs", s->disks, hex);
}

static char *unique_path(const char *dir, const char *prefix)
{
	static atomic_uint counter;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return mbr_sprintf("%s/%s-%d-%lx-%u", dir, prefix, (int)getpid(),
	                   (unsigned long)ts.tv_nsec ^ (unsigned long)ts.tv_sec,
	                   atomic_fetch_add(&counter, 1));
}

char *mbr_store_tmp_path(const mbr_store *s, const char *prefix)
{
	return unique_path(s->tmp, prefix);
}

char *mbr_store_ram_path(const mbr_store *s, const char *prefix)
{
	return s->ram_tmp ? unique_path(s->ram_tmp, prefix) : NULL;
}

int mbr_store_set_ram_dir(mbr_store *s, const char *dir, mb_err *err)
{
	char *p = NULL;
	if (dir && *dir) {
		char h[MBR_DIGEST_LEN + 1];
		mbr_sha256_buf(s->root, strlen(s->root), h);
		p = mbr_sprintf("%s/moonbox-%.16s", dir, h + 7);
		if (!p)
			return mb_err_set(err, -ENOMEM, "out of memory");
	}
	free(s->ram_tmp);
	s->ram_tmp = p;
	return 0;
}

bool mbr_store_has_blob(const mbr_store *s, const char *digest, int64_t *size)
{
	_cleanup_free_ char *p = mbr_store_blob_path(s, digest);
	struct stat st;
	if (!p || stat(p, &st) < 0 || !S_ISREG(st.st_mode))
		return false;
	if (size)
		*size = st.st_size;
	return true;
}

mbr_blobw *mbr_blobw_open(const mbr_store *s, const char *digest, int64_t expected_size,
                          mb_err *err)
{
	const char *hex;
	if (mbr_digest_parse(digest, &hex, err) < 0)
		return NULL;
	mbr_blobw *w = calloc(1, sizeof(*w));
	if (!w) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	w->fd = -1;
	snprintf(w->digest, sizeof(w->digest), "%s", digest);
	w->expected = expected_size;
	w->partial = mbr_sprintf("%s/%s.partial", s->tmp, hex);
	w->final = mbr_sprintf("%s/%s", s->blobs, hex);
	w->blobdir = strdup(s->blobs);
	w->h = mbr_sha256_new();
	if (!w->partial || !w->final || !w->blobdir || !w->h) {
		mb_err_set(err, -ENOMEM, "out of memory");
		mbr_blobw_close(w, false);
		return NULL;
	}
	w->fd = open(w->partial, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (w->fd < 0) {
		mb_err_set(err, errno == ENOSPC ? -ENOSPC : -errno, "create %s: %s", w->partial,
		           strerror(errno));
		mbr_blobw_close(w, false);
		return NULL;
	}
	return w;
}

int mbr_blobw_prepare(mbr_blobw *w, bool resume, mb_err *err)
{
	mbr_sha256_reset(w->h);
	w->off = 0;
	struct stat st;
	if (resume && fstat(w->fd, &st) == 0 && st.st_size > 0 &&
	    (w->expected < 0 || st.st_size < w->expected)) {
		if (lseek(w->fd, 0, SEEK_SET) < 0)
			return mb_err_set(err, -errno, "seek: %s", strerror(errno));
		uint64_t n = 0;
		int r = mbr_sha256_fd(w->fd, w->h, &n, err);
		if (r < 0)
			return r;
		w->off = n;
		return 0;
	}
	if (ftruncate(w->fd, 0) < 0)
		return mb_err_set(err, -errno, "truncate %s: %s", w->partial, strerror(errno));
	lseek(w->fd, 0, SEEK_SET);
	return 0;
}

uint64_t mbr_blobw_offset(const mbr_blobw *w)
{
	return w->off;
}

const char *mbr_blobw_digest(const mbr_blobw *w)
{
	return w->digest;
}

int mbr_blobw_rewind(mbr_blobw *w, mb_err *err)
{
	mbr_sha256_reset(w->h);
	w->off = 0;
	if (ftruncate(w->fd, 0) < 0 || lseek(w->fd, 0, SEEK_SET) < 0)
		return mb_err_set(err, -errno, "truncate %s: %s", w->partial, strerror(errno));
	return 0;
}

int mbr_blobw_write(mbr_blobw *w, const void *p, size_t n, mb_err *err)
{
	if (w->expected >= 0 && w->off + n > (uint64_t)w->expected)
		return mb_err_set(err, -EBADMSG, "blob %s is larger than the %lld bytes announced",
		                  w->digest, (long long)w->expected);
	const char *c = p;
	size_t left = n;
	while (left) {
		ssize_t k = write(w->fd, c, left);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOSPC || errno == EDQUOT)
				return mb_err_set(err, -ENOSPC, "no space left on device");
			return mb_err_set(err, -errno, "write %s: %s", w->partial, strerror(errno));
		}
		c += k;
		left -= (size_t)k;
	}
	mbr_sha256_update(w->h, p, n);
	w->off += n;
	return 0;
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

int mbr_blobw_finish(mbr_blobw *w, mb_err *err)
{
	char got[MBR_DIGEST_LEN + 1];
	if (w->expected >= 0 && w->off != (uint64_t)w->expected) {
		unlink(w->partial);
		return mb_err_set(err, -EBADMSG, "blob %s truncated: got %llu of %lld bytes",
		                  w->digest, (unsigned long long)w->off, (long long)w->expected);
	}
	if (mbr_sha256_final(w->h, got) < 0)
		return mb_err_set(err, -EIO, "sha256 failed");
	if (strcmp(got, w->digest)) {
		unlink(w->partial);
		return mb_err_set(err, -EBADMSG, "digest mismatch: expected %s, got %s", w->digest,
		                  got);
	}
	if (fsync(w->fd) < 0)
		return mb_err_set(err, errno == ENOSPC ? -ENOSPC : -errno, "fsync: %s",
		                  strerror(errno));
	if (rename(w->partial, w->final) < 0)
		return mb_err_set(err, -errno, "rename %s: %s", w->final, strerror(errno));
	fsync_dir(w->blobdir);
	return 0;
}

void mbr_blobw_close(mbr_blobw *w, bool remove_partial)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (remove_partial && w->partial)
		unlink(w->partial);
	mbr_sha256_free(w->h);
	free(w->partial);
	free(w->final);
	free(w->blobdir);
	free(w);
}

int mbr_store_adopt(const mbr_store *s, const char *src, const char *digest, mb_err *err)
{
	_cleanup_free_ char *dst = mbr_store_blob_path(s, digest);
	if (!dst)
		return mb_err_set(err, -EINVAL, "invalid digest %s", digest);
	int fd = open(src, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mb_err_set(err, -errno, "open %s: %s", src, strerror(errno));
	int r = fsync(fd);
	close(fd);
	if (r < 0)
		return mb_err_set(err, -errno, "fsync %s: %s", src, strerror(errno));
	if (rename(src, dst) < 0)
		return mb_err_set(err, -errno, "rename %s: %s", dst, strerror(errno));
	fsync_dir(s->blobs);
	return 0;
}

int mbr_store_put_buf(const mbr_store *s, const char *digest, const void *p, size_t n, mb_err *err)
{
	char got[MBR_DIGEST_LEN + 1];
	if (mbr_sha256_buf(p, n, got) < 0)
		return mb_err_set(err, -EIO, "sha256 failed");
	if (strcmp(got, digest))
		return mb_err_set(err, -EBADMSG, "digest mismatch: expected %s, got %s", digest,
		                  got);
	_cleanup_free_ char *dst = mbr_store_blob_path(s, digest);
	if (!dst)
		return mb_err_set(err, -EINVAL, "invalid digest %s", digest);
	return mbr_write_file_atomic(dst, p, n, 0600, err);
}

int mbr_store_verify(const mbr_store *s, const char *digest, mb_err *err)
{
	_cleanup_free_ char *p = mbr_store_blob_path(s, digest);
	if (!p)
		return mb_err_set(err, -EINVAL, "invalid digest %s", digest);
	char got[MBR_DIGEST_LEN + 1];
	int r = mbr_sha256_path(p, got, NULL, err);
	if (r < 0)
		return r;
	if (strcmp(got, digest)) {
		unlink(p);
		return mb_err_set(err, -EBADMSG, "stored blob %s is corrupt (hash %s); removed",
		                  digest, got);
	}
	return 0;
}

static void gc_dir(const char *dir, const char *prefix, const char *suffix, const mbr_strset *live,
                   int64_t before, uint64_t *removed, uint64_t *bytes)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	int dfd = dirfd(d);
	struct dirent *de;
	size_t plen = strlen(prefix), slen = strlen(suffix);
	while ((de = readdir(d))) {
		const char *n = de->d_name;
		size_t len = strlen(n);
		if (n[0] == '.' || len < plen + slen || strncmp(n, prefix, plen) ||
		    strcmp(n + len - slen, suffix))
			continue;
		char key[MBR_DIGEST_LEN + 8];
		snprintf(key, sizeof(key), "sha256:%.*s", (int)(len - plen - slen), n + plen);
		if (mbr_digest_parse(key, NULL, NULL) < 0 || mbr_strset_has(live, key))
			continue;
		struct stat st;
		if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    (before && st.st_mtime >= before))
			continue;
		if (unlinkat(dfd, n, 0) == 0) {
			(*removed)++;
			*bytes += (uint64_t)st.st_blocks * 512;
		}
	}
	closedir(d);
}

int mbr_store_gc(const mbr_store *s, const mbr_strset *live_blobs, const mbr_strset *live_disks,
                 int64_t before, bool clean_tmp, struct mbr_gc_stats *st, mb_err *err)
{
	memset(st, 0, sizeof(*st));
	gc_dir(s->blobs, "", "", live_blobs, before, &st->blobs_removed, &st->bytes_freed);
	gc_dir(s->disks, "sha256-", ".erofs", live_disks, before, &st->disks_removed,
	       &st->bytes_freed);
	if (!clean_tmp)
		return 0;
	if (access(s->tmp, F_OK) < 0)
		return mb_err_set(err, -errno, "open %s: %s", s->tmp, strerror(errno));
	mbr_store_sweep_tmp(s, 0, st);
	return 0;
}

/* Remove the entries of dir (modified before `before`, 0: all), except partial downloads
 * younger than a day. */
static void sweep_dir(const char *dir, int64_t before, struct mbr_gc_stats *st)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	int dfd = dirfd(d);
	struct dirent *de;
	time_t now = time(NULL);
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat sb;
		if (fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (before && sb.st_mtime >= before)
			continue;
		size_t len = strlen(de->d_name);
		bool partial = len > 8 && !strcmp(de->d_name + len - 8, ".partial");
		if (partial && now - sb.st_mtime < 24 * 3600)
			continue; /* kept for resuming */
		if (mbr_rm_tree_at(dfd, de->d_name, NULL) == 0) {
			st->tmp_removed++;
			if (!S_ISDIR(sb.st_mode))
				st->bytes_freed += (uint64_t)sb.st_blocks * 512;
		}
	}
	closedir(d);
}

void mbr_store_sweep_tmp(const mbr_store *s, int64_t before, struct mbr_gc_stats *st)
{
	sweep_dir(s->tmp, before, st);
	if (s->ram_tmp)
		sweep_dir(s->ram_tmp, before, st);
}
