#include "pull.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

enum lstate {
	L_WAITING,
	L_DOWNLOADING,
	L_VERIFYING,
	L_STORED,
	L_EXTRACTING,
	L_EXTRACTED,
};

static const char *lstate_name[] = { "waiting",    "downloading", "verifying",
	                             "downloaded", "extracting",  "extracted" };

struct layer {
	struct mbr_desc d;
	enum lstate state;
	uint64_t done;
	bool existed;
	mbr_blobw *w;
	mbr_req *req;
	void *wait_timer;
	bool inflight_mine;
	bool w_busy;          /* the writer is in use by a worker job (prepare/verify) */
	struct job *req_ctx;  /* holds a ref on the pull while req runs */
	struct job *wait_ctx; /* same for wait_timer */
};

struct mbr_pull {
	mbr_engine *eng;
	int refs;
	bool finished;
	bool build;    /* local build: everything is in the store */
	bool starting; /* inside mbr_pull_start/mbr_build_start: failures are returned */
	mb_err start_err;

	struct mbr_ref ref;
	char refstr[600];
	char name[300]; /* domain/path */
	struct mbr_cred cred;
	char os[32], arch[32], variant[32];
	char base[400]; /* scheme://host/v2/path */
	char scope[400];
	const char *host;

	mbr_pull_progress_fn progress;
	mbr_pull_done_fn done;
	void *arg;
	uint64_t last_progress;
	const char *status;

	mbr_req *req;
	char top_digest[MBR_DIGEST_LEN + 1];
	char manifest_digest[MBR_DIGEST_LEN + 1];
	char expect_digest[MBR_DIGEST_LEN + 1];
	char media_type[128];
	char *manifest;
	size_t manifest_len;
	struct mbr_manifest m;
	char *config;
	size_t config_len;
	json_t *summary;

	struct layer *layers;
	size_t nlayers;
	int running;
	size_t next_unpack;
	bool unpacking;
	bool mkfs_started;
	bool mkfs_running;
	bool rm_pending; /* remove the scratch tree once the job using it is back */
	bool making;     /* the job creating the scratch directories is on a worker */
	bool scratch_gone;
	char *scratch;     /* under the store's tmp/: holds disk.erofs (and rootfs/ on disk) */
	char *ram_scratch; /* NULL, or under store->ram_tmp: holds rootfs/ */
	uint64_t ram_want; /* bytes of eng->ram_reserved held by this pull */
	bool ram_retried;  /* the RAM tree ran out of room: unpacking started over on disk */
	char *rootfs;
	char *disk_tmp;
	char *disk;
	char repo_digest[400];
};

struct job {
	mbr_pull *p;
	size_t layer;
	int rc;
	mb_err err;
	char *path;  /* in */
	char *path2; /* in */
	mbr_blobw *w;
	char *data; /* out */
	size_t len;
	struct mbr_unpack_stats st;
	struct mbr_unpack_opts uopts;
};

static void pump(mbr_pull *p);
static void inflight_del(mbr_pull *p, struct layer *l);
static void remove_scratch(mbr_pull *p);
static void fail(mbr_pull *p, const mb_err *err);

/* ---- engine ----------------------------------------------------------------------------- */

mbr_engine *mbr_engine_new(const struct mbr_io *io, const char *images_dir, mb_err *err)
{
	mbr_engine *e = calloc(1, sizeof(*e));
	if (!e) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	e->io = io;
	e->parallel = 3;
	snprintf(e->mkfs, sizeof(e->mkfs), "mkfs.erofs");
	e->mkfs_timeout_ms = 30 * 60 * 1000;
	e->unpack.keep_owners = true;
	e->unpack.xattrs = true;
	if (!(e->client = mbr_client_new(io, err)) ||
	    !(e->store = mbr_store_open(images_dir, err)) ||
	    mbr_engine_set_scratch(e, "auto", err) < 0) {
		mbr_engine_free(e);
		return NULL;
	}
	return e;
}

int mbr_engine_set_scratch(mbr_engine *e, const char *mode, mb_err *err)
{
	const char *dir;
	if (!strcmp(mode, "auto"))
		dir = "/dev/shm";
	else if (!strcmp(mode, "disk"))
		dir = "";
	else if (mode[0] == '/' && strlen(mode) < sizeof(e->ram_dir))
		dir = mode;
	else
		return mb_err_set(err, -EINVAL,
		                  "scratch must be \"auto\", \"disk\" or an absolute directory");
	int r = mbr_store_set_ram_dir(e->store, dir, err);
	if (r < 0)
		return r;
	snprintf(e->ram_dir, sizeof(e->ram_dir), "%s", dir);
	e->ram_need_tmpfs = !strcmp(mode, "auto");
	return 0;
}

void mbr_engine_free(mbr_engine *e)
{
	if (!e)
		return;
	mbr_client_free(e->client);
	mbr_store_free(e->store);
	mbr_strset_free(&e->inflight);
	free(e);
}

/* ---- bookkeeping -------------------------------------------------------------------------- */

static void ram_release(mbr_pull *p);

static void pull_destroy(mbr_pull *p)
{
	ram_release(p);
	for (size_t i = 0; i < p->nlayers; i++)
		mbr_blobw_close(p->layers[i].w, false);
	free(p->layers);
	mbr_cred_clear(&p->cred);
	free(p->manifest);
	mbr_manifest_free(&p->m);
	free(p->config);
	json_decref(p->summary);
	free(p->scratch);
	free(p->ram_scratch);
	free(p->rootfs);
	free(p->disk_tmp);
	free(p->disk);
	free(p);
}

