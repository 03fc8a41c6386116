/*
 * The registry plugin: glue between the host ABI (plugin.h) and the engine.
 * Everything here runs on the loop thread; blocking work goes through host->work.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ref.h"
#include "regplugin.h"

struct rp rp;

void rp_log(int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (rp.host)
		rp.host->log(rp.self, level, "%s", msg);
}

void rp_emit(const char *type, json_t *data)
{
	mb_err err = { 0 };
	if (rp.host->emit(type, data, &err) < 0)
		rp_log(MB_LOG_WARN, "registry: emit %s: %s", type, err.msg);
}

/* ---- struct mbr_io on top of the host
 * ------------------------------------------------------------ */

static int io_curl_add(void *ud, CURL *easy, mb_curl_fn fn, void *arg, mb_err *err)
{
	return rp.host->curl_add(easy, fn, arg, err);
}

static void io_curl_remove(void *ud, CURL *easy)
{
	rp.host->curl_remove(easy);
}

static void *io_timer_start(void *ud, uint64_t ms, mb_fn fn, void *arg)
{
	return rp.host->timer_start(ms, fn, arg);
}

static void io_timer_stop(void *ud, void *t)
{
	rp.host->timer_stop(t);
}

static int io_work(void *ud, mb_fn work, mb_fn done, void *arg, mb_err *err)
{
	return rp.host->work(work, done, arg, err);
}

static int io_run(void *ud, const char *const argv[], uint64_t timeout_ms, mb_run_fn fn, void *arg,
                  mb_err *err)
{
	return rp.host->run(argv, NULL, 0, timeout_ms, fn, arg, err);
}

static void io_log(void *ud, int level, const char *msg)
{
	rp_log(level, "%s", msg);
}

/* ---- credentials
 * ---------------------------------------------------------------------------------- */

int rp_cred_lookup(const char *registry, struct mbr_cred *c)
{
	memset(c, 0, sizeof(*c));
	if (rp.auths) {
		char *text = json_dumps(rp.auths, JSON_COMPACT);
		int r = text ? mbr_cred_from_docker_config(text, registry, c, NULL) : -ENOMEM;
		if (text) {
			explicit_bzero(text, strlen(text));
			free(text);
		}
		if (r == 0)
			return 0;
	}
	if (rp.docker_config &&
	    mbr_cred_from_docker_config(rp.docker_config, registry, c, NULL) == 0)
		return 0;
	return -ENOENT;
}

/* Saving auth.json: one write at a time, on a worker (temp file + fsync + rename, 0600).
 * A change made while a write runs is written by the next one, so the file always ends
 * with the newest state and writes never race. Callers are told once a write that
 * includes their change is on disk. */
struct save_waiter {
	struct save_waiter *next;
	rp_saved_fn fn;
	void *arg;
};

struct save_job {
	char *path;
	char *text;
	int rc;
	mb_err err;
};

static struct {
	bool running;                        /* a write is on a worker */
	bool again;                          /* changed meanwhile: write again after it */
	struct save_waiter *covered, *later; /* told after this write / after the next */
} S;

static void notify_saved(struct save_waiter *w, const mb_err *err)
{
	while (w) {
		struct save_waiter *n = w->next;
		if (w->fn)
			w->fn(w->arg, err);
		free(w);
		w = n;
	}
}

static void save_work(void *arg)
{
	struct save_job *j = arg;
	j->rc = mbr_write_file_atomic(j->path, j->text, strlen(j->text), 0600, &j->err);
}

static void start_save(void);

static void save_done(void *arg)
{
	struct save_job *j = arg;
	if (j->rc < 0)
		rp_log(MB_LOG_ERROR, "registry: saving credentials failed: %s", j->err.msg);
	explicit_bzero(j->text, strlen(j->text));
	free(j->text);
	free(j->path);
	struct save_waiter *w = S.covered;
	S.covered = NULL;
	S.running = false;
	notify_saved(w, j->rc < 0 ? &j->err : NULL);
	free(j);
	if (S.again && !rp.shutting_down && rp.auths) {
		S.again = false;
		S.covered = S.later;
		S.later = NULL;
		start_save();
	}
}

static void start_save(void)
{
	mb_err err = { 0 };
	struct save_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->path = strdup(rp.auth_path);
		j->text = json_dumps(rp.auths, JSON_INDENT(1));
	}
	if (!j || !j->path || !j->text || rp.host->work(save_work, save_done, j, &err) < 0) {
		if (!err.code)
			mb_err_set(&err, -ENOMEM, "out of memory");
		if (j) {
			if (j->text)
				explicit_bzero(j->text, strlen(j->text));
			free(j->text);
			free(j->path);
			free(j);
		}
		struct save_waiter *w = S.covered;
		S.covered = NULL;
		notify_saved(w, &err);
		return;
	}
	S.running = true;
}

