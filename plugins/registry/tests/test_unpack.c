/* The safe unpacker: one test per attack, then correctness. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>

#include "tarw.h"
#include "unpack.h"
#include "util.h"

static char base[64];
static char root[128], outside[128], layer[128];
static struct mbr_unpack_opts opts = { .keep_owners = true, .xattrs = true };

static int setup(void **state)
{
	snprintf(base, sizeof(base), "/tmp/mbr-unpack-XXXXXX");
	if (!mkdtemp(base))
		return -1;
	snprintf(root, sizeof(root), "%s/root", base);
	snprintf(outside, sizeof(outside), "%s/outside", base);
	snprintf(layer, sizeof(layer), "%s/layer.tar", base);
	mkdir(root, 0755);
	mkdir(outside, 0755);
	char p[256];
	snprintf(p, sizeof(p), "%s/secret", outside);
	FILE *f = fopen(p, "w");
	fputs("precious", f);
	fclose(f);
	return 0;
}

static int teardown(void **state)
{
	return mbr_rm_tree(base, NULL);
}

static int apply(mb_err *err)
{
	struct mbr_unpack_stats st;
	return mbr_unpack_path(root, layer, &opts, &st, err);
}

static bool exists_in(const char *dir, const char *rel)
{
	char p[8192];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, rel);
	return lstat(p, &st) == 0;
}

static char *slurp(const char *dir, const char *rel)
{
	static char buf[256];
	char p[8192];
	snprintf(p, sizeof(p), "%s/%s", dir, rel);
	FILE *f = fopen(p, "r");
	if (!f)
		return NULL;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The outside directory holds exactly "secret" with its content and one link. */
static void assert_outside_untouched(void)
{
	char p[256];
	struct stat st;
	snprintf(p, sizeof(p), "%s/secret", outside);
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_string_equal(slurp(outside, "secret"), "precious");
	int n = 0;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "find %s -mindepth 1 | wc -l", outside);
	FILE *c = popen(cmd, "r");
	assert_int_equal(fscanf(c, "%d", &n), 1);
	pclose(c);
	assert_int_equal(n, 1);
	snprintf(cmd, sizeof(cmd), "find %s -mindepth 1 -maxdepth 1 | wc -l", base);
	c = popen(cmd, "r");
	assert_int_equal(fscanf(c, "%d", &n), 1);
	pclose(c);
	assert_int_equal(n, 3); /* root, outside, layer.tar */
}

/* ---- attacks ------------------------------------------------------------------------- */

static void attack_dotdot(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_file(a, "ok", "fine");
	tw_file(a, "../outside/pwned", "x");
	tw_close(a);
	assert_int_equal(apply(&err), -EINVAL);
	assert_non_null(strstr(err.msg, ".."));
	a = tw_open(layer, NULL, 0);
	tw_file(a, "a/b/../../../outside/pwned", "x");
	tw_close(a);
	assert_int_equal(apply(&err), -EINVAL);
	assert_outside_untouched();
}

static void attack_absolute(void **state)
{
	mb_err err;
	char abs[256];
	snprintf(abs, sizeof(abs), "%s/pwned", outside);
	struct archive *a = tw_open(layer, NULL, 0);
	tw_file(a, abs, "x");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_outside_untouched();
	assert_true(exists_in(root, abs + 1)); /* landed inside the root */
}

static void attack_symlink_then_write(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_symlink(a, "evil", outside); /* absolute target */
	tw_file(a, "evil/pwned", "x");
	tw_close(a);
	int r = apply(&err);
	(void)r; /* may fail (dangling inside root) or land inside; never outside */
	assert_outside_untouched();

	char rel[512] = "";
	for (int i = 0; i < 20; i++)
		strcat(rel, "../");
	strcat(rel, outside + 1);
	a = tw_open(layer, NULL, 0);
	tw_symlink(a, "evil2", rel); /* relative climb */
	tw_file(a, "evil2/pwned", "x");
	tw_close(a);
	apply(&err);
	assert_outside_untouched();
	a = tw_open(layer, NULL, 0);
	tw_symlink(a, "evil3", "..");
	tw_file(a, "evil3/pwned", "x");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_outside_untouched();
	/* "evil3" -> ".." from the root is the root itself */
	assert_true(exists_in(root, "pwned"));
}

static void attack_symlink_parent_across_layers(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_symlink(a, "lib", outside);
	tw_dir(a, "etc");
	tw_symlink(a, "etc2", "/etc");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	a = tw_open(layer, NULL, 0);
	tw_file(a, "lib/pwned", "x");
	tw_close(a);
	apply(&err);
	assert_outside_untouched();
	/* a symlink to a directory inside the root is followed inside the root */
	a = tw_open(layer, NULL, 0);
	tw_file(a, "etc2/passwd", "root:x:0:0");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_string_equal(slurp(root, "etc/passwd"), "root:x:0:0");
	assert_false(exists_in("/etc", "passwd") && !strcmp(slurp("/etc", "passwd"), "root:x:0:0"));
}

