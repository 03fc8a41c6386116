/*
 * Lua module `ws`: WebSocket objects (shared by the server's req:websocket() and the
 * client) and the client:
 *   ws.connect{url="ws://host:port/path" | unix_socket=, path=, headers=, timeout=30} ⏳
 *     -> ws | nil, msg, code   (a refused upgrade reports the HTTP status and body)
 * The object:
 *   ws:recv([timeout]) ⏳ -> data, "text"|"binary" | nil, msg, "closed"|"timeout"
 *   ws:send(data [, "binary"]) ⏳ -> true | nil, "closed", "closed"
 *   ws:close([code [, reason]]), ws:is_closed(), ws:close_code()
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <openssl/evp.h>
#include <sys/un.h>

#include "bindings.h"
#include "http.h"
#include "loop.h"
#include "task.h"
#include "ws.h"

#define WS_MT "moonbox.websocket"

struct lws {
	struct ws *ws;
	mb_wait *rwait, *swait;
	mb_timer *rtimer;
	bool timed_out;
};

static void lws_wake(mb_wait **wp, int n, bool ok)
{
	mb_wait *w = *wp;
	if (!w)
		return;
	*wp = NULL;
	(void)ok;
	rt_wait_done(w, n);
}

static void lws_notify(void *ud, int events)
{
	struct lws *l = ud;
	if ((events & (WS_EV_MESSAGE | WS_EV_CLOSED)) && l->rwait) {
		loop_timer_stop(l->rtimer);
		l->rtimer = NULL;
		lws_wake(&l->rwait, 0, true);
	}
	if ((events & (WS_EV_WRITABLE | WS_EV_CLOSED)) && l->swait)
		lws_wake(&l->swait, 0, true);
}

void ws_push(lua_State *L, struct ws *ws)
{
	struct lws *l = lua_newuserdatauv(L, sizeof(*l), 0);
	memset(l, 0, sizeof(*l));
	l->ws = ws;
	luaL_setmetatable(L, WS_MT);
	ws_set_owner(ws, lws_notify, l);
}

static struct lws *check_ws(lua_State *L)
{
	return luaL_checkudata(L, 1, WS_MT);
}

static void rwait_cancel(void *ud)
{
	struct lws *l = ud;
	l->rwait = NULL;
	loop_timer_stop(l->rtimer);
	l->rtimer = NULL;
}

static void rwait_timeout(void *ud)
{
	struct lws *l = ud;
	l->rtimer = NULL;
	l->timed_out = true;
	lws_wake(&l->rwait, 0, false);
}

static int ws_recv_k(lua_State *L, int status, lua_KContext ctx);

static int ws_recv_try(lua_State *L, struct lws *l, double timeout)
{
	if (!l->ws)
		return lua_failf(L, -EPIPE, "closed");
	int opcode;
	char *data;
	size_t len;
	int r = ws_recv(l->ws, &opcode, &data, &len);
	if (r == 1) {
		lua_pushlstring(L, data, len);
		free(data);
		lua_pushstring(L, opcode == WS_TEXT ? "text" : "binary");
		return 2;
	}
	if (r < 0)
		return lua_failf(L, -EPIPE, "closed");
	if (l->timed_out || timeout == 0) {
		l->timed_out = false;
		return lua_failf(L, -ETIMEDOUT, "timeout");
	}
	l->rwait = rt_wait_begin(L, rwait_cancel, l);
	if (timeout > 0)
		l->rtimer = loop_timer((uint64_t)(timeout * 1000), rwait_timeout, l);
	return rt_wait_yield(L, l->rwait, ws_recv_k, 0);
}

static int ws_recv_k(lua_State *L, int status, lua_KContext ctx)
{
	struct lws *l = check_ws(L);
	lua_settop(L, 2);
	return ws_recv_try(L, l, luaL_optnumber(L, 2, -1));
}

static int lws_recv(lua_State *L)
{
	struct lws *l = check_ws(L);
	double timeout = luaL_optnumber(L, 2, -1);
	lua_settop(L, 2);
	if (l->rwait)
		return luaL_error(L, "ws:recv(): another task is already receiving");
	l->timed_out = false;
	return ws_recv_try(L, l, timeout);
}

static void swait_cancel(void *ud)
{
	struct lws *l = ud;
	l->swait = NULL;
}

static int ws_send_k(lua_State *L, int status, lua_KContext ctx)
{
	struct lws *l = check_ws(L);
	if (!l->ws || ws_is_closed(l->ws))
		return lua_failf(L, -EPIPE, "closed");
	if (ws_pending(l->ws) > STREAM_LOW_WATER) {
		l->swait = rt_wait_begin(L, swait_cancel, l);
		return rt_wait_yield(L, l->swait, ws_send_k, 0);
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int lws_send(lua_State *L)
{
	struct lws *l = check_ws(L);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	const char *kind = luaL_optstring(L, 3, "text");
	int opcode = strcmp(kind, "binary") == 0 ? WS_BINARY : WS_TEXT;
	if (opcode == WS_TEXT && !ws_utf8_valid(data, len))
		return luaL_argerror(L, 2, "text messages must be valid UTF-8 (send \"binary\")");
	if (!l->ws)
		return lua_failf(L, -EPIPE, "closed");
	long queued = ws_send(l->ws, opcode, data, len);
	if (queued < 0)
		return lua_failf(L, -EPIPE, "closed");
	if ((size_t)queued > STREAM_HIGH_WATER) {
		if (l->swait)
			return luaL_error(L, "ws:send(): another task is already sending");
		lua_settop(L, 1);
		l->swait = rt_wait_begin(L, swait_cancel, l);
		return rt_wait_yield(L, l->swait, ws_send_k, 0);
	}
	lua_pushboolean(L, 1);
	return 1;
}

static int lws_close(lua_State *L)
{
	struct lws *l = check_ws(L);
	int code = (int)luaL_optinteger(L, 2, 1000);
	const char *reason = luaL_optstring(L, 3, NULL);
	if (!ws_close_code_valid(code))
		return luaL_argerror(L, 2, "invalid close code");
	if (l->ws)
		ws_close(l->ws, code, reason);
	return 0;
}

static int lws_is_closed(lua_State *L)
{
	struct lws *l = check_ws(L);
	lua_pushboolean(L, !l->ws || ws_is_closed(l->ws));
	return 1;
}

static int lws_close_code(lua_State *L)
{
	struct lws *l = check_ws(L);
	int c = l->ws ? ws_peer_close_code(l->ws) : 0;
	if (!c)
		return 0;
	lua_pushinteger(L, c);
	return 1;
}

static int lws_gc(lua_State *L)
{
	struct lws *l = check_ws(L);
	loop_timer_stop(l->rtimer);
	l->rtimer = NULL;
	if (l->ws)
		ws_free(l->ws);
	l->ws = NULL;
	return 0;
}

/* --- the client handshake --- */

