/* SQLite records of the registry plugin. Loop thread only (host->db()). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ref.h"
#include "regplugin.h"

static const char *const migrations[] = {
	/* 1 */
	"CREATE TABLE registry_images ("
	"  id TEXT PRIMARY KEY," /* config digest */
	"  manifest_digest TEXT NOT NULL,"
	"  media_type TEXT NOT NULL,"
	"  config TEXT NOT NULL,"  /* lifecycle summary, JSON */
	"  layers TEXT NOT NULL,"  /* [{digest,size,media_type}] */
	"  size INTEGER NOT NULL," /* config + compressed layers */
	"  disk TEXT NOT NULL,"    /* erofs base disk */
	"  os TEXT NOT NULL DEFAULT '',"
	"  architecture TEXT NOT NULL DEFAULT '',"
	"  created TEXT NOT NULL DEFAULT '',"
	"  pulled_at INTEGER NOT NULL"
	") STRICT;"
	"CREATE TABLE registry_refs ("
	"  ref TEXT PRIMARY KEY," /* normalised domain/path:tag */
	"  image_id TEXT NOT NULL REFERENCES registry_images(id) ON DELETE CASCADE,"
	"  repo_digest TEXT NOT NULL DEFAULT '',"
	"  updated_at INTEGER NOT NULL"
	") STRICT;"
	"CREATE INDEX registry_refs_image ON registry_refs(image_id);"
	"CREATE TABLE registry_holders ("
	"  image_id TEXT NOT NULL,"
	"  holder TEXT NOT NULL,"
	"  since INTEGER NOT NULL,"
	"  PRIMARY KEY (image_id, holder)"
	") STRICT;",
};

int rdb_migrate(mb_err *err)
{
	return rp.host->db_migrate("registry", migrations,
	                           (int)(sizeof(migrations) / sizeof(migrations[0])), err);
}

static sqlite3 *db(void)
{
	return rp.host->db();
}

static int db_err(mb_err *err, const char *what)
{
	return mb_err_set(err, -EIO, "%s: %s", what, sqlite3_errmsg(db()));
}

static sqlite3_stmt *prep(const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db(), sql, -1, &st, NULL) != SQLITE_OK) {
		rp_log(MB_LOG_ERROR, "registry: sql: %s", sqlite3_errmsg(db()));
		return NULL;
	}
	return st;
}

static int exec(const char *sql, mb_err *err)
{
	char *msg = NULL;
	if (sqlite3_exec(db(), sql, NULL, NULL, &msg) != SQLITE_OK) {
		int r = mb_err_set(err, -EIO, "%s: %s", sql, msg ? msg : "?");
		sqlite3_free(msg);
		return r;
	}
	return 0;
}

