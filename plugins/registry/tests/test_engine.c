/* The engine's synchronous failure paths, with an io whose operations fail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pull.h"

static int done_calls;

static int bad_curl_add(void *ud, CURL *e, mb_curl_fn fn, void *arg, mb_err *err)
{
	return mb_err_set(err, -EIO, "curl_add refused (test)");
}
static void no_curl_remove(void *ud, CURL *e)
{
}
static void *no_timer(void *ud, uint64_t ms, mb_fn fn, void *arg)
{
	return NULL;
}
static void no_timer_stop(void *ud, void *t)
{
}
static int bad_work(void *ud, mb_fn work, mb_fn done, void *arg, mb_err *err)
{
	return mb_err_set(err, -EAGAIN, "work refused (test)");
}

static const struct mbr_io io = {
	.curl_add = bad_curl_add,
	.curl_remove = no_curl_remove,
	.timer_start = no_timer,
	.timer_stop = no_timer_stop,
	.work = bad_work,
};

static void on_done(mbr_pull *p, const struct mbr_pull_result *res, const mb_err *err, void *arg)
{
	done_calls++;
}

static void test_sync_failures(void **state)
{
	char dir[] = "/tmp/mbr-engine-XXXXXX";
	assert_non_null(mkdtemp(dir));
	mb_err err = { 0 };
	mbr_engine *e = mbr_engine_new(&io, dir, &err);
	assert_non_null(e);

	struct mbr_pull_opts o = { .reference = "Not A Ref" };
	assert_null(mbr_pull_start(e, &o, NULL, on_done, NULL, &err));
	assert_int_equal(err.code, -EINVAL);

	o.reference = "127.0.0.1:1/test/x";
	o.platform = "a/b/c/d";
	assert_null(mbr_pull_start(e, &o, NULL, on_done, NULL, &err));
	assert_int_equal(err.code, -EINVAL);

	o.platform = NULL;
	memset(&err, 0, sizeof(err));
	assert_null(mbr_pull_start(e, &o, NULL, on_done, NULL, &err));
	assert_int_equal(err.code, -EIO);
	assert_non_null(strstr(err.msg, "curl_add refused"));

	const char *m =
	    "{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:"
	    "1111111111111111111111111111111111111111111111111111111111111111\",\"size\":1},"
	    "\"layers\":[]}";
	memset(&err, 0, sizeof(err));
	assert_null(mbr_build_start(
	    e, m, strlen(m),
	    "sha256:2222222222222222222222222222222222222222222222222222222222222222", NULL,
	    on_done, NULL, &err));
	assert_int_equal(err.code, -EAGAIN);
	assert_int_equal(done_calls, 0); /* failures at start are returned, never called back */
	assert_int_equal(e->active, 0);  /* and nothing is left behind */
	mbr_engine_free(e);
	mbr_rm_tree(dir, NULL);
}

/* Plain HTTP only for loopback addresses, configured insecure registries, or when asked. */
static void test_scheme(void **state)
{
	mbr_client *c = mbr_client_new(&io, NULL);
	assert_non_null(c);
	assert_string_equal(mbr_client_scheme(c, "docker.io", false), "https");
	assert_string_equal(mbr_client_scheme(c, "registry.example.com:5000", false), "https");
	assert_string_equal(mbr_client_scheme(c, "127.example.com", false), "https");
	assert_string_equal(mbr_client_scheme(c, "127.0.0.1:5000", false), "http");
	assert_string_equal(mbr_client_scheme(c, "localhost:5000", false), "http");
	assert_string_equal(mbr_client_scheme(c, "[::1]:5000", false), "http");
	assert_int_equal(mbr_strset_add(&c->insecure, "myreg.lan:5000"), 1);
	assert_string_equal(mbr_client_scheme(c, "myreg.lan:5000", false), "http");
	assert_string_equal(mbr_client_scheme(c, "myreg.lan", false), "https");
	assert_string_equal(mbr_client_scheme(c, "registry.example.com", true), "http");
	mbr_client_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sync_failures),
		cmocka_unit_test(test_scheme),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
