#include "task.h"

#include <errno.h>
#include <string.h>

#include <lualib.h>

#include "log.h"
#include "loop.h"
#include "util.h"

#define HOOK_COUNT 10000
#define POOL_MAX   128

struct mb_wait {
	task *t;
	mb_fn cancel;
	void *ud;
};

struct task {
	uint64_t id;
	char *name;
	lua_State *co;
	int co_ref;
	mb_wait *wait;
	task_done_fn done;
	void *ud;
	uint64_t slice_start;
	int resume_nargs;
	unsigned defers; /* pending loop_defer entries pointing at this task */
	bool running, finished, runaway, cancel_pending;
	char *traceback;
	struct task *prev, *next;
};

static struct {
	lua_State *L;
	unsigned budget_ms;
	uint64_t next_id;
	task *tasks;
	unsigned ntasks;
	task *current;
	/* idle coroutines ready for reuse: registry refs */
	int pool[POOL_MAX];
	int npool;
	uint64_t load_start;
	bool loading, load_runaway;
} R;

/* The value a task yields to mean "waiting on the loop". */
static char SCHED;

static void hook(lua_State *L, lua_Debug *ar);
static void on_defer(void *p);

lua_State *rt_state(void)
{
	return R.L;
}

unsigned rt_budget_ms(void)
{
	return R.budget_ms;
}

task *task_current(void)
{
	return R.current;
}

uint64_t task_id(const task *t)
{
	return t->id;
}

const char *task_name(const task *t)
{
	return t->name;
}

const char *task_traceback(const task *t)
{
	return t->traceback;
}

bool task_runaway(const task *t)
{
	return t->runaway;
}

void *task_ud(const task *t)
{
	return t->ud;
}

unsigned task_count(void)
{
	return R.ntasks;
}

task *task_find(uint64_t id)
{
	for (task *t = R.tasks; t; t = t->next)
		if (t->id == id && !t->finished)
			return t;
	return NULL;
}

/* --- the runaway hook --- */

static void hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	task *t = R.current;
	uint64_t now = mb_now_ms();
	if (t) {
		if (t->cancel_pending) {
			lua_sethook(L, hook, LUA_MASKCOUNT, 1);
			luaL_error(L, "task cancelled");
		}
		if (t->runaway || now - t->slice_start > R.budget_ms) {
			t->runaway = true;
			/* Fire again on the very next instruction: a pcall cannot swallow it. */
			lua_sethook(L, hook, LUA_MASKCOUNT, 1);
			luaL_error(L,
			           "script ran for more than %d ms without waiting and was stopped "
			           "(runaway script in task '%s')",
			           (int)R.budget_ms, t->name);
		}
	} else if (R.loading && (R.load_runaway || now - R.load_start > R.budget_ms)) {
		R.load_runaway = true;
		lua_sethook(L, hook, LUA_MASKCOUNT, 1);
		luaL_error(L, "script ran for more than %d ms while loading and was stopped",
		           (int)R.budget_ms);
	}
}

void rt_load_begin(void)
{
	R.loading = true;
	R.load_runaway = false;
	R.load_start = mb_now_ms();
	lua_sethook(R.L, hook, LUA_MASKCOUNT, HOOK_COUNT);
}

void rt_load_end(void)
{
	R.loading = false;
	R.load_runaway = false;
	lua_sethook(R.L, hook, LUA_MASKCOUNT, HOOK_COUNT);
}

/* --- coroutine wrapping: user coroutines nest under the scheduler --- */

/* Called by the Lua wrapper when a nested coroutine waits on the loop but its parent
 * cannot yield: drop the wait so nothing resumes a coroutine that is not waiting. */
static int l_abandon_wait(lua_State *L)
{
	task *t = R.current;
	if (t && t->wait) {
		mb_wait *w = t->wait;
		t->wait = NULL;
		if (w->cancel)
			w->cancel(w->ud);
		free(w);
	}
	return luaL_error(L, "cannot wait here: a coroutine waited on the loop from a context "
	                     "that cannot yield (inside db.transaction, a C callback or a "
	                     "non-yieldable coroutine)");
}

