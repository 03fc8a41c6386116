/* Test helper: write layer tarballs with libarchive (header-only, tests only). */
#ifndef MBR_TEST_TARW_H
#define MBR_TEST_TARW_H

#include <archive.h>
#include <archive_entry.h>
#include <string.h>
#include <sys/stat.h>

/* filter: NULL, "gzip" or "zstd"; format: ARCHIVE_FORMAT_TAR_* (0 = PAX restricted). */
static inline struct archive *tw_open(const char *path, const char *filter, int format)
{
	struct archive *a = archive_write_new();
	archive_write_set_format(a, format ? format : ARCHIVE_FORMAT_TAR_PAX_RESTRICTED);
	if (filter && !strcmp(filter, "gzip"))
		archive_write_add_filter_gzip(a);
	else if (filter && !strcmp(filter, "zstd"))
		archive_write_add_filter_zstd(a);
	archive_write_set_bytes_per_block(a, 512);
	if (archive_write_open_filename(a, path) != ARCHIVE_OK)
		return NULL;
	return a;
}

static inline void tw_entry(struct archive *a, const char *path, mode_t type, mode_t perm,
                            const char *data, const char *link, const char *hardlink, int uid,
                            int gid)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, path);
	archive_entry_set_filetype(e, type);
	archive_entry_set_perm(e, perm);
	archive_entry_set_uid(e, uid);
	archive_entry_set_gid(e, gid);
	archive_entry_set_mtime(e, 1700000000, 0);
	if (link)
		archive_entry_set_symlink(e, link);
	if (hardlink) {
		archive_entry_set_hardlink(e, hardlink);
		archive_entry_set_size(e, 0);
	} else {
		archive_entry_set_size(e, data ? (la_int64_t)strlen(data) : 0);
	}
	archive_write_header(a, e);
	if (data && !hardlink)
		archive_write_data(a, data, strlen(data));
	archive_entry_free(e);
}

static inline void tw_file_n(struct archive *a, const char *path, const void *data, size_t n)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, path);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)n);
	archive_write_header(a, e);
	archive_write_data(a, data, n);
	archive_entry_free(e);
}
static inline void tw_file(struct archive *a, const char *path, const char *data)
{
	tw_entry(a, path, AE_IFREG, 0644, data, NULL, NULL, 0, 0);
}
static inline void tw_dir(struct archive *a, const char *path)
{
	tw_entry(a, path, AE_IFDIR, 0755, NULL, NULL, NULL, 0, 0);
}
static inline void tw_symlink(struct archive *a, const char *path, const char *target)
{
	tw_entry(a, path, AE_IFLNK, 0777, NULL, target, NULL, 0, 0);
}
static inline void tw_hardlink(struct archive *a, const char *path, const char *target)
{
	tw_entry(a, path, AE_IFREG, 0644, NULL, NULL, target, 0, 0);
}
static inline void tw_dev(struct archive *a, const char *path, mode_t type, int maj, int min)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, path);
	archive_entry_set_filetype(e, type);
	archive_entry_set_perm(e, 0666);
	archive_entry_set_rdevmajor(e, maj);
	archive_entry_set_rdevminor(e, min);
	archive_write_header(a, e);
	archive_entry_free(e);
}
static inline void tw_close(struct archive *a)
{
	archive_write_close(a);
	archive_write_free(a);
}

#endif
