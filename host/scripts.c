/*
 * Loading the Lua scripts that make up the product's behaviour.
 *
 * Two directories: the shipped scripts and the operator's (--scripts), which
 * overrides shipped files by relative path. Every *.lua file outside lib/ that is
 * not a *_test.lua runs at load, in path order, each in its own environment (reads
 * fall through to the globals). Files under lib/ are modules for require("name")
 * (lib/name.lua or lib/a/b.lua for "a.b"), also overridable by the operator.
 *
 * A load is a generation: routes, event handlers and timers registered while it runs
 * replace the previous generation's only if every script loaded. A script with an
 * error leaves the previous generation active, and the error is returned.
 */
#include "scripts.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "bindings.h"
#include "log.h"
#include "task.h"

void gen_begin(lua_State *L);
void gen_commit(lua_State *L);
void gen_abort(lua_State *L);

static struct {
	char *dirs[2]; /* operator first, then shipped */
	int ndirs;
	unsigned generation;
	unsigned nscripts;
} S;

static char MODULES_KEY; /* registry: set of module names loaded from scripts */

struct file {
	char *rel, *full;
};

struct files {
	struct file *v;
	size_t n, cap;
};

static void files_add(struct files *f, const char *rel, const char *full)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->v[i].rel, rel) == 0)
			return; /* an earlier (operator) directory already provides it */
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 32;
		f->v = xrealloc(f->v, f->cap * sizeof(*f->v));
	}
	f->v[f->n].rel = xstrdup(rel);
	f->v[f->n].full = xstrdup(full);
	f->n++;
}

static void files_free(struct files *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->v[i].rel);
		free(f->v[i].full);
	}
	free(f->v);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void walk(struct files *f, const char *root, const char *rel, int depth)
{
	if (depth > 8)
		return;
	char *dir = rel[0] ? xasprintf("%s/%s", root, rel) : xstrdup(root);
	DIR *d = opendir(dir);
	if (!d) {
		free(dir);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *r = rel[0] ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
		char *full = xasprintf("%s/%s", dir, de->d_name);
		struct stat st;
		if (stat(full, &st) == 0) {
			if (S_ISDIR(st.st_mode)) {
				if (strcmp(r, "lib") != 0 && strcmp(r, "cli") != 0)
					walk(f, root, r, depth + 1);
			} else if (S_ISREG(st.st_mode) && ends_with(r, ".lua") &&
			           !ends_with(r, "_test.lua")) {
				files_add(f, r, full);
			}
		}
		free(r);
		free(full);
	}
	closedir(d);
	free(dir);
}

static int cmp_file(const void *a, const void *b)
{
	return strcmp(((const struct file *)a)->rel, ((const struct file *)b)->rel);
}

/* [-1, +1, -] Give the function on top a fresh environment that reads through to _G. */
static void set_env(lua_State *L, const char *rel)
{
	lua_newtable(L);
	lua_createtable(L, 0, 1);
	lua_pushglobaltable(L);
	lua_setfield(L, -2, "__index");
	lua_setmetatable(L, -2);
	lua_pushstring(L, rel);
	lua_setfield(L, -2, "SCRIPT");
	if (!lua_setupvalue(L, -2, 1))
		lua_pop(L, 1);
}

static int msgh(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg)
		msg = luaL_tolstring(L, 1, NULL);
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* Load and run one file; on error fill err. */
static int run_file(lua_State *L, const char *rel, const char *full, int nresults, mb_err *err)
{
	char *src;
	size_t len;
	int r = mb_read_file(full, &src, &len, 16u << 20);
	if (r < 0)
		return mb_err_set(err, r, "%s: %s", full, strerror(-r));
	char *chunk = xasprintf("@%s", rel);
	lua_pushcfunction(L, msgh);
	int h = lua_gettop(L);
	int st = luaL_loadbufferx(L, src, len, chunk, "t");
	free(chunk);
	free(src);
	if (st != LUA_OK) {
		mb_err_set(err, -EINVAL, "%s", lua_tostring(L, -1));
		lua_pop(L, 2);
		return -EINVAL;
	}
	set_env(L, rel);
	st = lua_pcall(L, 0, nresults, h);
	if (st != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		mb_log(MB_LOG_ERROR, "scripts", "%s", msg ? msg : "?");
		/* first line only in the returned error */
		const char *nl = msg ? strchr(msg, '\n') : NULL;
		mb_err_set(err, -EINVAL, "%.*s",
		           nl ? (int)(nl - msg) : (int)strlen(msg ? msg : "?"), msg ? msg : "?");
		lua_pop(L, 2);
		return -EINVAL;
	}
	lua_remove(L, h);
	return 0;
}

