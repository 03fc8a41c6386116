/*
 * Lua module `registry` (host->lua_module). Stack effects are noted [-pop, +push, e].
 * Operational failures return nil, message, code with code one of: not_found, unauthorized,
 * unreachable, invalid, corrupt, no_space, conflict (or "error" for the unexpected).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "import.h"
#include "ref.h"
#include "regplugin.h"

enum wkind { W_PULL, W_LOAD, W_GC, W_LOGIN };

struct rp_waiter {
	struct rp_waiter *next;
	enum wkind kind;
	mb_wait *w;
	struct rp_pull *pull; /* W_PULL */
	void *job;            /* W_LOAD / W_GC / W_LOGIN: the job; its waiter pointer is cleared
	                       * on cancel */
};

struct rp_load {
	struct rp_waiter *waiter;
	char *path;
	char os[32], arch[32], variant[32];
	struct mbr_import_result res;
	int rc;
	mb_err err;
	int pending;
	json_t *records;
	mb_err first_err;
	bool any_ok;
};

struct rp_build {
	struct rp_load *ld;
	size_t index;
};

struct gc_job {
	struct rp_waiter *waiter;
	mbr_strset blobs, disks;
	int64_t before;
	bool clean_tmp;
	struct mbr_gc_stats st;
	int rc;
	mb_err err;
};

struct login_job {
	struct login_job *next; /* in logins_running */
	struct rp_waiter *waiter;
	mbr_req *req; /* while verifying a login */
	char registry[300];
	struct mbr_cred cred;
	bool logout;
};

static bool gc_wanted;  /* a removal asked for a collection while pulls were running */
static bool gc_running; /* a collection is on a worker: new pulls and loads wait for it */

struct deferred {
	struct deferred *next;
	void (*fn)(void *arg);
	void *arg;
};
static struct deferred *after_gc;
static struct gc_job *current_gc;

static int defer_until_gc_done(void (*fn)(void *), void *arg)
{
	struct deferred *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->fn = fn;
	d->arg = arg;
	d->next = after_gc;
	after_gc = d;
	return 0;
}

static void run_deferred(void)
{
	struct deferred *d = after_gc;
	after_gc = NULL;
	while (d) {
		struct deferred *n = d->next;
		d->fn(d->arg);
		free(d);
		d = n;
	}
}
static struct login_job *logins_running; /* logins and logouts under way */

static int push_fail(lua_State *L, const mb_err *err)
{
	lua_pushnil(L);
	lua_pushstring(L, err->msg);
	lua_pushstring(L, mbr_err_code_name(err->code));
	return 3;
}

static int fail_code(lua_State *L, int code, const char *msg)
{
	mb_err err;
	mb_err_set(&err, code, "%s", msg);
	return push_fail(L, &err);
}

static void push_json(lua_State *L, const json_t *j)
{
	rp.host->lua_push_json(L, j);
}

static void background_gc(void);

/* ---- pull
 * ------------------------------------------------------------------------------------------- */

static void pull_progress(mbr_pull *p, void *arg)
{
	rp_emit("image.pull.progress", mbr_pull_progress_json(p));
}

static void finish_waiters(struct rp_pull *rpp, const json_t *rec, const mb_err *err)
{
	struct rp_waiter *w = rpp->waiters;
	rpp->waiters = NULL;
	while (w) {
		struct rp_waiter *next = w->next;
		lua_State *T = rp.host->wait_thread(w->w);
		if (rec) {
			push_json(T, rec);
			rp.host->wait_done(w->w, 1);
		} else {
			rp.host->wait_done(w->w, push_fail(T, err));
		}
		free(w);
		w = next;
	}
}

static void unlink_pull(struct rp_pull *rpp)
{
	for (struct rp_pull **pp = &rp.pulls; *pp; pp = &(*pp)->next)
		if (*pp == rpp) {
			*pp = rpp->next;
			return;
		}
}

static void pull_done(mbr_pull *p, const struct mbr_pull_result *res, const mb_err *err, void *arg)
{
	struct rp_pull *rpp = arg;
	mb_err e2 = { 0 };
	json_t *rec = NULL;
	if (res) {
		if (rdb_put_image(res, res->reference, res->repo_digest, &e2) == 0)
			rec = rdb_image(res->id);
		if (!rec && !e2.code)
			mb_err_set(&e2, -EIO, "image recorded but not readable");
		if (rec)
			rp_emit("image.pull.done",
			        json_pack("{s:s,s:s,s:s,s:b,s:s}", "reference", res->reference,
			                  "id", res->id, "disk", res->disk, "cached", res->cached,
			                  "scratch",
			                  res->cached        ? ""
			                  : res->ram_scratch ? "ram"
			                                     : "disk"));
	} else {
		e2 = *err;
	}
	if (!rec)
		rp_emit("image.pull.failed",
		        json_pack("{s:s,s:s,s:s}", "reference", rpp->ref, "code",
		                  mbr_err_code_name(e2.code), "message", e2.msg));
	finish_waiters(rpp, rec, &e2);
	json_decref(rec);
	unlink_pull(rpp);
	mbr_pull_free(p);
	free(rpp);
	rp.host->hold(rp.self, -1);
	if (!rp.pulls && !rp.loads && gc_wanted)
		background_gc();
}

