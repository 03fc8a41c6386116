/* Registration of the core Lua modules, the nil-msg-code convention, generations. */
#include "bindings.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

static const struct gen_ops *gens[16];
static int ngens;
static bool loading;

int lua_fail(lua_State *L, const mb_err *err)
{
	lua_pushnil(L);
	lua_pushstring(L, err && err->msg[0] ? err->msg : "operation failed");
	lua_pushstring(L, mb_errcode(err ? err->code : -EIO));
	return 3;
}

int lua_failf(lua_State *L, int code, const char *fmt, ...)
{
	mb_err err = { .code = code };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
	va_end(ap);
	return lua_fail(L, &err);
}

void gen_register(const struct gen_ops *ops)
{
	if (ngens < (int)ARRAY_SIZE(gens))
		gens[ngens++] = ops;
}

bool gen_loading(void)
{
	return loading;
}

/* Used by scripts.c */
void gen_begin(lua_State *L);
void gen_commit(lua_State *L);
void gen_abort(lua_State *L);
void gen_fini(lua_State *L);

void gen_begin(lua_State *L)
{
	loading = true;
	for (int i = 0; i < ngens; i++)
		if (gens[i]->begin)
			gens[i]->begin(L);
}

void gen_commit(lua_State *L)
{
	loading = false;
	for (int i = 0; i < ngens; i++)
		if (gens[i]->commit)
			gens[i]->commit(L);
}

void gen_abort(lua_State *L)
{
	loading = false;
	for (int i = 0; i < ngens; i++)
		if (gens[i]->abort)
			gens[i]->abort(L);
}

void gen_fini(lua_State *L)
{
	for (int i = 0; i < ngens; i++)
		if (gens[i]->fini)
			gens[i]->fini(L);
	ngens = 0;
}

static const struct {
	const char *name;
	lua_CFunction open;
} modules[] = {
	{ "json", luaopen_mb_json },       { "db", luaopen_mb_db },
	{ "events", luaopen_mb_events },   { "timer", luaopen_mb_timer },
	{ "task", luaopen_mb_task },       { "api", luaopen_mb_api },
	{ "http", luaopen_mb_http },       { "proc", luaopen_mb_proc },
	{ "fs", luaopen_mb_fs },           { "log", luaopen_mb_log },
	{ "moonbox", luaopen_mb_moonbox }, { "plugins", luaopen_mb_plugins },
	{ "ws", luaopen_mb_ws },
};

void bindings_open(lua_State *L)
{
	for (size_t i = 0; i < ARRAY_SIZE(modules); i++) {
		luaL_requiref(L, modules[i].name, modules[i].open, 1);
		lua_pop(L, 1);
	}
}
