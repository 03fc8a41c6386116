/* The SQLite store: WAL, core schema, component migrations, statement cache, nesting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unistd.h>

#include "store.h"

static char dir[64];

static int setup(void **state)
{
	strcpy(dir, "/tmp/mb-store-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	char path[128];
	snprintf(path, sizeof(path), "%s/t.db", dir);
	return store_open(path, NULL);
}

static int teardown(void **state)
{
	store_close();
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd);
}

static int scalar(const char *sql)
{
	sqlite3_stmt *st = store_prepare(sql, NULL);
	assert_non_null(st);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	int v = sqlite3_column_int(st, 0);
	sqlite3_reset(st);
	return v;
}

static void wal_and_core_schema(void **state)
{
	sqlite3_stmt *st = store_prepare("PRAGMA journal_mode", NULL);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_reset(st);
	assert_int_equal(scalar("PRAGMA user_version"), 1);
	assert_int_equal(scalar("SELECT count(*) FROM events"), 0);
}

static void component_migrations_are_idempotent(void **state)
{
	const char *steps[] = { "CREATE TABLE a(x INTEGER)", "ALTER TABLE a ADD COLUMN y TEXT" };
	mb_err err = { 0 };
	assert_int_equal(store_migrate("t", steps, 1, &err), 1);
	assert_int_equal(store_migrate("t", steps, 2, &err), 2);
	assert_int_equal(store_migrate("t", steps, 2, &err), 2);
	assert_int_equal(store_exec("INSERT INTO a(x, y) VALUES (1, 'one')", &err), 0);
	/* a database newer than the code is refused, not clobbered */
	assert_true(store_migrate("t", steps, 1, &err) < 0);
	assert_non_null(strstr(err.msg, "newer"));
}

static void failed_migration_rolls_back(void **state)
{
	const char *steps[] = { "CREATE TABLE b(x); THIS IS NOT SQL" };
	mb_err err = { 0 };
	assert_true(store_migrate("bad", steps, 1, &err) < 0);
	assert_int_equal(scalar("SELECT count(*) FROM sqlite_master WHERE name = 'b'"), 0);
	assert_int_equal(store_tx_depth(), 0);
}

static void nested_transactions(void **state)
{
	mb_err err = { 0 };
	assert_int_equal(store_exec("CREATE TABLE c(x)", &err), 0);
	assert_int_equal(store_tx_begin(&err), 0);
	assert_int_equal(store_exec("INSERT INTO c VALUES (1)", &err), 0);
	assert_int_equal(store_tx_begin(&err), 0);
	assert_int_equal(store_exec("INSERT INTO c VALUES (2)", &err), 0);
	store_tx_rollback(); /* inner only */
	assert_int_equal(store_tx_commit(&err), 0);
	assert_int_equal(scalar("SELECT count(*) FROM c"), 1);
}

static void one_statement_only(void **state)
{
	mb_err err = { 0 };
	assert_null(store_prepare("SELECT 1; SELECT 2", &err));
	assert_non_null(strstr(err.msg, "one statement"));
	sqlite3_stmt *a = store_prepare("SELECT 42", &err);
	sqlite3_stmt *b = store_prepare("SELECT 42", &err);
	assert_ptr_equal(a, b); /* cached */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(wal_and_core_schema, setup, teardown),
		cmocka_unit_test_setup_teardown(component_migrations_are_idempotent, setup,
		                                teardown),
		cmocka_unit_test_setup_teardown(failed_migration_rolls_back, setup, teardown),
		cmocka_unit_test_setup_teardown(nested_transactions, setup, teardown),
		cmocka_unit_test_setup_teardown(one_statement_only, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
