/*
 * Lua module `vm`. Stack effects are noted [-pop, +push, e]; ⏳ marks functions that wait
 * (the task yields). Misuse raises; operational failures return nil, message, code.
 *
 *   vm.acceleration()                       -> {selected, available, reason, tsc_khz, ...}
 *   vm.templates()                          -> {{key, memory_mib, vcpus, state, created, error,
 * dir}} vm.create(spec)                         -> record | nil, msg, code [, field] vm.start(id [,
 * {timeout=s}]) ⏳          -> record (agent authenticated) vm.stop(id [, {timeout=s}]) ⏳ -> record
 * (stopped) vm.kill(id) ⏳, vm.pause(id) ⏳, vm.resume(id) ⏳ -> record vm.remove(id [, {force=bool}])
 * ⏳        -> true vm.get(id) -> record | nil, msg, "not_found";  vm.list() -> {record...}
 *   vm.console(id [, {tail=bytes}])         -> string
 *   guest calls ⏳: run exec read write close_stdin resize signal wait processes release stats
 *                  fs_read fs_write fs_stat fs_mkdir fs_readdir command
 */
#include "vm.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mbp_proto.h"

#define CHUNK          (1u << 20)
#define MAX_POLL_MS    600000 /* the agent's limit for one long poll */
#define CALL_MS        60000  /* ordinary requests */
#define POLL_MARGIN_MS 30000  /* transport margin over a long poll's wait */
#define FS_READ_MAX    (64u << 20)
#define CMD_OUT_MAX    (16u << 20)

static int push_err(lua_State *L, int code, const char *msg)
{
	lua_pushnil(L);
	lua_pushstring(L, msg);
	lua_pushstring(L, G.host->errcode(code));
	return 3;
}

static int push_mberr(lua_State *L, const mb_err *e)
{
	return push_err(L, e->code ? e->code : -EIO, e->msg[0] ? e->msg : "failed");
}

static struct vm *check_vm(lua_State *L, int idx, mb_err *err)
{
	const char *id = luaL_checkstring(L, idx);
	struct vm *v = vm_find(id);
	if (!v)
		mb_err_set(err, -ENOENT, "no such vm: %s", id);
	return v;
}

static lua_Number opt_field_num(lua_State *L, int idx, const char *k, lua_Number dflt)
{
	if (lua_isnoneornil(L, idx))
		return dflt;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_getfield(L, idx, k);
	lua_Number n = dflt;
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1))
			luaL_error(L, "option %s must be a number", k);
		n = lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return n;
}

static bool opt_field_bool(lua_State *L, int idx, const char *k)
{
	if (lua_isnoneornil(L, idx))
		return false;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_getfield(L, idx, k);
	bool b = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return b;
}

static const char *opt_field_str(lua_State *L, int idx, const char *k)
{
	if (lua_isnoneornil(L, idx))
		return NULL;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_getfield(L, idx, k);
	const char *s = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
	lua_pop(L, 1); /* the string stays alive in the table */
	return s;
}

/* timeout option in seconds -> ms (0 = none given) */
static int opt_timeout_ms(lua_State *L, int idx, const char *k)
{
	lua_Number t = opt_field_num(L, idx, k, -1);
	if (t < 0)
		return 0;
	if (t > 86400)
		t = 86400;
	return (int)(t * 1000);
}

static void push_record(lua_State *L, const struct vm *v)
{
	json_t *r = vm_record(v);
	G.host->lua_push_json(L, r);
	json_decref(r);
}

/* ---- plain functions ----------------------------------------------------------------------- */

/* [-0, +1, -] */
static int l_acceleration(lua_State *L)
{
	json_t *j = accel_json();
	G.host->lua_push_json(L, j);
	json_decref(j);
	return 1;
}

/* [-0, +1, -] */
static int l_templates(lua_State *L)
{
	json_t *j = vm_tpl_list();
	G.host->lua_push_json(L, j);
	json_decref(j);
	return 1;
}

/* [-1, +1|3|4, e] */
static int l_create(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	mb_err err = { 0 };
	json_t *spec = G.host->lua_to_json(L, 1, &err);
	if (!spec)
		return push_err(L, -EINVAL, err.msg);
	const char *field = NULL;
	json_t *norm = vm_spec_normalize(spec, &field, &err);
	json_decref(spec);
	if (!norm) {
		push_mberr(L, &err);
		if (field) {
			lua_pushstring(L, field);
			return 4;
		}
		return 3;
	}
	struct vm *v = vm_create(norm, &err);
	if (!v) {
		push_mberr(L, &err);
		if (err.code == -EEXIST) {
			lua_pushstring(L, strncmp(err.msg, "id:", 3) == 0 ? "id" : "name");
			return 4;
		}
		return 3;
	}
	push_record(L, v);
	return 1;
}

/* [-1, +1, e] */
static int l_get(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	if (!v)
		return push_mberr(L, &err);
	push_record(L, v);
	return 1;
}

/* [-0, +1, e] */
static int l_list(lua_State *L)
{
	json_t *a = json_array();
	for (struct vm *v = G.vms; v; v = v->next)
		if (!v->removed)
			json_array_append_new(a, vm_record(v));
	G.host->lua_push_json(L, a);
	json_decref(a);
	return 1;
}

/* [-2, +1, e] */
static int l_console(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	if (!v)
		return push_mberr(L, &err);
	lua_Number tail = opt_field_num(L, 2, "tail", 65536);
	if (tail < 0)
		return luaL_argerror(L, 2, "tail must be >= 0");
	if (tail > 16 << 20)
		tail = 16 << 20;
	char *p = vm_path(v, "console.log");
	size_t len;
	char *t = vm_file_tail(p, (size_t)tail, &len);
	free(p);
	if (!t)
		return push_err(L, -ENOMEM, "out of memory");
	lua_pushlstring(L, t, len);
	free(t);
	return 1;
}

/* ---- lifecycle (waiting) -------------------------------------------------------------------- */

static void lw_cancel(void *ud)
{
	vm_waiter_cancel(ud);
}

