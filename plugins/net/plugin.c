/*
 * plugins/net: the entry point and the C half of the Lua module `net`.
 *
 * The control plane (IPAM in SQLite, bridges and taps through `ip -batch`, the nftables
 * table through `nft -f`, reconcile) is Lua compiled into this .so (net.lua, run at init
 * with the module table). The data plane and what Lua cannot do lives here:
 *
 *   net._listen(proto, host_ip, port)  -> listener | nil, msg, code   bind (+listen): the
 *                                          port reservation; port 0 = any free port
 *     l:forward(ip, port [, udp_idle_ms]) start proxying to ip:port
 *     l:stats() -> {port, active, total, bytes_in, bytes_out, failed}
 *     l:close()                           (also on garbage collection)
 *   net._lock() -> lock                   FIFO mutex for tasks
 *     lk:acquire() ⏳ -> true             waits while another task holds it
 *     lk:release()
 *   net._sysctl(rel, value) -> true | nil, msg, code   write /proc/sys/<rel> (net/ only)
 *   net._cap_net_admin() -> boolean       does this process have CAP_NET_ADMIN
 *   net._dns_* (dns.c)                    the embedded DNS responder
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <moonbox/plugin.h>

#include "dns.h"
#include "net_lua.h"
#include "proxy.h"

#define LISTENER_MT "moonbox.net.listener"
#define LOCK_MT     "moonbox.net.lock"

static const struct mb_host *host;
static mb_plugin *self;

static int fail(lua_State *L, int code, const char *msg)
{
	mb_err e = { .code = code };
	size_t n = strlen(msg);
	if (n >= sizeof(e.msg))
		n = sizeof(e.msg) - 1;
	memcpy(e.msg, msg, n);
	e.msg[n] = 0;
	return host->lua_fail(L, &e);
}

/* --- listeners ---------------------------------------------------------------------- */

struct lbox {
	struct px_listener *l; /* NULL once closed */
};

static struct lbox *check_listener(lua_State *L)
{
	return luaL_checkudata(L, 1, LISTENER_MT);
}

static int parse_ip(lua_State *L, int idx, struct in_addr *a)
{
	const char *s = luaL_checkstring(L, idx);
	if (inet_pton(AF_INET, s, a) != 1)
		return luaL_argerror(L, idx, "not an IPv4 address");
	return 0;
}

/* [-3, +1|3, e] */
static int l_listen(lua_State *L)
{
	const char *proto = luaL_checkstring(L, 1);
	struct in_addr a;
	parse_ip(L, 2, &a);
	lua_Integer port = luaL_checkinteger(L, 3);
	luaL_argcheck(L, port >= 0 && port <= 65535, 3, "port out of range");
	int p = strcmp(proto, "tcp") == 0   ? IPPROTO_TCP
	        : strcmp(proto, "udp") == 0 ? IPPROTO_UDP
	                                    : -1;
	luaL_argcheck(L, p > 0, 1, "tcp or udp");
	struct lbox *b = lua_newuserdatauv(L, sizeof(*b), 0);
	b->l = NULL;
	luaL_setmetatable(L, LISTENER_MT);
	mb_err err = { 0 };
	b->l = px_bind(p, &a, (uint16_t)port, &err);
	if (!b->l)
		return host->lua_fail(L, &err);
	px_set_ref(b->l, &b->l);
	return 1;
}

/* [-3|4, +1|3, e] */
static int l_forward(lua_State *L)
{
	struct lbox *b = check_listener(L);
	struct sockaddr_in t = { .sin_family = AF_INET };
	parse_ip(L, 2, &t.sin_addr);
	lua_Integer port = luaL_checkinteger(L, 3);
	luaL_argcheck(L, port > 0 && port <= 65535, 3, "port out of range");
	t.sin_port = htons((uint16_t)port);
	lua_Integer idle = luaL_optinteger(L, 4, 60000);
	if (!b->l)
		return fail(L, -EBADF, "listener is closed");
	mb_err err = { 0 };
	if (px_forward(b->l, &t, (uint32_t)idle, &err) < 0)
		return host->lua_fail(L, &err);
	lua_pushboolean(L, 1);
	return 1;
}

