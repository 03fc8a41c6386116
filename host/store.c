#include "store.h"

#include <errno.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define STMT_CACHE      96
#define BUSY_TIMEOUT_MS 50 /* never stall the loop for long on an outside lock */

struct cached {
	char *sql;
	sqlite3_stmt *st;
	uint64_t used;
};

static struct {
	sqlite3 *db;
	struct cached cache[STMT_CACHE];
	uint64_t tick;
	int tx_depth;
} S;

/* Core schema, applied in order by PRAGMA user_version. */
static const char *const core_steps[] = {
	/* 1 */
	"CREATE TABLE schema_components(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
	" STRICT;"
	"CREATE TABLE events(id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,"
	" type TEXT NOT NULL, data TEXT) STRICT;"
	"CREATE INDEX events_type ON events(type, id);"
	"CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT) STRICT;",
};

sqlite3 *store_db(void)
{
	return S.db;
}

int store_error(mb_err *err, const char *what)
{
	int rc = sqlite3_extended_errcode(S.db);
	int code;
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		code = -EAGAIN;
		break;
	case SQLITE_CONSTRAINT:
		code = -EEXIST;
		break;
	case SQLITE_FULL:
		code = -ENOSPC;
		break;
	case SQLITE_NOMEM:
		code = -ENOMEM;
		break;
	case SQLITE_ERROR:
	case SQLITE_MISMATCH:
	case SQLITE_RANGE:
		code = -EINVAL;
		break;
	default:
		code = -EIO;
	}
	return mb_err_set(err, code, "%s: %s", what, sqlite3_errmsg(S.db));
}

int store_exec(const char *sql, mb_err *err)
{
	char *msg = NULL;
	if (sqlite3_exec(S.db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		int r = store_error(err, "sql");
		sqlite3_free(msg);
		return r;
	}
	return 0;
}

sqlite3_stmt *store_prepare(const char *sql, mb_err *err)
{
	struct cached *slot = &S.cache[0];
	for (int i = 0; i < STMT_CACHE; i++) {
		struct cached *c = &S.cache[i];
		if (c->sql && strcmp(c->sql, sql) == 0) {
			c->used = ++S.tick;
			sqlite3_reset(c->st);
			sqlite3_clear_bindings(c->st);
			return c->st;
		}
		if (!c->sql || c->used < slot->used)
			slot = c;
		if (!c->sql)
			break;
	}
	sqlite3_stmt *st = NULL;
	const char *tail = NULL;
	if (sqlite3_prepare_v3(S.db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail) != SQLITE_OK) {
		store_error(err, "sql");
		return NULL;
	}
	if (!st) {
		mb_err_set(err, -EINVAL, "sql: empty statement");
		return NULL;
	}
	while (tail && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == ';'))
		tail++;
	if (tail && *tail) {
		sqlite3_finalize(st);
		mb_err_set(err, -EINVAL, "sql: only one statement allowed here (use db.exec)");
		return NULL;
	}
	if (slot->sql) {
		sqlite3_finalize(slot->st);
		free(slot->sql);
	}
	slot->sql = xstrdup(sql);
	slot->st = st;
	slot->used = ++S.tick;
	return st;
}

int store_tx_depth(void)
{
	return S.tx_depth;
}

int store_tx_begin(mb_err *err)
{
	char sql[64];
	if (S.tx_depth == 0)
		snprintf(sql, sizeof(sql), "BEGIN IMMEDIATE");
	else
		snprintf(sql, sizeof(sql), "SAVEPOINT sp%d", S.tx_depth);
	int r = store_exec(sql, err);
	if (r == 0)
		S.tx_depth++;
	return r;
}

int store_tx_commit(mb_err *err)
{
	char sql[64];
	if (S.tx_depth == 1)
		snprintf(sql, sizeof(sql), "COMMIT");
	else
		snprintf(sql, sizeof(sql), "RELEASE sp%d", S.tx_depth - 1);
	int r = store_exec(sql, err);
	if (r == 0)
		S.tx_depth--;
	return r;
}

void store_tx_rollback(void)
{
	char sql[64];
	if (S.tx_depth == 0)
		return;
	if (S.tx_depth == 1) {
		snprintf(sql, sizeof(sql), "ROLLBACK");
	} else {
		snprintf(sql, sizeof(sql), "ROLLBACK TO sp%d; RELEASE sp%d", S.tx_depth - 1,
		         S.tx_depth - 1);
	}
	mb_err err;
	if (store_exec(sql, &err) < 0)
		log_error("rollback failed: %s", err.msg);
	S.tx_depth--;
}

