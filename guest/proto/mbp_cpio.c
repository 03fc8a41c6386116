/* newc cpio writer (see mbp_cpio.h). */
#include "mbp_cpio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

void mbp_cpio_init(mbp_cpio *c)
{
	memset(c, 0, sizeof(*c));
	c->next_ino = 1;
}

void mbp_cpio_free(mbp_cpio *c)
{
	free(c->buf);
	memset(c, 0, sizeof(*c));
}

static int reserve(mbp_cpio *c, size_t n, mbp_err *err)
{
	if (c->len + n <= c->cap)
		return 0;
	size_t cap = c->cap ? c->cap : 4096;
	while (cap < c->len + n)
		cap *= 2;
	uint8_t *b = realloc(c->buf, cap);
	if (!b)
		return mbp_err_set(err, -ENOMEM, "cpio: out of memory");
	c->buf = b;
	c->cap = cap;
	return 0;
}

static void put(mbp_cpio *c, const void *p, size_t n)
{
	memcpy(c->buf + c->len, p, n);
	c->len += n;
}

static void pad4(mbp_cpio *c)
{
	while (c->len & 3)
		c->buf[c->len++] = 0;
}

static int entry(mbp_cpio *c, const char *path, uint32_t mode, uid_t uid, gid_t gid, uint32_t nlink,
                 const void *data, size_t len, unsigned rmaj, unsigned rmin, mbp_err *err)
{
	if (c->finished)
		return mbp_err_set(err, -EINVAL, "cpio: archive already finished");
	while (*path == '/')
		path++;
	if (!*path)
		return mbp_err_set(err, -EINVAL, "cpio: empty path");
	size_t nl = strlen(path) + 1;
	if (len > 0xffffffffu || nl > 4096)
		return mbp_err_set(err, -EFBIG, "cpio: entry too large: %s", path);
	int rc = reserve(c, 110 + nl + 3 + len + 3, err);
	if (rc < 0)
		return rc;
	char hdr[111];
	snprintf(hdr, sizeof(hdr), "070701%08X%08X%08X%08X%08X%08X%08zX%08X%08X%08X%08X%08zX%08X",
	         c->next_ino++, mode, (unsigned)uid, (unsigned)gid, nlink, 0u, len, 0u, 0u, rmaj,
	         rmin, nl, 0u);
	put(c, hdr, 110);
	put(c, path, nl);
	pad4(c);
	if (len)
		put(c, data, len);
	pad4(c);
	return 0;
}

int mbp_cpio_add_dir(mbp_cpio *c, const char *path, mode_t mode, uid_t uid, gid_t gid, mbp_err *err)
{
	return entry(c, path, S_IFDIR | (mode & 07777), uid, gid, 2, NULL, 0, 0, 0, err);
}

int mbp_cpio_add_file(mbp_cpio *c, const char *path, mode_t mode, uid_t uid, gid_t gid,
                      const void *data, size_t len, mbp_err *err)
{
	return entry(c, path, S_IFREG | (mode & 07777), uid, gid, 1, data, len, 0, 0, err);
}

int mbp_cpio_add_symlink(mbp_cpio *c, const char *path, const char *target, mbp_err *err)
{
	return entry(c, path, S_IFLNK | 0777, 0, 0, 1, target, strlen(target), 0, 0, err);
}

int mbp_cpio_add_node(mbp_cpio *c, const char *path, mode_t type, mode_t mode, unsigned int major,
                      unsigned int minor, mbp_err *err)
{
	if (type != S_IFCHR && type != S_IFBLK)
		return mbp_err_set(err, -EINVAL, "cpio: node type must be S_IFCHR or S_IFBLK");
	return entry(c, path, type | (mode & 07777), 0, 0, 1, NULL, 0, major, minor, err);
}

int mbp_cpio_finish(mbp_cpio *c, mbp_err *err)
{
	int rc = entry(c, "TRAILER!!!", 0, 0, 0, 1, NULL, 0, 0, 0, err);
	if (rc < 0)
		return rc;
	c->finished = 1;
	/* Pad to 512 bytes like cpio(1) does; the kernel skips the zeros. */
	rc = reserve(c, 512, err);
	if (rc < 0)
		return rc;
	while (c->len % 512)
		c->buf[c->len++] = 0;
	return 0;
}

int mbp_cpio_boot_config(const json_t *cfg, uint8_t **out, size_t *out_len, mbp_err *err)
{
	if (!json_is_object(cfg))
		return mbp_err_set(err, -EINVAL, "boot config must be a JSON object");
	char *js = json_dumps(cfg, JSON_COMPACT);
	if (!js)
		return mbp_err_set(err, -ENOMEM, "cannot serialise boot config");
	mbp_cpio c;
	mbp_cpio_init(&c);
	int rc = mbp_cpio_add_dir(&c, "etc", 0755, 0, 0, err);
	if (rc == 0)
		rc = mbp_cpio_add_dir(&c, "etc/moonbox", 0700, 0, 0, err);
	if (rc == 0)
		rc =
		    mbp_cpio_add_file(&c, "etc/moonbox/boot.json", 0600, 0, 0, js, strlen(js), err);
	if (rc == 0)
		rc = mbp_cpio_finish(&c, err);
	free(js);
	if (rc < 0) {
		mbp_cpio_free(&c);
		return rc;
	}
	*out = c.buf;
	*out_len = c.len;
	return 0;
}
