#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"

static void test_bearer(void **state)
{
	struct mbr_challenge c;
	mb_err err;
	assert_int_equal(mbr_challenge_parse("Bearer realm=\"http://127.0.0.1:5002/token\","
	                                     "service=\"local-registry\",scope=\"repository:test/"
	                                     "busybox:pull\"",
	                                     &c, &err),
	                 0);
	assert_int_equal(c.scheme, MBR_AUTH_BEARER);
	assert_string_equal(c.realm, "http://127.0.0.1:5002/token");
	assert_string_equal(c.service, "local-registry");
	assert_string_equal(c.scope, "repository:test/busybox:pull");
	assert_string_equal(c.error, "");

	assert_int_equal(mbr_challenge_parse("bearer realm=\"https://auth.docker.io/token\", "
	                                     "service=\"registry.docker.io\", error=\"insufficient_"
	                                     "scope\", scope=\"repository:a/b:pull,push\"",
	                                     &c, &err),
	                 0);
	assert_string_equal(c.error, "insufficient_scope");
	assert_string_equal(c.scope, "repository:a/b:pull,push");

	/* escaped quote, unquoted value */
	assert_int_equal(
	    mbr_challenge_parse("Bearer realm=\"http://x/t?a=\\\"b\",service=svc", &c, &err), 0);
	assert_string_equal(c.realm, "http://x/t?a=\"b");
	assert_string_equal(c.service, "svc");
}

static void test_basic_and_multi(void **state)
{
	struct mbr_challenge c;
	assert_int_equal(mbr_challenge_parse("Basic realm=\"basic-realm\"", &c, NULL), 0);
	assert_int_equal(c.scheme, MBR_AUTH_BASIC);
	assert_string_equal(c.realm, "basic-realm");
	assert_int_equal(mbr_challenge_parse("Basic realm=\"r\", Bearer realm=\"http://t\",service="
	                                     "\"s\"",
	                                     &c, NULL),
	                 0);
	assert_int_equal(c.scheme, MBR_AUTH_BEARER);
	assert_string_equal(c.realm, "http://t");
	mb_err err;
	assert_true(mbr_challenge_parse("Negotiate abc", &c, &err) < 0);
	assert_true(mbr_challenge_parse("Bearer service=\"x\"", &c, &err) < 0);
	assert_true(mbr_challenge_parse("Bearer realm=\"unterminated", &c, &err) < 0);
	assert_true(mbr_challenge_parse("", &c, &err) < 0);
}

static void test_base64(void **state)
{
	char *out;
	size_t n;
	assert_int_equal(mbr_base64_decode("dXNlcjpwYXNz", 12, &out, &n), 0);
	assert_string_equal(out, "user:pass");
	free(out);
	assert_int_equal(mbr_base64_decode("YQ", 2, &out, &n), 0); /* no padding */
	assert_string_equal(out, "a");
	free(out);
	assert_int_equal(mbr_base64_decode("-_8=", 4, &out, &n), 0); /* url alphabet */
	assert_int_equal(n, 2);
	assert_int_equal((unsigned char)out[0], 0xfb);
	free(out);
	assert_int_equal(mbr_base64_decode("a*b", 3, &out, &n), -EINVAL);
	char *e = mbr_base64_encode("user:pass", 9);
	assert_string_equal(e, "dXNlcjpwYXNz");
	free(e);
}

static void test_x_registry_auth(void **state)
{
	const char *json = "{\"username\":\"testuser\",\"password\":\"testpass\","
	                   "\"serveraddress\":\"127.0.0.1:5001\"}";
	char *b = mbr_base64_encode(json, strlen(json));
	struct mbr_cred c;
	assert_int_equal(mbr_cred_from_x_registry_auth(b, &c, NULL), 0);
	assert_string_equal(c.username, "testuser");
	assert_string_equal(c.password, "testpass");
	assert_null(c.token);
	mbr_cred_clear(&c);
	free(b);
	json = "{\"registrytoken\":\"abc\"}";
	b = mbr_base64_encode(json, strlen(json));
	assert_int_equal(mbr_cred_from_x_registry_auth(b, &c, NULL), 0);
	assert_string_equal(c.token, "abc");
	assert_true(c.token_is_registry);
	mbr_cred_clear(&c);
	free(b);
	mb_err err;
	assert_int_equal(mbr_cred_from_x_registry_auth("!!!", &c, &err), -EINVAL);
	b = mbr_base64_encode("[1]", 3);
	assert_int_equal(mbr_cred_from_x_registry_auth(b, &c, &err), -EINVAL);
	free(b);
}