static void waiter_cancel(void *ud)
{
	struct rp_waiter *w = ud;
	if (w->kind == W_PULL) {
		/* the pull goes on for other waiters (and is recorded when it finishes) */
		for (struct rp_waiter **pp = &w->pull->waiters; *pp; pp = &(*pp)->next)
			if (*pp == w) {
				*pp = w->next;
				break;
			}
	} else if (w->kind == W_LOAD) {
		((struct rp_load *)w->job)->waiter = NULL;
	} else if (w->kind == W_GC) {
		((struct gc_job *)w->job)->waiter = NULL;
	} else if (w->kind == W_LOGIN) {
		struct login_job *lj = w->job;
		lj->waiter = NULL;
	}
	free(w);
}

/* Suspend the calling task until the job (a load, gc, login or logout) finishes: *slot is
 * the job's waiter pointer, cleared by waiter_cancel if the task goes away first. */
static int job_wait(lua_State *L, enum wkind kind, void *job, struct rp_waiter **slot)
{
	struct rp_waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return luaL_error(L, "out of memory");
	w->kind = kind;
	w->job = job;
	*slot = w;
	w->w = rp.host->wait_begin(L, waiter_cancel, w);
	return rp.host->wait_yield(L, w->w, NULL, 0);
}

/* Credentials from opts.auth: a table {username,password} / {token} / {identitytoken}, or
 * an X-Registry-Auth string. Fills *c (caller clears) and returns 1 if found, 0 if absent,
 * -1 for an X-Registry-Auth string that does not decode. Raises on wrong types, before
 * anything is allocated. */
static int opts_auth(lua_State *L, int idx, struct mbr_cred *c)
{
	static const char *const keys[] = { "username", "password", "token", "identitytoken" };
	memset(c, 0, sizeof(*c));
	if (lua_isnoneornil(L, idx))
		return 0;
	lua_getfield(L, idx, "auth");
	int t = lua_type(L, -1);
	if (t == LUA_TTABLE) {
		for (int i = 0; i < 4; i++) {
			int kt = lua_getfield(L, -1, keys[i]);
			lua_pop(L, 1);
			if (kt != LUA_TNIL && kt != LUA_TSTRING)
				luaL_error(L, "registry: auth.%s must be a string", keys[i]);
		}
	} else if (t != LUA_TNIL && t != LUA_TSTRING) {
		luaL_error(L, "registry: opts.auth must be a table or an X-Registry-Auth string");
	}
	int found = 0;
	if (t == LUA_TSTRING) {
		mb_err err;
		if (mbr_cred_from_x_registry_auth(lua_tostring(L, -1), c, &err) < 0) {
			lua_pop(L, 1);
			return -1;
		}
		found = !mbr_cred_empty(c);
	} else if (t == LUA_TTABLE) {
		char **dst[] = { &c->username, &c->password, &c->token, &c->token };
		for (int i = 0; i < 4; i++) {
			if (lua_getfield(L, -1, keys[i]) == LUA_TSTRING && !*dst[i]) {
				*dst[i] = strdup(lua_tostring(L, -1));
				if (i == 2)
					c->token_is_registry = true;
			}
			lua_pop(L, 1);
		}
		found = !mbr_cred_empty(c);
	}
	lua_pop(L, 1);
	return found;
}

static const char *opt_string(lua_State *L, int idx, const char *k)
{
	if (lua_isnoneornil(L, idx))
		return NULL;
	lua_getfield(L, idx, k);
	const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
	lua_pop(L, 1); /* the string stays referenced by the options table */
	return s;
}

static bool opt_bool(lua_State *L, int idx, const char *k)
{
	if (lua_isnoneornil(L, idx))
		return false;
	lua_getfield(L, idx, k);
	bool b = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return b;
}

/* Raise unless the caller may wait here (a task, not inside db.transaction or a C
 * callback). Called before any per-wait state is allocated. */
static void need_task(lua_State *L, const char *fn)
{
	if (MB_HOST_HAS(rp.host, wait_check))
		rp.host->wait_check(L);
	else if (!lua_isyieldable(L))
		luaL_error(L, "registry.%s must be called from a task (it waits)", fn);
}