static void attack_symlink_final_component(void **state)
{
	mb_err err;
	char target[256];
	snprintf(target, sizeof(target), "%s/secret", outside);
	struct archive *a = tw_open(layer, NULL, 0);
	tw_symlink(a, "f", target);
	tw_file(a, "f", "overwritten?"); /* must replace the link, not write through it */
	tw_symlink(a, "g", target);
	tw_dir(a, "g"); /* same for a directory */
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_outside_untouched();
	assert_string_equal(slurp(root, "f"), "overwritten?");
	struct stat st;
	char p[256];
	snprintf(p, sizeof(p), "%s/g", root);
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
}

static void attack_hardlink_outside(void **state)
{
	mb_err err;
	char abs[256];
	snprintf(abs, sizeof(abs), "%s/secret", outside);
	struct archive *a = tw_open(layer, NULL, 0);
	tw_hardlink(a, "h", "../outside/secret");
	tw_close(a);
	assert_int_equal(apply(&err), -EINVAL);
	a = tw_open(layer, NULL, 0);
	tw_hardlink(a, "h", abs); /* absolute: resolved inside the root, where it is missing */
	tw_close(a);
	assert_int_equal(apply(&err), -EINVAL);
	a = tw_open(layer, NULL, 0);
	tw_symlink(a, "s", abs);
	tw_hardlink(a, "h2", "s"); /* links the symlink inode itself */
	tw_symlink(a, "sdir", outside);
	tw_hardlink(a, "h3", "sdir/secret"); /* parent symlink resolved inside the root */
	tw_close(a);
	apply(&err);
	assert_outside_untouched();
}

static void attack_device_nodes(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_dev(a, "dev/mem", AE_IFCHR, 1, 1);
	tw_dev(a, "dev/sda", AE_IFBLK, 8, 0);
	tw_dev(a, "fifo", AE_IFIFO, 0, 0);
	tw_close(a);
	struct mbr_unpack_stats st;
	assert_int_equal(mbr_unpack_path(root, layer, &opts, &st, &err), 0);
	assert_false(exists_in(root, "dev/mem"));
	assert_false(exists_in(root, "dev/sda"));
	assert_true(exists_in(root, "fifo"));
	assert_int_equal(st.skipped, 2);
	if (geteuid() == 0) {
		struct mbr_unpack_opts o = opts;
		o.allow_devices = true;
		assert_int_equal(mbr_unpack_path(root, layer, &o, &st, &err), 0);
		struct stat sb;
		char p[256];
		snprintf(p, sizeof(p), "%s/dev/mem", root);
		assert_int_equal(lstat(p, &sb), 0);
		assert_true(S_ISCHR(sb.st_mode));
	}
}

static void attack_whiteout_dotdot(void **state)
{
	mb_err err;
	const char *names[] = { ".wh..", "sub/.wh..", ".wh.", "../.wh.outside",
		                ".wh.."
		                "/x" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct archive *a = tw_open(layer, NULL, 0);
		tw_dir(a, "sub");
		tw_file(a, names[i], "");
		tw_close(a);
		int r = apply(&err);
		if (i == 4) /* ".wh../x": a directory named ".wh.." holding "x"; harmless */
			assert_int_equal(r, 0);
		else
			assert_int_equal(r, -EINVAL);
		assert_outside_untouched();
		assert_true(exists_in(base, "root"));
	}
	/* whiteouts through a symlinked parent stay inside the root */
	struct archive *a = tw_open(layer, NULL, 0);
	tw_symlink(a, "evil", outside);
	tw_file(a, "evil/.wh.secret", "");
	tw_file(a, "evil/.wh..wh..opq", "");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_outside_untouched();
}

static void attack_huge_names(void **state)
{
	mb_err err;
	char comp[400];
	memset(comp, 'a', 300);
	comp[300] = '\0';
	struct archive *a = tw_open(layer, NULL, 0);
	tw_file(a, comp, "x");
	tw_close(a);
	assert_int_equal(apply(&err), -ENAMETOOLONG);
	static char deep[9000];
	deep[0] = '\0';
	while (strlen(deep) < 8000)
		strcat(deep, "abcdefghijklmnopqrstuvwxyz0123456789/");
	strcat(deep, "f");
	a = tw_open(layer, NULL, 0);
	tw_file(a, deep, "x");
	tw_close(a);
	assert_int_equal(apply(&err), -ENAMETOOLONG);
	assert_outside_untouched();
}

