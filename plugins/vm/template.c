/*
 * VM templates: starting a VM by restoring a saved guest instead of booting a kernel.
 *
 * Per machine shape (QEMU, kernel, initramfs, memory, vCPUs, accelerator, translation
 * cache: the key) the plugin boots one guest in moonbox-init's template mode once, waits
 * until it is idle in its config-disk poll (guest/init/template.c), and saves it with QMP
 * `migrate` to <state>/vm/_tpl-<key>/snapshot. A start of a VM of that shape then runs
 * QEMU with the same device layout (build_argv() with a struct vm_tpl_use), the VM's own
 * disk files, NIC backend and a config disk, and `-incoming fd:4` on the snapshot; once
 * QEMU runs, the VM's boot config is written to the config disk and the guest, restored
 * in its poll loop, becomes that VM (clock, RNG reseed, re-probed disks and NIC).
 *
 * Layout (fixed, so that one template serves every VM of a shape): the config disk, up
 * to VM_TPL_DISKS disks (unused slots get a shared empty read-only file), one NIC, the
 * rng. VMs that do not fit (shares, more disks or NICs, another kernel, ACPI, an extra
 * command line, a custom initramfs) boot as before.
 *
 * A template is built the first time a VM of its shape starts (that VM boots normally,
 * the build runs beside it on its own thread: blocking QMP and file I/O, never the loop)
 * or adopted from disk when its snapshot is already there. A build that fails, or a
 * restore that fails, marks the template broken until the daemon restarts: VMs of that
 * shape boot normally meanwhile.
 */
#include "vm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mbp_proto.h"
#include "mbp_sha256.h"

#define TPL_FORMAT      "1" /* bump when the layout or the guest's template mode changes */
#define TPL_BOOT_MS     60000
#define TPL_MIGRATE_MS  60000
#define TPL_QUIT_MS     5000
#define TPL_PREFIX      "_tpl-" /* not a valid VM id: no clash with VM directories */
#define TPL_MAX_DEFAULT 8 /* machine shapes with a template: each costs a file of ~25-40 MiB */

enum tpl_state { TPL_BUILDING, TPL_READY, TPL_BROKEN };

struct vm_tpl {
	struct vm_tpl *next;
	char key[64];
	int memory_mib, smp;
	enum tpl_state state;
	char *dir; /* <state>/vm/_tpl-<key> */
	char error[512];
	double created;
	/* build in flight: the thread only touches pid and cancel (atomics) */
	pthread_t thread;
	bool thread_live;
	_Atomic pid_t pid;
	atomic_bool cancel;
};

static struct {
	bool enabled;
	int max; /* templates built per base key (MOONBOX_VM_TEMPLATES_MAX) */
	struct vm_tpl *list;
} T;

/* What a build thread owns; handed back to the loop with host->post. */
struct build_job {
	struct vm_tpl *t; /* only for pid/cancel while the thread runs */
	unsigned gen;
	char key[64];
	char *dir, *rdir, *base, *qmp_path, *stale_prefix;
	char **argv;
	int rc;
	mb_err err;
};

void vm_tpl_init(void)
{
	const char *e = getenv("MOONBOX_VM_TEMPLATES");
	T.enabled = !(e && (strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "no") == 0));
	T.max = (int)vm_env_long("MOONBOX_VM_TEMPLATES_MAX", 0, 1000, TPL_MAX_DEFAULT);
	T.list = NULL;
}

void vm_tpl_fini(void)
{
	while (T.list) {
		struct vm_tpl *t = T.list;
		T.list = t->next;
		if (t->thread_live) {
			atomic_store(&t->cancel, true);
			pid_t p = atomic_load(&t->pid);
			if (p > 0)
				kill(p, SIGKILL);
			pthread_join(t->thread, NULL);
		}
		free(t->dir);
		free(t);
	}
}

const char *vm_tpl_key(const struct vm_tpl *t)
{
	return t->key;
}

const char *vm_tpl_dir(const struct vm_tpl *t)
{
	return t->dir;
}

