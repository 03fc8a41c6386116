/*
 * Lua module `plugins`:
 *   plugins.list()        -> { {name=, version=, summary=, abi=, path=, resources=, info=}, ... }
 *   plugins.load(path)    -> name | nil, msg, code
 *   plugins.unload(name)  -> true | nil, msg, code   ("conflict" while it owns resources)
 */
#include "bindings.h"
#include "json.h"
#include "log.h"
#include "plugin.h"

static int l_list(lua_State *L)
{
	json_t *a = plugins_info();
	json_push(L, a);
	json_decref(a);
	return 1;
}

static int l_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	const char *name = NULL;
	mb_err err = { 0 };
	if (plugin_load(path, &name, &err) < 0) {
		mb_log(MB_LOG_WARN, "plugins", "refused: %s", err.msg);
		return lua_fail(L, &err);
	}
	lua_pushstring(L, name);
	return 1;
}

static int l_unload(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	mb_err err = { 0 };
	if (plugin_unload(name, &err) < 0)
		return lua_fail(L, &err);
	lua_pushboolean(L, 1);
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "list", l_list },
	{ "load", l_load },
	{ "unload", l_unload },
	{ NULL, NULL },
};

int luaopen_mb_plugins(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