static int rpp_start(struct rp_pull *rpp, mb_err *err)
{
	struct mbr_pull_opts o = { .reference = rpp->input,
		                   .cred = &rpp->cred,
		                   .insecure = rpp->insecure,
		                   .platform = rpp->platform[0] ? rpp->platform : NULL };
	rpp->p = mbr_pull_start(rp.eng, &o, pull_progress, pull_done, rpp, err);
	mbr_cred_clear(&rpp->cred); /* the job has its own copy */
	return rpp->p ? 0 : (err && err->code ? err->code : -EIO);
}

static void rpp_deferred_start(void *arg)
{
	struct rp_pull *rpp = arg;
	mb_err err = { 0 };
	if (rpp_start(rpp, &err) < 0) {
		finish_waiters(rpp, NULL, &err);
		unlink_pull(rpp);
		free(rpp);
		rp.host->hold(rp.self, -1);
	}
}

/* registry.pull(ref [, {auth=, insecure=, platform=}]) -> record | nil, msg, code
 * [-1|2, +1|3, e]; yields until the pull is done. */
static int l_pull(lua_State *L)
{
	const char *ref = luaL_checkstring(L, 1);
	if (!lua_isnoneornil(L, 2))
		luaL_checktype(L, 2, LUA_TTABLE);
	need_task(L, "pull");
	mb_err err = { 0 };
	struct mbr_ref r;
	if (mbr_ref_parse(ref, &r, &err) < 0)
		return push_fail(L, &err);
	const char *platform = opt_string(L, 2, "platform");
	char os[32], arch[32], variant[32];
	if (mbr_platform_parse(platform, os, arch, variant, &err) < 0)
		return push_fail(L, &err);
	char key[600];
	mbr_ref_string(&r, key, sizeof(key));
	if (strlen(key) + strlen(os) + strlen(arch) + strlen(variant) + 4 < sizeof(key) &&
	    (platform && *platform))
		snprintf(key + strlen(key), sizeof(key) - strlen(key), " %s/%s/%s", os, arch,
		         variant);
	struct mbr_cred cred;
	int has = opts_auth(L, 2, &cred); /* may raise: before anything is allocated */
	if (has < 0)
		return fail_code(L, -EINVAL, "invalid X-Registry-Auth header");
	struct rp_pull *rpp = NULL;
	for (struct rp_pull *x = rp.pulls; x; x = x->next)
		if (!strcmp(x->ref, key))
			rpp = x;
	if (rpp) {
		mbr_cred_clear(&cred); /* joins the running pull */
	} else {
		rpp = calloc(1, sizeof(*rpp));
		if (!rpp) {
			mbr_cred_clear(&cred);
			return fail_code(L, -ENOMEM, "out of memory");
		}
		rpp->cred = cred; /* moved */
		if (!has)
			rp_cred_lookup(r.domain, &rpp->cred);
		snprintf(rpp->ref, sizeof(rpp->ref), "%s", key);
		snprintf(rpp->input, sizeof(rpp->input), "%s", ref);
		snprintf(rpp->platform, sizeof(rpp->platform), "%s", platform ? platform : "");
		rpp->insecure = opt_bool(L, 2, "insecure");
		if (gc_running) {
			if (defer_until_gc_done(rpp_deferred_start, rpp) < 0) {
				mbr_cred_clear(&rpp->cred);
				free(rpp);
				return fail_code(L, -ENOMEM, "out of memory");
			}
		} else if (rpp_start(rpp, &err) < 0) {
			mbr_cred_clear(&rpp->cred);
			free(rpp);
			return push_fail(L, &err);
		}
		rpp->next = rp.pulls;
		rp.pulls = rpp;
		rp.host->hold(rp.self, 1);
	}
	struct rp_waiter *w = calloc(1, sizeof(*w));
	if (!w)
		return luaL_error(L, "out of memory");
	w->kind = W_PULL;
	w->pull = rpp;
	w->next = rpp->waiters;
	rpp->waiters = w;
	w->w = rp.host->wait_begin(L, waiter_cancel, w);
	return rp.host->wait_yield(L, w->w, NULL, 0);
}

/* registry.progress(ref) -> progress table | nil   [-1, +1, e] */
static int l_progress(lua_State *L)
{
	const char *ref = luaL_checkstring(L, 1);
	struct mbr_ref r;
	char key[600];
	if (mbr_ref_parse(ref, &r, NULL) < 0) {
		lua_pushnil(L);
		return 1;
	}
	mbr_ref_string(&r, key, sizeof(key));
	for (struct rp_pull *x = rp.pulls; x; x = x->next)
		if (x->p && !strncmp(x->ref, key, strlen(key))) {
			json_t *j = mbr_pull_progress_json(x->p);
			push_json(L, j);
			json_decref(j);
			return 1;
		}
	lua_pushnil(L);
	return 1;
}

/* ---- records
 * ------------------------------------------------------------------------------------- */

