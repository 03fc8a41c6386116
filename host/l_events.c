/*
 * Lua module `events`:
 *   events.emit(type, data)        -> id | nil, msg, code
 *   events.on(pattern, fn)         -> handler id; fn(ev) runs as its own task for every
 *                                     event whose type matches the glob pattern
 *   events.off(id)
 *   events.subscribe{pattern=, since=} -> sub;  sub:next([timeout_s]) -> ev | nil, msg, code
 *                                     ("timeout", "closed"); sub:close()
 *   events.list{since=, pattern=, limit=} -> { ev, ... }   (replay from the store)
 *   events.last_id()               -> id
 * An event is {id=, time=, type=, data=}. Handlers registered while scripts load belong
 * to that script generation and are replaced on reload.
 */
#include <fnmatch.h>

#include "bindings.h"
#include "events.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "store.h"
#include "task.h"

#define SUB_MT "moonbox.events.sub"

struct handler {
	int id;
	char *pattern;
	int ref;
};

struct hlist {
	struct handler *v;
	int n, cap;
};

struct sub {
	char *pattern;
	int64_t last;
	mb_wait *wait;
	mb_timer *timer;
	bool timed_out, closed, woken;
	struct sub *prev, *next; /* in the waiting list while waiting */
};

static struct {
	struct hlist cur, pending;
	int next_id;
	struct sub *waiting;
} EV;

static void hlist_add(struct hlist *l, struct handler h)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->v = xrealloc(l->v, (size_t)l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = h;
}

static void hlist_clear(lua_State *L, struct hlist *l)
{
	for (int i = 0; i < l->n; i++) {
		luaL_unref(L, LUA_REGISTRYINDEX, l->v[i].ref);
		free(l->v[i].pattern);
	}
	free(l->v);
	*l = (struct hlist){ 0 };
}

static void gen_begin_(lua_State *L)
{
	hlist_clear(L, &EV.pending);
}

static void gen_commit_(lua_State *L)
{
	hlist_clear(L, &EV.cur);
	EV.cur = EV.pending;
	EV.pending = (struct hlist){ 0 };
}

static void gen_abort_(lua_State *L)
{
	hlist_clear(L, &EV.pending);
}

static void gen_fini_(lua_State *L)
{
	hlist_clear(L, &EV.pending);
	hlist_clear(L, &EV.cur);
}

static const struct gen_ops ops = { gen_begin_, gen_commit_, gen_abort_, gen_fini_ };

/* [-0, +1, m] */
static void push_event(lua_State *L, int64_t id, double time, const char *type, const json_t *data)
{
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, id);
	lua_setfield(L, -2, "id");
	lua_pushnumber(L, time);
	lua_setfield(L, -2, "time");
	lua_pushstring(L, type);
	lua_setfield(L, -2, "type");
	if (data) {
		json_push(L, data);
		lua_setfield(L, -2, "data");
	}
}

static void on_handler_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	if (status != LUA_OK && status != TASK_CANCELLED)
		mb_log(MB_LOG_ERROR, "events", "handler %s failed: %s", task_name(t),
		       task_traceback(t));
}

static void sub_wake(struct sub *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		EV.waiting = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	loop_timer_stop(s->timer);
	s->timer = NULL;
	mb_wait *w = s->wait;
	s->wait = NULL;
	s->woken = true;
	rt_wait_done(w, 0);
}

static void on_event(int64_t id, double time, const char *type, const json_t *data, void *ud)
{
	lua_State *L = rt_state();
	for (int i = 0; i < EV.cur.n; i++) {
		if (fnmatch(EV.cur.v[i].pattern, type, 0) != 0)
			continue;
		lua_rawgeti(L, LUA_REGISTRYINDEX, EV.cur.v[i].ref);
		push_event(L, id, time, type, data);
		char name[160];
		snprintf(name, sizeof(name), "event %s", type);
		task_start(L, 1, name, false, on_handler_done, NULL);
	}
	struct sub *s = EV.waiting;
	while (s) {
		struct sub *next = s->next;
		if (fnmatch(s->pattern, type, 0) == 0)
			sub_wake(s);
		s = next;
	}
}

