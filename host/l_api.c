/*
 * Lua module `api`: HTTP endpoints are declared from Lua.
 *
 *   api.route(method, pattern, fn [, {body="file"}])
 *                                      pattern: "/v1/containers/{id}", "{rest*}" = tail;
 *                                      body="file": the upload is streamed to a temp file
 *                                      (req.body_path, removed after the request) instead
 *                                      of memory, with a much larger size limit
 *   api.error(status, code, message [, extra])   raise an HTTP error (extra: more fields)
 *   api.fail(message, code [, extra])  raise with the status that fits code
 *                                      (not_found 404, conflict 409, invalid 400, ...)
 *   api.check(v, msg, code, ...)       v, ... if v, else api.fail(msg, code)
 *   api.status_for(code)               the HTTP status for an error code
 *   api.routes()                       { {method=, pattern=}, ... }
 *
 * A handler gets a request object and returns `[status,] body [, headers]`; a table
 * body is JSON, a string is sent as is; nothing at all means 204.
 *   req.method, req.path, req.params, req.query, req.headers (lower-case names),
 *   req.body, req.body_path, req.body_size, req.id, req.remote
 *   req:json()                         decoded body; raises 400 on bad JSON
 *   req:query_all(name)                every value of a repeated query parameter
 *   req:stream([status [, headers]])   -> stream   chunked response
 *   req:sse([headers])                 -> stream   text/event-stream
 *     stream:write(s) / stream:send{event=, id=, data=} / stream:comment(s)
 *       -> true | nil, "closed", "closed"  (waits while the client is slow)
 *     stream:close()
 *   req:websocket([{protocol=}])       -> ws (raises 400 if not a WebSocket handshake)
 *     ws:recv([timeout]) -> data, "text"|"binary" | nil, msg, "closed"|"timeout"
 *     ws:send(data [, "binary"]) -> true | nil, "closed", "closed"
 *     ws:close([code [, reason]]), ws:is_closed()
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <sys/socket.h>
#include <string.h>

#include "bindings.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "loop.h"
#include "task.h"
#include "ws.h"

#define REQ_MT    "moonbox.request"
#define STREAM_MT "moonbox.stream"
#define ERR_MT    "moonbox.api.error"

bool http_serve_static(struct hreq *r);

/* --- routes --- */

struct seg {
	char *lit;   /* literal, or NULL for a parameter */
	char *param; /* parameter name */
	bool tail;   /* {name*}: the rest of the path */
};

struct route {
	char *method, *pattern;
	struct seg *segs;
	int nsegs;
	int ref;
	int score;
	bool body_file; /* {body = "file"}: the request body goes to req.body_path */
};

struct rtable {
	struct route *v;
	int n, cap;
};

static struct rtable cur, pending_routes;

static void route_free(lua_State *L, struct route *r)
{
	for (int i = 0; i < r->nsegs; i++) {
		free(r->segs[i].lit);
		free(r->segs[i].param);
	}
	free(r->segs);
	free(r->method);
	free(r->pattern);
	luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
}

static void rtable_clear(lua_State *L, struct rtable *t)
{
	for (int i = 0; i < t->n; i++)
		route_free(L, &t->v[i]);
	free(t->v);
	*t = (struct rtable){ 0 };
}

static void g_begin(lua_State *L)
{
	rtable_clear(L, &pending_routes);
}

static void g_commit(lua_State *L)
{
	rtable_clear(L, &cur);
	cur = pending_routes;
	pending_routes = (struct rtable){ 0 };
}

static void g_abort(lua_State *L)
{
	rtable_clear(L, &pending_routes);
}

static void g_fini(lua_State *L)
{
	rtable_clear(L, &pending_routes);
	rtable_clear(L, &cur);
}

static const struct gen_ops ops = { g_begin, g_commit, g_abort, g_fini };

