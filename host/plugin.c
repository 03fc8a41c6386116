/*
 * The plugin loader and the host function table (struct mb_host) given to plugins.
 */
#include "plugin.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "bindings.h"
#include "config.h"
#include "curlm.h"
#include "events.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "proc.h"
#include "store.h"
#include "task.h"
#include "work.h"

struct pl_fn {
	mb_plugin *p;
	lua_CFunction f;
	struct pl_fn *next;
};

struct mb_plugin {
	char *path;
	void *dl;
	const struct mb_plugin_def *def;
	char *name; /* copied: the def may be unmapped one day */
	bool loaded;
	int holds;
	struct pl_fn *fns;
	char **modules;
	int nmodules;
	struct mb_plugin *next;
};

static mb_plugin *plugins;

/* --- host functions --- */

static void host_log(mb_plugin *p, int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mb_logv(level, p ? p->name : "plugin", fmt, ap);
	va_end(ap);
}

static int trampoline(lua_State *L)
{
	struct pl_fn *pf = lua_touserdata(L, lua_upvalueindex(1));
	if (!pf->p->loaded)
		return luaL_error(L, "plugin '%s' has been unloaded", pf->p->name);
	return pf->f(L);
}

/* Finalizers of an unloaded plugin do nothing (its fini released everything). */
static int trampoline_gc(lua_State *L)
{
	struct pl_fn *pf = lua_touserdata(L, lua_upvalueindex(1));
	if (!pf->p->loaded)
		return 0;
	return pf->f(L);
}

static void host_lua_setfuncs(mb_plugin *p, lua_State *L, const luaL_Reg *funcs)
{
	for (; funcs->name; funcs++) {
		if (!funcs->func) {
			lua_pushboolean(L, 0);
		} else {
			struct pl_fn *pf = xcalloc(1, sizeof(*pf));
			pf->p = p;
			pf->f = funcs->func;
			pf->next = p->fns;
			p->fns = pf;
			bool fin =
			    strcmp(funcs->name, "__gc") == 0 || strcmp(funcs->name, "__close") == 0;
			lua_pushlightuserdata(L, pf);
			lua_pushcclosure(L, fin ? trampoline_gc : trampoline, 1);
		}
		lua_setfield(L, -2, funcs->name);
	}
}

static int host_lua_module(mb_plugin *p, const char *name, const luaL_Reg *funcs, mb_err *err)
{
	lua_State *L = rt_state();
	if (lua_getglobal(L, name) != LUA_TNIL) {
		lua_pop(L, 1);
		return mb_err_set(err, -EEXIST, "a Lua global named '%s' already exists", name);
	}
	lua_pop(L, 1);
	lua_newtable(L);
	host_lua_setfuncs(p, L, funcs);
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "loaded");
	lua_pushvalue(L, -3);
	lua_setfield(L, -2, name);
	lua_pop(L, 2);
	lua_setglobal(L, name);
	p->modules = xrealloc(p->modules, (size_t)(p->nmodules + 1) * sizeof(*p->modules));
	p->modules[p->nmodules++] = xstrdup(name);
	return 0;
}

static lua_State *host_lua_main(void)
{
	return rt_state();
}

static void host_lua_push_json(lua_State *L, const json_t *j)
{
	json_push(L, j);
}

static json_t *host_lua_to_json(lua_State *L, int idx, mb_err *err)
{
	return json_from_lua(L, idx, err);
}

static int host_db_migrate(const char *component, const char *const steps[], int n, mb_err *err)
{
	return store_migrate(component, steps, n, err);
}

static int host_emit(const char *type, json_t *data, mb_err *err)
{
	int64_t id = events_emit(type, data, err);
	return id < 0 ? (int)id : 0;
}

static void host_hold(mb_plugin *p, int delta)
{
	p->holds += delta;
	if (p->holds < 0) {
		mb_log(MB_LOG_WARN, p->name, "resource count went below zero");
		p->holds = 0;
	}
}

