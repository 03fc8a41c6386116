/*
 * VM lifecycle: create, start (QEMU spawn, QMP, agent handshake), stop (agent shutdown, QMP
 * quit, SIGKILL), kill, pause/resume, remove, death detection and re-adoption.
 *
 * QEMU runs in its own session (setsid) with -S; the daemon passes it a listening QMP
 * socket (fd 3) bound at <run>/vms/<id>/qmp.sock, so QMP is connected before the guest
 * runs. Its stdout/stderr go to <state>/vm/<id>/qemu.log, the serial console to
 * console.log. A pidfd watches the process (our child, or an adopted one after a restart).
 * The VM's records are written before each action (intent), so a daemon killed at any
 * point finds the QEMU again through the pid (verified by /proc/<pid>/cmdline and start
 * time) or its pidfile.
 */
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mbp_proto.h"

#define START_TIMEOUT_TCG_MS 120000
#define START_TIMEOUT_KVM_MS 60000
#define STOP_MARGIN_MS       15000 /* after the grace: sync, unmount, reboot under TCG */
#define QUIT_WAIT_MS         5000
#define DIAL_FALLBACK_MS     20000 /* dial anyway if the console never shows the marker */
/* moonbox-init logs "network: ..." once the NIC is configured, right before it starts the
 * agent: from then on a connection attempt is answered (at worst with a RST, and nng redials
 * within 10 ms), so dialling then overlaps the TCP and SP handshakes with the agent's start. */
#define NET_MARKER   "]: network: "
#define AGENT_MARKER "agent: listening"

static const char *const state_names[] = { "created",  "starting", "running", "paused",
	                                   "stopping", "stopped",  "error" };

const char *vm_state_name(enum vm_state s)
{
	return state_names[s];
}

int vm_state_parse(const char *s)
{
	for (int i = 0; i < (int)(sizeof(state_names) / sizeof(state_names[0])); i++)
		if (strcmp(s, state_names[i]) == 0)
			return i;
	return -1;
}

static bool is_live(enum vm_state s)
{
	return s == VS_STARTING || s == VS_RUNNING || s == VS_PAUSED || s == VS_STOPPING;
}

/* ---- paths ------------------------------------------------------------------------------- */

char *vm_dir(const struct vm *v)
{
	return vm_strf("%s/%s", G.state_dir, v->id);
}

char *vm_run_dir(const struct vm *v)
{
	return vm_strf("%s/%s", G.run_dir, v->id);
}

char *vm_path(const struct vm *v, const char *file)
{
	return vm_strf("%s/%s/%s", G.state_dir, v->id, file);
}

char *vm_run_path(const struct vm *v, const char *file)
{
	return vm_strf("%s/%s/%s", G.run_dir, v->id, file);
}

/* ---- lookup, lifetime ------------------------------------------------------------------- */

struct vm *vm_find(const char *s)
{
	for (struct vm *v = G.vms; v; v = v->next)
		if (!v->removed && strcmp(v->id, s) == 0)
			return v;
	for (struct vm *v = G.vms; v; v = v->next)
		if (!v->removed && strcmp(v->name, s) == 0)
			return v;
	return NULL;
}

void vm_ref(struct vm *v)
{
	v->refs++;
}

/* Ownership: frees v and everything it owns (no runtime resources may be left). */
static void vm_free(struct vm *v)
{
	json_decref(v->spec);
	json_decref(v->exit);
	free(v->error);
	free(v->fail_msg);
	free(v->boot_token);
	free(v->tpl_key);
	while (v->stdins) {
		struct stdin_off *n = v->stdins->next;
		free(v->stdins->id);
		free(v->stdins);
		v->stdins = n;
	}
	explicit_bzero(v->token, sizeof(v->token));
	free(v);
}

void vm_unref(struct vm *v)
{
	if (--v->refs > 0 || !v->removed)
		return;
	for (struct vm **pp = &G.vms; *pp; pp = &(*pp)->next)
		if (*pp == v) {
			*pp = v->next;
			break;
		}
	vm_free(v);
}

/* Replace v->error with a copy of msg (borrowed; NULL clears). */
static void set_error(struct vm *v, const char *msg)
{
	free(v->error);
	v->error = msg ? strdup(msg) : NULL;
}

/* ---- the record ---------------------------------------------------------------------------- */

static char *cgroup_path(const struct vm *v);

/* A time or null: new reference. */
static json_t *opt_time(double t)
{
	return t > 0 ? json_real(t) : json_null();
}

json_t *vm_record(const struct vm *v)
{
	const json_t *s = v->spec;
	json_t *r = json_pack(
	    "{s:s,s:s,s:s,s:I,s:s,s:O,s:O,s:o,s:o,s:o,s:s,s:I,s:O,s:O,s:O}", "id", v->id, "name",
	    v->name, "state", vm_state_name(v->state), "pid",
	    (json_int_t)(is_live(v->state) ? v->pid : 0), "accel", v->accel, "vcpus",
	    json_object_get(s, "vcpus"), "memory_mib", json_object_get(s, "memory_mib"), "created",
	    opt_time(v->created), "started", opt_time(v->started), "stopped", opt_time(v->stopped),
	    "agent", v->agent_up && v->state != VS_STOPPED ? "connected" : "disconnected", "boots",
	    (json_int_t)v->boots, "hostname", json_object_get(s, "hostname"), "labels",
	    json_object_get(s, "labels"), "kernel", json_object_get(s, "kernel"));
	json_object_set_new(r, "exit", v->exit ? json_deep_copy(v->exit) : json_null());
	json_object_set_new(r, "error", v->error ? json_string(v->error) : json_null());
	json_object_set_new(r, "agent_addr",
	                    *v->agent_addr ? json_string(v->agent_addr) : json_null());
	json_object_set_new(r, "template", v->tpl_key ? json_string(v->tpl_key) : json_null());
	json_t *spec = json_deep_copy(s);
	json_object_set_new(r, "spec", spec);
	char *d = vm_dir(v);
	json_object_set_new(r, "dir", json_string(d));
	free(d);
	char *cg = cgroup_path(v);
	json_object_set_new(r, "cgroup", cg ? json_string(cg) : json_null());
	free(cg);
	if (!json_is_object(r)) {
		json_decref(r);
		return json_object();
	}
	return r;
}

/* {id, name} of an event: new reference (vm_emit steals it). */
static json_t *ev_data(const struct vm *v)
{
	return json_pack("{s:s,s:s}", "id", v->id, "name", v->name);
}

/* ---- waiters -------------------------------------------------------------------------------- */

static struct lwait *waiter_add(struct vm *v, struct lwait *lw, enum lw_kind kind)
{
	if (!lw)
		return NULL;
	lw->kind = kind;
	lw->vm = v;
	vm_ref(v);
	lw->next = v->waiters;
	v->waiters = lw;
	lw->linked = true;
	return lw;
}

static void waiter_unlink(struct lwait *lw)
{
	if (!lw->linked)
		return;
	lw->linked = false;
	for (struct lwait **pp = &lw->vm->waiters; *pp; pp = &(*pp)->next)
		if (*pp == lw) {
			*pp = lw->next;
			break;
		}
}

void vm_waiter_cancel(struct lwait *lw)
{
	struct vm *v = lw->vm;
	if (lw->fire)
		G.host->timer_stop(lw->fire);
	if (v) {
		waiter_unlink(lw);
		vm_unref(v);
	}
	free(lw->msg);
	free(lw);
}

static void waiter_fire(void *ud)
{
	struct lwait *lw = ud;
	lw->fire = NULL;
	struct vm *v = lw->vm;
	lua_State *T = G.host->wait_thread(lw->w);
	int n;
	if (lw->code == 0) {
		if (lw->kind == LW_REMOVE) {
			lua_pushboolean(T, 1);
		} else {
			json_t *r = vm_record(v);
			G.host->lua_push_json(T, r);
			json_decref(r);
		}
		n = 1;
	} else {
		lua_pushnil(T);
		lua_pushstring(T, lw->msg ? lw->msg : "failed");
		lua_pushstring(T, G.host->errcode(lw->code));
		n = 3;
	}
	mb_wait *w = lw->w;
	free(lw->msg);
	free(lw);
	G.host->wait_done(w, n);
	if (v)
		vm_unref(v);
}

void vm_waiter_finish(struct lwait *lw, int code, const char *msg)
{
	waiter_unlink(lw);
	lw->code = code;
	free(lw->msg);
	lw->msg = msg ? strdup(msg) : NULL;
	if (!lw->fire)
		lw->fire = G.host->timer_start(0, waiter_fire, lw);
}

/* Complete every waiter whose kind is in mask. */
static void finish_waiters(struct vm *v, unsigned mask, int code, const char *msg)
{
	vm_ref(v);
	struct lwait **pp = &v->waiters;
	while (*pp) {
		struct lwait *lw = *pp;
		if (mask & (1u << lw->kind)) {
			vm_waiter_finish(lw, code, msg); /* unlinks it */
			continue;
		}
		pp = &lw->next;
	}
	vm_unref(v);
}

