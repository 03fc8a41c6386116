#include "json.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "util.h"

#define JSON_MAX_DEPTH 128

static char NULL_KEY;     /* json.null is this address as light userdata */
static char ARRAY_MT_KEY; /* registry key of the array metatable */

void json_push_null(lua_State *L)
{
	lua_pushlightuserdata(L, &NULL_KEY);
}

int json_isnull(lua_State *L, int idx)
{
	return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == &NULL_KEY;
}

void json_push_array_mt(lua_State *L)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ARRAY_MT_KEY) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushliteral(L, "json.array");
		lua_setfield(L, -2, "__name");
		lua_pushvalue(L, -1);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &ARRAY_MT_KEY);
	}
}

static void push_rec(lua_State *L, const json_t *j, int depth)
{
	luaL_checkstack(L, 4, "json nesting");
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *v;
		lua_createtable(L, 0, (int)json_object_size(j));
		json_object_foreach((json_t *)j, k, v)
		{
			lua_pushstring(L, k);
			push_rec(L, v, depth + 1);
			lua_rawset(L, -3);
		}
		break;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *v;
		lua_createtable(L, (int)json_array_size(j), 0);
		json_array_foreach(j, i, v)
		{
			push_rec(L, v, depth + 1);
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
		json_push_array_mt(L);
		lua_setmetatable(L, -2);
		break;
	}
	case JSON_STRING:
		lua_pushlstring(L, json_string_value(j), json_string_length(j));
		break;
	case JSON_INTEGER:
		lua_pushinteger(L, (lua_Integer)json_integer_value(j));
		break;
	case JSON_REAL:
		lua_pushnumber(L, json_real_value(j));
		break;
	case JSON_TRUE:
		lua_pushboolean(L, 1);
		break;
	case JSON_FALSE:
		lua_pushboolean(L, 0);
		break;
	case JSON_NULL:
	default:
		json_push_null(L);
		break;
	}
}

void json_push(lua_State *L, const json_t *j)
{
	if (!j)
		json_push_null(L);
	else
		push_rec(L, j, 0);
}

/* Is the table at idx an array? Marked ones are; unmarked ones are if non-empty and
 * their keys are exactly 1..n. */
static int table_is_array(lua_State *L, int idx, size_t *n)
{
	*n = lua_rawlen(L, idx);
	if (lua_getmetatable(L, idx)) {
		json_push_array_mt(L);
		int marked = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (marked)
			return 1;
	}
	if (*n == 0)
		return 0;
	size_t count = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1)) {
			lua_pop(L, 1);
			return 0;
		}
		count++;
	}
	return count == *n;
}

static json_t *from_rec(lua_State *L, int idx, int depth, mb_err *err)
{
	if (depth > JSON_MAX_DEPTH) {
		mb_err_set(err, -E2BIG, "value nested deeper than %d levels (or a cycle)",
		           JSON_MAX_DEPTH);
		return NULL;
	}
	idx = lua_absindex(L, idx);
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return json_null();
	case LUA_TBOOLEAN:
		return json_boolean(lua_toboolean(L, idx));
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			return json_integer((json_int_t)lua_tointeger(L, idx));
		{
			double d = lua_tonumber(L, idx);
			if (!isfinite(d)) {
				mb_err_set(err, -EINVAL, "cannot encode %s as JSON",
				           isnan(d) ? "NaN" : "infinity");
				return NULL;
			}
			return json_real(d);
		}
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		json_t *j = json_stringn(s, len);
		if (!j)
			mb_err_set(err, -EINVAL, "string is not valid UTF-8");
		return j;
	}
	case LUA_TLIGHTUSERDATA:
		if (json_isnull(L, idx))
			return json_null();
		break;
	case LUA_TTABLE: {
		luaL_checkstack(L, 6, "json nesting");
		size_t n;
		if (table_is_array(L, idx, &n)) {
			json_t *a = json_array();
			for (size_t i = 1; i <= n; i++) {
				lua_rawgeti(L, idx, (lua_Integer)i);
				json_t *v = from_rec(L, -1, depth + 1, err);
				lua_pop(L, 1);
				if (!v) {
					json_decref(a);
					return NULL;
				}
				json_array_append_new(a, v);
			}
			return a;
		}
		json_t *o = json_object();
		lua_pushnil(L);
		while (lua_next(L, idx)) {
			char numkey[32];
			const char *k;
			size_t klen;
			if (lua_type(L, -2) == LUA_TSTRING) {
				k = lua_tolstring(L, -2, &klen);
			} else if (lua_isinteger(L, -2)) {
				klen = (size_t)snprintf(numkey, sizeof(numkey), "%lld",
				                        (long long)lua_tointeger(L, -2));
				k = numkey;
			} else {
				mb_err_set(err, -EINVAL, "cannot encode a table key of type %s",
				           luaL_typename(L, -2));
				lua_pop(L, 2);
				json_decref(o);
				return NULL;
			}
			json_t *v = from_rec(L, -1, depth + 1, err);
			if (!v || json_object_setn_new(o, k, klen, v) < 0) {
				if (v) {
					json_decref(v);
					mb_err_set(err, -EINVAL, "object key is not valid UTF-8");
				}
				lua_pop(L, 2);
				json_decref(o);
				return NULL;
			}
			lua_pop(L, 1);
		}
		return o;
	}
	default:
		break;
	}
	mb_err_set(err, -EINVAL, "cannot encode a %s as JSON", luaL_typename(L, idx));
	return NULL;
}

json_t *json_from_lua(lua_State *L, int idx, mb_err *err)
{
	return from_rec(L, idx, 0, err);
}

char *json_encode_lua(lua_State *L, int idx, size_t flags, size_t *len, mb_err *err)
{
	json_t *j = json_from_lua(L, idx, err);
	if (!j)
		return NULL;
	if (!(flags & JSON_MAX_INDENT))
		flags |= JSON_COMPACT;
	char *s = json_dumps(j, flags | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
	json_decref(j);
	if (!s) {
		mb_err_set(err, -ENOMEM, "JSON encoding failed");
		return NULL;
	}
	if (len)
		*len = strlen(s);
	return s;
}

int json_decode_push(lua_State *L, const char *s, size_t len, mb_err *err)
{
	json_error_t je;
	json_t *j =
	    json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
	if (!j)
		return mb_err_set(err, -EINVAL, "invalid JSON at line %d column %d: %s", je.line,
		                  je.column, je.text);
	json_push(L, j);
	json_decref(j);
	return 0;
}