/* registry.inspect(id_or_ref) -> record | nil, msg, code   [-1, +1|3, e] */
static int l_inspect(lua_State *L)
{
	const char *s = luaL_checkstring(L, 1);
	char id[MBR_DIGEST_LEN + 1];
	mb_err err = { 0 };
	if (rdb_resolve(s, id, NULL, 0, &err) < 0)
		return push_fail(L, &err);
	json_t *rec = rdb_image(id);
	if (!rec)
		return fail_code(L, -ENOENT, "no such image");
	push_json(L, rec);
	json_decref(rec);
	return 1;
}

/* registry.list() -> {record...}   [-0, +1, e] */
static int l_list(lua_State *L)
{
	json_t *a = rdb_list();
	push_json(L, a);
	json_decref(a);
	return 1;
}

/* registry.use(id_or_ref, holder) -> image id | nil, msg, code   [-2, +1|3, e] */
static int l_use(lua_State *L)
{
	const char *s = luaL_checkstring(L, 1);
	const char *holder = luaL_checkstring(L, 2);
	char id[MBR_DIGEST_LEN + 1];
	mb_err err = { 0 };
	if (rdb_resolve(s, id, NULL, 0, &err) < 0 || rdb_use(id, holder, &err) < 0)
		return push_fail(L, &err);
	lua_pushstring(L, id);
	return 1;
}

/* registry.release(id, holder) -> true | nil, msg, code   [-2, +1|3, e] */
static int l_release(lua_State *L)
{
	const char *s = luaL_checkstring(L, 1);
	const char *holder = luaL_checkstring(L, 2);
	char id[MBR_DIGEST_LEN + 1];
	mb_err err = { 0 };
	if (rdb_resolve(s, id, NULL, 0, &err) < 0 || rdb_release(id, holder, &err) < 0)
		return push_fail(L, &err);
	lua_pushboolean(L, 1);
	return 1;
}

/* registry.remove(id_or_ref [, {force=}]) -> {id, untagged={..}, deleted=bool}
 *   | nil, msg, code ("conflict" while in use)   [-1|2, +1|3, e] */
static int l_remove(lua_State *L)
{
	const char *s = luaL_checkstring(L, 1);
	bool force = opt_bool(L, 2, "force");
	char id[MBR_DIGEST_LEN + 1], ref[600];
	mb_err err = { 0 };
	if (rdb_resolve(s, id, ref, sizeof(ref), &err) < 0)
		return push_fail(L, &err);
	int holders = rdb_holders(id);
	int refs = rdb_ref_count(id);
	json_t *untagged = json_array();
	bool deleted = false;
	if (ref[0] && refs > 1) { /* untag one name; the image stays */
		if (rdb_untag(ref, &err) < 0) {
			json_decref(untagged);
			return push_fail(L, &err);
		}
		json_array_append_new(untagged, json_string(ref));
	} else {
		if (holders > 0) {
			json_decref(untagged);
			mb_err_set(&err, MBR_E_CONFLICT, "image %.19s is in use by %d container%s",
			           id, holders, holders == 1 ? "" : "s");
			return push_fail(L, &err);
		}
		if (!ref[0] && refs > 1 && !force) {
			json_decref(untagged);
			mb_err_set(&err, MBR_E_CONFLICT,
			           "image %.19s is referenced by %d names; remove them one by one "
			           "or use force",
			           id, refs);
			return push_fail(L, &err);
		}
		json_t *rec = rdb_image(id);
		json_t *names = json_object_get(rec, "references");
		size_t i;
		json_t *n;
		json_array_foreach(names, i, n)
		{
			json_array_append(untagged, n);
		}
		json_decref(rec);
		if (rdb_delete_image(id, &err) < 0) {
			json_decref(untagged);
			return push_fail(L, &err);
		}
		deleted = true;
	}
	json_t *out =
	    json_pack("{s:s,s:o,s:b}", "id", id, "untagged", untagged, "deleted", deleted);
	rp_emit("image.remove", json_deep_copy(out));
	push_json(L, out);
	json_decref(out);
	if (deleted)
		background_gc();
	return 1;
}

/* ---- gc
 * -------------------------------------------------------------------------------------------- */

static void gc_work(void *arg)
{
	struct gc_job *g = arg;
	g->rc = mbr_store_gc(rp.eng->store, &g->blobs, &g->disks, g->before, g->clean_tmp, &g->st,
	                     &g->err);
}