#define M(k) (1u << (k))

/* ---- cgroup CPU quota (fractional vCPUs) ----------------------------------------------------- */

void vm_cgroup_detect(void)
{
	G.cgroup_mode = 0;
	free(G.cgroup_root);
	G.cgroup_root = NULL;
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
		char *c = vm_read_file("/sys/fs/cgroup/cgroup.controllers", 4096, NULL);
		if (c && strstr(c, "cpu")) {
			G.cgroup_mode = 2;
			G.cgroup_root = strdup("/sys/fs/cgroup/moonbox");
		}
		free(c);
	} else if (access("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", F_OK) == 0) {
		G.cgroup_mode = 1;
		G.cgroup_root = strdup("/sys/fs/cgroup/cpu/moonbox");
	}
}

static bool fractional(const struct vm *v)
{
	double c = json_number_value(json_object_get(v->spec, "vcpus"));
	return c != floor(c);
}

static int write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, s, strlen(s));
	int e = w < 0 ? -errno : 0;
	close(fd);
	return e;
}

/* Worker: create the VM's cgroup with its quota. */
static int cgroup_setup(const char *id, double vcpus, mb_err *err)
{
	if (G.cgroup_mode == 0)
		return mb_err_set(
		    err, -ENOTSUP,
		    "vcpus: fractional vCPUs need a CPU cgroup controller, none found");
	if (mkdir(G.cgroup_root, 0755) < 0 && errno != EEXIST)
		return mb_err_set(err, -errno, "cgroup %s: %s", G.cgroup_root, strerror(errno));
	long period = 100000, quota = lround(vcpus * (double)period);
	char *dir = vm_strf("%s/%s", G.cgroup_root, id);
	int rc = 0;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		rc = mb_err_set(err, -errno, "cgroup %s: %s", dir, strerror(errno));
	} else if (G.cgroup_mode == 2) {
		write_str("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
		char *sc = vm_strf("%s/cgroup.subtree_control", G.cgroup_root);
		write_str(sc, "+cpu");
		free(sc);
		char *p = vm_strf("%s/cpu.max", dir);
		char *val = vm_strf("%ld %ld", quota, period);
		int r = write_str(p, val);
		if (r < 0)
			rc = mb_err_set(err, r, "%s: %s", p, strerror(-r));
		free(p);
		free(val);
	} else {
		char *p = vm_strf("%s/cpu.cfs_period_us", dir);
		char *val = vm_strf("%ld", period);
		int r = write_str(p, val);
		free(p);
		free(val);
		p = vm_strf("%s/cpu.cfs_quota_us", dir);
		val = vm_strf("%ld", quota);
		if (r == 0)
			r = write_str(p, val);
		if (r < 0)
			rc = mb_err_set(err, r, "%s: %s", p, strerror(-r));
		free(p);
		free(val);
	}
	free(dir);
	return rc;
}

static int cgroup_attach(const struct vm *v, mb_err *err)
{
	char *p = vm_strf("%s/%s/cgroup.procs", G.cgroup_root, v->id);
	char pid[32];
	snprintf(pid, sizeof(pid), "%d", (int)v->pid);
	int r = write_str(p, pid);
	if (r < 0)
		mb_err_set(err, r, "moving QEMU into %s: %s", p, strerror(-r));
	free(p);
	return r;
}

static void cgroup_remove(const struct vm *v)
{
	if (!G.cgroup_root)
		return;
	char *p = vm_strf("%s/%s", G.cgroup_root, v->id);
	rmdir(p);
	free(p);
}

/* The VM's cgroup directory, malloc'ed (caller frees), or NULL without a quota. */
static char *cgroup_path(const struct vm *v)
{
	return G.cgroup_root && fractional(v) ? vm_strf("%s/%s", G.cgroup_root, v->id) : NULL;
}

/* ---- create ------------------------------------------------------------------------------- */