static void attack_corrupt(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, "gzip", 0);
	for (int i = 0; i < 50; i++) {
		char n[32], d[2000];
		snprintf(n, sizeof(n), "f%d", i);
		memset(d, 'a' + i % 26, sizeof(d) - 1);
		d[sizeof(d) - 1] = '\0';
		tw_file(a, n, d);
	}
	tw_close(a);
	struct stat st;
	stat(layer, &st);
	assert_int_equal(truncate(layer, st.st_size / 2), 0);
	assert_int_equal(apply(&err), -EBADMSG);
	FILE *f = fopen(layer, "w");
	fputs("this is not a tar archive at all, just text that goes on and on......", f);
	fclose(f);
	assert_true(apply(&err) < 0);
}

/* ---- correctness --------------------------------------------------------------------- */

static void test_whiteouts(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_dir(a, "a");
	tw_file(a, "a/file1", "1");
	tw_file(a, "a/file2", "2");
	tw_dir(a, "b");
	tw_file(a, "b/x", "x");
	tw_dir(a, "d");
	tw_file(a, "d/old1", "o");
	tw_dir(a, "d/sub");
	tw_file(a, "d/sub/old2", "o");
	tw_dir(a, "e");
	tw_file(a, "e/old", "o");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	a = tw_open(layer, "gzip", 0);
	tw_file(a, "a/.wh.file1", "");
	tw_file(a, ".wh.b", "");
	tw_file(a, "d/new-before", "n"); /* same-layer entries survive the opaque marker */
	tw_file(a, "d/.wh..wh..opq", "");
	tw_dir(a, "d/sub");
	tw_file(a, "d/sub/new-after", "n");
	tw_file(a, "e/.wh..wh..opq", "");
	tw_file(a, ".wh.not-there", "");
	tw_close(a);
	struct mbr_unpack_stats st;
	assert_int_equal(mbr_unpack_path(root, layer, &opts, &st, &err), 0);
	assert_false(exists_in(root, "a/file1"));
	assert_true(exists_in(root, "a/file2"));
	assert_false(exists_in(root, "b"));
	assert_false(exists_in(root, "d/old1"));
	assert_false(exists_in(root, "d/sub/old2"));
	assert_true(exists_in(root, "d/new-before"));
	assert_true(exists_in(root, "d/sub/new-after"));
	assert_true(exists_in(root, "e"));
	assert_false(exists_in(root, "e/old"));
	assert_false(exists_in(root, "a/.wh.file1"));
	assert_false(exists_in(root, "d/.wh..wh..opq"));
	assert_int_equal(st.whiteouts, 5);
}

static void test_links_and_names(void **state)
{
	mb_err err;
	char longpath[600] = "";
	for (int i = 0; i < 5; i++)
		strcat(longpath, "a-directory-name-that-is-long-enough-to-need-pax-headers/");
	strcat(longpath, "file-at-the-end");
	char longtarget[400];
	memset(longtarget, 't', 200);
	longtarget[200] = '\0';
	for (int fmt = 0; fmt < 2; fmt++) {
		int format = fmt ? ARCHIVE_FORMAT_TAR_GNUTAR : ARCHIVE_FORMAT_TAR_PAX_RESTRICTED;
		struct archive *a = tw_open(layer, NULL, format);
		tw_file(a, "./orig", "data");
		tw_hardlink(a, "./hard", "./orig");
		tw_symlink(a, "sym", "orig");
		tw_symlink(a, "abs", "/etc/hostname");
		tw_symlink(a, "longsym", longtarget);
		tw_file(a, longpath, "deep");
		tw_close(a);
		assert_int_equal(apply(&err), 0);
		struct stat s1, s2;
		char p1[256], p2[256];
		snprintf(p1, sizeof(p1), "%s/orig", root);
		snprintf(p2, sizeof(p2), "%s/hard", root);
		assert_int_equal(stat(p1, &s1), 0);
		assert_int_equal(stat(p2, &s2), 0);
		assert_int_equal(s1.st_ino, s2.st_ino);
		char t[512];
		snprintf(p1, sizeof(p1), "%s/abs", root);
		ssize_t n = readlink(p1, t, sizeof(t));
		assert_int_equal(n, strlen("/etc/hostname"));
		snprintf(p1, sizeof(p1), "%s/longsym", root);
		n = readlink(p1, t, sizeof(t));
		assert_int_equal(n, 200);
		assert_string_equal(slurp(root, longpath), "deep");
		assert_string_equal(slurp(root, "sym"), "data");
	}
}