int rdb_put_image(const struct mbr_pull_result *res, const char *ref, const char *repo_digest,
                  mb_err *err)
{
	json_t *layers = json_array();
	for (size_t i = 0; i < res->nlayers; i++)
		json_array_append_new(layers,
		                      json_pack("{s:s,s:I,s:s}", "digest", res->layers[i].digest,
		                                "size", (json_int_t)res->layers[i].size,
		                                "media_type", res->layers[i].media_type));
	char *ls = json_dumps(layers, JSON_COMPACT);
	char *cs = json_dumps(res->summary, JSON_COMPACT);
	json_decref(layers);
	int r = 0;
	if (!ls || !cs) {
		r = mb_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((r = exec("BEGIN IMMEDIATE", err)) < 0)
		goto out;
	sqlite3_stmt *st = prep(
	    "INSERT INTO registry_images(id,manifest_digest,media_type,config,layers,size,disk,"
	    "os,architecture,created,pulled_at) VALUES(?,?,?,?,?,?,?,?,?,?,?) "
	    "ON CONFLICT(id) DO UPDATE SET manifest_digest=excluded.manifest_digest,"
	    "media_type=excluded.media_type,config=excluded.config,layers=excluded.layers,"
	    "size=excluded.size,disk=excluded.disk,pulled_at=excluded.pulled_at");
	if (!st) {
		r = db_err(err, "prepare");
		exec("ROLLBACK", NULL);
		goto out;
	}
	const json_t *s = res->summary;
	sqlite3_bind_text(st, 1, res->id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, res->manifest_digest, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, res->media_type, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, cs, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, ls, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 6, res->size);
	sqlite3_bind_text(st, 7, res->disk, -1, SQLITE_TRANSIENT);
	const char *os = json_string_value(json_object_get(s, "os"));
	const char *arch = json_string_value(json_object_get(s, "architecture"));
	const char *created = json_string_value(json_object_get(s, "created"));
	sqlite3_bind_text(st, 8, os ? os : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 9, arch ? arch : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 10, created ? created : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 11, (sqlite3_int64)time(NULL));
	if (sqlite3_step(st) != SQLITE_DONE)
		r = db_err(err, "insert image");
	sqlite3_finalize(st);
	if (r == 0 && ref && *ref) {
		st = prep(
		    "INSERT INTO registry_refs(ref,image_id,repo_digest,updated_at) "
		    "VALUES(?,?,?,?) ON CONFLICT(ref) DO UPDATE SET image_id=excluded.image_id,"
		    "repo_digest=excluded.repo_digest,updated_at=excluded.updated_at");
		if (!st) {
			r = db_err(err, "prepare");
		} else {
			sqlite3_bind_text(st, 1, ref, -1, SQLITE_TRANSIENT);
			sqlite3_bind_text(st, 2, res->id, -1, SQLITE_TRANSIENT);
			sqlite3_bind_text(st, 3, repo_digest ? repo_digest : "", -1,
			                  SQLITE_TRANSIENT);
			sqlite3_bind_int64(st, 4, (sqlite3_int64)time(NULL));
			if (sqlite3_step(st) != SQLITE_DONE)
				r = db_err(err, "insert ref");
			sqlite3_finalize(st);
		}
	}
	if (r == 0)
		r = exec("COMMIT", err);
	else
		exec("ROLLBACK", NULL);
out:
	free(ls);
	free(cs);
	return r;
}

static int resolve_id_prefix(const char *s, char id_out[MBR_DIGEST_LEN + 1], mb_err *err)
{
	char pattern[MBR_DIGEST_LEN + 8];
	snprintf(pattern, sizeof(pattern), "%s%s%%", strncmp(s, "sha256:", 7) ? "sha256:" : "", s);
	sqlite3_stmt *st = prep("SELECT id FROM registry_images WHERE id LIKE ? LIMIT 2");
	if (!st)
		return db_err(err, "prepare");
	sqlite3_bind_text(st, 1, pattern, -1, SQLITE_TRANSIENT);
	int n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (n++ == 0)
			snprintf(id_out, MBR_DIGEST_LEN + 1, "%s", sqlite3_column_text(st, 0));
	}
	sqlite3_finalize(st);
	if (n == 0)
		return -ENOENT;
	if (n > 1)
		return mb_err_set(err, -EINVAL, "image id prefix \"%s\" is ambiguous", s);
	return 0;
}