struct vm *vm_create(json_t *spec, mb_err *err)
{
	const char *id = json_string_value(json_object_get(spec, "id"));
	const char *name = json_string_value(json_object_get(spec, "name"));
	for (struct vm *o = G.vms; o; o = o->next) {
		if (o->removed)
			continue;
		if (strcmp(o->id, id) == 0 || strcmp(o->name, id) == 0) {
			json_decref(spec);
			mb_err_set(err, -EEXIST, "id: a VM with id \"%s\" already exists", id);
			return NULL;
		}
		if (strcmp(o->name, name) == 0 || strcmp(o->id, name) == 0) {
			mb_err_set(err, -EEXIST, "name: a VM named \"%s\" already exists", name);
			json_decref(spec);
			return NULL;
		}
	}
	struct vm *v = calloc(1, sizeof(*v));
	if (!v) {
		json_decref(spec);
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	v->pidfd = -1;
	snprintf(v->id, sizeof(v->id), "%s", id);
	snprintf(v->name, sizeof(v->name), "%s", name);
	v->spec = spec;
	v->state = VS_CREATED;
	v->created = vm_now();
	if (vm_random_hex(v->token, VM_TOKEN_HEX / 2, err) < 0) {
		vm_free(v);
		return NULL;
	}
	char *dir = vm_dir(v);
	int r = vm_mkdir_p(dir, 0700);
	if (r < 0) {
		mb_err_set(err, r, "creating %s: %s", dir, strerror(-r));
		free(dir);
		vm_free(v);
		return NULL;
	}
	char *rdir = vm_run_dir(v);
	r = vm_mkdir_p(rdir, 0700);
	if (r < 0) {
		mb_err_set(err, r, "creating %s: %s", rdir, strerror(-r));
		rmdir(dir);
		free(dir);
		free(rdir);
		vm_free(v);
		return NULL;
	}
	if (vdb_insert(v, err) < 0) {
		rmdir(dir);
		rmdir(rdir);
		free(dir);
		free(rdir);
		vm_free(v);
		return NULL;
	}
	free(dir);
	free(rdir);
	v->next = G.vms;
	G.vms = v;
	vm_emit("vm.created", ev_data(v));
	return v;
}

/* ---- QEMU process
 * -------------------------------------------------------------------------------- */

struct argv {
	char **v;
	int n, cap;
};

static void av_add(struct argv *a, char *s) /* takes ownership of s */
{
	if (a->n + 2 > a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->v = realloc(a->v, (size_t)a->cap * sizeof(char *));
		if (!a->v)
			abort();
	}
	a->v[a->n++] = s;
	a->v[a->n] = NULL;
}

/* Ownership: frees every string and the vector. */
static void av_free(struct argv *a)
{
	for (int i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
}

#define ADD(...) av_add(&a, vm_strf(__VA_ARGS__))

static const char *guest_ip(const struct vm *v, char *buf, size_t n)
{
	const char *addr =
	    json_string_value(json_object_get(json_object_get(v->spec, "network"), "address"));
	snprintf(buf, n, "%s", addr ? addr : "10.0.2.15/24");
	char *slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	return buf;
}

static bool kvm(void)
{
	return strcmp(G.accel.selected, "kvm") == 0;
}

/* The QEMU command line of v: argv (owned strings). agent_port: the user-net host port.
 * tu: NULL for a normal boot; otherwise the device layout of a template (template.c):
 * the config disk first, the spec's disks, unused slots up to VM_TPL_DISKS, and either a
 * NIC without a backend (building it) or -incoming fd:4 (restoring it). */
static struct argv build_argv(const struct vm *v, int agent_port, const struct vm_tpl_use *tu)
{
	struct argv a = { 0 };
	const json_t *s = v->spec;
	const char *kernel = json_string_value(json_object_get(s, "kernel"));
	bool acpi = json_is_true(json_object_get(s, "acpi"));
	double vcpus = json_number_value(json_object_get(s, "vcpus"));
	ADD("%s", G.qemu);
	ADD("-name");
	ADD("moonbox-vm-%s", v->id);
	ADD("-M");
	ADD("microvm,x-option-roms=off%s", acpi ? "" : ",acpi=off");
	ADD("-accel");
	if (kvm())
		ADD("kvm");
	else
		ADD("tcg,tb-size=%d", G.tb_size_mib);
	ADD("-cpu");
	ADD("%s", kvm() ? "host" : "qemu64,+arat");
	ADD("-smp");
	ADD("%d", (int)ceil(vcpus));
	ADD("-m");
	ADD("%lld", (long long)json_integer_value(json_object_get(s, "memory_mib")));
	ADD("-nodefaults");
	ADD("-no-user-config");
	ADD("-display");
	ADD("none");
	ADD("-no-reboot");
	ADD("-S");
	/* seccomp: no obsolete syscalls, no scheduler/affinity games. (elevateprivileges=deny
	 * and spawn=deny would also forbid setsid/fork that QEMU itself needs here) */
	ADD("-sandbox");
	ADD("on,obsolete=deny,resourcecontrol=deny");
	ADD("-pidfile");
	av_add(&a, vm_run_path(v, "qemu.pid"));
	ADD("-chardev");
	ADD("socket,id=qmp,fd=3,server=on,wait=off");
	ADD("-mon");
	ADD("chardev=qmp,mode=control");
	ADD("-chardev");
	char *con = vm_path(v, "console.log");
	ADD("file,id=con,path=%s", con);
	free(con);
	ADD("-serial");
	ADD("chardev:con");
	ADD("-kernel");
	if (strcmp(kernel, "custom") == 0)
		ADD("%s/vmlinux", G.guest_dir);
	else if (strcmp(kernel, "debian") == 0)
		ADD("%s/vmlinux-debian", G.guest_dir);
	else
		ADD("%s", kernel);
	ADD("-initrd");
	if (tu)
		ADD("%s/initrd", tu->dir);
	else
		av_add(&a, vm_run_path(v, "initrd"));
	char tsc[64] = "";
	if (G.tsc_khz > 0)
		snprintf(tsc, sizeof(tsc), " tsc_early_khz=%ld", G.tsc_khz);
	const char *extra = json_string_value(json_object_get(s, "cmdline_extra"));
	ADD("-append");
	ADD("console=ttyS0 panic=-1 reboot=t%s tsc=reliable cryptomgr.notests %s%s%s", tsc,
	    acpi ? "quiet init_on_alloc=0 mitigations=off" : "no_timer_check quiet",
	    extra ? " " : "", extra ? extra : "");
	/* devices in virtio-mmio order: disks, shares, NICs, with the rng in the 5th slot
	 * when there are more than four: without ACPI the 5th transport gets IRQ 8, which the
	 * RTC holds, so that device does not work; the rng is the one we can spare there. */
	size_t i;
	json_t *d;
	int ndev = 0;
	bool rng_done = false;
#define RNG_IF_SLOT5()                                                                             \
	do {                                                                                       \
		if (ndev == 4 && !rng_done) {                                                      \
			ADD("-object");                                                            \
			ADD("rng-random,id=rng0,filename=/dev/urandom");                           \
			ADD("-device");                                                            \
			ADD("virtio-rng-device,rng=rng0");                                         \
			rng_done = true;                                                           \
			ndev++;                                                                    \
		}                                                                                  \
		ndev++;                                                                            \
	} while (0)
	if (tu) {
		RNG_IF_SLOT5();
		ADD("-drive");
		ADD("id=cfg,file=%s,format=raw,if=none%s", tu->config,
		    tu->build ? "" : ",readonly=on");
		ADD("-device");
		ADD("virtio-blk-device,drive=cfg,serial=" MBP_CONFIG_SERIAL);
	}
	json_array_foreach(json_object_get(s, "disks"), i, d)
	{
		RNG_IF_SLOT5();
		ADD("-drive");
		ADD("id=d%zu,file=%s,format=%s,if=none%s", i,
		    json_string_value(json_object_get(d, "path")),
		    json_string_value(json_object_get(d, "format")),
		    json_is_true(json_object_get(d, "readonly")) ? ",readonly=on" : "");
		ADD("-device");
		ADD("virtio-blk-device,drive=d%zu,serial=%s", i,
		    json_string_value(json_object_get(d, "serial")));
	}
	/* unused slots: their own writable file while building (the template's disks must
	 * not be read-only, see template.c), one shared read-only file when restoring */
	for (i = json_array_size(json_object_get(s, "disks")); tu && i < VM_TPL_DISKS; i++) {
		RNG_IF_SLOT5();
		ADD("-drive");
		if (tu->build)
			ADD("id=d%zu,file=%s/slot%zu.img,format=raw,if=none", i, tu->dir, i);
		else
			ADD("id=d%zu,file=%s/empty.img,format=raw,if=none,readonly=on", i, tu->dir);
		ADD("-device");
		ADD("virtio-blk-device,drive=d%zu,serial=" MBP_EMPTY_SERIAL, i);
	}
	json_array_foreach(json_object_get(s, "shares"), i, d)
	{
		RNG_IF_SLOT5();
		ADD("-fsdev");
		ADD("local,id=fs%zu,path=%s,security_model=none%s", i,
		    json_string_value(json_object_get(d, "path")),
		    json_is_true(json_object_get(d, "readonly")) ? ",readonly=on" : "");
		ADD("-device");
		ADD("virtio-9p-device,fsdev=fs%zu,mount_tag=%s", i,
		    json_string_value(json_object_get(d, "tag")));
	}
	char ip[64];
	guest_ip(v, ip, sizeof(ip));
	json_array_foreach(json_object_get(s, "nics"), i, d)
	{
		RNG_IF_SLOT5();
		const char *type = json_string_value(json_object_get(d, "type"));
		if (tu && tu->build) {
			/* no backend: the guest negotiates the fewest features, so a restore
			 * with any backend accepts the saved device state */
			ADD("-device");
			ADD("virtio-net-device,mac=52:54:00:00:00:01");
			continue;
		}
		ADD("-netdev");
		if (strcmp(type, "tap") == 0) {
			ADD("tap,id=n%zu,ifname=%s,script=no,downscript=no", i,
			    json_string_value(json_object_get(d, "ifname")));
		} else {
			char *opt = vm_strf(
			    "user,id=n%zu,net=10.0.2.0/24%s,hostfwd=tcp:127.0.0.1:%d-%s:%d", i,
			    json_is_true(json_object_get(d, "restrict")) ? ",restrict=on" : "",
			    agent_port, ip, MBP_DEFAULT_PORT);
			size_t j;
			json_t *f;
			json_array_foreach(json_object_get(d, "forwards"), j, f)
			{
				char *o2 = vm_strf(
				    "%s,hostfwd=%s:%s:%lld-%s:%lld", opt,
				    json_string_value(json_object_get(f, "proto")),
				    json_string_value(json_object_get(f, "host_addr")),
				    (long long)json_integer_value(json_object_get(f, "host_port")),
				    ip,
				    (long long)json_integer_value(
				        json_object_get(f, "guest_port")));
				free(opt);
				opt = o2;
			}
			av_add(&a, opt);
		}
		ADD("-device");
		ADD("virtio-net-device,netdev=n%zu,mac=%s", i,
		    json_string_value(json_object_get(d, "mac")));
	}
	if (!rng_done) {
		ADD("-object");
		ADD("rng-random,id=rng0,filename=/dev/urandom");
		ADD("-device");
		ADD("virtio-rng-device,rng=rng0");
	}
#undef RNG_IF_SLOT5
	if (tu && !tu->build) {
		ADD("-incoming");
		ADD("fd:4");
	}
	return a;
}

#undef ADD

char **vm_tpl_argv(const char *id, int memory_mib, int smp, const struct vm_tpl_use *tu)
{
	struct vm *v = calloc(1, sizeof(*v));
	if (!v)
		abort();
	snprintf(v->id, sizeof(v->id), "%s", id);
	v->spec = json_pack("{s:s,s:b,s:i,s:i,s:[],s:[],s:[{s:s}]}", "kernel", "custom", "acpi", 0,
	                    "vcpus", smp, "memory_mib", memory_mib, "disks", "shares", "nics",
	                    "type", "user");
	if (!v->spec)
		abort();
	struct argv a = build_argv(v, 0, tu);
	json_decref(v->spec);
	free(v);
	return a.v;
}

void vm_argv_free(char **argv)
{
	for (size_t i = 0; argv && argv[i]; i++)
		free(argv[i]);
	free(argv);
}

/* The boot config (guest/PROTOCOL.md "Boot config"): new reference. Holds the token. */
static json_t *boot_config(const struct vm *v)
{
	const json_t *s = v->spec;
	const char *tok = v->boot_token ? v->boot_token : v->token;
	json_t *cfg = json_pack("{s:i,s:s,s:O,s:{s:i},s:O,s:O,s:i}", "version", MBP_VERSION,
	                        "token", tok, "hostname", json_object_get(s, "hostname"), "agent",
	                        "port", MBP_DEFAULT_PORT, "root", json_object_get(s, "root"),
	                        "mounts", json_object_get(s, "mounts"), "disk_timeout_ms", 10000);
	json_t *net = json_deep_copy(json_object_get(s, "network"));
	json_t *nic0 = json_array_get(json_object_get(s, "nics"), 0);
	if (nic0)
		json_object_set(net, "mac", json_object_get(nic0, "mac"));
	json_object_set_new(cfg, "network", net);
	if (json_object_get(s, "run"))
		json_object_set(cfg, "run", json_object_get(s, "run"));
	return cfg;
}

static void on_pidfd(int fd, uint32_t events, void *ud);

static int watch_pid(struct vm *v, mb_err *err)
{
	v->pidfd = vm_pidfd_open(v->pid);
	if (v->pidfd < 0)
		return mb_err_set(err, -errno, "pidfd_open(%d): %s", (int)v->pid, strerror(errno));
	v->pidw = G.host->fd_watch(v->pidfd, EPOLLIN, on_pidfd, v, err);
	if (!v->pidw) {
		close(v->pidfd);
		v->pidfd = -1;
		return err ? err->code : -EIO;
	}
	if (!v->held) {
		v->held = true;
		G.host->hold(G.self, +1);
	}
	return 0;
}

int vm_qmp_listen(const char *path, mb_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return mb_err_set(err, -ENAMETOOLONG, "QMP socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mb_err_set(err, -errno, "socket: %s", strerror(errno));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0600) < 0 ||
	    listen(fd, 4) < 0) {
		int e = errno;
		close(fd);
		unlink(path);
		return mb_err_set(err, -e, "QMP socket %s: %s", path, strerror(e));
	}
	int hi = fcntl(fd, F_DUPFD_CLOEXEC, 10);
	close(fd);
	if (hi < 0)
		return mb_err_set(err, -errno, "dup: %s", strerror(errno));
	return hi;
}

extern char **environ;

pid_t vm_spawn_qemu(const char *log, char *const argv[], int qmp_fd, int snap_fd, mb_err *err)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	posix_spawn_file_actions_adddup2(&fa, qmp_fd, 3);
	if (snap_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, snap_fd, 4);
	posix_spawn_file_actions_addclosefrom_np(&fa, snap_fd >= 0 ? 5 : 4);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
	                                  POSIX_SPAWN_SETSIGDEF);
	pid_t pid = 0;
	int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc != 0) {
		mb_err_set(err, -rc, "cannot run %s: %s", argv[0], strerror(rc));
		return -rc;
	}
	return pid;
}

