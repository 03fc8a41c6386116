/*
 * Internal header of the registry plugin (plugin.c, db.c, l_registry.c): the state shared
 * by the host glue, the SQLite records and the Lua module.
 */
#ifndef MBR_REGPLUGIN_H
#define MBR_REGPLUGIN_H

#include <moonbox/plugin.h>

#include "auth.h"
#include "pull.h"

struct rp_waiter;

/* One running pull (several Lua tasks may wait on the same reference). */
struct rp_pull {
	struct rp_pull *next;
	mbr_pull *p;   /* NULL while deferred behind a garbage collection */
	char ref[600]; /* normalised reference (+ platform): the key for sharing */
	struct rp_waiter *waiters;
	/* what is needed to start it (later) */
	char input[600];
	char platform[64];
	bool insecure;
	struct mbr_cred cred;
};

/* One running archive load. */
struct rp_load;

struct rp {
	const struct mb_host *host;
	mb_plugin *self;
	struct mbr_io io;
	mbr_engine *eng;
	char *state_dir;
	char *auth_path;     /* <state_dir>/registry/auth.json (0600, docker config format) */
	json_t *auths;       /* {"auths": {...}} as stored; secrets never leave the plugin */
	char *docker_config; /* text of ~/.docker/config.json, if readable; may be NULL */
	struct rp_pull *pulls;
	int loads;
	bool shutting_down;
};

extern struct rp rp;

/* Credentials for a registry host: login store first, then ~/.docker/config.json.
 * Fills *c (caller clears) and returns 0, or -ENOENT. */
int rp_cred_lookup(const char *registry, struct mbr_cred *c);
/* Store or drop credentials in memory at once, and in auth.json (0600) on a worker; fn
 * (may be NULL) runs on the loop thread once the file holds the change (err NULL) or the
 * write failed. -EINVAL (bad registry name) and -ENOENT (forget: not logged in) are
 * returned, and then fn is not called. */
typedef void (*rp_saved_fn)(void *arg, const mb_err *err);
int rp_cred_store(const char *registry, const char *user, const char *pass, rp_saved_fn fn,
                  void *arg, mb_err *err);
int rp_cred_forget(const char *registry, rp_saved_fn fn, void *arg, mb_err *err);
/* At shutdown: writes still running tell nobody. */
void rp_cred_cancel_saves(void);
/* [{"registry","username"}] of stored logins; new reference; never secrets. */
json_t *rp_cred_list(void);

/* Emit an event; steals data. Errors are logged, not returned. */
void rp_emit(const char *type, json_t *data);
void rp_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- db.c: SQLite records (loop thread) -------------------------------------------------------
 */
int rdb_migrate(mb_err *err);
/* Insert or refresh an image and (if ref is not "") point ref at it. */
int rdb_put_image(const struct mbr_pull_result *res, const char *ref, const char *repo_digest,
                  mb_err *err);
/* Resolve an id, id prefix (>= 12 hex), reference or repo digest. id_out gets the image id;
 * ref_out (may be NULL) the normalised reference when s named one. -ENOENT, -EINVAL
 * (ambiguous prefix, bad reference). */
int rdb_resolve(const char *s, char id_out[MBR_DIGEST_LEN + 1], char *ref_out, size_t ref_cap,
                mb_err *err);
/* The record of one image (new reference) or NULL. */
json_t *rdb_image(const char *id);
/* All images, newest first (new reference). */
json_t *rdb_list(void);
int rdb_holders(const char *id);
int rdb_use(const char *id, const char *holder, mb_err *err);
int rdb_release(const char *id, const char *holder, mb_err *err);
int rdb_ref_count(const char *id);
int rdb_untag(const char *ref, mb_err *err);
int rdb_delete_image(const char *id, mb_err *err);
/* Digests (blobs) and image ids (disks) still referenced. */
int rdb_live_sets(mbr_strset *blobs, mbr_strset *disks, mb_err *err);

/* ---- l_registry.c
 * --------------------------------------------------------------------------------- */
int rp_lua_register(mb_err *err);
void rp_lua_shutdown(void);

#endif