static void unref(mbr_pull *p)
{
	if (--p->refs == 0) {
		p->eng->active--;
		pull_destroy(p);
	}
}

static void notify(mbr_pull *p, bool force)
{
	if (!p->progress || p->finished)
		return;
	uint64_t now = mbr_now_ms();
	if (!force && now - p->last_progress < 250)
		return;
	p->last_progress = now;
	p->progress(p, p->arg);
}

static void set_status(mbr_pull *p, const char *s)
{
	p->status = s;
	notify(p, true);
}

/* A job context holding a reference on p; caller frees with job_free and drops the
 * reference with unref (or refs--) when done. */
static struct job *job_new(mbr_pull *p)
{
	struct job *j = calloc(1, sizeof(*j));
	if (j) {
		j->p = p;
		p->refs++;
	}
	return j;
}

/* Frees j and the strings it owns (path, path2, data); not the pull reference. */
static void job_free(struct job *j)
{
	free(j->path);
	free(j->path2);
	free(j->data);
	free(j);
}

/* Queue work; on failure to queue, fails the pull. Returns false if not queued. */
static bool queue(mbr_pull *p, struct job *j, mb_fn work, mb_fn done)
{
	mb_err err = { 0 };
	if (!j) {
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return false;
	}
	if (p->eng->io->work(p->eng->io->ud, work, done, j, &err) < 0) {
		p->refs--;
		job_free(j);
		fail(p, &err);
		return false;
	}
	return true;
}

static void rm_scratch_work(void *arg)
{
	struct job *j = arg;
	mbr_rm_tree(j->path, NULL);
	if (j->path2) {
		mbr_rm_tree(j->path2, NULL);
		/* and the store's RAM directory once it is empty (a pull creating its tree there
		 * at this very moment falls back to disk) */
		char *slash = strrchr(j->path2, '/');
		if (slash) {
			*slash = '\0';
			rmdir(j->path2);
		}
	}
}

static void ram_release(mbr_pull *p)
{
	p->eng->ram_reserved -= p->ram_want;
	p->ram_want = 0;
}

static void job_release_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	job_free(j);
	unref(p);
}

static void remove_scratch(mbr_pull *p)
{
	if (!p->scratch || p->scratch_gone)
		return;
	p->scratch_gone = true;
	p->rm_pending = false;
	ram_release(p);
	struct job *j = job_new(p);
	if (j && (j->path = strdup(p->scratch)) &&
	    (!p->ram_scratch || (j->path2 = strdup(p->ram_scratch)))) {
		mb_err err;
		if (p->eng->io->work(p->eng->io->ud, rm_scratch_work, job_release_done, j, &err) <
		    0) {
			p->refs--;
			job_free(j);
		}
	} else if (j) {
		p->refs--;
		job_free(j);
	}
}

static void stop_everything(mbr_pull *p, bool drop_partials)
{
	if (p->req) {
		mbr_req_cancel(p->req);
		p->req = NULL;
	}
	for (size_t i = 0; i < p->nlayers; i++) {
		struct layer *l = &p->layers[i];
		if (l->req) {
			mbr_req_cancel(l->req);
			l->req = NULL;
		}
		if (l->wait_timer) {
			p->eng->io->timer_stop(p->eng->io->ud, l->wait_timer);
			l->wait_timer = NULL;
		}
		/* their callbacks will not run: drop the references they held (the caller
		 * still holds one, so the pull stays alive) */
		if (l->req_ctx) {
			job_free(l->req_ctx);
			l->req_ctx = NULL;
			p->refs--;
		}
		if (l->wait_ctx) {
			job_free(l->wait_ctx);
			l->wait_ctx = NULL;
			p->refs--;
		}
		if (l->w_busy || l->state == L_VERIFYING)
			continue; /* its job closes the writer and releases the digest */
		inflight_del(p, l);
		if (l->w) {
			mbr_blobw_close(l->w, drop_partials);
			l->w = NULL;
		}
	}
	if (p->unpacking || p->mkfs_running || p->making)
		p->rm_pending = true; /* a worker or mkfs still writes there */
	else
		remove_scratch(p);
}

static void fail(mbr_pull *p, const mb_err *err)
{
	if (p->finished)
		return;
	mb_err e2 = *err;
	if (p->refstr[0] && !strstr(err->msg, p->refstr))
		mb_err_set(&e2, err->code, "%s: %s", p->refstr, err->msg);
	stop_everything(p, err->code == MBR_E_CORRUPT);
	p->status = "failed";
	p->finished = true;
	if (p->starting) /* reported by the start function, not through done */
		p->start_err = e2;
	else
		p->done(p, NULL, &e2, p->arg);
}

static void inflight_del(mbr_pull *p, struct layer *l)
{
	if (!l->inflight_mine)
		return;
	mbr_strset keep = { 0 };
	for (size_t k = 0; k < p->eng->inflight.cap; k++) {
		const char *s = p->eng->inflight.slots[k];
		if (s && strcmp(s, l->d.digest))
			mbr_strset_add(&keep, s);
	}
	mbr_strset_free(&p->eng->inflight);
	p->eng->inflight = keep;
	l->inflight_mine = false;
}