static void gc_done(void *arg)
{
	struct gc_job *g = arg;
	if (g->rc == 0 && (g->st.blobs_removed || g->st.disks_removed))
		rp_log(MB_LOG_INFO, "registry: gc removed %llu blobs, %llu disks (%llu bytes)",
		       (unsigned long long)g->st.blobs_removed,
		       (unsigned long long)g->st.disks_removed,
		       (unsigned long long)g->st.bytes_freed);
	if (g->waiter) {
		lua_State *T = rp.host->wait_thread(g->waiter->w);
		if (g->rc < 0) {
			rp.host->wait_done(g->waiter->w, push_fail(T, &g->err));
		} else {
			json_t *j = json_pack("{s:I,s:I,s:I,s:I}", "blobs_removed",
			                      (json_int_t)g->st.blobs_removed, "disks_removed",
			                      (json_int_t)g->st.disks_removed, "tmp_removed",
			                      (json_int_t)g->st.tmp_removed, "bytes_freed",
			                      (json_int_t)g->st.bytes_freed);
			push_json(T, j);
			json_decref(j);
			rp.host->wait_done(g->waiter->w, 1);
		}
		free(g->waiter);
	}
	mbr_strset_free(&g->blobs);
	mbr_strset_free(&g->disks);
	free(g);
	rp.host->hold(rp.self, -1);
	gc_running = false;
	current_gc = NULL;
	if (!rp.shutting_down)
		run_deferred();
}

static struct gc_job *gc_start(mb_err *err)
{
	struct gc_job *g = calloc(1, sizeof(*g));
	if (!g) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	if (rdb_live_sets(&g->blobs, &g->disks, err) < 0) {
		mbr_strset_free(&g->blobs);
		mbr_strset_free(&g->disks);
		free(g);
		return NULL;
	}
	g->before = 0; /* pulls and loads wait while the collection runs (gc_running) */
	g->clean_tmp = rp.eng->active == 0 && rp.loads == 0;
	if (rp.host->work(gc_work, gc_done, g, err) < 0) {
		mbr_strset_free(&g->blobs);
		mbr_strset_free(&g->disks);
		free(g);
		return NULL;
	}
	rp.host->hold(rp.self, 1);
	gc_wanted = false;
	gc_running = true;
	current_gc = g;
	return g;
}

static void background_gc(void)
{
	if (rp.shutting_down)
		return;
	if (rp.pulls || rp.loads || gc_running) {
		gc_wanted = true; /* after the running pulls */
		return;
	}
	mb_err err = { 0 };
	if (!gc_start(&err))
		rp_log(MB_LOG_WARN, "registry: gc: %s", err.msg);
}

/* registry.gc() -> {blobs_removed, disks_removed, tmp_removed, bytes_freed} | nil, msg, code
 * [-0, +1|3, e]; yields. Refused with "conflict" while pulls or loads run. */
static int l_gc(lua_State *L)
{
	need_task(L, "gc");
	mb_err err = { 0 };
	struct gc_job *g = NULL;
	if (gc_running && current_gc && !current_gc->waiter) {
		g = current_gc; /* a background collection is running: wait for it */
	} else {
		/* finished pulls whose scratch trees are still being removed (eng->active)
		 * do not count: their images are recorded, and tmp/ is then left alone */
		if (rp.pulls || rp.loads || gc_running)
			return fail_code(
			    L, MBR_E_CONFLICT,
			    "pulls, loads or a collection are running; try again later");
		g = gc_start(&err);
		if (!g)
			return push_fail(L, &err);
	}
	return job_wait(L, W_GC, g, &g->waiter);
}

/* ---- load
 * -------------------------------------------------------------------------------------------- */

static void load_finish(struct rp_load *ld)
{
	if (ld->waiter) {
		lua_State *T = rp.host->wait_thread(ld->waiter->w);
		if (ld->any_ok) {
			push_json(T, ld->records);
			rp.host->wait_done(ld->waiter->w, 1);
		} else {
			rp.host->wait_done(ld->waiter->w, push_fail(T, &ld->first_err));
		}
		free(ld->waiter);
	}
	mbr_import_result_free(&ld->res);
	json_decref(ld->records);
	free(ld->path);
	free(ld);
	rp.loads--;
	rp.host->hold(rp.self, -1);
	if (!rp.pulls && !rp.loads && gc_wanted)
		background_gc();
}

/* Names in archives: docker "repo:tag" (always with a repository); OCI ref.name may be only
 * a tag ("latest"), which names no repository and is skipped. */
static bool archive_ref(const char *name, char *out, size_t cap, bool oci)
{
	if (oci && !strchr(name, '/') && !strchr(name, ':') && !strchr(name, '.'))
		return false;
	struct mbr_ref r;
	if (mbr_ref_parse(name, &r, NULL) < 0 || r.digest[0])
		return false;
	return mbr_ref_string(&r, out, cap) > 0;
}

