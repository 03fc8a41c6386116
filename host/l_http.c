/*
 * Lua module `http` (client, libcurl multi in the loop):
 *   http.request{url=, method="GET", headers={}, body=, body_file=, timeout=30,
 *                unix_socket=, follow=false, max_body=64 MiB}              ⏳
 *     -> {status=, headers={lower-case names}, body=} | nil, msg, code
 *   http.stream{...same options...}                                        ⏳
 *     -> response {status=, headers=} once the headers are in; then
 *        response:read([timeout]) ⏳ -> chunk | nil at the end | nil, msg, code
 *        response:close()
 *     The body is not buffered beyond ~1 MiB: a slow reader pauses the transfer.
 *   http.get(url [, opts]), http.post(url, body [, opts])
 * body_file uploads a file's contents (streamed). Codes: "timeout", "unreachable"
 * (connect/resolve), "too_large", "closed", "io".
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>

#include "bindings.h"
#include "curlm.h"
#include "loop.h"
#include "task.h"

#define RESP_MT         "moonbox.http.response"
#define STREAM_PAUSE_AT (1u << 20)

struct hcall {
	CURL *e;
	struct curl_slist *hdrs;
	buf body, headers;
	size_t body_off;
	size_t max_body;
	bool too_large, streaming, headers_done, done, paused, owned_by_lua, follow;
	CURLcode result;
	char *req_body;
	int upload_fd;
	mb_wait *w;       /* request(): the whole call; stream(): waiting for headers */
	mb_wait *rwait;   /* stream: a read() waiting for data */
	mb_timer *rtimer; /* stream: read timeout */
	bool rtimed_out;
	char errbuf[CURL_ERROR_SIZE];
};

/* Frees the call and everything it holds; the transfer must be out of the multi. */
static void hcall_free(struct hcall *c)
{
	if (c->e)
		curl_easy_cleanup(c->e);
	curl_slist_free_all(c->hdrs);
	buf_free(&c->body);
	buf_free(&c->headers);
	free(c->req_body);
	if (c->upload_fd >= 0)
		close(c->upload_fd);
	loop_timer_stop(c->rtimer);
	free(c);
}

static int fail_code(struct hcall *c)
{
	if (c->too_large)
		return -E2BIG;
	switch (c->result) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		return -ECONNREFUSED;
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		return -EPIPE;
	default:
		return -EIO;
	}
}

static const char *fail_msg(struct hcall *c)
{
	if (c->too_large)
		return "response body too large";
	return c->errbuf[0] ? c->errbuf : curl_easy_strerror(c->result);
}

static void push_headers(lua_State *T, struct hcall *c)
{
	lua_newtable(T);
	char *save = NULL;
	char *copy = xstrndup(c->headers.data ? c->headers.data : "", c->headers.len);
	for (char *line = strtok_r(copy, "\r\n", &save); line;
	     line = strtok_r(NULL, "\r\n", &save)) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = '\0';
		for (char *k = line; *k; k++)
			if (*k >= 'A' && *k <= 'Z')
				*k = (char)(*k + 32);
		char *v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		lua_pushstring(T, v);
		lua_setfield(T, -2, line);
	}
	free(copy);
}

/* [-0, +1] the response object for a streaming call (takes ownership of c) */
static void push_response(lua_State *T, struct hcall *c)
{
	struct hcall **u = lua_newuserdatauv(T, sizeof(*u), 1);
	*u = c;
	c->owned_by_lua = true;
	luaL_setmetatable(T, RESP_MT);
	long status = 0;
	curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &status);
	lua_createtable(T, 0, 2);
	lua_pushinteger(T, status);
	lua_setfield(T, -2, "status");
	push_headers(T, c);
	lua_setfield(T, -2, "headers");
	lua_setiuservalue(T, -2, 1);
}

/* stream(): the headers are in (or the transfer ended before any body) */
static void deliver_headers(struct hcall *c)
{
	mb_wait *w = c->w;
	if (!w)
		return;
	c->w = NULL;
	lua_State *T = rt_wait_thread(w);
	if (c->done && c->result != CURLE_OK) {
		int n = lua_failf(T, fail_code(c), "%s", fail_msg(c));
		curl_easy_cleanup(c->e);
		c->e = NULL;
		hcall_free(c);
		rt_wait_done(w, n);
		return;
	}
	push_response(T, c);
	rt_wait_done(w, 1);
}