/* events.emit(type, data) -> id | nil, msg, code */
static int l_emit(lua_State *L)
{
	const char *type = luaL_checkstring(L, 1);
	json_t *data = NULL;
	mb_err err = { 0 };
	if (!lua_isnoneornil(L, 2)) {
		data = json_from_lua(L, 2, &err);
		if (!data)
			return luaL_error(L, "events.emit: data: %s", err.msg);
	}
	int64_t id = events_emit(type, data, &err);
	if (id < 0)
		return lua_fail(L, &err);
	lua_pushinteger(L, id);
	return 1;
}

/* events.on(pattern, fn) -> id */
static int l_on(lua_State *L)
{
	const char *pattern = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_pushvalue(L, 2);
	struct handler h = { .id = ++EV.next_id,
		             .pattern = xstrdup(pattern),
		             .ref = luaL_ref(L, LUA_REGISTRYINDEX) };
	hlist_add(gen_loading() ? &EV.pending : &EV.cur, h);
	lua_pushinteger(L, h.id);
	return 1;
}

/* events.off(id) -> boolean */
static int l_off(lua_State *L)
{
	lua_Integer id = luaL_checkinteger(L, 1);
	struct hlist *lists[] = { &EV.cur, &EV.pending };
	for (int k = 0; k < 2; k++) {
		struct hlist *l = lists[k];
		for (int i = 0; i < l->n; i++) {
			if (l->v[i].id != id)
				continue;
			luaL_unref(L, LUA_REGISTRYINDEX, l->v[i].ref);
			free(l->v[i].pattern);
			memmove(&l->v[i], &l->v[i + 1], (size_t)(l->n - i - 1) * sizeof(*l->v));
			l->n--;
			lua_pushboolean(L, 1);
			return 1;
		}
	}
	lua_pushboolean(L, 0);
	return 1;
}

/* Read the first stored event after `since` matching pattern; push it. 0 if none,
 * 1 if pushed, <0 on error (err filled). */
static int fetch_after(lua_State *L, const char *pattern, int64_t since, int64_t *id_out,
                       mb_err *err)
{
	sqlite3_stmt *st =
	    store_prepare("SELECT id, time, type, data FROM events WHERE id > ? AND type GLOB ? "
	                  "ORDER BY id LIMIT 1",
	                  err);
	if (!st)
		return err ? err->code : -EIO;
	sqlite3_bind_int64(st, 1, since);
	sqlite3_bind_text(st, 2, pattern, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return 0;
	}
	if (rc != SQLITE_ROW) {
		sqlite3_reset(st);
		return store_error(err, "events");
	}
	int64_t id = sqlite3_column_int64(st, 0);
	const char *data = (const char *)sqlite3_column_text(st, 3);
	json_t *j = NULL;
	if (data)
		j = json_loads(data, JSON_DECODE_ANY, NULL);
	push_event(L, id, sqlite3_column_double(st, 1), (const char *)sqlite3_column_text(st, 2),
	           j);
	json_decref(j);
	sqlite3_reset(st);
	*id_out = id;
	return 1;
}

/* events.list{since=0, pattern="*", limit=1000} -> { ev, ... } */
static int l_list(lua_State *L)
{
	int64_t since = 0;
	const char *pattern = "*";
	lua_Integer limit = 1000;
	if (lua_istable(L, 1)) {
		lua_getfield(L, 1, "since");
		since = luaL_optinteger(L, -1, 0);
		lua_getfield(L, 1, "pattern");
		pattern = luaL_optstring(L, -1, "*");
		lua_getfield(L, 1, "limit");
		limit = luaL_optinteger(L, -1, 1000);
		lua_pop(L, 3);
	}
	lua_newtable(L);
	int n = 0;
	mb_err err = { 0 };
	while (n < limit) {
		int64_t id;
		int r = fetch_after(L, pattern, since, &id, &err);
		if (r < 0)
			return lua_fail(L, &err);
		if (r == 0)
			break;
		lua_rawseti(L, -2, ++n);
		since = id;
	}
	json_push_array_mt(L);
	lua_setmetatable(L, -2);
	return 1;
}

static int l_last_id(lua_State *L)
{
	lua_pushinteger(L, events_last_id());
	return 1;
}

