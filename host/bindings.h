/* Shared declarations for the core's Lua bindings (one l_<ns>.c file per namespace). */
#ifndef MB_BINDINGS_H
#define MB_BINDINGS_H

#include <lualib.h>

#include "moonbox/plugin.h"
#include "util.h"

/* [-0, +3, m] Push nil, err->msg, code string; returns 3. */
int lua_fail(lua_State *L, const mb_err *err);
/* [-0, +3, m] Same from a code and a formatted message. */
int lua_failf(lua_State *L, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Register every core module as a global and in package.loaded. */
void bindings_open(lua_State *L);

/* Generation hooks: registrations made while scripts load (routes, event handlers,
 * load-time timers) belong to a pending generation that replaces the current one only
 * if every script loaded. */
struct gen_ops {
	void (*begin)(lua_State *L);
	void (*commit)(lua_State *L);
	void (*abort)(lua_State *L);
	void (*fini)(lua_State *L); /* daemon exit: drop the current generation */
};
void gen_register(const struct gen_ops *ops);
/* True while scripts are loading (registrations go to the pending generation). */
bool gen_loading(void);

int luaopen_mb_json(lua_State *L);
int luaopen_mb_db(lua_State *L);
int luaopen_mb_events(lua_State *L);
int luaopen_mb_timer(lua_State *L);
int luaopen_mb_task(lua_State *L);
int luaopen_mb_api(lua_State *L);
int luaopen_mb_http(lua_State *L);
int luaopen_mb_proc(lua_State *L);
int luaopen_mb_fs(lua_State *L);
int luaopen_mb_log(lua_State *L);
int luaopen_mb_moonbox(lua_State *L);
int luaopen_mb_plugins(lua_State *L);
int luaopen_mb_ws(lua_State *L);
int luaopen_mb_term(lua_State *L);

/* [-0, +1] A Lua WebSocket object owning ws (l_ws.c). */
struct ws;
void ws_push(lua_State *L, struct ws *ws);

#endif