static void test_modes_owners_xattrs(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_entry(a, "suid", AE_IFREG, 04755, "x", NULL, NULL, 1000, 2000);
	tw_entry(a, "private", AE_IFDIR, 0700, NULL, NULL, NULL, 33, 33);
	tw_entry(a, "link", AE_IFLNK, 0777, NULL, "suid", NULL, 7, 8);
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "withxattr");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0600);
	archive_entry_set_size(e, 1);
	archive_entry_xattr_add_entry(e, "user.mb", "v", 1);
	archive_entry_xattr_add_entry(e, "trusted.overlay.opaque", "y", 1);
	archive_entry_xattr_add_entry(e, "user.overlay.redirect", "/x", 2);
	archive_write_header(a, e);
	archive_write_data(a, "z", 1);
	archive_entry_free(e);
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	struct stat st;
	char p[256];
	snprintf(p, sizeof(p), "%s/suid", root);
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 04755);
	if (geteuid() == 0) {
		assert_int_equal(st.st_uid, 1000);
		assert_int_equal(st.st_gid, 2000);
	}
	assert_int_equal(st.st_mtime, 1700000000);
	snprintf(p, sizeof(p), "%s/private", root);
	assert_int_equal(lstat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_int_equal(st.st_mtime, 1700000000);
	if (geteuid() == 0)
		assert_int_equal(st.st_uid, 33);
	snprintf(p, sizeof(p), "%s/link", root);
	assert_int_equal(lstat(p, &st), 0);
	if (geteuid() == 0)
		assert_int_equal(st.st_uid, 7);
	snprintf(p, sizeof(p), "%s/withxattr", root);
	char v[8];
	ssize_t n = getxattr(p, "user.mb", v, sizeof(v));
	if (n >= 0 || errno != ENOTSUP)
		assert_int_equal(n, 1);
	assert_int_equal(getxattr(p, "trusted.overlay.opaque", v, sizeof(v)), -1);
	assert_int_equal(getxattr(p, "user.overlay.redirect", v, sizeof(v)), -1);
}

static void test_compressions_and_trailer(void **state)
{
	mb_err err;
	const char *filters[] = { NULL, "gzip", "zstd" };
	for (int i = 0; i < 3; i++) {
		char name[32];
		snprintf(name, sizeof(name), "c%d", i);
		struct archive *a = tw_open(layer, filters[i], 0);
		tw_file(a, name, filters[i] ? filters[i] : "plain");
		tw_close(a);
		assert_int_equal(apply(&err), 0);
		assert_string_equal(slurp(root, name), filters[i] ? filters[i] : "plain");
	}
	/* a layer without the end-of-archive blocks (umoci 0.4.7 insert) still applies */
	struct archive *a = tw_open(layer, NULL, ARCHIVE_FORMAT_TAR_USTAR);
	tw_file(a, "notrailer", "ok");
	tw_close(a);
	struct stat st;
	stat(layer, &st);
	assert_int_equal(truncate(layer, st.st_size - 1024), 0);
	assert_int_equal(apply(&err), 0);
	assert_string_equal(slurp(root, "notrailer"), "ok");
	/* an empty layer */
	FILE *f = fopen(layer, "w");
	fclose(f);
	assert_int_equal(apply(&err), 0);
}

static void test_replace_types(void **state)
{
	mb_err err;
	struct archive *a = tw_open(layer, NULL, 0);
	tw_dir(a, "x");
	tw_file(a, "x/inner", "i");
	tw_file(a, "y", "file");
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	a = tw_open(layer, NULL, 0);
	tw_file(a, "x", "now a file");
	tw_dir(a, "y");
	tw_file(a, "y/child", "c");
	tw_entry(a, ".", AE_IFDIR, 0755, NULL, NULL, NULL, 0, 0);
	tw_close(a);
	assert_int_equal(apply(&err), 0);
	assert_string_equal(slurp(root, "x"), "now a file");
	assert_string_equal(slurp(root, "y/child"), "c");
	/* the root cannot be replaced by a file */
	a = tw_open(layer, NULL, 0);
	tw_file(a, "./", "x");
	tw_close(a);
	assert_true(apply(&err) < 0);
}

static void test_clean_path(void **state)
{
	char out[4096];
	assert_int_equal(mbr_clean_path("./a//b/./c/", out, sizeof(out), NULL), 0);
	assert_string_equal(out, "a/b/c");
	assert_int_equal(mbr_clean_path("/", out, sizeof(out), NULL), 0);
	assert_string_equal(out, "");
	assert_int_equal(mbr_clean_path("a/../b", out, sizeof(out), NULL), -EINVAL);
	assert_int_equal(mbr_clean_path("...", out, sizeof(out), NULL), 0);
	assert_string_equal(out, "...");
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(attack_dotdot),
		T(attack_absolute),
		T(attack_symlink_then_write),
		T(attack_symlink_parent_across_layers),
		T(attack_symlink_final_component),
		T(attack_hardlink_outside),
		T(attack_device_nodes),
		T(attack_whiteout_dotdot),
		T(attack_huge_names),
		T(attack_corrupt),
		T(test_whiteouts),
		T(test_links_and_names),
		T(test_modes_owners_xattrs),
		T(test_compressions_and_trailer),
		T(test_replace_types),
		T(test_clean_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