/* ---- teardown and exit ---------------------------------------------------------------------- */

static void stop_timer(struct vm *v)
{
	if (v->timer) {
		G.host->timer_stop(v->timer);
		v->timer = NULL;
	}
}

/* Release every runtime resource of a VM whose QEMU is gone (or that fini leaves alone). */
static void console_watch_stop(struct vm *v);

static void release_runtime(struct vm *v, bool remove_files)
{
	stop_timer(v);
	console_watch_stop(v);
	if (v->pidw) {
		G.host->fd_unwatch(v->pidw);
		v->pidw = NULL;
	}
	if (v->pidfd >= 0) {
		close(v->pidfd);
		v->pidfd = -1;
	}
	if (v->qmp) {
		qmp_free(v->qmp);
		v->qmp = NULL;
	}
	if (v->agent) {
		agent_close(v->agent);
		v->agent = NULL;
	}
	v->agent_up = false;
	if (v->held) {
		v->held = false;
		G.host->hold(G.self, -1);
	}
	if (remove_files) {
		static const char *const files[] = { "qmp.sock", "qemu.pid", "initrd",
			                             "config.img" };
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			char *p = vm_run_path(v, files[i]);
			unlink(p);
			free(p);
		}
		cgroup_remove(v);
	}
}

static bool console_says_panic(const struct vm *v)
{
	char *t = vm_console_tail(v, 8192);
	bool p = t && strstr(t, "Kernel panic");
	free(t);
	return p;
}

static void start_now(struct vm *v);

/* QEMU said the saved state did not load (not: a bad disk of this VM). qt: QEMU's log tail. */
static bool state_load_error(const char *qt)
{
	return qt &&
	       (strstr(qt, "migration") || strstr(qt, "loading state") || strstr(qt, "section"));
}

/* A restore that QEMU could not load, with nobody asking for a stop: the template is not
 * used again and this start boots instead (its waiters keep waiting). */
static bool retry_cold(struct vm *v)
{
	if (!v->tpl_key || v->state != VS_STARTING || v->intent != VI_NONE || v->fail_msg)
		return false;
	char *qlog = vm_path(v, "qemu.log");
	size_t ql;
	char *qt = vm_file_tail(qlog, 600, &ql);
	free(qlog);
	bool retry = state_load_error(qt);
	if (retry) {
		vm_utf8_sanitize(qt, ql);
		char *why = vm_strf("QEMU could not load the saved state: %s", qt);
		vm_tpl_broken(v->tpl_key, why);
		vm_log(MB_LOG_WARN, "vm %s: %s; booting instead", v->id, why);
		free(why);
		v->pid = 0;
		v->pid_start = 0;
		v->qmp_shutdown[0] = '\0';
		start_now(v); /* picks no template: this one is broken now */
	}
	free(qt);
	return retry;
}

static void on_exit_status(struct vm *v, int code, int sig)
{
	release_runtime(v, true);
	if (retry_cold(v))
		return;
	v->stopped = vm_now();
	json_t *ex = json_object();
	json_object_set_new(ex, "at", json_real(v->stopped));
	json_object_set_new(ex, "qmp_reason",
	                    *v->qmp_shutdown ? json_string(v->qmp_shutdown) : json_null());
	if (code >= 0)
		json_object_set_new(ex, "code", json_integer(code));
	if (sig > 0)
		json_object_set_new(ex, "signal", json_integer(sig));
	enum vm_intent intent = v->intent;
	v->intent = VI_NONE;
	const char *reason;
	bool died = false;
	if (intent == VI_STOP) {
		reason = "stop";
		if (v->stop_phase >= 2)
			json_object_set_new(ex, "forced",
			                    json_string(v->stop_phase >= 3 ? "kill" : "quit"));
		v->state = VS_STOPPED;
	} else if (intent == VI_KILL) {
		reason = "kill";
		v->state = VS_STOPPED;
	} else if (intent == VI_FAIL || v->state == VS_STARTING) {
		/* the start failed: QEMU is gone now, report it */
		if (!v->fail_msg) {
			char *tail = vm_console_tail(v, VM_CONSOLE_TAIL);
			char *qlog = vm_path(v, "qemu.log");
			size_t ql;
			char *qt = vm_file_tail(qlog, 600, &ql);
			free(qlog);
			if (qt)
				vm_utf8_sanitize(qt, ql);
			char how[64];
			if (sig > 0)
				snprintf(how, sizeof(how), "killed by signal %d", sig);
			else if (code >= 0)
				snprintf(how, sizeof(how), "exit code %d", code);
			else
				snprintf(how, sizeof(how), "exit status unknown");
			v->fail_msg = vm_strf("QEMU exited during boot (%s)%s%s%s%s", how,
			                      qt && *qt ? "; QEMU said: " : "", qt ? qt : "",
			                      tail && *tail ? "\n--- console tail ---\n" : "",
			                      tail ? tail : "");
			v->fail_code = -EIO;
			free(tail);
			free(qt);
		}
		reason = "start-failed";
		v->state = VS_ERROR;
		set_error(v, v->fail_msg);
	} else {
		died = true;
		if (v->panicked || console_says_panic(v))
			reason = "guest-panic";
		else if (!strcmp(v->qmp_shutdown, "guest-shutdown") ||
		         !strcmp(v->qmp_shutdown, "guest-reset"))
			reason = v->qmp_shutdown;
		else if (!strcmp(v->qmp_shutdown, "host-signal"))
			reason = "host-signal";
		else if (*v->qmp_shutdown)
			reason = v->qmp_shutdown;
		else
			reason = "crashed";
		v->state = VS_STOPPED;
	}
	json_object_set_new(ex, "reason", json_string(reason));
	json_decref(v->exit);
	v->exit = ex;
	vdb_update(v);
	if (died) {
		json_t *d = ev_data(v);
		json_object_set_new(d, "reason", json_string(reason));
		json_object_set(d, "exit", ex);
		vm_emit("vm.died", d);
	}
	if (v->state == VS_ERROR) {
		json_t *d = ev_data(v);
		json_object_set_new(d, "error", json_string(v->error ? v->error : ""));
		vm_emit("vm.error", d);
	}
	json_t *d = ev_data(v);
	json_object_set_new(d, "reason", json_string(reason));
	json_object_set(d, "exit", ex);
	vm_emit("vm.stopped", d);
	vm_ref(v);
	if (v->state == VS_ERROR) {
		char *msg = v->fail_msg;
		int fc = v->fail_code ? v->fail_code : -EIO;
		v->fail_msg = NULL;
		finish_waiters(v, M(LW_START) | M(LW_PAUSE), fc, msg);
		finish_waiters(v, M(LW_STOP) | M(LW_KILL), 0, NULL);
		free(msg);
	} else {
		finish_waiters(v, M(LW_START) | M(LW_PAUSE), -ECONNRESET,
		               "the VM stopped before the operation completed");
		finish_waiters(v, M(LW_STOP) | M(LW_KILL), 0, NULL);
	}
	free(v->fail_msg);
	v->fail_msg = NULL;
	/* a forced remove waits for the exit, then removes */
	bool want_remove = false;
	for (struct lwait *lw = v->waiters; lw; lw = lw->next)
		want_remove |= lw->kind == LW_REMOVE;
	if (want_remove)
		vm_remove(v, true, NULL, NULL);
	vm_unref(v);
}

