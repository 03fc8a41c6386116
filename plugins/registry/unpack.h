/*
 * The safe layer unpacker: applies one layer tarball (plain, gzip or zstd; ustar, GNU or
 * PAX) onto a root directory, with OCI whiteouts, using libarchive only to *read*.
 *
 * Safety model (see README.md): every path is cleaned ('..' is refused) and its parent is
 * resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) against
 * the root dirfd, so symlinks met on the way are resolved as if the root were '/' and can
 * never lead outside it; the final component is created with *at() calls that do not
 * follow symlinks (O_NOFOLLOW, O_EXCL, AT_SYMLINK_NOFOLLOW). Device nodes are created only
 * when allowed. Blocking: run on a worker thread.
 */
#ifndef MBR_UNPACK_H
#define MBR_UNPACK_H

#include <stdbool.h>
#include <stdint.h>

#include <moonbox/plugin.h>

struct mbr_unpack_opts {
	bool allow_devices; /* create char/block device nodes (else they are skipped) */
	bool keep_owners;   /* chown entries to the tar's uid/gid */
	bool xattrs;        /* apply user.* and security.capability xattrs */
};

struct mbr_unpack_stats {
	uint64_t entries;
	uint64_t files;
	uint64_t dirs;
	uint64_t symlinks;
	uint64_t hardlinks;
	uint64_t whiteouts;
	uint64_t skipped; /* device nodes not allowed, unknown types, xattrs refused */
	uint64_t bytes;   /* file data written */
};

/* Apply the layer read from layer_fd (current position) onto the directory rootfd.
 * Errors: -EINVAL unsafe or malformed entry (message names it), -EBADMSG corrupt archive,
 * -ENAMETOOLONG, -ENOSPC, other -errno from the filesystem. On error the tree is left
 * partially written: callers unpack into a scratch directory and discard it. */
int mbr_unpack_fd(int rootfd, int layer_fd, const struct mbr_unpack_opts *opts,
                  struct mbr_unpack_stats *stats, mb_err *err);
/* Same with paths. */
int mbr_unpack_path(const char *root, const char *layer, const struct mbr_unpack_opts *opts,
                    struct mbr_unpack_stats *stats, mb_err *err);

/* Clean an archive path: strips leading '/', './', empty and '.' components; refuses '..'
 * (-EINVAL) and components longer than NAME_MAX (-ENAMETOOLONG). "" means the root. */
int mbr_clean_path(const char *in, char *out, size_t cap, mb_err *err);

#endif
