/*
 * The client side of the binary: `moonbox <command>` talks to a running daemon.
 *
 * The CLI itself is Lua (scripts/cli/), run here in a small client runtime: the same
 * loop and task machinery as the daemon with the modules a client needs (json, http,
 * ws, term, timer, task, fs, log, moonbox) and none of the daemon's (db, api, events,
 * plugins). main.lua's function runs as a task and returns the exit code.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lualib.h>

#include "bindings.h"
#include "config.h"
#include "curlm.h"
#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "scripts.h"
#include "task.h"
#include "work.h"

int cli_main(int argc, char **argv);
void term_fini(void);

static int exit_code = 0;

static void on_main_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	if (status == LUA_OK) {
		exit_code =
		    nres > 0 && lua_isinteger(co, -nres) ? (int)lua_tointeger(co, -nres) : 0;
	} else if (status == TASK_CANCELLED) {
		exit_code = 130;
	} else {
		const char *msg = lua_tostring(co, -1);
		fprintf(stderr, "moonbox: %s\n", msg ? msg : "internal error");
		if (getenv("MOONBOX_DEBUG"))
			fprintf(stderr, "%s\n", task_traceback(t));
		exit_code = 1;
	}
	loop_stop();
}

static bool is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The shipped scripts directory (installed layout, else the source tree); caller frees. */
static char *scripts_root(void)
{
	const char *env = getenv("MOONBOX_SCRIPTS");
	if (env && *env)
		return xstrdup(env);
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *p = xasprintf("%s/../share/moonbox/scripts", dirname(exe));
		if (is_dir(p))
			return p;
		free(p);
	}
	return xasprintf("%s/scripts", MOONBOX_SOURCE_DIR);
}

static const struct {
	const char *name;
	lua_CFunction open;
} client_modules[] = {
	{ "json", luaopen_mb_json },       { "timer", luaopen_mb_timer },
	{ "task", luaopen_mb_task },       { "http", luaopen_mb_http },
	{ "ws", luaopen_mb_ws },           { "term", luaopen_mb_term },
	{ "fs", luaopen_mb_fs },           { "log", luaopen_mb_log },
	{ "moonbox", luaopen_mb_moonbox },
};

int cli_main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	/* Before any thread starts: term.resized() reads SIGWINCH from a signalfd, which only
	 * works if no thread can take the signal (ignored by default) first. */
	sigset_t winch;
	sigemptyset(&winch);
	sigaddset(&winch, SIGWINCH);
	sigprocmask(SIG_BLOCK, &winch, NULL);
	log_set_level(getenv("MOONBOX_DEBUG") ? MB_LOG_DEBUG : MB_LOG_WARN);
	struct daemon_opts defaults = { 0 };
	daemon_default_paths(&defaults);
	config_set("socket", defaults.socket);
	config_set("state_dir", defaults.state_dir);
	config_set("client", "1");
	mb_err err = { 0 };
	char *root = scripts_root();
	char *main_lua = xasprintf("%s/cli/main.lua", root);
	int rc = 1;
	if (loop_init(&err) < 0 || work_init(1, &err) < 0)
		goto out;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (curlm_init(&err) < 0 || rt_init(60000, &err) < 0)
		goto out;
	lua_State *L = rt_state();
	for (size_t i = 0; i < ARRAY_SIZE(client_modules); i++) {
		luaL_requiref(L, client_modules[i].name, client_modules[i].open, 1);
		lua_pop(L, 1);
	}
	scripts_init(root, NULL, &err);
	if (scripts_run_file(main_lua, 1, &err) < 0) {
		fprintf(stderr, "moonbox: cannot load the CLI (%s): %s\n", main_lua, err.msg);
		goto out;
	}
	if (!lua_isfunction(L, -1)) {
		fprintf(stderr, "moonbox: %s must return a function\n", main_lua);
		goto out;
	}
	lua_createtable(L, argc, 0);
	for (int i = 1; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i);
	}
	task_start(L, 1, "cli", false, on_main_done, NULL);
	loop_run();
	rc = exit_code;
out:
	fflush(stdout);
	term_fini();
	rt_fini();
	curlm_fini();
	curl_global_cleanup();
	work_fini();
	loop_fini();
	scripts_fini();
	config_fini();
	free(root);
	free(main_lua);
	return rc;
}