static const char wrap_src[] =
    "local SCHED, abandon = ...\n"
    "local create, resume, yield, status = coroutine.create, coroutine.resume,\n"
    "  coroutine.yield, coroutine.status\n"
    "local isyieldable, select, error = coroutine.isyieldable, select, error\n"
    "local function relay(co, ok, ...)\n"
    "  if ok and select('#', ...) == 1 and (...) == SCHED and status(co) == 'suspended' then\n"
    "    if not isyieldable() then abandon() end\n"
    "    return relay(co, resume(co, yield(SCHED)))\n"
    "  end\n"
    "  return ok, ...\n"
    "end\n"
    "local function wresume(co, ...) return relay(co, resume(co, ...)) end\n"
    "local function unwrap(ok, ...)\n"
    "  if ok then return ... end\n"
    "  error((...), 0)\n"
    "end\n"
    "coroutine.resume = wresume\n"
    "coroutine.wrap = function(f)\n"
    "  local co = create(f)\n"
    "  return function(...) return unwrap(wresume(co, ...)) end\n"
    "end\n";

static int install_coroutine_wrappers(lua_State *L, mb_err *err)
{
	if (luaL_loadbufferx(L, wrap_src, sizeof(wrap_src) - 1, "=coroutine-wrap", "t") != LUA_OK)
		goto fail;
	lua_pushlightuserdata(L, &SCHED);
	lua_pushcfunction(L, l_abandon_wait);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK)
		goto fail;
	return 0;
fail:
	mb_err_set(err, -EINVAL, "coroutine wrappers: %s", lua_tostring(L, -1));
	lua_pop(L, 1);
	return -EINVAL;
}

/* --- tasks --- */

static lua_State *thread_get(int *ref)
{
	if (R.npool) {
		*ref = R.pool[--R.npool];
		lua_rawgeti(R.L, LUA_REGISTRYINDEX, *ref);
		lua_State *co = lua_tothread(R.L, -1);
		lua_pop(R.L, 1);
		return co;
	}
	lua_State *co = lua_newthread(R.L);
	*ref = luaL_ref(R.L, LUA_REGISTRYINDEX);
	return co;
}

static void thread_put(lua_State *co, int ref, bool clean)
{
	lua_settop(co, 0);
	if (clean && R.npool < POOL_MAX && lua_status(co) == LUA_OK) {
		R.pool[R.npool++] = ref;
		return;
	}
	luaL_unref(R.L, LUA_REGISTRYINDEX, ref);
}

static void task_unlink_free(task *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		R.tasks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	R.ntasks--;
	free(t->name);
	free(t->traceback);
	free(t);
}

/* The task is over (for whatever reason): deliver, recycle the thread, free. */
static void task_finish(task *t, int status, int nres)
{
	lua_State *co = t->co;
	t->finished = true;
	if (t->wait) { /* cancelled while waiting */
		mb_wait *w = t->wait;
		t->wait = NULL;
		if (w->cancel)
			w->cancel(w->ud);
		free(w);
	}
	if (status != LUA_OK && status != TASK_CANCELLED) {
		const char *msg = lua_tostring(co, -1);
		luaL_traceback(co, co, msg ? msg : "(error object is not a string)", 0);
		t->traceback = xstrdup(lua_tostring(co, -1));
		lua_pop(co, 1);
	}
	if (t->done)
		t->done(t, status, co, nres, t->ud);
	/* Only a thread that returned normally is reused. One that died with an error may
	 * have died inside the count hook, and Lua (5.4.4) then leaves hooks disabled on
	 * it for good (allowhook stays 0 through lua_resume and lua_resetthread): reusing
	 * it would run the next task with no runaway protection. */
	bool clean = status == LUA_OK;
	if (!clean)
		lua_resetthread(co); /* closes pending to-be-closed variables */
	lua_sethook(co, hook, LUA_MASKCOUNT, HOOK_COUNT);
	thread_put(co, t->co_ref, clean);
	t->co = NULL;
	if (t->defers == 0)
		task_unlink_free(t);
}