/* [-1, +1, e] */
static int l_stats(lua_State *L)
{
	struct lbox *b = check_listener(L);
	if (!b->l)
		return fail(L, -EBADF, "listener is closed");
	struct px_stats st;
	px_get_stats(b->l, &st);
	lua_createtable(L, 0, 6);
	lua_pushinteger(L, st.port);
	lua_setfield(L, -2, "port");
	lua_pushinteger(L, (lua_Integer)st.active);
	lua_setfield(L, -2, "active");
	lua_pushinteger(L, (lua_Integer)st.total);
	lua_setfield(L, -2, "total");
	lua_pushinteger(L, (lua_Integer)st.bytes_in);
	lua_setfield(L, -2, "bytes_in");
	lua_pushinteger(L, (lua_Integer)st.bytes_out);
	lua_setfield(L, -2, "bytes_out");
	lua_pushinteger(L, (lua_Integer)st.failed);
	lua_setfield(L, -2, "failed");
	return 1;
}

/* [-1, +0, -] */
static int l_close(lua_State *L)
{
	struct lbox *b = check_listener(L);
	if (b->l)
		px_close(b->l);
	b->l = NULL;
	return 0;
}

/* --- a FIFO lock for tasks ----------------------------------------------------------- */

struct lwaiter {
	struct lwaiter *next;
	struct lock *lk;
	mb_wait *w;
};

struct lock {
	bool held;
	struct lwaiter *head, **tail;
};

static void lock_cancel(void *ud)
{
	struct lwaiter *me = ud;
	for (struct lwaiter **p = &me->lk->head; *p; p = &(*p)->next) {
		if (*p == me) {
			*p = me->next;
			if (!*p)
				me->lk->tail = p;
			break;
		}
	}
	free(me);
}

/* [-1, +1, e] ⏳ */
static int l_acquire(lua_State *L)
{
	struct lock *lk = luaL_checkudata(L, 1, LOCK_MT);
	if (!lk->held) {
		lk->held = true;
		lua_pushboolean(L, 1);
		return 1;
	}
	host->wait_check(L);
	struct lwaiter *me = calloc(1, sizeof(*me));
	if (!me)
		return luaL_error(L, "out of memory");
	me->lk = lk;
	me->w = host->wait_begin(L, lock_cancel, me);
	*lk->tail = me;
	lk->tail = &me->next;
	return host->wait_yield(L, me->w, NULL, 0);
}

/* [-1, +0, -] */
static int l_release(lua_State *L)
{
	struct lock *lk = luaL_checkudata(L, 1, LOCK_MT);
	struct lwaiter *next = lk->head;
	if (!next) {
		lk->held = false;
		return 0;
	}
	lk->head = next->next;
	if (!lk->head)
		lk->tail = &lk->head;
	/* ownership passes straight to the next waiter; held stays true */
	lua_pushboolean(host->wait_thread(next->w), 1);
	host->wait_done(next->w, 1);
	free(next);
	return 0;
}

/* [-0, +1, -] */
static int l_lock(lua_State *L)
{
	struct lock *lk = lua_newuserdatauv(L, sizeof(*lk), 0);
	lk->held = false;
	lk->head = NULL;
	lk->tail = &lk->head;
	luaL_setmetatable(L, LOCK_MT);
	return 1;
}

/* --- small system helpers ------------------------------------------------------------- */

/* [-2, +1|3, e] */
static int l_sysctl(lua_State *L)
{
	const char *rel = luaL_checkstring(L, 1);
	const char *val = luaL_checkstring(L, 2);
	luaL_argcheck(L, strncmp(rel, "net/", 4) == 0 && !strstr(rel, ".."), 1,
	              "only net/ sysctls");
	char path[160];
	if ((size_t)snprintf(path, sizeof(path), "/proc/sys/%s", rel) >= sizeof(path))
		return luaL_argerror(L, 1, "too long");
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		char m[240];
		snprintf(m, sizeof(m), "open %s: %s", path, strerror(errno));
		return fail(L, -errno, m);
	}
	ssize_t n = write(fd, val, strlen(val));
	int e = errno;
	close(fd);
	if (n < 0) {
		char m[240];
		snprintf(m, sizeof(m), "write %s: %s", path, strerror(e));
		return fail(L, -e, m);
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* [-0, +1, -] */
static int l_cap_net_admin(lua_State *L)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = { 0 };
	bool has = false;
	if (syscall(SYS_capget, &hdr, data) == 0)
		has = (data[CAP_NET_ADMIN / 32].effective >> (CAP_NET_ADMIN % 32)) & 1;
	lua_pushboolean(L, has);
	return 1;
}

