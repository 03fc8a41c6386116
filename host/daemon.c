/*
 * Bringing the daemon up and down, in one place, in one order:
 *   loop -> workers -> curl -> store -> events -> Lua -> plugins -> scripts -> HTTP
 * and the reverse on the way down (drain HTTP, cancel tasks, flush completions,
 * plugins release host-side resources while VMs keep running, close Lua, store).
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bindings.h"
#include "config.h"
#include "curlm.h"
#include "events.h"
#include "http.h"
#include "log.h"
#include "loop.h"
#include "plugin.h"
#include "proc.h"
#include "scripts.h"
#include "store.h"
#include "task.h"
#include "work.h"

static struct {
	int sigfd;
	mb_watch *sigw;
	bool draining;
	uint64_t drain_deadline;
	mb_timer *drain_timer;
	int exit_code;
	bool up_loop, up_work, up_curl, up_store, up_events, up_rt, up_http;
	char *pidfile;
} D = { .sigfd = -1 };

static bool is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Where the binary lives; caller frees. */
static char *exe_dir(void)
{
	char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n <= 0)
		return xstrdup(".");
	path[n] = '\0';
	return xstrdup(dirname(path));
}

void daemon_default_paths(struct daemon_opts *o)
{
	static char state[PATH_MAX], run[PATH_MAX], sock[PATH_MAX + 16];
	if (geteuid() == 0) {
		snprintf(state, sizeof(state), "/var/lib/moonbox");
		snprintf(run, sizeof(run), "/run/moonbox");
	} else {
		const char *xs = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
		const char *xr = getenv("XDG_RUNTIME_DIR");
		if (xs && *xs)
			snprintf(state, sizeof(state), "%s/moonbox", xs);
		else
			snprintf(state, sizeof(state), "%s/.local/state/moonbox",
			         home ? home : "/tmp");
		if (xr && *xr)
			snprintf(run, sizeof(run), "%s/moonbox", xr);
		else
			snprintf(run, sizeof(run), "/tmp/moonbox-%u", (unsigned)geteuid());
	}
	if (!o->state_dir)
		o->state_dir = state;
	if (!o->run_dir)
		o->run_dir = run;
	snprintf(sock, sizeof(sock), "%s/moonbox.sock", o->run_dir);
	if (!o->socket)
		o->socket = sock;
	if (!o->http)
		o->http = "127.0.0.1:8420";
}

/* Resolve the shipped data (scripts, web), built-in plugins and guest artifacts. */
static void resolve_layout(void)
{
	char *dir = exe_dir();
	char *installed = xasprintf("%s/../share/moonbox", dir);
	char *data = is_dir(installed) ? xstrdup(installed) : xstrdup(MOONBOX_SOURCE_DIR);
	free(installed);
	char *plugins = xasprintf("%s/../lib/moonbox/plugins", dir);
	if (!is_dir(plugins)) {
		free(plugins);
		plugins = xasprintf("%s/plugins", dir);
	}
	char *guest = xasprintf("%s/../lib/moonbox/guest", dir);
	if (!is_dir(guest)) {
		free(guest);
		guest = xasprintf("%s/guest", dir);
	}
	char *scripts = xasprintf("%s/scripts", data);
	char *web = xasprintf("%s/web", data);
	config_set("data_dir", data);
	config_set("shipped_scripts_dir", scripts);
	config_set("web_root", web);
	config_set("builtin_plugin_dir", plugins);
	if (!config_get("guest_dir"))
		config_set("guest_dir", guest);
	config_set("exe_dir", dir);
	free(dir);
	free(data);
	free(plugins);
	free(guest);
	free(scripts);
	free(web);
}

