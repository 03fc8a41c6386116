/*
 * A small writer for "newc" (SVR4, magic 070701) cpio archives, the format the Linux
 * kernel unpacks as an initramfs. Several archives may be concatenated: the kernel
 * unpacks them in order, later entries replacing earlier ones. The vm plugin uses this
 * to append a per-VM archive holding /etc/moonbox/boot.json (mode 0600) to the shared
 * base initramfs; the initramfs builder uses it for the base image.
 *
 * The archive is built in memory. All entries get mtime 0 so that output is
 * reproducible. Paths are written without a leading "/".
 */
#ifndef MOONBOX_MBP_CPIO_H
#define MOONBOX_MBP_CPIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mbp_proto.h"

typedef struct mbp_cpio {
	uint8_t *buf; /* owned; the archive so far */
	size_t len;
	size_t cap;
	uint32_t next_ino;
	int finished;
} mbp_cpio;

/* Start an empty archive (no allocation yet). */
void mbp_cpio_init(mbp_cpio *c);
/* Free the buffer (c itself is the caller's). */
void mbp_cpio_free(mbp_cpio *c);

/* Add entries. mode holds the permission bits only (07777); path is borrowed. */
int mbp_cpio_add_dir(mbp_cpio *c, const char *path, mode_t mode, uid_t uid, gid_t gid,
                     mbp_err *err);
int mbp_cpio_add_file(mbp_cpio *c, const char *path, mode_t mode, uid_t uid, gid_t gid,
                      const void *data, size_t len, mbp_err *err);
int mbp_cpio_add_symlink(mbp_cpio *c, const char *path, const char *target, mbp_err *err);
/* type is S_IFCHR or S_IFBLK. */
int mbp_cpio_add_node(mbp_cpio *c, const char *path, mode_t type, mode_t mode, unsigned int major,
                      unsigned int minor, mbp_err *err);
/* Write the TRAILER!!! entry; no entry may be added afterwards. */
int mbp_cpio_finish(mbp_cpio *c, mbp_err *err);

/*
 * Build the per-VM boot archive: directories etc/ and etc/moonbox/ and the file
 * etc/moonbox/boot.json (mode 0600, root) holding cfg serialised as JSON.
 * cfg is borrowed. On success *out is malloc'ed (caller frees) and ends with a trailer,
 * ready to be appended to the base initramfs (gzip'ed or not: the kernel accepts a
 * mix of compressed and uncompressed archives).
 */
int mbp_cpio_boot_config(const json_t *cfg, uint8_t **out, size_t *out_len, mbp_err *err);

#endif