static void build_done(mbr_pull *p, const struct mbr_pull_result *res, const mb_err *err, void *arg)
{
	struct rp_build *b = arg;
	struct rp_load *ld = b->ld;
	struct mbr_import_image *img = &ld->res.images[b->index];
	mb_err e2 = { 0 };
	if (res) {
		int r = 0;
		size_t named = 0;
		for (size_t i = 0; i < img->nrefs && r == 0; i++) {
			char ref[600];
			if (!archive_ref(img->refs[i], ref, sizeof(ref),
			                 !strcmp(ld->res.format, "oci")))
				continue;
			r = rdb_put_image(res, ref, "", &e2);
			named++;
		}
		if (r == 0 && !named)
			r = rdb_put_image(res, "", "", &e2);
		json_t *rec = r == 0 ? rdb_image(res->id) : NULL;
		if (rec) {
			json_array_append_new(ld->records, rec);
			ld->any_ok = true;
			rp_emit("image.load",
			        json_pack("{s:s,s:s}", "id", res->id, "archive", ld->path));
		} else if (!ld->first_err.code) {
			ld->first_err = e2;
		}
	} else if (!ld->first_err.code) {
		ld->first_err = *err;
	}
	mbr_pull_free(p);
	free(b);
	if (--ld->pending == 0)
		load_finish(ld);
}

static void load_work(void *arg)
{
	struct rp_load *ld = arg;
	ld->rc = mbr_import_archive(rp.eng->store, ld->path, ld->os, ld->arch, ld->variant,
	                            &ld->res, &ld->err);
}

static void load_done(void *arg)
{
	struct rp_load *ld = arg;
	if (ld->rc < 0) {
		ld->first_err = ld->err;
		if (ld->rc == -ENOSPC)
			ld->first_err.code = MBR_E_NO_SPACE;
		load_finish(ld);
		return;
	}
	ld->pending = 1; /* held while starting */
	for (size_t i = 0; i < ld->res.n; i++) {
		struct rp_build *b = calloc(1, sizeof(*b));
		mb_err err = { 0 };
		if (!b)
			break;
		b->ld = ld;
		b->index = i;
		ld->pending++;
		mbr_pull *p = mbr_build_start(
		    rp.eng, ld->res.images[i].manifest, ld->res.images[i].manifest_len,
		    ld->res.images[i].manifest_digest, NULL, build_done, b, &err);
		if (!p) {
			ld->pending--;
			free(b);
			if (!ld->first_err.code)
				ld->first_err = err;
		}
	}
	if (--ld->pending == 0)
		load_finish(ld);
}

static void load_deferred_start(void *arg)
{
	struct rp_load *ld = arg;
	mb_err err = { 0 };
	if (rp.host->work(load_work, load_done, ld, &err) < 0) {
		ld->first_err = err;
		load_finish(ld);
	}
}

/* registry.load(path [, {platform=}]) -> {record...} | nil, msg, code   [-1|2, +1|3, e];
 * yields. Accepts docker save archives (.tar, .tar.gz) and OCI image-layout archives. */
static int l_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	if (!lua_isnoneornil(L, 2))
		luaL_checktype(L, 2, LUA_TTABLE);
	need_task(L, "load");
	mb_err err = { 0 };
	struct rp_load *ld = calloc(1, sizeof(*ld));
	if (!ld || !(ld->path = strdup(path)) || !(ld->records = json_array())) {
		if (ld)
			free(ld->path);
		free(ld);
		return fail_code(L, -ENOMEM, "out of memory");
	}
	if (mbr_platform_parse(opt_string(L, 2, "platform"), ld->os, ld->arch, ld->variant, &err) <
	    0) {
		json_decref(ld->records);
		free(ld->path);
		free(ld);
		return push_fail(L, &err);
	}
	if (gc_running ? defer_until_gc_done(load_deferred_start, ld)
	               : rp.host->work(load_work, load_done, ld, &err)) {
		json_decref(ld->records);
		free(ld->path);
		free(ld);
		if (!err.code)
			mb_err_set(&err, -ENOMEM, "out of memory");
		return push_fail(L, &err);
	}
	rp.loads++;
	rp.host->hold(rp.self, 1);
	return job_wait(L, W_LOAD, ld, &ld->waiter);
}

/* ---- credentials
 * ------------------------------------------------------------------------------------ */

static void login_free(struct login_job *lj)
{
	for (struct login_job **pp = &logins_running; *pp; pp = &(*pp)->next)
		if (*pp == lj) {
			*pp = lj->next;
			break;
		}
	mbr_cred_clear(&lj->cred);
	free(lj);
	rp.host->hold(rp.self, -1);
}

/* The end of a login or logout: the caller (if still waiting) gets true or the error. */
static void login_finish(struct login_job *lj, const mb_err *err)
{
	if (lj->waiter) {
		lua_State *T = rp.host->wait_thread(lj->waiter->w);
		if (err) {
			rp.host->wait_done(lj->waiter->w, push_fail(T, err));
		} else {
			lua_pushboolean(T, 1);
			rp.host->wait_done(lj->waiter->w, 1);
		}
		free(lj->waiter);
	}
	if (!err && lj->logout)
		rp_emit("registry.logout", json_pack("{s:s}", "registry", lj->registry));
	else if (!err)
		rp_emit("registry.login", json_pack("{s:s,s:s}", "registry", lj->registry,
		                                    "username", lj->cred.username));
	login_free(lj);
}