static void succeed(mbr_pull *p, bool cached)
{
	if (p->finished)
		return;
	p->finished = true;
	int64_t size = p->m.config.size;
	for (size_t i = 0; i < p->m.nlayers; i++)
		size += p->m.layers[i].size;
	struct mbr_pull_result res = {
		.reference = p->build ? "" : p->refstr,
		.repo_digest = p->repo_digest,
		.id = p->m.config.digest,
		.manifest_digest = p->manifest_digest,
		.media_type = p->media_type,
		.manifest = p->manifest,
		.manifest_len = p->manifest_len,
		.config = p->config,
		.config_len = p->config_len,
		.summary = p->summary,
		.layers = p->m.layers,
		.nlayers = p->m.nlayers,
		.size = size,
		.disk = p->disk,
		.cached = cached,
		.ram_scratch = p->ram_scratch && !p->ram_retried,
	};
	p->status = cached ? "exists" : "complete";
	p->done(p, &res, NULL, p->arg);
}

/* ---- disk: finalize ------------------------------------------------------------------------- */

static void finalize_work(void *arg)
{
	struct job *j = arg;
	/* the disk's bytes reach stable storage before its name does: a disk that exists
	 * under disks/ is complete (a later pull takes it as is) */
	int fd = open(j->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		j->rc = mb_err_set(&j->err, e == ENOSPC ? MBR_E_NO_SPACE : -e, "fsync %s: %s",
		                   j->path, strerror(e));
		return;
	}
	close(fd);
	if (rename(j->path, j->path2) < 0) {
		j->rc = mb_err_set(&j->err, -errno, "rename %s: %s", j->path2, strerror(errno));
		return;
	}
	char *dir = strdup(j->path2);
	if (dir) {
		char *s = strrchr(dir, '/');
		if (s)
			*s = '\0';
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
		free(dir);
	}
}

static void finalize_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	if (!p->finished) {
		if (j->rc < 0)
			fail(p, &j->err);
		else {
			/* the scratch tree goes away in the background */
			stop_everything(p, false);
			succeed(p, false);
		}
	}
	job_free(j);
	unref(p);
}

static void mkfs_done(const mb_run_result *res, void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	p->mkfs_running = false;
	if (p->finished && p->rm_pending)
		remove_scratch(p);
	if (!p->finished) {
		if (res->wstatus != 0) {
			mb_err err;
			const char *e = res->errout && res->errout[0] ? res->errout : "";
			bool nospc = strstr(e, "No space") || strstr(e, "ENOSPC");
			char tail[160];
			size_t el = strlen(e);
			snprintf(tail, sizeof(tail), "%s", el > 150 ? e + el - 150 : e);
			mb_err_set(&err, nospc ? MBR_E_NO_SPACE : -EIO,
			           "mkfs.erofs failed (%s %d): %s",
			           res->wstatus == -1        ? "not started"
			           : WIFEXITED(res->wstatus) ? "exit"
			                                     : "signal",
			           res->wstatus == -1        ? 0
			           : WIFEXITED(res->wstatus) ? WEXITSTATUS(res->wstatus)
			                                     : WTERMSIG(res->wstatus),
			           tail);
			fail(p, &err);
		} else {
			set_status(p, "finalizing");
			struct job *f = job_new(p);
			if (f) {
				f->path = strdup(p->disk_tmp);
				f->path2 = strdup(p->disk);
			}
			queue(p, f, finalize_work, finalize_done);
		}
	}
	job_free(j);
	unref(p);
}

static void start_mkfs(mbr_pull *p)
{
	p->mkfs_started = true;
	set_status(p, "building disk");
	const char *argv[24];
	int n = 0;
	argv[n++] = p->eng->mkfs;
	argv[n++] = "--quiet";
	char opts[sizeof(p->eng->mkfs_opts)];
	snprintf(opts, sizeof(opts), "%s", p->eng->mkfs_opts);
	for (char *save = NULL, *t = strtok_r(opts, " ", &save); t && n < 20;
	     t = strtok_r(NULL, " ", &save))
		argv[n++] = t;
	argv[n++] = p->disk_tmp;
	argv[n++] = p->rootfs;
	argv[n] = NULL;
	struct job *j = job_new(p);
	mb_err err = { 0 };
	if (!j) {
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return;
	}
	if (p->eng->io->run(p->eng->io->ud, argv, p->eng->mkfs_timeout_ms, mkfs_done, j, &err) <
	    0) {
		p->refs--;
		job_free(j);
		fail(p, &err);
		return;
	}
	p->mkfs_running = true;
}

/* ---- layers: unpack ---------------------------------------------------------------------------
 */

static void unpack_work(void *arg)
{
	struct job *j = arg;
	j->rc = mbr_unpack_path(j->path, j->path2, &j->uopts, &j->st, &j->err);
}

/* The RAM tree ran out of room: drop it and unpack every layer again on disk. */
static void ram_retry_work(void *arg)
{
	struct job *j = arg;
	mbr_rm_tree(j->path, NULL);
	if (mkdir(j->path2, 0755) < 0 && errno != EEXIST)
		j->rc = mb_err_set(&j->err, errno == ENOSPC ? MBR_E_NO_SPACE : -errno,
		                   "mkdir %s: %s", j->path2, strerror(errno));
}

static void ram_retry_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	p->unpacking = false;
	if (p->finished) {
		if (p->rm_pending)
			remove_scratch(p);
	} else if (j->rc < 0) {
		fail(p, &j->err);
	} else {
		free(p->rootfs);
		p->rootfs = j->path2;
		j->path2 = NULL;
		for (size_t i = 0; i < p->nlayers; i++)
			if (p->layers[i].state == L_EXTRACTING || p->layers[i].state == L_EXTRACTED)
				p->layers[i].state = L_STORED;
		p->next_unpack = 0;
		notify(p, true);
		pump(p);
	}
	job_free(j);
	unref(p);
}