/* Split a pattern into segments; raises on a malformed pattern. */
static void parse_pattern(lua_State *L, const char *pattern, struct route *r)
{
	if (pattern[0] != '/')
		luaL_error(L, "api.route: pattern must start with '/': %s", pattern);
	char *copy = xstrdup(pattern);
	char *save = NULL;
	for (char *s = strtok_r(copy, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
		r->segs = xrealloc(r->segs, (size_t)(r->nsegs + 1) * sizeof(*r->segs));
		struct seg *g = &r->segs[r->nsegs++];
		memset(g, 0, sizeof(*g));
		size_t n = strlen(s);
		if (s[0] == '{' && n > 2 && s[n - 1] == '}') {
			g->tail = n > 3 && s[n - 2] == '*';
			g->param = xstrndup(s + 1, n - 2 - (g->tail ? 1 : 0));
			r->score += 1;
		} else if (strchr(s, '{') || strchr(s, '}')) {
			free(copy);
			luaL_error(L, "api.route: bad segment '%s' in %s", s, pattern);
		} else {
			g->lit = xstrdup(s);
			r->score += 4;
		}
	}
	free(copy);
	for (int i = 0; i + 1 < r->nsegs; i++)
		if (r->segs[i].tail)
			luaL_error(L, "api.route: a {name*} segment must be last: %s", pattern);
}

static int l_route(lua_State *L)
{
	const char *method = luaL_checkstring(L, 1);
	const char *pattern = luaL_checkstring(L, 2);
	luaL_checktype(L, 3, LUA_TFUNCTION);
	for (const char *p = method; *p; p++)
		if (*p < 'A' || *p > 'Z')
			return luaL_argerror(L, 1, "method must be upper-case, e.g. \"GET\"");
	struct route r = { 0 };
	if (lua_istable(L, 4)) {
		lua_getfield(L, 4, "body");
		const char *b = lua_tostring(L, -1);
		if (b && strcmp(b, "file") == 0)
			r.body_file = true;
		else if (b && strcmp(b, "memory") != 0)
			return luaL_argerror(L, 4, "body must be \"memory\" or \"file\"");
		lua_pop(L, 1);
	}
	parse_pattern(L, pattern, &r);
	r.method = xstrdup(method);
	r.pattern = xstrdup(pattern);
	lua_pushvalue(L, 3);
	r.ref = luaL_ref(L, LUA_REGISTRYINDEX);
	struct rtable *t = gen_loading() ? &pending_routes : &cur;
	for (int i = 0; i < t->n; i++) {
		if (strcmp(t->v[i].method, method) == 0 && strcmp(t->v[i].pattern, pattern) == 0) {
			route_free(L, &t->v[i]);
			t->v[i] = r; /* a later script overrides an earlier one */
			return 0;
		}
	}
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 64;
		t->v = xrealloc(t->v, (size_t)t->cap * sizeof(*t->v));
	}
	t->v[t->n++] = r;
	return 0;
}

static int l_routes(lua_State *L)
{
	lua_createtable(L, cur.n, 0);
	for (int i = 0; i < cur.n; i++) {
		lua_createtable(L, 0, 2);
		lua_pushstring(L, cur.v[i].method);
		lua_setfield(L, -2, "method");
		lua_pushstring(L, cur.v[i].pattern);
		lua_setfield(L, -2, "pattern");
		lua_rawseti(L, -2, i + 1);
	}
	return 1;
}

#define MAX_SEGS 64

static bool route_matches(const struct route *r, char **segs, int n)
{
	bool tail = r->nsegs && r->segs[r->nsegs - 1].tail;
	if (tail ? n < r->nsegs : n != r->nsegs)
		return false;
	for (int k = 0; k < r->nsegs && !r->segs[k].tail; k++)
		if (r->segs[k].lit && strcmp(r->segs[k].lit, segs[k]) != 0)
			return false;
	return true;
}

/* Push the params table of route r for the split path. */
static void push_params(lua_State *L, const struct route *r, char **segs, int n)
{
	lua_createtable(L, 0, r->nsegs);
	for (int k = 0; k < r->nsegs; k++) {
		const struct seg *g = &r->segs[k];
		if (g->lit)
			continue;
		if (g->tail) {
			buf b = { 0 };
			for (int j = k; j < n; j++) {
				if (j > k)
					buf_append(&b, "/", 1);
				buf_append(&b, segs[j], strlen(segs[j]));
			}
			lua_pushlstring(L, b.data ? b.data : "", b.len);
			buf_free(&b);
		} else {
			lua_pushstring(L, segs[k]);
		}
		lua_setfield(L, -2, g->param);
	}
}

/* The best route for method and path (HEAD falls back to GET), pushing its params
 * table; NULL if none. allow collects the methods of routes matching the path. */