/* Call op with a fresh waiter; yield unless it finished at once. */
static int lifecycle(lua_State *L, struct vm *v,
                     int (*op)(struct vm *, struct lwait *, void *, mb_err *), void *arg)
{
	G.host->wait_check(L);
	struct lwait *lw = calloc(1, sizeof(*lw));
	if (!lw)
		return luaL_error(L, "out of memory");
	mb_err err = { 0 };
	int r = op(v, lw, arg, &err);
	if (r < 0 || r == 1) {
		free(lw); /* never queued */
		if (r < 0)
			return push_mberr(L, &err);
		push_record(L, v);
		return 1;
	}
	if (!lw->linked && !lw->fire) {
		/* the op did not need a waiter after all (e.g. remove of a created VM is queued
		 * through its job, which holds the waiter) */
	}
	lw->w = G.host->wait_begin(L, lw_cancel, lw);
	return G.host->wait_yield(L, lw->w, NULL, 0);
}

struct start_arg {
	int timeout_ms;
	const char *boot_token;
};

static int op_start(struct vm *v, struct lwait *lw, void *arg, mb_err *err)
{
	struct start_arg *a = arg;
	return vm_start(v, a->timeout_ms, a->boot_token, lw, err);
}

static int op_stop(struct vm *v, struct lwait *lw, void *arg, mb_err *err)
{
	return vm_stop(v, *(int *)arg, lw, err);
}

static int op_kill(struct vm *v, struct lwait *lw, void *arg, mb_err *err)
{
	return vm_kill(v, lw, err);
}

static int op_pause(struct vm *v, struct lwait *lw, void *arg, mb_err *err)
{
	return vm_pause(v, *(bool *)arg, lw, err);
}

static int op_remove(struct vm *v, struct lwait *lw, void *arg, mb_err *err)
{
	return vm_remove(v, *(bool *)arg, lw, err);
}

/* ⏳ [-2, +1|3, e] */
static int l_start(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	struct start_arg a = { opt_timeout_ms(L, 2, "timeout"),
		               opt_field_str(L, 2, "debug_boot_token") };
	if (a.boot_token && (strlen(a.boot_token) < 16 || strlen(a.boot_token) > 255))
		return luaL_argerror(L, 2, "debug_boot_token must have 16..255 characters");
	if (!v)
		return push_mberr(L, &err);
	return lifecycle(L, v, op_start, &a);
}

/* ⏳ [-2, +1|3, e] */
static int l_stop(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	lua_Number t = opt_field_num(L, 2, "timeout", 10);
	if (t < 0 || t > 3600)
		return luaL_argerror(L, 2, "timeout must be 0..3600 seconds");
	int ms = (int)(t * 1000);
	if (!v)
		return push_mberr(L, &err);
	return lifecycle(L, v, op_stop, &ms);
}

/* ⏳ [-1, +1|3, e] */
static int l_kill(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	if (!v)
		return push_mberr(L, &err);
	return lifecycle(L, v, op_kill, NULL);
}

static int pause_resume(lua_State *L, bool pause)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	if (!v)
		return push_mberr(L, &err);
	return lifecycle(L, v, op_pause, &pause);
}

/* ⏳ [-1, +1|3, e] */
static int l_pause(lua_State *L)
{
	return pause_resume(L, true);
}

/* ⏳ [-1, +1|3, e] */
static int l_resume(lua_State *L)
{
	return pause_resume(L, false);
}

/* ⏳ [-2, +1|3, e] */
static int l_remove(lua_State *L)
{
	mb_err err = { 0 };
	struct vm *v = check_vm(L, 1, &err);
	bool force = opt_field_bool(L, 2, "force");
	if (!v)
		return push_mberr(L, &err);
	return lifecycle(L, v, op_remove, &force);
}

/* ---- guest operations -------------------------------------------------------------------- */

enum gkind {
	G_SIMPLE,  /* one request; the reply is shaped by `shape` */
	G_READ,    /* long poll one stream */
	G_WRITE,   /* stdin, chunked, offset-tracked */
	G_WAIT,    /* long poll for the exit */
	G_FSREAD,  /* chunked file read */
	G_FSWRITE, /* chunked file write */
	G_COMMAND, /* exec + stdin + read both + wait + release */
	G_CLEANUP, /* detached: KILL + wait + release after a cancelled command */
};

enum shape { S_TRUE, S_PROC, S_LIST, S_STATS, S_STAT, S_ENTRIES };

struct gop {
	enum gkind kind;
	enum shape shape;
	mb_wait *w;
	struct vm *v;
	struct agent *a; /* borrowed from v (valid while the VM runs) */
	struct areq *req, *req2;
	mb_timer *timer;
	mb_timer *timer2; /* command: stdin retry */
	bool finishing;
	char *proc; /* process id */
	char *path;
	uint64_t deadline; /* 0 = none */
	/* read */
	int stream; /* 0 stdout, 1 stderr */
	int64_t off;
	int64_t max;
	int delay;
	/* write / fs_write / command stdin */
	uint8_t *data;
	size_t len, pos;
	bool eof; /* close_stdin */
	bool learned;
	json_t *opts; /* fs_write mode/uid/gid, command exec fields */
	/* fs_read / command output */
	char *buf[2];
	size_t blen[2], bcap[2];
	int64_t roff[2];
	bool reof[2];
	bool truncated[2];
	int64_t limit;
	json_t *info;
	json_t *status;
	bool exited;
	bool stdin_done;
	bool started;
	int timeout_ms;
};

/* Ownership: frees g, its buffers and timers; drops its VM reference. */
static void gop_free(struct gop *g)
{
	if (g->timer)
		G.host->timer_stop(g->timer);
	if (g->timer2)
		G.host->timer_stop(g->timer2);
	free(g->proc);
	free(g->path);
	free(g->data);
	free(g->buf[0]);
	free(g->buf[1]);
	json_decref(g->opts);
	json_decref(g->info);
	json_decref(g->status);
	if (g->v)
		vm_unref(g->v);
	free(g);
}

static void gop_cancel(void *ud);

/* A new guest operation holding a reference on v. Ownership: caller frees with gop_free()
 * (or gop_done()/gop_fail(), which free it). */
static struct gop *gop_new(struct vm *v, enum gkind kind)
{
	struct gop *g = calloc(1, sizeof(*g));
	if (!g)
		abort();
	g->kind = kind;
	g->v = v;
	vm_ref(v);
	g->a = v->agent;
	return g;
}

static lua_State *gop_thread(struct gop *g)
{
	return G.host->wait_thread(g->w);
}

static void gop_done(struct gop *g, int n)
{
	mb_wait *w = g->w;
	g->w = NULL;
	gop_free(g);
	if (w)
		G.host->wait_done(w, n);
}

