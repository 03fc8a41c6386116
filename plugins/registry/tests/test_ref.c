#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ref.h"

static void norm(const char *in, const char *want)
{
	struct mbr_ref r;
	mb_err err = { 0 };
	char buf[600];
	int rc = mbr_ref_parse(in, &r, &err);
	if (rc < 0)
		fail_msg("parse %s: %s", in, err.msg);
	assert_true(mbr_ref_string(&r, buf, sizeof(buf)) > 0);
	assert_string_equal(buf, want);
}

static void bad(const char *in, const char *needle)
{
	struct mbr_ref r;
	mb_err err = { 0 };
	assert_int_equal(mbr_ref_parse(in, &r, &err), -EINVAL);
	if (needle && !strstr(err.msg, needle))
		fail_msg("error for %s is \"%s\", wanted \"%s\"", in, err.msg, needle);
}

static void test_normalise(void **state)
{
	norm("nginx", "docker.io/library/nginx:latest");
	norm("nginx:1.25", "docker.io/library/nginx:1.25");
	norm("library/nginx", "docker.io/library/nginx:latest");
	norm("docker.io/nginx", "docker.io/library/nginx:latest");
	norm("index.docker.io/library/nginx:x", "docker.io/library/nginx:x");
	norm("me/app", "docker.io/me/app:latest");
	norm("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5");
	norm("localhost/app", "localhost/app:latest");
	norm("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t");
	norm("127.0.0.1:5000/test/busybox", "127.0.0.1:5000/test/busybox:latest");
	norm("[::1]:5000/x", "[::1]:5000/x:latest");
	norm("my-reg.example.com:443/a__b/c-d.e_f", "my-reg.example.com:443/a__b/c-d.e_f:latest");
	norm("nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	     "docker.io/library/nginx@sha256:"
	     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
	norm("nginx:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	     "docker.io/library/nginx:1@sha256:"
	     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
}

static void test_fields(void **state)
{
	struct mbr_ref r;
	assert_int_equal(mbr_ref_parse("localhost:5000/foo/bar:v1", &r, NULL), 0);
	assert_string_equal(r.domain, "localhost:5000");
	assert_string_equal(r.path, "foo/bar");
	assert_string_equal(r.tag, "v1");
	assert_string_equal(mbr_ref_api_host(&r), "localhost:5000");
	assert_true(mbr_host_is_loopback(r.domain));
	assert_int_equal(mbr_ref_parse("nginx", &r, NULL), 0);
	assert_string_equal(mbr_ref_api_host(&r), "registry-1.docker.io");
	assert_false(mbr_host_is_loopback(r.domain));
	char f[300];
	mbr_ref_familiar(&r, f, sizeof(f));
	assert_string_equal(f, "nginx:latest");
	assert_true(mbr_host_is_loopback("127.0.0.1:5000"));
	assert_true(mbr_host_is_loopback("[::1]:80"));
	assert_false(mbr_host_is_loopback("127x.example"));
	assert_true(mbr_host_is_loopback("127.0.0.2:5000"));
	assert_false(mbr_host_is_loopback("127.example.com:5000"));
	assert_false(mbr_host_is_loopback("127.0.0.1.nip.io"));
	assert_false(mbr_host_is_loopback("localhost.example.com"));
}

static void test_invalid(void **state)
{
	bad("", "empty");
	bad("Nginx", "lowercase");
	bad("docker.io/Library/nginx", "lowercase");
	bad("nginx:", "tag");
	bad("nginx:-bad", "tag");
	bad("nginx@sha256:abc", "digest");
	bad("nginx@md5:0123", "digest");
	bad("a//b", NULL);
	bad("a/b/", NULL);
	bad("a..b", "path component");
	bad("-a", "path component");
	bad("a b", "whitespace");
	bad("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "image id");
	bad("bad_host.com:xx/a", NULL);
	char longname[400];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	bad(longname, "long");
}

static void test_registry_key(void **state)
{
	char k[100];
	assert_int_equal(mbr_registry_key("https://index.docker.io/v1/", k, sizeof(k)), 0);
	assert_string_equal(k, "docker.io");
	assert_int_equal(mbr_registry_key("LocalHost:5000", k, sizeof(k)), 0);
	assert_string_equal(k, "localhost:5000");
	assert_int_equal(mbr_registry_key("http://127.0.0.1:5001/", k, sizeof(k)), 0);
	assert_string_equal(k, "127.0.0.1:5001");
	assert_true(mbr_looks_like_id("sha256:0123456789ab"));
	assert_true(mbr_looks_like_id("0123456789abcdef"));
	assert_false(mbr_looks_like_id("nginx"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normalise),
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_registry_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