static void on_pidfd(int fd, uint32_t events, void *ud)
{
	struct vm *v = ud;
	siginfo_t si = { 0 };
	int code = -1, sig = 0;
	if (waitid(P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG) == 0) {
		if (si.si_pid == 0)
			return; /* not yet */
		if (si.si_code == CLD_EXITED)
			code = si.si_status;
		else
			sig = si.si_status;
	} else if (errno != ECHILD) {
		return;
	}
	on_exit_status(v, code, sig);
}

/* Kill QEMU now (start failures, vm.kill, the last stop step). The exit comes via pidfd. */
static void kill_qemu(struct vm *v)
{
	if (v->pid > 0 && v->pidfd >= 0)
		vm_pidfd_kill(v->pidfd, v->pid, SIGKILL);
}

static void fail_start(struct vm *v, int code, const char *msg)
{
	if (v->intent == VI_FAIL)
		return;
	v->intent = VI_FAIL;
	stop_timer(v);
	char *tail = vm_console_tail(v, VM_CONSOLE_TAIL);
	free(v->fail_msg);
	v->fail_msg = vm_strf("%s%s%s", msg, tail && *tail ? "\n--- console tail ---\n" : "",
	                      tail ? tail : "");
	v->fail_code = code;
	free(tail);
	if (v->pidfd >= 0) {
		kill_qemu(v);
		return; /* on_exit_status() completes */
	}
	on_exit_status(v, -1, 0);
}

/* ---- QMP and agent callbacks ------------------------------------------------------------------
 */

static void agent_authed_cb(void *ud);
static void agent_denied_cb(void *ud, const mb_err *err);
static void agent_disc_cb(void *ud);
static const struct agent_ops aops = { agent_authed_cb, agent_denied_cb, agent_disc_cb };

static void qmp_ready_cb(void *ud);
static void qmp_event_cb(void *ud, const char *name, json_t *data);
static void qmp_closed_cb(void *ud);
static const struct qmp_ops qops = { qmp_ready_cb, qmp_event_cb, qmp_closed_cb };

/* The initramfs and the config disk carry the agent token: delete them
 * once the guest has read them (or will never read them). */
static void remove_secrets(struct vm *v)
{
	static const char *const secret[] = { "initrd", "config.img" };
	for (size_t i = 0; i < 2; i++) {
		char *p = vm_run_path(v, secret[i]);
		unlink(p);
		free(p);
	}
}

static void start_running(struct vm *v)
{
	vm_log(MB_LOG_DEBUG, "vm %s: agent authenticated", v->id);
	stop_timer(v);
	v->state = VS_RUNNING;
	v->agent_up = true;
	v->started = vm_now();
	set_error(v, NULL);
	vdb_update(v);
	remove_secrets(v); /* not needed any more */
	json_t *d = ev_data(v);
	json_object_set_new(d, "pid", json_integer(v->pid));
	json_object_set_new(d, "accel", json_string(v->accel));
	json_object_set_new(d, "template", v->tpl_key ? json_string(v->tpl_key) : json_null());
	vm_emit("vm.started", d);
	finish_waiters(v, M(LW_START), 0, NULL);
}

static void agent_authed_cb(void *ud)
{
	struct vm *v = ud;
	v->agent_up = true;
	if (v->state == VS_STARTING && v->intent == VI_NONE)
		start_running(v);
	else
		vm_log(MB_LOG_INFO, "vm %s: agent connected", v->id);
}

static void agent_denied_cb(void *ud, const mb_err *err)
{
	struct vm *v = ud;
	v->agent_up = false;
	if (v->state == VS_STARTING) {
		char m[400];
		snprintf(m, sizeof(m), "agent authentication failed: %s", err->msg);
		fail_start(v, -EACCES, m);
		return;
	}
	vm_log(MB_LOG_ERROR, "vm %s: agent authentication failed: %s", v->id, err->msg);
	char m[400];
	snprintf(m, sizeof(m), "agent authentication failed: %s", err->msg);
	set_error(v, m);
	vdb_update(v);
}

static void agent_disc_cb(void *ud)
{
	struct vm *v = ud;
	if (v->agent_up && v->state == VS_RUNNING)
		vm_log(MB_LOG_INFO, "vm %s: agent connection lost, reconnecting", v->id);
	v->agent_up = false;
}

static int open_agent(struct vm *v, mb_err *err)
{
	if (v->agent)
		return 0;
	v->agent = agent_open(v->agent_addr, v->token, &aops, v, err);
	if (!v->agent)
		return err ? err->code : -EIO;
	agent_connect(v->agent);
	return 0;
}

static void console_watch_stop(struct vm *v)
{
	if (v->ino_w) {
		G.host->fd_unwatch(v->ino_w);
		v->ino_w = NULL;
	}
	if (v->ino_fd > 0) {
		close(v->ino_fd);
		v->ino_fd = 0;
	}
	if (v->dial_timer) {
		G.host->timer_stop(v->dial_timer);
		v->dial_timer = NULL;
	}
}

static void dial_now(struct vm *v)
{
	vm_log(MB_LOG_DEBUG, "vm %s: dialling the agent", v->id);
	console_watch_stop(v);
	if (v->state != VS_STARTING || v->intent != VI_NONE)
		return;
	mb_err err = { 0 };
	if (open_agent(v, &err) < 0)
		fail_start(v, err.code, err.msg);
}

/* Read what the console got since last time; true when the agent's marker is there. */
static bool console_scan(struct vm *v)
{
	char *p = vm_path(v, "console.log");
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	free(p);
	if (fd < 0)
		return false;
	bool found = false;
	char buf[4096 + sizeof(v->con_tail)];
	for (;;) {
		size_t keep = strlen(v->con_tail);
		memcpy(buf, v->con_tail, keep);
		ssize_t r = pread(fd, buf + keep, 4096, v->con_off);
		if (r <= 0)
			break;
		v->con_off += r;
		size_t n = keep + (size_t)r;
		buf[n] = '\0';
		for (size_t i = 0; i < n; i++)
			if (buf[i] == '\0')
				buf[i] = ' ';
		if (strstr(buf, NET_MARKER) || strstr(buf, AGENT_MARKER)) {
			found = true;
			break;
		}
		size_t t = n < sizeof(v->con_tail) - 1 ? n : sizeof(v->con_tail) - 1;
		memcpy(v->con_tail, buf + n - t, t);
		v->con_tail[t] = '\0';
	}
	close(fd);
	return found;
}

static void on_inotify(int fd, uint32_t events, void *ud)
{
	struct vm *v = ud;
	char evbuf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	while (read(fd, evbuf, sizeof(evbuf)) > 0) {
	}
	if (console_scan(v))
		dial_now(v);
}

static void dial_fallback(void *ud)
{
	struct vm *v = ud;
	v->dial_timer = NULL;
	vm_log(MB_LOG_INFO, "vm %s: no agent marker on the console yet: dialling anyway", v->id);
	dial_now(v);
}

static void console_watch_start(struct vm *v)
{
	v->con_off = 0;
	v->con_tail[0] = '\0';
	v->dial_timer = G.host->timer_start(DIAL_FALLBACK_MS, dial_fallback, v);
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	char *dir = vm_dir(v);
	if (fd >= 0 && inotify_add_watch(fd, dir, IN_MODIFY | IN_CREATE) >= 0) {
		v->ino_fd = fd;
		v->ino_w = G.host->fd_watch(fd, EPOLLIN, on_inotify, v, NULL);
	} else if (fd >= 0) {
		close(fd);
	}
	free(dir);
	if (!v->ino_w) {
		dial_now(v); /* no inotify: dial at once, nng retries */
		return;
	}
	if (console_scan(v))
		dial_now(v);
}

static void cont_done(void *ud, json_t *ret, const char *error)
{
	struct vm *v = ud;
	if (v->state != VS_STARTING || v->intent != VI_NONE)
		return;
	if (error) {
		char m[300];
		snprintf(m, sizeof(m), "QMP cont failed: %s", error);
		fail_start(v, -EIO, m);
		return;
	}
	vm_log(MB_LOG_DEBUG, "vm %s: running (cont)", v->id);
	if (v->tpl_key) {
		/* written now, not before the spawn: the clock it carries is read within ms */
		mb_err err = { 0 };
		json_t *cfg = boot_config(v);
		char seed[65];
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		json_object_set_new(cfg, "clock",
		                    json_pack("{s:I,s:I}", "sec", (json_int_t)ts.tv_sec, "nsec",
		                              (json_int_t)ts.tv_nsec));
		int rc = vm_random_hex(seed, 32, &err);
		if (rc == 0) {
			json_object_set_new(cfg, "seed", json_string(seed));
			char *path = vm_run_path(v, "config.img");
			rc = vm_tpl_write_config(path, cfg, &err);
			free(path);
		}
		explicit_bzero(seed, sizeof(seed));
		json_decref(cfg);
		if (rc < 0) {
			fail_start(v, rc, err.msg);
			return;
		}
	}
	console_watch_start(v);
}

static void status_done(void *ud, json_t *ret, const char *error);