static void gop_fail(struct gop *g, int code, const char *msg)
{
	if (!g->w) {
		gop_free(g);
		return;
	}
	gop_done(g, push_err(gop_thread(g), code, msg));
}

static void gop_fail_err(struct gop *g, int rc, const mb_err *err)
{
	gop_fail(g, rc, err && err->msg[0] ? err->msg : "agent request failed");
}

static void start_cleanup(struct vm *v, const char *proc);

static void gop_cancel(void *ud)
{
	struct gop *g = ud;
	g->w = NULL;
	if (g->req)
		agent_cancel(g->req);
	if (g->req2)
		agent_cancel(g->req2);
	g->req = g->req2 = NULL;
	if (g->kind == G_COMMAND && g->started && g->proc && g->v->state == VS_RUNNING)
		start_cleanup(g->v, g->proc); /* do not leave the command running */
	gop_free(g);
}

static int remaining_ms(struct gop *g)
{
	if (!g->deadline)
		return MAX_POLL_MS;
	uint64_t now = vm_mono_ms();
	if (now >= g->deadline)
		return 0;
	uint64_t r = g->deadline - now;
	return r > MAX_POLL_MS ? MAX_POLL_MS : (int)r;
}

/* Send on the gop's first slot. Returns 0, or fails the gop (if it already waits) and
 * returns the error. hdr stolen. */
static int gop_send(struct gop *g, struct areq **slot, json_t *hdr, const void *data, size_t len,
                    int timeout_ms, areq_fn fn, mb_err *err)
{
	mb_err e = { 0 };
	if (!g->a || g->v->state != VS_RUNNING) {
		json_decref(hdr);
		mb_err_set(&e, -EBUSY, "vm %s is %s", g->v->name, vm_state_name(g->v->state));
	} else if (g->v->agent != g->a) {
		/* compared, never dereferenced: the agent of an earlier boot may be gone */
		json_decref(hdr);
		mb_err_set(&e, -ECONNRESET, "vm %s restarted during the operation", g->v->name);
	} else if (agent_call(g->a, hdr, data, len, timeout_ms, fn, g, slot, &e) == 0) {
		return 0;
	}
	if (err)
		*err = e;
	return e.code;
}

/* Start the gop's first request and yield, or return nil,msg,code without waiting. */
static int gop_begin(lua_State *L, struct gop *g, json_t *hdr, const void *data, size_t len,
                     int timeout_ms, areq_fn fn)
{
	mb_err err = { 0 };
	if (gop_send(g, &g->req, hdr, data, len, timeout_ms, fn, &err) < 0) {
		gop_free(g);
		return push_mberr(L, &err);
	}
	g->w = G.host->wait_begin(L, gop_cancel, g);
	return G.host->wait_yield(L, g->w, NULL, 0);
}

/* Validate and fetch the VM for a guest call. */
static struct vm *guest_vm(lua_State *L, mb_err *err)
{
	struct vm *v = check_vm(L, 1, err);
	if (v && vm_guest_ready(v, err) < 0)
		return NULL;
	return v;
}

/* ---- simple ops ---- */

static void simple_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                        const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc == -ESRCH && g->shape == S_PROC) {
		/* exec without a running main process: a state problem, not a missing object */
		gop_fail(g, -EBUSY, err && err->msg[0] ? err->msg : "no running container");
		return;
	}
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	lua_State *T = gop_thread(g);
	switch (g->shape) {
	case S_TRUE:
		lua_pushboolean(T, 1);
		break;
	case S_PROC: {
		json_t *o = json_object();
		static const char *const keys[] = { "id", "pid", NULL };
		for (int i = 0; keys[i]; i++)
			if (json_object_get(rep, keys[i]))
				json_object_set(o, keys[i], json_object_get(rep, keys[i]));
		json_object_set_new(o, "existing",
		                    json_boolean(json_is_true(json_object_get(rep, "existing"))));
		G.host->lua_push_json(T, o);
		json_decref(o);
		break;
	}
	case S_LIST:
		G.host->lua_push_json(T, json_object_get(rep, "processes"));
		break;
	case S_ENTRIES:
		G.host->lua_push_json(T, json_object_get(rep, "entries"));
		break;
	case S_STAT:
	case S_STATS: {
		json_t *o = json_deep_copy(rep);
		json_object_del(o, "ok");
		if (g->shape == S_STATS) {
			int64_t rss, cpu;
			vm_proc_usage(g->v->pid, &rss, &cpu);
			json_object_set_new(o, "host",
			                    json_pack("{s:i,s:I,s:I}", "pid", (int)g->v->pid,
			                              "rss_bytes", (json_int_t)rss, "cpu_usec",
			                              (json_int_t)cpu));
		}
		G.host->lua_push_json(T, o);
		json_decref(o);
		break;
	}
	}
	gop_done(g, 1);
}

static int simple(lua_State *L, struct vm *v, json_t *req, enum shape shape, const void *data,
                  size_t len)
{
	struct gop *g = gop_new(v, G_SIMPLE);
	g->shape = shape;
	return gop_begin(L, g, req, data, len, CALL_MS, simple_done);
}

/* The process table at idx, validated: new reference (caller decrefs) or NULL with err. */
static json_t *proc_arg(lua_State *L, int idx, bool is_run, mb_err *err)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	json_t *j = G.host->lua_to_json(L, idx, err);
	if (!j)
		return NULL;
	json_t *n = vm_proc_normalize(j, is_run, err);
	json_decref(j);
	return n;
}

static int run_exec(lua_State *L, bool is_run)
{
	G.host->wait_check(L);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	json_t *p = proc_arg(L, 2, is_run, &err);
	if (!v || !p) {
		json_decref(p);
		return push_mberr(L, &err);
	}
	json_object_set_new(p, "op", json_string(is_run ? MBP_OP_RUN : MBP_OP_EXEC));
	vm_stdin_off(v, json_string_value(json_object_get(p, "id")), true);
	return simple(L, v, p, S_PROC, NULL, 0);
}

/* ⏳ [-2, +1|3, e] */
static int l_run(lua_State *L)
{
	return run_exec(L, true);
}

/* ⏳ [-2, +1|3, e] */
static int l_exec(lua_State *L)
{
	return run_exec(L, false);
}

