/*
 * mb-mkinitramfs: build moonbox's base initramfs (gzip'ed newc cpio) with the newc writer
 * from guest/proto, or the per-VM boot config archive.
 *
 *   mb-mkinitramfs -o OUT.cpio.gz --init moonbox-init
 *                  [--kmod-dir /lib/modules/KVER --module NAME ...]
 *   mb-mkinitramfs --boot-config boot.json -o boot.cpio      (uncompressed, one file)
 *
 * Modules are resolved with their dependencies from KMOD_DIR/modules.dep and written to
 * /lib/moonbox/modules/NAME.ko; /lib/moonbox/modules.order lists them in load order
 * (dependencies first) for moonbox-init.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "mbp_cpio.h"

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mb-mkinitramfs: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* Read a whole file; returns malloc'ed data (caller frees). */
static uint8_t *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		die("%s: %s", path, strerror(errno));
	uint8_t *b = malloc((size_t)st.st_size + 1);
	if (!b)
		die("out of memory");
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
		if (r <= 0)
			die("read %s: %s", path, r < 0 ? strerror(errno) : "short read");
		got += (size_t)r;
	}
	close(fd);
	b[got] = 0;
	*len = got;
	return b;
}

struct mod {
	char name[128]; /* normalised: '-' -> '_' */
	char path[512]; /* relative to kmod dir */
	char *deps;     /* space-separated relative paths (borrowed from the dep file) */
	bool added;
	bool visiting;
};

static struct mod *mods;
static size_t nmods;

static void norm(char *dst, size_t size, const char *path)
{
	const char *b = strrchr(path, '/');
	b = b ? b + 1 : path;
	snprintf(dst, size, "%s", b);
	char *dot = strstr(dst, ".ko");
	if (dot)
		*dot = 0;
	for (char *p = dst; *p; p++)
		*p = *p == '-' ? '_' : *p;
}

static struct mod *find_mod(const char *name)
{
	char n[128];
	norm(n, sizeof(n), name);
	for (size_t i = 0; i < nmods; i++) {
		if (strcmp(mods[i].name, n) == 0)
			return &mods[i];
	}
	return NULL;
}

static void load_dep(const char *kdir)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/modules.dep", kdir);
	size_t len;
	char *txt = (char *)slurp(p, &len);
	size_t cap = 0;
	for (char *save = NULL, *line = strtok_r(txt, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = 0;
		if (nmods == cap) {
			cap = cap ? cap * 2 : 1024;
			mods = realloc(mods, cap * sizeof(*mods));
			if (!mods)
				die("out of memory");
		}
		struct mod *m = &mods[nmods++];
		memset(m, 0, sizeof(*m));
		snprintf(m->path, sizeof(m->path), "%s", line);
		norm(m->name, sizeof(m->name), line);
		m->deps = colon + 1;
	}
	/* txt stays allocated: deps point into it (freed at exit) */
}

static void add_mod(mbp_cpio *c, const char *kdir, struct mod *m, char *order, size_t osize)
{
	if (m->added)
		return;
	if (m->visiting)
		die("dependency cycle at %s", m->name);
	m->visiting = true;
	char deps[4096];
	snprintf(deps, sizeof(deps), "%s", m->deps);
	for (char *save = NULL, *d = strtok_r(deps, " ", &save); d;
	     d = strtok_r(NULL, " ", &save)) {
		struct mod *dm = find_mod(d);
		if (!dm)
			die("%s needs %s, which is not in modules.dep", m->name, d);
		add_mod(c, kdir, dm, order, osize);
	}
	char src[1200], dst[600];
	snprintf(src, sizeof(src), "%s/%s", kdir, m->path);
	const char *base = strrchr(m->path, '/');
	base = base ? base + 1 : m->path;
	snprintf(dst, sizeof(dst), "lib/moonbox/modules/%s", base);
	size_t len;
	uint8_t *data = slurp(src, &len);
	mbp_err err = { 0 };
	if (mbp_cpio_add_file(c, dst, 0644, 0, 0, data, len, &err) < 0)
		die("%s", err.msg);
	free(data);
	char stem[600];
	snprintf(stem, sizeof(stem), "%s", base);
	char *dot = strstr(stem, ".ko");
	if (dot)
		*dot = 0;
	size_t ol = strlen(order);
	snprintf(order + ol, osize - ol, "%s\n", stem);
	m->added = true;
	m->visiting = false;
}

