/*
 * Small, dependency-free SHA-256 and HMAC-SHA-256 (FIPS 180-4, RFC 2104).
 * Used by the agent protocol's challenge-response authentication on both sides.
 * No heap memory is used anywhere in this file.
 */
#ifndef MOONBOX_MBP_SHA256_H
#define MOONBOX_MBP_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define MBP_SHA256_LEN   32
#define MBP_SHA256_BLOCK 64

typedef struct mbp_sha256_ctx {
	uint32_t h[8];
	uint64_t total; /* bytes hashed so far */
	uint8_t buf[MBP_SHA256_BLOCK];
	size_t buflen;
} mbp_sha256_ctx;

void mbp_sha256_init(mbp_sha256_ctx *s);
void mbp_sha256_update(mbp_sha256_ctx *s, const void *data, size_t len);
void mbp_sha256_final(mbp_sha256_ctx *s, uint8_t out[MBP_SHA256_LEN]);
void mbp_sha256(const void *data, size_t len, uint8_t out[MBP_SHA256_LEN]);

typedef struct mbp_hmac_ctx {
	mbp_sha256_ctx inner;
	mbp_sha256_ctx outer;
} mbp_hmac_ctx;

void mbp_hmac_init(mbp_hmac_ctx *h, const void *key, size_t key_len);
void mbp_hmac_update(mbp_hmac_ctx *h, const void *data, size_t len);
void mbp_hmac_final(mbp_hmac_ctx *h, uint8_t out[MBP_SHA256_LEN]);
void mbp_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                     uint8_t out[MBP_SHA256_LEN]);

/* Constant-time comparison: returns 1 when equal, 0 otherwise. */
int mbp_ct_equal(const void *a, const void *b, size_t len);

#endif