static struct route *match(lua_State *L, const char *method, const char *path, buf *allow)
{
	char *copy = xstrdup(path);
	char *segs[MAX_SEGS];
	int n = 0;
	char *save = NULL;
	for (char *s = strtok_r(copy, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
		if (n == MAX_SEGS) {
			free(copy);
			return NULL;
		}
		segs[n++] = s;
	}
	struct route *best = NULL, *best_get = NULL;
	for (int i = 0; i < cur.n; i++) {
		struct route *r = &cur.v[i];
		if (!route_matches(r, segs, n))
			continue;
		if (strcmp(r->method, method) == 0) {
			if (!best || r->score >= best->score)
				best = r;
		} else if (strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0) {
			if (!best_get || r->score >= best_get->score)
				best_get = r;
		} else if (!allow->data || !strstr(allow->data, r->method)) {
			if (allow->len)
				buf_append(allow, ", ", 2);
			buf_append(allow, r->method, strlen(r->method));
		}
	}
	if (!best)
		best = best_get;
	if (best)
		push_params(L, best, segs, n);
	free(copy);
	return best;
}

/* --- errors --- */

static int status_for(const char *code)
{
	static const struct {
		const char *code;
		int status;
	} map[] = {
		{ "not_found", 404 },   { "conflict", 409 },      { "invalid", 400 },
		{ "denied", 403 },      { "unauthorized", 401 },  { "timeout", 504 },
		{ "too_large", 413 },   { "unreachable", 502 },   { "busy", 503 },
		{ "unsupported", 501 }, { "cancelled", 503 },     { "no_space", 507 },
		{ "corrupt", 422 },     { "unprocessable", 422 }, { "closed", 499 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(map); i++)
		if (code && strcmp(map[i].code, code) == 0)
			return map[i].status;
	return 500;
}

static int err_tostring(lua_State *L)
{
	lua_getfield(L, 1, "status");
	lua_getfield(L, 1, "code");
	lua_getfield(L, 1, "message");
	lua_pushfstring(L, "HTTP %s %s: %s", luaL_tolstring(L, 2, NULL), lua_tostring(L, 3),
	                lua_tostring(L, 4));
	return 1;
}

/* [-0, +0, v] raise {status, code, message, extra...} */
static int raise_error(lua_State *L, int status, const char *code, const char *message, int extra)
{
	lua_createtable(L, 0, 4);
	if (extra && lua_istable(L, extra)) {
		lua_pushnil(L);
		while (lua_next(L, extra)) {
			lua_pushvalue(L, -2);
			lua_insert(L, -2);
			lua_rawset(L, -4);
		}
	}
	lua_pushinteger(L, status);
	lua_setfield(L, -2, "status");
	lua_pushstring(L, code);
	lua_setfield(L, -2, "code");
	lua_pushstring(L, message);
	lua_setfield(L, -2, "message");
	luaL_setmetatable(L, ERR_MT);
	return lua_error(L);
}

static int l_error(lua_State *L)
{
	lua_Integer status = luaL_checkinteger(L, 1);
	const char *code = luaL_checkstring(L, 2);
	const char *message = luaL_optstring(L, 3, code);
	if (status < 400 || status > 599)
		return luaL_argerror(L, 1, "status must be 400..599");
	return raise_error(L, (int)status, code, message, lua_istable(L, 4) ? 4 : 0);
}

static int l_fail(lua_State *L)
{
	const char *message = luaL_checkstring(L, 1);
	const char *code = luaL_optstring(L, 2, "internal");
	return raise_error(L, status_for(code), code, message, lua_istable(L, 3) ? 3 : 0);
}

static int l_check(lua_State *L)
{
	if (lua_toboolean(L, 1))
		return lua_gettop(L);
	const char *message = luaL_optstring(L, 2, "operation failed");
	const char *code = luaL_optstring(L, 3, "internal");
	return raise_error(L, status_for(code), code, message, 0);
}

static int l_status_for(lua_State *L)
{
	lua_pushinteger(L, status_for(luaL_checkstring(L, 1)));
	return 1;
}

/* --- request objects --- */

struct lreq {
	struct hreq *r; /* NULL once the request is gone */
	bool streamed;
};

static struct lreq *check_req(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, REQ_MT);
}

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
	lua_State *L = cls;
	if (kind == MHD_HEADER_KIND) {
		char lower[256];
		size_t i;
		for (i = 0; key[i] && i < sizeof(lower) - 1; i++)
			lower[i] = (char)((key[i] >= 'A' && key[i] <= 'Z') ? key[i] + 32 : key[i]);
		lower[i] = '\0';
		lua_pushstring(L, lower);
	} else {
		lua_pushstring(L, key);
	}
	lua_pushstring(L, value ? value : "");
	lua_rawset(L, -3);
	return MHD_YES;
}