static const struct mb_host host_api = {
	.size = sizeof(struct mb_host),
	.abi_major = MB_ABI_MAJOR,
	.abi_minor = MB_ABI_MINOR,
	.version = MOONBOX_VERSION,
	.log = host_log,
	.config = config_get,
	.fd_watch = loop_watch,
	.fd_modify = loop_modify,
	.fd_unwatch = loop_unwatch,
	.timer_start = loop_timer,
	.timer_stop = loop_timer_stop,
	.post = loop_post,
	.work = work_submit,
	.child_watch = proc_child_watch,
	.run = proc_run,
	.curl_add = curlm_add,
	.curl_remove = curlm_remove,
	.lua_main = host_lua_main,
	.lua_module = host_lua_module,
	.lua_setfuncs = host_lua_setfuncs,
	.wait_begin = rt_wait_begin,
	.wait_yield = rt_wait_yield,
	.wait_thread = rt_wait_thread,
	.wait_done = rt_wait_done,
	.lua_push_json = host_lua_push_json,
	.lua_to_json = host_lua_to_json,
	.lua_fail = lua_fail,
	.db = store_db,
	.db_migrate = host_db_migrate,
	.emit = host_emit,
	.hold = host_hold,
	.wait_check = rt_wait_check,
	.errcode = mb_errcode,
};

const struct mb_host *plugin_host_api(void)
{
	return &host_api;
}

/* --- loading --- */

static void drop_modules(mb_plugin *p)
{
	lua_State *L = rt_state();
	for (int i = 0; i < p->nmodules; i++) {
		lua_pushnil(L);
		lua_setglobal(L, p->modules[i]);
		lua_getglobal(L, "package");
		lua_getfield(L, -1, "loaded");
		lua_pushnil(L);
		lua_setfield(L, -2, p->modules[i]);
		lua_pop(L, 2);
		free(p->modules[i]);
	}
	free(p->modules);
	p->modules = NULL;
	p->nmodules = 0;
}

static void plugin_free(mb_plugin *p)
{
	while (p->fns) {
		struct pl_fn *n = p->fns->next;
		free(p->fns);
		p->fns = n;
	}
	for (int i = 0; i < p->nmodules; i++)
		free(p->modules[i]);
	free(p->modules);
	free(p->path);
	free(p->name);
	free(p);
}

