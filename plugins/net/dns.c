/*
 * The per-network DNS responder (see dns.h). UDP only; answers A (and ANY) for the names
 * it was given, NODATA for other types of those names, and relays every other query to
 * an upstream resolver with a fresh query id (replies are matched by id and source).
 */
#include "dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DNS_MT      "moonbox.net.dns"
#define MAX_UP      4
#define MAX_PENDING 512
#define PENDING_MS  5000
#define MAX_NAME    255

static const struct mb_host *H;
static mb_plugin *P;

struct dname {
	char *name;
	struct in_addr a;
};

struct pending {
	uint16_t new_id, orig_id;
	struct sockaddr_in client;
	uint64_t at_ms;
	bool used;
};

struct dns_srv {
	struct dns_srv *next, *prev;
	struct dns_srv **ref; /* the Lua box's pointer, NULLed on close */
	int fd, up_fd;
	mb_watch *w, *up_w;
	struct dname *names;
	size_t nnames;
	struct sockaddr_in up[MAX_UP];
	int nup;
	unsigned rr;
	struct pending pend[MAX_PENDING];
	uint64_t queries, answered, forwarded, failed;
};

static struct dns_srv *all;

void dns_init(const struct mb_host *host, mb_plugin *self)
{
	H = host;
	P = self;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void free_names(struct dns_srv *s)
{
	for (size_t i = 0; i < s->nnames; i++)
		free(s->names[i].name);
	free(s->names);
	s->names = NULL;
	s->nnames = 0;
}

static void srv_close(struct dns_srv *s)
{
	if (s->w)
		H->fd_unwatch(s->w);
	if (s->up_w)
		H->fd_unwatch(s->up_w);
	if (s->fd >= 0)
		close(s->fd);
	if (s->up_fd >= 0)
		close(s->up_fd);
	free_names(s);
	if (s->prev)
		s->prev->next = s->next;
	else
		all = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->ref)
		*s->ref = NULL;
	free(s);
	H->hold(P, -1);
}

void dns_close_all(void)
{
	while (all)
		srv_close(all);
}

/* Parse the question at offset 12 into name (lower case, no trailing dot). Returns the
 * offset just past QTYPE/QCLASS, or -1. */
static int parse_question(const unsigned char *m, size_t n, char *name, uint16_t *qtype)
{
	size_t off = 12, out = 0;
	for (;;) {
		if (off >= n)
			return -1;
		unsigned len = m[off++];
		if (len == 0)
			break;
		if (len > 63 || off + len > n || out + len + 1 > MAX_NAME)
			return -1; /* compression pointers do not belong in a question */
		if (out)
			name[out++] = '.';
		for (unsigned i = 0; i < len; i++) {
			unsigned char c = m[off + i];
			name[out++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
		}
		off += len;
	}
	name[out] = 0;
	if (off + 4 > n)
		return -1;
	*qtype = (uint16_t)(m[off] << 8 | m[off + 1]);
	return (int)off + 4;
}

static void reply(struct dns_srv *s, const struct sockaddr_in *to, unsigned char *m, size_t qend,
                  int rcode, const struct in_addr *a)
{
	unsigned char out[512];
	if (qend + 16 > sizeof(out))
		return;
	memcpy(out, m, qend);
	out[2] =
	    (unsigned char)(0x80 | (m[2] & 0x01) | (rcode == 0 && a ? 0x04 : 0)); /* QR, RD, AA */
	out[3] = (unsigned char)(0x80 | rcode);                                   /* RA */
	out[4] = 0, out[5] = 1;                                                   /* QDCOUNT */
	out[6] = 0, out[7] = a ? 1 : 0;                                           /* ANCOUNT */
	memset(out + 8, 0, 4);
	size_t len = qend;
	if (a) {
		const unsigned char rr[12] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4 };
		memcpy(out + len, rr, sizeof(rr));
		memcpy(out + len + 12, &a->s_addr, 4);
		len += 16;
	}
	(void)sendto(s->fd, out, len, MSG_DONTWAIT, (const struct sockaddr *)to, sizeof(*to));
}

