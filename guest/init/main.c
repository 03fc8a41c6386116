/*
 * moonbox-init: PID 1 of a moonbox microVM.
 *
 * Boot: mount /dev /proc /sys, read and delete /etc/moonbox/boot.json, load the
 * initramfs's kernel modules (Debian kernel), leave the initramfs for a tmpfs root,
 * mount the container root (erofs lower + ext4 upper + overlay, or one disk) and the
 * extra mounts, configure the network, then serve the host over nng (agent.c) until a
 * shutdown request, after which it reboots (QEMU runs with -no-reboot and exits).
 * A template (template.c) stops after the machine set-up that needs no config, is saved
 * by the host, and continues from there in every VM restored from it.
 * A fatal boot error is logged on the console and also ends in a reboot: PID 1 never
 * exits.
 */
#include "init.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <unistd.h>

__attribute__((noreturn)) static void fatal(const char *what, const char *msg)
{
	mb_log("FATAL: %s: %s", what, msg);
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	static struct mb_config cfg;
	struct mb_agent a = { 0 };
	mbp_err e = { 0 };

	a.boot_ms = 0; /* CLOCK_MONOTONIC starts at boot */
	mb_early_mounts();
	mb_log_open();
	mb_log("starting (pid %d)", getpid());

	sigset_t set;
	sigemptyset(&set);
	int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGPWR, SIGUSR1, SIGUSR2, SIGQUIT };
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&set, sigs[i]);
	/* Blocked before nng starts its threads, so they inherit the mask. */
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	a.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a.sigfd < 0)
		fatal("signalfd", strerror(errno));

	if (mb_config_load(&cfg, &e) < 0)
		fatal("boot config", e.msg);
	a.cfg = &cfg;
	mb_load_modules(&cfg);
	if (mb_leave_initramfs() < 0)
		fatal("initramfs", "cannot switch to a tmpfs root");
	mb_late_mounts();
	/* nng's start-up (threads) overlaps the disk and network set-up below */
	mb_agent_prepare(&a);
	if (cfg.template_mode || strcmp(cfg.root_type, "none") != 0)
		mb_procs_prepare(); /* the cgroup, also while the disks mount */
	/* a template waits here to be saved; restored, it continues as the VM it became */
	if (cfg.template_mode && mb_template_wait(&a, &cfg, &e) < 0)
		fatal("template", e.msg);
	if (mb_mount_root(&cfg, &e) < 0)
		fatal("root filesystem", e.msg);
	if (mb_net_setup(&cfg, &e) < 0)
		fatal("network", e.msg);
	if (mb_write_etc(&cfg, cfg.hostname, &e) < 0)
		fatal("/etc files", e.msg);
	sethostname(cfg.hostname, strlen(cfg.hostname));
	mb_log("network: %s %s/%d gw %s", cfg.ifname[0] ? cfg.ifname : "-", cfg.address, cfg.prefix,
	       cfg.gateway[0] ? cfg.gateway : "-");

	a.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (a.epfd < 0 || mb_procs_init(&a) < 0)
		fatal("agent", "cannot allocate");
	/* listen first: the host connects and authenticates while the process starts */
	mb_agent_listen(&a);
	if (cfg.run) {
		/* Start the container's process now rather than when the host asks: the host's
		 * run request then finds it running (run is idempotent by id). On failure the
		 * host's request tries again and gets the error. */
		json_t *r = mb_op_run(&a, cfg.run, false);
		if (!json_is_true(json_object_get(r, "ok")))
			mb_log("boot run: %s", mbp_get_str(r, "message", "failed"));
		json_decref(r);
		json_decref(cfg.run);
		cfg.run = NULL;
	}
	mb_agent_run(&a);
}