static void hash_file(mbp_sha256_ctx *c, const char *path)
{
	char real[4096];
	struct stat st;
	char id[4200];
	int n;
	if (realpath(path, real) && stat(real, &st) == 0)
		n = snprintf(id, sizeof(id), "%s|%lld|%lld.%09ld", real, (long long)st.st_size,
		             (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	else
		n = snprintf(id, sizeof(id), "missing:%s", path);
	mbp_sha256_update(c, id, (size_t)n);
}

/* The part of the key every shape shares: 16 hex digits into out[17]. */
static void base_key(char out[17])
{
	mbp_sha256_ctx c;
	mbp_sha256_init(&c);
	char s[256];
	int n = snprintf(s, sizeof(s), "%s|%s|%s|tb%d|tsc%ld", TPL_FORMAT, G.accel.key,
	                 G.accel.selected, G.tb_size_mib, G.tsc_khz);
	mbp_sha256_update(&c, s, (size_t)n);
	char *k = vm_strf("%s/vmlinux", G.guest_dir);
	char *i = vm_strf("%s/initramfs.cpio.gz", G.guest_dir);
	hash_file(&c, k);
	hash_file(&c, i);
	free(k);
	free(i);
	uint8_t h[MBP_SHA256_LEN];
	mbp_sha256_final(&c, h);
	mbp_hex_encode(h, 8, out);
}

/* Does v fit the template layout? */
static bool fits(const struct vm *v)
{
	const json_t *s = v->spec;
	const json_t *nics = json_object_get(s, "nics");
	return strcmp(json_string_value(json_object_get(s, "kernel")) ?: "", "custom") == 0 &&
	       !json_object_get(s, "initramfs") && !json_is_true(json_object_get(s, "acpi")) &&
	       !json_object_get(s, "cmdline_extra") &&
	       json_array_size(json_object_get(s, "shares")) == 0 &&
	       json_array_size(json_object_get(s, "disks")) <= VM_TPL_DISKS &&
	       json_array_size(nics) == 1;
}

static struct vm_tpl *find(const char *key)
{
	for (struct vm_tpl *t = T.list; t; t = t->next)
		if (strcmp(t->key, key) == 0)
			return t;
	return NULL;
}

/* ---- building (own thread) -------------------------------------------------------------- */

static int set_fail(struct build_job *j, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_fail(struct build_job *j, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(j->err.msg, sizeof(j->err.msg), fmt, ap);
	va_end(ap);
	j->err.code = code;
	j->rc = code;
	return code;
}

static int make_file(const char *path, off_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int rc = ftruncate(fd, size) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

static bool cancelled(struct build_job *j)
{
	return atomic_load(&j->t->cancel);
}

/* One QMP command on a blocking socket: 0 when it returned, negative errno otherwise.
 * *ret (may be NULL) gets the "return" value (new reference). Events are skipped. */
static int qmp_call(struct build_job *j, FILE *f, const char *cmd, json_t **ret)
{
	if (ret)
		*ret = NULL;
	if (fprintf(f, "%s\n", cmd) < 0 || fflush(f) != 0)
		return set_fail(j, -EIO, "QMP: cannot send %s", cmd);
	char line[65536];
	while (fgets(line, sizeof(line), f)) {
		json_t *m = json_loads(line, 0, NULL);
		if (!m)
			continue;
		json_t *r = json_object_get(m, "return");
		json_t *e = json_object_get(m, "error");
		if (r || e) {
			int rc = 0;
			if (e)
				rc = set_fail(j, -EIO, "QMP %s: %s", cmd,
				              json_string_value(json_object_get(e, "desc"))
				                  ?: "error");
			else if (ret)
				*ret = json_incref(r);
			json_decref(m);
			return rc;
		}
		json_decref(m);
	}
	return set_fail(j, -EIO, "QMP connection closed during %s", cmd);
}

static bool console_has(const char *dir, const char *needle)
{
	char *p = vm_strf("%s/console.log", dir);
	size_t len = 0;
	char *c = vm_read_file(p, 1 << 20, &len);
	free(p);
	bool has = c && memmem(c, len, needle, strlen(needle));
	free(c);
	return has;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Remove the directories of templates whose base key is not today's. */
static void remove_stale(const char *state_dir, const char *keep_prefix)
{
	DIR *d = opendir(state_dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strncmp(de->d_name, TPL_PREFIX, strlen(TPL_PREFIX)) != 0 ||
		    strncmp(de->d_name, keep_prefix, strlen(keep_prefix)) == 0)
			continue;
		char *p = vm_strf("%s/%s", state_dir, de->d_name);
		vm_rmtree(p);
		free(p);
	}
	closedir(d);
}

static int build(struct build_job *j, const char *state_dir)
{
	remove_stale(state_dir, j->stale_prefix);
	vm_rmtree(j->dir);
	int rc;
	if ((rc = vm_mkdir_p(j->dir, 0700)) < 0 || (rc = vm_mkdir_p(j->rdir, 0700)) < 0)
		return set_fail(j, rc, "creating %s: %s", j->dir, strerror(-rc));
	json_t *cfg = json_pack("{s:i,s:b}", "version", MBP_VERSION, "template", 1);
	char *initrd = vm_strf("%s/initrd", j->dir);
	rc = vm_build_initrd(j->base, cfg, initrd, &j->err);
	json_decref(cfg);
	free(initrd);
	if (rc < 0)
		return j->rc = rc;
	char *p = vm_strf("%s/config.img", j->dir);
	rc = make_file(p, MBP_CONFIG_DISK_SIZE);
	free(p);
	for (int i = 0; rc == 0 && i < VM_TPL_DISKS; i++) {
		p = vm_strf("%s/slot%d.img", j->dir, i);
		rc = make_file(p, 1 << 20);
		free(p);
	}
	if (rc == 0) {
		p = vm_strf("%s/empty.img", j->dir);
		rc = make_file(p, 1 << 20);
		free(p);
	}
	if (rc < 0)
		return set_fail(j, rc, "creating the template's disks: %s", strerror(-rc));

	int qfd = vm_qmp_listen(j->qmp_path, &j->err);
	if (qfd < 0)
		return j->rc = qfd;
	char *log = vm_strf("%s/qemu.log", j->dir);
	pid_t pid = vm_spawn_qemu(log, j->argv, qfd, -1, &j->err);
	free(log);
	close(qfd);
	if (pid < 0)
		return j->rc = pid;
	atomic_store(&j->t->pid, pid);
	FILE *f = NULL;
	json_t *r = NULL;
	if (cancelled(j)) {
		set_fail(j, -ECANCELED, "cancelled");
		goto kill;
	}
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", j->qmp_path);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		set_fail(j, -errno, "QMP connect: %s", strerror(errno));
		if (s >= 0)
			close(s);
		goto kill;
	}
	struct timeval tv = { 30, 0 }; /* no QMP answer takes that long */
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	f = fdopen(s, "r+");
	if (!f) {
		close(s);
		set_fail(j, -ENOMEM, "fdopen");
		goto kill;
	}
	char greeting[4096];
	if (!fgets(greeting, sizeof(greeting), f) ||
	    qmp_call(j, f, "{\"execute\":\"qmp_capabilities\"}", NULL) < 0 ||
	    qmp_call(j, f, "{\"execute\":\"cont\"}", NULL) < 0) {
		if (!j->rc)
			set_fail(j, -EIO, "QMP greeting missing");
		goto kill;
	}
	/* the guest is in its poll loop once it says so */
	uint64_t deadline = vm_mono_ms() + TPL_BOOT_MS;
	while (!console_has(j->dir, "template: waiting")) {
		int st;
		bool gone = waitpid(pid, &st, WNOHANG) == pid;
		if (gone)
			pid = 0; /* reaped: never signal that number again */
		if (cancelled(j) || vm_mono_ms() > deadline || gone) {
			char *tail = vm_strf("%s/console.log", j->dir);
			size_t tl = 0;
			char *t = vm_file_tail(tail, 600, &tl);
			free(tail);
			if (t)
				vm_utf8_sanitize(t, tl);
			set_fail(j, -ETIMEDOUT, "the template guest did not reach its wait: %s",
			         t ? t : "");
			free(t);
			goto kill;
		}
		sleep_ms(10);
	}
	char *cmd = vm_strf("{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > "
	                    "'%s/snapshot.tmp'\"}}",
	                    j->dir);
	rc = qmp_call(j, f, cmd, NULL);
	free(cmd);
	if (rc < 0)
		goto kill;
	deadline = vm_mono_ms() + TPL_MIGRATE_MS;
	for (;;) {
		if (qmp_call(j, f, "{\"execute\":\"query-migrate\"}", &r) < 0)
			goto kill;
		const char *st = json_string_value(json_object_get(r, "status")) ?: "";
		if (strcmp(st, "completed") == 0)
			break;
		if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0) {
			set_fail(j, -EIO, "saving the template failed: %s",
			         json_string_value(json_object_get(r, "error-desc")) ?: st);
			goto kill;
		}
		json_decref(r);
		r = NULL;
		if (cancelled(j) || vm_mono_ms() > deadline) {
			set_fail(j, -ETIMEDOUT, "saving the template took too long");
			goto kill;
		}
		sleep_ms(10);
	}
	qmp_call(j, f, "{\"execute\":\"quit\"}", NULL);
	j->rc = 0;
	for (int i = 0; i < TPL_QUIT_MS / 10; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			pid = 0;
			break;
		}
		sleep_ms(10);
	}
kill:
	json_decref(r);
	if (f)
		fclose(f);
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	atomic_store(&j->t->pid, 0);
	unlink(j->qmp_path);
	if (j->rc < 0)
		return j->rc;
	/* the snapshot's rename is the commit: only a complete one is ever used */
	char *tmp = vm_strf("%s/snapshot.tmp", j->dir);
	char *fin = vm_strf("%s/snapshot", j->dir);
	int fd = open(tmp, O_RDONLY | O_CLOEXEC);
	rc = fd >= 0 && fchmod(fd, 0600) == 0 && fsync(fd) == 0 && rename(tmp, fin) == 0 ? 0
	                                                                                 : -errno;
	if (fd >= 0)
		close(fd);
	free(tmp);
	free(fin);
	if (rc < 0)
		return set_fail(j, rc, "storing the snapshot: %s", strerror(-rc));
	p = vm_strf("%s/config.img", j->dir);
	unlink(p);
	free(p);
	for (int i = 0; i < VM_TPL_DISKS; i++) {
		p = vm_strf("%s/slot%d.img", j->dir, i);
		unlink(p);
		free(p);
	}
	return 0;
}

static void build_done(void *ud);

static void *build_thread(void *ud)
{
	struct build_job *j = ud;
	char *state_dir = strdup(j->dir);
	char *slash = state_dir ? strrchr(state_dir, '/') : NULL;
	if (slash)
		*slash = '\0';
	if (build(j, state_dir ? state_dir : ".") < 0)
		vm_rmtree(j->dir);
	vm_rmtree(j->rdir);
	free(state_dir);
	/* the loop may be gone (fini joins this thread): then nobody frees the job but us */
	if (G.host->post(build_done, j) < 0)
		build_done(j);
	return NULL;
}

/* Ownership: frees the job, its strings and argv. */
static void job_free(struct build_job *j)
{
	free(j->dir);
	free(j->rdir);
	free(j->base);
	free(j->qmp_path);
	free(j->stale_prefix);
	vm_argv_free(j->argv);
	free(j);
}

static void build_done(void *ud)
{
	struct build_job *j = ud;
	if (G.dead || j->gen != G.gen) {
		job_free(j);
		return;
	}
	struct vm_tpl *t = find(j->key);
	if (t && t->state == TPL_BUILDING) {
		if (t->thread_live) {
			pthread_join(t->thread, NULL);
			t->thread_live = false;
		}
		if (j->rc == 0) {
			t->state = TPL_READY;
			t->created = vm_now();
			vm_log(MB_LOG_INFO, "template %s ready (%d MiB, %d vCPUs)", t->key,
			       t->memory_mib, t->smp);
		} else {
			t->state = TPL_BROKEN;
			snprintf(t->error, sizeof(t->error), "%s", j->err.msg);
			vm_log(MB_LOG_WARN, "template %s: build failed: %s", t->key, j->err.msg);
		}
	}
	job_free(j);
}

static void start_build(struct vm_tpl *t)
{
	struct build_job *j = calloc(1, sizeof(*j));
	if (!j)
		abort();
	j->t = t;
	j->gen = G.gen;
	snprintf(j->key, sizeof(j->key), "%s", t->key);
	char *id = vm_strf(TPL_PREFIX "%s", t->key);
	j->dir = strdup(t->dir);
	j->rdir = vm_strf("%s/%s", G.run_dir, id);
	j->qmp_path = vm_strf("%s/qmp.sock", j->rdir);
	j->base = vm_strf("%s/initramfs.cpio.gz", G.guest_dir);
	char base[17];
	base_key(base);
	j->stale_prefix = vm_strf(TPL_PREFIX "%s", base);
	char *cfg = vm_strf("%s/config.img", t->dir);
	struct vm_tpl_use tu = { .dir = t->dir, .config = cfg, .build = true };
	j->argv = vm_tpl_argv(id, t->memory_mib, t->smp, &tu);
	free(cfg);
	free(id);
	if (!j->dir || !j->argv) {
		job_free(j);
		t->state = TPL_BROKEN;
		snprintf(t->error, sizeof(t->error), "out of memory");
		return;
	}
	t->state = TPL_BUILDING;
	int rc = pthread_create(&t->thread, NULL, build_thread, j);
	if (rc != 0) {
		job_free(j);
		t->state = TPL_BROKEN;
		snprintf(t->error, sizeof(t->error), "pthread_create: %s", strerror(rc));
		return;
	}
	t->thread_live = true;
	vm_log(MB_LOG_INFO, "template %s: building (%d MiB, %d vCPUs)", t->key, t->memory_mib,
	       t->smp);
}

const struct vm_tpl *vm_tpl_for(const struct vm *v)
{
	if (!T.enabled || !fits(v) ||
	    (strcmp(G.accel.selected, "tcg") != 0 && strcmp(G.accel.selected, "kvm") != 0))
		return NULL;
	char base[17];
	base_key(base);
	int mem = (int)json_integer_value(json_object_get(v->spec, "memory_mib"));
	double vcpus = json_number_value(json_object_get(v->spec, "vcpus"));
	int smp = (int)vcpus < vcpus ? (int)vcpus + 1 : (int)vcpus;
	char key[64];
	snprintf(key, sizeof(key), "%s-%dm-%dc", base, mem, smp);
	struct vm_tpl *t = find(key);
	if (!t) {
		char *snap = vm_strf("%s/" TPL_PREFIX "%s/snapshot", G.state_dir, key);
		struct stat st;
		bool saved = stat(snap, &st) == 0; /* by an earlier daemon */
		free(snap);
		/* A new build only when none is running (a build is a second boot on the
		 * host's CPUs; another shape's next start builds its own) and below the cap. */
		if (!saved) {
			int live = 0;
			for (struct vm_tpl *o = T.list; o; o = o->next) {
				if (o->state == TPL_BUILDING)
					return NULL;
				live += o->state == TPL_READY;
			}
			if (live >= T.max)
				return NULL;
		}
		t = calloc(1, sizeof(*t));
		if (!t)
			abort();
		snprintf(t->key, sizeof(t->key), "%s", key);
		t->memory_mib = mem;
		t->smp = smp;
		t->dir = vm_strf("%s/" TPL_PREFIX "%s", G.state_dir, key);
		t->next = T.list;
		T.list = t;
		if (saved) {
			t->state = TPL_READY;
			t->created = (double)st.st_mtime;
		} else {
			start_build(t);
		}
	}
	return t->state == TPL_READY ? t : NULL;
}

void vm_tpl_broken(const char *key, const char *why)
{
	struct vm_tpl *t = find(key);
	if (!t || t->state != TPL_READY)
		return;
	t->state = TPL_BROKEN;
	snprintf(t->error, sizeof(t->error), "restore failed: %s", why);
	vm_log(MB_LOG_WARN, "template %s: not used any more: %s", key, t->error);
}

json_t *vm_tpl_list(void)
{
	static const char *const names[] = { "building", "ready", "broken" };
	json_t *a = json_array();
	for (struct vm_tpl *t = T.list; t; t = t->next) {
		json_t *o =
		    json_pack("{s:s,s:i,s:i,s:s,s:s}", "key", t->key, "memory_mib", t->memory_mib,
		              "vcpus", t->smp, "state", names[t->state], "dir", t->dir);
		json_object_set_new(o, "created",
		                    t->created > 0 ? json_real(t->created) : json_null());
		json_object_set_new(o, "error", *t->error ? json_string(t->error) : json_null());
		json_array_append_new(a, o);
	}
	return a;
}

int vm_tpl_write_config(const char *path, const json_t *cfg, mb_err *err)
{
	char *body = json_dumps(cfg, JSON_COMPACT);
	if (!body)
		return mb_err_set(err, -ENOMEM, "out of memory");
	size_t len = strlen(body);
	int rc = 0;
	int fd = -1;
	if (len + 16 > MBP_CONFIG_DISK_SIZE) {
		rc = mb_err_set(err, -E2BIG,
		                "the boot config is %zu bytes, more than the config "
		                "disk holds",
		                len);
		goto out;
	}
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = mb_err_set(err, -errno, "open %s: %s", path, strerror(errno));
		goto out;
	}
	uint8_t hdr[16];
	memcpy(hdr, MBP_CONFIG_MAGIC, 8);
	for (int i = 0; i < 8; i++)
		hdr[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
	/* body and length first, the magic last: the guest never sees half a config */
	if (pwrite(fd, body, len, 16) != (ssize_t)len || pwrite(fd, hdr + 8, 8, 8) != 8 ||
	    pwrite(fd, hdr, 8, 0) != 8)
		rc = mb_err_set(err, -EIO, "write %s: %s", path, strerror(errno));
out:
	if (fd >= 0)
		close(fd);
	explicit_bzero(body, len);
	free(body);
	return rc;
}
