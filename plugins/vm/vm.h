/*
 * Internal header of the vm plugin: QEMU microVMs driven over QMP, the guest agent client
 * (nng), the acceleration probe, the records. Everything here runs on the loop thread
 * except the nng callbacks (agent.c) and worker jobs, which only post completions back.
 */
#ifndef MBVM_VM_H
#define MBVM_VM_H

#include <moonbox/plugin.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <nng/nng.h>

#define VM_ID_MAX       64
#define VM_NAME_MAX     128
#define VM_TOKEN_HEX    64 /* 32 random bytes, hex */
#define VM_CONSOLE_TAIL 2048
#define VM_TB_SIZE_MIB  64 /* default TCG translation cache bound (see G.tb_size_mib) */

struct vm;
struct qmp;
struct agent;
struct areq;

/* ---- plugin-wide state (plugin.c) ------------------------------------------------------ */

enum accel_state { ACC_UNKNOWN, ACC_PROBING, ACC_DONE };

struct accel {
	enum accel_state st;
	char selected[8]; /* "kvm" | "tcg" once done */
	bool kvm_ok;      /* the probe guest booted under KVM */
	bool kvm_device;  /* /dev/kvm opens read-write */
	bool cached;      /* taken from <state>/vm/accel.json */
	char reason[512]; /* why this choice, for humans */
	char key[65];     /* cache key: sha256 of kernel + QEMU version + CPU model */
	char qemu_version[128];
	/* probe in flight */
	char *probe_dir; /* temp dir under <state>/vm (caller of probe frees) */
	pid_t probe_pid; /* from the probe's pidfile, 0 until known */
	mb_timer *probe_timer;
	uint64_t probe_deadline;
	bool probe_booted;  /* marker seen on the console */
	bool probe_running; /* host->run() not yet completed */
	struct vm *parked;  /* VMs whose start waits for the probe (linked by park_next) */
};

struct vmp {
	const struct mb_host *host;
	mb_plugin *self;
	unsigned gen;      /* bumped at every init; stale posts of an older instance are dropped */
	bool dead;         /* fini ran: posted completions only free their memory */
	char *state_dir;   /* <state_dir>/vm (0700) */
	char *run_dir;     /* <run_dir>/vms */
	char *guest_dir;   /* where vmlinux and the initramfs images are */
	char *qemu;        /* QEMU binary (PATH lookup) */
	long tsc_khz;      /* host TSC kHz for tsc_early_khz= */
	int tb_size_mib;   /* TCG translation cache per VM (MOONBOX_VM_TB_SIZE_MIB) */
	int cgroup_mode;   /* 0 none, 1 cgroup v1 cpu controller, 2 cgroup v2 */
	char *cgroup_root; /* /sys/fs/cgroup/cpu/moonbox or /sys/fs/cgroup/moonbox */
	struct vm *vms;
	struct accel accel;
	struct areq *areqs; /* every live agent request (for fini) */
	struct agent *agents;
};

extern struct vmp G;

void vm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Persist and publish; steals data. Failures are logged. */
void vm_emit(const char *type, json_t *data);
double vm_now(void);       /* wall clock, seconds */
uint64_t vm_mono_ms(void); /* CLOCK_MONOTONIC in ms */

/* ---- util.c ------------------------------------------------------------------------------ */

/* malloc'ed printf; aborts on OOM (like the host's xasprintf). Caller frees. */
char *vm_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The integer in environment variable name when it is set and within lo..hi; dflt when
 * it is unset or empty; dflt with a warning naming the variable when it is not. */
long vm_env_long(const char *name, long lo, long hi, long dflt);
/* Random lower-case hex string of 2*nbytes characters into out (2*nbytes+1 bytes). */
int vm_random_hex(char *out, size_t nbytes, mb_err *err);
/* mkdir -p with mode. 0 or negative errno. */
int vm_mkdir_p(const char *path, unsigned mode);
/* Remove a tree (no symlink following, stays on one filesystem). Blocking: workers only.
 * refuses "" and "/". 0 or negative errno. */
int vm_rmtree(const char *path);
/* Read up to max bytes from the end of a file. Returns a malloc'ed NUL-terminated buffer
 * (caller frees) with *len set, or NULL (file missing: empty string is returned instead). */
