/*
 * Import of image archives into the content store (blocking: worker threads only):
 *  - `docker save` archives (.tar, .tar.gz): manifest.json names the config and layer
 *    files; legacy per-layer directories hold symlinks, which are followed inside the
 *    archive only;
 *  - OCI image-layout archives: oci-layout + index.json + blobs/<alg>/<hex>.
 * Every blob is hashed while it is read and enters the store under its digest. For docker
 * archives an OCI manifest is written (and stored) for each image.
 */
#ifndef MBR_IMPORT_H
#define MBR_IMPORT_H

#include <stddef.h>

#include <moonbox/plugin.h>

#include "manifest.h"
#include "store.h"

struct mbr_import_image {
	char *manifest; /* manifest bytes (owned) */
	size_t manifest_len;
	char manifest_digest[MBR_DIGEST_LEN + 1];
	char media_type[128];
	char config_digest[MBR_DIGEST_LEN + 1];
	char **refs; /* names as written in the archive (RepoTags / ref.name); owned */
	size_t nrefs;
};

struct mbr_import_result {
	struct mbr_import_image *images; /* owned */
	size_t n;
	char format[16]; /* "docker" or "oci" */
};

/* Read the archive at path; os/arch/variant select from OCI indexes (NULL: linux/amd64).
 * Fills *res (caller frees with mbr_import_result_free). -EINVAL for archives that are not
 * image archives, -EBADMSG for digest mismatches, -ENOSPC. */
int mbr_import_archive(const mbr_store *s, const char *path, const char *os, const char *arch,
                       const char *variant, struct mbr_import_result *res, mb_err *err);
void mbr_import_result_free(struct mbr_import_result *res);

#endif
