/*
 * example — the smallest useful moonbox plugin, and the template for new ones.
 *
 * It registers the Lua module `example`:
 *   example.greet(name)          -> "hello, <name>"             (plain function)
 *   example.add(a, b)            -> a + b (integers)            (misuse raises)
 *   example.later(seconds, v)    -> v, after waiting            (a yielding primitive)
 *   example.hold() / example.release()                          (resources: unload is
 *                                                                refused while held)
 *   example.stats()              -> {greetings=, held=}
 *
 * It is built against the installed header only (pkg-config moonbox), like any
 * third-party plugin. See plugins/README.md for the guide.
 */
#include <moonbox/plugin.h>

#include <stdlib.h>
#include <string.h>

static const struct mb_host *host; /* the host function table, valid until fini */
static mb_plugin *self;
static long greetings;
static int held;

/* example.greet(name) -> string  [-1, +1, e] */
static int l_greet(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	greetings++;
	lua_pushfstring(L, "hello, %s", name);
	return 1;
}

/* example.add(a, b) -> integer  [-2, +1, e] */
static int l_add(lua_State *L)
{
	lua_Integer a = luaL_checkinteger(L, 1);
	lua_Integer b = luaL_checkinteger(L, 2);
	lua_pushinteger(L, a + b);
	return 1;
}

/* One pending example.later(): owned by the plugin from arm to completion/cancel. */
struct later {
	mb_wait *wait;
	mb_timer *timer;
	int value_ref;
};

static void later_fire(void *ud)
{
	struct later *l = ud;
	lua_State *T = host->wait_thread(l->wait);
	lua_rawgeti(T, LUA_REGISTRYINDEX, l->value_ref);
	luaL_unref(T, LUA_REGISTRYINDEX, l->value_ref);
	mb_wait *w = l->wait;
	free(l);
	host->wait_done(w, 1); /* the task resumes from the loop with the value */
}

/* The task was cancelled before the timer fired: release everything. */
static void later_cancel(void *ud)
{
	struct later *l = ud;
	host->timer_stop(l->timer);
	luaL_unref(host->lua_main(), LUA_REGISTRYINDEX, l->value_ref);
	free(l);
}

/* example.later(seconds, value) -> value  [-2, +1, e]
 * The house pattern: check arguments (raise on misuse) -> may we wait? -> register the
 * cleanup -> arm the event -> yield. */
static int l_later(lua_State *L)
{
	double s = luaL_checknumber(L, 1);
	luaL_checkany(L, 2);
	if (s < 0 || s > 3600)
		return luaL_argerror(L, 1, "seconds must be in 0..3600");
	host->wait_check(L); /* raises (outside a task, say) before we allocate anything */
	struct later *l = calloc(1, sizeof(*l));
	if (!l)
		return luaL_error(L, "out of memory");
	lua_pushvalue(L, 2);
	l->value_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	l->wait = host->wait_begin(L, later_cancel, l);
	l->timer = host->timer_start((uint64_t)(s * 1000), later_fire, l);
	return host->wait_yield(L, l->wait, NULL, 0);
}

static int l_hold(lua_State *L)
{
	held++;
	host->hold(self, +1);
	lua_pushinteger(L, held);
	return 1;
}

static int l_release(lua_State *L)
{
	if (held == 0) {
		mb_err err;
		mb_err_set(&err, -EINVAL, "nothing is held");
		return host->lua_fail(L, &err); /* operational: nil, msg, code */
	}
	held--;
	host->hold(self, -1);
	lua_pushinteger(L, held);
	return 1;
}

static int l_stats(lua_State *L)
{
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, greetings);
	lua_setfield(L, -2, "greetings");
	lua_pushinteger(L, held);
	lua_setfield(L, -2, "held");
	return 1;
}

static const luaL_Reg funcs[] = {
	{ "greet", l_greet },     { "add", l_add },     { "later", l_later }, { "hold", l_hold },
	{ "release", l_release }, { "stats", l_stats }, { NULL, NULL },
};

static int example_init(const struct mb_host *h, mb_plugin *p, mb_err *err)
{
	host = h;
	self = p;
	greetings = 0;
	held = 0;
	if (!MB_HOST_HAS(h, wait_check))
		return mb_err_set(err, -ENOTSUP, "this moonbox is too old for the example plugin");
	int r = h->lua_module(p, "example", funcs, err);
	if (r < 0)
		return r;
	h->log(p, MB_LOG_INFO, "example plugin ready");
	return 0;
}

static void example_fini(mb_plugin *p)
{
	(void)p;
	host->log(self, MB_LOG_INFO, "example plugin unloaded after %ld greeting(s)", greetings);
}

static json_t *example_info(mb_plugin *p)
{
	(void)p;
	return json_pack("{s:I,s:i}", "greetings", (json_int_t)greetings, "held", held);
}

MB_PLUGIN_DEFINE("example", "1.0", "a tiny example plugin (template for new plugins)", example_init,
                 example_fini, example_info)