static void wake_reader(struct hcall *c)
{
	mb_wait *w = c->rwait;
	if (!w)
		return;
	c->rwait = NULL;
	loop_timer_stop(c->rtimer);
	c->rtimer = NULL;
	rt_wait_done(w, 0); /* the continuation reads the state */
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
	struct hcall *c = ud;
	size_t len = size * n;
	if (c->streaming) {
		if (c->body.len - c->body_off >= STREAM_PAUSE_AT) {
			c->paused = true;
			return CURL_WRITEFUNC_PAUSE; /* curl keeps the data; read() resumes */
		}
		buf_append(&c->body, p, len);
		if (!c->headers_done) {
			c->headers_done = true;
			deliver_headers(c);
		}
		wake_reader(c);
		return len;
	}
	if (c->body.len + len > c->max_body) {
		c->too_large = true;
		return 0; /* aborts the transfer */
	}
	buf_append(&c->body, p, len);
	return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
	struct hcall *c = ud;
	size_t len = size * n;
	if (len >= 5 && strncmp(p, "HTTP/", 5) == 0)
		c->headers.len = 0; /* a new response (redirect, 100-continue) */
	buf_append(&c->headers, p, len);
	if (c->streaming && !c->headers_done && (len == 2 && p[0] == '\r')) {
		long status = 0;
		curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200 && !(status >= 300 && status < 400 && c->follow)) {
			c->headers_done = true;
			deliver_headers(c);
		}
	}
	return len;
}

static size_t on_upload(char *p, size_t size, size_t n, void *ud)
{
	struct hcall *c = ud;
	ssize_t r = read(c->upload_fd, p, size * n); /* a local file: page-cache reads */
	return r < 0 ? CURL_READFUNC_ABORT : (size_t)r;
}

static void on_done(CURL *e, CURLcode res, void *ud)
{
	struct hcall *c = ud;
	c->done = true;
	c->result = res;
	if (c->streaming) {
		if (!c->headers_done) {
			c->headers_done = true;
			deliver_headers(c); /* frees c on failure */
			return;
		}
		wake_reader(c);
		if (!c->owned_by_lua) /* nobody holds it: cannot happen after delivery */
			hcall_free(c);
		return;
	}
	mb_wait *w = c->w;
	lua_State *T = rt_wait_thread(w);
	int nres;
	if (res == CURLE_OK) {
		long status = 0;
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		lua_createtable(T, 0, 3);
		lua_pushinteger(T, status);
		lua_setfield(T, -2, "status");
		push_headers(T, c);
		lua_setfield(T, -2, "headers");
		lua_pushlstring(T, c->body.data ? c->body.data : "", c->body.len);
		lua_setfield(T, -2, "body");
		nres = 1;
	} else {
		nres = lua_failf(T, fail_code(c), "%s", fail_msg(c));
	}
	c->w = NULL;
	hcall_free(c);
	rt_wait_done(w, nres);
}

static void on_cancel(void *ud)
{
	struct hcall *c = ud;
	curlm_remove(c->e);
	hcall_free(c);
}

static const char *opt_string(lua_State *L, int t, const char *k, const char *def)
{
	lua_getfield(L, t, k);
	const char *v = lua_isnil(L, -1) ? def : luaL_checkstring(L, -1);
	lua_pop(L, 1); /* strings in the options table stay alive */
	return v;
}

/* Build the transfer from the options table at index 1; raises on misuse. Returns the
 * call, or NULL with the failure pushed (3 values) on an operational error. */
