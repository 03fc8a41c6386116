/*
 * Lua module `timer`:
 *   timer.sleep(seconds)           -> true          (waits; the task yields)
 *   timer.after(seconds, fn, ...)  -> handle        fn(...) runs as a task once
 *   timer.every(seconds, fn)       -> handle        fn() runs as a task every interval
 *                                                   (measured from the end of the last run)
 *   handle:cancel()
 *   timer.now()                    -> monotonic seconds (float)
 *   timer.time()                   -> wall-clock seconds since the epoch (float)
 * Timers created while scripts load belong to that generation: a reload cancels them
 * and the new scripts create their own.
 */
#include <errno.h>
#include <math.h>

#include "bindings.h"
#include "log.h"
#include "loop.h"
#include "task.h"

#define TIMER_MT "moonbox.timer"

struct ltimer {
	mb_timer *t;
	int self_ref; /* anchors the userdata while armed or running */
	int fn_ref;   /* function + args packed in a table */
	double interval;
	bool repeat, cancelled, running;
	int gen; /* 0 runtime, 1 pending generation, 2 current generation */
	struct ltimer *gprev, *gnext;
};

static struct ltimer *gen_lists[3];

static uint64_t to_ms(lua_State *L, int idx)
{
	double s = luaL_checknumber(L, idx);
	if (!(s >= 0) || !isfinite(s) || s > 1e9)
		luaL_argerror(L, idx, "seconds must be a finite number >= 0");
	return (uint64_t)llround(s * 1000.0);
}

/* --- sleep --- */

static void sleep_fire(void *ud)
{
	mb_wait *w = ud;
	lua_pushboolean(rt_wait_thread(w), 1);
	rt_wait_done(w, 1);
}

struct sleeper {
	mb_timer *t;
	mb_wait *w;
};

static void sleep_fire2(void *ud)
{
	struct sleeper *s = ud;
	mb_wait *w = s->w;
	free(s);
	sleep_fire(w);
}

static void sleep_cancel(void *ud)
{
	struct sleeper *s = ud;
	loop_timer_stop(s->t);
	free(s);
}

static int l_sleep(lua_State *L)
{
	uint64_t ms = to_ms(L, 1);
	rt_wait_check(L); /* raises before anything is allocated */
	struct sleeper *s = xcalloc(1, sizeof(*s));
	s->w = rt_wait_begin(L, sleep_cancel, s);
	s->t = loop_timer(ms, sleep_fire2, s);
	return rt_wait_yield(L, s->w, NULL, 0);
}

/* --- after / every --- */

static void gen_unlink(struct ltimer *lt)
{
	if (!lt->gen)
		return;
	if (lt->gprev)
		lt->gprev->gnext = lt->gnext;
	else
		gen_lists[lt->gen] = lt->gnext;
	if (lt->gnext)
		lt->gnext->gprev = lt->gprev;
	lt->gprev = lt->gnext = NULL;
	lt->gen = 0;
}

static void gen_link(struct ltimer *lt, int gen)
{
	lt->gen = gen;
	lt->gnext = gen_lists[gen];
	if (gen_lists[gen])
		gen_lists[gen]->gprev = lt;
	gen_lists[gen] = lt;
}

static void release(lua_State *L, struct ltimer *lt)
{
	gen_unlink(lt);
	loop_timer_stop(lt->t);
	lt->t = NULL;
	if (lt->fn_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, lt->fn_ref);
		lt->fn_ref = LUA_NOREF;
	}
	if (lt->self_ref != LUA_NOREF) {
		int ref = lt->self_ref;
		lt->self_ref = LUA_NOREF;
		luaL_unref(L, LUA_REGISTRYINDEX, ref); /* may make lt collectable */
	}
}

static void fire(void *ud);