struct wsconn {
	int fd;
	mb_watch *w;
	mb_wait *wait;
	mb_timer *timer;
	buf out, in;
	size_t out_off;
	char accept[29];
	bool connected;
};

static void conn_free(struct wsconn *c, bool close_fd)
{
	if (c->w)
		loop_unwatch(c->w);
	loop_timer_stop(c->timer);
	if (close_fd && c->fd >= 0)
		close(c->fd);
	buf_free(&c->out);
	buf_free(&c->in);
	free(c);
}

static void conn_fail(struct wsconn *c, int code, const char *fmt, const char *detail)
{
	mb_wait *w = c->wait;
	lua_State *T = rt_wait_thread(w);
	int n = lua_failf(T, code, fmt, detail ? detail : "");
	conn_free(c, true);
	rt_wait_done(w, n);
}

/* Look at what came back: 101 + the right accept key, or an HTTP error. */
static void conn_check(struct wsconn *c)
{
	char *end = strstr(c->in.data, "\r\n\r\n");
	if (!end)
		return;
	size_t head_len = (size_t)(end - c->in.data) + 4;
	int status = 0;
	sscanf(c->in.data, "HTTP/%*s %d", &status);
	if (status != 101) {
		/* the body (a JSON error, usually) follows the headers */
		const char *body = c->in.data + head_len;
		char msg[512];
		snprintf(msg, sizeof(msg), "HTTP %d %.400s", status, *body ? body : "");
		conn_fail(c,
		          status == 404   ? -ENOENT
		          : status == 401 ? -EACCES
		                          : -EPROTO,
		          "%s", msg);
		return;
	}
	bool ok = false;
	char *head = xstrndup(c->in.data, head_len);
	char *save = NULL;
	for (char *line = strtok_r(head, "\r\n", &save); line;
	     line = strtok_r(NULL, "\r\n", &save)) {
		if (strncasecmp(line, "Sec-WebSocket-Accept:", 21) != 0)
			continue;
		const char *v = line + 21;
		while (*v == ' ')
			v++;
		ok = strcmp(v, c->accept) == 0;
	}
	free(head);
	if (!ok) {
		conn_fail(c, -EPROTO, "%s",
		          "the server's Sec-WebSocket-Accept is wrong or missing");
		return;
	}
	mb_wait *w = c->wait;
	int fd = c->fd;
	buf rest = { 0 }; /* frames that arrived with the handshake */
	buf_append(&rest, c->in.data + head_len, c->in.len - head_len);
	conn_free(c, false); /* drops our watch on fd before the connection takes it */
	struct ws *ws = ws_new_client(fd, rest.data, rest.len);
	buf_free(&rest);
	ws_push(rt_wait_thread(w), ws);
	rt_wait_done(w, 1);
}