static bool ram_retry(mbr_pull *p, size_t layer)
{
	if (!p->ram_scratch || p->ram_retried)
		return false;
	p->ram_retried = true;
	ram_release(p);
	if (p->eng->io->log) {
		char m[1200];
		snprintf(m, sizeof(m),
		         "registry: %s: no room for the unpacked tree in %s (layer %zu); "
		         "unpacking on disk instead",
		         p->refstr[0] ? p->refstr : p->manifest_digest, p->eng->store->ram_tmp,
		         layer + 1);
		p->eng->io->log(p->eng->io->ud, MB_LOG_INFO, m);
	}
	struct job *j = job_new(p);
	if (j) {
		j->path = strdup(p->ram_scratch);
		j->path2 = mbr_sprintf("%s/rootfs", p->scratch);
	}
	if (j && (!j->path || !j->path2)) {
		mb_err err;
		mb_err_set(&err, -ENOMEM, "out of memory");
		p->refs--;
		job_free(j);
		fail(p, &err);
		return true;
	}
	if (queue(p, j, ram_retry_work, ram_retry_done))
		p->unpacking = true; /* nothing else touches the trees meanwhile */
	return true;
}

static void unpack_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	if (p->finished) {
		p->unpacking = false;
		if (p->rm_pending)
			remove_scratch(p);
	} else {
		p->unpacking = false;
		if ((j->rc == -ENOSPC || j->rc == -EDQUOT) && ram_retry(p, j->layer)) {
			/* started over on disk */
		} else if (j->rc < 0) {
			mb_err err;
			/* a layer that cannot be applied safely is invalid input; only resource
			 * problems keep their own code */
			int code = j->rc == -ENOSPC || j->rc == -EDQUOT ? MBR_E_NO_SPACE
			           : j->rc == -EBADMSG                  ? MBR_E_CORRUPT
			           : j->rc == -ENOMEM || j->rc == -EIO || j->rc == -ENOSYS
			               ? j->rc
			               : MBR_E_INVALID;
			mb_err_set(&err, code, "layer %s: %s", p->layers[j->layer].d.digest,
			           j->err.msg);
			fail(p, &err);
		} else {
			p->layers[j->layer].state = L_EXTRACTED;
			p->next_unpack++;
			notify(p, true);
			pump(p);
		}
	}
	job_free(j);
	unref(p);
}

/* ---- layers: download --------------------------------------------------------------------------
 */

static void verify_work(void *arg)
{
	struct job *j = arg;
	j->rc = mbr_blobw_finish(j->w, &j->err);
	mbr_blobw_close(j->w, j->rc == MBR_E_CORRUPT);
	j->w = NULL;
}

static void verify_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	struct layer *l = &p->layers[j->layer];
	l->w = NULL; /* closed by the job */
	inflight_del(p, l);
	if (!p->finished) {
		if (j->rc < 0) {
			mb_err err;
			mb_err_set(&err, j->rc == -ENOSPC ? MBR_E_NO_SPACE : j->rc,
			           "layer %s rejected: %s", l->d.digest, j->err.msg);
			fail(p, &err);
		} else {
			l->state = L_STORED;
			p->running--;
			notify(p, true);
			pump(p);
		}
	}
	job_free(j);
	unref(p);
}

static void blob_progress(mbr_req *r, uint64_t bytes, void *arg)
{
	struct job *j = arg; /* the layer's context: job holds p + index */
	mbr_pull *p = j->p;
	p->layers[j->layer].done = bytes;
	notify(p, false);
}

static void blob_done(mbr_req *r, const mb_err *e, void *arg)
{
	struct job *ctx = arg;
	mbr_pull *p = ctx->p;
	struct layer *l = &p->layers[ctx->layer];
	size_t idx = ctx->layer;
	l->req = NULL;
	l->req_ctx = NULL;
	/* e may point into r (a write error of ours): copy it before r goes */
	mb_err err = { 0 };
	if (e) {
		err = *e;
		if (e->code == MBR_E_NOT_FOUND)
			mb_err_set(&err, MBR_E_NOT_FOUND, "layer %s: %s", l->d.digest, e->msg);
		else if (e->code == -EBADMSG)
			mb_err_set(&err, MBR_E_CORRUPT, "layer %s: %s", l->d.digest, e->msg);
	}
	mbr_req_free(r);
	job_free(ctx);
	if (e) {
		fail(p, &err);
		unref(p);
		return;
	}
	l->state = L_VERIFYING;
	notify(p, true);
	struct job *j = job_new(p);
	if (j) {
		j->layer = idx;
		j->w = l->w;
	}
	queue(p, j, verify_work, verify_done);
	unref(p);
}

static void prepare_work(void *arg)
{
	struct job *j = arg;
	j->rc = mbr_blobw_prepare(j->w, true, &j->err);
}

