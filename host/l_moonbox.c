/*
 * Lua module `moonbox`: the daemon itself.
 *   moonbox.version, moonbox.api_version, moonbox.lua_version, moonbox.abi ("1.0")
 *   moonbox.config(key)   -> string | nil   ("state_dir", "run_dir", "socket", "http", ...)
 *   moonbox.reload()      -> generation | nil, msg, code   (reload the scripts now)
 *   moonbox.stats()       -> {tasks=, watches=, timers=, workers_pending=, children=,
 *                             http_inflight=, lua_kb=, uptime=, generation=}
 *   moonbox.random(n)     -> n random bytes as 2n hex characters (getrandom)
 *   moonbox.id()          -> a new 64-hex-character id
 *   moonbox.sha256(s)     -> hex digest
 *   moonbox.hostname()    -> the host's name
 *   moonbox.started       -> wall-clock start time
 */
#include <errno.h>
#include <openssl/sha.h>
#include <sys/random.h>
#include <unistd.h>

#include "bindings.h"
#include "config.h"
#include "curlm.h"
#include "http.h"
#include "loop.h"
#include "proc.h"
#include "scripts.h"
#include "task.h"
#include "work.h"

static double started;

static int l_config(lua_State *L)
{
	const char *v = config_get(luaL_checkstring(L, 1));
	if (!v)
		return 0;
	lua_pushstring(L, v);
	return 1;
}

static int l_reload(lua_State *L)
{
	mb_err err = { 0 };
	if (scripts_load(&err) < 0)
		return lua_fail(L, &err);
	lua_pushinteger(L, scripts_generation());
	return 1;
}

static int l_stats(lua_State *L)
{
	unsigned watches, timers;
	loop_counts(&watches, &timers);
	lua_createtable(L, 0, 10);
	lua_pushinteger(L, task_count());
	lua_setfield(L, -2, "tasks");
	lua_pushinteger(L, watches);
	lua_setfield(L, -2, "watches");
	lua_pushinteger(L, timers);
	lua_setfield(L, -2, "timers");
	lua_pushinteger(L, work_pending());
	lua_setfield(L, -2, "workers_pending");
	lua_pushinteger(L, proc_active());
	lua_setfield(L, -2, "children");
	lua_pushinteger(L, curlm_active());
	lua_setfield(L, -2, "http_client_active");
	lua_pushinteger(L, http_inflight());
	lua_setfield(L, -2, "http_inflight");
	lua_pushinteger(L, lua_gc(L, LUA_GCCOUNT, 0));
	lua_setfield(L, -2, "lua_kb");
	lua_pushnumber(L, mb_wall_time() - started);
	lua_setfield(L, -2, "uptime");
	lua_pushinteger(L, scripts_generation());
	lua_setfield(L, -2, "generation");
	return 1;
}

static void hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int push_random(lua_State *L, size_t n)
{
	unsigned char b[256];
	char h[513];
	if (n == 0 || n > sizeof(b))
		return luaL_error(L, "moonbox.random: 1..256 bytes");
	size_t got = 0;
	while (got < n) {
		ssize_t r = getrandom(b + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return luaL_error(L, "getrandom: %s", strerror(errno));
		got += (size_t)r;
	}
	hex(b, n, h);
	lua_pushstring(L, h);
	return 1;
}

static int l_random(lua_State *L)
{
	return push_random(L, (size_t)luaL_checkinteger(L, 1));
}

static int l_id(lua_State *L)
{
	return push_random(L, 32);
}

static int l_sha256(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	unsigned char md[SHA256_DIGEST_LENGTH];
	char h[2 * SHA256_DIGEST_LENGTH + 1];
	SHA256((const unsigned char *)s, len, md);
	hex(md, sizeof(md), h);
	lua_pushstring(L, h);
	return 1;
}

static int l_hostname(lua_State *L)
{
	char h[256];
	if (gethostname(h, sizeof(h)) < 0)
		return 0;
	h[sizeof(h) - 1] = '\0';
	lua_pushstring(L, h);
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "config", l_config },     { "reload", l_reload }, { "stats", l_stats },
	{ "random", l_random },     { "id", l_id },         { "sha256", l_sha256 },
	{ "hostname", l_hostname }, { NULL, NULL },
};

int luaopen_mb_moonbox(lua_State *L)
{
	if (!started)
		started = mb_wall_time();
	luaL_newlib(L, funcs);
	lua_pushstring(L, MOONBOX_VERSION);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, MOONBOX_API_VERSION);
	lua_setfield(L, -2, "api_version");
	lua_pushstring(L, LUA_RELEASE);
	lua_setfield(L, -2, "lua_version");
	lua_pushfstring(L, "%d.%d", MB_ABI_MAJOR, MB_ABI_MINOR);
	lua_setfield(L, -2, "abi");
	lua_pushnumber(L, started);
	lua_setfield(L, -2, "started");
	return 1;
}
