/*
 * moonbox-init: PID 1 of every moonbox microVM. Internal declarations shared by the
 * files of guest/init/. Everything here runs on the main thread except the nng aio
 * callbacks in agent.c, which only queue work (see agent.c).
 */
#ifndef MOONBOX_INIT_H
#define MOONBOX_INIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "mbp_proto.h"

/* Where init keeps its own state once it has left the initramfs. */
#define MB_RUN_DIR    "/run/moonbox"
#define MB_ROOTFS_DIR MB_RUN_DIR "/rootfs" /* the container's root (overlay or disk) */
#define MB_LOWER_DIR  MB_RUN_DIR "/lower"
#define MB_UPPER_DIR  MB_RUN_DIR "/upper"
#define MB_MOUNTS_DIR MB_RUN_DIR "/mounts" /* extra mounts, by index */
#define MB_ETC_DIR    MB_RUN_DIR "/etc"    /* hosts, hostname, resolv.conf for containers */
#define MB_CGROUP_DIR "/sys/fs/cgroup/container"
#define MB_BOOT_JSON  "/etc/moonbox/boot.json"

/* --- log.c ------------------------------------------------------------------------ */
void mb_log_open(void);
void mb_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t mb_now_ms(void); /* CLOCK_MONOTONIC in ms */

/* --- boot.c: the per-VM configuration and the machine set-up ------------------------ */
struct mb_mount {
	char type[16];   /* "block" or "9p" */
	char source[64]; /* disk serial (block) or mount tag (9p) */
	char fstype[32]; /* block only */
	char target[512];
	char options[256]; /* extra mount data, may be empty */
	bool ro;
	char staged[128]; /* where init mounted it: MB_MOUNTS_DIR/<n> */
};

struct mb_config {
	int version;
	char token[256];
	size_t token_len;
	char hostname[65];
	/* network */
	char mac[32];
	char ifname[16]; /* found from mac (IFNAMSIZ) */
	char address[64];
	int prefix;
	char gateway[64];
	char address6[64];
	int prefix6;
	char gateway6[64];
	char dns[4][64];
	int ndns;
	char search[256];
	int mtu;
	int port;
	/* root */
	char root_type[16]; /* "overlay" or "disk" */
	char lower[64];     /* overlay: serial of the erofs lower disk */
	char upper[64];     /* overlay: serial of the ext4 upper disk */
	char lower_fstype[32];
	char upper_fstype[32];
	char root_serial[64]; /* disk */
	char root_fstype[32];
	bool root_ro;
	struct mb_mount *mounts;
	int nmounts;
	json_t *modules; /* array of names or NULL: load the initramfs's modules.order */
	int disk_timeout_ms;
	json_t *run; /* the container's main process, started at boot (a run request), or NULL */
	bool template_mode; /* boot as a template: wait for the real config (template.c) */
};

/* Read MB_BOOT_JSON into cfg and delete the file. 0 or negative errno. */
int mb_config_load(struct mb_config *cfg, mbp_err *err);
/* Parse a boot config object (borrowed) into cfg (overwritten). 0 or negative errno. */
int mb_config_parse(struct mb_config *cfg, const json_t *j, mbp_err *err);
/* Frees what mb_config_load allocated in cfg (not cfg itself) and wipes the token. */
void mb_config_free(struct mb_config *cfg);
int mb_load_modules(const struct mb_config *cfg);
int mb_early_mounts(void);
int mb_leave_initramfs(void);
int mb_late_mounts(void);
int mb_mount_root(struct mb_config *cfg, mbp_err *err);
int mb_write_etc(const struct mb_config *cfg, const char *hostname, mbp_err *err);
/* Find /dev/vdX whose serial is `serial`; writes "/dev/vdX" into dev. */
int mb_find_disk(const char *serial, char *dev, size_t devlen, int timeout_ms);
void mb_unmount_all(const struct mb_config *cfg);

/* --- template.c: template mode ------------------------------------------------------ */
struct mb_agent;
/* Wait (polling the config disk) until the host restores this saved guest with a real
 * boot config, then make the machine this VM's: config parsed into cfg (replacing the
 * template's), clock set, RNG reseeded, the disks and the NIC re-probed. 0 or negative
 * errno with err. */
int mb_template_wait(struct mb_agent *a, struct mb_config *cfg, mbp_err *err);