/* uservalues: 1 params, 2 query, 3 headers, 4 body */
static void push_lazy(lua_State *L, int idx, int uv, enum MHD_ValueKind kind)
{
	if (lua_getiuservalue(L, idx, uv) == LUA_TTABLE)
		return;
	lua_pop(L, 1);
	struct lreq *q = lua_touserdata(L, idx);
	lua_newtable(L);
	if (q->r && q->r->conn)
		MHD_get_connection_values(q->r->conn, kind, collect, L);
	lua_pushvalue(L, -1);
	lua_setiuservalue(L, idx, uv);
}

static int req_index(lua_State *L)
{
	struct lreq *q = check_req(L, 1);
	const char *k = luaL_checkstring(L, 2);
	struct hreq *r = q->r;
	if (strcmp(k, "params") == 0) {
		lua_getiuservalue(L, 1, 1);
	} else if (strcmp(k, "query") == 0) {
		push_lazy(L, 1, 2, MHD_GET_ARGUMENT_KIND);
	} else if (strcmp(k, "headers") == 0) {
		push_lazy(L, 1, 3, MHD_HEADER_KIND);
	} else if (strcmp(k, "body") == 0) {
		if (lua_getiuservalue(L, 1, 4) != LUA_TSTRING) {
			lua_pop(L, 1);
			if (r)
				lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
			else
				lua_pushliteral(L, "");
			lua_pushvalue(L, -1);
			lua_setiuservalue(L, 1, 4);
		}
	} else if (strcmp(k, "body_path") == 0) {
		if (r && r->body_path)
			lua_pushstring(L, r->body_path);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "body_size") == 0) {
		lua_pushinteger(L,
		                r ? (lua_Integer)(r->body_path ? r->body_bytes : r->body.len) : 0);
	} else if (strcmp(k, "method") == 0) {
		if (r)
			lua_pushstring(L, r->method);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "path") == 0) {
		if (r)
			lua_pushstring(L, r->path);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "id") == 0) {
		if (r)
			lua_pushinteger(L, (lua_Integer)r->id);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "remote") == 0) {
		const char *who = "gone";
		char host[64];
		if (r && r->conn) {
			const union MHD_ConnectionInfo *ci =
			    MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
			const struct sockaddr *sa = ci ? ci->client_addr : NULL;
			who = "unix";
			if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
			    getnameinfo(sa,
			                sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
			                                          : sizeof(struct sockaddr_in),
			                host, sizeof(host), NULL, 0, NI_NUMERICHOST) == 0)
				who = host;
		}
		lua_pushstring(L, who);
	} else {
		luaL_getmetatable(L, REQ_MT);
		lua_getfield(L, -1, "methods");
		lua_getfield(L, -1, k);
	}
	return 1;
}

struct qall {
	lua_State *L;
	const char *name;
	int n;
};

static enum MHD_Result collect_all(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	struct qall *q = cls;
	if (key && strcmp(key, q->name) == 0) {
		lua_pushstring(q->L, value ? value : "");
		lua_rawseti(q->L, -2, ++q->n);
	}
	return MHD_YES;
}

/* req:query_all(name) -> every value of a repeated query parameter, in order */
static int req_query_all(lua_State *L)
{
	struct lreq *q = check_req(L, 1);
	struct qall a = { L, luaL_checkstring(L, 2), 0 };
	lua_newtable(L);
	if (q->r && q->r->conn)
		MHD_get_connection_values(q->r->conn, MHD_GET_ARGUMENT_KIND, collect_all, &a);
	return 1;
}

static int req_json(lua_State *L)
{
	check_req(L, 1);
	lua_getfield(L, 1, "body");
	size_t len;
	const char *s = lua_tolstring(L, -1, &len);
	if (!s || len == 0)
		return raise_error(L, 400, "invalid", "a JSON request body is required", 0);
	mb_err err = { 0 };
	if (json_decode_push(L, s, len, &err) < 0)
		return raise_error(L, 400, "invalid_json", err.msg, 0);
	return 1;
}

static void set_headers_from(lua_State *L, struct hreq *r, int idx)
{
	if (!idx || !lua_istable(L, idx))
		return;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1))
			hreq_add_header(r, lua_tostring(L, -2), lua_tostring(L, -1));
		lua_pop(L, 1);
	}
}

/* --- streams --- */

struct lstream {
	struct hreq *r; /* holds a ref while open */
	bool sse, closed;
};

