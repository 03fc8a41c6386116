/*
 * fakehost: a minimal stand-in for the moonbox core, enough to load build/plugins/registry.so
 * through its real entry point and run a Lua test script against it while the core is
 * written elsewhere. It implements the parts of struct mb_host the plugin uses: timers,
 * work, run and curl on the private test loop (loop.c), Lua modules, the wait/yield
 * protocol with coroutine tasks (`spawn(fn)` starts another task), JSON -> Lua, SQLite with
 * db_migrate, events (recorded; `events(type)` returns them to Lua) and hold().
 *
 *   fakehost PLUGIN.so STATE_DIR SCRIPT.lua
 * Exit status 0 when the script finished without error.
 */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "loop.h"

static struct test_loop *loop;
static const struct mbr_io *io;
static lua_State *L0;
static sqlite3 *dbh;
static const char *state_dir;
static volatile bool wake;
static int holds;
static json_t *events_log;

struct mb_wait {
	struct mb_wait *next;
	lua_State *T;
	mb_fn cancel;
	void *ud;
	int nres; /* -1 while waiting */
};
static struct mb_wait *waits;

struct task {
	struct task *next;
	lua_State *T;
	int ref;
	bool done;
	int nargs; /* results to resume with */
	bool runnable;
};
static struct task *tasks;
static int task_errors;

static void h_log(mb_plugin *p, int level, const char *fmt, ...)
{
	if (!getenv("MBR_VERBOSE") && level > MB_LOG_WARN)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[plugin %d] ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static const char *h_config(const char *key)
{
	return !strcmp(key, "state_dir") ? state_dir : NULL;
}

static mb_timer *h_timer_start(uint64_t ms, mb_fn fn, void *ud)
{
	return io->timer_start(io->ud, ms, fn, ud);
}

static void h_timer_stop(mb_timer *t)
{
	io->timer_stop(io->ud, t);
}

static int h_work(mb_fn work, mb_fn done, void *ud, mb_err *err)
{
	return io->work(io->ud, work, done, ud, err);
}

static int h_run(const char *const argv[], const char *in, size_t in_len, uint64_t timeout_ms,
                 mb_run_fn fn, void *ud, mb_err *err)
{
	return io->run(io->ud, argv, timeout_ms, fn, ud, err);
}

static int h_curl_add(CURL *easy, mb_curl_fn fn, void *ud, mb_err *err)
{
	return io->curl_add(io->ud, easy, fn, ud, err);
}

static void h_curl_remove(CURL *easy)
{
	io->curl_remove(io->ud, easy);
}

static lua_State *h_lua_main(void)
{
	return L0;
}

static int h_lua_module(mb_plugin *p, const char *name, const luaL_Reg *funcs, mb_err *err)
{
	lua_newtable(L0);
	luaL_setfuncs(L0, funcs, 0);
	lua_pushvalue(L0, -1);
	lua_setglobal(L0, name);
	luaL_getsubtable(L0, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	lua_pushvalue(L0, -2);
	lua_setfield(L0, -2, name);
	lua_pop(L0, 2);
	return 0;
}

static void h_lua_setfuncs(mb_plugin *p, lua_State *L, const luaL_Reg *funcs)
{
	luaL_setfuncs(L, funcs, 0);
}

static mb_wait *h_wait_begin(lua_State *L, mb_fn cancel, void *ud)
{
	if (!lua_isyieldable(L))
		luaL_error(L, "cannot wait outside a task");
	mb_wait *w = calloc(1, sizeof(*w));
	w->T = L;
	w->cancel = cancel;
	w->ud = ud;
	w->nres = -1;
	w->next = waits;
	waits = w;
	return w;
}

static int h_wait_yield(lua_State *L, mb_wait *w, lua_KFunction k, lua_KContext ctx)
{
	return lua_yieldk(L, 0, ctx, k);
}

static lua_State *h_wait_thread(mb_wait *w)
{
	return w->T;
}

static void h_wait_done(mb_wait *w, int n)
{
	w->nres = n;
	wake = true;
}

static void push_json(lua_State *L, const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		lua_createtable(L, 0, (int)json_object_size(j));
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)j, k, v)
		{
			push_json(L, v);
			lua_setfield(L, -2, k);
		}
		break;
	}
	case JSON_ARRAY: {
		lua_createtable(L, (int)json_array_size(j), 0);
		size_t i;
		json_t *v;
		json_array_foreach(j, i, v)
		{
			push_json(L, v);
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
		break;
	}
	case JSON_STRING:
		lua_pushlstring(L, json_string_value(j), json_string_length(j));
		break;
	case JSON_INTEGER:
		lua_pushinteger(L, (lua_Integer)json_integer_value(j));
		break;
	case JSON_REAL:
		lua_pushnumber(L, json_real_value(j));
		break;
	case JSON_TRUE:
		lua_pushboolean(L, 1);
		break;
	case JSON_FALSE:
		lua_pushboolean(L, 0);
		break;
	default:
		lua_pushnil(L);
	}
}

