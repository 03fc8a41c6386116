/*
 * Lua module `task`:
 *   task.spawn(fn, ...)  -> handle     fn(...) runs as a new task (from the loop)
 *   handle:wait([timeout_s]) -> true, results... | nil, msg, code  (waits for the end)
 *   handle:cancel()                    its pending wait is cleaned up, to-be-closed
 *                                      variables are closed
 *   handle:status()      -> "running" | "done" | "failed" | "cancelled"
 *   handle.id
 *   task.id()            -> id of the running task (nil outside tasks)
 *   task.count()         -> live tasks
 *   task.yield()         -> let other tasks run, then continue
 *   task.cond()          -> a condition: cond:wait([timeout]) ⏳ -> true | nil, "timeout";
 *                           cond:signal() wakes every task waiting on it (returns how many)
 */
#include <errno.h>

#include "bindings.h"
#include "log.h"
#include "loop.h"
#include "task.h"

#define TASK_MT "moonbox.task"

struct th {
	uint64_t id;
	task *t; /* NULL once finished */
	int self_ref;
	int res_ref; /* table of results, or error message string */
	int status;  /* LUA_OK, error, TASK_CANCELLED; -1 running */
	mb_wait *joiner;
	mb_timer *join_timer;
	bool join_timed_out;
};

static void spawn_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	struct th *h = ud;
	lua_State *L = rt_state();
	h->t = NULL;
	h->status = status;
	if (status == LUA_OK) {
		lua_createtable(L, nres, 0);
		for (int i = nres; i >= 1; i--) {
			lua_xmove(co, L, 1);
			lua_rawseti(L, -2, i);
		}
	} else if (status == TASK_CANCELLED) {
		lua_pushstring(L, "task cancelled");
	} else {
		mb_log(MB_LOG_ERROR, "task", "task %s failed: %s", task_name(t), task_traceback(t));
		lua_pushstring(L, lua_isstring(co, -1) ? lua_tostring(co, -1) : "task failed");
	}
	h->res_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	if (h->joiner) {
		mb_wait *w = h->joiner;
		h->joiner = NULL;
		loop_timer_stop(h->join_timer);
		h->join_timer = NULL;
		rt_wait_done(w, 0);
	}
	int ref = h->self_ref;
	h->self_ref = LUA_NOREF;
	luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

static int l_spawn(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	int nargs = lua_gettop(L) - 1;
	struct th *h = lua_newuserdatauv(L, sizeof(*h), 0);
	memset(h, 0, sizeof(*h));
	h->status = -1;
	h->res_ref = LUA_NOREF;
	luaL_setmetatable(L, TASK_MT);
	lua_pushvalue(L, -1);
	h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_insert(L, 1); /* handle below fn */
	lua_State *M = rt_state();
	if (L != M) {
		lua_xmove(L, M, nargs + 1);
	}
	h->t = task_start(M, nargs, "task.spawn", false, spawn_done, h);
	h->id = task_id(h->t);
	return 1; /* the handle, left on L */
}

static int join_result(lua_State *L, struct th *h)
{
	if (h->status == LUA_OK) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, h->res_ref);
		int n = (int)lua_rawlen(L, -1);
		luaL_checkstack(L, n + 1, "results");
		lua_pushboolean(L, 1);
		for (int i = 1; i <= n; i++)
			lua_rawgeti(L, -2 - (i - 1), i);
		return n + 1;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, h->res_ref);
	const char *msg = lua_tostring(L, -1);
	return lua_failf(L, h->status == TASK_CANCELLED ? -ECANCELED : -EIO, "%s",
	                 msg ? msg : "task failed");
}

static void join_cancel(void *ud)
{
	struct th *h = ud;
	h->joiner = NULL;
	loop_timer_stop(h->join_timer);
	h->join_timer = NULL;
}

static void join_timeout(void *ud)
{
	struct th *h = ud;
	h->join_timer = NULL;
	h->join_timed_out = true;
	mb_wait *w = h->joiner;
	h->joiner = NULL;
	rt_wait_done(w, 0);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	if (h->status < 0) {
		h->join_timed_out = false;
		return lua_failf(L, -ETIMEDOUT, "timeout");
	}
	return join_result(L, h);
}

static int h_wait(lua_State *L)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	double timeout = luaL_optnumber(L, 2, -1);
	lua_settop(L, 2);
	if (h->status >= 0)
		return join_result(L, h);
	if (h->joiner)
		return luaL_error(L, "task:wait(): another task is already waiting for it");
	if (timeout == 0)
		return lua_failf(L, -ETIMEDOUT, "timeout");
	h->joiner = rt_wait_begin(L, join_cancel, h);
	if (timeout > 0)
		h->join_timer = loop_timer((uint64_t)(timeout * 1000), join_timeout, h);
	return rt_wait_yield(L, h->joiner, wait_k, 0);
}

static int h_cancel(lua_State *L)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	if (h->t)
		task_cancel(h->t);
	return 0;
}

static int h_status(lua_State *L)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	const char *s = h->status < 0                 ? "running"
	                : h->status == LUA_OK         ? "done"
	                : h->status == TASK_CANCELLED ? "cancelled"
	                                              : "failed";
	lua_pushstring(L, s);
	return 1;
}