static void write_out(const char *out, const uint8_t *data, size_t len, bool gz)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", out);
	if (gz) {
		gzFile g = gzopen(tmp, "wb9");
		if (!g)
			die("%s: cannot open", tmp);
		size_t off = 0;
		while (off < len) {
			unsigned n = len - off > (1u << 30) ? (1u << 30) : (unsigned)(len - off);
			if (gzwrite(g, data + off, n) != (int)n)
				die("%s: gzwrite failed", tmp);
			off += n;
		}
		if (gzclose(g) != Z_OK)
			die("%s: gzclose failed", tmp);
		/* The kernel only looks for an uncompressed archive appended after a compressed
		 * one at a 4-byte aligned offset (and skips zero bytes): pad to 512 so that the
		 * per-VM boot archive can simply be concatenated. */
		int fd = open(tmp, O_WRONLY | O_APPEND | O_CLOEXEC);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0)
			die("%s: %s", tmp, strerror(errno));
		static const uint8_t zeros[512];
		size_t pad = (512 - (size_t)st.st_size % 512) % 512;
		if (pad && write(fd, zeros, pad) != (ssize_t)pad)
			die("pad %s: %s", tmp, strerror(errno));
		close(fd);
	} else {
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			die("%s: %s", tmp, strerror(errno));
		size_t off = 0;
		while (off < len) {
			ssize_t w = write(fd, data + off, len - off);
			if (w < 0)
				die("write %s: %s", tmp, strerror(errno));
			off += (size_t)w;
		}
		close(fd);
	}
	if (rename(tmp, out) < 0)
		die("rename %s: %s", out, strerror(errno));
}

int main(int argc, char **argv)
{
	const char *out = NULL, *init = NULL, *kdir = NULL, *bootcfg = NULL;
	const char **wanted = calloc((size_t)argc + 1, sizeof(char *));
	int nwanted = 0;
	static const struct option opts[] = {
		{ "output", required_argument, NULL, 'o' },
		{ "init", required_argument, NULL, 'i' },
		{ "kmod-dir", required_argument, NULL, 'k' },
		{ "module", required_argument, NULL, 'm' },
		{ "boot-config", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
		switch (ch) {
		case 'o':
			out = optarg;
			break;
		case 'i':
			init = optarg;
			break;
		case 'k':
			kdir = optarg;
			break;
		case 'm':
			wanted[nwanted++] = optarg;
			break;
		case 'b':
			bootcfg = optarg;
			break;
		default:
			die("usage: see the comment at the top of mb-mkinitramfs.c");
		}
	}
	if (!out)
		die("-o OUT is required");
	mbp_err err = { 0 };
	if (bootcfg) {
		json_error_t je;
		json_t *cfg = json_load_file(bootcfg, 0, &je);
		if (!cfg)
			die("%s: %s", bootcfg, je.text);
		uint8_t *buf;
		size_t len;
		if (mbp_cpio_boot_config(cfg, &buf, &len, &err) < 0)
			die("%s", err.msg);
		write_out(out, buf, len, false);
		free(buf);
		json_decref(cfg);
		free(wanted);
		return 0;
	}
	if (!init)
		die("--init PATH is required");
	mbp_cpio c;
	mbp_cpio_init(&c);
	static const char *dirs[] = {
		"dev", "proc",        "sys", "run",         "tmp",
		"etc", "etc/moonbox", "lib", "lib/moonbox", "lib/moonbox/modules",
		"sbin"
	};
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		mode_t mode = strcmp(dirs[i], "tmp") == 0 ? 01777 : 0755;
		if (strcmp(dirs[i], "etc/moonbox") == 0)
			mode = 0700;
		if (mbp_cpio_add_dir(&c, dirs[i], mode, 0, 0, &err) < 0)
			die("%s", err.msg);
	}
	/* The kernel opens /dev/console for init's stdio before devtmpfs is mounted. */
	if (mbp_cpio_add_node(&c, "dev/console", S_IFCHR, 0600, 5, 1, &err) < 0 ||
	    mbp_cpio_add_node(&c, "dev/null", S_IFCHR, 0666, 1, 3, &err) < 0)
		die("%s", err.msg);
	size_t len;
	uint8_t *data = slurp(init, &len);
	if (mbp_cpio_add_file(&c, "init", 0755, 0, 0, data, len, &err) < 0 ||
	    mbp_cpio_add_symlink(&c, "sbin/init", "/init", &err) < 0)
		die("%s", err.msg);
	free(data);
	if (nwanted) {
		if (!kdir)
			die("--module needs --kmod-dir");
		load_dep(kdir);
		char *order = calloc(1, 65536);
		if (!order)
			die("out of memory");
		for (int i = 0; i < nwanted; i++) {
			struct mod *m = find_mod(wanted[i]);
			if (!m)
				die("module %s not found in %s/modules.dep", wanted[i], kdir);
			add_mod(&c, kdir, m, order, 65536);
		}
		if (mbp_cpio_add_file(&c, "lib/moonbox/modules.order", 0644, 0, 0, order,
		                      strlen(order), &err) < 0)
			die("%s", err.msg);
		fprintf(stderr, "mb-mkinitramfs: modules (load order):\n%s", order);
		free(order);
	}
	if (mbp_cpio_finish(&c, &err) < 0)
		die("%s", err.msg);
	size_t ol = strlen(out);
	bool gz = ol > 3 && strcmp(out + ol - 3, ".gz") == 0;
	write_out(out, c.buf, c.len, gz);
	mbp_cpio_free(&c);
	free(wanted);
	return 0;
}