static const luaL_Reg listener_methods[] = {
	{ "forward", l_forward }, { "stats", l_stats }, { "close", l_close }, { NULL, NULL }
};
static const luaL_Reg lock_methods[] = { { "acquire", l_acquire },
	                                 { "release", l_release },
	                                 { NULL, NULL } };

static const luaL_Reg funcs[] = {
	{ "_listen", l_listen },       { "_lock", l_lock },
	{ "_sysctl", l_sysctl },       { "_cap_net_admin", l_cap_net_admin },
	{ "_dns_start", dns_l_start }, { NULL, NULL },
};

static void new_mt(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
	luaL_newmetatable(L, name);
	lua_newtable(L);
	host->lua_setfuncs(self, L, methods);
	lua_setfield(L, -2, "__index");
	if (gc) { /* through the trampoline, so it is a no-op after unload */
		const luaL_Reg g[] = { { "__gc", gc }, { NULL, NULL } };
		host->lua_setfuncs(self, L, g);
	}
	lua_pop(L, 1);
}

extern char **environ;

static int net_init(const struct mb_host *h, mb_plugin *p, mb_err *err)
{
	host = h;
	self = p;
	px_init(h, p);
	dns_init(h, p);
	lua_State *L = h->lua_main();
	new_mt(L, LISTENER_MT, listener_methods, l_close);
	new_mt(L, LOCK_MT, lock_methods, NULL);
	dns_register(L);
	int rc = h->lua_module(p, "net", funcs, err);
	if (rc < 0)
		return rc;
	/* run net.lua with (module, env) where env holds MOONBOX_NET_* variables */
	if (luaL_loadbufferx(L, (const char *)net_lua, net_lua_len, "=net.lua", "t") != LUA_OK) {
		rc = mb_err_set(err, -EINVAL, "net.lua: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return rc;
	}
	lua_getglobal(L, "net");
	lua_newtable(L);
	for (char **e = environ; e && *e; e++) {
		if (strncmp(*e, "MOONBOX_NET_", 12) != 0)
			continue;
		const char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		char key[64];
		size_t n = (size_t)(eq - *e - 12);
		if (n >= sizeof(key))
			continue;
		for (size_t i = 0; i < n; i++) {
			char c = (*e)[12 + i];
			key[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
		}
		key[n] = 0;
		lua_pushstring(L, eq + 1);
		lua_setfield(L, -2, key);
	}
	if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
		rc = mb_err_set(err, -EINVAL, "net.lua: %s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return rc;
	}
	return 0;
}

static void net_fini(mb_plugin *p)
{
	dns_close_all();
	px_close_all();
	/* The host frees its records of our functions before it closes Lua, so a __gc
	 * trampoline that ran after this would read freed memory: drop the finalizers (Lua
	 * 5.4 looks __gc up again when it finalizes; everything is closed already). */
	lua_State *L = host->lua_main();
	const char *mts[] = { LISTENER_MT, "moonbox.net.dns" };
	for (size_t i = 0; i < sizeof(mts) / sizeof(mts[0]); i++) {
		if (luaL_getmetatable(L, mts[i]) == LUA_TTABLE) {
			lua_pushnil(L);
			lua_setfield(L, -2, "__gc");
		}
		lua_pop(L, 1);
	}
}

MB_PLUGIN_DEFINE("net", "0.1", "bridges, taps, IPAM, nftables NAT and isolation, published ports",
                 net_init, net_fini, NULL)
