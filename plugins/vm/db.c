/* SQLite records of the vm plugin (table vm_vms, migrated as component "vm"). */
#include "vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const steps[] = {
	"CREATE TABLE vm_vms ("
	"  id TEXT PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  spec TEXT NOT NULL,"  /* normalised spec, JSON */
	"  token TEXT NOT NULL," /* the agent secret: never returned, never logged */
	"  state TEXT NOT NULL,"
	"  pid INTEGER NOT NULL DEFAULT 0,"
	"  pid_start INTEGER NOT NULL DEFAULT 0," /* /proc/<pid>/stat starttime (PID reuse) */
	"  accel TEXT NOT NULL DEFAULT '',"
	"  agent_addr TEXT NOT NULL DEFAULT '',"
	"  created REAL NOT NULL,"
	"  started REAL,"
	"  stopped REAL,"
	"  exit TEXT," /* JSON */
	"  error TEXT,"
	"  boots INTEGER NOT NULL DEFAULT 0"
	")",
};

int vdb_migrate(mb_err *err)
{
	return G.host->db_migrate("vm", steps, (int)(sizeof(steps) / sizeof(steps[0])), err);
}

static int db_fail(mb_err *err, const char *what)
{
	sqlite3 *db = G.host->db();
	int code = sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_UNIQUE ||
	                   sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_PRIMARYKEY
	               ? -EEXIST
	               : -EIO;
	return mb_err_set(err, code, "%s: %s", what, sqlite3_errmsg(db));
}

static void bind_opt_real(sqlite3_stmt *st, int i, double v)
{
	if (v > 0)
		sqlite3_bind_double(st, i, v);
	else
		sqlite3_bind_null(st, i);
}

/* Bind every column but id (1) in the order of the statements below. */
static void bind_all(sqlite3_stmt *st, const struct vm *v, char *spec, char *exitj)
{
	sqlite3_bind_text(st, 1, v->id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, v->name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, spec, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, v->token, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, vm_state_name(v->state), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, v->pid);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)v->pid_start);
	sqlite3_bind_text(st, 8, v->accel, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 9, v->agent_addr, -1, SQLITE_TRANSIENT);
	sqlite3_bind_double(st, 10, v->created);
	bind_opt_real(st, 11, v->started);
	bind_opt_real(st, 12, v->stopped);
	if (exitj)
		sqlite3_bind_text(st, 13, exitj, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 13);
	if (v->error)
		sqlite3_bind_text(st, 14, v->error, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 14);
	sqlite3_bind_int(st, 15, v->boots);
}

static int write_row(const struct vm *v, bool insert, mb_err *err)
{
	sqlite3 *db = G.host->db();
	const char *sql =
	    insert
	        ? "INSERT INTO vm_vms(id,name,spec,token,state,pid,pid_start,accel,agent_addr,"
	          "created,started,stopped,exit,error,boots) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
	        : "UPDATE vm_vms SET name=?2,spec=?3,token=?4,state=?5,pid=?6,pid_start=?7,"
	          "accel=?8,agent_addr=?9,created=?10,started=?11,stopped=?12,exit=?13,"
	          "error=?14,boots=?15 WHERE id=?1";
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_fail(err, "prepare");
	char *spec = json_dumps(v->spec, JSON_COMPACT);
	char *exitj = v->exit ? json_dumps(v->exit, JSON_COMPACT) : NULL;
	bind_all(st, v, spec ? spec : "{}", exitj);
	int rc = sqlite3_step(st);
	free(spec);
	free(exitj);
	int r = 0;
	if (rc != SQLITE_DONE)
		r = db_fail(err, insert ? "insert vm" : "update vm");
	sqlite3_finalize(st);
	return r;
}

int vdb_insert(const struct vm *v, mb_err *err)
{
	return write_row(v, true, err);
}

int vdb_update(const struct vm *v)
{
	mb_err err = { 0 };
	int r = write_row(v, false, &err);
	if (r < 0)
		vm_log(MB_LOG_ERROR, "vm %s: saving the record failed: %s", v->id, err.msg);
	return r;
}

int vdb_delete(const char *id, mb_err *err)
{
	sqlite3 *db = G.host->db();
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "DELETE FROM vm_vms WHERE id=?", -1, &st, NULL) != SQLITE_OK)
		return db_fail(err, "prepare");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : db_fail(err, "delete vm");
}

static const char *col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? (const char *)t : "";
}

int vdb_load_all(mb_err *err)
{
	sqlite3 *db = G.host->db();
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db,
	                       "SELECT id,name,spec,token,state,pid,pid_start,accel,agent_addr,"
	                       "created,started,stopped,exit,error,boots FROM vm_vms ORDER BY "
	                       "created DESC",
	                       -1, &st, NULL) != SQLITE_OK)
		return db_fail(err, "prepare");
	struct vm **tail = &G.vms;
	while (*tail)
		tail = &(*tail)->next;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct vm *v = calloc(1, sizeof(*v));
		if (!v)
			break;
		v->pidfd = -1;
		snprintf(v->id, sizeof(v->id), "%s", col_text(st, 0));
		snprintf(v->name, sizeof(v->name), "%s", col_text(st, 1));
		v->spec = json_loads(col_text(st, 2), 0, NULL);
		if (!v->spec)
			v->spec = json_object();
		snprintf(v->token, sizeof(v->token), "%s", col_text(st, 3));
		int s = vm_state_parse(col_text(st, 4));
		v->state = s < 0 ? VS_ERROR : (enum vm_state)s;
		v->pid = (pid_t)sqlite3_column_int64(st, 5);
		v->pid_start = (uint64_t)sqlite3_column_int64(st, 6);
		snprintf(v->accel, sizeof(v->accel), "%s", col_text(st, 7));
		snprintf(v->agent_addr, sizeof(v->agent_addr), "%s", col_text(st, 8));
		v->created = sqlite3_column_double(st, 9);
		v->started = sqlite3_column_double(st, 10);
		v->stopped = sqlite3_column_double(st, 11);
		if (sqlite3_column_type(st, 12) != SQLITE_NULL)
			v->exit = json_loads(col_text(st, 12), 0, NULL);
		if (sqlite3_column_type(st, 13) != SQLITE_NULL)
			v->error = strdup(col_text(st, 13));
		v->boots = sqlite3_column_int(st, 14);
		*tail = v;
		tail = &v->next;
	}
	int r = rc == SQLITE_DONE ? 0 : db_fail(err, "load vms");
	sqlite3_finalize(st);
	return r;
}
