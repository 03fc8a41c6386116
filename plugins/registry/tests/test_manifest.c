#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "manifest.h"

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define D3 "sha256:3333333333333333333333333333333333333333333333333333333333333333"

static void test_oci_manifest_no_mediatype(void **state)
{
	/* umoci/skopeo write OCI manifests without a top-level mediaType */
	const char *m =
	    "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"" MBR_MT_OCI_CONFIG
	    "\",\"digest\":\"" D1
	    "\",\"size\":10},\"layers\":[{\"mediaType\":\"" MBR_MT_OCI_LAYER_GZIP
	    "\",\"digest\":\"" D2 "\",\"size\":20},{\"mediaType\":\"" MBR_MT_OCI_LAYER_ZSTD
	    "\",\"digest\":\"" D3 "\",\"size\":30}]}";
	struct mbr_manifest mf;
	mb_err err;
	assert_int_equal(mbr_manifest_parse(m, strlen(m), MBR_MT_OCI_MANIFEST, &mf, &err), 0);
	assert_int_equal(mf.kind, MBR_KIND_MANIFEST);
	assert_string_equal(mf.media_type, MBR_MT_OCI_MANIFEST);
	assert_string_equal(mf.config.digest, D1);
	assert_int_equal(mf.nlayers, 2);
	assert_int_equal(mf.layers[1].size, 30);
	assert_int_equal(mbr_layer_compression(mf.layers[0].media_type), MBR_COMP_GZIP);
	assert_int_equal(mbr_layer_compression(mf.layers[1].media_type), MBR_COMP_ZSTD);
	mbr_manifest_free(&mf);
	/* no content type either: guessed from structure */
	assert_int_equal(mbr_manifest_parse(m, strlen(m), NULL, &mf, &err), 0);
	assert_string_equal(mf.media_type, MBR_MT_OCI_MANIFEST);
	mbr_manifest_free(&mf);
}

static void test_docker_manifest_and_errors(void **state)
{
	const char *m = "{\"schemaVersion\":2,\"mediaType\":\"" MBR_MT_DOCKER_MANIFEST
	                "\",\"config\":{\"mediaType\":\"" MBR_MT_DOCKER_CONFIG "\",\"digest\":\"" D1
	                "\",\"size\":10},\"layers\":[{\"mediaType\":\"" MBR_MT_DOCKER_LAYER
	                "\",\"digest\":\"" D2 "\",\"size\":20}]}";
	struct mbr_manifest mf;
	mb_err err;
	assert_int_equal(mbr_manifest_parse(m, strlen(m), "application/json", &mf, &err), 0);
	assert_string_equal(mf.media_type, MBR_MT_DOCKER_MANIFEST);
	mbr_manifest_free(&mf);

	const char *s1 = "{\"schemaVersion\":1,\"name\":\"x\",\"fsLayers\":[]}";
	assert_int_equal(mbr_manifest_parse(s1, strlen(s1), NULL, &mf, &err), -ENOTSUP);
	assert_non_null(strstr(err.msg, "schema1"));

	const char *bad_digest = "{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:xyz\","
	                         "\"size\":1},\"layers\":[]}";
	assert_int_equal(mbr_manifest_parse(bad_digest, strlen(bad_digest), NULL, &mf, &err),
	                 -EINVAL);
	const char *neg =
	    "{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\",\"size\":-1},\"layers\":[]}";
	assert_int_equal(mbr_manifest_parse(neg, strlen(neg), NULL, &mf, &err), -EINVAL);
	const char *foreign =
	    "{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1
	    "\",\"size\":1},\"layers\":[{\"mediaType\":\"application/"
	    "vnd.docker.image.rootfs.foreign.diff.tar.gzip\",\"digest\":\"" D2 "\",\"size\":1}]}";
	assert_int_equal(mbr_manifest_parse(foreign, strlen(foreign), NULL, &mf, &err), -ENOTSUP);
	assert_int_equal(mbr_manifest_parse("[]", 2, NULL, &mf, &err), -EINVAL);
	assert_int_equal(mbr_manifest_parse("{", 1, NULL, &mf, &err), -EINVAL);
}

static const char *INDEX =
    "{\"schemaVersion\":2,\"mediaType\":\"" MBR_MT_OCI_INDEX "\",\"manifests\":["
    "{\"mediaType\":\"" MBR_MT_OCI_MANIFEST "\",\"digest\":\"" D1
    "\",\"size\":1,\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\",\"variant\":"
    "\"v8\"}},"
    "{\"mediaType\":\"" MBR_MT_OCI_MANIFEST "\",\"digest\":\"" D3
    "\",\"size\":1,\"platform\":{\"architecture\":\"unknown\",\"os\":\"unknown\"}},"
    "{\"mediaType\":\"" MBR_MT_OCI_MANIFEST "\",\"digest\":\"" D2
    "\",\"size\":1,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}}]}";