static struct hcall *prepare(lua_State *L, bool streaming)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	const char *url = opt_string(L, 1, "url", NULL);
	if (!url)
		luaL_argerror(L, 1, "url is required");
	const char *method = opt_string(L, 1, "method", "GET");
	const char *sock = opt_string(L, 1, "unix_socket", NULL);
	const char *body_file = opt_string(L, 1, "body_file", NULL);
	lua_getfield(L, 1, "timeout");
	double timeout = luaL_optnumber(L, -1, streaming ? 0 : 30);
	lua_getfield(L, 1, "follow");
	bool follow = lua_toboolean(L, -1);
	lua_getfield(L, 1, "max_body");
	lua_Integer max_body = luaL_optinteger(L, -1, 64 << 20);
	lua_getfield(L, 1, "body");
	size_t blen = 0;
	const char *body = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &blen);
	lua_pop(L, 4);
	rt_wait_check(L);

	struct hcall *c = xcalloc(1, sizeof(*c));
	c->upload_fd = -1;
	c->streaming = streaming;
	c->follow = follow;
	c->max_body = (size_t)max_body;
	if (body_file) {
		struct stat st;
		c->upload_fd = open(body_file, O_RDONLY | O_CLOEXEC);
		if (c->upload_fd < 0 || fstat(c->upload_fd, &st) < 0) {
			int e = errno;
			hcall_free(c);
			lua_failf(L, -e, "%s: %s", body_file, strerror(e));
			return NULL;
		}
		c->e = curl_easy_init();
		curl_easy_setopt(c->e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c->e, CURLOPT_READFUNCTION, on_upload);
		curl_easy_setopt(c->e, CURLOPT_READDATA, c);
		curl_easy_setopt(c->e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
	} else {
		c->e = curl_easy_init();
	}
	curl_easy_setopt(c->e, CURLOPT_URL, url);
	curl_easy_setopt(c->e, CURLOPT_CUSTOMREQUEST, method);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c->e, CURLOPT_NOBODY, 1L);
	curl_easy_setopt(c->e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->e, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->e, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(c->e, CURLOPT_ERRORBUFFER, c->errbuf);
	if (timeout > 0)
		curl_easy_setopt(c->e, CURLOPT_TIMEOUT_MS, (long)llround(timeout * 1000));
	curl_easy_setopt(c->e, CURLOPT_CONNECTTIMEOUT_MS, 30000L);
	curl_easy_setopt(c->e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
	curl_easy_setopt(c->e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c->e, CURLOPT_USERAGENT, "moonbox");
	if (sock)
		curl_easy_setopt(c->e, CURLOPT_UNIX_SOCKET_PATH, sock);
	if (body && !body_file) {
		c->req_body = xmalloc(blen + 1);
		memcpy(c->req_body, body, blen);
		curl_easy_setopt(c->e, CURLOPT_POSTFIELDS, c->req_body);
		curl_easy_setopt(c->e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
	}
	lua_getfield(L, 1, "headers");
	if (lua_istable(L, -1)) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
				char *h =
				    xasprintf("%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
				c->hdrs = curl_slist_append(c->hdrs, h);
				free(h);
			}
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	if (body || body_file)
		c->hdrs = curl_slist_append(c->hdrs, "Expect:");
	curl_easy_setopt(c->e, CURLOPT_HTTPHEADER, c->hdrs);
	return c;
}

static int start(lua_State *L, bool streaming)
{
	struct hcall *c = prepare(L, streaming);
	if (!c)
		return 3;
	mb_err err = { 0 };
	if (curlm_add(c->e, on_done, c, &err) < 0) {
		hcall_free(c);
		return lua_fail(L, &err);
	}
	c->w = rt_wait_begin(L, on_cancel, c);
	return rt_wait_yield(L, c->w, NULL, 0);
}

static int l_request(lua_State *L)
{
	return start(L, false);
}

static int l_stream(lua_State *L)
{
	return start(L, true);
}

/* --- the streaming response object --- */

static struct hcall *check_resp(lua_State *L)
{
	struct hcall **u = luaL_checkudata(L, 1, RESP_MT);
	return *u;
}

static void rwait_cancel(void *ud)
{
	struct hcall *c = ud;
	c->rwait = NULL;
	loop_timer_stop(c->rtimer);
	c->rtimer = NULL;
}

static void rwait_timeout(void *ud)
{
	struct hcall *c = ud;
	c->rtimer = NULL;
	c->rtimed_out = true;
	wake_reader(c);
}

static int read_k(lua_State *L, int status, lua_KContext ctx);

static int read_try(lua_State *L, struct hcall *c, double timeout)
{
	if (!c)
		return lua_failf(L, -EPIPE, "closed");
	size_t avail = c->body.len - c->body_off;
	if (avail) {
		lua_pushlstring(L, c->body.data + c->body_off, avail);
		c->body.len = c->body_off = 0;
		if (c->paused && !c->done) {
			c->paused = false;
			curl_easy_pause(c->e, CURLPAUSE_CONT); /* may call on_body right away */
		}
		return 1;
	}
	if (c->done) {
		if (c->result == CURLE_OK)
			return 0; /* the end: nil */
		return lua_failf(L, fail_code(c), "%s", fail_msg(c));
	}
	if (c->rtimed_out || timeout == 0) {
		c->rtimed_out = false;
		return lua_failf(L, -ETIMEDOUT, "timeout");
	}
	c->rwait = rt_wait_begin(L, rwait_cancel, c);
	if (timeout > 0)
		c->rtimer = loop_timer((uint64_t)(timeout * 1000), rwait_timeout, c);
	return rt_wait_yield(L, c->rwait, read_k, 0);
}

static int read_k(lua_State *L, int status, lua_KContext ctx)
{
	lua_settop(L, 2);
	return read_try(L, check_resp(L), luaL_optnumber(L, 2, -1));
}

static int resp_read(lua_State *L)
{
	struct hcall *c = check_resp(L);
	double timeout = luaL_optnumber(L, 2, -1);
	lua_settop(L, 2);
	if (c && c->rwait)
		return luaL_error(L, "response:read(): another task is already reading");
	if (c)
		c->rtimed_out = false;
	return read_try(L, c, timeout);
}

static int resp_close(lua_State *L)
{
	struct hcall **u = luaL_checkudata(L, 1, RESP_MT);
	struct hcall *c = *u;
	if (!c)
		return 0;
	*u = NULL;
	if (c->rwait) { /* a reader in another task: tell it */
		mb_wait *w = c->rwait;
		c->rwait = NULL;
		lua_State *T = rt_wait_thread(w);
		rt_wait_done(w, lua_failf(T, -EPIPE, "closed"));
	}
	if (!c->done)
		curlm_remove(c->e);
	hcall_free(c);
	return 0;
}

static int resp_index(lua_State *L)
{
	check_resp(L);
	const char *k = luaL_checkstring(L, 2);
	lua_getiuservalue(L, 1, 1);
	lua_getfield(L, -1, k);
	if (!lua_isnil(L, -1))
		return 1;
	luaL_getmetatable(L, RESP_MT);
	lua_getfield(L, -1, "methods");
	lua_getfield(L, -1, k);
	return 1;
}

/* http.get(url [, opts]) */
static int l_get(lua_State *L)
{
	luaL_checkstring(L, 1);
	if (!lua_istable(L, 2)) {
		lua_settop(L, 1);
		lua_newtable(L);
	}
	lua_pushvalue(L, 1);
	lua_setfield(L, 2, "url");
	lua_pushliteral(L, "GET");
	lua_setfield(L, 2, "method");
	lua_replace(L, 1);
	lua_settop(L, 1);
	return l_request(L);
}

/* http.post(url, body [, opts]) */
static int l_post(lua_State *L)
{
	luaL_checkstring(L, 1);
	luaL_checkstring(L, 2);
	if (!lua_istable(L, 3)) {
		lua_settop(L, 2);
		lua_newtable(L);
	}
	lua_pushvalue(L, 1);
	lua_setfield(L, 3, "url");
	lua_pushvalue(L, 2);
	lua_setfield(L, 3, "body");
	lua_getfield(L, 3, "method");
	if (lua_isnil(L, -1)) {
		lua_pushliteral(L, "POST");
		lua_setfield(L, 3, "method");
	}
	lua_pop(L, 1);
	lua_replace(L, 1);
	lua_settop(L, 1);
	return l_request(L);
}

static const luaL_Reg resp_methods[] = {
	{ "read", resp_read },
	{ "close", resp_close },
	{ NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "request", l_request }, { "stream", l_stream }, { "get", l_get },
	{ "post", l_post },       { NULL, NULL },
};

int luaopen_mb_http(lua_State *L)
{
	luaL_newmetatable(L, RESP_MT);
	lua_pushcfunction(L, resp_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, resp_close);
	lua_setfield(L, -2, "__gc");
	lua_pushcfunction(L, resp_close);
	lua_setfield(L, -2, "__close");
	lua_newtable(L);
	luaL_setfuncs(L, resp_methods, 0);
	lua_setfield(L, -2, "methods");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