/* ⏳ [-4, +1|3, e] */
static int l_resize(lua_State *L)
{
	G.host->wait_check(L);
	const char *pid = luaL_checkstring(L, 2);
	lua_Integer rows = luaL_checkinteger(L, 3), cols = luaL_checkinteger(L, 4);
	luaL_argcheck(L, rows > 0 && rows < 65536, 3, "rows out of range");
	luaL_argcheck(L, cols > 0 && cols < 65536, 4, "cols out of range");
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	json_t *r = json_pack("{s:s,s:s,s:I,s:I}", "op", MBP_OP_RESIZE, "id", pid, "rows",
	                      (json_int_t)rows, "cols", (json_int_t)cols);
	return simple(L, v, r, S_TRUE, NULL, 0);
}

/* ⏳ [-3, +1|3, e] */
static int l_signal(lua_State *L)
{
	G.host->wait_check(L);
	const char *pid = luaL_checkstring(L, 2);
	json_t *sig;
	if (lua_type(L, 3) == LUA_TNUMBER)
		sig = json_integer(luaL_checkinteger(L, 3));
	else
		sig = json_string(luaL_checkstring(L, 3));
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v) {
		json_decref(sig);
		return push_mberr(L, &err);
	}
	json_t *r = json_pack("{s:s,s:s,s:o}", "op", MBP_OP_SIGNAL, "id", pid, "signal", sig);
	return simple(L, v, r, S_TRUE, NULL, 0);
}

/* ⏳ [-2, +1|3, e] */
static int l_release(lua_State *L)
{
	G.host->wait_check(L);
	const char *pid = luaL_checkstring(L, 2);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	vm_stdin_forget(v, pid);
	return simple(L, v, json_pack("{s:s,s:s}", "op", MBP_OP_RELEASE, "id", pid), S_TRUE, NULL,
	              0);
}

/* ⏳ [-1, +1|3, e] */
static int l_processes(lua_State *L)
{
	G.host->wait_check(L);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(L, v, mbp_request(MBP_OP_LIST), S_LIST, NULL, 0);
}

/* ⏳ [-1, +1|3, e] */
static int l_stats(lua_State *L)
{
	G.host->wait_check(L);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(L, v, mbp_request(MBP_OP_STATS), S_STATS, NULL, 0);
}

static const char *check_path(lua_State *L, int idx)
{
	const char *p = luaL_checkstring(L, idx);
	luaL_argcheck(L, p[0] == '/', idx, "must be an absolute path inside the container");
	return p;
}

/* ⏳ [-3, +1|3, e] */
static int l_fs_stat(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	bool follow = opt_field_bool(L, 3, "follow");
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(
	    L, v, json_pack("{s:s,s:s,s:b}", "op", MBP_OP_FS_STAT, "path", path, "follow", follow),
	    S_STAT, NULL, 0);
}

/* ⏳ [-3, +1|3, e] */
static int l_fs_mkdir(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	lua_Number mode = opt_field_num(L, 3, "mode", 0755);
	bool parents = opt_field_bool(L, 3, "parents");
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(L, v,
	              json_pack("{s:s,s:s,s:I,s:b}", "op", MBP_OP_FS_MKDIR, "path", path, "mode",
	                        (json_int_t)mode, "parents", parents),
	              S_TRUE, NULL, 0);
}

/* ⏳ [-2, +1|3, e] */
static int l_fs_readdir(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(L, v, json_pack("{s:s,s:s}", "op", MBP_OP_FS_READDIR, "path", path),
	              S_ENTRIES, NULL, 0);
}

/* ⏳ [-4, +1|3, e] */
static int l_fs_symlink(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	const char *target = luaL_checkstring(L, 3);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	return simple(
	    L, v,
	    json_pack("{s:s,s:s,s:s}", "op", MBP_OP_FS_SYMLINK, "path", path, "target", target),
	    S_TRUE, NULL, 0);
}

/* ---- read (one stream) ---- */

static void read_send(struct gop *g);

static void read_timer(void *ud)
{
	struct gop *g = ud;
	g->timer = NULL;
	read_send(g);
}

static void read_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                      const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	const json_t *so = json_object_get(rep, "stdout"), *se = json_object_get(rep, "stderr");
	size_t l0 = (size_t)json_integer_value(json_object_get(so, "len"));
	size_t l1 = (size_t)json_integer_value(json_object_get(se, "len"));
	if (l0 + l1 > plen) {
		gop_fail(g, -EBADMSG, "agent: read reply shorter than announced");
		return;
	}
	const json_t *mine = g->stream ? se : so;
	size_t n = g->stream ? l1 : l0, other = g->stream ? l0 : l1;
	const uint8_t *data = p + (g->stream ? l0 : 0);
	bool eof = json_is_true(json_object_get(mine, "eof"));
	int rem = remaining_ms(g);
	if (n > 0 || eof || rem == 0 || !g->deadline) {
		lua_State *T = gop_thread(g);
		lua_pushlstring(T, (const char *)data, n);
		lua_pushinteger(T, g->off + (lua_Integer)n);
		lua_pushboolean(T, eof);
		gop_done(g, 3);
		return;
	}
	if (other > 0) {
		/* the other stream has unread data, which wakes every long poll: poll gently */
		g->delay = g->delay ? (g->delay * 2 > 200 ? 200 : g->delay * 2) : 20;
		g->timer =
		    G.host->timer_start((uint64_t)(g->delay < rem ? g->delay : rem), read_timer, g);
		return;
	}
	read_send(g);
}

static void read_send(struct gop *g)
{
	int rem = g->deadline ? remaining_ms(g) : 0;
	json_t *r = json_pack("{s:s,s:s,s:I,s:I,s:i}", "op", MBP_OP_READ, "id", g->proc,
	                      g->stream ? "stderr" : "stdout", (json_int_t)g->off, "max",
	                      (json_int_t)g->max, "wait_ms", rem);
	mb_err err = { 0 };
	if (gop_send(g, &g->req, r, NULL, 0, rem + POLL_MARGIN_MS, read_done, &err) < 0)
		gop_fail_err(g, err.code, &err);
}

/* ⏳ vm.read(id, proc, "stdout"|"stderr", offset [, {wait=s, max=bytes}])
 *   -> data, next_offset, eof   [-5, +3, e] */