static void qmp_ready_cb(void *ud)
{
	struct vm *v = ud;
	if (v->adopting) {
		qmp_command(v->qmp, "query-status", NULL, status_done, v);
		return;
	}
	if (v->state != VS_STARTING || v->intent != VI_NONE)
		return;
	vm_log(MB_LOG_DEBUG, "vm %s: QMP ready", v->id);
	if (fractional(v)) {
		mb_err err = { 0 };
		if (cgroup_attach(v, &err) < 0) {
			fail_start(v, err.code, err.msg);
			return;
		}
	}
	qmp_command(v->qmp, "cont", NULL, cont_done, v);
}

static void qmp_event_cb(void *ud, const char *name, json_t *data)
{
	struct vm *v = ud;
	if (strcmp(name, "SHUTDOWN") == 0) {
		snprintf(v->qmp_shutdown, sizeof(v->qmp_shutdown), "%s",
		         json_string_value(json_object_get(data, "reason")) ?: "");
		v->qmp_guest = json_is_true(json_object_get(data, "guest"));
	} else if (strcmp(name, "GUEST_PANICKED") == 0) {
		v->panicked = true;
	} else if (strcmp(name, "STOP") == 0 && v->state == VS_RUNNING && v->intent == VI_NONE) {
		/* paused by someone else (QMP from outside, an I/O error) */
		v->state = VS_PAUSED;
		vdb_update(v);
		vm_emit("vm.paused", ev_data(v));
	} else if (strcmp(name, "RESUME") == 0 && v->state == VS_PAUSED && v->intent == VI_NONE) {
		v->state = VS_RUNNING;
		vdb_update(v);
		vm_emit("vm.resumed", ev_data(v));
	}
}

static void qmp_closed_cb(void *ud)
{
	struct vm *v = ud;
	/* QEMU exits right after: the pidfd reports it. Keep the client until then. */
	(void)v;
}

/* ---- start --------------------------------------------------------------------------------- */

static void start_timeout(void *ud)
{
	struct vm *v = ud;
	v->timer = NULL;
	char m[200];
	snprintf(m, sizeof(m), "the guest agent did not answer within %d s%s",
	         v->start_timeout_ms / 1000, v->tpl_key ? " (restored from a template)" : "");
	if (v->tpl_key)
		vm_tpl_broken(v->tpl_key, m);
	fail_start(v, -ETIMEDOUT, m);
}

struct prep_job {
	struct vm *v;
	unsigned gen;
	char *base, *initrd, *dir, *rdir;
	char *cfgdisk; /* restoring a template: the config disk to create (empty), else NULL */
	json_t *cfg;
	bool cgroup;
	double vcpus;
	char id[VM_ID_MAX + 1];
	int rc;
	mb_err err;
};

static void rotate(const char *dir, const char *name)
{
	char *a = vm_strf("%s/%s", dir, name);
	char *b = vm_strf("%s/%s.1", dir, name);
	rename(a, b);
	free(a);
	free(b);
}

static void prep_work(void *ud)
{
	struct prep_job *j = ud;
	int r = vm_mkdir_p(j->rdir, 0700);
	if (r < 0) {
		j->rc = mb_err_set(&j->err, r, "creating %s: %s", j->rdir, strerror(-r));
		return;
	}
	r = vm_mkdir_p(j->dir, 0700);
	if (r < 0) {
		j->rc = mb_err_set(&j->err, r, "creating %s: %s", j->dir, strerror(-r));
		return;
	}
	rotate(j->dir, "console.log");
	rotate(j->dir, "qemu.log");
	if (j->cgroup && (j->rc = cgroup_setup(j->id, j->vcpus, &j->err)) < 0)
		return;
	if (j->cfgdisk) {
		/* empty now; the config is written once QEMU runs (cont_done) */
		unlink(j->cfgdisk);
		int fd = open(j->cfgdisk, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 || ftruncate(fd, MBP_CONFIG_DISK_SIZE) < 0)
			j->rc = mb_err_set(&j->err, -errno, "creating %s: %s", j->cfgdisk,
			                   strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	j->rc = vm_build_initrd(j->base, j->cfg, j->initrd, &j->err);
}

/* Ownership: frees the job and its strings and config. */
static void prep_free(struct prep_job *j)
{
	free(j->base);
	free(j->initrd);
	free(j->cfgdisk);
	free(j->dir);
	free(j->rdir);
	json_decref(j->cfg);
	free(j);
}

static void do_spawn(struct vm *v);

static void prep_done(void *ud)
{
	struct prep_job *j = ud;
	if (G.dead || j->gen != G.gen) {
		prep_free(j);
		return;
	}
	struct vm *v = j->v;
	int rc = j->rc;
	mb_err err = j->err;
	prep_free(j);
	if (v->state == VS_STARTING && v->intent == VI_NONE) {
		if (rc < 0)
			fail_start(v, rc, err.msg);
		else
			do_spawn(v);
	} else {
		remove_secrets(v);
		if (v->pidfd < 0 && (v->state == VS_STARTING || v->state == VS_STOPPING))
			on_exit_status(v, -1, 0); /* stopped or killed before QEMU existed */
	}
	vm_unref(v);
}

static void do_spawn(struct vm *v)
{
	mb_err err = { 0 };
	int port = 0;
	const json_t *nic0 = json_array_get(json_object_get(v->spec, "nics"), 0);
	char ip[64];
	guest_ip(v, ip, sizeof(ip));
	if (strcmp(json_string_value(json_object_get(nic0, "type")), "user") == 0) {
		port = vm_free_port();
		if (port < 0) {
			fail_start(v, port, "no free TCP port for the agent");
			return;
		}
		snprintf(v->agent_addr, sizeof(v->agent_addr), "tcp://127.0.0.1:%d", port);
	} else {
		snprintf(v->agent_addr, sizeof(v->agent_addr), "tcp://%s:%d", ip, MBP_DEFAULT_PORT);
	}
	char *sock = vm_run_path(v, "qmp.sock");
	int qfd = vm_qmp_listen(sock, &err);
	if (qfd < 0) {
		free(sock);
		fail_start(v, qfd, err.msg);
		return;
	}
	struct vm_tpl_use tu = { 0 };
	int snap = -1;
	char *cfgdisk = NULL, *snapshot = NULL;
	if (v->tpl_key) {
		const struct vm_tpl *t = vm_tpl_for(v);
		if (t && strcmp(vm_tpl_key(t), v->tpl_key) == 0) {
			tu.dir = vm_tpl_dir(t);
			tu.config = cfgdisk = vm_run_path(v, "config.img");
			snapshot = vm_strf("%s/snapshot", tu.dir);
			int fd = open(snapshot, O_RDONLY | O_CLOEXEC);
			snap = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 10);
			if (fd >= 0)
				close(fd);
		}
		if (snap < 0) {
			/* the template went away since the start began: boot after all */
			free(v->tpl_key);
			v->tpl_key = NULL;
			free(cfgdisk);
			free(snapshot);
			close(qfd);
			free(sock);
			stop_timer(v);
			start_now(v);
			return;
		}
	}
	struct argv a = build_argv(v, port, v->tpl_key ? &tu : NULL);
	char *log = vm_path(v, "qemu.log");
	pid_t pid = vm_spawn_qemu(log, a.v, qfd, snap, &err);
	free(log);
	av_free(&a);
	close(qfd);
	if (snap >= 0)
		close(snap);
	free(cfgdisk);
	free(snapshot);
	if (pid < 0) {
		free(sock);
		fail_start(v, pid, err.msg);
		return;
	}
	v->pid = pid;
	v->is_child = true;
	v->pid_start = vm_proc_starttime(pid);
	vdb_update(v); /* intent: the pid is on disk before anything else can go wrong */
	if (watch_pid(v, &err) < 0) {
		vm_pidfd_kill(-1, pid, SIGKILL);
		waitpid(pid, NULL, 0); /* our child, killed: immediate */
		free(sock);
		v->pid = 0;
		fail_start(v, err.code, err.msg);
		return;
	}
	v->qmp = qmp_connect(sock, &qops, v, &err);
	free(sock);
	if (!v->qmp) {
		fail_start(v, err.code, err.msg);
		return;
	}
	vm_log(MB_LOG_DEBUG, "vm %s: QEMU spawned, pid %d", v->id, (int)pid);
}

static void start_now(struct vm *v)
{
	vm_log(MB_LOG_DEBUG, "vm %s: preparing", v->id);
	snprintf(v->accel, sizeof(v->accel), "%s", G.accel.selected);
	if (!v->start_timeout_ms)
		v->start_timeout_ms = kvm() ? START_TIMEOUT_KVM_MS : START_TIMEOUT_TCG_MS;
	v->timer = G.host->timer_start((uint64_t)v->start_timeout_ms, start_timeout, v);
	struct prep_job *j = calloc(1, sizeof(*j));
	if (!j)
		abort();
	j->v = v;
	vm_ref(v);
	j->gen = G.gen;
	const char *kernel = json_string_value(json_object_get(v->spec, "kernel"));
	const char *ir = json_string_value(json_object_get(v->spec, "initramfs"));
	if (ir)
		j->base = strdup(ir);
	else if (strcmp(kernel, "debian") == 0)
		j->base = vm_strf("%s/initramfs-debian.cpio.gz", G.guest_dir);
	else
		j->base = vm_strf("%s/initramfs.cpio.gz", G.guest_dir);
	j->initrd = vm_run_path(v, "initrd");
	free(v->tpl_key);
	v->tpl_key = NULL;
	const struct vm_tpl *t = v->boot_token ? NULL : vm_tpl_for(v);
	if (t) {
		v->tpl_key = strdup(vm_tpl_key(t));
		j->cfgdisk = vm_run_path(v, "config.img");
	}
	j->dir = vm_dir(v);
	j->rdir = vm_run_dir(v);
	j->cfg = boot_config(v);
	j->cgroup = fractional(v);
	j->vcpus = json_number_value(json_object_get(v->spec, "vcpus"));
	snprintf(j->id, sizeof(j->id), "%s", v->id);
	mb_err err = { 0 };
	if (G.host->work(prep_work, prep_done, j, &err) < 0) {
		vm_unref(v);
		prep_free(j);
		fail_start(v, err.code, err.msg);
	}
}

void vm_accel_ready(void)
{
	struct vm *p = G.accel.parked;
	G.accel.parked = NULL;
	while (p) {
		struct vm *n = p->park_next;
		p->park_next = NULL;
		p->parked = false;
		if (p->state == VS_STARTING && p->intent == VI_NONE)
			start_now(p);
		else if (p->state == VS_STARTING)
			on_exit_status(p, -1, 0);
		vm_unref(p);
		p = n;
	}
}

int vm_start(struct vm *v, int timeout_ms, const char *boot_token, struct lwait *lw, mb_err *err)
{
	switch (v->state) {
	case VS_STARTING:
		waiter_add(v, lw, LW_START); /* join the start in progress */
		return 0;
	case VS_RUNNING:
	case VS_PAUSED:
	case VS_STOPPING:
		return mb_err_set(err, -EBUSY, "vm %s is %s", v->name, vm_state_name(v->state));
	default:
		break;
	}
	v->state = VS_STARTING;
	v->intent = VI_NONE;
	v->boots++;
	v->pid = 0;
	v->pid_start = 0;
	v->agent_up = false;
	v->panicked = false;
	v->stop_phase = 0;
	v->qmp_shutdown[0] = '\0';
	v->agent_addr[0] = '\0';
	v->start_timeout_ms = timeout_ms;
	free(v->boot_token);
	v->boot_token = boot_token ? strdup(boot_token) : NULL;
	json_decref(v->exit);
	v->exit = NULL;
	set_error(v, NULL);
	vdb_update(v);
	vm_emit("vm.starting", ev_data(v));
	waiter_add(v, lw, LW_START);
	if (accel_pending()) {
		vm_ref(v);
		v->parked = true;
		v->park_next = G.accel.parked;
		G.accel.parked = v;
		return 0;
	}
	start_now(v);
	return 0;
}

/* ---- stop, kill ---------------------------------------------------------------------------- */

static void stop_step(void *ud);

static void quit_done(void *ud, json_t *ret, const char *error)
{
}

static void stop_escalate(struct vm *v)
{
	stop_timer(v);
	v->stop_phase++;
	if (v->stop_phase == 2) {
		if (qmp_is_ready(v->qmp)) {
			qmp_command(v->qmp, "quit", NULL, quit_done, v);
			v->timer = G.host->timer_start(QUIT_WAIT_MS, stop_step, v);
			return;
		}
		v->stop_phase++;
	}
	kill_qemu(v);
}

static void stop_step(void *ud)
{
	struct vm *v = ud;
	v->timer = NULL;
	stop_escalate(v);
}

static void shutdown_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                          const mb_err *err)
{
	struct vm *v = ud;
	if (rc < 0 && v->state == VS_STOPPING && v->stop_phase == 1) {
		vm_log(MB_LOG_INFO, "vm %s: agent shutdown failed (%s): quitting QEMU", v->id,
		       err ? err->msg : "");
		stop_escalate(v);
	}
	vm_unref(v);
}