static void test_docker_config(void **state)
{
	const char *cfg = "{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":"
	                  "\"dXNlcjpwYXNz\"},\"127.0.0.1:5001\":{\"auth\":\"dGVzdHVzZXI6dGVzdHBh"
	                  "c3M=\"},\"ghcr.io\":{\"identitytoken\":\"tok\"}}}";
	struct mbr_cred c;
	assert_int_equal(mbr_cred_from_docker_config(cfg, "docker.io", &c, NULL), 0);
	assert_string_equal(c.username, "user");
	assert_string_equal(c.password, "pass");
	mbr_cred_clear(&c);
	assert_int_equal(mbr_cred_from_docker_config(cfg, "127.0.0.1:5001", &c, NULL), 0);
	assert_string_equal(c.username, "testuser");
	assert_string_equal(c.password, "testpass");
	mbr_cred_clear(&c);
	assert_int_equal(mbr_cred_from_docker_config(cfg, "ghcr.io", &c, NULL), 0);
	assert_string_equal(c.token, "tok");
	mbr_cred_clear(&c);
	assert_int_equal(mbr_cred_from_docker_config(cfg, "quay.io", &c, NULL), -ENOENT);
	assert_int_equal(mbr_cred_from_docker_config("{bad", "quay.io", &c, NULL), -EINVAL);
}

static void test_token_url_and_parse(void **state)
{
	struct mbr_challenge c = { .scheme = MBR_AUTH_BEARER };
	strcpy(c.realm, "http://127.0.0.1:5002/token");
	strcpy(c.service, "local registry");
	char *u = mbr_token_url(&c, "repository:test/busybox:pull repository:x/y:pull", "me");
	assert_string_equal(u, "http://127.0.0.1:5002/token?service=local%20registry&scope="
	                       "repository%3Atest%2Fbusybox%3Apull&scope=repository%3Ax%2Fy%3Apull"
	                       "&account=me");
	free(u);
	char *tok;
	int64_t exp;
	const char *body = "{\"token\":\"T\",\"expires_in\":300}";
	assert_int_equal(mbr_token_parse(body, strlen(body), &tok, &exp, NULL), 0);
	assert_string_equal(tok, "T");
	assert_int_equal(exp, 300);
	free(tok);
	body = "{\"access_token\":\"A\"}";
	assert_int_equal(mbr_token_parse(body, strlen(body), &tok, &exp, NULL), 0);
	assert_string_equal(tok, "A");
	assert_int_equal(exp, 60);
	free(tok);
	assert_true(mbr_token_parse("{}", 2, &tok, &exp, NULL) < 0);
}

static void test_token_cache(void **state)
{
	mbr_token_cache *tc = mbr_token_cache_new();
	assert_null(mbr_token_cache_get(tc, "r", "s", "scope1", "", 0));
	assert_int_equal(mbr_token_cache_put(tc, "r", "s", "scope1", "", "T1", 1000), 0);
	assert_int_equal(mbr_token_cache_put(tc, "r", "s", "scope2", "", "T2", 5000), 0);
	assert_string_equal(mbr_token_cache_get(tc, "r", "s", "scope1", "", 10), "T1");
	assert_null(mbr_token_cache_get(tc, "r", "s", "scope1", "bob", 10));
	assert_null(mbr_token_cache_get(tc, "r", "s", "scope1", "", 1000)); /* expired */
	assert_string_equal(mbr_token_cache_get(tc, "r", "s", "scope2", "", 1000), "T2");
	assert_int_equal(mbr_token_cache_put(tc, "r", "s", "scope2", "", "T3", 5000), 0);
	assert_string_equal(mbr_token_cache_get(tc, "r", "s", "scope2", "", 1000), "T3");
	mbr_token_cache_free(tc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bearer),        cmocka_unit_test(test_basic_and_multi),
		cmocka_unit_test(test_base64),        cmocka_unit_test(test_x_registry_auth),
		cmocka_unit_test(test_docker_config), cmocka_unit_test(test_token_url_and_parse),
		cmocka_unit_test(test_token_cache),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