static void task_step(task *t)
{
	int nres = 0;
	task *prev = R.current;
	R.current = t;
	t->running = true;
	t->slice_start = mb_now_ms();
	int nargs = t->resume_nargs;
	t->resume_nargs = 0;
	int st = lua_resume(t->co, R.L, nargs, &nres);
	t->running = false;
	R.current = prev;
	if (st == LUA_YIELD) {
		bool sched = nres == 1 && lua_touserdata(t->co, -1) == &SCHED;
		lua_pop(t->co, nres);
		if (t->cancel_pending) {
			task_finish(t, TASK_CANCELLED, 0);
			return;
		}
		if (!sched) {
			/* A plain coroutine.yield() at the top of a task: give others a turn. */
			t->defers++;
			loop_defer(on_defer, t);
		}
		return;
	}
	task_finish(t, t->cancel_pending && st != LUA_OK ? TASK_CANCELLED : st, nres);
}

static void on_defer(void *p)
{
	task *t = p;
	t->defers--;
	if (t->finished) {
		if (t->defers == 0)
			task_unlink_free(t);
		return;
	}
	task_step(t);
}

task *task_start(lua_State *L, int nargs, const char *name, bool now, task_done_fn done, void *ud)
{
	task *t = xcalloc(1, sizeof(*t));
	t->id = ++R.next_id;
	t->name = xstrdup(name ? name : "task");
	t->done = done;
	t->ud = ud;
	t->co = thread_get(&t->co_ref);
	lua_sethook(t->co, hook, LUA_MASKCOUNT, HOOK_COUNT);
	lua_xmove(L, t->co, nargs + 1);
	t->resume_nargs = nargs;
	t->next = R.tasks;
	if (R.tasks)
		R.tasks->prev = t;
	R.tasks = t;
	R.ntasks++;
	if (now) {
		t->defers++; /* keep t alive across the first step */
		task_step(t);
		t->defers--;
		if (t->finished) {
			if (t->defers == 0)
				task_unlink_free(t);
			return NULL;
		}
		return t;
	}
	t->defers++;
	loop_defer(on_defer, t);
	return t;
}

void task_cancel(task *t)
{
	if (!t || t->finished)
		return;
	if (t->running || t == R.current) {
		t->cancel_pending = true; /* the hook or the next wait stops it */
		return;
	}
	task_finish(t, TASK_CANCELLED, 0);
}

void task_cancel_all(void)
{
	task *t = R.tasks;
	while (t) {
		task *next = t->next;
		if (!t->finished && !t->running) {
			t->defers++;
			task_cancel(t);
			t->defers--;
			next = t->next;
			if (t->finished && t->defers == 0)
				task_unlink_free(t);
		}
		t = next;
	}
}

/* --- waits --- */

void rt_wait_check(lua_State *L)
{
	task *t = R.current;
	if (!t)
		luaL_error(L, "this function waits and can only be called from a task (a "
		              "request handler, event handler or timer), not while scripts load");
	if (!lua_isyieldable(L))
		luaL_error(L, "cannot wait here: not yieldable (inside db.transaction, "
		              "table.sort, a metamethod or another C callback)");
	if (t->cancel_pending)
		luaL_error(L, "task cancelled");
	if (t->wait)
		luaL_error(L, "task is already waiting");
}

mb_wait *rt_wait_begin(lua_State *L, mb_fn cancel, void *ud)
{
	task *t = R.current;
	if (!t)
		luaL_error(L, "this function waits and can only be called from a task (a "
		              "request handler, event handler or timer), not while scripts load");
	if (!lua_isyieldable(L))
		luaL_error(L, "cannot wait here: not yieldable (inside db.transaction, "
		              "table.sort, a metamethod or another C callback)");
	if (t->cancel_pending)
		luaL_error(L, "task cancelled");
	if (t->wait)
		luaL_error(L, "task is already waiting");
	mb_wait *w = xcalloc(1, sizeof(*w));
	w->t = t;
	w->cancel = cancel;
	w->ud = ud;
	t->wait = w;
	return w;
}

