/*
 * moonbox plugin ABI — the only header a plugin needs.
 *
 * A plugin is a shared object that exports one function:
 *
 *     const struct mb_plugin_def *moonbox_plugin_v1(void);
 *
 * (write it with MB_PLUGIN_DEFINE below). The host dlopen()s the file, calls
 * that function, checks the ABI numbers and then calls def->init() with a
 * table of host functions (struct mb_host).
 *
 * Compatibility rules, which are the whole point of this file:
 *  - struct mb_host and struct mb_plugin_def only ever grow at the end. Both
 *    carry their size; a field that lies past `size` does not exist.
 *  - MB_ABI_MAJOR changes only if a field would have to change meaning; the host
 *    refuses plugins of another major.
 *  - MB_ABI_MINOR counts additions. A plugin records the minor it was built
 *    against; the host refuses a plugin that needs a newer minor than it has
 *    ("built for a newer moonbox"). Older plugins keep loading.
 *  - Use MB_HOST_HAS(host, field) before calling a field added after the minor
 *    your plugin requires.
 *
 * Threading: every host function must be called on the loop thread, except
 * post() and the work function given to work(), which are the ways back in.
 * Nothing on the loop thread may block: hand blocking work to work().
 *
 * Errors: functions that can fail take a `mb_err *err` out-parameter (may be
 * NULL) and return a negative errno (or NULL for constructors). The message is
 * for humans; err->code is the negative errno.
 *
 * Lua: plugins expose functions through lua_module()/lua_setfuncs() so that the
 * host can refuse calls into a plugin that has been unloaded. Functions follow
 * the house rule: misuse (wrong argument types, calling outside a task) raises
 * with luaL_error/luaL_argerror; an operational failure returns
 * `nil, message, code` (lua_fail() pushes exactly that).
 */
#ifndef MOONBOX_PLUGIN_H
#define MOONBOX_PLUGIN_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MB_ABI_MAJOR 1
#define MB_ABI_MINOR 1 /* 1: wait_check, errcode */

/* Error out-parameter. code is 0 or a negative errno; msg is NUL-terminated. */
typedef struct mb_err {
	int code;
	char msg[256];
} mb_err;

/* Fill *err (if not NULL) and return code (a negative errno), so that callers can write
 * `return mb_err_set(err, -EINVAL, "bad size %d", n);`. */
