#include "digest.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

struct mbr_sha256 {
	EVP_MD_CTX *ctx;
	uint64_t n;
};

static bool is_lower_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

int mbr_digest_parse(const char *s, const char **hex, mb_err *err)
{
	if (!s)
		return mb_err_set(err, -EINVAL, "missing digest");
	const char *colon = strchr(s, ':');
	if (!colon)
		return mb_err_set(err, -EINVAL, "invalid digest \"%.80s\": no algorithm", s);
	size_t alen = (size_t)(colon - s);
	const char *h = colon + 1;
	size_t hlen = strlen(h);
	if (alen == 6 && !strncmp(s, "sha256", 6)) {
		if (hlen != 64 || !is_lower_hex(h, hlen))
			return mb_err_set(err, -EINVAL, "invalid sha256 digest \"%.80s\"", s);
	} else if (alen == 6 && !strncmp(s, "sha512", 6)) {
		if (hlen != 128 || !is_lower_hex(h, hlen))
			return mb_err_set(err, -EINVAL, "invalid sha512 digest \"%.80s\"", s);
		return mb_err_set(err, -ENOTSUP, "sha512 digests are not supported");
	} else {
		return mb_err_set(err, -EINVAL, "invalid digest \"%.80s\": unknown algorithm", s);
	}
	if (hex)
		*hex = h;
	return 0;
}

mbr_sha256 *mbr_sha256_new(void)
{
	mbr_sha256 *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || mbr_sha256_reset(h) < 0) {
		mbr_sha256_free(h);
		return NULL;
	}
	return h;
}

void mbr_sha256_free(mbr_sha256 *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

int mbr_sha256_reset(mbr_sha256 *h)
{
	h->n = 0;
	return EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

int mbr_sha256_update(mbr_sha256 *h, const void *p, size_t n)
{
	h->n += n;
	return EVP_DigestUpdate(h->ctx, p, n) == 1 ? 0 : -EIO;
}

int mbr_sha256_final(mbr_sha256 *h, char out[MBR_DIGEST_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (EVP_DigestFinal_ex(h->ctx, md, &len) != 1 || len != 32)
		return -EIO;
	memcpy(out, "sha256:", 7);
	for (unsigned i = 0; i < 32; i++)
		snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
	return 0;
}

uint64_t mbr_sha256_count(const mbr_sha256 *h)
{
	return h->n;
}

int mbr_sha256_buf(const void *p, size_t n, char out[MBR_DIGEST_LEN + 1])
{
	mbr_sha256 *h = mbr_sha256_new();
	if (!h)
		return -ENOMEM;
	int r = mbr_sha256_update(h, p, n);
	if (r == 0)
		r = mbr_sha256_final(h, out);
	mbr_sha256_free(h);
	return r;
}

int mbr_sha256_fd(int fd, mbr_sha256 *h, uint64_t *nbytes, mb_err *err)
{
	size_t bufsz = 1 << 20;
	char *buf = malloc(bufsz);
	if (!buf)
		return mb_err_set(err, -ENOMEM, "out of memory");
	uint64_t total = 0;
	int r = 0;
	for (;;) {
		ssize_t n = read(fd, buf, bufsz);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = mb_err_set(err, -errno, "read: %s", strerror(errno));
			break;
		}
		if (n == 0)
			break;
		mbr_sha256_update(h, buf, (size_t)n);
		total += (uint64_t)n;
	}
	free(buf);
	if (nbytes)
		*nbytes = total;
	return r;
}

int mbr_sha256_path(const char *path, char out[MBR_DIGEST_LEN + 1], uint64_t *size, mb_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mb_err_set(err, -errno, "open %s: %s", path, strerror(errno));
	mbr_sha256 *h = mbr_sha256_new();
	int r = h ? mbr_sha256_fd(fd, h, size, err) : mb_err_set(err, -ENOMEM, "out of memory");
	if (r == 0)
		r = mbr_sha256_final(h, out);
	mbr_sha256_free(h);
	close(fd);
	return r;
}