static void prepare_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	struct layer *l = &p->layers[j->layer];
	l->w_busy = false;
	if (p->finished) { /* stopped meanwhile: keep the partial file for a later resume */
		mbr_blobw_close(l->w, false);
		l->w = NULL;
		inflight_del(p, l);
	} else {
		if (j->rc < 0) {
			fail(p, &j->err);
		} else {
			l->done = mbr_blobw_offset(l->w);
			char url[600];
			snprintf(url, sizeof(url), "%s/blobs/%s", p->base, l->d.digest);
			struct mbr_req_opts o = {
				.url = url,
				.scope = p->scope,
				.cred = &p->cred,
				.host = p->host,
				.blob = l->w,
				.progress = blob_progress,
			};
			struct job *ctx = job_new(p); /* holds p for the request's lifetime */
			mb_err err = { 0 };
			if (!ctx) {
				mb_err_set(&err, -ENOMEM, "out of memory");
				fail(p, &err);
			} else {
				ctx->layer = j->layer;
				l->req = mbr_req_start(p->eng->client, &o, blob_done, ctx, &err);
				if (!l->req) {
					job_free(ctx);
					p->refs--;
					fail(p, &err);
				} else {
					l->req_ctx = ctx;
				}
			}
		}
	}
	job_free(j);
	unref(p);
}

static void wait_timer_fn(void *arg)
{
	struct job *ctx = arg;
	mbr_pull *p = ctx->p;
	p->layers[ctx->layer].wait_timer = NULL;
	p->layers[ctx->layer].wait_ctx = NULL;
	job_free(ctx);
	if (!p->finished)
		pump(p);
	unref(p);
}

static void start_download(mbr_pull *p, size_t i)
{
	struct layer *l = &p->layers[i];
	mb_err err = { 0 };
	if (mbr_store_has_blob(p->eng->store, l->d.digest, NULL)) {
		l->state = L_STORED;
		l->done = (uint64_t)l->d.size;
		return;
	}
	if (p->build) {
		mb_err_set(&err, MBR_E_NOT_FOUND, "layer %s is missing from the store",
		           l->d.digest);
		fail(p, &err);
		return;
	}
	if (mbr_strset_has(&p->eng->inflight, l->d.digest)) {
		/* another pull is fetching it: look again shortly */
		if (!l->wait_timer) {
			struct job *ctx = job_new(p);
			if (!ctx)
				return;
			ctx->layer = i;
			l->wait_ctx = ctx;
			l->wait_timer =
			    p->eng->io->timer_start(p->eng->io->ud, 200, wait_timer_fn, ctx);
		}
		return;
	}
	l->w = mbr_blobw_open(p->eng->store, l->d.digest, l->d.size, &err);
	if (!l->w) {
		fail(p, &err);
		return;
	}
	mbr_strset_add(&p->eng->inflight, l->d.digest);
	l->inflight_mine = true;
	l->state = L_DOWNLOADING;
	p->running++;
	struct job *j = job_new(p);
	if (j) {
		j->layer = i;
		j->w = l->w;
		l->w_busy = true;
	}
	queue(p, j, prepare_work, prepare_done);
}

static void pump(mbr_pull *p)
{
	if (p->finished)
		return;
	for (size_t i = 0; i < p->nlayers && p->running < p->eng->parallel && !p->finished; i++)
		if (p->layers[i].state == L_WAITING && !p->layers[i].wait_timer)
			start_download(p, i);
	if (p->finished)
		return;
	if (!p->unpacking && p->next_unpack < p->nlayers &&
	    p->layers[p->next_unpack].state == L_STORED) {
		size_t i = p->next_unpack;
		p->unpacking = true;
		p->layers[i].state = L_EXTRACTING;
		if (strcmp(p->status, "downloading"))
			set_status(p, "downloading");
		notify(p, true);
		struct job *j = job_new(p);
		if (j) {
			j->layer = i;
			j->path = strdup(p->rootfs);
			j->path2 = mbr_store_blob_path(p->eng->store, p->layers[i].d.digest);
			j->uopts = p->eng->unpack;
		}
		queue(p, j, unpack_work, unpack_done);
		return;
	}
	if (!p->unpacking && p->next_unpack == p->nlayers && !p->mkfs_started)
		start_mkfs(p);
}

/* ---- after the manifest: config, store, layers ------------------------------------------------
 */

static void scratch_work(void *arg)
{
	struct job *j = arg;
	/* a scratch directory on disk (for disk.erofs), and rootfs/ in RAM (path2, when
	 * asked and possible: else j->len = 0 and rootfs/ goes on disk) */
	if (mkdir(j->path, 0700) < 0) {
		j->rc = mb_err_set(&j->err, errno == ENOSPC ? -ENOSPC : -errno, "mkdir %s: %s",
		                   j->path, strerror(errno));
		return;
	}
	j->len = 0;
	if (j->path2) {
		char *dir = strdup(j->path2), *slash = dir ? strrchr(dir, '/') : NULL;
		char *root = mbr_sprintf("%s/rootfs", j->path2);
		if (slash)
			*slash = '\0';
		if (slash && root && mbr_mkdir_p(dir, 0700, NULL) == 0 &&
		    mkdir(j->path2, 0700) == 0) {
			if (mkdir(root, 0755) == 0)
				j->len = 1;
			else
				mbr_rm_tree(j->path2, NULL);
		}
		free(dir);
		free(root);
	}
	if (!j->len) {
		char *root = mbr_sprintf("%s/rootfs", j->path);
		if (!root || mkdir(root, 0755) < 0)
			j->rc = mb_err_set(&j->err, errno == ENOSPC ? -ENOSPC : -errno,
			                   "mkdir rootfs: %s", strerror(errno));
		free(root);
	}
}