static bool has_content_type(lua_State *L, int headers)
{
	bool found = false;
	if (!headers || !lua_istable(L, headers))
		return false;
	lua_pushnil(L);
	while (lua_next(L, headers)) {
		if (lua_type(L, -2) == LUA_TSTRING &&
		    strcasecmp(lua_tostring(L, -2), "content-type") == 0)
			found = true;
		lua_pop(L, 1);
	}
	return found;
}

static int push_stream(lua_State *L, struct lreq *q, int status, int headers, bool sse)
{
	struct hreq *r = q->r;
	if (!r || !r->conn)
		return lua_failf(L, -EPIPE, "client gone");
	if (q->streamed || r->state != H_RUNNING)
		return luaL_error(L, "req:stream(): a response was already started for this "
		                     "request");
	q->streamed = true;
	r->status = status;
	if (sse) {
		hreq_add_header(r, "Content-Type", "text/event-stream");
		hreq_add_header(r, "Cache-Control", "no-cache");
		hreq_add_header(r, "X-Accel-Buffering", "no");
	} else if (!has_content_type(L, headers)) {
		hreq_add_header(r, "Content-Type", "application/octet-stream");
	}
	set_headers_from(L, r, headers);
	struct lstream *s = lua_newuserdatauv(L, sizeof(*s), 0);
	s->r = r;
	s->sse = sse;
	s->closed = false;
	hreq_ref(r);
	luaL_setmetatable(L, STREAM_MT);
	hreq_stream_begin(r);
	return 1;
}

static int req_stream(lua_State *L)
{
	struct lreq *q = check_req(L, 1);
	int status = (int)luaL_optinteger(L, 2, 200);
	return push_stream(L, q, status, lua_istable(L, 3) ? 3 : 0, false);
}

static int req_sse(lua_State *L)
{
	struct lreq *q = check_req(L, 1);
	return push_stream(L, q, 200, lua_istable(L, 2) ? 2 : 0, true);
}

static void stream_release(struct lstream *s)
{
	if (s->r) {
		if (!s->closed)
			hreq_stream_close(s->r);
		hreq_unref(s->r);
		s->r = NULL;
	}
	s->closed = true;
}

static void drain_cancel(void *ud)
{
	struct hreq *r = ud;
	r->drain_wait = NULL;
}

void api_stream_drained(struct hreq *r, bool closed)
{
	mb_wait *w = r->drain_wait;
	if (!w)
		return;
	r->drain_wait = NULL;
	lua_State *T = rt_wait_thread(w);
	if (closed) {
		lua_pushnil(T);
		lua_pushliteral(T, "closed");
		lua_pushliteral(T, "closed");
		rt_wait_done(w, 3);
	} else {
		lua_pushboolean(T, 1);
		rt_wait_done(w, 1);
	}
}

static int stream_put(lua_State *L, struct lstream *s, const char *data, size_t len)
{
	if (s->closed || !s->r || hreq_stream_dead(s->r))
		return lua_failf(L, -EPIPE, "closed");
	size_t queued = hreq_stream_write(s->r, data, len);
	if (queued <= STREAM_HIGH_WATER) {
		lua_pushboolean(L, 1);
		return 1;
	}
	/* The client is slower than we produce: wait until it has read enough. */
	s->r->drain_wait = rt_wait_begin(L, drain_cancel, s->r);
	return rt_wait_yield(L, s->r->drain_wait, NULL, 0);
}

static int stream_write(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	return stream_put(L, s, data, len);
}

/* SSE: data may be a string or a table (JSON); multi-line data becomes several lines */
static int stream_send(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	luaL_checktype(L, 2, LUA_TTABLE);
	buf b = { 0 };
	if (lua_getfield(L, 2, "event") == LUA_TSTRING)
		buf_appendf(&b, "event: %s\n", lua_tostring(L, -1));
	if (lua_getfield(L, 2, "id") != LUA_TNIL)
		buf_appendf(&b, "id: %s\n", luaL_tolstring(L, -1, NULL)), lua_pop(L, 1);
	if (lua_getfield(L, 2, "retry") == LUA_TNUMBER)
		buf_appendf(&b, "retry: %lld\n", (long long)lua_tointeger(L, -1));
	int t = lua_getfield(L, 2, "data");
	char *owned = NULL;
	const char *data = NULL;
	if (t == LUA_TSTRING) {
		data = lua_tostring(L, -1);
	} else if (t != LUA_TNIL) {
		mb_err err = { 0 };
		owned = json_encode_lua(L, -1, 0, NULL, &err);
		if (!owned) {
			buf_free(&b);
			return luaL_error(L, "stream:send: data: %s", err.msg);
		}
		data = owned;
	}
	if (data) {
		const char *p = data;
		for (;;) {
			const char *nl = strchr(p, '\n');
			size_t n = nl ? (size_t)(nl - p) : strlen(p);
			buf_append(&b, "data: ", 6);
			buf_append(&b, p, n);
			buf_append(&b, "\n", 1);
			if (!nl)
				break;
			p = nl + 1;
		}
	}
	free(owned);
	buf_append(&b, "\n", 1);
	lua_settop(L, 2);
	int r = stream_put(L, s, b.data, b.len);
	buf_free(&b);
	return r;
}

