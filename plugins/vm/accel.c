/*
 * Acceleration: KVM only when a probe guest really boots under it, else TCG.
 *
 * The probe boots the real default kernel + initramfs (root "none", no network) with
 * `-accel kvm -cpu host`, the command line a KVM VM would get, and waits for
 * moonbox-init's "agent: listening" line on the console, at most PROBE_MS. /dev/kvm that
 * opens but cannot run a guest (a paravirtual nested flavour, a broken MSR set, ...) fails
 * the probe and TCG is chosen with a warning. The verdict is cached in
 * <state>/vm/accel.json, keyed by the guest kernel, the QEMU version, the host kernel and the
 * CPU model, so it runs once per host configuration. Everything is asynchronous: daemon
 * start does not wait; vm.start parks until the verdict is in.
 *
 * MOONBOX_VM_ACCEL=tcg|kvm in the daemon's environment forces a choice (no probe).
 */
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "mbp_proto.h"

#define PROBE_MS      10000
#define PROBE_POLL_MS 50

static struct accel *A = &G.accel;

static void accel_finish(bool kvm_ok, const char *reason, bool cached);

/* ---- cache ------------------------------------------------------------------------------ */

/* <state>/vm/accel.json, malloc'ed: caller frees. */
static char *cache_path(void)
{
	return vm_strf("%s/accel.json", G.state_dir);
}

static void compute_key(void)
{
	mbp_sha256_ctx c;
	mbp_sha256_init(&c);
	mbp_sha256_update(&c, A->qemu_version, strlen(A->qemu_version));
	struct utsname u;
	if (uname(&u) == 0) {
		mbp_sha256_update(&c, u.release, strlen(u.release));
		mbp_sha256_update(&c, u.version, strlen(u.version));
	}
	char *cpu = vm_read_file("/proc/cpuinfo", 64 * 1024, NULL);
	if (cpu) {
		char *m = strstr(cpu, "model name");
		char *e = m ? strchr(m, '\n') : NULL;
		if (m && e)
			mbp_sha256_update(&c, m, (size_t)(e - m));
		free(cpu);
	}
	char *k = vm_strf("%s/vmlinux", G.guest_dir);
	char real[4096];
	struct stat st;
	if (realpath(k, real) && stat(real, &st) == 0) {
		char id[4200];
		int n = snprintf(id, sizeof(id), "%s|%lld|%lld", real, (long long)st.st_size,
		                 (long long)st.st_mtime);
		mbp_sha256_update(&c, id, (size_t)n);
	}
	free(k);
	uint8_t out[MBP_SHA256_LEN];
	mbp_sha256_final(&c, out);
	mbp_hex_encode(out, sizeof(out), A->key);
}

static bool load_cache(void)
{
	char *p = cache_path();
	json_t *j = json_load_file(p, 0, NULL);
	free(p);
	if (!j)
		return false;
	bool hit = strcmp(json_string_value(json_object_get(j, "key")) ?: "", A->key) == 0;
	if (hit) {
		A->kvm_device = json_is_true(json_object_get(j, "kvm_device"));
		accel_finish(json_is_true(json_object_get(j, "kvm_ok")),
		             json_string_value(json_object_get(j, "reason")) ?: "", true);
	}
	json_decref(j);
	return hit;
}

static void save_cache(void)
{
	json_t *j = json_pack("{s:s,s:b,s:b,s:s,s:s,s:f}", "key", A->key, "kvm_ok", A->kvm_ok,
	                      "kvm_device", A->kvm_device, "reason", A->reason, "qemu",
	                      A->qemu_version, "probed_at", vm_now());
	char *p = cache_path();
	char *tmp = vm_strf("%s.tmp", p);
	if (j && json_dump_file(j, tmp, JSON_INDENT(1)) == 0 && rename(tmp, p) == 0) {
		/* saved */
	} else {
		unlink(tmp);
		vm_log(MB_LOG_WARN, "vm: could not save %s", p);
	}
	free(tmp);
	free(p);
	json_decref(j);
}

/* ---- the verdict -------------------------------------------------------------------------- */