static void login_saved(void *arg, const mb_err *err)
{
	login_finish(arg, err);
}

static void login_done(mbr_req *r, const mb_err *e, void *arg)
{
	struct login_job *lj = arg;
	mb_err err = { 0 };
	if (e)
		err = *e; /* e may point into r */
	mbr_req_free(r);
	lj->req = NULL;
	if (e)
		login_finish(lj, &err);
	else if (rp_cred_store(lj->registry, lj->cred.username, lj->cred.password, login_saved, lj,
	                       &err) < 0)
		login_finish(lj, &err);
}

/* A job for login/logout, tracked for shutdown; NULL on OOM. */
static struct login_job *login_new(const char *key, bool logout)
{
	struct login_job *lj = calloc(1, sizeof(*lj));
	if (!lj)
		return NULL;
	snprintf(lj->registry, sizeof(lj->registry), "%s", key);
	lj->logout = logout;
	rp.host->hold(rp.self, 1);
	lj->next = logins_running;
	logins_running = lj;
	return lj;
}

/* registry.login(registry, username, password [, {verify=true, insecure=}]) -> true
 *   | nil, msg, code   [-3|4, +1|3, e]; yields while checking the credentials against the
 * registry (GET /v2/) and until they are stored (0600 under the state dir). They are never
 * returned by any call. */
static int l_login(lua_State *L)
{
	const char *reg = luaL_checkstring(L, 1);
	const char *user = luaL_checkstring(L, 2);
	const char *pass = luaL_checkstring(L, 3);
	if (!lua_isnoneornil(L, 4))
		luaL_checktype(L, 4, LUA_TTABLE);
	need_task(L, "login");
	mb_err err = { 0 };
	char key[300];
	if (mbr_registry_key(reg, key, sizeof(key)) < 0 || !*user)
		return fail_code(L, -EINVAL, "registry and username must not be empty");
	bool verify = true;
	if (!lua_isnoneornil(L, 4)) {
		lua_getfield(L, 4, "verify");
		if (!lua_isnil(L, -1))
			verify = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	struct login_job *lj = login_new(key, false);
	if (!lj)
		return fail_code(L, -ENOMEM, "out of memory");
	lj->cred.username = strdup(user);
	lj->cred.password = strdup(pass);
	if (!lj->cred.username || !lj->cred.password) {
		login_free(lj);
		return fail_code(L, -ENOMEM, "out of memory");
	}
	if (!verify) {
		if (rp_cred_store(key, user, pass, login_saved, lj, &err) < 0) {
			login_free(lj);
			return push_fail(L, &err);
		}
		return job_wait(L, W_LOGIN, lj, &lj->waiter);
	}
	struct mbr_ref r = { 0 };
	snprintf(r.domain, sizeof(r.domain), "%.255s", key);
	const char *host = mbr_ref_api_host(&r);
	char url[400];
	snprintf(url, sizeof(url), "%s://%s/v2/",
	         mbr_client_scheme(rp.eng->client, key, opt_bool(L, 4, "insecure")), host);
	struct mbr_req_opts o = { .url = url, .cred = &lj->cred, .host = host, .scope = "" };
	lj->req = mbr_req_start(rp.eng->client, &o, login_done, lj, &err);
	if (!lj->req) {
		login_free(lj);
		return push_fail(L, &err);
	}
	return job_wait(L, W_LOGIN, lj, &lj->waiter);
}

/* registry.logout(registry) -> true | nil, msg, code   [-1, +1|3, e]; yields until the
 * credentials are gone from the file too. */
static int l_logout(lua_State *L)
{
	const char *reg = luaL_checkstring(L, 1);
	need_task(L, "logout");
	mb_err err = { 0 };
	char key[300];
	if (mbr_registry_key(reg, key, sizeof(key)) < 0)
		return fail_code(L, -EINVAL, "invalid registry name");
	struct login_job *lj = login_new(key, true);
	if (!lj)
		return fail_code(L, -ENOMEM, "out of memory");
	if (rp_cred_forget(key, login_saved, lj, &err) < 0) {
		login_free(lj);
		return push_fail(L, &err);
	}
	return job_wait(L, W_LOGIN, lj, &lj->waiter);
}

/* registry.logins() -> {{registry=, username=}...}  (never passwords)   [-0, +1, e] */
static int l_logins(lua_State *L)
{
	json_t *a = rp_cred_list();
	push_json(L, a);
	json_decref(a);
	return 1;
}

/* ---- helpers
 * ------------------------------------------------------------------------------------------ */

/* registry.parse(ref) -> {registry, repository, tag, digest, reference, familiar, name}
 *   | nil, msg, "invalid"   [-1, +1|3, e] */
static int l_parse(lua_State *L)
{
	struct mbr_ref r;
	mb_err err = { 0 };
	if (mbr_ref_parse(luaL_checkstring(L, 1), &r, &err) < 0)
		return push_fail(L, &err);
	char full[600], fam[600], name[300];
	mbr_ref_string(&r, full, sizeof(full));
	mbr_ref_familiar(&r, fam, sizeof(fam));
	mbr_ref_name(&r, name, sizeof(name));
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "registry", r.domain, "repository",
	                      r.path, "tag", r.tag, "digest", r.digest, "reference", full,
	                      "familiar", fam, "name", name);
	push_json(L, j);
	json_decref(j);
	return 1;
}