static int stream_comment(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	const char *text = luaL_optstring(L, 2, "");
	char *line = xasprintf(": %s\n\n", text);
	int r = stream_put(L, s, line, strlen(line));
	free(line);
	return r;
}

static int stream_close(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	stream_release(s);
	return 0;
}

static int stream_is_closed(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	lua_pushboolean(L, s->closed || !s->r || hreq_stream_dead(s->r));
	return 1;
}

/* --- websockets --- */

static void upgrade_cancel(void *ud)
{
	struct hreq *r = ud;
	r->upgrade_wait = NULL;
}

void api_upgraded(struct hreq *r, struct ws *ws)
{
	mb_wait *w = r->upgrade_wait;
	if (!w) { /* the handler is gone: nobody will use this socket */
		ws_free(ws);
		return;
	}
	r->upgrade_wait = NULL;
	ws_push(rt_wait_thread(w), ws);
	rt_wait_done(w, 1);
}

static const char *header_value(lua_State *L, int headers, const char *name)
{
	lua_getfield(L, headers, name);
	const char *v = lua_tostring(L, -1);
	lua_pop(L, 1); /* the string stays alive in the table */
	return v;
}

static bool has_token(const char *list, const char *token)
{
	if (!list)
		return false;
	size_t tl = strlen(token);
	for (const char *p = list; *p;) {
		while (*p == ' ' || *p == ',')
			p++;
		const char *e = p;
		while (*e && *e != ',')
			e++;
		const char *end = e;
		while (end > p && end[-1] == ' ')
			end--;
		if ((size_t)(end - p) == tl && strncasecmp(p, token, tl) == 0)
			return true;
		p = e;
	}
	return false;
}

static int req_websocket(lua_State *L)
{
	struct lreq *q = check_req(L, 1);
	struct hreq *r = q->r;
	if (!r || !r->conn)
		return lua_failf(L, -EPIPE, "client gone");
	if (q->streamed || r->state != H_RUNNING)
		return luaL_error(L, "req:websocket(): a response was already started");
	rt_wait_check(L);
	lua_getfield(L, 1, "headers");
	int h = lua_gettop(L);
	const char *upgrade = header_value(L, h, "upgrade");
	const char *connection = header_value(L, h, "connection");
	const char *version = header_value(L, h, "sec-websocket-version");
	const char *key = header_value(L, h, "sec-websocket-key");
	if (strcmp(r->method, "GET") != 0 || !has_token(upgrade, "websocket") ||
	    !has_token(connection, "upgrade"))
		return raise_error(L, 400, "invalid", "expected a WebSocket upgrade request", 0);
	if (!version || strcmp(version, "13") != 0)
		return raise_error(L, 400, "invalid", "unsupported Sec-WebSocket-Version (need 13)",
		                   0);
	if (!key || strlen(key) != 24)
		return raise_error(L, 400, "invalid", "missing or malformed Sec-WebSocket-Key", 0);
	char accept[29];
	ws_accept_key(key, accept);
	q->streamed = true;
	hreq_add_header(r, "Upgrade", "websocket");
	hreq_add_header(r, "Connection", "Upgrade");
	hreq_add_header(r, "Sec-WebSocket-Accept", accept);
	if (lua_istable(L, 2) && lua_getfield(L, 2, "protocol") == LUA_TSTRING)
		hreq_add_header(r, "Sec-WebSocket-Protocol", lua_tostring(L, -1));
	lua_settop(L, 1);
	r->upgrade_wait = rt_wait_begin(L, upgrade_cancel, r);
	hreq_upgrade_begin(r);
	return rt_wait_yield(L, r->upgrade_wait, NULL, 0);
}