int rt_wait_yield(lua_State *L, mb_wait *w, lua_KFunction k, lua_KContext ctx)
{
	(void)w;
	lua_pushlightuserdata(L, &SCHED);
	return lua_yieldk(L, 1, ctx, k);
}

lua_State *rt_wait_thread(mb_wait *w)
{
	return w->t->co;
}

void rt_wait_done(mb_wait *w, int nresults)
{
	task *t = w->t;
	t->wait = NULL;
	free(w);
	t->resume_nargs = nresults;
	t->defers++;
	loop_defer(on_defer, t);
}

/* --- state set-up --- */

static int l_print(lua_State *L)
{
	buf b = { 0 };
	int n = lua_gettop(L);
	for (int i = 1; i <= n; i++) {
		size_t len;
		const char *s = luaL_tolstring(L, i, &len);
		if (i > 1)
			buf_append(&b, "\t", 1);
		buf_append(&b, s, len);
		lua_pop(L, 1);
	}
	mb_log(MB_LOG_INFO, "lua", "%s", b.data ? b.data : "");
	buf_free(&b);
	return 0;
}

/* load() restricted to text chunks: no binary bytecode from anywhere. */
static int l_load_text(lua_State *L)
{
	/* load(chunk [, name [, mode [, env]]]) with mode forced to "t". The env argument is
	 * passed on only if given: an explicit nil would become the chunk's _ENV. */
	int n = lua_gettop(L);
	if (n < 1)
		return luaL_error(L, "bad argument #1 to 'load' (value expected)");
	lua_settop(L, n < 3 ? 3 : n);
	lua_pushstring(L, "t");
	lua_replace(L, 3);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, n >= 4 ? 4 : 3, LUA_MULTRET);
	return lua_gettop(L);
}

static void sandbox(lua_State *L)
{
	/* Things that would block the loop, kill the daemon, or load native code. */
	static const char *const os_drop[] = { "exit",    "execute",   "remove", "rename",
		                               "tmpname", "setlocale", NULL };
	lua_getglobal(L, "os");
	for (int i = 0; os_drop[i]; i++) {
		lua_pushnil(L);
		lua_setfield(L, -2, os_drop[i]);
	}
	lua_pop(L, 1);
	lua_pushnil(L);
	lua_setglobal(L, "io"); /* use the fs module */
	lua_pushnil(L);
	lua_setglobal(L, "dofile");
	lua_pushnil(L);
	lua_setglobal(L, "loadfile");
	lua_pushcfunction(L, l_print);
	lua_setglobal(L, "print");
	lua_getglobal(L, "load");
	lua_pushcclosure(L, l_load_text, 1);
	lua_setglobal(L, "load");
	/* package: keep preload and our own searchers (set by scripts.c); no C loaders. */
	lua_getglobal(L, "package");
	lua_pushnil(L);
	lua_setfield(L, -2, "loadlib");
	lua_pushstring(L, "");
	lua_setfield(L, -2, "cpath");
	lua_pushstring(L, "");
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
}

int rt_init(unsigned budget_ms, mb_err *err)
{
	R.budget_ms = budget_ms ? budget_ms : 2000;
	R.L = luaL_newstate();
	if (!R.L)
		return mb_err_set(err, -ENOMEM, "cannot create the Lua state");
	luaL_openlibs(R.L);
	lua_gc(R.L, LUA_GCGEN, 0, 0);
	sandbox(R.L);
	int r = install_coroutine_wrappers(R.L, err);
	if (r < 0)
		return r;
	lua_sethook(R.L, hook, LUA_MASKCOUNT, HOOK_COUNT);
	return 0;
}

void rt_fini(void)
{
	if (!R.L)
		return;
	task_cancel_all();
	/* Tasks that were running cannot be here: we are called from the loop. Free any
	 * husks kept alive only by pending defers (the loop is gone). */
	while (R.tasks) {
		task *t = R.tasks;
		if (!t->finished)
			task_finish(t, TASK_CANCELLED, 0);
		task_unlink_free(t);
	}
	lua_close(R.L);
	R.L = NULL;
	R.npool = 0;
}