/* Read the API token, or create one (0600) on first start. */
static int load_token(const char *path, mb_err *err)
{
	char *tok = NULL;
	size_t len = 0;
	int r = mb_read_file(path, &tok, &len, 4096);
	if (r == 0) {
		while (len && (tok[len - 1] == '\n' || tok[len - 1] == '\r' || tok[len - 1] == ' '))
			tok[--len] = '\0';
		if (len < 16) {
			free(tok);
			return mb_err_set(err, -EINVAL,
			                  "token file %s: token shorter than 16 characters", path);
		}
		config_set("token", tok);
		free(tok);
		return 0;
	}
	if (r != -ENOENT)
		return mb_err_set(err, r, "token file %s: %s", path, strerror(-r));
	unsigned char b[32];
	char hexs[65];
	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
		return mb_err_set(err, -EIO, "getrandom failed");
	for (int i = 0; i < 32; i++)
		snprintf(hexs + 2 * i, 3, "%02x", b[i]);
	char *line = xasprintf("%s\n", hexs);
	r = mb_write_file_atomic(path, line, strlen(line), 0600);
	free(line);
	if (r < 0)
		return mb_err_set(err, r, "cannot write token file %s: %s", path, strerror(-r));
	log_info("generated an API token in %s", path);
	config_set("token", hexs);
	return 0;
}

static void block_signals(void)
{
	/* Before any thread starts, so that every thread inherits the mask and only the
	 * loop's signalfd sees these. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int daemon_init(const struct daemon_opts *o, mb_err *err)
{
	int r;
	block_signals();
	log_set_level(o->log_level);
	config_set("state_dir", o->state_dir);
	config_set("run_dir", o->run_dir);
	config_set("socket", o->socket ? o->socket : "");
	config_set("http", o->http ? o->http : "");
	if (o->guest_dir)
		config_set("guest_dir", o->guest_dir);
	resolve_layout();
	if (o->scripts)
		config_set("scripts_dir", o->scripts);
	if ((r = mb_mkdir_p(o->state_dir, 0700)) < 0)
		return mb_err_set(err, r, "state dir %s: %s", o->state_dir, strerror(-r));
	if ((r = mb_mkdir_p(o->run_dir, 0755)) < 0)
		return mb_err_set(err, r, "run dir %s: %s", o->run_dir, strerror(-r));
	if ((r = loop_init(err)) < 0)
		return r;
	D.up_loop = true;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if ((r = work_init(o->workers ? o->workers : (unsigned)MB_MAX(2, ncpu), err)) < 0)
		return r;
	D.up_work = true;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if ((r = curlm_init(err)) < 0)
		return r;
	D.up_curl = true;
	char *db = xasprintf("%s/moonbox.db", o->state_dir);
	r = store_open(db, err);
	free(db);
	if (r < 0)
		return r;
	D.up_store = true;
	if ((r = events_init(err)) < 0)
		return r;
	D.up_events = true;
	if ((r = rt_init(o->budget_ms, err)) < 0)
		return r;
	D.up_rt = true;
	bindings_open(rt_state());
	if ((r = scripts_init(o->no_shipped ? NULL : config_get("shipped_scripts_dir"), o->scripts,
	                      err)) < 0)
		return r;
	if (!o->no_builtin_plugins)
		plugins_load_dir(config_get("builtin_plugin_dir"), NULL);
	if (o->plugins_dir) {
		if (!is_dir(o->plugins_dir))
			return mb_err_set(err, -ENOENT, "--plugins %s: no such directory",
			                  o->plugins_dir);
		plugins_load_dir(o->plugins_dir, NULL);
	}
	if (!o->no_scripts && (r = scripts_load(err)) < 0)
		return r;
	return 0;
}

int daemon_http(const struct daemon_opts *o, mb_err *err)
{
	int r;
	if (o->http && *o->http) {
		char *tf =
		    o->token_file ? xstrdup(o->token_file) : xasprintf("%s/token", o->state_dir);
		config_set("token_file", tf);
		r = load_token(tf, err);
		free(tf);
		if (r < 0)
			return r;
	}
	struct http_config hc = {
		.tcp = o->http,
		.sock = o->socket,
		.token = config_get("token"),
		.web_root = config_get("web_root"),
		.body_limit = o->body_limit,
		.upload_dir = NULL,
	};
	char *uploads = xasprintf("%s/tmp/uploads", o->state_dir);
	hc.upload_dir = uploads;
	r = http_start(&hc, err);
	free(uploads);
	if (r < 0)
		return r;
	D.up_http = true;
	if (http_tcp_address())
		config_set("http", http_tcp_address());
	return 0;
}

/* --- signals and draining --- */

static void drain_check(void *ud)
{
	D.drain_timer = NULL;
	if (!D.up_http || http_busy() == 0 || mb_now_ms() >= D.drain_deadline) {
		loop_stop();
		return;
	}
	D.drain_timer = loop_timer(50, drain_check, NULL);
}

void daemon_request_stop(int code)
{
	if (D.draining)
		return;
	D.draining = true;
	D.exit_code = code;
	log_info("shutting down: draining requests");
	events_emit("daemon.stopping", json_pack("{s:i}", "pid", (int)getpid()), NULL);
	if (D.up_http)
		http_quiesce();
	D.drain_deadline = mb_now_ms() + 10000;
	D.drain_timer = loop_timer(0, drain_check, NULL);
}

static void on_signal(int fd, uint32_t events, void *ud)
{
	struct signalfd_siginfo si;
	while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			if (D.draining) {
				log_warn("second signal: stopping now");
				D.drain_deadline = 0;
			}
			daemon_request_stop(0);
			break;
		case SIGHUP: {
			mb_err err = { 0 };
			log_info("SIGHUP: reloading scripts");
			if (scripts_load(&err) == 0)
				events_emit("daemon.reload", NULL, NULL);
			break;
		}
		}
	}
}