static void forward(struct dns_srv *s, const struct sockaddr_in *from, unsigned char *m, size_t n)
{
	uint64_t now = now_ms();
	struct pending *slot = NULL, *oldest = &s->pend[0];
	for (int i = 0; i < MAX_PENDING; i++) {
		struct pending *p = &s->pend[i];
		if (p->used && now - p->at_ms > PENDING_MS)
			p->used = false;
		if (!p->used && !slot)
			slot = p;
		if (p->at_ms < oldest->at_ms)
			oldest = p;
	}
	if (!slot)
		slot = oldest;
	uint16_t id;
	if (getrandom(&id, sizeof(id), GRND_NONBLOCK) != sizeof(id))
		id = (uint16_t)(now * 2654435761u);
	slot->used = true;
	slot->new_id = id;
	slot->orig_id = (uint16_t)(m[0] << 8 | m[1]);
	slot->client = *from;
	slot->at_ms = now;
	m[0] = (unsigned char)(id >> 8);
	m[1] = (unsigned char)id;
	const struct sockaddr_in *up = &s->up[s->rr++ % (unsigned)s->nup];
	if (sendto(s->up_fd, m, n, MSG_DONTWAIT, (const struct sockaddr *)up, sizeof(*up)) < 0) {
		slot->used = false;
		s->failed++;
		return;
	}
	s->forwarded++;
}

static void on_query(int fd, uint32_t events, void *ud)
{
	struct dns_srv *s = ud;
	unsigned char m[4096];
	for (int i = 0; i < 64; i++) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(fd, m, sizeof(m), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
		if (n < 0)
			return;
		if (n < 12 || (m[2] & 0x80)) /* short, or a response */
			continue;
		s->queries++;
		char name[MAX_NAME + 1];
		uint16_t qtype = 0;
		int qend = parse_question(m, (size_t)n, name, &qtype);
		int qd = m[4] << 8 | m[5];
		int opcode = (m[2] >> 3) & 0x0f;
		if (qend < 0 || qd != 1) {
			s->failed++;
			reply(s, &from, m, 12, 1, NULL); /* FORMERR, no question echoed */
			continue;
		}
		if (opcode != 0) {
			reply(s, &from, m, (size_t)qend, 4, NULL); /* NOTIMP */
			continue;
		}
		const struct dname *hit = NULL;
		for (size_t k = 0; k < s->nnames; k++)
			if (strcmp(s->names[k].name, name) == 0)
				hit = &s->names[k];
		if (hit) {
			s->answered++;
			reply(s, &from, m, (size_t)qend, 0,
			      qtype == 1 || qtype == 255 ? &hit->a : NULL);
		} else if (s->nup > 0) {
			forward(s, &from, m, (size_t)n);
		} else {
			s->failed++;
			reply(s, &from, m, (size_t)qend, 2, NULL); /* SERVFAIL */
		}
	}
}

static void on_upstream(int fd, uint32_t events, void *ud)
{
	struct dns_srv *s = ud;
	unsigned char m[4096];
	for (int i = 0; i < 64; i++) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(fd, m, sizeof(m), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
		if (n < 0)
			return;
		if (n < 12)
			continue;
		bool known = false;
		for (int k = 0; k < s->nup; k++)
			if (s->up[k].sin_addr.s_addr == from.sin_addr.s_addr &&
			    s->up[k].sin_port == from.sin_port)
				known = true;
		if (!known)
			continue;
		uint16_t id = (uint16_t)(m[0] << 8 | m[1]);
		for (int k = 0; k < MAX_PENDING; k++) {
			struct pending *p = &s->pend[k];
			if (p->used && p->new_id == id) {
				p->used = false;
				m[0] = (unsigned char)(p->orig_id >> 8);
				m[1] = (unsigned char)p->orig_id;
				(void)sendto(s->fd, m, (size_t)n, MSG_DONTWAIT,
				             (const struct sockaddr *)&p->client,
				             sizeof(p->client));
				break;
			}
		}
	}
}

/* --- Lua ---------------------------------------------------------------------------- */

struct dbox {
	struct dns_srv *s;
};

static struct dns_srv *check_srv(lua_State *L)
{
	struct dbox *b = luaL_checkudata(L, 1, DNS_MT);
	if (!b->s)
		luaL_error(L, "dns server is closed");
	return b->s;
}

static int push_fail(lua_State *L, int code, const char *fmt, const char *arg)
{
	mb_err e = { .code = code };
	snprintf(e.msg, sizeof(e.msg), fmt, arg);
	return H->lua_fail(L, &e);
}