static void accel_finish(bool kvm_ok, const char *reason, bool cached)
{
	A->kvm_ok = kvm_ok;
	A->cached = cached;
	snprintf(A->selected, sizeof(A->selected), "%s", kvm_ok ? "kvm" : "tcg");
	snprintf(A->reason, sizeof(A->reason), "%s", reason);
	A->st = ACC_DONE;
	if (!kvm_ok)
		vm_log(
		    MB_LOG_WARN,
		    "vm: using TCG (software emulation, translation cache bounded to %d MiB): %s",
		    G.tb_size_mib, reason);
	else
		vm_log(MB_LOG_INFO, "vm: using KVM: %s", reason);
	if (G.host->hold && A->probe_dir == NULL)
		vm_accel_ready();
}

bool accel_pending(void)
{
	return A->st != ACC_DONE;
}

json_t *accel_json(void)
{
	json_t *avail = json_array();
	json_array_append_new(avail, json_string("tcg"));
	if (A->st == ACC_DONE && A->kvm_ok)
		json_array_append_new(avail, json_string("kvm"));
	json_t *j =
	    json_pack("{s:o,s:I,s:b,s:i}", "available", avail, "tsc_khz", (json_int_t)G.tsc_khz,
	              "probing", A->st != ACC_DONE, "tb_size_mib", G.tb_size_mib);
	if (A->st == ACC_DONE) {
		json_object_set_new(j, "selected", json_string(A->selected));
		json_object_set_new(j, "reason", json_string(A->reason));
		json_object_set_new(j, "cached", json_boolean(A->cached));
	} else {
		json_object_set_new(j, "selected", json_null());
		json_object_set_new(j, "reason", json_string("the KVM probe is still running"));
	}
	json_object_set_new(j, "kvm",
	                    json_pack("{s:b,s:b}", "device", A->kvm_device, "boots",
	                              A->st == ACC_DONE && A->kvm_ok));
	return j;
}

/* ---- the probe ----------------------------------------------------------------------------- */

struct probe_job {
	unsigned gen;
	char *dir;
	char *initrd;
	char *base;
	json_t *cfg;
	int rc;
	mb_err err;
};

/* Worker: remove the probe directory ud (a malloc'ed path, freed by probe_cleanup_done). */
static void probe_cleanup_work(void *ud)
{
	char *dir = ud;
	vm_rmtree(dir);
}

static void probe_cleanup_done(void *ud)
{
	free(ud);
}

static void probe_done_common(bool booted, const char *why)
{
	if (A->probe_timer) {
		G.host->timer_stop(A->probe_timer);
		A->probe_timer = NULL;
	}
	char *dir = A->probe_dir;
	A->probe_dir = NULL;
	A->probe_pid = 0;
	G.host->hold(G.self, -1);
	if (dir && G.host->work(probe_cleanup_work, probe_cleanup_done, dir, NULL) < 0)
		free(dir);
	char reason[512];
	if (booted)
		snprintf(reason, sizeof(reason), "a probe guest booted under KVM");
	else
		snprintf(reason, sizeof(reason),
		         "/dev/kvm is present but a probe guest did not boot "
		         "under KVM: %s",
		         why);
	accel_finish(booted, reason, false);
	save_cache();
}

static void read_probe_pid(void)
{
	if (A->probe_pid || !A->probe_dir)
		return;
	char *p = vm_strf("%s/qemu.pid", A->probe_dir);
	char *s = vm_read_file(p, 64, NULL);
	free(p);
	if (s) {
		A->probe_pid = (pid_t)atoi(s);
		free(s);
	}
}

static void probe_poll(void *ud)
{
	A->probe_timer = NULL;
	if (!A->probe_dir)
		return;
	read_probe_pid();
	char *p = vm_strf("%s/console.log", A->probe_dir);
	size_t len;
	char *t = vm_file_tail(p, 16384, &len);
	free(p);
	bool booted = t && strstr(t, "agent: listening");
	free(t);
	if (booted)
		A->probe_booted = true;
	if ((booted || vm_mono_ms() >= A->probe_deadline) && A->probe_pid > 0) {
		/* our child (host->run reaps it): its pid cannot have been reused */
		kill(A->probe_pid, SIGKILL);
		return; /* probe_run_done follows */
	}
	A->probe_timer = G.host->timer_start(PROBE_POLL_MS, probe_poll, NULL);
}