static int h_index(lua_State *L)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	const char *k = luaL_checkstring(L, 2);
	if (strcmp(k, "id") == 0) {
		lua_pushinteger(L, (lua_Integer)h->id);
		return 1;
	}
	luaL_getmetatable(L, TASK_MT);
	lua_getfield(L, -1, "methods");
	lua_getfield(L, -1, k);
	return 1;
}

static int h_gc(lua_State *L)
{
	struct th *h = luaL_checkudata(L, 1, TASK_MT);
	if (h->res_ref != LUA_NOREF)
		luaL_unref(L, LUA_REGISTRYINDEX, h->res_ref);
	h->res_ref = LUA_NOREF;
	return 0;
}

static int l_id(lua_State *L)
{
	task *t = task_current();
	if (!t)
		return 0;
	lua_pushinteger(L, (lua_Integer)task_id(t));
	return 1;
}

static int l_count(lua_State *L)
{
	lua_pushinteger(L, task_count());
	return 1;
}

struct yielder {
	mb_wait *w; /* NULL once cancelled */
};

static void yield_fire(void *ud)
{
	struct yielder *y = ud;
	if (y->w)
		rt_wait_done(y->w, 0);
	free(y);
}

static void yield_cancel(void *ud)
{
	struct yielder *y = ud;
	y->w = NULL; /* yield_fire still runs (it is queued) and frees y */
}

static int l_yield(lua_State *L)
{
	rt_wait_check(L);
	struct yielder *y = xcalloc(1, sizeof(*y));
	y->w = rt_wait_begin(L, yield_cancel, y);
	loop_defer(yield_fire, y);
	return rt_wait_yield(L, y->w, NULL, 0);
}

/* --- conditions --- */

#define COND_MT "moonbox.task.cond"

struct waiter {
	mb_wait *w;
	mb_timer *t;
	struct cond *c;
	bool timed_out;
	struct waiter *prev, *next;
};

struct cond {
	struct waiter *head;
};

static void waiter_unlink(struct waiter *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else if (x->c && x->c->head == x)
		x->c->head = x->next;
	if (x->next)
		x->next->prev = x->prev;
	x->prev = x->next = NULL;
	x->c = NULL;
}

static void waiter_cancel(void *ud)
{
	struct waiter *x = ud;
	waiter_unlink(x);
	loop_timer_stop(x->t);
	free(x);
}

static void waiter_wake(struct waiter *x, bool timed_out)
{
	mb_wait *w = x->w;
	waiter_unlink(x);
	loop_timer_stop(x->t);
	x->t = NULL;
	lua_State *T = rt_wait_thread(w);
	int n;
	if (timed_out) {
		n = lua_failf(T, -ETIMEDOUT, "timeout");
	} else {
		lua_pushboolean(T, 1);
		n = 1;
	}
	free(x);
	rt_wait_done(w, n);
}

static void waiter_timeout(void *ud)
{
	struct waiter *x = ud;
	x->t = NULL;
	waiter_wake(x, true);
}

static int cond_wait(lua_State *L)
{
	struct cond *c = luaL_checkudata(L, 1, COND_MT);
	double timeout = luaL_optnumber(L, 2, -1);
	if (timeout == 0)
		return lua_failf(L, -ETIMEDOUT, "timeout");
	rt_wait_check(L);
	struct waiter *x = xcalloc(1, sizeof(*x));
	x->c = c;
	x->next = c->head;
	if (c->head)
		c->head->prev = x;
	c->head = x;
	x->w = rt_wait_begin(L, waiter_cancel, x);
	if (timeout > 0)
		x->t = loop_timer((uint64_t)(timeout * 1000), waiter_timeout, x);
	/* the cond object stays referenced by this stack while we wait */
	return rt_wait_yield(L, x->w, NULL, 0);
}

static int cond_signal(lua_State *L)
{
	struct cond *c = luaL_checkudata(L, 1, COND_MT);
	int n = 0;
	while (c->head) {
		waiter_wake(c->head, false);
		n++;
	}
	lua_pushinteger(L, n);
	return 1;
}

static int cond_gc(lua_State *L)
{
	struct cond *c = luaL_checkudata(L, 1, COND_MT);
	while (c->head) /* cannot happen while someone waits (they hold a reference) */
		waiter_unlink(c->head);
	return 0;
}

static int l_cond(lua_State *L)
{
	struct cond *c = lua_newuserdatauv(L, sizeof(*c), 0);
	c->head = NULL;
	luaL_setmetatable(L, COND_MT);
	return 1;
}

static const luaL_Reg cond_methods[] = {
	{ "wait", cond_wait },
	{ "signal", cond_signal },
	{ NULL, NULL },
};

static const luaL_Reg methods[] = {
	{ "wait", h_wait },
	{ "cancel", h_cancel },
	{ "status", h_status },
	{ NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "spawn", l_spawn }, { "id", l_id }, { "count", l_count },
	{ "yield", l_yield }, { "cond", l_cond }, { NULL, NULL },
};

int luaopen_mb_task(lua_State *L)
{
	luaL_newmetatable(L, TASK_MT);
	lua_pushcfunction(L, h_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, h_gc);
	lua_setfield(L, -2, "__gc");
	luaL_newlib(L, methods);
	lua_setfield(L, -2, "methods");
	lua_pop(L, 1);
	luaL_newmetatable(L, COND_MT);
	lua_newtable(L);
	luaL_setfuncs(L, cond_methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, cond_gc);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