/* registry.configure{insecure={"host:port",...}, parallel=n, allow_devices=b,
 *   mkfs_options="...", retries=n, scratch="auto"|"disk"|"/dir"} -> true   [-1, +1, e] */
static int l_configure(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_getfield(L, 1, "insecure");
	if (lua_istable(L, -1)) {
		mbr_strset_free(&rp.eng->client->insecure);
		lua_Integer n = luaL_len(L, -1);
		for (lua_Integer i = 1; i <= n; i++) {
			lua_geti(L, -1, i);
			char key[300];
			if (mbr_registry_key(luaL_checkstring(L, -1), key, sizeof(key)) == 0)
				mbr_strset_add(&rp.eng->client->insecure, key);
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	lua_getfield(L, 1, "parallel");
	if (!lua_isnil(L, -1)) {
		lua_Integer n = luaL_checkinteger(L, -1);
		rp.eng->parallel = n < 1 ? 1 : n > 16 ? 16 : (int)n;
	}
	lua_pop(L, 1);
	lua_getfield(L, 1, "retries");
	if (!lua_isnil(L, -1)) {
		lua_Integer n = luaL_checkinteger(L, -1);
		rp.eng->client->max_retries = n < 0 ? 0 : n > 10 ? 10 : (int)n;
	}
	lua_pop(L, 1);
	lua_getfield(L, 1, "allow_devices");
	if (!lua_isnil(L, -1))
		rp.eng->unpack.allow_devices = lua_toboolean(L, -1);
	lua_pop(L, 1);
	lua_getfield(L, 1, "scratch");
	if (!lua_isnil(L, -1)) {
		mb_err err = { 0 };
		if (mbr_engine_set_scratch(rp.eng, luaL_checkstring(L, -1), &err) < 0)
			return luaL_error(L, "registry.configure: %s", err.msg);
	}
	lua_pop(L, 1);
	lua_getfield(L, 1, "mkfs_options");
	if (!lua_isnil(L, -1))
		snprintf(rp.eng->mkfs_opts, sizeof(rp.eng->mkfs_opts), "%s",
		         luaL_checkstring(L, -1));
	lua_pop(L, 1);
	lua_pushboolean(L, 1);
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "pull", l_pull },       { "progress", l_progress },   { "inspect", l_inspect },
	{ "list", l_list },       { "remove", l_remove },       { "use", l_use },
	{ "release", l_release }, { "load", l_load },           { "gc", l_gc },
	{ "login", l_login },     { "logout", l_logout },       { "logins", l_logins },
	{ "parse", l_parse },     { "configure", l_configure }, { NULL, NULL },
};

int rp_lua_register(mb_err *err)
{
	return rp.host->lua_module(rp.self, "registry", funcs, err);
}

void rp_lua_shutdown(void)
{
	mb_err err;
	mb_err_set(&err, -ECANCELED, "the daemon is shutting down");
	while (rp.pulls) {
		struct rp_pull *rpp = rp.pulls;
		rp.pulls = rpp->next;
		finish_waiters(rpp, NULL, &err);
		if (rpp->p)
			mbr_pull_free(rpp->p);
		mbr_cred_clear(&rpp->cred);
		free(rpp);
	}
	/* deferred loads: finish them with the shutdown error */
	struct deferred *d = after_gc;
	after_gc = NULL;
	while (d) {
		struct deferred *n = d->next;
		if (d->fn == load_deferred_start) {
			struct rp_load *ld = d->arg;
			ld->first_err = err;
			load_finish(ld);
		}
		free(d);
		d = n;
	}
	while (logins_running) {
		struct login_job *lj = logins_running;
		logins_running = lj->next;
		if (lj->req)
			mbr_req_cancel(lj->req);
		if (lj->waiter) {
			lua_State *T = rp.host->wait_thread(lj->waiter->w);
			rp.host->wait_done(lj->waiter->w, push_fail(T, &err));
			free(lj->waiter);
		}
		mbr_cred_clear(&lj->cred);
		free(lj);
	}
	/* loads and gc jobs sit on worker threads: the host drains its pool before fini */
}