static void h_lua_push_json(lua_State *L, const json_t *j)
{
	push_json(L, j);
}

static sqlite3 *h_db(void)
{
	return dbh;
}

static int h_db_migrate(const char *component, const char *const steps[], int nsteps, mb_err *err)
{
	sqlite3_exec(dbh,
	             "CREATE TABLE IF NOT EXISTS schema_versions(component TEXT PRIMARY KEY, "
	             "version INTEGER NOT NULL)",
	             NULL, NULL, NULL);
	sqlite3_stmt *st;
	sqlite3_prepare_v2(dbh, "SELECT version FROM schema_versions WHERE component = ?", -1, &st,
	                   NULL);
	sqlite3_bind_text(st, 1, component, -1, SQLITE_STATIC);
	int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	for (int i = v; i < nsteps; i++) {
		char *msg = NULL;
		char *sql = sqlite3_mprintf("BEGIN IMMEDIATE; %s; INSERT OR REPLACE INTO "
		                            "schema_versions VALUES(%Q, %d); COMMIT;",
		                            steps[i], component, i + 1);
		int r = sqlite3_exec(dbh, sql, NULL, NULL, &msg);
		sqlite3_free(sql);
		if (r != SQLITE_OK) {
			sqlite3_exec(dbh, "ROLLBACK", NULL, NULL, NULL);
			int rc =
			    mb_err_set(err, -EIO, "migration %s %d: %s", component, i + 1, msg);
			sqlite3_free(msg);
			return rc;
		}
	}
	return 0;
}

static int h_emit(const char *type, json_t *data, mb_err *err)
{
	json_array_append_new(
	    events_log, json_pack("{s:s,s:o}", "type", type, "data", data ? data : json_null()));
	if (getenv("MBR_VERBOSE")) {
		char *s = json_dumps(data, JSON_COMPACT);
		fprintf(stderr, "event %s %.300s\n", type, s ? s : "null");
		free(s);
	}
	return 0;
}

static void h_hold(mb_plugin *p, int delta)
{
	holds += delta;
}

static const struct mb_host host = {
	.size = sizeof(struct mb_host),
	.abi_major = MB_ABI_MAJOR,
	.abi_minor = MB_ABI_MINOR,
	.version = "fakehost",
	.log = h_log,
	.config = h_config,
	.timer_start = h_timer_start,
	.timer_stop = h_timer_stop,
	.work = h_work,
	.run = h_run,
	.curl_add = h_curl_add,
	.curl_remove = h_curl_remove,
	.lua_main = h_lua_main,
	.lua_module = h_lua_module,
	.lua_setfuncs = h_lua_setfuncs,
	.wait_begin = h_wait_begin,
	.wait_yield = h_wait_yield,
	.wait_thread = h_wait_thread,
	.wait_done = h_wait_done,
	.lua_push_json = h_lua_push_json,
	.db = h_db,
	.db_migrate = h_db_migrate,
	.emit = h_emit,
	.hold = h_hold,
};

/* spawn(fn): run fn as another task. [-1, +0, e] */
static int l_spawn(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	struct task *t = calloc(1, sizeof(*t));
	t->T = lua_newthread(L0);
	t->ref = luaL_ref(L0, LUA_REGISTRYINDEX);
	lua_pushvalue(L, 1);
	lua_xmove(L, t->T, 1);
	t->runnable = true;
	t->next = tasks;
	tasks = t;
	return 0;
}

/* events(type) -> {data...} of events emitted so far with that type. [-1, +1, e] */
static int l_events(lua_State *L)
{
	const char *type = luaL_checkstring(L, 1);
	lua_newtable(L);
	size_t i, n = 0;
	json_t *e;
	json_array_foreach(events_log, i, e)
	{
		if (strcmp(json_string_value(json_object_get(e, "type")), type))
			continue;
		push_json(L, json_object_get(e, "data"));
		lua_rawseti(L, -2, (lua_Integer)++n);
	}
	return 1;
}