static int l_read(lua_State *L)
{
	G.host->wait_check(L);
	const char *pid = luaL_checkstring(L, 2);
	const char *stream = luaL_checkstring(L, 3);
	luaL_argcheck(L, !strcmp(stream, "stdout") || !strcmp(stream, "stderr"), 3,
	              "\"stdout\" or \"stderr\"");
	lua_Integer off = luaL_checkinteger(L, 4);
	luaL_argcheck(L, off >= 0, 4, "offset must be >= 0");
	lua_Number wait = opt_field_num(L, 5, "wait", 0);
	lua_Number max = opt_field_num(L, 5, "max", 256 * 1024);
	luaL_argcheck(L, wait >= 0 && max >= 1, 5, "wait >= 0, max >= 1");
	if (max > CHUNK)
		max = CHUNK;
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	struct gop *g = gop_new(v, G_READ);
	g->proc = strdup(pid);
	g->stream = stream[3] == 'e' ? 1 : 0; /* std[e]rr */
	g->off = off;
	g->max = (int64_t)max;
	if (wait > 0)
		g->deadline = vm_mono_ms() + (uint64_t)(wait * 1000);
	int rem = g->deadline ? remaining_ms(g) : 0;
	json_t *r = json_pack("{s:s,s:s,s:I,s:I,s:i}", "op", MBP_OP_READ, "id", g->proc, stream,
	                      (json_int_t)off, "max", (json_int_t)g->max, "wait_ms", rem);
	return gop_begin(L, g, r, NULL, 0, rem + POLL_MARGIN_MS, read_done);
}

/* ---- write / close_stdin ---- */

static void write_next(struct gop *g);

static void write_timer(void *ud)
{
	struct gop *g = ud;
	g->timer = NULL;
	write_next(g);
}

static void write_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                       const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	int64_t *tracked = vm_stdin_off(g->v, g->proc, true);
	int64_t now = json_integer_value(json_object_get(rep, "offset"));
	if (!g->learned) {
		g->learned = true;
		*tracked = now;
		write_next(g);
		return;
	}
	int64_t advanced = now - *tracked;
	if (advanced > 0) {
		g->pos += (size_t)advanced;
		*tracked = now;
		g->delay = 0;
	}
	if (g->pos >= g->len && (!g->eof || g->stdin_done)) {
		lua_pushboolean(gop_thread(g), 1);
		gop_done(g, 1);
		return;
	}
	if (json_is_true(json_object_get(rep, "closed")) && g->pos < g->len) {
		gop_fail(g, -EPIPE, "the process's stdin is closed");
		return;
	}
	if (advanced <= 0 && g->pos < g->len) {
		/* the agent's input buffer is full: the process has not read yet */
		g->delay = g->delay ? (g->delay * 2 > 200 ? 200 : g->delay * 2) : 10;
		g->timer = G.host->timer_start((uint64_t)g->delay, write_timer, g);
		return;
	}
	write_next(g);
}

static void write_next(struct gop *g)
{
	int64_t *tracked = vm_stdin_off(g->v, g->proc, true);
	size_t n = g->len - g->pos;
	if (n > CHUNK)
		n = CHUNK;
	bool last = g->pos + n >= g->len;
	json_t *r = json_pack("{s:s,s:s,s:I,s:b}", "op", MBP_OP_WRITE, "id", g->proc, "offset",
	                      (json_int_t)*tracked, "eof", g->eof && last);
	if (g->eof && last)
		g->stdin_done = true;
	mb_err err = { 0 };
	if (gop_send(g, &g->req, r, g->data + g->pos, n, CALL_MS, write_done, &err) < 0)
		gop_fail_err(g, err.code, &err);
}

static int write_common(lua_State *L, const char *data, size_t len, bool eof)
{
	const char *pid = luaL_checkstring(L, 2);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	struct gop *g = gop_new(v, G_WRITE);
	g->proc = strdup(pid);
	g->data = malloc(len ? len : 1);
	memcpy(g->data, data, len);
	g->len = len;
	g->eof = eof;
	int64_t *tracked = vm_stdin_off(v, pid, false);
	json_t *r;
	if (!tracked) {
		/* unknown offset (a process of an earlier daemon): an empty write tells it */
		r = json_pack("{s:s,s:s}", "op", MBP_OP_WRITE, "id", pid);
		return gop_begin(L, g, r, NULL, 0, CALL_MS, write_done);
	}
	g->learned = true;
	size_t n = len > CHUNK ? CHUNK : len;
	bool last = n >= len;
	r = json_pack("{s:s,s:s,s:I,s:b}", "op", MBP_OP_WRITE, "id", pid, "offset",
	              (json_int_t)*tracked, "eof", eof && last);
	if (eof && last)
		g->stdin_done = true;
	return gop_begin(L, g, r, g->data, n, CALL_MS, write_done);
}

/* ⏳ vm.write(id, proc, data) -> true   [-3, +1|3, e] */
static int l_write(lua_State *L)
{
	G.host->wait_check(L);
	size_t len;
	const char *data = luaL_checklstring(L, 3, &len);
	return write_common(L, data, len, false);
}

/* ⏳ vm.close_stdin(id, proc) -> true   [-2, +1|3, e] */
static int l_close_stdin(lua_State *L)
{
	G.host->wait_check(L);
	return write_common(L, "", 0, true);
}

/* ---- wait ---- */

/* {exit_code, signal, oom_killed[, pid]} of a wait reply or read status: new reference */
static json_t *status_of(const json_t *rep)
{
	json_t *o = json_object();
	static const char *const keys[] = { "exit_code", "signal", "pid", NULL };
	for (int i = 0; keys[i]; i++)
		if (json_object_get(rep, keys[i]))
			json_object_set(o, keys[i], json_object_get(rep, keys[i]));
	json_object_set_new(o, "oom_killed",
	                    json_boolean(json_is_true(json_object_get(rep, "oom_killed"))));
	return o;
}

static void push_status(lua_State *T, const json_t *rep)
{
	json_t *o = status_of(rep);
	G.host->lua_push_json(T, o);
	json_decref(o);
}

static void wait_done_cb(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                         const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	if (json_is_true(json_object_get(rep, "exited"))) {
		push_status(gop_thread(g), rep);
		gop_done(g, 1);
		return;
	}
	int rem = remaining_ms(g);
	if (rem == 0) {
		gop_fail(g, -ETIMEDOUT, "the process has not exited yet");
		return;
	}
	json_t *r = json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", g->proc, "wait_ms", rem);
	mb_err e = { 0 };
	if (gop_send(g, &g->req, r, NULL, 0, rem + POLL_MARGIN_MS, wait_done_cb, &e) < 0)
		gop_fail_err(g, e.code, &e);
}