static inline int mb_err_set(mb_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline int mb_err_set(mb_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		err->code = code;
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

/* Opaque host objects. */
typedef struct mb_plugin mb_plugin; /* the host's record of one loaded plugin */
typedef struct mb_watch mb_watch;   /* an fd registered in the loop */
typedef struct mb_timer mb_timer;   /* a one-shot timer */
typedef struct mb_wait mb_wait;     /* a Lua task suspended until a completion */

typedef void (*mb_fn)(void *ud);
typedef void (*mb_fd_fn)(int fd, uint32_t events, void *ud);   /* events: EPOLL* bits */
typedef void (*mb_child_fn)(pid_t pid, int wstatus, void *ud); /* wstatus -1: not our child */
typedef void (*mb_curl_fn)(CURL *easy, CURLcode result, void *ud);

/* Result of run(): everything a finished child process left behind. */
typedef struct mb_run_result {
	int wstatus; /* as from waitpid(); -1 if the process could not be started */
	char *out;   /* captured stdout, NUL-terminated, owned by the host */
	size_t out_len;
	char *errout; /* captured stderr, NUL-terminated, owned by the host */
	size_t errout_len;
} mb_run_result;
/* Called on the loop thread; `res` and its buffers are freed by the host after it returns. */
typedef void (*mb_run_fn)(const mb_run_result *res, void *ud);

enum mb_log_level { MB_LOG_ERROR = 0, MB_LOG_WARN = 1, MB_LOG_INFO = 2, MB_LOG_DEBUG = 3 };

/*
 * The table of host functions. Never reorder; only append (and bump MB_ABI_MINOR).
 */
struct mb_host {
	uint32_t size;       /* sizeof(struct mb_host) as the host knows it */
	uint32_t abi_major;  /* MB_ABI_MAJOR of the host */
	uint32_t abi_minor;  /* MB_ABI_MINOR of the host */
	const char *version; /* moonbox version string; static */

	/* --- logging and configuration ------------------------------------------------ */
	void (*log)(mb_plugin *p, int level, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
	/* A configuration value: "state_dir", "run_dir", "socket", "http", "guest_dir",
	 * "scripts_dir", "data_dir". Returns NULL for an unknown key. The host owns the
	 * string; it stays valid until the plugin's fini. */
	const char *(*config)(const char *key);

	/* --- the event loop --------------------------------------------------------- */
	/* Watch fd for EPOLL* events (level-triggered). The caller keeps owning fd and must
	 * fd_unwatch() before closing it. Returns NULL on failure. */
	mb_watch *(*fd_watch)(int fd, uint32_t events, mb_fd_fn fn, void *ud, mb_err *err);
	int (*fd_modify)(mb_watch *w, uint32_t events, mb_err *err);
	void (*fd_unwatch)(mb_watch *w); /* frees w; safe to call from inside its own callback */
	/* One-shot timer after ms milliseconds. The timer is freed after fn runs; before
	 * that, timer_stop() cancels and frees it. Never fails (aborts on OOM). */
	mb_timer *(*timer_start)(uint64_t ms, mb_fn fn, void *ud);
	void (*timer_stop)(mb_timer *t);
	/* Run fn(ud) on the loop thread soon. The only host function callable from any thread. */
	int (*post)(mb_fn fn, void *ud);
	/* Run work(ud) on a worker thread, then done(ud) on the loop thread. */
	int (*work)(mb_fn work, mb_fn done, void *ud, mb_err *err);
	/* Call fn once when process pid exits (pidfd). For a child of ours wstatus is its
	 * wait status (and it is reaped); for an adopted process it is -1. */
	int (*child_watch)(pid_t pid, mb_child_fn fn, void *ud, mb_err *err);
	/* Run argv (argv[0] looked up in PATH) without a shell; feed `in` (may be NULL) to its
	 * stdin, capture stdout/stderr (each up to 16 MiB), call fn when it has exited.
	 * timeout_ms 0 = none; on timeout the child is killed with SIGKILL. */
	int (*run)(const char *const argv[], const char *in, size_t in_len, uint64_t timeout_ms,
	           mb_run_fn fn, void *ud, mb_err *err);
	/* Hand an easy handle to the host's curl multi (driven by the loop). fn runs on
	 * completion, after which the plugin owns the handle again. */
	int (*curl_add)(CURL *easy, mb_curl_fn fn, void *ud, mb_err *err);
	/* Take a handle back before completion; fn is not called. */
	void (*curl_remove)(CURL *easy);

	/* --- Lua ------------------------------------------------------------------ */
	lua_State *(*lua_main)(void); /* the main state; for registry set-up in init() */
	/* Create global table `name` (also package.loaded[name]) holding funcs. Each function
	 * goes through a host trampoline that raises once the plugin is unloaded. */
	int (*lua_module)(mb_plugin *p, const char *name, const luaL_Reg *funcs, mb_err *err);
	/* luaL_setfuncs(L, funcs, 0) on the table at the top of L, through the trampoline
	 * (use it for metatables: __gc, __index methods, ...). */
	void (*lua_setfuncs)(mb_plugin *p, lua_State *L, const luaL_Reg *funcs);
	/* Suspend the running task: the check-yieldable -> cleanup -> arm -> yield pattern.
	 *   mb_wait *w = host->wait_begin(L, my_cancel, op);   // raises if L cannot yield
	 *   ... arm the operation, keeping w ...
	 *   return host->wait_yield(L, w, NULL, 0);
	 * Completion (on the loop thread): push results onto host->wait_thread(w), then
	 * host->wait_done(w, nresults). The task resumes later from the loop; the values
	 * become the results of the yielding C function (or are passed to continuation k).
	 * If the task is cancelled first (shutdown, client gone, task.cancel) cancel(ud) runs
	 * instead, and w must not be touched afterwards. The host owns w. */
	mb_wait *(*wait_begin)(lua_State *L, mb_fn cancel, void *ud);
	int (*wait_yield)(lua_State *L, mb_wait *w, lua_KFunction k, lua_KContext ctx);
	lua_State *(*wait_thread)(mb_wait *w);
	void (*wait_done)(mb_wait *w, int nresults);
	/* JSON <-> Lua with moonbox's conventions (json.null, array marking, int/float). */
	void (*lua_push_json)(lua_State *L, const json_t *j);
	json_t *(*lua_to_json)(lua_State *L, int idx, mb_err *err); /* new reference or NULL */
	/* Push nil, err->msg, code-string; returns 3 (so: `return host->lua_fail(L, &err);`). */
	int (*lua_fail)(lua_State *L, const mb_err *err);

	/* --- state and events --------------------------------------------------------- */
	sqlite3 *(*db)(void); /* the daemon's connection; loop thread only; never close it */
	/* Apply schema steps for `component` (steps[i] brings it to version i+1), each step
	 * in its own BEGIN IMMEDIATE transaction. Idempotent. */
	int (*db_migrate)(const char *component, const char *const steps[], int nsteps,
	                  mb_err *err);
	/* Persist and publish an event. Steals the reference to data (may be NULL). */
	int (*emit)(const char *type, json_t *data, mb_err *err);

	/* --- resources --------------------------------------------------------------- */
	/* Count live resources (VMs, taps, ...) the plugin owns; unload is refused while the
	 * count is above zero. */
	void (*hold)(mb_plugin *p, int delta);

	/* --- appended fields (check with MB_HOST_HAS) ------------------------------------- */
	/* Raise (luaL_error) unless the running code may wait now. Call it before allocating
	 * per-wait state, so a refused wait leaks nothing; wait_begin checks again. */
	void (*wait_check)(lua_State *L);
	/* The error code string of a negative (or positive) errno: "not_found", "conflict",
	 * "invalid", ... ("io" for the rest): the one table lua_fail() and the HTTP layer use,
	 * so that a plugin pushing its own `nil, msg, code` agrees with the host. Static
	 * string; never free it. */
	const char *(*errcode)(int code);
};

/* True when the host provides `field` (it may be older than the plugin's headers). */
#define MB_HOST_HAS(host, field)                                                                   \
	((host)->size >= offsetof(struct mb_host, field) + sizeof((host)->field) &&                \
	 (host)->field != NULL)

/* What a plugin says about itself. Only grows at the end, like struct mb_host. */
struct mb_plugin_def {
	uint32_t size;      /* sizeof(struct mb_plugin_def) at build time */
	uint32_t abi_major; /* MB_ABI_MAJOR at build time */
	uint32_t abi_minor; /* MB_ABI_MINOR at build time: the newest host it may rely on */
	const char *name;   /* [a-z0-9_]+, unique among loaded plugins */
	const char *version;
	const char *summary;
	/* Called once on the loop thread. Register Lua modules, migrate tables, open fds.
	 * Return 0, or a negative errno with err filled: the plugin is then not loaded. */
	int (*init)(const struct mb_host *host, mb_plugin *self, mb_err *err);
	/* Release host-side resources (fds, timers, memory). Called at unload and at daemon
	 * shutdown. Must not stop workloads that are meant to outlive the daemon (VMs). */
	void (*fini)(mb_plugin *self);
	/* Optional: a JSON object for GET /v1/system/info (new reference), or NULL. */
	json_t *(*info)(mb_plugin *self);
};

#define MB_PLUGIN_ENTRY_SYMBOL "moonbox_plugin_v1"

/* Define the entry point. Example:
 *   MB_PLUGIN_DEFINE("example", "1.0", "a tiny example", ex_init, ex_fini, NULL)
 */
#define MB_PLUGIN_DEFINE(name_, version_, summary_, init_, fini_, info_)                           \
	__attribute__((visibility("default"))) const struct mb_plugin_def *moonbox_plugin_v1(      \
	    void);                                                                                 \
	const struct mb_plugin_def *moonbox_plugin_v1(void)                                        \
	{                                                                                          \
		static const struct mb_plugin_def def = {                                          \
			.size = sizeof(struct mb_plugin_def),                                      \
			.abi_major = MB_ABI_MAJOR,                                                 \
			.abi_minor = MB_ABI_MINOR,                                                 \
			.name = (name_),                                                           \
			.version = (version_),                                                     \
			.summary = (summary_),                                                     \
			.init = (init_),                                                           \
			.fini = (fini_),                                                           \
			.info = (info_),                                                           \
		};                                                                                 \
		return &def;                                                                       \
	}

#ifdef __cplusplus
}
#endif
#endif /* MOONBOX_PLUGIN_H */
