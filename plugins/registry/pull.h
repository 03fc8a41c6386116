/*
 * The pull engine: reference -> verified blobs in the store -> unpacked tree -> erofs base
 * disk, as one asynchronous job on an mbr_io loop.
 *
 *   resolve manifest (Accept: OCI+Docker, manifest+index; digest checked)
 *   -> pick linux/amd64 (or the requested platform) from an index
 *   -> config blob (digest checked) -> manifest and config stored
 *   -> if <disks>/sha256-<config hex>.erofs exists: done (cached)
 *   -> layers: up to `parallel` downloads at once, each streamed into the store with its
 *      sha256 checked, resumed with Range after a dropped connection; meanwhile layers are
 *      applied in order, each as soon as it and all before it are stored (worker threads)
 *   -> mkfs.erofs (child process) -> rename into disks/ -> scratch tree removed.
 * The same tail (from "config") builds disks for images imported from archives.
 */
#ifndef MBR_PULL_H
#define MBR_PULL_H

#include <stdbool.h>

#include "client.h"
#include "manifest.h"
#include "ref.h"
#include "store.h"
#include "unpack.h"

typedef struct mbr_engine {
	const struct mbr_io *io; /* borrowed */
	mbr_client *client;
	mbr_store *store;
	int parallel;             /* concurrent layer downloads per pull; default 3 */
	char mkfs[256];           /* "mkfs.erofs" */
	char mkfs_opts[128];      /* extra options, space separated, e.g. "-zlz4hc"; "" */
	uint64_t mkfs_timeout_ms; /* default 30 min */
	struct mbr_unpack_opts unpack;
	mbr_strset inflight; /* blob digests being downloaded by some pull */
	int active;          /* pulls and builds running */
	/* Scratch trees in RAM: the unpacked tree only lives until mkfs.erofs has read it, so
	 * it goes to a tmpfs when it fits (store->ram_tmp), and only the erofs disk is
	 * written to the store's file system. A pull that runs out of room there starts its
	 * unpacking over on disk. */
	char ram_dir[256];     /* "" (unpack on disk), "/dev/shm" or another directory */
	bool ram_need_tmpfs;   /* only use ram_dir if it is a tmpfs ("auto") */
	uint64_t ram_reserved; /* bytes promised to running pulls' RAM trees */
} mbr_engine;

/* Where unpacked trees go: "auto" (default: /dev/shm when it is a tmpfs and the tree
 * fits), "disk" (always under the store's tmp/), or a directory to use like /dev/shm. */
int mbr_engine_set_scratch(mbr_engine *e, const char *mode, mb_err *err);

/* Caller frees with mbr_engine_free (only when no pull is active). */
mbr_engine *mbr_engine_new(const struct mbr_io *io, const char *images_dir, mb_err *err);
void mbr_engine_free(mbr_engine *e);

struct mbr_pull_opts {
	const char *reference;       /* as the user wrote it */
	const struct mbr_cred *cred; /* may be NULL; copied */
	bool insecure;               /* allow plain HTTP for this registry */
	const char *platform;        /* "linux/amd64" when NULL */
};

/* What a finished pull or build produced. Everything is borrowed from the job and valid
 * only during the done callback. */
struct mbr_pull_result {
	const char *reference;   /* normalised, "" for builds */
	const char *repo_digest; /* "name@sha256:..." of what the tag pointed to; "" for builds */
	const char *id;          /* config digest = image id */
	const char *manifest_digest;
	const char *media_type;
	const char *manifest;
	size_t manifest_len;
	const char *config;
	size_t config_len;
	const json_t *summary; /* mbr_config_summary() of the config */
	const struct mbr_desc *layers;
	size_t nlayers;
	int64_t size; /* config + compressed layers, bytes */
	const char *disk;
	bool cached;      /* the disk already existed */
	bool ram_scratch; /* the tree was unpacked in RAM */
};

typedef struct mbr_pull mbr_pull;
typedef void (*mbr_pull_progress_fn)(mbr_pull *p, void *arg);
/* Exactly one of res/err is non-NULL. The owner frees the job with mbr_pull_free (may be
 * called from inside the callback). */
typedef void (*mbr_pull_done_fn)(mbr_pull *p, const struct mbr_pull_result *res, const mb_err *err,
                                 void *arg);

/* Start a pull. NULL with err set (e.g. -EINVAL for a bad reference). */
mbr_pull *mbr_pull_start(mbr_engine *e, const struct mbr_pull_opts *o, mbr_pull_progress_fn prog,
                         mbr_pull_done_fn done, void *arg, mb_err *err);
/* Build the disk of an image whose manifest, config and layers are already in the store
 * (archive import). manifest is copied. */
mbr_pull *mbr_build_start(mbr_engine *e, const char *manifest, size_t len,
                          const char *manifest_digest, mbr_pull_progress_fn prog,
                          mbr_pull_done_fn done, void *arg, mb_err *err);
/* Stop a running job without calling done, or release a finished one. */
void mbr_pull_free(mbr_pull *p);

/* Progress as JSON (new reference):
 * {"reference","status","id","layers":[{"digest","size","done","status"}],
 *  "bytes_done","bytes_total"} */
json_t *mbr_pull_progress_json(const mbr_pull *p);
const char *mbr_pull_reference(const mbr_pull *p); /* normalised; borrowed */

#endif