/* ⏳ vm.wait(id, proc [, {timeout=s}]) -> {exit_code, signal, oom_killed, pid}  [-3, +1|3, e] */
static int l_wait(lua_State *L)
{
	G.host->wait_check(L);
	const char *pid = luaL_checkstring(L, 2);
	lua_Number t = opt_field_num(L, 3, "timeout", -1);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	struct gop *g = gop_new(v, G_WAIT);
	g->proc = strdup(pid);
	if (t >= 0)
		g->deadline = vm_mono_ms() + (uint64_t)(t * 1000);
	int rem = remaining_ms(g);
	json_t *r = json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", pid, "wait_ms", rem);
	return gop_begin(L, g, r, NULL, 0, rem + POLL_MARGIN_MS, wait_done_cb);
}

/* ---- files ---- */

/* Append n bytes (copied) to g->buf[i], which g owns. */
static int buf_add(struct gop *g, int i, const uint8_t *p, size_t n)
{
	if (n == 0)
		return 0;
	if (g->blen[i] + n > g->bcap[i]) {
		size_t nc = g->bcap[i] ? g->bcap[i] : 65536;
		while (nc < g->blen[i] + n)
			nc *= 2;
		char *nb = realloc(g->buf[i], nc);
		if (!nb)
			return -ENOMEM;
		g->buf[i] = nb;
		g->bcap[i] = nc;
	}
	memcpy(g->buf[i] + g->blen[i], p, n);
	g->blen[i] += n;
	return 0;
}

static void fsread_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                        const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	size_t n = (size_t)json_integer_value(json_object_get(rep, "len"));
	if (n > plen)
		n = plen;
	if (buf_add(g, 0, p, n) < 0) {
		gop_fail(g, -ENOMEM, "out of memory");
		return;
	}
	g->off += (int64_t)n;
	bool eof = json_is_true(json_object_get(rep, "eof"));
	if (!eof && n > 0 && (int64_t)g->blen[0] < g->limit) {
		size_t want = (size_t)(g->limit - (int64_t)g->blen[0]);
		json_t *r =
		    json_pack("{s:s,s:s,s:I,s:I}", "op", MBP_OP_FS_READ, "path", g->path, "offset",
		              (json_int_t)g->off, "max", (json_int_t)(want > CHUNK ? CHUNK : want));
		mb_err e = { 0 };
		if (gop_send(g, &g->req, r, NULL, 0, CALL_MS, fsread_done, &e) < 0)
			gop_fail_err(g, e.code, &e);
		return;
	}
	if (!eof && n > 0 && g->max == 0) {
		gop_fail(g, -E2BIG, "file larger than 64 MiB: read it in pieces ({offset=, max=})");
		return;
	}
	lua_State *T = gop_thread(g);
	lua_pushlstring(T, g->buf[0] ? g->buf[0] : "", g->blen[0]);
	json_t *info = json_deep_copy(rep);
	json_object_del(info, "ok");
	json_object_del(info, "len");
	json_object_set_new(info, "offset", json_integer(g->off));
	G.host->lua_push_json(T, info);
	json_decref(info);
	gop_done(g, 2);
}

/* ⏳ vm.fs_read(id, path [, {offset=, max=}]) -> data, info   [-3, +2|3, e] */
static int l_fs_read(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	lua_Number off = opt_field_num(L, 3, "offset", 0);
	lua_Number max = opt_field_num(L, 3, "max", 0);
	luaL_argcheck(L, off >= 0 && max >= 0, 3, "offset and max must be >= 0");
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	struct gop *g = gop_new(v, G_FSREAD);
	g->path = strdup(path);
	g->off = (int64_t)off;
	g->max = (int64_t)max;
	g->limit = max > 0 ? (int64_t)max : FS_READ_MAX;
	size_t first = (size_t)(g->limit > CHUNK ? CHUNK : g->limit);
	json_t *r = json_pack("{s:s,s:s,s:I,s:I}", "op", MBP_OP_FS_READ, "path", path, "offset",
	                      (json_int_t)g->off, "max", (json_int_t)first);
	return gop_begin(L, g, r, NULL, 0, CALL_MS, fsread_done);
}

/* The next fs_write request of g: new reference (caller decrefs / gives it away). */
static json_t *fswrite_req(struct gop *g)
{
	json_t *r = json_pack("{s:s,s:s,s:I}", "op", MBP_OP_FS_WRITE, "path", g->path, "offset",
	                      (json_int_t)(g->off + (int64_t)g->pos));
	json_object_update(r, g->opts);
	return r;
}

static void fswrite_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                         const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		gop_fail_err(g, rc, err);
		return;
	}
	size_t n = g->len - g->pos > CHUNK ? CHUNK : g->len - g->pos;
	g->pos += n;
	if (g->pos >= g->len) {
		lua_pushboolean(gop_thread(g), 1);
		gop_done(g, 1);
		return;
	}
	n = g->len - g->pos > CHUNK ? CHUNK : g->len - g->pos;
	mb_err e = { 0 };
	if (gop_send(g, &g->req, fswrite_req(g), g->data + g->pos, n, CALL_MS, fswrite_done, &e) <
	    0)
		gop_fail_err(g, e.code, &e);
}

/* ⏳ vm.fs_write(id, path, data [, {mode=, uid=, gid=, offset=}]) -> true   [-4, +1|3, e]
 * offset 0 (the default) creates or truncates the file; a later offset writes into an
 * existing file there, so a large file can be sent piece by piece. */
static int l_fs_write(lua_State *L)
{
	G.host->wait_check(L);
	const char *path = check_path(L, 2);
	size_t len;
	const char *data = luaL_checklstring(L, 3, &len);
	lua_Number off = opt_field_num(L, 4, "offset", 0);
	luaL_argcheck(L, off >= 0, 4, "offset must be >= 0");
	json_t *opts = json_object();
	static const char *const keys[] = { "mode", "uid", "gid", NULL };
	for (int i = 0; keys[i]; i++) {
		lua_Number n = opt_field_num(L, 4, keys[i], -1);
		if (n >= 0)
			json_object_set_new(opts, keys[i], json_integer((json_int_t)n));
	}
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v) {
		json_decref(opts);
		return push_mberr(L, &err);
	}
	struct gop *g = gop_new(v, G_FSWRITE);
	g->path = strdup(path);
	g->opts = opts;
	g->off = (int64_t)off;
	g->data = malloc(len ? len : 1);
	memcpy(g->data, data, len);
	g->len = len;
	size_t n = len > CHUNK ? CHUNK : len;
	return gop_begin(L, g, fswrite_req(g), g->data, n, CALL_MS, fswrite_done);
}