/* --- dispatch --- */

static void respond_error(struct hreq *r, int status, const char *code, const char *message)
{
	hreq_respond(r, status, http_error_response(code, message));
}

/* Build a response from the error object on top of co. */
static void respond_lua_error(struct hreq *r, lua_State *co, task *t)
{
	if (lua_istable(co, -1)) {
		lua_getfield(co, -1, "status");
		lua_getfield(co, -2, "code");
		int status = (int)lua_tointeger(co, -2);
		if (status >= 400 && status <= 599 && lua_isstring(co, -1)) {
			lua_pop(co, 2);
			/* everything but status goes into "error" */
			lua_createtable(co, 0, 0);
			lua_pushnil(co);
			while (lua_next(co, -3)) {
				if (lua_type(co, -2) == LUA_TSTRING &&
				    strcmp(lua_tostring(co, -2), "status") == 0) {
					lua_pop(co, 1);
					continue;
				}
				lua_pushvalue(co, -2);
				lua_insert(co, -2);
				lua_rawset(co, -4);
			}
			lua_createtable(co, 0, 1);
			lua_insert(co, -2);
			lua_setfield(co, -2, "error");
			mb_err err = { 0 };
			size_t len;
			char *body = json_encode_lua(co, -1, 0, &len, &err);
			lua_pop(co, 1);
			if (body) {
				struct MHD_Response *resp = MHD_create_response_from_buffer(
				    len, body, MHD_RESPMEM_MUST_FREE);
				MHD_add_response_header(resp, "Content-Type", "application/json");
				hreq_respond(r, status, resp);
				return;
			}
		} else {
			lua_pop(co, 2);
		}
	}
	const char *msg = lua_tostring(co, -1);
	if (task_runaway(t)) {
		mb_log(MB_LOG_ERROR, "api", "%s %s: %s", r->method, r->path, msg);
		respond_error(r, 500, "script_timeout", msg);
		return;
	}
	mb_log(MB_LOG_ERROR, "api", "%s %s failed: %s", r->method, r->path, task_traceback(t));
	respond_error(r, 500, "internal", msg ? msg : "handler failed");
}

static void finish_stream_if_any(struct hreq *r)
{
	if (r->state == H_SENT || r->state == H_STREAM) {
		if (!r->out_closed)
			hreq_stream_close(r);
	}
}

static void on_done(task *t, int status, lua_State *co, int nres, void *ud)
{
	struct hreq *r = ud;
	r->task = NULL;
	bool started = r->state != H_RUNNING; /* a stream or upgrade is under way */
	if (started) {
		if (status != LUA_OK && status != TASK_CANCELLED)
			mb_log(MB_LOG_ERROR, "api", "%s %s failed mid-stream: %s", r->method,
			       r->path, task_traceback(t));
		finish_stream_if_any(r);
		hreq_unref(r);
		return;
	}
	if (!r->conn) { /* nobody to answer */
		hreq_unref(r);
		return;
	}
	if (status == TASK_CANCELLED) {
		respond_error(r, 503, "cancelled", "the request was cancelled");
	} else if (status != LUA_OK) {
		respond_lua_error(r, co, t);
	} else {
		int base = lua_gettop(co) - nres + 1;
		int i = base;
		int code = 200;
		if (nres == 0) {
			hreq_respond(
			    r, 204, MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT));
			hreq_unref(r);
			return;
		}
		if (lua_type(co, i) == LUA_TNUMBER) {
			code = (int)lua_tointeger(co, i);
			i++;
		}
		if (code < 100 || code > 599) {
			respond_error(r, 500, "internal", "handler returned an invalid status");
			hreq_unref(r);
			return;
		}
		int body = i <= base + nres - 1 ? i : 0;
		int headers = i + 1 <= base + nres - 1 && lua_istable(co, i + 1) ? i + 1 : 0;
		struct MHD_Response *resp;
		const char *ctype = NULL;
		if (body && (lua_istable(co, body) || json_isnull(co, body))) {
			mb_err err = { 0 };
			size_t len;
			char *s = json_encode_lua(co, body, 0, &len, &err);
			if (!s) {
				char msg[300];
				snprintf(msg, sizeof(msg), "cannot encode the response: %s",
				         err.msg);
				respond_error(r, 500, "internal", msg);
				hreq_unref(r);
				return;
			}
			resp = MHD_create_response_from_buffer(len, s, MHD_RESPMEM_MUST_FREE);
			ctype = "application/json";
		} else if (body && lua_type(co, body) == LUA_TSTRING) {
			size_t len;
			const char *s = lua_tolstring(co, body, &len);
			resp =
			    MHD_create_response_from_buffer(len, (void *)s, MHD_RESPMEM_MUST_COPY);
			ctype = "text/plain; charset=utf-8";
		} else {
			resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
		}
		bool has_ctype = false;
		if (headers) {
			lua_pushnil(co);
			while (lua_next(co, headers)) {
				if (lua_type(co, -2) == LUA_TSTRING && lua_isstring(co, -1)) {
					const char *k = lua_tostring(co, -2);
					if (strcasecmp(k, "content-type") == 0)
						has_ctype = true;
					MHD_add_response_header(resp, k, lua_tostring(co, -1));
				}
				lua_pop(co, 1);
			}
		}
		if (ctype && !has_ctype)
			MHD_add_response_header(resp, "Content-Type", ctype);
		hreq_respond(r, code, resp);
	}
	hreq_unref(r);
}

