/*
 * Small helpers shared by the registry modules: growable buffers, string sets,
 * path and directory-tree helpers that never follow symlinks.
 */
#ifndef MBR_UTIL_H
#define MBR_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <moonbox/plugin.h>

#define MBR_UNUSED __attribute__((unused))

/* Free *p (for __attribute__((cleanup))). */
void mbr_freep(void *p);
#define _cleanup_free_ __attribute__((cleanup(mbr_freep)))

/* A growable byte buffer; data is always NUL-terminated (len excludes the NUL). */
typedef struct mbr_buf {
	char *data;
	size_t len;
	size_t cap;
	size_t limit; /* 0 = unlimited; appends past it fail with -EFBIG */
} mbr_buf;

int mbr_buf_append(mbr_buf *b, const void *p, size_t n);
/* Frees b->data and zeroes b. */
void mbr_buf_free(mbr_buf *b);
/* Hands b->data to the caller (caller frees) and zeroes b. */
char *mbr_buf_steal(mbr_buf *b, size_t *len);

/* Returns a new string (caller frees) or NULL on OOM. */
char *mbr_strdup(const char *s);
char *mbr_strndup(const char *s, size_t n);
/* printf into a new string; caller frees. NULL on OOM. */
char *mbr_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Case-insensitive prefix test. */
bool mbr_starts_with_ci(const char *s, const char *prefix);

/* A set of strings (open addressing). Keys are copied; the set owns them. */
typedef struct mbr_strset {
	char **slots;
	size_t cap;
	size_t n;
} mbr_strset;

int mbr_strset_add(mbr_strset *s, const char *key); /* 1 added, 0 present, -ENOMEM */
bool mbr_strset_has(const mbr_strset *s, const char *key);
void mbr_strset_free(mbr_strset *s);

/* mkdir -p with mode for missing components. */
int mbr_mkdir_p(const char *path, mode_t mode, mb_err *err);
/* Remove `name` below dirfd recursively, never following symlinks. ENOENT is success. */
int mbr_rm_tree_at(int dirfd, const char *name, mb_err *err);
/* Remove every entry inside the directory open at dirfd (not the directory itself).
 * keep(rel_name, ud) returning true spares an entry. */
int mbr_empty_dir_at(int dirfd, bool (*keep)(const char *name, void *ud), void *ud, mb_err *err);
/* Recursive removal of an absolute or cwd-relative path; never follows symlinks. */
int mbr_rm_tree(const char *path, mb_err *err);

/* Read a whole (small) file; caller frees *out. Fails with -EFBIG past limit bytes. */
int mbr_read_file(const char *path, size_t limit, char **out, size_t *len, mb_err *err);
/* Write data to path atomically (temp file + fsync + rename) with the given mode. */
int mbr_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, mb_err *err);

/* Monotonic milliseconds. */
uint64_t mbr_now_ms(void);

#endif