static void probe_run_done(const mb_run_result *res, void *ud)
{
	unsigned gen = (unsigned)(uintptr_t)ud;
	if (G.dead || gen != G.gen)
		return;
	A->probe_running = false;
	char why[300] = "";
	if (!A->probe_booted) {
		/* one last look: the marker may have arrived just before the exit */
		char *p = vm_strf("%s/console.log", A->probe_dir);
		size_t len;
		char *t = vm_file_tail(p, 16384, &len);
		free(p);
		A->probe_booted = t && strstr(t, "agent: listening");
		free(t);
	}
	if (!A->probe_booted) {
		const char *e = res->errout && *res->errout ? res->errout : "";
		char line[200] = "";
		/* the last non-empty line of QEMU's stderr says why */
		const char *s = e + strlen(e);
		while (s > e && (s[-1] == '\n' || s[-1] == ' '))
			s--;
		const char *b = s;
		while (b > e && b[-1] != '\n')
			b--;
		snprintf(line, sizeof(line), "%.*s", (int)(s - b), b);
		vm_utf8_sanitize(line, strlen(line));
		if (res->wstatus == SIGKILL || vm_mono_ms() >= A->probe_deadline)
			snprintf(why, sizeof(why), "no sign of life on its console within %d s",
			         PROBE_MS / 1000);
		else
			snprintf(why, sizeof(why), "QEMU exited: %s", *line ? line : "no message");
	}
	probe_done_common(A->probe_booted, why);
}

static void probe_prep_work(void *ud)
{
	struct probe_job *j = ud;
	j->rc = vm_build_initrd(j->base, j->cfg, j->initrd, &j->err);
}

static void probe_prep_done(void *ud)
{
	struct probe_job *j = ud;
	if (G.dead || j->gen != G.gen) {
		json_decref(j->cfg);
		free(j->initrd);
		free(j->base);
		free(j->dir);
		free(j);
		return;
	}
	int rc = j->rc;
	mb_err err = j->err;
	json_decref(j->cfg);
	free(j->base);
	free(j->dir);
	if (rc < 0) {
		free(j->initrd);
		free(j);
		probe_done_common(false, err.msg);
		return;
	}
	char *kernel = vm_strf("%s/vmlinux", G.guest_dir);
	char *pidf = vm_strf("%s/qemu.pid", A->probe_dir);
	char *chardev = vm_strf("file,id=con,path=%s/console.log", A->probe_dir);
	char *append = vm_strf("console=ttyS0 panic=-1 reboot=t tsc_early_khz=%ld tsc=reliable "
	                       "no_timer_check quiet",
	                       G.tsc_khz);
	const char *argv[] = { G.qemu,
		               "-M",
		               "microvm,x-option-roms=off,acpi=off",
		               "-accel",
		               "kvm",
		               "-cpu",
		               "host",
		               "-m",
		               "256",
		               "-smp",
		               "1",
		               "-nodefaults",
		               "-no-user-config",
		               "-display",
		               "none",
		               "-no-reboot",
		               "-pidfile",
		               pidf,
		               "-chardev",
		               chardev,
		               "-serial",
		               "chardev:con",
		               "-object",
		               "rng-random,id=rng0,filename=/dev/urandom",
		               "-device",
		               "virtio-rng-device,rng=rng0",
		               "-kernel",
		               kernel,
		               "-initrd",
		               j->initrd,
		               "-append",
		               append,
		               NULL };
	mb_err e = { 0 };
	A->probe_deadline = vm_mono_ms() + PROBE_MS;
	A->probe_booted = false;
	int r = G.host->run(argv, NULL, 0, PROBE_MS + 5000, probe_run_done,
	                    (void *)(uintptr_t)G.gen, &e);
	free(kernel);
	free(pidf);
	free(chardev);
	free(append);
	free(j->initrd);
	free(j);
	if (r < 0) {
		probe_done_common(false, e.msg);
		return;
	}
	A->probe_running = true;
	A->probe_timer = G.host->timer_start(PROBE_POLL_MS, probe_poll, NULL);
}