static int get_component_version(const char *component, int *version, mb_err *err)
{
	sqlite3_stmt *st =
	    store_prepare("SELECT version FROM schema_components WHERE component = ?", err);
	if (!st)
		return err ? err->code : -EIO;
	sqlite3_bind_text(st, 1, component, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(st);
	*version = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return store_error(err, "schema version");
	return 0;
}

int store_migrate(const char *component, const char *const steps[], int nsteps, mb_err *err)
{
	int version;
	int r = get_component_version(component, &version, err);
	if (r < 0)
		return r;
	if (version > nsteps)
		return mb_err_set(err, -EPROTO,
		                  "%s: the database schema is version %d, newer than this moonbox "
		                  "knows (%d); refusing to run against it",
		                  component, version, nsteps);
	for (int v = version; v < nsteps; v++) {
		if ((r = store_tx_begin(err)) < 0)
			return r;
		if ((r = store_exec(steps[v], err)) < 0) {
			store_tx_rollback();
			return mb_err_set(err, r, "%s: migration to version %d failed: %s",
			                  component, v + 1, err ? err->msg : "");
		}
		sqlite3_stmt *st =
		    store_prepare("INSERT INTO schema_components(component, version) VALUES(?, ?) "
		                  "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
		                  err);
		if (!st) {
			store_tx_rollback();
			return err ? err->code : -EIO;
		}
		sqlite3_bind_text(st, 1, component, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int(st, 2, v + 1);
		if (sqlite3_step(st) != SQLITE_DONE) {
			r = store_error(err, "schema version");
			sqlite3_reset(st);
			store_tx_rollback();
			return r;
		}
		sqlite3_reset(st);
		if ((r = store_tx_commit(err)) < 0) {
			store_tx_rollback();
			return r;
		}
		log_info("store: %s schema migrated to version %d", component, v + 1);
	}
	return nsteps;
}

static int core_migrate(mb_err *err)
{
	int version = 0;
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(S.db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return store_error(err, "user_version");
	if (sqlite3_step(st) == SQLITE_ROW)
		version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	int n = (int)ARRAY_SIZE(core_steps);
	if (version > n)
		return mb_err_set(err, -EPROTO,
		                  "the database schema is version %d, newer than this moonbox "
		                  "knows (%d)",
		                  version, n);
	for (int v = version; v < n; v++) {
		char sql[64];
		int r;
		if ((r = store_exec("BEGIN IMMEDIATE", err)) < 0)
			return r;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
		if ((r = store_exec(core_steps[v], err)) < 0 || (r = store_exec(sql, err)) < 0 ||
		    (r = store_exec("COMMIT", err)) < 0) {
			store_exec("ROLLBACK", NULL);
			return r;
		}
	}
	return 0;
}

int store_open(const char *path, mb_err *err)
{
	int rc = sqlite3_open_v2(path, &S.db,
	                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
	                             SQLITE_OPEN_EXRESCODE,
	                         NULL);
	if (rc != SQLITE_OK) {
		int r = mb_err_set(err, -EIO, "cannot open %s: %s", path,
		                   S.db ? sqlite3_errmsg(S.db) : sqlite3_errstr(rc));
		sqlite3_close(S.db);
		S.db = NULL;
		return r;
	}
	sqlite3_busy_timeout(S.db, BUSY_TIMEOUT_MS);
	sqlite3_db_config(S.db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	sqlite3_stmt *st = NULL;
	const char *mode = NULL;
	if (sqlite3_prepare_v2(S.db, "PRAGMA journal_mode=WAL", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		mode = (const char *)sqlite3_column_text(st, 0);
	if (!mode || strcmp(mode, "wal") != 0) {
		sqlite3_finalize(st);
		int r = mb_err_set(err, -EIO, "cannot switch %s to WAL mode", path);
		store_close();
		return r;
	}
	sqlite3_finalize(st);
	int r;
	if ((r = store_exec("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", err)) < 0 ||
	    (r = core_migrate(err)) < 0) {
		store_close();
		return r;
	}
	return 0;
}

void store_close(void)
{
	for (int i = 0; i < STMT_CACHE; i++) {
		if (S.cache[i].sql) {
			sqlite3_finalize(S.cache[i].st);
			free(S.cache[i].sql);
		}
		S.cache[i] = (struct cached){ 0 };
	}
	if (S.db) {
		if (sqlite3_close(S.db) != SQLITE_OK)
			log_error("store: close: %s", sqlite3_errmsg(S.db));
	}
	S.db = NULL;
	S.tx_depth = 0;
}