/* Write rp.auths out; fn(arg, err) runs once it is on disk (err NULL) or failed. */
static void save_auths(rp_saved_fn fn, void *arg)
{
	struct save_waiter *w = calloc(1, sizeof(*w));
	if (w) {
		w->fn = fn;
		w->arg = arg;
	} else if (fn) {
		mb_err err;
		mb_err_set(&err, -ENOMEM, "out of memory");
		fn(arg, &err);
	}
	if (S.running) {
		S.again = true;
		if (w) {
			w->next = S.later;
			S.later = w;
		}
		return;
	}
	if (w) {
		w->next = S.covered;
		S.covered = w;
	}
	start_save();
}

void rp_cred_cancel_saves(void)
{
	for (struct save_waiter *w = S.covered; w; w = w->next)
		w->fn = NULL;
	for (struct save_waiter *w = S.later; w; w = w->next)
		w->fn = NULL;
}

int rp_cred_store(const char *registry, const char *user, const char *pass, rp_saved_fn fn,
                  void *arg, mb_err *err)
{
	char key[300];
	if (mbr_registry_key(registry, key, sizeof(key)) < 0)
		return mb_err_set(err, -EINVAL, "invalid registry name \"%s\"", registry);
	char *raw = mbr_sprintf("%s:%s", user, pass);
	char *b64 = raw ? mbr_base64_encode(raw, strlen(raw)) : NULL;
	if (raw) {
		explicit_bzero(raw, strlen(raw));
		free(raw);
	}
	if (!b64)
		return mb_err_set(err, -ENOMEM, "out of memory");
	json_t *auths = json_object_get(rp.auths, "auths");
	json_object_set_new(auths, key, json_pack("{s:s}", "auth", b64));
	explicit_bzero(b64, strlen(b64));
	free(b64);
	save_auths(fn, arg);
	return 0;
}

int rp_cred_forget(const char *registry, rp_saved_fn fn, void *arg, mb_err *err)
{
	char key[300];
	if (mbr_registry_key(registry, key, sizeof(key)) < 0)
		return mb_err_set(err, -EINVAL, "invalid registry name \"%s\"", registry);
	json_t *auths = json_object_get(rp.auths, "auths");
	if (json_object_del(auths, key) < 0)
		return mb_err_set(err, -ENOENT, "not logged in to %s", key);
	save_auths(fn, arg);
	return 0;
}

json_t *rp_cred_list(void)
{
	json_t *a = json_array();
	const char *k;
	json_t *v;
	json_object_foreach(json_object_get(rp.auths, "auths"), k, v)
	{
		struct mbr_cred c;
		json_t *one = json_pack("{s:s}", "registry", k);
		char *text = json_dumps(rp.auths, JSON_COMPACT);
		if (text && mbr_cred_from_docker_config(text, k, &c, NULL) == 0) {
			if (c.username)
				json_object_set_new(one, "username", json_string(c.username));
			mbr_cred_clear(&c);
		}
		if (text) {
			explicit_bzero(text, strlen(text));
			free(text);
		}
		json_array_append_new(a, one);
	}
	return a;
}

/* ---- plugin entry points
 * ---------------------------------------------------------------------------- */

static void load_credentials(void)
{
	char *text = NULL;
	size_t len = 0;
	rp.auths = NULL;
	/* small files read once at start-up (not on a request path) */
	if (mbr_read_file(rp.auth_path, 1 << 20, &text, &len, NULL) == 0) {
		rp.auths = json_loadb(text, len, 0, NULL);
		explicit_bzero(text, len);
		free(text);
		struct stat st;
		if (stat(rp.auth_path, &st) == 0 && (st.st_mode & 077))
			chmod(rp.auth_path, 0600);
	}
	if (!json_is_object(rp.auths)) {
		json_decref(rp.auths);
		rp.auths = json_object();
	}
	if (!json_is_object(json_object_get(rp.auths, "auths")))
		json_object_set_new(rp.auths, "auths", json_object());
	const char *home = getenv("HOME");
	char *dc = home ? mbr_sprintf("%s/.docker/config.json", home) : NULL;
	if (dc && mbr_read_file(dc, 1 << 20, &text, &len, NULL) == 0)
		rp.docker_config = text;
	free(dc);
}