static void start_probe(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		char r[200];
		snprintf(r, sizeof(r), "no usable /dev/kvm (%s)", strerror(errno));
		A->kvm_device = false;
		accel_finish(false, r, false);
		return;
	}
	close(fd);
	A->kvm_device = true;
	char *kernel = vm_strf("%s/vmlinux", G.guest_dir);
	char *base = vm_strf("%s/initramfs.cpio.gz", G.guest_dir);
	bool have = access(kernel, R_OK) == 0 && access(base, R_OK) == 0;
	free(kernel);
	if (!have) {
		free(base);
		accel_finish(false,
		             "/dev/kvm is present but there is no guest kernel to probe it with",
		             false);
		return;
	}
	char *tmpl = vm_strf("%s/probe.XXXXXX", G.state_dir);
	if (!mkdtemp(tmpl)) {
		char r[200];
		snprintf(r, sizeof(r), "cannot create a probe directory: %s", strerror(errno));
		free(tmpl);
		free(base);
		accel_finish(false, r, false);
		return;
	}
	A->probe_dir = tmpl;
	G.host->hold(G.self, +1);
	char token[VM_TOKEN_HEX + 1];
	vm_random_hex(token, VM_TOKEN_HEX / 2, NULL);
	struct probe_job *j = calloc(1, sizeof(*j));
	j->gen = G.gen;
	j->dir = strdup(tmpl);
	j->initrd = vm_strf("%s/initrd", tmpl);
	j->base = base;
	j->cfg = json_pack("{s:i,s:s,s:s,s:{s:s}}", "version", MBP_VERSION, "token", token,
	                   "hostname", "kvm-probe", "root", "type", "none");
	explicit_bzero(token, sizeof(token));
	mb_err e = { 0 };
	if (G.host->work(probe_prep_work, probe_prep_done, j, &e) < 0) {
		json_decref(j->cfg);
		free(j->initrd);
		free(j->base);
		free(j->dir);
		free(j);
		probe_done_common(false, e.msg);
	}
}

static void version_done(const mb_run_result *res, void *ud)
{
	unsigned gen = (unsigned)(uintptr_t)ud;
	if (G.dead || gen != G.gen)
		return;
	G.host->hold(G.self, -1);
	if (res->wstatus != 0 || !res->out) {
		snprintf(A->qemu_version, sizeof(A->qemu_version), "unknown");
		accel_finish(false, "QEMU (qemu-system-x86_64) is not installed or does not run",
		             false);
		return;
	}
	/* "QEMU emulator version 7.2.22 (Debian ...)" */
	char *nl = strchr(res->out, '\n');
	snprintf(A->qemu_version, sizeof(A->qemu_version), "%.*s",
	         nl ? (int)(nl - res->out) : (int)strlen(res->out), res->out);
	compute_key();
	if (load_cache())
		return;
	start_probe();
}

void accel_start(void)
{
	mbp_err pe = { 0 };
	long khz = mbp_host_tsc_khz(&pe);
	G.tsc_khz = khz > 0 ? khz : 0;
	if (khz <= 0)
		vm_log(MB_LOG_WARN,
		       "vm: cannot read the host TSC frequency (%s): guests boot "
		       "without tsc_early_khz and may hang under TCG",
		       pe.msg);
	A->st = ACC_PROBING;
	const char *force = getenv("MOONBOX_VM_ACCEL");
	if (force && (!strcmp(force, "tcg") || !strcmp(force, "kvm"))) {
		A->kvm_device = access("/dev/kvm", R_OK | W_OK) == 0;
		accel_finish(!strcmp(force, "kvm"), "forced by MOONBOX_VM_ACCEL", false);
		return;
	}
	const char *argv[] = { G.qemu, "--version", NULL };
	mb_err e = { 0 };
	G.host->hold(G.self, +1);
	if (G.host->run(argv, NULL, 0, 30000, version_done, (void *)(uintptr_t)G.gen, &e) < 0) {
		G.host->hold(G.self, -1);
		accel_finish(false, e.msg, false);
	}
}

void accel_fini(void)
{
	if (A->probe_timer) {
		G.host->timer_stop(A->probe_timer);
		A->probe_timer = NULL;
	}
	/* The probe is not a workload: stop it (host->run's child, reaped by the host). */
	read_probe_pid();
	if (A->probe_pid > 0 && A->probe_running)
		kill(A->probe_pid, SIGKILL);
	if (A->probe_dir) {
		vm_rmtree(A->probe_dir);
		free(A->probe_dir);
		A->probe_dir = NULL;
	}
}