char *vm_file_tail(const char *path, size_t max, size_t *len);
/* Replace bytes that are not valid UTF-8 with '?', in place (JSON needs UTF-8). */
void vm_utf8_sanitize(char *s, size_t len);
/* Last `lines` lines of the console log of a VM, sanitised; malloc'ed, caller frees. */
char *vm_console_tail(const struct vm *v, size_t max_bytes);
/* Write a whole file with mode (O_TRUNC). 0 or negative errno. */
int vm_write_file(const char *path, const void *data, size_t len, unsigned mode);
/* Read a small file fully (≤ max). malloc'ed NUL-terminated, caller frees; NULL on error. */
char *vm_read_file(const char *path, size_t max, size_t *len);
/* /proc/<pid>/stat field 22 (start time in clock ticks) or 0 if not readable. */
uint64_t vm_proc_starttime(pid_t pid);
/* VmRSS of pid in bytes, CPU time (utime+stime) in microseconds; -1 when unknown. */
int vm_proc_usage(pid_t pid, int64_t *rss_bytes, int64_t *cpu_usec);
/* Does /proc/<pid>/cmdline contain every needle (as whole arguments or substrings)? */
bool vm_proc_cmdline_has(pid_t pid, const char *const needles[], int n);
int vm_pidfd_open(pid_t pid);
int vm_pidfd_kill(int pidfd, pid_t pid, int sig);
/* Write out = base initramfs + a newc archive holding /etc/moonbox/boot.json (cfg,
 * borrowed), mode 0600 (it holds the token). Blocking: workers only. */
int vm_build_initrd(const char *base, const json_t *cfg, const char *out, mb_err *err);
/* A free TCP port on 127.0.0.1 (bind to 0, read, close): racy by nature, callers retry. */
int vm_free_port(void);

/* ---- template.c: saved guests restored instead of booted ---------------------------------- */

#define VM_TPL_DISKS 5 /* disk slots of a template besides its config disk */

/* How build_argv() lays out a template's devices (vm.c). Borrowed strings. */
struct vm_tpl_use {
	const char *dir;    /* the template's directory: initrd, empty.img, slotN.img */
	const char *config; /* the config disk image */
	bool build;         /* building the template (else: restoring it, -incoming fd:4) */
};

struct vm_tpl; /* opaque outside template.c */

void vm_tpl_init(void); /* reads MOONBOX_VM_TEMPLATES */
void vm_tpl_fini(void); /* kills a build's QEMU, joins its thread, frees everything */
/* The ready template for v's machine shape, or NULL (v does not fit one, templates are
 * off, or it is not built yet: then its build starts in the background). Loop thread. */
const struct vm_tpl *vm_tpl_for(const struct vm *v);
const char *vm_tpl_key(const struct vm_tpl *t);
const char *vm_tpl_dir(const struct vm_tpl *t);
/* A restore from the template `key` failed: it is not used again (until a restart). */
void vm_tpl_broken(const char *key, const char *why);
/* The templates as the API shows them: new reference (array). */
json_t *vm_tpl_list(void);
/* Put the boot config (borrowed) on a config disk image at path, already
 * MBP_CONFIG_DISK_SIZE bytes: the body first, the magic last. 0 or negative errno. */
int vm_tpl_write_config(const char *path, const json_t *cfg, mb_err *err);

/* vm.c helpers template.c shares. */
/* A listening unix socket at path (mode 0600), with an fd >= 10 (QEMU's fd 3). */
int vm_qmp_listen(const char *path, mb_err *err);
/* posix_spawn QEMU in its own session with default signals, stdio to log (appended),
 * qmp_fd as fd 3, snap_fd (if >= 0) as fd 4, nothing else. pid or negative errno. */
pid_t vm_spawn_qemu(const char *log, char *const argv[], int qmp_fd, int snap_fd, mb_err *err);
/* The QEMU command line for building the template of a machine shape (owned strings,
 * NULL-terminated; free with vm_argv_free). `id`: the template's pseudo VM id. */
char **vm_tpl_argv(const char *id, int memory_mib, int smp, const struct vm_tpl_use *tu);
void vm_argv_free(char **argv);

/* ---- spec.c: validation ------------------------------------------------------------------- */

/* Validate a create spec (borrowed) and return the normalised spec (new reference) with
 * generated id, name, MACs, kernel paths resolved; NULL with err filled (-EINVAL, message
 * starting with the field) otherwise. *field (may be NULL) gets the offending field name
 * (static or inside a thread-local buffer, valid until the next call). */
json_t *vm_spec_normalize(const json_t *spec, const char **field, mb_err *err);
bool vm_valid_id(const char *s);
/* Validate and normalise a process description for run/exec (borrowed in, new reference
 * out: the agent request fields without "op"). NULL with err (-EINVAL) otherwise. */
json_t *vm_proc_normalize(const json_t *proc, bool is_run, mb_err *err);