/* At start-up, scratch trees and imports an earlier process left behind (in images/tmp and
 * in the RAM scratch directory) are removed on a worker; anything made after start-up is
 * newer and stays. Counted in eng->active, so that fini leaves the engine alone meanwhile. */
struct sweep_job {
	int64_t before;
	struct mbr_gc_stats st;
};

static void sweep_work(void *arg)
{
	struct sweep_job *j = arg;
	mbr_store_sweep_tmp(rp.eng->store, j->before, &j->st);
}

static void sweep_done(void *arg)
{
	struct sweep_job *j = arg;
	if (j->st.tmp_removed)
		rp_log(MB_LOG_INFO, "registry: removed %llu leftovers of an earlier run from tmp",
		       (unsigned long long)j->st.tmp_removed);
	rp.eng->active--;
	free(j);
}

static void sweep_leftovers(void)
{
	struct sweep_job *j = calloc(1, sizeof(*j));
	mb_err err = { 0 };
	if (!j)
		return;
	j->before = (int64_t)time(NULL);
	rp.eng->active++;
	if (rp.host->work(sweep_work, sweep_done, j, &err) < 0) {
		rp.eng->active--;
		free(j);
		rp_log(MB_LOG_WARN, "registry: cannot sweep tmp: %s", err.msg);
	}
}

static int reg_init(const struct mb_host *host, mb_plugin *self, mb_err *err)
{
	memset(&rp, 0, sizeof(rp));
	rp.host = host;
	rp.self = self;
	rp.io = (struct mbr_io){ .curl_add = io_curl_add,
		                 .curl_remove = io_curl_remove,
		                 .timer_start = io_timer_start,
		                 .timer_stop = io_timer_stop,
		                 .work = io_work,
		                 .run = io_run,
		                 .log = io_log };
	const char *sd = host->config("state_dir");
	if (!sd)
		return mb_err_set(err, -EINVAL, "registry: no state_dir configured");
	rp.state_dir = strdup(sd);
	char *images = mbr_sprintf("%s/images", sd);
	char *regdir = mbr_sprintf("%s/registry", sd);
	rp.auth_path = mbr_sprintf("%s/registry/auth.json", sd);
	int r = 0;
	if (!rp.state_dir || !images || !regdir || !rp.auth_path) {
		r = mb_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((r = mbr_mkdir_p(regdir, 0700, err)) < 0)
		goto out;
	rp.eng = mbr_engine_new(&rp.io, images, err);
	if (!rp.eng) {
		r = err ? err->code : -ENOMEM;
		goto out;
	}
	rp.eng->unpack.keep_owners = geteuid() == 0;
	load_credentials();
	if ((r = rdb_migrate(err)) < 0)
		goto out;
	if ((r = rp_lua_register(err)) < 0)
		goto out;
	sweep_leftovers();
out:
	free(images);
	free(regdir);
	if (r < 0) {
		mbr_engine_free(rp.eng);
		rp.eng = NULL;
	}
	return r;
}

static void reg_fini(mb_plugin *self)
{
	rp.shutting_down = true;
	rp_lua_shutdown(); /* cancels pulls and loads */
	rp_cred_cancel_saves();
	if (rp.eng && rp.eng->active > 0) {
		/* worker jobs of cancelled pulls still point into the engine: leave it (and rp)
		 * alone rather than free memory a worker may touch; the process is exiting */
		rp_log(MB_LOG_WARN, "registry: %d jobs still running at shutdown", rp.eng->active);
		return;
	}
	mbr_engine_free(rp.eng);
	json_decref(rp.auths);
	if (rp.docker_config) {
		explicit_bzero(rp.docker_config, strlen(rp.docker_config));
		free(rp.docker_config);
	}
	free(rp.state_dir);
	free(rp.auth_path);
	memset(&rp, 0, sizeof(rp));
}

static json_t *reg_info(mb_plugin *self)
{
	int n = 0;
	for (struct rp_pull *p = rp.pulls; p; p = p->next)
		n++;
	return json_pack("{s:s,s:i,s:i,s:i,s:s,s:s}", "store", rp.eng ? rp.eng->store->root : "",
	                 "pulls", n, "loads", rp.loads, "parallel", rp.eng ? rp.eng->parallel : 0,
	                 "disk_format", "erofs", "ram_scratch",
	                 rp.eng && rp.eng->store->ram_tmp ? rp.eng->store->ram_tmp : "");
}

MB_PLUGIN_DEFINE("registry", "0.1.0",
                 "OCI distribution client, content store, safe unpacker, erofs base disks",
                 reg_init, reg_fini, reg_info)
