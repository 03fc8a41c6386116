/*
 * The vm plugin's entry points: init (directories, records, cgroup detection, the
 * acceleration probe, re-adoption of running VMs, the Lua module) and fini (host-side
 * resources only: QEMU processes keep running and the next daemon re-adopts them).
 *
 * The shared object is linked with -z nodelete: completions that nng threads or workers
 * posted before fini may still be delivered by the host's loop after fini (and after
 * dlclose); they find G.dead (or an older G.gen) and only free their memory.
 */
#include "vm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vmp G;

void vm_log(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (G.host)
		G.host->log(G.self, level, "%s", msg);
}

void vm_emit(const char *type, json_t *data)
{
	mb_err err = { 0 };
	if (G.host->emit(type, data, &err) < 0)
		vm_log(MB_LOG_WARN, "vm: emit %s: %s", type, err.msg);
}

static int vm_init(const struct mb_host *host, mb_plugin *self, mb_err *err)
{
	unsigned gen = G.gen + 1;
	memset(&G, 0, sizeof(G));
	G.gen = gen;
	G.host = host;
	G.self = self;
	if (!MB_HOST_HAS(host, wait_check) || !MB_HOST_HAS(host, errcode))
		return mb_err_set(err, -ENOTSUP, "vm: the host lacks wait_check/errcode (too old)");
	const char *state = host->config("state_dir");
	const char *run = host->config("run_dir");
	const char *guest = host->config("guest_dir");
	if (!state || !run)
		return mb_err_set(err, -EINVAL, "vm: state_dir/run_dir not configured");
	G.state_dir = vm_strf("%s/vm", state);
	G.run_dir = vm_strf("%s/vms", run);
	G.guest_dir = strdup(guest ? guest : "/usr/lib/moonbox/guest");
	const char *q = getenv("MOONBOX_QEMU");
	G.qemu = strdup(q && *q ? q : "qemu-system-x86_64");
	/* TCG's translation cache per VM: most of an idle VM's memory under TCG; smaller
	 * saves memory, but a busy guest may translate the same code again */
	G.tb_size_mib = (int)vm_env_long("MOONBOX_VM_TB_SIZE_MIB", 8, 2048, VM_TB_SIZE_MIB);
	int r = vm_mkdir_p(G.state_dir, 0700);
	if (r == 0)
		r = vm_mkdir_p(G.run_dir, 0700);
	if (r < 0) {
		mb_err_set(err, r, "vm: creating %s / %s: %s", G.state_dir, G.run_dir,
		           strerror(-r));
		goto fail;
	}
	if ((r = vdb_migrate(err)) < 0 || (r = vdb_load_all(err)) < 0)
		goto fail;
	if ((r = vm_lua_register(err)) < 0)
		goto fail;
	vm_cgroup_detect();
	vm_tpl_init();
	accel_start();
	vm_adopt_all();
	return 0;
fail:
	while (G.vms) {
		struct vm *n = G.vms->next;
		json_decref(G.vms->spec);
		json_decref(G.vms->exit);
		free(G.vms->error);
		free(G.vms);
		G.vms = n;
	}
	free(G.state_dir);
	free(G.run_dir);
	free(G.guest_dir);
	free(G.qemu);
	G.state_dir = G.run_dir = G.guest_dir = G.qemu = NULL;
	return r;
}

static void vm_fini(mb_plugin *self)
{
	accel_fini();
	vm_tpl_fini(); /* a template build's QEMU is killed, its thread joined */
	vm_fini_all();
	agent_fini_all();
	G.dead = true;
	free(G.state_dir);
	free(G.run_dir);
	free(G.guest_dir);
	free(G.qemu);
	free(G.cgroup_root);
	G.state_dir = G.run_dir = G.guest_dir = G.qemu = G.cgroup_root = NULL;
}

static json_t *vm_info(mb_plugin *self)
{
	int n = 0, running = 0;
	for (struct vm *v = G.vms; v; v = v->next) {
		if (v->removed)
			continue;
		n++;
		running += v->state == VS_RUNNING || v->state == VS_PAUSED;
	}
	json_t *j = json_pack("{s:i,s:i,s:s,s:s}", "vms", n, "running", running, "qemu", G.qemu,
	                      "guest_dir", G.guest_dir);
	json_object_set_new(j, "acceleration", accel_json());
	json_object_set_new(j, "templates", vm_tpl_list());
	json_object_set_new(j, "cgroup",
	                    G.cgroup_mode == 2   ? json_string("v2")
	                    : G.cgroup_mode == 1 ? json_string("v1")
	                                         : json_null());
	return j;
}

MB_PLUGIN_DEFINE("vm", "0.1", "QEMU microVMs: QMP, acceleration probe, the guest agent client",
                 vm_init, vm_fini, vm_info)
