/*
 * `moonbox test FILE...`: Lua tests run inside the real daemon runtime (loop, tasks,
 * store, plugins, scripts), printing TAP.
 *
 * A test file returns a table of functions (run in name order) or a list of
 * {name, fn} pairs. Each test runs as its own task, so it may wait (timer.sleep,
 * http.request, vm calls ...). Helpers available to tests: ok(v, msg), eq(a, b, msg)
 * (deep), fails(fn [, pattern]) -> err, skip(reason), and TEST_DIR (a scratch
 * directory removed afterwards).
 */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bindings.h"
#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "scripts.h"
#include "task.h"
#include "util.h"

int parse_log_level(const char *s);
int testrun_main(int argc, char **argv);

static const char prelude[] =
    "local json = json\n"
    "local SKIP = {}\n"
    "SKIP.__index = SKIP\n"
    "_G.__SKIP_MT = SKIP\n"
    "local function show(v)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) == 'table' then local ok, s = pcall(json.encode, v, {sort=true})\n"
    "    if ok then return s end end\n"
    "  return tostring(v)\n"
    "end\n"
    "local function deq(a, b, seen)\n"
    "  if a == b then return true end\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then return false end\n"
    "  seen = seen or {}\n"
    "  if seen[a] == b then return true end\n"
    "  seen[a] = b\n"
    "  for k, v in pairs(a) do if not deq(v, b[k], seen) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "function ok(v, msg, ...)\n"
    "  if not v then error((msg or 'assertion failed') .. (select('#', ...) > 0 and\n"
    "    (': ' .. show((...))) or ''), 2) end\n"
    "  return v, msg, ...\n"
    "end\n"
    "function eq(a, b, msg)\n"
    "  if not deq(a, b) then\n"
    "    error((msg and (msg .. ': ') or '') .. 'expected ' .. show(b) .. ', got ' .. show(a), 2)\n"
    "  end\n"
    "end\n"
    "function fails(fn, pattern)\n"
    "  local good, e = pcall(fn)\n"
    "  if good then error('expected an error' .. (pattern and (' matching ' .. pattern) or ''), 2) "
    "end\n"
    "  local s = type(e) == 'table' and (e.message or show(e)) or tostring(e)\n"
    "  if pattern and not s:find(pattern) then\n"
    "    error('error ' .. show(s) .. ' does not match ' .. show(pattern), 2)\n"
    "  end\n"
    "  return e\n"
    "end\n"
    "function skip(why) error(setmetatable({ reason = why }, SKIP), 0) end\n";

struct test {
	char *file, *name;
	int ref;
};

static struct {
	struct test *v;
	size_t n, cap, next;
	int failed, skipped, passed;
	double timeout;
	mb_timer *timer;
	task *running;
	bool timed_out;
	char *filter;
} T;

static void add_test(const char *file, const char *name, int ref)
{
	if (T.filter && !strstr(name, T.filter) && !strstr(file, T.filter)) {
		luaL_unref(rt_state(), LUA_REGISTRYINDEX, ref);
		return;
	}
	if (T.n == T.cap) {
		T.cap = T.cap ? T.cap * 2 : 64;
		T.v = xrealloc(T.v, T.cap * sizeof(*T.v));
	}
	T.v[T.n++] = (struct test){ xstrdup(file), xstrdup(name), ref };
}

static int cmp_test(const void *a, const void *b)
{
	const struct test *x = a, *y = b;
	int c = strcmp(x->file, y->file);
	return c ? c : strcmp(x->name, y->name);
}

/* Collect the tests a file returns (table on top of the main state). */
static int collect(const char *file)
{
	lua_State *L = rt_state();
	size_t first = T.n;
	if (lua_isfunction(L, -1)) {
		add_test(file, "main", luaL_ref(L, LUA_REGISTRYINDEX));
		return 0;
	}
	if (!lua_istable(L, -1)) {
		lua_pop(L, 1);
		return -1;
	}
	lua_Integer n = luaL_len(L, -1);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, -1, i);
		if (lua_istable(L, -1)) {
			lua_rawgeti(L, -1, 1);
			lua_rawgeti(L, -2, 2);
			if (lua_isstring(L, -2) && lua_isfunction(L, -1)) {
				char name[256];
				snprintf(name, sizeof(name), "%03lld %s", (long long)i,
				         lua_tostring(L, -2));
				add_test(file, name, luaL_ref(L, LUA_REGISTRYINDEX));
				lua_pop(L, 1);
			} else {
				lua_pop(L, 2);
			}
		}
		lua_pop(L, 1);
	}
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
			const char *k = lua_tostring(L, -2);
			lua_pushvalue(L, -1);
			add_test(file, k, luaL_ref(L, LUA_REGISTRYINDEX));
		}
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (T.n > first)
		qsort(T.v + first, T.n - first, sizeof(*T.v), cmp_test);
	return 0;
}

static void run_next(void *ud);

static void on_timeout(void *ud)
{
	T.timer = NULL;
	T.timed_out = true;
	if (T.running)
		task_cancel(T.running);
}