/* ---- db.c: records ------------------------------------------------------------------------ */

int vdb_migrate(mb_err *err);
int vdb_insert(const struct vm *v, mb_err *err);
int vdb_update(const struct vm *v);
int vdb_delete(const char *id, mb_err *err);
/* Load every record into G.vms (at init). */
int vdb_load_all(mb_err *err);

/* ---- accel.c ------------------------------------------------------------------------------ */

void accel_start(void);
void accel_fini(void);
/* {selected, available, reason, tsc_khz, ...}: new reference. */
json_t *accel_json(void);
/* Is the probe still running? Then vm_start parks the VM until accel_done(). */
bool accel_pending(void);

/* ---- qmp.c -------------------------------------------------------------------------------- */

typedef void (*qmp_ret_fn)(void *ud, json_t *ret, const char *error);
struct qmp_ops {
	void (*ready)(void *ud);
	void (*event)(void *ud, const char *name, json_t *data);
	void (*closed)(void *ud);
};
/* Connect to a QMP unix socket (non-blocking). Returns the client or NULL with err. The
 * client is freed with qmp_free() (never from inside its callbacks: closed() is the last
 * call, after which the owner frees it). */
struct qmp *qmp_connect(const char *path, const struct qmp_ops *ops, void *ud, mb_err *err);
/* Queue a command; args (may be NULL) is stolen. fn may be NULL. */
int qmp_command(struct qmp *q, const char *cmd, json_t *args, qmp_ret_fn fn, void *ud);
/* Forget pending callbacks of ud (they will not be called). */
void qmp_forget(struct qmp *q, void *ud);
void qmp_free(struct qmp *q);
bool qmp_is_ready(const struct qmp *q);

/* ---- agent.c ------------------------------------------------------------------------------ */

/* Completion of one agent request, on the loop thread. rc is 0 or a negative errno; rep is
 * the reply header (borrowed, may be NULL on transport errors), payload borrowed. */
typedef void (*areq_fn)(void *ud, int rc, const json_t *rep, const uint8_t *payload, size_t plen,
                        const mb_err *err);
struct agent_ops {
	void (*authed)(void *ud);                    /* authenticated (again) */
	void (*denied)(void *ud, const mb_err *err); /* token mismatch: never talk to it */
	void (*disconnected)(void *ud);              /* the authenticated connection dropped */
};
/* Open an nng req socket and dial addr ("tcp://host:port"); token is copied. Returns NULL
 * with err. The agent is freed by agent_close() (asynchronous). */
struct agent *agent_open(const char *addr, const char *token, const struct agent_ops *ops, void *ud,
                         mb_err *err);
/* Authenticate now (if not already): hello + auth, retried until it works or is denied. */
void agent_connect(struct agent *a);
bool agent_authed(const struct agent *a);
/* Send a request. hdr is stolen, data is copied. timeout_ms bounds the whole call. On
 * success *out (may be NULL) gets a handle for agent_cancel(). fn is called exactly once
 * unless cancelled. */
int agent_call(struct agent *a, json_t *hdr, const void *data, size_t len, int timeout_ms,
               areq_fn fn, void *ud, struct areq **out, mb_err *err);
/* Cancel a request: fn will not be called. */
void agent_cancel(struct areq *r);
/* Fire and forget (e.g. KILL + release after a cancelled command). hdr stolen. */
void agent_send_nowait(struct agent *a, json_t *hdr);
/* Detach from the owner, fail pending requests with -ECONNRESET, close the socket (on a
 * worker) and free when the last reference goes. */
void agent_close(struct agent *a);
/* fini: close every socket synchronously; posted completions free themselves later. */
void agent_fini_all(void);

/* ---- vm.c: lifecycle ---------------------------------------------------------------------- */

enum vm_state {
	VS_CREATED,
	VS_STARTING,
	VS_RUNNING,
	VS_PAUSED,
	VS_STOPPING,
	VS_STOPPED,
	VS_ERROR,
};
const char *vm_state_name(enum vm_state s);
int vm_state_parse(const char *s);

enum vm_intent { VI_NONE, VI_STOP, VI_KILL, VI_FAIL };

enum lw_kind { LW_START, LW_STOP, LW_KILL, LW_PAUSE, LW_RESUME, LW_REMOVE };

/* A Lua task waiting for a lifecycle transition of a VM. */
struct lwait {
	struct lwait *next;
	mb_wait *w; /* set by the Lua binding right after the call queued the waiter */
	struct vm *vm;
	enum lw_kind kind;
	bool linked;    /* in vm->waiters */
	mb_timer *fire; /* completion is always delivered from a timer (never inside the call) */
	int code;
	char *msg;
};