static void scratch_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	p->making = false;
	if (p->ram_scratch && !j->len) { /* could not make it: unpack on disk */
		free(p->ram_scratch);
		p->ram_scratch = NULL;
		ram_release(p);
	}
	if (p->finished) {
		if (p->rm_pending)
			remove_scratch(p);
	} else {
		char *root = mbr_sprintf("%s/rootfs", p->ram_scratch ? p->ram_scratch : p->scratch);
		free(p->rootfs);
		p->rootfs = root;
		if (j->rc == 0 && !root)
			j->rc = mb_err_set(&j->err, -ENOMEM, "out of memory");
		if (j->rc < 0) {
			mb_err err = j->err;
			if (j->rc == -ENOSPC || j->rc == -EDQUOT)
				err.code = MBR_E_NO_SPACE;
			fail(p, &err);
		} else {
			set_status(p, "downloading");
			pump(p);
		}
	}
	job_free(j);
	unref(p);
}

static void store_config_work(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	if (!mbr_store_has_blob(p->eng->store, p->m.config.digest, NULL))
		j->rc = mbr_store_put_buf(p->eng->store, p->m.config.digest, p->config,
		                          p->config_len, &j->err);
	if (j->rc == 0 && !mbr_store_has_blob(p->eng->store, p->manifest_digest, NULL))
		j->rc = mbr_store_put_buf(p->eng->store, p->manifest_digest, p->manifest,
		                          p->manifest_len, &j->err);
}

static void have_config(mbr_pull *p);

static void store_config_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	if (!p->finished) {
		if (j->rc < 0) {
			mb_err err = j->err;
			if (j->rc == -ENOSPC || j->rc == -EDQUOT)
				err.code = MBR_E_NO_SPACE;
			fail(p, &err);
		} else {
			have_config(p);
		}
	}
	job_free(j);
	unref(p);
}

/* MemAvailable from /proc/meminfo in bytes, or 0 (procfs: no disk I/O). */
static uint64_t mem_available(void)
{
	char buf[4096];
	int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	const char *m = strstr(buf, "MemAvailable:");
	return m ? strtoull(m + 13, NULL, 10) * 1024 : 0;
}

/* Should this pull unpack in RAM? The tree is guessed at 4x the compressed layers (plus
 * 64 MiB); it must fit twice over in the RAM file system's free space and in available
 * memory, counting what running pulls already hold. Reserves the guess if so. */
static bool ram_fits(mbr_pull *p)
{
	mbr_engine *e = p->eng;
	struct statfs sf;
	if (!e->store->ram_tmp || !e->ram_dir[0] || statfs(e->ram_dir, &sf) < 0 ||
	    (e->ram_need_tmpfs && sf.f_type != TMPFS_MAGIC))
		return false;
	uint64_t want = 64u << 20;
	for (size_t i = 0; i < p->m.nlayers; i++)
		want += 4 * (uint64_t)(p->m.layers[i].size > 0 ? p->m.layers[i].size : 0);
	uint64_t room = (uint64_t)sf.f_bavail * (uint64_t)sf.f_bsize;
	uint64_t mem = mem_available();
	if (room < e->ram_reserved + 2 * want || mem < e->ram_reserved + 2 * want)
		return false;
	p->ram_want = want;
	e->ram_reserved += want;
	return true;
}

static void have_config(mbr_pull *p)
{
	mb_err err = { 0 };
	/* the disk, if it exists, is all a container needs */
	struct stat st;
	p->disk = mbr_store_disk_path(p->eng->store, p->m.config.digest);
	if (!p->disk) {
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return;
	}
	if (stat(p->disk, &st) == 0 && S_ISREG(st.st_mode)) {
		for (size_t i = 0; i < p->nlayers; i++) {
			p->layers[i].state = L_EXTRACTED;
			p->layers[i].existed = true;
		}
		succeed(p, true);
		return;
	}
	p->scratch = mbr_store_tmp_path(p->eng->store, "unpack");
	p->disk_tmp = p->scratch ? mbr_sprintf("%s/disk.erofs", p->scratch) : NULL;
	if (ram_fits(p)) {
		p->ram_scratch = mbr_store_ram_path(p->eng->store, "unpack");
		if (!p->ram_scratch)
			ram_release(p);
	}
	if (!p->disk_tmp) {
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return;
	}
	struct job *j = job_new(p);
	if (j) {
		j->path = strdup(p->scratch);
		j->path2 = p->ram_scratch ? strdup(p->ram_scratch) : NULL;
	}
	p->making = queue(p, j, scratch_work, scratch_done);
}

static int setup_layers(mbr_pull *p, mb_err *err)
{
	p->nlayers = p->m.nlayers;
	p->layers = calloc(p->nlayers ? p->nlayers : 1, sizeof(*p->layers));
	if (!p->layers)
		return mb_err_set(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < p->nlayers; i++) {
		p->layers[i].d = p->m.layers[i];
		if (mbr_store_has_blob(p->eng->store, p->m.layers[i].digest, NULL)) {
			p->layers[i].state = L_STORED;
			p->layers[i].existed = true;
			p->layers[i].done = (uint64_t)p->m.layers[i].size;
		}
	}
	return 0;
}

static int config_parsed(mbr_pull *p, mb_err *err)
{
	char got[MBR_DIGEST_LEN + 1];
	mbr_sha256_buf(p->config, p->config_len, got);
	if (strcmp(got, p->m.config.digest))
		return mb_err_set(err, MBR_E_CORRUPT,
		                  "config blob digest mismatch: expected %s, got %s",
		                  p->m.config.digest, got);
	p->summary = mbr_config_summary(p->config, p->config_len, err);
	if (!p->summary)
		return err ? err->code : -EINVAL;
	return setup_layers(p, err);
}