/* package.searchers entry: modules from lib/ of the script directories. */
static int searcher(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	/* "a.b" -> lib/a/b.lua; the client's own modules "cli.x" -> cli/x.lua */
	char *rel = strncmp(name, "cli.", 4) == 0 ? xasprintf("%s.lua", name)
	                                          : xasprintf("lib/%s.lua", name);
	for (char *p = rel; *p; p++)
		if (*p == '.' && strcmp(p, ".lua") != 0)
			*p = '/';
	for (int i = 0; i < S.ndirs; i++) {
		char *full = xasprintf("%s/%s", S.dirs[i], rel);
		struct stat st;
		if (stat(full, &st) == 0) {
			char *src;
			size_t len;
			int r = mb_read_file(full, &src, &len, 16u << 20);
			if (r < 0) {
				free(rel);
				lua_pushfstring(L, "\n\tcannot read %s", full);
				free(full);
				return 1;
			}
			char *chunk = xasprintf("@%s", rel);
			int st2 = luaL_loadbufferx(L, src, len, chunk, "t");
			free(chunk);
			free(src);
			free(full);
			if (st2 != LUA_OK) {
				free(rel);
				return lua_error(L);
			}
			set_env(L, rel);
			lua_pushstring(L, rel);
			free(rel);
			/* remember it so a reload forgets it */
			lua_rawgetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, name);
			lua_pop(L, 1);
			return 2;
		}
		free(full);
	}
	lua_pushfstring(L, "\n\tno script module %s in the script directories", rel);
	free(rel);
	return 1;
}

int scripts_init(const char *shipped, const char *operator_dir, mb_err *err)
{
	lua_State *L = rt_state();
	S.ndirs = 0;
	if (operator_dir && *operator_dir)
		S.dirs[S.ndirs++] = xstrdup(operator_dir);
	if (shipped && *shipped)
		S.dirs[S.ndirs++] = xstrdup(shipped);
	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
	/* package.searchers = { preload, scripts } */
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "searchers");
	lua_createtable(L, 2, 0);
	lua_rawgeti(L, -2, 1);
	lua_rawseti(L, -2, 1);
	lua_pushcfunction(L, searcher);
	lua_rawseti(L, -2, 2);
	lua_setfield(L, -3, "searchers");
	lua_pop(L, 2);
	(void)err;
	return 0;
}

/* Move script modules out of package.loaded into a table left on the stack. */
static void stash_modules(lua_State *L)
{
	lua_newtable(L); /* stash */
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaded");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		lua_pop(L, 1);
		lua_pushvalue(L, -1);
		lua_gettable(L, -4); /* loaded[name] */
		lua_pushvalue(L, -2);
		lua_insert(L, -2);
		lua_settable(L, -7); /* stash[name] = module */
		lua_pushvalue(L, -1);
		lua_pushnil(L);
		lua_settable(L, -5); /* loaded[name] = nil */
	}
	lua_pop(L, 3);
	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
}

/* Put the stash (on top) back into package.loaded; pops it. */
static void restore_modules(lua_State *L)
{
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaded");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
	/* forget modules the failed load brought in */
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		lua_pop(L, 1);
		lua_pushvalue(L, -1);
		lua_pushnil(L);
		lua_settable(L, -5);
	}
	lua_pop(L, 1);
	lua_newtable(L); /* new module set = stash keys */
	lua_pushnil(L);
	while (lua_next(L, -5)) {
		lua_pushvalue(L, -2);
		lua_insert(L, -2);
		lua_settable(L, -5); /* loaded[name] = module */
		lua_pushvalue(L, -1);
		lua_pushboolean(L, 1);
		lua_settable(L, -4);
	}
	lua_rawsetp(L, LUA_REGISTRYINDEX, &MODULES_KEY);
	lua_pop(L, 3);
}

int scripts_load(mb_err *err)
{
	lua_State *L = rt_state();
	struct files f = { 0 };
	for (int i = 0; i < S.ndirs; i++)
		walk(&f, S.dirs[i], "", 0);
	if (f.n)
		qsort(f.v, f.n, sizeof(*f.v), cmp_file);
	int top = lua_gettop(L);
	stash_modules(L);
	gen_begin(L);
	rt_load_begin();
	int r = 0;
	for (size_t i = 0; i < f.n && r == 0; i++)
		r = run_file(L, f.v[i].rel, f.v[i].full, 0, err);
	rt_load_end();
	if (r < 0) {
		gen_abort(L);
		restore_modules(L);
		mb_log(MB_LOG_ERROR, "scripts", "load failed, keeping the previous scripts: %s",
		       err ? err->msg : "");
	} else {
		gen_commit(L);
		lua_pop(L, 1); /* the stash */
		S.generation++;
		S.nscripts = (unsigned)f.n;
		mb_log(MB_LOG_INFO, "scripts", "generation %u: %zu script(s) loaded", S.generation,
		       f.n);
	}
	lua_settop(L, top);
	files_free(&f);
	return r;
}

int scripts_run_file(const char *path, int nresults, mb_err *err)
{
	return run_file(rt_state(), path, path, nresults, err);
}

unsigned scripts_generation(void)
{
	return S.generation;
}

const char *scripts_dir(int i)
{
	return i < S.ndirs ? S.dirs[i] : NULL;
}

void scripts_fini(void)
{
	for (int i = 0; i < S.ndirs; i++)
		free(S.dirs[i]);
	S.ndirs = 0;
}
