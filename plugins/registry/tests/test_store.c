#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "digest.h"
#include "store.h"

static char dir[] = "/tmp/mbr-store-XXXXXX";
static mbr_store *st;

static int setup(void **state)
{
	if (!mkdtemp(dir))
		return -1;
	char root[200];
	snprintf(root, sizeof(root), "%s/images", dir);
	st = mbr_store_open(root, NULL);
	return st ? 0 : -1;
}

static int teardown(void **state)
{
	mbr_store_free(st);
	return mbr_rm_tree(dir, NULL);
}

static void test_sha256(void **state)
{
	char d[MBR_DIGEST_LEN + 1];
	assert_int_equal(mbr_sha256_buf("", 0, d), 0);
	assert_string_equal(
	    d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	mbr_sha256 *h = mbr_sha256_new();
	mbr_sha256_update(h, "ab", 2);
	mbr_sha256_update(h, "c", 1);
	mbr_sha256_final(h, d);
	assert_string_equal(
	    d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	mbr_sha256_free(h);
	assert_int_equal(
	    mbr_digest_parse(
	        "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", NULL,
	        NULL),
	    -EINVAL);
	assert_int_equal(mbr_digest_parse("sha512:00", NULL, NULL), -EINVAL);
}

#define ABC "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static void test_write_verify(void **state)
{
	mb_err err;
	mbr_blobw *w = mbr_blobw_open(st, ABC, 3, &err);
	assert_non_null(w);
	assert_int_equal(mbr_blobw_prepare(w, false, &err), 0);
	assert_int_equal(mbr_blobw_write(w, "ab", 2, &err), 0);
	assert_false(mbr_store_has_blob(st, ABC, NULL)); /* nothing visible before finish */
	assert_int_equal(mbr_blobw_write(w, "c", 1, &err), 0);
	assert_int_equal(mbr_blobw_write(w, "d", 1, &err), -EBADMSG); /* over the size */
	assert_int_equal(mbr_blobw_finish(w, &err), 0);
	mbr_blobw_close(w, false);
	int64_t size;
	assert_true(mbr_store_has_blob(st, ABC, &size));
	assert_int_equal(size, 3);
	assert_int_equal(mbr_store_verify(st, ABC, &err), 0);
}

static void test_mismatch_and_truncation(void **state)
{
	mb_err err;
	const char *dg = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
	mbr_blobw *w = mbr_blobw_open(st, dg, -1, &err);
	mbr_blobw_prepare(w, false, &err);
	mbr_blobw_write(w, "xyz", 3, &err);
	assert_int_equal(mbr_blobw_finish(w, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "digest mismatch"));
	mbr_blobw_close(w, true);
	assert_false(mbr_store_has_blob(st, dg, NULL));
	char p[300];
	snprintf(p, sizeof(p),
	         "%s/0000000000000000000000000000000000000000000000000000000000000000.partial",
	         st->tmp);
	assert_int_equal(access(p, F_OK), -1); /* partial removed */

	w = mbr_blobw_open(st, ABC, 3, &err);
	mbr_blobw_prepare(w, false, &err);
	mbr_blobw_write(w, "ab", 2, &err);
	assert_int_equal(mbr_blobw_finish(w, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "truncated"));
	mbr_blobw_close(w, true);
}

static void test_resume(void **state)
{
	mb_err err;
	const char *hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	char bp[300];
	snprintf(bp, sizeof(bp), "%s/%s", st->blobs, hex);
	unlink(bp);
	mbr_blobw *w = mbr_blobw_open(st, ABC, 3, &err);
	mbr_blobw_prepare(w, false, &err);
	mbr_blobw_write(w, "a", 1, &err);
	mbr_blobw_close(w, false); /* interrupted: partial kept */
	w = mbr_blobw_open(st, ABC, 3, &err);
	assert_int_equal(mbr_blobw_prepare(w, true, &err), 0);
	assert_int_equal(mbr_blobw_offset(w), 1);
	mbr_blobw_write(w, "bc", 2, &err);
	assert_int_equal(mbr_blobw_finish(w, &err), 0);
	mbr_blobw_close(w, false);
	assert_int_equal(mbr_store_verify(st, ABC, &err), 0);
	/* a corrupted stored blob is detected and removed */
	FILE *f = fopen(bp, "w");
	fputs("abd", f);
	fclose(f);
	assert_int_equal(mbr_store_verify(st, ABC, &err), -EBADMSG);
	assert_false(mbr_store_has_blob(st, ABC, NULL));
}

static void test_gc(void **state)
{
	mb_err err;
	assert_int_equal(mbr_store_put_buf(st, ABC, "abc", 3, &err), 0);
	assert_int_equal(mbr_store_put_buf(st, ABC, "abd", 3, &err), -EBADMSG);
	const char *e = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
	assert_int_equal(mbr_store_put_buf(st, e, "", 0, &err), 0);
	char *disk = mbr_store_disk_path(st, e);
	FILE *f = fopen(disk, "w");
	fclose(f);
	char *t = mbr_store_tmp_path(st, "unpack");
	mkdir(t, 0700);
	mbr_strset live = { 0 }, disks = { 0 };
	mbr_strset_add(&live, ABC);
	struct mbr_gc_stats gs;
	assert_int_equal(mbr_store_gc(st, &live, &disks, time(NULL) - 3600, false, &gs, &err), 0);
	assert_int_equal(gs.blobs_removed, 0); /* too recent: could belong to a running pull */
	assert_int_equal(mbr_store_gc(st, &live, &disks, 0, true, &gs, &err), 0);
	assert_int_equal(gs.blobs_removed, 1);
	assert_int_equal(gs.disks_removed, 1);
	assert_int_equal(gs.tmp_removed, 1);
	assert_true(mbr_store_has_blob(st, ABC, NULL));
	assert_false(mbr_store_has_blob(st, e, NULL));
	assert_int_equal(access(disk, F_OK), -1);
	assert_int_equal(access(t, F_OK), -1);
	free(disk);
	free(t);
	mbr_strset_free(&live);
	mbr_strset_free(&disks);
}

static void make_old(const char *path, bool is_dir)
{
	if (is_dir)
		assert_int_equal(mkdir(path, 0700), 0);
	else
		assert_int_equal(mbr_write_file_atomic(path, "x", 1, 0600, NULL), 0);
	struct timespec ts[2] = { { time(NULL) - 60, 0 }, { time(NULL) - 60, 0 } };
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* Start-up sweep: leftovers of an earlier run go, in tmp/ and in the RAM directory;
 * partial downloads and anything newer than `before` stay. */
static void test_sweep_tmp(void **state)
{
	char ram[200], p[400];
	snprintf(ram, sizeof(ram), "%s/ram", dir);
	assert_int_equal(mkdir(ram, 0700), 0);
	assert_int_equal(mbr_store_set_ram_dir(st, ram, NULL), 0);
	assert_non_null(st->ram_tmp);
	assert_int_equal(strncmp(st->ram_tmp, ram, strlen(ram)), 0);
	char *rp = mbr_store_ram_path(st, "unpack");
	assert_non_null(rp);
	assert_int_equal(strncmp(rp, st->ram_tmp, strlen(st->ram_tmp)), 0);
	free(rp);
	assert_int_equal(mbr_mkdir_p(st->ram_tmp, 0700, NULL), 0);

	snprintf(p, sizeof(p), "%s/unpack-old", st->tmp);
	make_old(p, true);
	snprintf(p, sizeof(p), "%s/unpack-old", st->ram_tmp);
	make_old(p, true);
	snprintf(p, sizeof(p), "%s/abc.partial", st->tmp);
	make_old(p, false);
	snprintf(p, sizeof(p), "%s/unpack-new", st->tmp);
	assert_int_equal(mkdir(p, 0700), 0);

	struct mbr_gc_stats gs = { 0 };
	mbr_store_sweep_tmp(st, time(NULL) - 5, &gs);
	assert_int_equal(gs.tmp_removed, 2);
	snprintf(p, sizeof(p), "%s/unpack-old", st->tmp);
	assert_int_equal(access(p, F_OK), -1);
	snprintf(p, sizeof(p), "%s/unpack-old", st->ram_tmp);
	assert_int_equal(access(p, F_OK), -1);
	snprintf(p, sizeof(p), "%s/abc.partial", st->tmp);
	assert_int_equal(access(p, F_OK), 0);
	snprintf(p, sizeof(p), "%s/unpack-new", st->tmp);
	assert_int_equal(access(p, F_OK), 0);

	assert_int_equal(mbr_store_set_ram_dir(st, NULL, NULL), 0);
	assert_null(st->ram_tmp);
	assert_null(mbr_store_ram_path(st, "unpack"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256),
		cmocka_unit_test(test_write_verify),
		cmocka_unit_test(test_mismatch_and_truncation),
		cmocka_unit_test(test_resume),
		cmocka_unit_test(test_gc),
		cmocka_unit_test(test_sweep_tmp),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