static void conn_io(int fd, uint32_t events, void *ud)
{
	struct wsconn *c = ud;
	if (!c->connected) {
		int e = 0;
		socklen_t sl = sizeof(e);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl);
		if (e) {
			conn_fail(c, -ECONNREFUSED, "connect: %s", strerror(e));
			return;
		}
		c->connected = true;
	}
	while (c->out_off < c->out.len) {
		ssize_t n =
		    send(fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			conn_fail(c, -errno, "send: %s", strerror(errno));
			return;
		}
		c->out_off += (size_t)n;
	}
	loop_modify(c->w, EPOLLIN, NULL);
	if (!(events & (EPOLLIN | EPOLLHUP)))
		return;
	char chunk[4096];
	ssize_t n = recv(fd, chunk, sizeof(chunk), MSG_DONTWAIT);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0) {
		if (c->in.len) {
			buf_append(&c->in, "\r\n\r\n", 4); /* show whatever came back */
			conn_check(c);
		} else {
			conn_fail(c, -EPIPE, "%s", "the server closed the connection");
		}
		return;
	}
	buf_append(&c->in, chunk, (size_t)n);
	if (c->in.len > 65536) {
		conn_fail(c, -EPROTO, "%s", "handshake response too large");
		return;
	}
	conn_check(c);
}

static void conn_timeout(void *ud)
{
	struct wsconn *c = ud;
	c->timer = NULL;
	conn_fail(c, -ETIMEDOUT, "%s", "timeout");
}

static void conn_cancel(void *ud)
{
	conn_free(ud, true);
}

static int l_connect(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_getfield(L, 1, "url");
	lua_getfield(L, 1, "unix_socket");
	lua_getfield(L, 1, "path");
	lua_getfield(L, 1, "timeout");
	const char *url = luaL_optstring(L, -4, NULL);
	const char *sock = luaL_optstring(L, -3, NULL);
	const char *path = luaL_optstring(L, -2, NULL);
	double timeout = luaL_optnumber(L, -1, 30);
	char host[256] = "localhost", port[16] = "80", upath[2048] = "/";
	if (url) {
		if (sscanf(url, "ws://%255[^:/]:%15[0-9]%2047s", host, port, upath) < 2 &&
		    sscanf(url, "ws://%255[^:/]%2047s", host, upath) < 1)
			return luaL_argerror(L, 1, "url must look like ws://host[:port]/path");
	} else if (!sock) {
		return luaL_argerror(L, 1, "url or unix_socket is required");
	}
	if (path)
		snprintf(upath, sizeof(upath), "%s", path);
	rt_wait_check(L);
	int fd;
	if (sock) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		if (strlen(sock) >= sizeof(sa.sun_path))
			return luaL_argerror(L, 1, "unix_socket path too long");
		strcpy(sa.sun_path, sock);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 || (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
		               errno != EINPROGRESS && errno != EAGAIN)) {
			int e = errno;
			if (fd >= 0)
				close(fd);
			return lua_failf(L, -ECONNREFUSED, "cannot connect to %s: %s", sock,
			                 strerror(e));
		}
	} else {
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV },
		                *res = NULL;
		int g = getaddrinfo(host, port, &hints, &res);
		if (g != 0)
			return lua_failf(L, -ECONNREFUSED, "%s: %s", host, gai_strerror(g));
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 ||
		    (connect(fd, res->ai_addr, res->ai_addrlen) < 0 && errno != EINPROGRESS)) {
			int e = errno;
			if (fd >= 0)
				close(fd);
			freeaddrinfo(res);
			return lua_failf(L, -ECONNREFUSED, "cannot connect to %s:%s: %s", host,
			                 port, strerror(e));
		}
		freeaddrinfo(res);
	}
	struct wsconn *c = xcalloc(1, sizeof(*c));
	c->fd = fd;
	unsigned char nonce[16];
	char key[25];
	if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
		memset(nonce, 7, sizeof(nonce));
	EVP_EncodeBlock((unsigned char *)key, nonce, sizeof(nonce));
	ws_accept_key(key, c->accept);
	buf_appendf(&c->out,
	            "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
	            upath, sock ? "localhost" : host, key);
	lua_getfield(L, 1, "headers");
	if (lua_istable(L, -1)) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1))
				buf_appendf(&c->out, "%s: %s\r\n", lua_tostring(L, -2),
				            lua_tostring(L, -1));
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	buf_append(&c->out, "\r\n", 2);
	buf_reserve(&c->in, 4096);
	mb_err err = { 0 };
	c->w = loop_watch(fd, EPOLLOUT | EPOLLIN, conn_io, c, &err);
	if (!c->w) {
		conn_free(c, true);
		return lua_fail(L, &err);
	}
	if (timeout > 0)
		c->timer = loop_timer((uint64_t)(timeout * 1000), conn_timeout, c);
	c->wait = rt_wait_begin(L, conn_cancel, c);
	return rt_wait_yield(L, c->wait, NULL, 0);
}

static const luaL_Reg ws_methods[] = {
	{ "recv", lws_recv },
	{ "send", lws_send },
	{ "close", lws_close },
	{ "is_closed", lws_is_closed },
	{ "close_code", lws_close_code },
	{ NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "connect", l_connect },
	{ NULL, NULL },
};

int luaopen_mb_ws(lua_State *L)
{
	luaL_newmetatable(L, WS_MT);
	lua_newtable(L);
	luaL_setfuncs(L, ws_methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, lws_gc);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