/* [-1|2, +1|3, e] */
int dns_l_start(lua_State *L)
{
	const char *ip = luaL_checkstring(L, 1);
	lua_Integer port = luaL_optinteger(L, 2, 53);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		return luaL_argerror(L, 1, "not an IPv4 address");
	struct dbox *b = lua_newuserdatauv(L, sizeof(*b), 0);
	b->s = NULL;
	luaL_setmetatable(L, DNS_MT);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int up = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || up < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		if (up >= 0)
			close(up);
		char m[128];
		snprintf(m, sizeof(m), "%s:%d: %s", ip, (int)port, strerror(e));
		return push_fail(L, -e, "dns: bind %s", m);
	}
	struct dns_srv *s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		close(up);
		return luaL_error(L, "out of memory");
	}
	s->fd = fd;
	s->up_fd = up;
	s->w = H->fd_watch(fd, EPOLLIN, on_query, s, NULL);
	s->up_w = H->fd_watch(up, EPOLLIN, on_upstream, s, NULL);
	s->next = all;
	if (all)
		all->prev = s;
	all = s;
	H->hold(P, +1);
	if (!s->w || !s->up_w) {
		srv_close(s);
		return push_fail(L, -EIO, "dns: %s", "cannot watch the socket");
	}
	b->s = s;
	s->ref = &b->s;
	return 1;
}

/* [-2, +1, e] */
static int l_set(lua_State *L)
{
	struct dns_srv *s = check_srv(L);
	luaL_checktype(L, 2, LUA_TTABLE);
	size_t n = 0;
	lua_pushnil(L);
	while (lua_next(L, 2)) {
		n++;
		lua_pop(L, 1);
	}
	struct dname *v = calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return luaL_error(L, "out of memory");
	size_t i = 0;
	lua_pushnil(L);
	while (lua_next(L, 2)) {
		const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
		const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
		struct in_addr ad;
		if (k && a && strlen(k) <= MAX_NAME && inet_pton(AF_INET, a, &ad) == 1) {
			v[i].name = strdup(k);
			v[i].a = ad;
			for (char *c = v[i].name; c && *c; c++)
				if (*c >= 'A' && *c <= 'Z')
					*c = (char)(*c + 32);
			if (v[i].name)
				i++;
		}
		lua_pop(L, 1);
	}
	free_names(s);
	s->names = v;
	s->nnames = i;
	lua_pushinteger(L, (lua_Integer)i);
	return 1;
}

/* [-2, +1, e] */
static int l_upstreams(lua_State *L)
{
	struct dns_srv *s = check_srv(L);
	luaL_checktype(L, 2, LUA_TTABLE);
	s->nup = 0;
	for (lua_Integer i = 1; s->nup < MAX_UP; i++) {
		if (lua_rawgeti(L, 2, i) != LUA_TSTRING) {
			lua_pop(L, 1);
			break;
		}
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(53) };
		if (inet_pton(AF_INET, lua_tostring(L, -1), &a.sin_addr) == 1)
			s->up[s->nup++] = a;
		lua_pop(L, 1);
	}
	lua_pushinteger(L, s->nup);
	return 1;
}

/* [-1, +1, e] */
static int l_dstats(lua_State *L)
{
	struct dns_srv *s = check_srv(L);
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, (lua_Integer)s->queries);
	lua_setfield(L, -2, "queries");
	lua_pushinteger(L, (lua_Integer)s->answered);
	lua_setfield(L, -2, "answered");
	lua_pushinteger(L, (lua_Integer)s->forwarded);
	lua_setfield(L, -2, "forwarded");
	lua_pushinteger(L, (lua_Integer)s->failed);
	lua_setfield(L, -2, "failed");
	return 1;
}

/* [-1, +0, -] */
static int l_dclose(lua_State *L)
{
	struct dbox *b = luaL_checkudata(L, 1, DNS_MT);
	if (b->s)
		srv_close(b->s);
	b->s = NULL;
	return 0;
}

void dns_register(lua_State *L)
{
	static const luaL_Reg methods[] = { { "set", l_set },
		                            { "upstreams", l_upstreams },
		                            { "stats", l_dstats },
		                            { "close", l_dclose },
		                            { NULL, NULL } };
	static const luaL_Reg gc[] = { { "__gc", l_dclose }, { NULL, NULL } };
	luaL_newmetatable(L, DNS_MT);
	lua_newtable(L);
	H->lua_setfuncs(P, L, methods);
	lua_setfield(L, -2, "__index");
	H->lua_setfuncs(P, L, gc);
	lua_pop(L, 1);
}