static void on_test_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	size_t i = (size_t)(uintptr_t)ud;
	struct test *x = &T.v[i];
	T.running = NULL;
	loop_timer_stop(T.timer);
	T.timer = NULL;
	if (status == LUA_OK) {
		printf("ok %zu - %s: %s\n", i + 1, x->file, x->name);
		T.passed++;
	} else if (status == TASK_CANCELLED) {
		printf("not ok %zu - %s: %s\n# %s\n", i + 1, x->file, x->name,
		       T.timed_out ? "timed out" : "cancelled");
		T.failed++;
	} else {
		bool skipped = false;
		if (lua_istable(co, -1) && lua_getmetatable(co, -1)) {
			lua_getglobal(co, "__SKIP_MT");
			skipped = lua_rawequal(co, -1, -2);
			lua_pop(co, 2);
		}
		if (skipped) {
			lua_getfield(co, -1, "reason");
			printf("ok %zu - %s: %s # SKIP %s\n", i + 1, x->file, x->name,
			       lua_isstring(co, -1) ? lua_tostring(co, -1) : "");
			lua_pop(co, 1);
			T.skipped++;
		} else {
			const char *tb = task_traceback(t);
			printf("not ok %zu - %s: %s\n", i + 1, x->file, x->name);
			/* TAP diagnostics: every line prefixed */
			for (const char *p = tb ? tb : "error"; *p;) {
				const char *nl = strchr(p, '\n');
				int len = nl ? (int)(nl - p) : (int)strlen(p);
				printf("# %.*s\n", len, p);
				if (!nl)
					break;
				p = nl + 1;
			}
			T.failed++;
		}
	}
	fflush(stdout);
	loop_defer(run_next, NULL);
}

static void run_next(void *ud)
{
	if (T.next >= T.n) {
		loop_stop();
		return;
	}
	size_t i = T.next++;
	lua_State *L = rt_state();
	lua_rawgeti(L, LUA_REGISTRYINDEX, T.v[i].ref);
	char name[300];
	snprintf(name, sizeof(name), "test %s", T.v[i].name);
	T.timed_out = false;
	T.timer = loop_timer((uint64_t)(T.timeout * 1000), on_timeout, NULL);
	T.running = task_start(L, 0, name, false, on_test_done, (void *)(uintptr_t)i);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

int testrun_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "scripts", required_argument, NULL, 'c' },
		{ "plugins", required_argument, NULL, 'p' },
		{ "no-shipped", no_argument, NULL, 'n' },
		{ "http", required_argument, NULL, 'H' },
		{ "socket", required_argument, NULL, 'S' },
		{ "timeout", required_argument, NULL, 't' },
		{ "filter", required_argument, NULL, 'f' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "guest-dir", required_argument, NULL, 'g' },
		{ "script-budget", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon_opts o = { .log_level = MB_LOG_WARN, .http = "", .socket = "" };
	T.timeout = 120;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			o.state_dir = optarg;
			break;
		case 'c':
			o.scripts = optarg;
			break;
		case 'p':
			o.plugins_dir = optarg;
			break;
		case 'n':
			o.no_shipped = true;
			break;
		case 'H':
			o.http = optarg;
			break;
		case 'S':
			o.socket = optarg;
			break;
		case 't':
			T.timeout = strtod(optarg, NULL);
			break;
		case 'f':
			T.filter = xstrdup(optarg);
			break;
		case 'l':
			o.log_level = parse_log_level(optarg);
			break;
		case 'g':
			o.guest_dir = optarg;
			break;
		case 'b':
			o.budget_ms = (unsigned)strtoul(optarg, NULL, 10);
			break;
		default:
			fprintf(stderr,
			        "usage: moonbox test [--state-dir DIR] [--scripts DIR] "
			        "[--plugins DIR] [--no-shipped] [--http ADDR] [--socket PATH] "
			        "[--timeout S] [--filter TEXT] FILE...\n");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "moonbox test: no test files given\n");
		return 2;
	}
	char tmpl[] = "/tmp/moonbox-test-XXXXXX";
	char *tmp = NULL;
	if (!o.state_dir) {
		tmp = mkdtemp(tmpl);
		if (!tmp) {
			perror("mkdtemp");
			return 1;
		}
		o.state_dir = tmp;
	}
	char *run = xasprintf("%s/run", o.state_dir);
	char *scratch = xasprintf("%s/scratch", o.state_dir);
	if (!o.run_dir)
		o.run_dir = run;
	mb_err err = { 0 };
	int rc = 1;
	if (daemon_init(&o, &err) < 0 || daemon_signals(&err) < 0 || daemon_http(&o, &err) < 0) {
		fprintf(stderr, "moonbox test: %s\n", err.msg);
		goto out;
	}
	mb_mkdir_p(scratch, 0700);
	lua_State *L = rt_state();
	lua_pushstring(L, scratch);
	lua_setglobal(L, "TEST_DIR");
	if (luaL_loadbufferx(L, prelude, sizeof(prelude) - 1, "=test-prelude", "t") != LUA_OK ||
	    lua_pcall(L, 0, 0, 0) != LUA_OK) {
		fprintf(stderr, "moonbox test: prelude: %s\n", lua_tostring(L, -1));
		goto out;
	}
	for (int i = optind; i < argc; i++) {
		if (scripts_run_file(argv[i], 1, &err) < 0 || collect(argv[i]) < 0) {
			printf("1..1\nnot ok 1 - %s: load\n# %s\n", argv[i],
			       err.msg[0] ? err.msg : "the file must return a table of tests");
			goto out;
		}
	}
	printf("1..%zu\n", T.n);
	fflush(stdout);
	loop_defer(run_next, NULL);
	loop_run();
	printf("# %d passed, %d failed, %d skipped\n", T.passed, T.failed, T.skipped);
	rc = T.failed || T.next < T.n ? 1 : 0;
out:
	for (size_t i = 0; i < T.n; i++) {
		free(T.v[i].file);
		free(T.v[i].name);
	}
	free(T.v);
	free(T.filter);
	daemon_fini();
	if (tmp)
		nftw(tmp, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
	free(run);
	free(scratch);
	return rc;
}
