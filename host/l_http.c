/*
 * Lua module `http` (client, libcurl multi in the loop):
 *   http.request{url=, method="GET", headers={}, body=, timeout=30, unix_socket=,
 *                follow=false, max_body=64 MiB}
 *     -> {status=, headers={lower-case names}, body=} | nil, msg, code
 *   http.get(url [, opts]), http.post(url, body [, opts])
 * Codes: "timeout", "unreachable" (connect/resolve), "too_large", "io".
 */
#include <errno.h>
#include <math.h>

#include "bindings.h"
#include "curlm.h"
#include "task.h"

struct hcall {
	CURL *e;
	struct curl_slist *hdrs;
	buf body, headers;
	size_t max_body;
	bool too_large;
	char *req_body;
	mb_wait *w;
	char errbuf[CURL_ERROR_SIZE];
};

static void hcall_free(struct hcall *c)
{
	if (c->e)
		curl_easy_cleanup(c->e);
	curl_slist_free_all(c->hdrs);
	buf_free(&c->body);
	buf_free(&c->headers);
	free(c->req_body);
	free(c);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
	struct hcall *c = ud;
	size_t len = size * n;
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
	return len;
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

static void on_done(CURL *e, CURLcode res, void *ud)
{
	struct hcall *c = ud;
	mb_wait *w = c->w;
	lua_State *T = rt_wait_thread(w);
	int n;
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
		n = 1;
	} else {
		int code = -EIO;
		if (c->too_large)
			code = -E2BIG;
		else if (res == CURLE_OPERATION_TIMEDOUT)
			code = -ETIMEDOUT;
		else if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST)
			code = -ECONNREFUSED;
		n = lua_failf(T, code, "%s",
		              c->too_large ? "response body too large"
		                           : (c->errbuf[0] ? c->errbuf : curl_easy_strerror(res)));
	}
	c->w = NULL;
	hcall_free(c);
	rt_wait_done(w, n);
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

static int l_request(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	const char *url = opt_string(L, 1, "url", NULL);
	if (!url)
		return luaL_argerror(L, 1, "url is required");
	const char *method = opt_string(L, 1, "method", "GET");
	const char *sock = opt_string(L, 1, "unix_socket", NULL);
	lua_getfield(L, 1, "timeout");
	double timeout = luaL_optnumber(L, -1, 30);
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
	c->max_body = (size_t)max_body;
	c->e = curl_easy_init();
	curl_easy_setopt(c->e, CURLOPT_URL, url);
	curl_easy_setopt(c->e, CURLOPT_CUSTOMREQUEST, method);
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(c->e, CURLOPT_NOBODY, 1L);
	curl_easy_setopt(c->e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->e, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->e, CURLOPT_HEADERDATA, c);
	curl_easy_setopt(c->e, CURLOPT_ERRORBUFFER, c->errbuf);
	curl_easy_setopt(c->e, CURLOPT_TIMEOUT_MS, (long)llround(timeout * 1000));
	curl_easy_setopt(c->e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
	curl_easy_setopt(c->e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c->e, CURLOPT_USERAGENT, "moonbox");
	if (sock)
		curl_easy_setopt(c->e, CURLOPT_UNIX_SOCKET_PATH, sock);
	if (body) {
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
	if (body)
		c->hdrs = curl_slist_append(c->hdrs, "Expect:");
	curl_easy_setopt(c->e, CURLOPT_HTTPHEADER, c->hdrs);
	mb_err err = { 0 };
	if (curlm_add(c->e, on_done, c, &err) < 0) {
		hcall_free(c);
		return lua_fail(L, &err);
	}
	c->w = rt_wait_begin(L, on_cancel, c);
	return rt_wait_yield(L, c->w, NULL, 0);
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

static const luaL_Reg funcs[] = {
	{ "request", l_request },
	{ "get", l_get },
	{ "post", l_post },
	{ NULL, NULL },
};

int luaopen_mb_http(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