static void resume_task(struct task *t)
{
	int nres = 0;
	t->runnable = false;
	int r = lua_resume(t->T, L0, t->nargs, &nres);
	t->nargs = 0;
	if (r == LUA_YIELD) {
		lua_pop(t->T, nres);
		return;
	}
	t->done = true;
	if (r != LUA_OK) {
		fprintf(stderr, "task error: %s\n", lua_tostring(t->T, -1));
		luaL_traceback(L0, t->T, NULL, 0);
		fprintf(stderr, "%s\n", lua_tostring(L0, -1));
		lua_pop(L0, 1);
		task_errors++;
	}
}

static struct task *task_of(lua_State *T)
{
	for (struct task *t = tasks; t; t = t->next)
		if (t->T == T)
			return t;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: fakehost PLUGIN.so STATE_DIR SCRIPT.lua\n");
		return 2;
	}
	state_dir = argv[2];
	curl_global_init(CURL_GLOBAL_DEFAULT);
	loop = tl_new();
	io = tl_io(loop);
	events_log = json_array();
	char dbpath[4096];
	snprintf(dbpath, sizeof(dbpath), "%s/moonbox.db", state_dir);
	if (sqlite3_open(dbpath, &dbh) != SQLITE_OK)
		return 1;
	sqlite3_exec(dbh, "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON", NULL, NULL, NULL);
	L0 = luaL_newstate();
	luaL_openlibs(L0);
	lua_register(L0, "spawn", l_spawn);
	lua_register(L0, "events", l_events);

	void *so = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!so) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	const struct mb_plugin_def *(*entry)(void) =
	    (const struct mb_plugin_def *(*)(void))dlsym(so, MB_PLUGIN_ENTRY_SYMBOL);
	if (!entry) {
		fprintf(stderr, "no %s in %s\n", MB_PLUGIN_ENTRY_SYMBOL, argv[1]);
		return 1;
	}
	const struct mb_plugin_def *def = entry();
	if (def->abi_major != MB_ABI_MAJOR || def->abi_minor > MB_ABI_MINOR) {
		fprintf(stderr, "ABI mismatch\n");
		return 1;
	}
	mb_err err = { 0 };
	if (def->init(&host, (mb_plugin *)&host, &err) < 0) {
		fprintf(stderr, "init: %s\n", err.msg);
		return 1;
	}
	if (luaL_loadfile(L0, argv[3]) != LUA_OK) {
		fprintf(stderr, "%s\n", lua_tostring(L0, -1));
		return 1;
	}
	l_spawn(L0);
	lua_pop(L0, 1);
	for (;;) {
		bool any = false;
		for (struct task *t = tasks; t; t = t->next)
			if (t->runnable && !t->done) {
				resume_task(t);
				any = true;
			}
		for (struct mb_wait **pp = &waits; *pp;) {
			mb_wait *w = *pp;
			if (w->nres >= 0) {
				*pp = w->next;
				struct task *t = task_of(w->T);
				if (t) {
					t->nargs = w->nres;
					t->runnable = true;
				}
				free(w);
				any = true;
				continue;
			}
			pp = &w->next;
		}
		bool alive = false;
		for (struct task *t = tasks; t; t = t->next)
			alive = alive || !t->done;
		if (!alive)
			break;
		if (!any) {
			wake = false;
			tl_run(loop, &wake);
			if (!wake && !waits) {
				fprintf(stderr, "fakehost: tasks blocked with nothing pending\n");
				task_errors++;
				break;
			}
			if (!wake) { /* loop idle but waits pending: deadlock */
				fprintf(stderr,
				        "fakehost: waits pending with nothing to complete them\n");
				task_errors++;
				break;
			}
		}
	}
	def->fini((mb_plugin *)&host);
	/* let background jobs (gc) drain */
	wake = false;
	tl_run(loop, &wake);
	int status = task_errors ? 1 : 0;
	if (holds != 0)
		fprintf(stderr, "fakehost: plugin still holds %d resources\n", holds);
	lua_close(L0);
	sqlite3_close(dbh);
	json_decref(events_log);
	tl_free(loop);
	dlclose(so);
	curl_global_cleanup();
	return status;
}
