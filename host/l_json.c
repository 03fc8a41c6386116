/* Lua module `json`: encode, decode, null, array, is_array. */
#include "bindings.h"
#include "json.h"

/* json.encode(value [, {pretty=bool, sort=bool}]) -> string | nil, msg, code  [-1|2, +1|3, e] */
static int l_encode(lua_State *L)
{
	luaL_checkany(L, 1);
	size_t flags = 0;
	if (lua_istable(L, 2)) {
		if (lua_getfield(L, 2, "pretty"), lua_toboolean(L, -1))
			flags |= JSON_INDENT(2);
		if (lua_getfield(L, 2, "sort"), lua_toboolean(L, -1))
			flags |= JSON_SORT_KEYS;
		lua_pop(L, 2);
	}
	mb_err err = { 0 };
	size_t len;
	char *s = json_encode_lua(L, 1, flags, &len, &err);
	if (!s)
		return lua_fail(L, &err);
	lua_pushlstring(L, s, len);
	free(s);
	return 1;
}

/* json.decode(string) -> value | nil, msg, "invalid"  [-1, +1|3, e] */
static int l_decode(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	mb_err err = { 0 };
	if (json_decode_push(L, s, len, &err) < 0)
		return lua_fail(L, &err);
	return 1;
}

/* json.array([t]) -> t marked as an array (encodes as [] even when empty)  [-0|1, +1, e] */
static int l_array(lua_State *L)
{
	if (lua_isnoneornil(L, 1)) {
		lua_settop(L, 0);
		lua_newtable(L);
	}
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	json_push_array_mt(L);
	lua_setmetatable(L, 1);
	return 1;
}

/* json.is_array(t) -> boolean  [-1, +1, -] */
static int l_is_array(lua_State *L)
{
	int r = 0;
	if (lua_istable(L, 1) && lua_getmetatable(L, 1)) {
		json_push_array_mt(L);
		r = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
	}
	lua_pushboolean(L, r);
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "encode", l_encode },     { "decode", l_decode }, { "array", l_array },
	{ "is_array", l_is_array }, { NULL, NULL },
};

int luaopen_mb_json(lua_State *L)
{
	luaL_newlib(L, funcs);
	json_push_null(L);
	lua_setfield(L, -2, "null");
	json_push_array_mt(L);
	lua_setfield(L, -2, "array_mt");
	return 1;
}
