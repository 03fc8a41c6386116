/*
 * Content digests: validation and streaming SHA-256 (OpenSSL EVP).
 * Digest strings look like "sha256:<64 lowercase hex>" (71 chars + NUL).
 */
#ifndef MBR_DIGEST_H
#define MBR_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include <moonbox/plugin.h>

#define MBR_DIGEST_LEN 71 /* strlen("sha256:") + 64 */

/* Validate "algo:hex". Only sha256 is accepted for content we verify; sha512 parses
 * but is refused with -ENOTSUP. *hex (may be NULL) points into s after the colon. */
int mbr_digest_parse(const char *s, const char **hex, mb_err *err);

/* A running SHA-256. Create with mbr_sha256_new (caller frees with mbr_sha256_free). */
typedef struct mbr_sha256 mbr_sha256;
mbr_sha256 *mbr_sha256_new(void);
void mbr_sha256_free(mbr_sha256 *h);
int mbr_sha256_reset(mbr_sha256 *h);
int mbr_sha256_update(mbr_sha256 *h, const void *p, size_t n);
/* Finish into out ("sha256:…", NUL-terminated); the hash must be reset before reuse. */
int mbr_sha256_final(mbr_sha256 *h, char out[MBR_DIGEST_LEN + 1]);
uint64_t mbr_sha256_count(const mbr_sha256 *h);

/* One-shot helpers. */
int mbr_sha256_buf(const void *p, size_t n, char out[MBR_DIGEST_LEN + 1]);
/* Hash the file at fd from its current position to EOF (blocking: worker threads only). */
int mbr_sha256_fd(int fd, mbr_sha256 *h, uint64_t *nbytes, mb_err *err);
int mbr_sha256_path(const char *path, char out[MBR_DIGEST_LEN + 1], uint64_t *size, mb_err *err);

#endif