int rdb_resolve(const char *s, char id_out[MBR_DIGEST_LEN + 1], char *ref_out, size_t ref_cap,
                mb_err *err)
{
	if (ref_out && ref_cap)
		ref_out[0] = '\0';
	if (mbr_looks_like_id(s)) {
		int r = resolve_id_prefix(s, id_out, err);
		if (r != -ENOENT)
			return r;
	}
	struct mbr_ref ref;
	mb_err perr;
	if (mbr_ref_parse(s, &ref, &perr) < 0) {
		if (mbr_looks_like_id(s))
			return mb_err_set(err, -ENOENT, "no such image: %s", s);
		return mb_err_set(err, -EINVAL, "%s", perr.msg);
	}
	char full[600];
	mbr_ref_string(&ref, full, sizeof(full));
	sqlite3_stmt *st;
	if (ref.digest[0]) { /* name@digest: a repo digest or the image manifest digest */
		char name[300];
		mbr_ref_name(&ref, name, sizeof(name));
		char rd[600];
		snprintf(rd, sizeof(rd), "%s@%s", name, ref.digest);
		st = prep("SELECT image_id FROM registry_refs WHERE repo_digest = ?1 UNION ALL "
		          "SELECT id FROM registry_images WHERE manifest_digest = ?2 LIMIT 1");
		if (!st)
			return db_err(err, "prepare");
		sqlite3_bind_text(st, 1, rd, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 2, ref.digest, -1, SQLITE_TRANSIENT);
	} else {
		st = prep("SELECT image_id FROM registry_refs WHERE ref = ?");
		if (!st)
			return db_err(err, "prepare");
		sqlite3_bind_text(st, 1, full, -1, SQLITE_TRANSIENT);
	}
	int r = -ENOENT;
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(id_out, MBR_DIGEST_LEN + 1, "%s", sqlite3_column_text(st, 0));
		if (ref_out && !ref.digest[0])
			snprintf(ref_out, ref_cap, "%s", full);
		r = 0;
	}
	sqlite3_finalize(st);
	if (r < 0)
		return mb_err_set(err, -ENOENT, "no such image: %s", full);
	return 0;
}

static json_t *strings_for(const char *sql, const char *id)
{
	json_t *a = json_array();
	sqlite3_stmt *st = prep(sql);
	if (!st)
		return a;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	while (sqlite3_step(st) == SQLITE_ROW)
		if (sqlite3_column_text(st, 0) && sqlite3_column_bytes(st, 0) > 0)
			json_array_append_new(
			    a, json_string((const char *)sqlite3_column_text(st, 0)));
	sqlite3_finalize(st);
	return a;
}

static json_t *row_to_record(sqlite3_stmt *st)
{
	const char *id = (const char *)sqlite3_column_text(st, 0);
	json_t *config = json_loads((const char *)sqlite3_column_text(st, 3), 0, NULL);
	json_t *layers = json_loads((const char *)sqlite3_column_text(st, 4), 0, NULL);
	json_t *holders = strings_for("SELECT holder FROM registry_holders WHERE image_id = ? "
	                              "ORDER BY since",
	                              id);
	char short_id[13];
	snprintf(short_id, sizeof(short_id), "%s", id + 7);
	return json_pack(
	    "{s:s,s:s,s:o,s:o,s:s,s:s,s:o,s:o,s:I,s:s,s:s,s:s,s:s,s:I,s:I,s:o}", "id", id,
	    "short_id", short_id, "references",
	    strings_for("SELECT ref FROM registry_refs WHERE image_id = ? ORDER BY ref", id),
	    "repo_digests",
	    strings_for("SELECT DISTINCT repo_digest FROM registry_refs WHERE image_id = ? "
	                "ORDER BY repo_digest",
	                id),
	    "manifest_digest", sqlite3_column_text(st, 1), "media_type", sqlite3_column_text(st, 2),
	    "config", config ? config : json_object(), "layers", layers ? layers : json_array(),
	    "size", (json_int_t)sqlite3_column_int64(st, 5), "disk", sqlite3_column_text(st, 6),
	    "os", sqlite3_column_text(st, 7), "architecture", sqlite3_column_text(st, 8), "created",
	    sqlite3_column_text(st, 9), "pulled_at", (json_int_t)sqlite3_column_int64(st, 10),
	    "in_use", (json_int_t)json_array_size(holders), "holders", holders);
}

#define IMAGE_COLS                                                                                 \
	"id,manifest_digest,media_type,config,layers,size,disk,os,architecture,created,pulled_at"