static void config_done(mbr_req *r, const mb_err *e, void *arg)
{
	mbr_pull *p = arg;
	p->req = NULL;
	mb_err err = { 0 };
	if (e) {
		err = *e;
		if (e->code == MBR_E_NOT_FOUND)
			mb_err_set(&err, MBR_E_NOT_FOUND, "config %s: %s", p->m.config.digest,
			           e->msg);
		mbr_req_free(r);
		fail(p, &err);
		return;
	}
	size_t len;
	const char *body = mbr_req_body(r, &len);
	p->config = malloc(len + 1);
	if (p->config) {
		memcpy(p->config, body, len);
		p->config[len] = '\0';
		p->config_len = len;
	}
	mbr_req_free(r);
	if (!p->config) {
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return;
	}
	if (config_parsed(p, &err) < 0) {
		fail(p, &err);
		return;
	}
	set_status(p, "storing");
	queue(p, job_new(p), store_config_work, store_config_done);
}

static void read_config_work(void *arg)
{
	struct job *j = arg;
	j->rc = mbr_read_file(j->path, MBR_MAX_CONFIG, &j->data, &j->len, &j->err);
}

static void read_config_done(void *arg)
{
	struct job *j = arg;
	mbr_pull *p = j->p;
	if (!p->finished) {
		mb_err err = { 0 };
		if (j->rc < 0) {
			fail(p, &j->err);
		} else {
			p->config = j->data;
			p->config_len = j->len;
			j->data = NULL;
			if (config_parsed(p, &err) < 0)
				fail(p, &err);
			else if (p->build)
				have_config(p);
			else
				queue(p, job_new(p), store_config_work, store_config_done);
		}
	}
	job_free(j);
	unref(p);
}

static void fetch_config(mbr_pull *p)
{
	mb_err err = { 0 };
	if (p->build || mbr_store_has_blob(p->eng->store, p->m.config.digest, NULL)) {
		struct job *j = job_new(p);
		if (j)
			j->path = mbr_store_blob_path(p->eng->store, p->m.config.digest);
		queue(p, j, read_config_work, read_config_done);
		return;
	}
	if (p->m.config.size > (int64_t)MBR_MAX_CONFIG) {
		mb_err_set(&err, -EINVAL, "image config is %lld bytes (limit %u)",
		           (long long)p->m.config.size, MBR_MAX_CONFIG);
		fail(p, &err);
		return;
	}
	char url[600];
	snprintf(url, sizeof(url), "%s/blobs/%s", p->base, p->m.config.digest);
	struct mbr_req_opts o = { .url = url,
		                  .scope = p->scope,
		                  .cred = &p->cred,
		                  .host = p->host,
		                  .mem_limit = MBR_MAX_CONFIG };
	p->req = mbr_req_start(p->eng->client, &o, config_done, p, &err);
	if (!p->req)
		fail(p, &err);
}

static void fetch_manifest(mbr_pull *p, const char *what);

static void manifest_done(mbr_req *r, const mb_err *e, void *arg)
{
	mbr_pull *p = arg;
	p->req = NULL;
	mb_err err = { 0 };
	if (e) {
		err = *e;
		if (e->code == MBR_E_NOT_FOUND)
			mb_err_set(&err, MBR_E_NOT_FOUND, "%s: manifest not found: %s", p->refstr,
			           e->msg);
		mbr_req_free(r);
		fail(p, &err);
		return;
	}
	size_t len;
	const char *body = mbr_req_body(r, &len);
	char got[MBR_DIGEST_LEN + 1];
	mbr_sha256_buf(body, len, got);
	const char *want = p->expect_digest[0] ? p->expect_digest : mbr_req_docker_digest(r);
	if (want[0] && !mbr_digest_parse(want, NULL, NULL) && strcmp(want, got)) {
		mb_err_set(&err, MBR_E_CORRUPT, "manifest digest mismatch: expected %s, got %s",
		           want, got);
		mbr_req_free(r);
		fail(p, &err);
		return;
	}
	if (!p->top_digest[0])
		snprintf(p->top_digest, sizeof(p->top_digest), "%s", got);
	struct mbr_manifest m;
	if (mbr_manifest_parse(body, len, mbr_req_content_type(r), &m, &err) < 0) {
		mbr_req_free(r);
		fail(p, &err);
		return;
	}
	if (m.kind == MBR_KIND_INDEX) {
		mbr_req_free(r);
		int k = mbr_index_select(&m, p->os, p->arch, p->variant, &err);
		if (k < 0 || p->expect_digest[0] == '!') {
			mbr_manifest_free(&m);
			fail(p, &err);
			return;
		}
		char dg[MBR_DIGEST_LEN + 1];
		snprintf(dg, sizeof(dg), "%s", m.manifests[k].digest);
		mbr_manifest_free(&m);
		snprintf(p->expect_digest, sizeof(p->expect_digest), "%s", dg);
		fetch_manifest(p, dg);
		return;
	}
	p->m = m;
	snprintf(p->manifest_digest, sizeof(p->manifest_digest), "%s", got);
	snprintf(p->media_type, sizeof(p->media_type), "%s", m.media_type);
	p->manifest = malloc(len + 1);
	if (!p->manifest) {
		mbr_req_free(r);
		mb_err_set(&err, -ENOMEM, "out of memory");
		fail(p, &err);
		return;
	}
	memcpy(p->manifest, body, len);
	p->manifest[len] = '\0';
	p->manifest_len = len;
	mbr_req_free(r);
	snprintf(p->repo_digest, sizeof(p->repo_digest), "%s@%s", p->name, p->top_digest);
	fetch_config(p);
}

