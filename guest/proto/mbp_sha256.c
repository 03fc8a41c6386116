/* SHA-256 and HMAC-SHA-256, written from FIPS 180-4 and RFC 2104. */
#include "mbp_sha256.h"

#include <string.h>

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2,
};

static inline uint32_t ror(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

static void compress(uint32_t h[8], const uint8_t *p)
{
	uint32_t w[64];
	for (int i = 0; i < 16; i++) {
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
	}
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t S1 = ror(e, 6) ^ ror(e, 11) ^ ror(e, 25);
		uint32_t ch = (e & f) ^ (~e & g);
		uint32_t t1 = k + S1 + ch + K[i] + w[i];
		uint32_t S0 = ror(a, 2) ^ ror(a, 13) ^ ror(a, 22);
		uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
		uint32_t t2 = S0 + maj;
		k = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	h[0] += a;
	h[1] += b;
	h[2] += c;
	h[3] += d;
	h[4] += e;
	h[5] += f;
	h[6] += g;
	h[7] += k;
}

void mbp_sha256_init(mbp_sha256_ctx *s)
{
	static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	memcpy(s->h, iv, sizeof(iv));
	s->total = 0;
	s->buflen = 0;
}

void mbp_sha256_update(mbp_sha256_ctx *s, const void *data, size_t len)
{
	const uint8_t *p = data;
	s->total += len;
	if (s->buflen) {
		size_t n = MBP_SHA256_BLOCK - s->buflen;
		if (n > len)
			n = len;
		memcpy(s->buf + s->buflen, p, n);
		s->buflen += n;
		p += n;
		len -= n;
		if (s->buflen < MBP_SHA256_BLOCK)
			return;
		compress(s->h, s->buf);
		s->buflen = 0;
	}
	while (len >= MBP_SHA256_BLOCK) {
		compress(s->h, p);
		p += MBP_SHA256_BLOCK;
		len -= MBP_SHA256_BLOCK;
	}
	memcpy(s->buf, p, len);
	s->buflen = len;
}

void mbp_sha256_final(mbp_sha256_ctx *s, uint8_t out[MBP_SHA256_LEN])
{
	uint64_t bits = s->total * 8;
	uint8_t pad = 0x80;
	mbp_sha256_update(s, &pad, 1);
	pad = 0;
	while (s->buflen != 56)
		mbp_sha256_update(s, &pad, 1);
	uint8_t len[8];
	for (int i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	mbp_sha256_update(s, len, 8);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(s->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)s->h[i];
	}
	memset(s, 0, sizeof(*s));
}

void mbp_sha256(const void *data, size_t len, uint8_t out[MBP_SHA256_LEN])
{
	mbp_sha256_ctx s;
	mbp_sha256_init(&s);
	mbp_sha256_update(&s, data, len);
	mbp_sha256_final(&s, out);
}

void mbp_hmac_init(mbp_hmac_ctx *h, const void *key, size_t key_len)
{
	uint8_t k[MBP_SHA256_BLOCK] = { 0 };
	uint8_t pad[MBP_SHA256_BLOCK];
	if (key_len > MBP_SHA256_BLOCK)
		mbp_sha256(key, key_len, k);
	else if (key_len)
		memcpy(k, key, key_len);
	for (int i = 0; i < MBP_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x36;
	mbp_sha256_init(&h->inner);
	mbp_sha256_update(&h->inner, pad, sizeof(pad));
	for (int i = 0; i < MBP_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x5c;
	mbp_sha256_init(&h->outer);
	mbp_sha256_update(&h->outer, pad, sizeof(pad));
	memset(k, 0, sizeof(k));
	memset(pad, 0, sizeof(pad));
}

void mbp_hmac_update(mbp_hmac_ctx *h, const void *data, size_t len)
{
	mbp_sha256_update(&h->inner, data, len);
}

void mbp_hmac_final(mbp_hmac_ctx *h, uint8_t out[MBP_SHA256_LEN])
{
	uint8_t ih[MBP_SHA256_LEN];
	mbp_sha256_final(&h->inner, ih);
	mbp_sha256_update(&h->outer, ih, sizeof(ih));
	mbp_sha256_final(&h->outer, out);
	memset(ih, 0, sizeof(ih));
}

void mbp_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                     uint8_t out[MBP_SHA256_LEN])
{
	mbp_hmac_ctx h;
	mbp_hmac_init(&h, key, key_len);
	mbp_hmac_update(&h, data, len);
	mbp_hmac_final(&h, out);
}

int mbp_ct_equal(const void *a, const void *b, size_t len)
{
	const volatile uint8_t *x = a, *y = b;
	uint8_t d = 0;
	for (size_t i = 0; i < len; i++)
		d |= x[i] ^ y[i];
	return d == 0;
}