json_t *rdb_image(const char *id)
{
	sqlite3_stmt *st = prep("SELECT " IMAGE_COLS " FROM registry_images WHERE id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	json_t *j = sqlite3_step(st) == SQLITE_ROW ? row_to_record(st) : NULL;
	sqlite3_finalize(st);
	return j;
}

json_t *rdb_list(void)
{
	json_t *a = json_array();
	sqlite3_stmt *st =
	    prep("SELECT " IMAGE_COLS " FROM registry_images ORDER BY pulled_at DESC, id");
	if (!st)
		return a;
	while (sqlite3_step(st) == SQLITE_ROW)
		json_array_append_new(a, row_to_record(st));
	sqlite3_finalize(st);
	return a;
}

static int count(const char *sql, const char *arg)
{
	sqlite3_stmt *st = prep(sql);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
	int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	return n;
}

int rdb_holders(const char *id)
{
	return count("SELECT count(*) FROM registry_holders WHERE image_id = ?", id);
}

int rdb_ref_count(const char *id)
{
	return count("SELECT count(*) FROM registry_refs WHERE image_id = ?", id);
}

static int exec1(const char *sql, const char *a, const char *b, mb_err *err)
{
	sqlite3_stmt *st = prep(sql);
	if (!st)
		return db_err(err, "prepare");
	sqlite3_bind_text(st, 1, a, -1, SQLITE_TRANSIENT);
	if (b)
		sqlite3_bind_text(st, 2, b, -1, SQLITE_TRANSIENT);
	int r = sqlite3_step(st) == SQLITE_DONE ? sqlite3_changes(db()) : db_err(err, sql);
	sqlite3_finalize(st);
	return r;
}

int rdb_use(const char *id, const char *holder, mb_err *err)
{
	if (count("SELECT count(*) FROM registry_images WHERE id = ?", id) <= 0)
		return mb_err_set(err, -ENOENT, "no such image: %s", id);
	sqlite3_stmt *st = prep("INSERT OR IGNORE INTO registry_holders(image_id,holder,since) "
	                        "VALUES(?,?,?)");
	if (!st)
		return db_err(err, "prepare");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, holder, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)time(NULL));
	int r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_err(err, "insert holder");
	sqlite3_finalize(st);
	return r;
}

int rdb_release(const char *id, const char *holder, mb_err *err)
{
	return exec1("DELETE FROM registry_holders WHERE image_id = ? AND holder = ?", id, holder,
	             err);
}

int rdb_untag(const char *ref, mb_err *err)
{
	return exec1("DELETE FROM registry_refs WHERE ref = ?", ref, NULL, err);
}

int rdb_delete_image(const char *id, mb_err *err)
{
	int r = exec("BEGIN IMMEDIATE", err);
	if (r < 0)
		return r;
	r = exec1("DELETE FROM registry_refs WHERE image_id = ?", id, NULL, err);
	if (r >= 0)
		r = exec1("DELETE FROM registry_images WHERE id = ?", id, NULL, err);
	if (r >= 0)
		return exec("COMMIT", err);
	exec("ROLLBACK", NULL);
	return r;
}

int rdb_live_sets(mbr_strset *blobs, mbr_strset *disks, mb_err *err)
{
	sqlite3_stmt *st = prep("SELECT id, manifest_digest, layers FROM registry_images");
	if (!st)
		return db_err(err, "prepare");
	int r = 0;
	while (r >= 0 && sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		r = mbr_strset_add(blobs, id);
		if (r >= 0)
			r = mbr_strset_add(disks, id);
		if (r >= 0)
			r = mbr_strset_add(blobs, (const char *)sqlite3_column_text(st, 1));
		json_t *ls = json_loads((const char *)sqlite3_column_text(st, 2), 0, NULL);
		size_t i;
		json_t *l;
		json_array_foreach(ls, i, l)
		{
			const char *d = json_string_value(json_object_get(l, "digest"));
			if (d && r >= 0)
				r = mbr_strset_add(blobs, d);
		}
		json_decref(ls);
	}
	sqlite3_finalize(st);
	return r < 0 ? mb_err_set(err, r, "out of memory") : 0;
}