int daemon_signals(mb_err *err)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	D.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (D.sigfd < 0)
		return mb_err_set(err, -errno, "signalfd: %s", strerror(errno));
	D.sigw = loop_watch(D.sigfd, EPOLLIN, on_signal, NULL, err);
	return D.sigw ? 0 : -EIO;
}

int daemon_pidfile(const char *run_dir, mb_err *err)
{
	D.pidfile = xasprintf("%s/moonbox.pid", run_dir);
	char *s = xasprintf("%d\n", (int)getpid());
	int r = mb_write_file_atomic(D.pidfile, s, strlen(s), 0644);
	free(s);
	if (r < 0)
		return mb_err_set(err, r, "pidfile %s: %s", D.pidfile, strerror(-r));
	return 0;
}

int daemon_exit_code(void)
{
	return D.exit_code;
}

void daemon_fini(void)
{
	lua_State *L = rt_state();
	if (D.drain_timer)
		loop_timer_stop(D.drain_timer);
	D.drain_timer = NULL;
	/* Stop every task: their cleanups release timers, sockets, jobs. */
	if (D.up_rt)
		task_cancel_all();
	for (int i = 0; i < 5; i++)
		loop_once(0);
	if (D.up_http)
		http_stop();
	D.up_http = false;
	plugins_fini();
	if (D.up_rt)
		gen_fini(L);
	/* Worker jobs finish; their completions are delivered while Lua still exists. */
	if (D.up_work)
		work_fini();
	D.up_work = false;
	for (int i = 0; i < 5; i++)
		loop_once(0);
	proc_fini();
	if (D.up_curl)
		curlm_fini();
	D.up_curl = false;
	if (D.up_rt)
		rt_fini();
	D.up_rt = false;
	plugins_free();
	http_fini();
	if (D.up_events)
		events_fini();
	D.up_events = false;
	if (D.up_store)
		store_close();
	D.up_store = false;
	scripts_fini();
	curl_global_cleanup();
	if (D.sigw)
		loop_unwatch(D.sigw);
	D.sigw = NULL;
	if (D.sigfd >= 0)
		close(D.sigfd);
	D.sigfd = -1;
	if (D.up_loop)
		loop_fini();
	D.up_loop = false;
	if (D.pidfile) {
		unlink(D.pidfile);
		free(D.pidfile);
		D.pidfile = NULL;
	}
	config_fini();
}
