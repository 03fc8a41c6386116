#include "events.h"

#include <errno.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "store.h"
#include "util.h"

#define PRUNE_EVERY_MS (10 * 60 * 1000)
#define KEEP_EVENTS    100000

static struct {
	struct {
		events_listener fn;
		void *ud;
	} listeners[8];
	int nlisteners;
	int64_t last_id;
	mb_timer *prune;
} E;

static bool valid_type(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 128)
		return false;
	for (const char *p = t; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ||
		      *p == '.' || *p == '-'))
			return false;
	return true;
}

int64_t events_emit(const char *type, json_t *data, mb_err *err)
{
	if (!valid_type(type)) {
		json_decref(data);
		return mb_err_set(err, -EINVAL,
		                  "event type '%s' is invalid (use [a-z0-9_.-], at most 128 bytes)",
		                  type);
	}
	char *text = data ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	double now = mb_wall_time();
	sqlite3_stmt *st =
	    store_prepare("INSERT INTO events(time, type, data) VALUES(?, ?, ?)", err);
	if (!st) {
		free(text);
		json_decref(data);
		return err ? err->code : -EIO;
	}
	sqlite3_bind_double(st, 1, now);
	sqlite3_bind_text(st, 2, type, -1, SQLITE_TRANSIENT);
	if (text)
		sqlite3_bind_text(st, 3, text, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	free(text);
	if (rc != SQLITE_DONE) {
		json_decref(data);
		return store_error(err, "events");
	}
	int64_t id = sqlite3_last_insert_rowid(store_db());
	E.last_id = id;
	for (int i = 0; i < E.nlisteners; i++)
		E.listeners[i].fn(id, now, type, data, E.listeners[i].ud);
	json_decref(data);
	return id;
}

void events_listen(events_listener fn, void *ud)
{
	if (E.nlisteners < (int)ARRAY_SIZE(E.listeners)) {
		E.listeners[E.nlisteners].fn = fn;
		E.listeners[E.nlisteners].ud = ud;
		E.nlisteners++;
	}
}

int64_t events_last_id(void)
{
	return E.last_id;
}

void events_prune(int64_t keep)
{
	sqlite3_stmt *st = store_prepare("DELETE FROM events WHERE id <= ?", NULL);
	if (!st)
		return;
	sqlite3_bind_int64(st, 1, E.last_id - keep);
	if (sqlite3_step(st) != SQLITE_DONE)
		log_warn("events: prune failed: %s", sqlite3_errmsg(store_db()));
	sqlite3_reset(st);
}

static void on_prune(void *ud)
{
	events_prune(KEEP_EVENTS);
	E.prune = loop_timer(PRUNE_EVERY_MS, on_prune, NULL);
}

int events_init(mb_err *err)
{
	sqlite3_stmt *st = store_prepare("SELECT COALESCE(MAX(id), 0) FROM events", err);
	if (!st)
		return err ? err->code : -EIO;
	if (sqlite3_step(st) == SQLITE_ROW)
		E.last_id = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	/* AUTOINCREMENT keeps ids monotonic even after pruning. */
	E.prune = loop_timer(PRUNE_EVERY_MS, on_prune, NULL);
	return 0;
}

void events_fini(void)
{
	loop_timer_stop(E.prune);
	E.prune = NULL;
	E.nlisteners = 0;
}
