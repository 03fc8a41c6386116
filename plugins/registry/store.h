/*
 * The content store under <state_dir>/images:
 *   blobs/sha256/<hex>           verified blobs (layers, configs, manifests)
 *   disks/sha256-<hex>.erofs     read-only base disks, one per image config digest
 *   tmp/                         partial downloads (<hex>.partial), unpack scratch trees,
 *                                imports; nothing here is ever read as content
 * A blob enters blobs/ only by rename(2) after its digest has been checked, so a blob
 * path that exists holds exactly the bytes its name says.
 */
#ifndef MBR_STORE_H
#define MBR_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include <moonbox/plugin.h>

#include "digest.h"
#include "util.h"

typedef struct mbr_store {
	char *root;    /* <state_dir>/images */
	char *blobs;   /* root/blobs/sha256 */
	char *disks;   /* root/disks */
	char *tmp;     /* root/tmp */
	char *ram_tmp; /* scratch trees kept in RAM: <ram dir>/moonbox-<hash of root>, or NULL */
} mbr_store;

/* Create the directories (cheap mkdirs). Caller frees with mbr_store_free. */
mbr_store *mbr_store_open(const char *root, mb_err *err);
void mbr_store_free(mbr_store *s);

/* Paths; caller frees. NULL for an invalid digest. */
char *mbr_store_blob_path(const mbr_store *s, const char *digest);
char *mbr_store_disk_path(const mbr_store *s, const char *image_id);
/* A fresh unique path under tmp/ (not created). Caller frees. */
char *mbr_store_tmp_path(const mbr_store *s, const char *prefix);
/* The same under ram_tmp (NULL when there is none). Caller frees. */
char *mbr_store_ram_path(const mbr_store *s, const char *prefix);
/* Scratch trees in RAM go below <dir>/moonbox-<hash of the store root>/ (one directory per
 * store, so daemons with other state dirs never sweep each other's). NULL: none. */
int mbr_store_set_ram_dir(mbr_store *s, const char *dir, mb_err *err);
/* stat() only. size (may be NULL) receives the file size. */
bool mbr_store_has_blob(const mbr_store *s, const char *digest, int64_t *size);

/* Streaming blob writer. open/close on the loop thread (cheap); prepare and finish block
 * (worker thread); write handles one network chunk: it hashes and writes it. */
typedef struct mbr_blobw mbr_blobw;
/* expected_size < 0: unknown. Caller frees with mbr_blobw_close. */
mbr_blobw *mbr_blobw_open(const mbr_store *s, const char *digest, int64_t expected_size,
                          mb_err *err);
/* resume: keep the bytes of an earlier partial download (re-hashing them); else truncate. */
int mbr_blobw_prepare(mbr_blobw *w, bool resume, mb_err *err);
uint64_t mbr_blobw_offset(const mbr_blobw *w);
int mbr_blobw_write(mbr_blobw *w, const void *p, size_t n, mb_err *err);
/* The server ignored our Range: start over from byte 0. */
int mbr_blobw_rewind(mbr_blobw *w, mb_err *err);
/* Check size and digest, fsync, rename into blobs/. -EBADMSG (and the partial file is
 * removed) on mismatch. */
int mbr_blobw_finish(mbr_blobw *w, mb_err *err);
/* Close; remove_partial drops the partial file (e.g. after a digest mismatch). */
void mbr_blobw_close(mbr_blobw *w, bool remove_partial);
const char *mbr_blobw_digest(const mbr_blobw *w); /* borrowed */

/* Move an already-hashed file (same filesystem) into blobs/ under digest. Blocking. */
int mbr_store_adopt(const mbr_store *s, const char *src, const char *digest, mb_err *err);
/* Store bytes held in memory as a blob after checking them against digest. Blocking. */
int mbr_store_put_buf(const mbr_store *s, const char *digest, const void *p, size_t n, mb_err *err);
/* Re-hash a stored blob; -EBADMSG (and removal) if it does not match. Blocking. */
int mbr_store_verify(const mbr_store *s, const char *digest, mb_err *err);

struct mbr_gc_stats {
	uint64_t blobs_removed;
	uint64_t disks_removed;
	uint64_t tmp_removed;
	uint64_t bytes_freed;
};
/* Remove blobs and disks whose digest is not in the live sets (digests "sha256:<hex>") and
 * that were last modified before `before` (unix seconds; 0: no limit -- the guard keeps
 * content written by pulls running concurrently with the collection), and, when clean_tmp,
 * everything under tmp/ except recent partial downloads. Blocking. */
int mbr_store_gc(const mbr_store *s, const mbr_strset *live_blobs, const mbr_strset *live_disks,
                 int64_t before, bool clean_tmp, struct mbr_gc_stats *st, mb_err *err);
/* Remove what an earlier process left in tmp/ and ram_tmp (scratch trees, imports; partial
 * downloads younger than a day are kept) that was last modified before `before` (unix
 * seconds), so that jobs started since are left alone. Blocking. */
void mbr_store_sweep_tmp(const mbr_store *s, int64_t before, struct mbr_gc_stats *st);

#endif