/* --- net.c ------------------------------------------------------------------------- */
int mb_net_setup(struct mb_config *cfg, mbp_err *err);

/* --- util.c ------------------------------------------------------------------------ */
int mb_mkdir_p(const char *path, mode_t mode);
int mb_write_file(const char *path, const void *data, size_t len, mode_t mode);
/* Read a small file into buf (NUL-terminated). Returns length or negative errno. */
ssize_t mb_read_file(const char *path, char *buf, size_t size);
/* Read a whole file; *out malloc'ed (caller frees), NUL-terminated. */
int mb_slurp(const char *path, char **out, size_t *len);
int64_t mb_read_int(const char *path, int64_t dflt);
int mb_set_nonblock(int fd);

/* --- proc.c: container processes ------------------------------------------------------- */
struct mb_agent;
struct mb_proc;

int mb_procs_init(struct mb_agent *a);
/* Start creating the container's cgroup on a thread (the first run waits for it).
 * Optional; call once /sys/fs/cgroup is mounted and the signal mask is set. */
void mb_procs_prepare(void);
/* Wait for what mb_procs_prepare started (templates: done before the snapshot). */
void mb_procs_prepared(void);
/* Handlers; each returns a new reply header (caller decrefs) and may set a payload. */
json_t *mb_op_run(struct mb_agent *a, json_t *req, bool is_exec);
json_t *mb_op_write(struct mb_agent *a, json_t *req, const uint8_t *data, size_t len);
json_t *mb_op_resize(struct mb_agent *a, json_t *req);
json_t *mb_op_signal(struct mb_agent *a, json_t *req);
json_t *mb_op_release(struct mb_agent *a, json_t *req);
json_t *mb_op_list(struct mb_agent *a, json_t *req);
json_t *mb_op_stats(struct mb_agent *a, json_t *req);
/* Long polls: try to answer now. Returns NULL when the poll must keep waiting (and
 * `final` is false); otherwise the reply header (caller decrefs) and possibly a payload
 * (*payload malloc'ed, caller frees). */
json_t *mb_poll_read(struct mb_agent *a, json_t *req, bool final, uint8_t **payload, size_t *plen);
json_t *mb_poll_wait(struct mb_agent *a, json_t *req, bool final);
void mb_procs_event(struct mb_agent *a, void *tag, uint32_t events);
void mb_procs_sigchld(struct mb_agent *a);
/* Shutdown support: signal every process; true while any container process is alive. */
void mb_procs_signal_all(struct mb_agent *a, int sig);
bool mb_procs_alive(struct mb_agent *a);
/* pid of the running main container process, or 0. */
pid_t mb_procs_main_pid(struct mb_agent *a);

/* --- fs.c: borrows req/data; returns a new reply reference, *payload malloc'ed --- */
json_t *mb_op_fs(struct mb_agent *a, const char *op, json_t *req, const uint8_t *data, size_t len,
                 uint8_t **payload, size_t *plen);

/* --- agent.c ------------------------------------------------------------------------- */
struct mb_agent {
	struct mb_config *cfg;
	int epfd;
	int sigfd;
	struct mb_procs *procs;
	void *srv; /* agent.c's server state */
	bool shutting_down;
	uint64_t shutdown_deadline; /* SIGKILL everything at this time */
	uint64_t boot_ms;
};

/* epoll tags: the first field of every object registered with epoll. */
enum mb_tag_kind { MB_TAG_WAKE = 1, MB_TAG_SIGNAL, MB_TAG_PROC };
struct mb_tag {
	int kind;
};

/* Start opening the agent's nng socket on a thread (call once the signal mask is set:
 * nng's threads inherit it); mb_agent_run() waits for it. Optional. */
void mb_agent_prepare(struct mb_agent *a);
/* Wait for mb_agent_prepare's thread (templates: done before the snapshot). */
void mb_agent_prepared(struct mb_agent *a);
/* Listen for the host (waits for mb_agent_prepare's thread). Requests that arrive are
 * queued for mb_agent_run(); the host's connection and authentication handshake overlap
 * whatever init does in between (starting the container's process). Optional: run()
 * listens if this was not called. */
void mb_agent_listen(struct mb_agent *a);
/* Run the agent until shutdown; never returns (reboots the VM). */
void mb_agent_run(struct mb_agent *a) __attribute__((noreturn));
void mb_begin_shutdown(struct mb_agent *a, int64_t grace_ms);

#endif