int vm_stop(struct vm *v, int timeout_ms, struct lwait *lw, mb_err *err)
{
	switch (v->state) {
	case VS_CREATED:
	case VS_STOPPED:
	case VS_ERROR:
		return 1;
	case VS_STOPPING:
		waiter_add(v, lw, LW_STOP);
		return 0;
	default:
		break;
	}
	bool was_paused = v->state == VS_PAUSED;
	bool starting = v->state == VS_STARTING;
	v->state = VS_STOPPING;
	v->intent = VI_STOP;
	v->stop_timeout_ms = timeout_ms;
	stop_timer(v);
	vdb_update(v);
	vm_emit("vm.stopping", ev_data(v));
	waiter_add(v, lw, LW_STOP);
	if (starting)
		finish_waiters(v, M(LW_START), -ECANCELED, "the start was cancelled by a stop");
	if (v->pidfd < 0) {
		if (!v->parked && starting)
			return 0; /* the preparation job finishes it (prep_done) */
		on_exit_status(v, -1, 0);
		return 0;
	}
	if (was_paused && qmp_is_ready(v->qmp))
		qmp_command(v->qmp, "cont", NULL, NULL, NULL); /* the guest must run to shut down */
	if (agent_authed(v->agent)) {
		v->stop_phase = 1;
		json_t *req = mbp_request(MBP_OP_SHUTDOWN);
		json_object_set_new(req, "grace_ms", json_integer(timeout_ms));
		vm_ref(v);
		if (agent_call(v->agent, req, NULL, 0, 10000, shutdown_done, v, NULL, NULL) < 0) {
			vm_unref(v);
			stop_escalate(v);
			return 0;
		}
		v->timer = G.host->timer_start((uint64_t)timeout_ms + STOP_MARGIN_MS, stop_step, v);
		return 0;
	}
	v->stop_phase = 1;
	stop_escalate(v);
	return 0;
}

int vm_kill(struct vm *v, struct lwait *lw, mb_err *err)
{
	if (!is_live(v->state))
		return mb_err_set(err, -EBUSY, "vm %s is not running (%s)", v->name,
		                  vm_state_name(v->state));
	bool starting = v->state == VS_STARTING;
	v->intent = VI_KILL;
	stop_timer(v);
	waiter_add(v, lw, LW_KILL);
	if (starting)
		finish_waiters(v, M(LW_START), -ECANCELED, "the start was cancelled by a kill");
	if (v->pidfd < 0) {
		if (!v->parked && starting)
			return 0; /* prep_done finishes it */
		on_exit_status(v, -1, 0);
		return 0;
	}
	kill_qemu(v);
	return 0;
}

/* ---- pause, resume ----------------------------------------------------------------------------
 */

static void stop_cmd_done(void *ud, json_t *ret, const char *error)
{
	struct vm *v = ud;
	if (!error && v->state == VS_RUNNING) {
		v->state = VS_PAUSED;
		vdb_update(v);
		vm_emit("vm.paused", ev_data(v));
	}
	finish_waiters(v, M(LW_PAUSE), error ? -EIO : 0, error);
	vm_unref(v);
}

static void cont_cmd_done(void *ud, json_t *ret, const char *error)
{
	struct vm *v = ud;
	if (!error && v->state == VS_PAUSED) {
		v->state = VS_RUNNING;
		vdb_update(v);
		vm_emit("vm.resumed", ev_data(v));
	}
	finish_waiters(v, M(LW_RESUME), error ? -EIO : 0, error);
	vm_unref(v);
}

int vm_pause(struct vm *v, bool pause, struct lwait *lw, mb_err *err)
{
	if (pause && v->state == VS_PAUSED)
		return 1;
	if (!pause && v->state == VS_RUNNING)
		return 1;
	if ((pause && v->state != VS_RUNNING) || (!pause && v->state != VS_PAUSED))
		return mb_err_set(err, -EBUSY, "vm %s is %s", v->name, vm_state_name(v->state));
	if (!qmp_is_ready(v->qmp))
		return mb_err_set(err, -ENOTCONN, "vm %s: QMP is not connected", v->name);
	waiter_add(v, lw, pause ? LW_PAUSE : LW_RESUME);
	vm_ref(v);
	qmp_command(v->qmp, pause ? "stop" : "cont", NULL, pause ? stop_cmd_done : cont_cmd_done,
	            v);
	return 0;
}

/* ---- remove
 * -------------------------------------------------------------------------------------- */

struct rm_job {
	struct vm *v;
	unsigned gen;
	char *dir, *rdir;
	int rc;
};

static void rm_work(void *ud)
{
	struct rm_job *j = ud;
	int r1 = vm_rmtree(j->dir);
	int r2 = vm_rmtree(j->rdir);
	j->rc = r1 < 0 ? r1 : r2;
}

