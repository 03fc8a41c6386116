/* docker save and OCI-layout archive import. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "import.h"
#include "tarw.h"

static char base[64];
static char archive_path[128];
static mbr_store *st;
static char *layer_data;
static size_t layer_len;
static char layer_digest[MBR_DIGEST_LEN + 1];

static int setup(void **state)
{
	snprintf(base, sizeof(base), "/tmp/mbr-import-XXXXXX");
	if (!mkdtemp(base))
		return -1;
	char p[128];
	snprintf(p, sizeof(p), "%s/images", base);
	st = mbr_store_open(p, NULL);
	snprintf(archive_path, sizeof(archive_path), "%s/image.tar", base);
	/* one uncompressed layer */
	snprintf(p, sizeof(p), "%s/layer.tar", base);
	struct archive *a = tw_open(p, NULL, 0);
	tw_dir(a, "bin");
	tw_file(a, "bin/hello", "#!/bin/sh\necho hello\n");
	tw_close(a);
	mbr_read_file(p, 1 << 20, &layer_data, &layer_len, NULL);
	mbr_sha256_buf(layer_data, layer_len, layer_digest);
	return st ? 0 : -1;
}

static int teardown(void **state)
{
	free(layer_data);
	mbr_store_free(st);
	return mbr_rm_tree(base, NULL);
}

static char *config_json(const char *diff_id)
{
	return mbr_sprintf(
	    "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Cmd\":"
	    "[\"/bin/hello\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"%s\"]}}",
	    diff_id);
}

static void write_docker_save(const char *filter, const char *diff_id, const char *layers_path)
{
	char *cfg = config_json(diff_id);
	char cdg[MBR_DIGEST_LEN + 1];
	mbr_sha256_buf(cfg, strlen(cfg), cdg);
	char cfgname[100];
	snprintf(cfgname, sizeof(cfgname), "%s.json", cdg + 7);
	char *mf = mbr_sprintf("[{\"Config\":\"%s\",\"RepoTags\":[\"busybox:latest\","
	                       "\"localhost:5000/x/y:1\"],\"Layers\":[\"%s\"]}]",
	                       cfgname, layers_path);
	struct archive *a = tw_open(archive_path, filter, 0);
	tw_dir(a, "l0");
	tw_file_n(a, "l0/layer.tar", layer_data, layer_len);
	tw_dir(a, "l1");
	tw_symlink(a, "l1/layer.tar", "../l0/layer.tar"); /* legacy path as a symlink */
	tw_file(a, cfgname, cfg);
	tw_file(a, "manifest.json", mf);
	tw_file(a, "repositories", "{}");
	tw_close(a);
	free(cfg);
	free(mf);
}

static void test_docker_save(void **state)
{
	const char *filters[] = { NULL, "gzip" };
	for (int i = 0; i < 2; i++) {
		write_docker_save(filters[i], layer_digest, "l1/layer.tar");
		struct mbr_import_result res;
		mb_err err = { 0 };
		int r = mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err);
		if (r < 0)
			fail_msg("import: %s", err.msg);
		assert_string_equal(res.format, "docker");
		assert_int_equal(res.n, 1);
		struct mbr_import_image *img = &res.images[0];
		assert_int_equal(img->nrefs, 2);
		assert_string_equal(img->refs[0], "busybox:latest");
		assert_true(mbr_store_has_blob(st, img->config_digest, NULL));
		assert_true(mbr_store_has_blob(st, layer_digest, NULL));
		assert_true(mbr_store_has_blob(st, img->manifest_digest, NULL));
		struct mbr_manifest m;
		assert_int_equal(
		    mbr_manifest_parse(img->manifest, img->manifest_len, NULL, &m, &err), 0);
		assert_int_equal(m.nlayers, 1);
		assert_string_equal(m.layers[0].digest, layer_digest);
		assert_string_equal(m.layers[0].media_type, MBR_MT_OCI_LAYER);
		assert_string_equal(m.config.digest, img->config_digest);
		mbr_manifest_free(&m);
		mbr_import_result_free(&res);
	}
	/* the scratch directory is gone */
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s/images/tmp)\"", base);
	assert_int_equal(system(cmd), 0);
}