/* ---- command: exec + stdin + both streams + wait + release ---- */

static void cmd_read(struct gop *g);
static void cmd_finish(struct gop *g);
static void cmd_stdin(struct gop *g);

static void cmd_fail(struct gop *g, int code, const char *msg)
{
	if (g->req) {
		agent_cancel(g->req);
		g->req = NULL;
	}
	if (g->req2) {
		agent_cancel(g->req2);
		g->req2 = NULL;
	}
	if (g->started && g->v->state == VS_RUNNING)
		start_cleanup(g->v, g->proc);
	gop_fail(g, code, msg);
}

static void cmd_timeout(void *ud)
{
	struct gop *g = ud;
	g->timer = NULL;
	char m[100];
	snprintf(m, sizeof(m), "command timed out after %d s", g->timeout_ms / 1000);
	cmd_fail(g, -ETIMEDOUT, m);
}

static void release_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                         const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	lua_State *T = gop_thread(g);
	json_t *o = status_of(g->status);
	json_object_del(o, "pid");
	G.host->lua_push_json(T, o);
	json_decref(o);
	lua_pushlstring(T, g->buf[0] ? g->buf[0] : "", g->blen[0]);
	lua_setfield(T, -2, "stdout");
	lua_pushlstring(T, g->buf[1] ? g->buf[1] : "", g->blen[1]);
	lua_setfield(T, -2, "stderr");
	if (g->truncated[0] || g->truncated[1]) {
		lua_pushboolean(T, 1);
		lua_setfield(T, -2, "truncated");
	}
	vm_stdin_forget(g->v, g->proc);
	gop_done(g, 1);
}

static void cmd_finish(struct gop *g)
{
	if (g->finishing || g->req2 || g->timer2 || !g->status || !g->reof[0] || !g->reof[1])
		return; /* stdin writer or reader still busy */
	g->finishing = true;
	mb_err e = { 0 };
	if (gop_send(g, &g->req, json_pack("{s:s,s:s}", "op", MBP_OP_RELEASE, "id", g->proc), NULL,
	             0, CALL_MS, release_done, &e) < 0)
		release_done(g, 0, NULL, NULL, 0, NULL);
}

static void cmd_wait_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                          const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		cmd_fail(g, rc, err ? err->msg : "wait failed");
		return;
	}
	if (!json_is_true(json_object_get(rep, "exited"))) {
		json_t *r =
		    json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", g->proc, "wait_ms", 30000);
		mb_err e = { 0 };
		if (gop_send(g, &g->req, r, NULL, 0, 30000 + POLL_MARGIN_MS, cmd_wait_done, &e) < 0)
			cmd_fail(g, e.code, e.msg);
		return;
	}
	g->status = json_deep_copy(rep);
	cmd_finish(g);
}

static void cmd_read_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                          const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		cmd_fail(g, rc, err ? err->msg : "read failed");
		return;
	}
	const char *names[2] = { "stdout", "stderr" };
	size_t at = 0;
	for (int i = 0; i < 2; i++) {
		const json_t *s = json_object_get(rep, names[i]);
		size_t n = (size_t)json_integer_value(json_object_get(s, "len"));
		if (at + n > plen) {
			cmd_fail(g, -EBADMSG, "agent: read reply shorter than announced");
			return;
		}
		if (g->blen[i] + n <= CMD_OUT_MAX) {
			if (buf_add(g, i, p + at, n) < 0) {
				cmd_fail(g, -ENOMEM, "out of memory");
				return;
			}
		} else {
			g->truncated[i] = true;
		}
		at += n;
		g->roff[i] += (int64_t)n;
		if (json_is_true(json_object_get(s, "eof")))
			g->reof[i] = true;
	}
	if (g->reof[0] && g->reof[1]) {
		if (json_is_true(json_object_get(rep, "exited")) &&
		    json_object_get(rep, "status")) {
			g->status = json_deep_copy(json_object_get(rep, "status"));
			cmd_finish(g);
			return;
		}
		json_t *r =
		    json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", g->proc, "wait_ms", 30000);
		mb_err e = { 0 };
		if (gop_send(g, &g->req, r, NULL, 0, 30000 + POLL_MARGIN_MS, cmd_wait_done, &e) < 0)
			cmd_fail(g, e.code, e.msg);
		return;
	}
	cmd_read(g);
}

static void cmd_read(struct gop *g)
{
	json_t *r = json_pack("{s:s,s:s,s:I,s:I,s:I,s:i}", "op", MBP_OP_READ, "id", g->proc,
	                      "stdout", (json_int_t)g->roff[0], "stderr", (json_int_t)g->roff[1],
	                      "max", (json_int_t)CHUNK, "wait_ms", 30000);
	mb_err e = { 0 };
	if (gop_send(g, &g->req, r, NULL, 0, 30000 + POLL_MARGIN_MS, cmd_read_done, &e) < 0)
		cmd_fail(g, e.code, e.msg);
}

static void cmd_stdin_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                           const mb_err *err);

static void cmd_stdin_timer(void *ud)
{
	struct gop *g = ud;
	g->timer2 = NULL;
	cmd_stdin(g);
}

static void cmd_stdin(struct gop *g)
{
	size_t n = g->len - g->pos > CHUNK ? CHUNK : g->len - g->pos;
	bool last = g->pos + n >= g->len;
	json_t *r = json_pack("{s:s,s:s,s:I,s:b}", "op", MBP_OP_WRITE, "id", g->proc, "offset",
	                      (json_int_t)g->pos, "eof", last);
	mb_err e = { 0 };
	if (gop_send(g, &g->req2, r, g->data + g->pos, n, CALL_MS, cmd_stdin_done, &e) < 0)
		cmd_fail(g, e.code, e.msg);
}