static void rm_done(void *ud)
{
	struct rm_job *j = ud;
	if (G.dead || j->gen != G.gen) {
		free(j->dir);
		free(j->rdir);
		free(j);
		return;
	}
	struct vm *v = j->v;
	if (j->rc < 0)
		vm_log(MB_LOG_WARN, "vm %s: removing %s: %s", v->id, j->dir, strerror(-j->rc));
	free(j->dir);
	free(j->rdir);
	free(j);
	mb_err err = { 0 };
	if (vdb_delete(v->id, &err) < 0)
		vm_log(MB_LOG_ERROR, "vm %s: %s", v->id, err.msg);
	vm_emit("vm.removed", ev_data(v));
	finish_waiters(v, M(LW_REMOVE), 0, NULL);
	vm_unref(v); /* the job's reference; the struct goes with the last one */
}

int vm_remove(struct vm *v, bool force, struct lwait *lw, mb_err *err)
{
	if (is_live(v->state)) {
		if (!force)
			return mb_err_set(err, -EBUSY, "vm %s is %s: stop it first (or force)",
			                  v->name, vm_state_name(v->state));
		waiter_add(v, lw, LW_REMOVE);
		if (v->intent != VI_KILL)
			vm_kill(v, NULL, NULL);
		return 0;
	}
	waiter_add(v, lw, LW_REMOVE);
	v->removed = true; /* invisible from now on */
	struct rm_job *j = calloc(1, sizeof(*j));
	if (!j)
		abort();
	j->v = v;
	j->gen = G.gen;
	j->dir = vm_dir(v);
	j->rdir = vm_run_dir(v);
	vm_ref(v);
	mb_err e = { 0 };
	if (G.host->work(rm_work, rm_done, j, &e) < 0) {
		rm_work(j); /* small trees; better than leaving them behind */
		rm_done(j);
	}
	/* the record's reference: dropped once the tree is gone (rm_done's unref) */
	return 0;
}

/* ---- guest readiness, stdin offsets ---------------------------------------------------------- */

int vm_guest_ready(struct vm *v, mb_err *err)
{
	if (v->state == VS_PAUSED)
		return mb_err_set(err, -EBUSY, "vm %s is paused", v->name);
	if (v->state != VS_RUNNING)
		return mb_err_set(err, -EBUSY, "vm %s is %s", v->name, vm_state_name(v->state));
	if (!v->agent)
		return mb_err_set(err, -ENOTCONN, "vm %s: the agent is not connected", v->name);
	return 0;
}

int64_t *vm_stdin_off(struct vm *v, const char *proc_id, bool create)
{
	for (struct stdin_off *s = v->stdins; s; s = s->next)
		if (strcmp(s->id, proc_id) == 0)
			return &s->off;
	if (!create)
		return NULL;
	struct stdin_off *s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	s->id = strdup(proc_id);
	s->off = 0;
	s->next = v->stdins;
	v->stdins = s;
	return &s->off;
}

void vm_stdin_forget(struct vm *v, const char *proc_id)
{
	for (struct stdin_off **pp = &v->stdins; *pp; pp = &(*pp)->next) {
		struct stdin_off *s = *pp;
		if (strcmp(s->id, proc_id) == 0) {
			*pp = s->next;
			free(s->id);
			free(s);
			return;
		}
	}
}

/* ---- re-adoption --------------------------------------------------------------------------------
 */

static void status_done(void *ud, json_t *ret, const char *error)
{
	struct vm *v = ud;
	v->adopting = false;
	const char *st = json_string_value(json_object_get(ret, "status"));
	if (error || !st)
		return;
	if (v->state == VS_STARTING) {
		if (!strcmp(st, "prelaunch") || !strcmp(st, "paused")) {
			qmp_ready_cb(v); /* cgroup + cont, then the agent */
		} else {
			mb_err err = { 0 };
			if (open_agent(v, &err) < 0)
				fail_start(v, err.code, err.msg);
		}
		return;
	}
	if (v->state == VS_STOPPING) {
		v->intent = VI_STOP;
		v->stop_phase = 1;
		stop_escalate(v); /* QMP quit, then SIGKILL */
		return;
	}
	enum vm_state want = !strcmp(st, "running") ? VS_RUNNING : VS_PAUSED;
	if (want != v->state) {
		v->state = want;
		vdb_update(v);
	}
}

static pid_t pidfile_pid(const struct vm *v)
{
	char *p = vm_run_path(v, "qemu.pid");
	char *s = vm_read_file(p, 64, NULL);
	free(p);
	pid_t pid = s ? (pid_t)atoi(s) : 0;
	free(s);
	return pid;
}

static bool verify_pid(const struct vm *v, pid_t pid)
{
	if (pid <= 0 || kill(pid, 0) < 0)
		return false;
	char *name = vm_strf("moonbox-vm-%s\n", v->id);
	char *pidf = vm_run_path(v, "qemu.pid");
	const char *needles[] = { name, pidf };
	bool ok = vm_proc_cmdline_has(pid, needles, 2);
	free(name);
	free(pidf);
	if (ok && v->pid_start && v->pid == pid && vm_proc_starttime(pid) != v->pid_start)
		ok = false; /* the pid was reused */
	return ok;
}

static void adopt(struct vm *v)
{
	pid_t pid = v->pid;
	if (!verify_pid(v, pid)) {
		pid_t pf = pidfile_pid(v);
		pid = pf != pid && verify_pid(v, pf) ? pf : 0;
	}
	mb_err err = { 0 };
	if (pid > 0) {
		v->pid = pid;
		if (!v->pid_start)
			v->pid_start = vm_proc_starttime(pid);
		v->is_child = false;
		if (watch_pid(v, &err) == 0) {
			/* the guest may still be starting or stopping: continue from QMP's view */
			v->adopting = true;
			char *sock = vm_run_path(v, "qmp.sock");
			v->qmp = qmp_connect(sock, &qops, v, &err);
			free(sock);
			if (!v->qmp) {
				v->adopting = false;
				vm_log(MB_LOG_WARN, "vm %s: QMP unavailable after restart: %s",
				       v->id, err.msg);
			}
			if (v->state != VS_STARTING && v->state != VS_STOPPING && *v->agent_addr &&
			    open_agent(v, &err) < 0)
				vm_log(MB_LOG_WARN, "vm %s: agent: %s", v->id, err.msg);
			if (v->state == VS_STARTING) {
				if (!v->start_timeout_ms)
					v->start_timeout_ms = START_TIMEOUT_TCG_MS;
				v->timer = G.host->timer_start((uint64_t)v->start_timeout_ms,
				                               start_timeout, v);
			}
			vdb_update(v);
			json_t *d = ev_data(v);
			json_object_set_new(d, "pid", json_integer(pid));
			json_object_set_new(d, "state", json_string(vm_state_name(v->state)));
			vm_emit("vm.adopted", d);
			vm_log(MB_LOG_INFO, "vm %s: re-adopted QEMU pid %d (%s)", v->id, (int)pid,
			       vm_state_name(v->state));
			return;
		}
		vm_log(MB_LOG_WARN, "vm %s: cannot watch pid %d: %s", v->id, (int)pid, err.msg);
	}
	/* QEMU went away while no daemon watched it */
	bool was_stopping = v->state == VS_STOPPING;
	if (v->state == VS_STARTING) {
		v->fail_msg =
		    strdup("the daemon restarted while the VM was starting, and QEMU is gone");
		v->fail_code = -EIO;
		v->intent = VI_FAIL;
	} else if (was_stopping) {
		v->intent = VI_STOP;
	}
	snprintf(v->qmp_shutdown, sizeof(v->qmp_shutdown), "%s", "");
	on_exit_status(v, -1, 0);
	if (!was_stopping && v->exit && v->state == VS_STOPPED) {
		json_object_set_new(v->exit, "detail",
		                    json_string("QEMU exited while the daemon was not running"));
		vdb_update(v);
	}
}

void vm_adopt_all(void)
{
	for (struct vm *v = G.vms; v; v = v->next)
		if (is_live(v->state))
			adopt(v);
}

/* ---- fini ------------------------------------------------------------------------------------ */

void vm_fini_all(void)
{
	/* Release host-side resources only: QEMU keeps running and is re-adopted later. */
	for (struct vm *v = G.vms; v; v = v->next) {
		stop_timer(v);
		console_watch_stop(v);
		if (v->pidw) {
			G.host->fd_unwatch(v->pidw);
			v->pidw = NULL;
		}
		if (v->pidfd >= 0) {
			close(v->pidfd);
			v->pidfd = -1;
		}
		if (v->qmp) {
			qmp_free(v->qmp);
			v->qmp = NULL;
		}
		v->agent = NULL; /* agent_fini_all closes every socket */
		while (v->waiters) {
			struct lwait *lw = v->waiters;
			v->waiters = lw->next;
			lw->linked = false;
			lw->vm = NULL;
		}
	}
	while (G.vms) {
		struct vm *n = G.vms->next;
		vm_free(G.vms);
		G.vms = n;
	}
}