static void test_index_select(void **state)
{
	struct mbr_manifest ix;
	mb_err err;
	assert_int_equal(mbr_manifest_parse(INDEX, strlen(INDEX), NULL, &ix, &err), 0);
	assert_int_equal(ix.kind, MBR_KIND_INDEX);
	assert_int_equal(ix.nmanifests, 3);
	assert_int_equal(mbr_index_select(&ix, NULL, NULL, NULL, &err), 2);
	assert_int_equal(mbr_index_select(&ix, "linux", "arm64", NULL, &err), 0);
	assert_int_equal(mbr_index_select(&ix, "linux", "arm64", "v8", &err), 0);
	assert_int_equal(mbr_index_select(&ix, "linux", "arm64", "v7", &err), -ENOENT);
	assert_int_equal(mbr_index_select(&ix, "linux", "s390x", NULL, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "linux/amd64"));
	assert_non_null(strstr(err.msg, "linux/arm64/v8"));
	assert_null(strstr(err.msg, "unknown"));
	mbr_manifest_free(&ix);

	char os[32], arch[32], var[32];
	assert_int_equal(mbr_platform_parse("linux/aarch64/v8", os, arch, var, NULL), 0);
	assert_string_equal(arch, "arm64");
	assert_string_equal(var, "v8");
	assert_int_equal(mbr_platform_parse("x86_64", os, arch, var, NULL), 0);
	assert_string_equal(os, "linux");
	assert_string_equal(arch, "amd64");
	assert_int_equal(mbr_platform_parse("a/b/c/d", os, arch, var, NULL), -EINVAL);
}

static void test_config_summary(void **state)
{
	const char *c =
	    "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2024-01-01T00:00:00Z\","
	    "\"config\":{\"Entrypoint\":[\"/docker-entrypoint.sh\"],\"Cmd\":[\"nginx\",\"-g\","
	    "\"daemon off;\"],\"Env\":[\"PATH=/usr/bin\"],\"WorkingDir\":\"/srv\",\"User\":"
	    "\"101:101\",\"ExposedPorts\":{\"80/tcp\":{},\"443/tcp\":{}},\"Volumes\":{\"/data\":"
	    "{}},\"StopSignal\":\"SIGQUIT\",\"Healthcheck\":{\"Test\":[\"CMD\",\"true\"],"
	    "\"Interval\":30000000000,\"Retries\":3},\"Labels\":{\"a\":\"b\"}},"
	    "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" D1 "\"]}}";
	mb_err err;
	json_t *s = mbr_config_summary(c, strlen(c), &err);
	assert_non_null(s);
	assert_string_equal(json_string_value(json_array_get(json_object_get(s, "cmd"), 2)),
	                    "daemon off;");
	assert_string_equal(json_string_value(json_object_get(s, "working_dir")), "/srv");
	assert_string_equal(json_string_value(json_object_get(s, "user")), "101:101");
	assert_string_equal(
	    json_string_value(json_array_get(json_object_get(s, "exposed_ports"), 0)), "443/tcp");
	assert_string_equal(json_string_value(json_array_get(json_object_get(s, "volumes"), 0)),
	                    "/data");
	assert_string_equal(json_string_value(json_object_get(s, "stop_signal")), "SIGQUIT");
	json_t *hc = json_object_get(s, "healthcheck");
	assert_int_equal(json_integer_value(json_object_get(hc, "interval")), 30000000000LL);
	assert_int_equal(json_integer_value(json_object_get(hc, "retries")), 3);
	assert_string_equal(json_string_value(json_object_get(json_object_get(s, "labels"), "a")),
	                    "b");
	assert_string_equal(json_string_value(json_array_get(json_object_get(s, "diff_ids"), 0)),
	                    D1);
	json_decref(s);
	/* a minimal config: nulls and empties, never missing keys */
	s = mbr_config_summary("{}", 2, &err);
	assert_true(json_is_null(json_object_get(s, "cmd")));
	assert_int_equal(json_array_size(json_object_get(s, "env")), 0);
	assert_true(json_is_null(json_object_get(s, "healthcheck")));
	json_decref(s);
	assert_null(mbr_config_summary("nope", 4, &err));
}

static void test_build(void **state)
{
	struct mbr_desc cfg = { .size = 5 }, layers[1] = { { .size = 7 } };
	strcpy(cfg.media_type, MBR_MT_OCI_CONFIG);
	strcpy(cfg.digest, D1);
	strcpy(layers[0].media_type, MBR_MT_OCI_LAYER);
	strcpy(layers[0].digest, D2);
	char *m = mbr_manifest_build(&cfg, layers, 1);
	struct mbr_manifest mf;
	assert_int_equal(mbr_manifest_parse(m, strlen(m), NULL, &mf, NULL), 0);
	assert_string_equal(mf.layers[0].digest, D2);
	assert_int_equal(mf.config.size, 5);
	mbr_manifest_free(&mf);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_oci_manifest_no_mediatype),
		cmocka_unit_test(test_docker_manifest_and_errors),
		cmocka_unit_test(test_index_select),
		cmocka_unit_test(test_config_summary),
		cmocka_unit_test(test_build),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