/* --- subscriptions --- */

static int l_subscribe(lua_State *L)
{
	const char *pattern = "*";
	int64_t since = -1;
	if (lua_istable(L, 1)) {
		lua_getfield(L, 1, "pattern");
		pattern = luaL_optstring(L, -1, "*");
		lua_getfield(L, 1, "since");
		since = luaL_optinteger(L, -1, -1);
		lua_pop(L, 2);
	}
	struct sub *s = lua_newuserdatauv(L, sizeof(*s), 0);
	memset(s, 0, sizeof(*s));
	s->pattern = xstrdup(pattern);
	s->last = since >= 0 ? since : events_last_id();
	luaL_setmetatable(L, SUB_MT);
	return 1;
}

static void sub_cancel(void *ud)
{
	struct sub *s = ud;
	if (s->prev)
		s->prev->next = s->next;
	else if (EV.waiting == s)
		EV.waiting = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	loop_timer_stop(s->timer);
	s->timer = NULL;
	s->wait = NULL;
}

static void sub_timeout(void *ud)
{
	struct sub *s = ud;
	s->timer = NULL;
	s->timed_out = true;
	sub_wake(s);
}

static int sub_next_k(lua_State *L, int status, lua_KContext ctx);

static int sub_next_try(lua_State *L, struct sub *s, double timeout)
{
	mb_err err = { 0 };
	int64_t id;
	if (s->closed)
		return lua_failf(L, -EPIPE, "subscription closed");
	int r = fetch_after(L, s->pattern, s->last, &id, &err);
	if (r < 0)
		return lua_fail(L, &err);
	if (r == 1) {
		s->last = id;
		return 1;
	}
	if (s->timed_out || timeout == 0) {
		s->timed_out = false;
		return lua_failf(L, -ETIMEDOUT, "timeout");
	}
	s->wait = rt_wait_begin(L, sub_cancel, s);
	s->next = EV.waiting;
	if (EV.waiting)
		EV.waiting->prev = s;
	EV.waiting = s;
	if (timeout > 0)
		s->timer = loop_timer((uint64_t)(timeout * 1000), sub_timeout, s);
	return rt_wait_yield(L, s->wait, sub_next_k, 0);
}

static int sub_next_k(lua_State *L, int status, lua_KContext ctx)
{
	struct sub *s = luaL_checkudata(L, 1, SUB_MT);
	lua_settop(L, 2);
	return sub_next_try(L, s, luaL_optnumber(L, 2, -1));
}

/* sub:next([timeout_s]) -> ev | nil, "timeout", "timeout" */
static int sub_next(lua_State *L)
{
	struct sub *s = luaL_checkudata(L, 1, SUB_MT);
	double timeout = luaL_optnumber(L, 2, -1);
	lua_settop(L, 2);
	if (s->wait)
		return luaL_error(L, "subscription is already being waited on");
	s->timed_out = false;
	return sub_next_try(L, s, timeout);
}

static int sub_close(lua_State *L)
{
	struct sub *s = luaL_checkudata(L, 1, SUB_MT);
	s->closed = true;
	if (s->wait)
		sub_wake(s); /* the waiter sees "closed" */
	return 0;
}

static int sub_gc(lua_State *L)
{
	struct sub *s = luaL_checkudata(L, 1, SUB_MT);
	/* A sub being waited on is referenced by the waiting task's stack, so it cannot be
	 * collected while s->wait is set. */
	free(s->pattern);
	s->pattern = NULL;
	return 0;
}

static const luaL_Reg sub_methods[] = {
	{ "next", sub_next },     { "close", sub_close }, { "__gc", sub_gc },
	{ "__close", sub_close }, { NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "emit", l_emit }, { "on", l_on },           { "off", l_off },
	{ "list", l_list }, { "last_id", l_last_id }, { "subscribe", l_subscribe },
	{ NULL, NULL },
};

int luaopen_mb_events(lua_State *L)
{
	static bool once;
	if (!once) {
		once = true;
		gen_register(&ops);
		events_listen(on_event, NULL);
	}
	luaL_newmetatable(L, SUB_MT);
	luaL_setfuncs(L, sub_methods, 0);
	lua_pushvalue(L, -1);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
