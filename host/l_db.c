/*
 * Lua module `db`: the daemon's SQLite store.
 *   db.query(sql, ...)   -> { row, ... }          rows are {column = value}
 *   db.row(sql, ...)     -> row | nil             (nil, msg, code on failure)
 *   db.run(sql, ...)     -> changes, last_insert_rowid
 *   db.exec(sql)         -> true                  (several statements, no parameters)
 *   db.transaction(fn, ...) -> fn's results       BEGIN IMMEDIATE/COMMIT, ROLLBACK if fn
 *                                                  raises (re-raised); fn cannot wait
 *   db.migrate(component, {sql, sql, ...}) -> version
 *   db.prepare(sql)      -> stmt with :query(...), :row(...), :run(...), :close()
 * Parameters are positional (?), or named (:name) when the only argument is a table.
 * Lua integer -> INTEGER, float -> REAL, string -> TEXT, boolean -> 0/1,
 * nil/json.null -> NULL; db.blob(s) binds a BLOB. NULL columns are absent from rows.
 */
#include "bindings.h"
#include "json.h"
#include "store.h"

#define STMT_MT "moonbox.db.stmt"
#define BLOB_MT "moonbox.db.blob"

struct ustmt {
	sqlite3_stmt *st;
};

static int bind_one(lua_State *L, sqlite3_stmt *st, int col, int idx)
{
	int rc;
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		rc = sqlite3_bind_null(st, col);
		break;
	case LUA_TBOOLEAN:
		rc = sqlite3_bind_int(st, col, lua_toboolean(L, idx));
		break;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			rc = sqlite3_bind_int64(st, col, (sqlite3_int64)lua_tointeger(L, idx));
		else
			rc = sqlite3_bind_double(st, col, lua_tonumber(L, idx));
		break;
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		rc = sqlite3_bind_text64(st, col, s, len, SQLITE_TRANSIENT, SQLITE_UTF8);
		break;
	}
	case LUA_TLIGHTUSERDATA:
		if (json_isnull(L, idx)) {
			rc = sqlite3_bind_null(st, col);
			break;
		}
		return luaL_error(L, "db: cannot bind a light userdata (parameter %d)", col);
	case LUA_TUSERDATA: {
		size_t *blob = luaL_testudata(L, idx, BLOB_MT);
		if (blob) {
			lua_getiuservalue(L, idx, 1);
			size_t len;
			const char *s = lua_tolstring(L, -1, &len);
			rc = sqlite3_bind_blob64(st, col, s, len, SQLITE_TRANSIENT);
			lua_pop(L, 1);
			break;
		}
	}
		/* fallthrough */
	default:
		return luaL_error(L,
		                  "db: cannot bind a %s (parameter %d); encode tables with "
		                  "json.encode",
		                  luaL_typename(L, idx), col);
	}
	if (rc != SQLITE_OK)
		return luaL_error(L, "db: bind parameter %d: %s", col, sqlite3_errstr(rc));
	return 0;
}

/* Bind the arguments from index first to the top. Misuse (count, names) raises. */
static void bind_args(lua_State *L, sqlite3_stmt *st, int first)
{
	int top = lua_gettop(L);
	int nparams = sqlite3_bind_parameter_count(st);
	if (top == first && lua_type(L, first) == LUA_TTABLE) {
		for (int i = 1; i <= nparams; i++) {
			const char *name = sqlite3_bind_parameter_name(st, i);
			if (!name)
				luaL_error(L, "db: statement mixes positional parameters with a "
				              "named-parameter table");
			lua_getfield(L, first, name + 1);
			bind_one(L, st, i, -1);
			lua_pop(L, 1);
		}
		return;
	}
	int nargs = top - first + 1;
	if (nargs < 0)
		nargs = 0;
	if (nargs != nparams)
		luaL_error(L, "db: statement takes %d parameter(s), %d given", nparams, nargs);
	for (int i = 0; i < nargs; i++)
		bind_one(L, st, i + 1, first + i);
}

static void push_column(lua_State *L, sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER:
		lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
		break;
	case SQLITE_FLOAT:
		lua_pushnumber(L, sqlite3_column_double(st, i));
		break;
	case SQLITE_TEXT:
		lua_pushlstring(L, (const char *)sqlite3_column_text(st, i),
		                (size_t)sqlite3_column_bytes(st, i));
		break;
	case SQLITE_BLOB:
		lua_pushlstring(L, sqlite3_column_blob(st, i), (size_t)sqlite3_column_bytes(st, i));
		break;
	default:
		lua_pushnil(L);
	}
}

static void push_row(lua_State *L, sqlite3_stmt *st)
{
	int n = sqlite3_column_count(st);
	lua_createtable(L, 0, n);
	for (int i = 0; i < n; i++) {
		if (sqlite3_column_type(st, i) == SQLITE_NULL)
			continue;
		push_column(L, st, i);
		lua_setfield(L, -2, sqlite3_column_name(st, i));
	}
}

enum mode { M_QUERY, M_ROW, M_RUN };

/* Run a prepared statement with the arguments from `first` on; push results per mode. */
static int run_stmt(lua_State *L, sqlite3_stmt *st, int first, enum mode mode)
{
	bind_args(L, st, first);
	int n = 0, rc;
	if (mode == M_QUERY)
		lua_newtable(L);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (mode == M_QUERY) {
			push_row(L, st);
			lua_rawseti(L, -2, ++n);
		} else if (mode == M_ROW) {
			push_row(L, st);
			sqlite3_reset(st);
			return 1;
		}
	}
	if (rc != SQLITE_DONE) {
		mb_err err;
		store_error(&err, "db");
		sqlite3_reset(st);
		if (mode == M_QUERY)
			lua_pop(L, 1);
		return lua_fail(L, &err);
	}
	sqlite3_reset(st);
	if (mode == M_ROW) {
		lua_pushnil(L);
		return 1;
	}
	if (mode == M_RUN) {
		lua_pushinteger(L, sqlite3_changes(store_db()));
		lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(store_db()));
		return 2;
	}
	return 1;
}

