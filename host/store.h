/* The SQLite store: one connection, owned by the loop thread. */
#ifndef MB_STORE_H
#define MB_STORE_H

#include "moonbox/plugin.h"

/* Open (create) the database at path, WAL mode, run the core migrations. */
int store_open(const char *path, mb_err *err);
void store_close(void);
sqlite3 *store_db(void);
/* Apply steps for a component; see struct mb_host.db_migrate. Returns the version. */
int store_migrate(const char *component, const char *const steps[], int nsteps, mb_err *err);
/* A cached prepared statement (reset, bindings cleared). Borrowed: do not finalize;
 * valid until the next store_prepare() call that evicts it (do not hold it across a
 * wait). NULL with err on a syntax error. */
sqlite3_stmt *store_prepare(const char *sql, mb_err *err);
/* Run SQL without results (may hold several statements). */
int store_exec(const char *sql, mb_err *err);
/* Fill err from the connection's last error; returns the negative errno equivalent. */
int store_error(mb_err *err, const char *what);
/* Transaction nesting depth (0 = none). */
int store_tx_depth(void);
int store_tx_begin(mb_err *err);
int store_tx_commit(mb_err *err);
void store_tx_rollback(void);

#endif