static void run_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	struct ltimer *lt = ud;
	lua_State *L = rt_state();
	lt->running = false;
	if (status != LUA_OK && status != TASK_CANCELLED)
		mb_log(MB_LOG_ERROR, "timer", "%s failed: %s", task_name(t), task_traceback(t));
	if (lt->repeat && !lt->cancelled)
		lt->t = loop_timer((uint64_t)llround(lt->interval * 1000.0), fire, lt);
	else
		release(L, lt);
}

static void fire(void *ud)
{
	struct ltimer *lt = ud;
	lua_State *L = rt_state();
	lt->t = NULL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, lt->fn_ref);
	int n = (int)lua_rawlen(L, -1);
	luaL_checkstack(L, n + 2, "timer arguments");
	for (int i = 1; i <= n; i++)
		lua_rawgeti(L, -i, i);
	lua_remove(L, -(n + 1));
	lt->running = true;
	task_start(L, n - 1, lt->repeat ? "timer.every" : "timer.after", false, run_done, lt);
}

static int start(lua_State *L, bool repeat)
{
	uint64_t ms = to_ms(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	int n = lua_gettop(L);
	struct ltimer *lt = lua_newuserdatauv(L, sizeof(*lt), 0);
	memset(lt, 0, sizeof(*lt));
	lt->fn_ref = lt->self_ref = LUA_NOREF;
	luaL_setmetatable(L, TIMER_MT);
	lua_createtable(L, n - 1, 0);
	for (int i = 2; i <= n; i++) {
		lua_pushvalue(L, i);
		lua_rawseti(L, -2, i - 1);
	}
	lt->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_pushvalue(L, -1);
	lt->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lt->repeat = repeat;
	lt->interval = (double)ms / 1000.0;
	if (gen_loading())
		gen_link(lt, 1);
	lt->t = loop_timer(ms, fire, lt);
	return 1;
}

static int l_after(lua_State *L)
{
	return start(L, false);
}

static int l_every(lua_State *L)
{
	return start(L, true);
}

static int t_cancel(lua_State *L)
{
	struct ltimer *lt = luaL_checkudata(L, 1, TIMER_MT);
	lt->cancelled = true;
	if (!lt->running)
		release(L, lt);
	return 0;
}

static int t_gc(lua_State *L)
{
	struct ltimer *lt = luaL_checkudata(L, 1, TIMER_MT);
	loop_timer_stop(lt->t);
	lt->t = NULL;
	return 0;
}

static int l_now(lua_State *L)
{
	lua_pushnumber(L, (double)mb_now_ms() / 1000.0);
	return 1;
}

static int l_time(lua_State *L)
{
	lua_pushnumber(L, mb_wall_time());
	return 1;
}

static void cancel_list(lua_State *L, int gen)
{
	while (gen_lists[gen]) {
		struct ltimer *lt = gen_lists[gen];
		gen_unlink(lt);
		lt->cancelled = true;
		if (!lt->running)
			release(L, lt);
	}
}

static void g_begin(lua_State *L)
{
	cancel_list(L, 1);
}

static void g_commit(lua_State *L)
{
	cancel_list(L, 2);
	while (gen_lists[1]) {
		struct ltimer *lt = gen_lists[1];
		gen_unlink(lt);
		gen_link(lt, 2);
	}
}

static void g_abort(lua_State *L)
{
	cancel_list(L, 1);
}

static void g_fini(lua_State *L)
{
	cancel_list(L, 1);
	cancel_list(L, 2);
}

static const struct gen_ops ops = { g_begin, g_commit, g_abort, g_fini };

static const luaL_Reg methods[] = {
	{ "cancel", t_cancel },
	{ "__gc", t_gc },
	{ NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "sleep", l_sleep }, { "after", l_after }, { "every", l_every },
	{ "now", l_now },     { "time", l_time },   { NULL, NULL },
};

int luaopen_mb_timer(lua_State *L)
{
	gen_register(&ops);
	luaL_newmetatable(L, TIMER_MT);
	luaL_setfuncs(L, methods, 0);
	lua_pushvalue(L, -1);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