static int cached_run(lua_State *L, enum mode mode)
{
	const char *sql = luaL_checkstring(L, 1);
	mb_err err = { 0 };
	sqlite3_stmt *st = store_prepare(sql, &err);
	if (!st)
		return luaL_error(L, "db: %s", err.msg); /* a bad statement is a script bug */
	return run_stmt(L, st, 2, mode);
}

/* [-(1+n), +1|3, e] */
static int l_query(lua_State *L)
{
	return cached_run(L, M_QUERY);
}

/* [-(1+n), +1|3, e] */
static int l_row(lua_State *L)
{
	return cached_run(L, M_ROW);
}

/* [-(1+n), +2|3, e] */
static int l_run(lua_State *L)
{
	return cached_run(L, M_RUN);
}

/* [-1, +1|3, e] */
static int l_exec(lua_State *L)
{
	const char *sql = luaL_checkstring(L, 1);
	mb_err err = { 0 };
	if (store_exec(sql, &err) < 0)
		return lua_fail(L, &err);
	lua_pushboolean(L, 1);
	return 1;
}

/* db.transaction(fn, ...) -> results of fn. The call is not yieldable: a wait inside
 * raises, so no other task can run statements inside our transaction. */
static int l_transaction(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	mb_err err = { 0 };
	if (store_tx_begin(&err) < 0)
		return lua_fail(L, &err);
	int nargs = lua_gettop(L) - 1;
	int base = 1;
	if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
		store_tx_rollback();
		return lua_error(L);
	}
	if (store_tx_commit(&err) < 0) {
		store_tx_rollback();
		return lua_fail(L, &err);
	}
	return lua_gettop(L) - base + 1;
}

/* db.migrate(component, {step1, step2, ...}) -> version | nil, msg, code */
static int l_migrate(lua_State *L)
{
	const char *component = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TTABLE);
	int n = (int)luaL_len(L, 2);
	const char **steps = xcalloc((size_t)n + 1, sizeof(*steps));
	for (int i = 1; i <= n; i++) {
		lua_rawgeti(L, 2, i);
		steps[i - 1] = lua_tostring(L, -1);
		if (!steps[i - 1]) {
			free(steps);
			return luaL_error(L, "db.migrate: step %d is not a string", i);
		}
		lua_pop(L, 1); /* still referenced by the table */
	}
	mb_err err = { 0 };
	int r = store_migrate(component, steps, n, &err);
	free(steps);
	if (r < 0)
		return lua_fail(L, &err);
	lua_pushinteger(L, r);
	return 1;
}

/* db.blob(s) -> a value that binds as a BLOB */
static int l_blob(lua_State *L)
{
	luaL_checkstring(L, 1);
	lua_newuserdatauv(L, 1, 1);
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);
	luaL_setmetatable(L, BLOB_MT);
	return 1;
}

/* --- explicit prepared statements --- */

static struct ustmt *check_stmt(lua_State *L)
{
	struct ustmt *u = luaL_checkudata(L, 1, STMT_MT);
	if (!u->st)
		luaL_error(L, "db: statement is closed");
	return u;
}

static int l_prepare(lua_State *L)
{
	const char *sql = luaL_checkstring(L, 1);
	struct ustmt *u = lua_newuserdatauv(L, sizeof(*u), 0);
	u->st = NULL;
	luaL_setmetatable(L, STMT_MT);
	if (sqlite3_prepare_v2(store_db(), sql, -1, &u->st, NULL) != SQLITE_OK) {
		mb_err err;
		store_error(&err, "db.prepare");
		return luaL_error(L, "%s", err.msg);
	}
	return 1;
}

static int st_query(lua_State *L)
{
	return run_stmt(L, check_stmt(L)->st, 2, M_QUERY);
}

static int st_row(lua_State *L)
{
	return run_stmt(L, check_stmt(L)->st, 2, M_ROW);
}

static int st_run(lua_State *L)
{
	return run_stmt(L, check_stmt(L)->st, 2, M_RUN);
}

static int st_close(lua_State *L)
{
	struct ustmt *u = luaL_checkudata(L, 1, STMT_MT);
	if (u->st)
		sqlite3_finalize(u->st);
	u->st = NULL;
	return 0;
}

static const luaL_Reg stmt_methods[] = {
	{ "query", st_query }, { "row", st_row },       { "run", st_run }, { "close", st_close },
	{ "__gc", st_close },  { "__close", st_close }, { NULL, NULL },
};

static const luaL_Reg funcs[] = {
	{ "query", l_query },
	{ "row", l_row },
	{ "run", l_run },
	{ "exec", l_exec },
	{ "transaction", l_transaction },
	{ "migrate", l_migrate },
	{ "prepare", l_prepare },
	{ "blob", l_blob },
	{ NULL, NULL },
};

int luaopen_mb_db(lua_State *L)
{
	luaL_newmetatable(L, STMT_MT);
	luaL_setfuncs(L, stmt_methods, 0);
	lua_pushvalue(L, -1);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	luaL_newmetatable(L, BLOB_MT);
	lua_pop(L, 1);
	luaL_newlib(L, funcs);
	return 1;
}