struct stdin_off {
	struct stdin_off *next;
	char *id;
	int64_t off;
};

struct vm {
	struct vm *next;
	int refs; /* Lua waits and guest operations in flight keep the struct alive */
	bool removed;
	/* persisted */
	char id[VM_ID_MAX + 1];
	char name[VM_NAME_MAX + 1];
	json_t *spec; /* normalised spec (owned) */
	char token[VM_TOKEN_HEX + 1];
	enum vm_state state;
	pid_t pid;
	uint64_t pid_start;
	char accel[8];
	char agent_addr[128];
	double created, started, stopped;
	json_t *exit; /* owned, or NULL */
	char *error;  /* owned, or NULL */
	int boots;
	/* runtime */
	int pidfd;
	mb_watch *pidw;
	bool held;
	bool is_child; /* spawned by this daemon: reap it */
	struct qmp *qmp;
	struct agent *agent;
	bool agent_up;
	enum vm_intent intent;
	char qmp_shutdown[32]; /* reason of the last QMP SHUTDOWN event */
	bool qmp_guest;
	bool panicked;
	mb_timer *timer; /* start deadline, or stop escalation */
	int stop_phase;
	int stop_timeout_ms;
	int start_timeout_ms;
	char *fail_msg; /* start failure being cleaned up (owned) */
	int fail_code;
	char *boot_token; /* debug: a different token for the boot config (owned) */
	int port_tries;
	struct lwait *waiters;
	struct vm *park_next; /* in G.accel.parked */
	bool parked;
	struct stdin_off *stdins;
	bool adopting;
	/* start: the agent is dialled once its "listening" line is on the console (dialling
	 * earlier leaves a connection stuck in SYN retransmits inside slirp or the bridge) */
	int ino_fd;
	mb_watch *ino_w;
	int64_t con_off;
	char con_tail[64];
	mb_timer *dial_timer;
	char *tpl_key; /* this boot restores that template (owned), or NULL: a cold boot */
};

/* Paths (malloc'ed, caller frees). */
char *vm_dir(const struct vm *v);                        /* <state>/vm/<id> */
char *vm_run_dir(const struct vm *v);                    /* <run>/vms/<id> */
char *vm_path(const struct vm *v, const char *file);     /* in vm_dir */
char *vm_run_path(const struct vm *v, const char *file); /* in vm_run_dir */

struct vm *vm_find(const char *id_or_name);
void vm_ref(struct vm *v);
void vm_unref(struct vm *v);
/* The record as the API shows it: new reference. */
json_t *vm_record(const struct vm *v);

/* Create: validated spec (stolen). Returns the VM or NULL with err. */
struct vm *vm_create(json_t *spec, mb_err *err);
/* Lifecycle. They return 1 when done already (record state is final), 0 when the waiter
 * was queued (completed later through lw), or a negative errno with err. */
int vm_start(struct vm *v, int timeout_ms, const char *boot_token, struct lwait *lw, mb_err *err);
int vm_stop(struct vm *v, int timeout_ms, struct lwait *lw, mb_err *err);
int vm_kill(struct vm *v, struct lwait *lw, mb_err *err);
int vm_pause(struct vm *v, bool pause, struct lwait *lw, mb_err *err);
int vm_remove(struct vm *v, bool force, struct lwait *lw, mb_err *err);
/* Unlink a waiter (Lua task cancelled). */
void vm_waiter_cancel(struct lwait *lw);
/* Complete a waiter soon (from a 0 ms timer): push the record (or true for remove) or
 * nil,msg,code and resume the task; frees lw. */
void vm_waiter_finish(struct lwait *lw, int code, const char *msg);
/* The accel probe finished: continue parked starts. */
void vm_accel_ready(void);
/* Re-adopt every VM the records say is alive (init). */
void vm_adopt_all(void);
/* fini: release fds, timers, sockets (VMs keep running). */
void vm_fini_all(void);
/* Is the agent usable for guest operations? 0, or a negative errno with err. */
int vm_guest_ready(struct vm *v, mb_err *err);

/* stdin offsets of processes (for the agent's write op) */
int64_t *vm_stdin_off(struct vm *v, const char *proc_id, bool create);
void vm_stdin_forget(struct vm *v, const char *proc_id);

/* ---- cgroup (vm.c) ------------------------------------------------------------------------ */
void vm_cgroup_detect(void);

/* ---- l_vm.c ------------------------------------------------------------------------------- */
int vm_lua_register(mb_err *err);

#endif
