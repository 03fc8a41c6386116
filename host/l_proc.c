/*
 * Lua module `proc`:
 *   proc.run(argv [, {stdin=, timeout=, env=, cwd=}])
 *     -> {code=exit code | nil, signal=n | nil, stdout=, stderr=} | nil, msg, code
 *   A program that cannot be started fails with code "not_found"; timeout kills it and
 *   returns signal=9 and timed_out=true.
 *   proc.kill(pid, sig) / proc.alive(pid)
 * No shell is involved: argv[1] is looked up in PATH.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>

#include "bindings.h"
#include "loop.h"
#include "proc.h"
#include "task.h"

struct pcall {
	mb_wait *w;
	long id;
	bool timed_out;
	uint64_t timeout_ms, started;
};

static void on_exit_(const mb_run_result *res, void *ud)
{
	struct pcall *p = ud;
	mb_wait *w = p->w;
	lua_State *T = rt_wait_thread(w);
	lua_createtable(T, 0, 4);
	if (res->wstatus >= 0 && WIFEXITED(res->wstatus)) {
		lua_pushinteger(T, WEXITSTATUS(res->wstatus));
		lua_setfield(T, -2, "code");
	} else if (res->wstatus >= 0 && WIFSIGNALED(res->wstatus)) {
		lua_pushinteger(T, WTERMSIG(res->wstatus));
		lua_setfield(T, -2, "signal");
		if (p->timeout_ms && mb_now_ms() - p->started >= p->timeout_ms) {
			lua_pushboolean(T, 1);
			lua_setfield(T, -2, "timed_out");
		}
	}
	lua_pushlstring(T, res->out, res->out_len);
	lua_setfield(T, -2, "stdout");
	lua_pushlstring(T, res->errout, res->errout_len);
	lua_setfield(T, -2, "stderr");
	free(p);
	rt_wait_done(w, 1);
}

static void on_cancel(void *ud)
{
	struct pcall *p = ud;
	proc_run_cancel(p->id);
	free(p);
}

static const char **string_array(lua_State *L, int idx, const char *what)
{
	int n = (int)luaL_len(L, idx);
	const char **v = xcalloc((size_t)n + 1, sizeof(*v));
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(L, idx, i);
		v[i - 1] = lua_tostring(L, -1);
		lua_pop(L, 1); /* stays referenced by the table */
		if (!v[i - 1]) {
			free(v);
			luaL_error(L, "proc.run: %s[%d] is not a string", what, i);
		}
	}
	return v;
}

static int l_run(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	if (luaL_len(L, 1) < 1)
		return luaL_argerror(L, 1, "argv must not be empty");
	size_t in_len = 0;
	const char *in = NULL, *cwd = NULL;
	double timeout = 0;
	int env_idx = 0;
	if (lua_istable(L, 2)) {
		lua_getfield(L, 2, "stdin");
		in = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &in_len);
		lua_getfield(L, 2, "timeout");
		timeout = luaL_optnumber(L, -1, 0);
		lua_getfield(L, 2, "cwd");
		cwd = luaL_optstring(L, -1, NULL);
		lua_getfield(L, 2, "env");
		if (lua_istable(L, -1))
			env_idx = lua_gettop(L);
	}
	rt_wait_check(L);
	const char **argv = string_array(L, 1, "argv");
	const char **env = env_idx ? string_array(L, env_idx, "env") : NULL;
	struct pcall *p = xcalloc(1, sizeof(*p));
	p->timeout_ms = (uint64_t)llround(timeout * 1000);
	p->started = mb_now_ms();
	mb_err err = { 0 };
	p->id = proc_run_ex(argv, env, cwd, in, in_len, p->timeout_ms, on_exit_, p, &err);
	free(argv);
	free(env);
	if (p->id < 0) {
		free(p);
		return lua_fail(L, &err);
	}
	p->w = rt_wait_begin(L, on_cancel, p);
	return rt_wait_yield(L, p->w, NULL, 0);
}

static int l_kill(lua_State *L)
{
	lua_Integer pid = luaL_checkinteger(L, 1);
	int sig = (int)luaL_optinteger(L, 2, SIGTERM);
	if (pid <= 1)
		return luaL_argerror(L, 1, "refusing to signal pid <= 1");
	if (kill((pid_t)pid, sig) < 0)
		return lua_failf(L, -errno, "kill %lld: %s", (long long)pid, strerror(errno));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_alive(lua_State *L)
{
	lua_Integer pid = luaL_checkinteger(L, 1);
	lua_pushboolean(L, pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM));
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "run", l_run },
	{ "kill", l_kill },
	{ "alive", l_alive },
	{ NULL, NULL },
};

int luaopen_mb_proc(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