bool api_wants_file_body(const char *method, const char *path)
{
	lua_State *L = rt_state();
	buf allow = { 0 };
	int top = lua_gettop(L);
	struct route *rt = match(L, method, path, &allow);
	lua_settop(L, top);
	buf_free(&allow);
	return rt && rt->body_file;
}

void api_request_gone(struct hreq *r)
{
	/* Nothing to do for now: the task notices on its next write. */
	(void)r;
}

void api_dispatch(struct hreq *r)
{
	lua_State *L = rt_state();
	buf allow = { 0 };
	struct route *rt = match(L, r->method, r->path, &allow);
	if (!rt) {
		if (http_serve_static(r)) {
			buf_free(&allow);
			return;
		}
		if (allow.len) {
			struct MHD_Response *resp = http_error_response(
			    "method_not_allowed", "method not allowed on this path");
			MHD_add_response_header(resp, "Allow", allow.data);
			hreq_respond(r, 405, resp);
		} else {
			respond_error(r, 404, "not_found", "no such endpoint");
		}
		buf_free(&allow);
		return;
	}
	buf_free(&allow);
	/* stack: params */
	lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref);
	lua_insert(L, -2);
	struct lreq *q = lua_newuserdatauv(L, sizeof(*q), 4);
	q->r = r;
	q->streamed = false;
	r->lua_ptr = &q->r;
	luaL_setmetatable(L, REQ_MT);
	lua_insert(L, -2);
	lua_setiuservalue(L, -2, 1); /* params */
	char name[200];
	snprintf(name, sizeof(name), "%s %s", r->method, rt->pattern);
	hreq_ref(r); /* the task's */
	r->task = task_start(L, 1, name, true, on_done, r);
}

static const luaL_Reg req_methods[] = {
	{ "json", req_json },           { "stream", req_stream }, { "sse", req_sse },
	{ "websocket", req_websocket }, { "query_all", req_query_all }, { NULL, NULL },
};

static const luaL_Reg stream_methods[] = {
	{ "write", stream_write }, { "send", stream_send },           { "comment", stream_comment },
	{ "close", stream_close }, { "is_closed", stream_is_closed }, { NULL, NULL },
};

static int req_gc(lua_State *L)
{
	struct lreq *q = luaL_checkudata(L, 1, REQ_MT);
	if (q->r)
		q->r->lua_ptr = NULL;
	q->r = NULL;
	return 0;
}

static int stream_gc(lua_State *L)
{
	struct lstream *s = luaL_checkudata(L, 1, STREAM_MT);
	stream_release(s);
	return 0;
}

static const luaL_Reg funcs[] = {
	{ "route", l_route }, { "routes", l_routes }, { "error", l_error },
	{ "fail", l_fail },   { "check", l_check },   { "status_for", l_status_for },
	{ NULL, NULL },
};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
	luaL_newmetatable(L, name);
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	if (gc) {
		lua_pushcfunction(L, gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
}

int luaopen_mb_api(lua_State *L)
{
	gen_register(&ops);
	luaL_newmetatable(L, REQ_MT);
	lua_pushcfunction(L, req_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, req_gc);
	lua_setfield(L, -2, "__gc");
	luaL_newlib(L, req_methods);
	lua_setfield(L, -2, "methods");
	lua_pop(L, 1);
	new_class(L, STREAM_MT, stream_methods, stream_gc);
	luaL_newmetatable(L, ERR_MT);
	lua_pushcfunction(L, err_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
