/* JSON <-> Lua conventions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <lualib.h>

#include "json.h"

static int setup(void **state)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	*state = L;
	return 0;
}

static int teardown(void **state)
{
	lua_close(*state);
	return 0;
}

/* decode s, encode it back (sorted keys) and compare with want */
static void roundtrip(lua_State *L, const char *s, const char *want)
{
	mb_err err = { 0 };
	assert_int_equal(json_decode_push(L, s, strlen(s), &err), 0);
	size_t len;
	char *out = json_encode_lua(L, -1, JSON_SORT_KEYS, &len, &err);
	assert_non_null(out);
	assert_string_equal(out, want);
	free(out);
	lua_pop(L, 1);
}

static void keeps_types(void **state)
{
	lua_State *L = *state;
	roundtrip(L, "{\"a\":[],\"b\":{},\"c\":null,\"d\":1,\"e\":2.0,\"f\":2.5,\"g\":true}",
	          "{\"a\":[],\"b\":{},\"c\":null,\"d\":1,\"e\":2.0,\"f\":2.5,\"g\":true}");
	roundtrip(L, "[1,null,3]", "[1,null,3]");
	roundtrip(L, "\"caf\\u00e9\"", "\"caf\xc3\xa9\""); /* UTF-8 stays UTF-8 */
	roundtrip(L, "\"nul\\u0000byte\"", "\"nul\\u0000byte\"");
	roundtrip(L, "9007199254740993", "9007199254740993"); /* beyond double precision */
}

static void lua_tables(void **state)
{
	lua_State *L = *state;
	mb_err err = { 0 };
	char *s;
	luaL_dostring(L, "return {1, 2, 3}");
	s = json_encode_lua(L, -1, 0, NULL, &err);
	assert_string_equal(s, "[1,2,3]");
	free(s);
	lua_pop(L, 1);
	luaL_dostring(L, "return {}");
	s = json_encode_lua(L, -1, 0, NULL, &err);
	assert_string_equal(s, "{}");
	free(s);
	lua_pop(L, 1);
	luaL_dostring(L, "return {[1]='a', [3]='c'}"); /* sparse: an object */
	s = json_encode_lua(L, -1, JSON_SORT_KEYS, NULL, &err);
	assert_string_equal(s, "{\"1\":\"a\",\"3\":\"c\"}");
	free(s);
	lua_pop(L, 1);
}

static void rejects_bad_values(void **state)
{
	lua_State *L = *state;
	mb_err err = { 0 };
	lua_pushlstring(L, "\xff\xfe", 2);
	assert_null(json_encode_lua(L, -1, 0, NULL, &err));
	assert_non_null(strstr(err.msg, "UTF-8"));
	lua_pop(L, 1);
	luaL_dostring(L, "return 0/0");
	assert_null(json_encode_lua(L, -1, 0, NULL, &err));
	assert_non_null(strstr(err.msg, "NaN"));
	lua_pop(L, 1);
	luaL_dostring(L, "local t = {}; t.self = t; return t");
	assert_null(json_encode_lua(L, -1, 0, NULL, &err));
	lua_pop(L, 1);
	lua_pushcfunction(L, luaopen_base);
	assert_null(json_encode_lua(L, -1, 0, NULL, &err));
	lua_pop(L, 1);
	luaL_dostring(L, "return {[true]=1}");
	assert_null(json_encode_lua(L, -1, 0, NULL, &err));
	lua_pop(L, 1);
}

static void rejects_bad_json(void **state)
{
	lua_State *L = *state;
	mb_err err = { 0 };
	const char *bad[] = { "{", "{\"a\":1,\"a\":2}", "[1,]", "nul", "\"\\ud800\"", "" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int top = lua_gettop(L);
		assert_true(json_decode_push(L, bad[i], strlen(bad[i]), &err) < 0);
		assert_int_equal(lua_gettop(L), top);
		assert_int_equal(err.code, -EINVAL);
	}
}

static void null_and_array_markers(void **state)
{
	lua_State *L = *state;
	mb_err err = { 0 };
	assert_int_equal(json_decode_push(L, "{\"x\":null}", 10, &err), 0);
	lua_getfield(L, -1, "x");
	assert_true(json_isnull(L, -1));
	lua_pop(L, 2);
	json_push_null(L);
	char *s = json_encode_lua(L, -1, 0, NULL, &err);
	assert_string_equal(s, "null");
	free(s);
	lua_pop(L, 1);
	lua_newtable(L);
	json_push_array_mt(L);
	lua_setmetatable(L, -2);
	s = json_encode_lua(L, -1, 0, NULL, &err);
	assert_string_equal(s, "[]");
	free(s);
	lua_pop(L, 1);
}

static void encode_lua(lua_State *L, const char *expr, size_t flags, const char *want)
{
	mb_err err = { 0 };
	char code[256];
	snprintf(code, sizeof(code), "return %s", expr);
	assert_int_equal(luaL_dostring(L, code), 0);
	char *s = json_encode_lua(L, -1, flags, NULL, &err);
	assert_non_null(s);
	assert_string_equal(s, want);
	free(s);
	lua_pop(L, 1);
}

static void direct_encoder_details(void **state)
{
	lua_State *L = *state;
	encode_lua(L, "0.1", 0, "0.1"); /* shortest round-trip form */
	encode_lua(L, "1/3", 0, "0.3333333333333333");
	encode_lua(L, "2.0", 0, "2.0"); /* reals stay reals */
	encode_lua(L, "-0.0", 0, "-0.0");
	encode_lua(L, "1e300", 0, "1e+300");
	encode_lua(L, "math.mininteger", 0, "-9223372036854775808");
	encode_lua(L, "'a\\\"b\\\\c\\n\\t\\1\\127/'", 0, "\"a\\\"b\\\\c\\n\\t\\u0001\x7f/\"");
	encode_lua(L, "{b=1, a={2, 1}, [3]='x'}", JSON_SORT_KEYS,
	           "{\"3\":\"x\",\"a\":[2,1],\"b\":1}");
	encode_lua(L, "{{}, {n={}}}", 0, "[{},{\"n\":{}}]");
	encode_lua(L, "{1, 2, x=3}", JSON_SORT_KEYS,
	           "{\"1\":1,\"2\":2,\"x\":3}"); /* mixed: object */
	/* the direct writer and jansson agree on a realistic document */
	assert_int_equal(luaL_dostring(L, "return {name='é', list={1, 2.5, false, true}, "
	                                  "nested={deep={deeper={}}}, z=json_null}"),
	                 0);
	mb_err err = { 0 };
	char *direct = json_encode_lua(L, -1, JSON_SORT_KEYS, NULL, &err);
	json_t *j = json_from_lua(L, -1, &err);
	char *viajansson = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(direct, viajansson);
	free(direct);
	free(viajansson);
	json_decref(j);
	lua_pop(L, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(keeps_types, setup, teardown),
		cmocka_unit_test_setup_teardown(lua_tables, setup, teardown),
		cmocka_unit_test_setup_teardown(rejects_bad_values, setup, teardown),
		cmocka_unit_test_setup_teardown(rejects_bad_json, setup, teardown),
		cmocka_unit_test_setup_teardown(null_and_array_markers, setup, teardown),
		cmocka_unit_test_setup_teardown(direct_encoder_details, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