static void fetch_manifest(mbr_pull *p, const char *what)
{
	mb_err err = { 0 };
	char url[700];
	snprintf(url, sizeof(url), "%s/manifests/%s", p->base, what);
	struct mbr_req_opts o = { .url = url,
		                  .accept = MBR_MANIFEST_ACCEPT,
		                  .scope = p->scope,
		                  .cred = &p->cred,
		                  .host = p->host,
		                  .mem_limit = MBR_MAX_MANIFEST };
	p->req = mbr_req_start(p->eng->client, &o, manifest_done, p, &err);
	if (!p->req)
		fail(p, &err);
}

/* ---- public ------------------------------------------------------------------------------------
 */

static mbr_pull *pull_new(mbr_engine *e, mbr_pull_progress_fn prog, mbr_pull_done_fn done,
                          void *arg)
{
	mbr_pull *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->eng = e;
	p->refs = 1;
	p->progress = prog;
	p->done = done;
	p->arg = arg;
	p->status = "resolving";
	e->active++;
	return p;
}

mbr_pull *mbr_pull_start(mbr_engine *e, const struct mbr_pull_opts *o, mbr_pull_progress_fn prog,
                         mbr_pull_done_fn done, void *arg, mb_err *err)
{
	struct mbr_ref ref;
	if (mbr_ref_parse(o->reference, &ref, err) < 0)
		return NULL;
	char os[32], arch[32], variant[32];
	if (mbr_platform_parse(o->platform, os, arch, variant, err) < 0)
		return NULL;
	mbr_pull *p = pull_new(e, prog, done, arg);
	if (!p) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	p->ref = ref;
	memcpy(p->os, os, sizeof(os));
	memcpy(p->arch, arch, sizeof(arch));
	memcpy(p->variant, variant, sizeof(variant));
	mbr_ref_string(&ref, p->refstr, sizeof(p->refstr));
	mbr_ref_name(&ref, p->name, sizeof(p->name));
	p->host = mbr_ref_api_host(&p->ref);
	snprintf(p->base, sizeof(p->base), "%s://%s/v2/%s",
	         mbr_client_scheme(e->client, p->ref.domain, o->insecure), p->host, ref.path);
	snprintf(p->scope, sizeof(p->scope), "repository:%s:pull", ref.path);
	if (o->cred && mbr_cred_copy(&p->cred, o->cred) < 0) {
		mb_err_set(err, -ENOMEM, "out of memory");
		unref(p);
		return NULL;
	}
	if (ref.digest[0])
		snprintf(p->expect_digest, sizeof(p->expect_digest), "%.71s", ref.digest);
	p->starting = true;
	fetch_manifest(p, ref.digest[0] ? ref.digest : ref.tag);
	p->starting = false;
	if (p->finished) { /* could not even start: report synchronously */
		if (err)
			*err = p->start_err;
		unref(p);
		return NULL;
	}
	notify(p, true);
	return p;
}

mbr_pull *mbr_build_start(mbr_engine *e, const char *manifest, size_t len,
                          const char *manifest_digest, mbr_pull_progress_fn prog,
                          mbr_pull_done_fn done, void *arg, mb_err *err)
{
	mbr_pull *p = pull_new(e, prog, done, arg);
	if (!p) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	p->build = true;
	p->manifest = malloc(len + 1);
	if (!p->manifest) {
		unref(p);
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	memcpy(p->manifest, manifest, len);
	p->manifest[len] = '\0';
	p->manifest_len = len;
	snprintf(p->manifest_digest, sizeof(p->manifest_digest), "%s", manifest_digest);
	if (mbr_manifest_parse(manifest, len, NULL, &p->m, err) < 0) {
		unref(p);
		return NULL;
	}
	if (p->m.kind != MBR_KIND_MANIFEST) {
		mb_err_set(err, -EINVAL, "not an image manifest");
		unref(p);
		return NULL;
	}
	snprintf(p->media_type, sizeof(p->media_type), "%s", p->m.media_type);
	p->starting = true;
	fetch_config(p);
	p->starting = false;
	if (p->finished) {
		if (err)
			*err = p->start_err;
		unref(p);
		return NULL;
	}
	return p;
}

void mbr_pull_free(mbr_pull *p)
{
	if (!p)
		return;
	if (!p->finished) {
		p->progress = NULL;
		stop_everything(p, false);
		p->finished = true;
		p->status = "cancelled";
	}
	unref(p);
}

const char *mbr_pull_reference(const mbr_pull *p)
{
	return p->refstr;
}

json_t *mbr_pull_progress_json(const mbr_pull *p)
{
	json_t *ls = json_array();
	json_int_t done = 0, total = 0;
	for (size_t i = 0; i < p->nlayers; i++) {
		const struct layer *l = &p->layers[i];
		json_int_t d = l->state >= L_STORED ? l->d.size : (json_int_t)l->done;
		json_array_append_new(ls,
		                      json_pack("{s:s,s:I,s:I,s:s,s:b}", "digest", l->d.digest,
		                                "size", (json_int_t)l->d.size, "done", d, "status",
		                                lstate_name[l->state], "cached", l->existed));
		done += d;
		total += l->d.size;
	}
	return json_pack("{s:s,s:s,s:s,s:o,s:I,s:I}", "reference", p->refstr, "status", p->status,
	                 "id", p->m.config.digest, "layers", ls, "bytes_done", done, "bytes_total",
	                 total);
}