static bool valid_name(const char *s)
{
	if (!s || !*s || strlen(s) > 64)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

mb_plugin *plugin_find(const char *name)
{
	for (mb_plugin *p = plugins; p; p = p->next)
		if (p->loaded && strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

int plugin_load(const char *path, const char **name_out, mb_err *err)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return mb_err_set(err, -errno, "plugin %s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return mb_err_set(err, -EINVAL, "plugin %s: not a regular file", path);
	/* RTLD_NODELETE: code stays mapped after unload, so stray pointers into it (a
	 * continuation of a task that was waiting) cannot jump into unmapped memory. */
	void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (!dl)
		return mb_err_set(err, -ENOEXEC, "plugin %s: %s", path, dlerror());
	const struct mb_plugin_def *(*entry)(void) =
	    (const struct mb_plugin_def *(*)(void))dlsym(dl, MB_PLUGIN_ENTRY_SYMBOL);
	if (!entry) {
		dlclose(dl);
		return mb_err_set(err, -ENOEXEC,
		                  "plugin %s: no %s() entry point (not a moonbox plugin?)", path,
		                  MB_PLUGIN_ENTRY_SYMBOL);
	}
	const struct mb_plugin_def *def = entry();
	int r = 0;
	if (!def || def->size < offsetof(struct mb_plugin_def, fini) + sizeof(def->fini)) {
		r = mb_err_set(err, -ENOEXEC, "plugin %s: malformed plugin definition", path);
	} else if (def->abi_major != MB_ABI_MAJOR) {
		r = mb_err_set(err, -ENOTSUP,
		               "plugin %s (%s) was built for plugin ABI %u.x; this moonbox "
		               "provides %u.%u: rebuild it against this moonbox's headers",
		               path, def->name ? def->name : "?", def->abi_major, MB_ABI_MAJOR,
		               MB_ABI_MINOR);
	} else if (def->abi_minor > MB_ABI_MINOR) {
		r = mb_err_set(err, -ENOTSUP,
		               "plugin %s (%s) needs plugin ABI %u.%u but this moonbox provides "
		               "only %u.%u: it was built for a newer moonbox",
		               path, def->name ? def->name : "?", def->abi_major, def->abi_minor,
		               MB_ABI_MAJOR, MB_ABI_MINOR);
	} else if (!valid_name(def->name)) {
		r = mb_err_set(err, -EINVAL, "plugin %s: invalid name (use [a-z0-9_])", path);
	} else if (plugin_find(def->name)) {
		r = mb_err_set(err, -EEXIST, "plugin %s: a plugin named '%s' is already loaded",
		               path, def->name);
	} else if (!def->init) {
		r = mb_err_set(err, -EINVAL, "plugin %s: no init function", path);
	}
	if (r < 0) {
		dlclose(dl);
		return r;
	}
	mb_plugin *p = xcalloc(1, sizeof(*p));
	p->path = xstrdup(path);
	p->dl = dl;
	p->def = def;
	p->name = xstrdup(def->name);
	p->loaded = true; /* so its functions work during init */
	mb_err ierr = { 0 };
	r = def->init(&host_api, p, &ierr);
	if (r < 0) {
		p->loaded = false;
		drop_modules(p);
		mb_err_set(err, r, "plugin %s: init failed: %s", def->name,
		           ierr.msg[0] ? ierr.msg : strerror(-r));
		plugin_free(p);
		dlclose(dl);
		return r;
	}
	p->next = plugins;
	plugins = p;
	if (name_out)
		*name_out = p->name;
	mb_log(MB_LOG_INFO, "plugins", "loaded %s %s (ABI %u.%u) from %s", p->name,
	       def->version ? def->version : "?", def->abi_major, def->abi_minor, path);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int plugins_load_dir(const char *dir, mb_err *err)
{
	DIR *d = opendir(dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;
		return mb_err_set(err, -errno, "plugin dir %s: %s", dir, strerror(errno));
	}
	char **names = NULL;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l > 3 && strcmp(de->d_name + l - 3, ".so") == 0) {
			names = xrealloc(names, (n + 1) * sizeof(*names));
			names[n++] = xasprintf("%s/%s", dir, de->d_name);
		}
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	int loaded = 0;
	for (size_t i = 0; i < n; i++) {
		mb_err e = { 0 };
		if (plugin_load(names[i], NULL, &e) < 0)
			mb_log(MB_LOG_ERROR, "plugins", "refused: %s", e.msg);
		else
			loaded++;
		free(names[i]);
	}
	free(names);
	return loaded;
}

int plugin_unload(const char *name, mb_err *err)
{
	mb_plugin *p = plugin_find(name);
	if (!p)
		return mb_err_set(err, -ENOENT, "no plugin named '%s' is loaded", name);
	if (p->holds > 0)
		return mb_err_set(err, -EBUSY,
		                  "plugin '%s' owns %d live resource(s); release them before "
		                  "unloading",
		                  name, p->holds);
	if (p->def->fini)
		p->def->fini(p);
	p->loaded = false;
	drop_modules(p);
	mb_log(MB_LOG_INFO, "plugins", "unloaded %s", name);
	return 0;
}

json_t *plugins_info(void)
{
	json_t *a = json_array();
	for (mb_plugin *p = plugins; p; p = p->next) {
		if (!p->loaded)
			continue;
		json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i}", "name", p->name, "version",
		                      p->def->version ? p->def->version : "", "summary",
		                      p->def->summary ? p->def->summary : "", "path", p->path,
		                      "abi", "", "resources", p->holds);
		char abi[32];
		snprintf(abi, sizeof(abi), "%u.%u", p->def->abi_major, p->def->abi_minor);
		json_object_set_new(o, "abi", json_string(abi));
		if (p->def->size >= offsetof(struct mb_plugin_def, info) + sizeof(p->def->info) &&
		    p->def->info) {
			json_t *extra = p->def->info(p);
			if (extra)
				json_object_set_new(o, "info", extra);
		}
		json_array_append_new(a, o);
	}
	return a;
}

void plugins_fini(void)
{
	/* Newest first, so a plugin loaded later (which may use an earlier one's Lua
	 * module) goes first. Workloads (VMs) keep running: fini only releases host-side
	 * resources. */
	for (mb_plugin *p = plugins; p; p = p->next) {
		if (p->loaded && p->def->fini)
			p->def->fini(p);
		p->loaded = false;
	}
}

void plugins_free(void)
{
	/* After the Lua state is closed: until then, plugin userdata may still be collected
	 * and their __gc trampolines read these records (they do nothing once unloaded). */
	while (plugins) {
		mb_plugin *p = plugins;
		plugins = p->next;
		dlclose(p->dl);
		plugin_free(p);
	}
}
