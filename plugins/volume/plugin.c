/*
 * plugins/volume: the entry point and the C half of the Lua module `volume`.
 *
 * The bookkeeping (SQLite tables, create/remove, attachments, spec parsing, the vm
 * entries) is volume.lua, compiled into this .so and run at init with the module table.
 * C provides what Lua cannot:
 *
 *   volume._usage(path) -> allocated bytes, apparent size | nil, msg, code
 *                                     (st_blocks: how much of a sparse image is real)
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <moonbox/plugin.h>

#include "volume_lua.h"

static const struct mb_host *host;

/* [-1, +2|3, e] */
static int l_usage(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	if (stat(path, &st) < 0) {
		mb_err e = { .code = -errno };
		snprintf(e.msg, sizeof(e.msg), "stat: %s", strerror(errno));
		return host->lua_fail(L, &e);
	}
	lua_pushinteger(L, (lua_Integer)st.st_blocks * 512);
	lua_pushinteger(L, (lua_Integer)st.st_size);
	return 2;
}

static const luaL_Reg funcs[] = { { "_usage", l_usage }, { NULL, NULL } };

static int volume_init(const struct mb_host *h, mb_plugin *p, mb_err *err)
{
	host = h;
	int rc = h->lua_module(p, "volume", funcs, err);
	if (rc < 0)
		return rc;
	lua_State *L = h->lua_main();
	if (luaL_loadbufferx(L, (const char *)volume_lua, volume_lua_len, "=volume.lua", "t") !=
	    LUA_OK) {
		rc = mb_err_set(err, -EINVAL, "volume.lua: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return rc;
	}
	lua_getglobal(L, "volume");
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		rc = mb_err_set(err, -EINVAL, "volume.lua: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return rc;
	}
	return 0;
}

static void volume_fini(mb_plugin *p)
{
}

MB_PLUGIN_DEFINE("volume", "0.1", "named volumes (sparse ext4 images) and host directory binds",
                 volume_init, volume_fini, NULL)