static void test_docker_save_bad(void **state)
{
	struct mbr_import_result res;
	mb_err err;
	write_docker_save(NULL,
	                  "sha256:0000000000000000000000000000000000000000000000000000000000000000",
	                  "l1/layer.tar");
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EBADMSG);
	write_docker_save(NULL, layer_digest, "../../etc/passwd");
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EINVAL);
	write_docker_save(NULL, layer_digest, "/etc/passwd");
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EINVAL);
	assert_non_null(strstr(err.msg, "does not contain"));
	struct archive *a = tw_open(archive_path, NULL, 0);
	tw_file(a, "hello.txt", "not an image");
	tw_close(a);
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EINVAL);
	assert_non_null(strstr(err.msg, "not an image archive"));
	FILE *f = fopen(archive_path, "w");
	fputs("garbage garbage garbage", f);
	fclose(f);
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EINVAL);
}

static void add_blob(struct archive *a, const char *data, size_t len, char out[MBR_DIGEST_LEN + 1])
{
	mbr_sha256_buf(data, len, out);
	char p[120];
	snprintf(p, sizeof(p), "blobs/sha256/%s", out + 7);
	tw_file_n(a, p, data, len);
}

static void write_oci(bool corrupt)
{
	struct archive *a = tw_open(archive_path, NULL, 0);
	tw_file(a, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
	char ld[MBR_DIGEST_LEN + 1], cd[MBR_DIGEST_LEN + 1], md[MBR_DIGEST_LEN + 1],
	    md2[MBR_DIGEST_LEN + 1], ixd[MBR_DIGEST_LEN + 1];
	add_blob(a, layer_data, layer_len, ld);
	char *cfg = config_json(ld);
	add_blob(a, cfg, strlen(cfg), cd);
	char *m = mbr_sprintf("{\"schemaVersion\":2,\"config\":{\"mediaType\":\"%s\",\"digest\":"
	                      "\"%s\",\"size\":%zu},\"layers\":[{\"mediaType\":\"%s\",\"digest\":"
	                      "\"%s\",\"size\":%zu}]}",
	                      MBR_MT_OCI_CONFIG, cd, strlen(cfg), MBR_MT_OCI_LAYER, ld, layer_len);
	add_blob(a, m, strlen(m), md);
	/* an arm64 image that is not selected: its manifest blob is absent on purpose */
	memcpy(md2, "sha256:1111111111111111111111111111111111111111111111111111111111111111",
	       MBR_DIGEST_LEN + 1);
	char *ix = mbr_sprintf(
	    "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":[{\"mediaType\":\"%s\","
	    "\"digest\":\"%s\",\"size\":9,\"platform\":{\"os\":\"linux\",\"architecture\":"
	    "\"arm64\"}},{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%zu,\"platform\":"
	    "{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}",
	    MBR_MT_OCI_INDEX, MBR_MT_OCI_MANIFEST, md2, MBR_MT_OCI_MANIFEST, md, strlen(m));
	add_blob(a, ix, strlen(ix), ixd);
	char *top = mbr_sprintf("{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"%s\","
	                        "\"digest\":\"%s\",\"size\":%zu,\"annotations\":{\"org."
	                        "opencontainers.image.ref.name\":\"test/multi:1\"}}]}",
	                        MBR_MT_OCI_INDEX, ixd, strlen(ix));
	tw_file(a, "index.json", top);
	if (corrupt) { /* a later entry with the layer's name but other bytes wins */
		char p[120];
		snprintf(p, sizeof(p), "blobs/sha256/%s", ld + 7);
		tw_file(a, p, "tampered");
	}
	tw_close(a);
	free(cfg);
	free(m);
	free(ix);
	free(top);
}

static void test_oci_layout(void **state)
{
	write_oci(false);
	struct mbr_import_result res;
	mb_err err = { 0 };
	int r = mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err);
	if (r < 0)
		fail_msg("import: %s", err.msg);
	assert_string_equal(res.format, "oci");
	assert_int_equal(res.n, 1);
	assert_int_equal(res.images[0].nrefs, 1);
	assert_string_equal(res.images[0].refs[0], "test/multi:1");
	assert_string_equal(res.images[0].media_type, MBR_MT_OCI_MANIFEST);
	assert_true(mbr_store_has_blob(st, res.images[0].manifest_digest, NULL));
	mbr_import_result_free(&res);
	/* arm64 manifest is missing from the archive */
	assert_true(mbr_import_archive(st, archive_path, "linux", "arm64", NULL, &res, &err) < 0);
	write_oci(true);
	assert_int_equal(mbr_import_archive(st, archive_path, NULL, NULL, NULL, &res, &err),
	                 -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_docker_save),
		cmocka_unit_test(test_docker_save_bad),
		cmocka_unit_test(test_oci_layout),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
