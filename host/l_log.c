/*
 * Lua module `log`: log.error/warn/info/debug(fmt, ...) — string.format semantics; the
 * source file and line of the caller name the component.
 */
#include "bindings.h"
#include "log.h"

static int do_log(lua_State *L, int level)
{
	if (level > log_get_level())
		return 0;
	int n = lua_gettop(L);
	lua_getglobal(L, "string");
	lua_getfield(L, -1, "format");
	lua_remove(L, -2);
	lua_insert(L, 1);
	lua_call(L, n, 1);
	lua_Debug ar;
	char where[128] = "lua";
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar))
		snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.currentline);
	mb_log(level, where, "%s", lua_tostring(L, -1));
	return 0;
}

static int l_error(lua_State *L)
{
	return do_log(L, MB_LOG_ERROR);
}
static int l_warn(lua_State *L)
{
	return do_log(L, MB_LOG_WARN);
}
static int l_info(lua_State *L)
{
	return do_log(L, MB_LOG_INFO);
}
static int l_debug(lua_State *L)
{
	return do_log(L, MB_LOG_DEBUG);
}

static const luaL_Reg funcs[] = {
	{ "error", l_error }, { "warn", l_warn }, { "info", l_info },
	{ "debug", l_debug }, { NULL, NULL },
};

int luaopen_mb_log(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