static void cmd_stdin_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                           const mb_err *err)
{
	struct gop *g = ud;
	g->req2 = NULL;
	if (rc < 0 || json_is_true(json_object_get(rep, "closed"))) {
		/* the process does not read (any more): that is its business, like a pipe */
		cmd_finish(g);
		return;
	}
	int64_t now = json_integer_value(json_object_get(rep, "offset"));
	bool progress = now > (int64_t)g->pos;
	if (now > (int64_t)g->pos)
		g->pos = (size_t)now;
	if (g->pos >= g->len) {
		cmd_finish(g);
		return;
	}
	if (!progress) {
		/* input buffer full: retry soon, the reader keeps going meanwhile */
		g->timer2 = G.host->timer_start(20, cmd_stdin_timer, g);
		return;
	}
	cmd_stdin(g);
}

static void cmd_exec_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                          const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	if (rc < 0) {
		/* ESRCH: no running main process to exec in, a state problem (conflict) */
		gop_fail_err(g, rc == -ESRCH ? -EBUSY : rc, err);
		return;
	}
	g->started = true;
	if (g->data)
		cmd_stdin(g);
	cmd_read(g);
}

/* ⏳ vm.command(id, argv [, {timeout=, stdin=, env=, user=, cwd=}])
 *   -> {exit_code, signal, oom_killed, stdout, stderr}   [-3, +1|3, e] */
static int l_command(lua_State *L)
{
	G.host->wait_check(L);
	luaL_checktype(L, 2, LUA_TTABLE);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	mb_err err = { 0 };
	struct vm *v = guest_vm(L, &err);
	if (!v)
		return push_mberr(L, &err);
	/* build the process description as a Lua table: {argv=, env=, user=, cwd=, stdin=} */
	lua_createtable(L, 0, 6);
	lua_pushvalue(L, 2);
	lua_setfield(L, -2, "argv");
	size_t inlen = 0;
	const char *in = NULL;
	if (!lua_isnoneornil(L, 3)) {
		static const char *const pass[] = { "env", "user", "cwd", NULL };
		for (int i = 0; pass[i]; i++) {
			lua_getfield(L, 3, pass[i]);
			lua_setfield(L, -2, pass[i]);
		}
		lua_getfield(L, 3, "stdin");
		if (!lua_isnil(L, -1)) {
			if (lua_type(L, -1) != LUA_TSTRING)
				return luaL_argerror(L, 3, "stdin must be a string");
			in = lua_tolstring(L, -1, &inlen);
			lua_pushboolean(L, 1);
			lua_setfield(L, -3, "stdin");
		}
		lua_pop(L, 1);
	}
	char id[40] = "cmd-";
	vm_random_hex(id + 4, 8, NULL);
	lua_pushstring(L, id);
	lua_setfield(L, -2, "id");
	json_t *p = proc_arg(L, lua_gettop(L), false, &err);
	lua_pop(L, 1);
	if (!p)
		return push_mberr(L, &err);
	json_object_set_new(p, "op", json_string(MBP_OP_EXEC));
	lua_Number t = opt_field_num(L, 3, "timeout", 0);
	struct gop *g = gop_new(v, G_COMMAND);
	g->proc = strdup(id);
	if (in) {
		g->data = malloc(inlen ? inlen : 1);
		memcpy(g->data, in, inlen);
		g->len = inlen;
	}
	if (t > 0) {
		g->timeout_ms = (int)(t * 1000);
		g->deadline = vm_mono_ms() + (uint64_t)g->timeout_ms;
	}
	if (gop_send(g, &g->req, p, NULL, 0, CALL_MS, cmd_exec_done, &err) < 0) {
		gop_free(g);
		return push_mberr(L, &err);
	}
	if (g->timeout_ms)
		g->timer = G.host->timer_start((uint64_t)g->timeout_ms, cmd_timeout, g);
	g->w = G.host->wait_begin(L, gop_cancel, g);
	return G.host->wait_yield(L, g->w, NULL, 0);
}

/* ---- detached cleanup of a cancelled or timed-out command ---- */

static void cleanup_step(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                         const mb_err *err)
{
	struct gop *g = ud;
	g->req = NULL;
	json_t *r = NULL;
	int tmo = CALL_MS;
	if (g->pos == 0) { /* KILL sent: wait for the exit */
		r = json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", g->proc, "wait_ms", 10000);
		tmo = 10000 + POLL_MARGIN_MS;
	} else if (g->pos == 1) { /* exited (or not): forget it */
		r = json_pack("{s:s,s:s}", "op", MBP_OP_RELEASE, "id", g->proc);
	}
	g->pos++;
	if (!r || gop_send(g, &g->req, r, NULL, 0, tmo, cleanup_step, NULL) < 0) {
		vm_stdin_forget(g->v, g->proc);
		gop_free(g);
	}
}

static void start_cleanup(struct vm *v, const char *proc)
{
	if (!v->agent)
		return;
	struct gop *g = gop_new(v, G_CLEANUP);
	g->proc = strdup(proc);
	json_t *r = json_pack("{s:s,s:s,s:s}", "op", MBP_OP_SIGNAL, "id", proc, "signal", "KILL");
	if (gop_send(g, &g->req, r, NULL, 0, CALL_MS, cleanup_step, NULL) < 0)
		gop_free(g);
}

/* ---- registration --------------------------------------------------------------------------- */

static const luaL_Reg funcs[] = {
	{ "acceleration", l_acceleration },
	{ "templates", l_templates },
	{ "create", l_create },
	{ "start", l_start },
	{ "stop", l_stop },
	{ "kill", l_kill },
	{ "pause", l_pause },
	{ "resume", l_resume },
	{ "remove", l_remove },
	{ "get", l_get },
	{ "list", l_list },
	{ "console", l_console },
	{ "run", l_run },
	{ "exec", l_exec },
	{ "read", l_read },
	{ "write", l_write },
	{ "close_stdin", l_close_stdin },
	{ "resize", l_resize },
	{ "signal", l_signal },
	{ "wait", l_wait },
	{ "processes", l_processes },
	{ "release", l_release },
	{ "stats", l_stats },
	{ "fs_read", l_fs_read },
	{ "fs_write", l_fs_write },
	{ "fs_stat", l_fs_stat },
	{ "fs_mkdir", l_fs_mkdir },
	{ "fs_readdir", l_fs_readdir },
	{ "fs_symlink", l_fs_symlink },
	{ "command", l_command },
	{ NULL, NULL },
};

int vm_lua_register(mb_err *err)
{
	return G.host->lua_module(G.self, "vm", funcs, err);
}
