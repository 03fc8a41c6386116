/* Boot: the per-VM config, kernel modules, leaving the initramfs, disks and mounts. */
#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#define MODULES_DIR   "/lib/moonbox/modules"
#define MODULES_ORDER "/lib/moonbox/modules.order"

static void copy_str(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src ? src : "");
}

static int parse_cidr(const char *s, char *addr, size_t addrlen, int *prefix, int dflt)
{
	const char *slash = strchr(s, '/');
	if (!slash) {
		copy_str(addr, addrlen, s);
		*prefix = dflt;
		return 0;
	}
	size_t n = (size_t)(slash - s);
	if (n >= addrlen)
		return -EINVAL;
	memcpy(addr, s, n);
	addr[n] = 0;
	char *end;
	long p = strtol(slash + 1, &end, 10);
	if (*end || p < 0 || p > 128)
		return -EINVAL;
	*prefix = (int)p;
	return 0;
}

static int parse_mounts(struct mb_config *cfg, json_t *arr, mbp_err *err)
{
	if (!arr)
		return 0;
	if (!json_is_array(arr))
		return mbp_err_set(err, -EINVAL, "boot config: mounts must be an array");
	size_t n = json_array_size(arr);
	cfg->mounts = calloc(n ? n : 1, sizeof(*cfg->mounts));
	if (!cfg->mounts)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *m = json_array_get(arr, i);
		struct mb_mount *mm = &cfg->mounts[i];
		const char *type = mbp_get_str(m, "type", "block");
		const char *target = mbp_get_str(m, "target", NULL);
		if (!target || target[0] != '/')
			return mbp_err_set(err, -EINVAL,
			                   "boot config: mounts[%zu].target must be "
			                   "an absolute path",
			                   i);
		copy_str(mm->type, sizeof(mm->type), type);
		copy_str(mm->target, sizeof(mm->target), target);
		copy_str(mm->options, sizeof(mm->options), mbp_get_str(m, "options", ""));
		mm->ro = mbp_get_bool(m, "ro", 0);
		if (strcmp(type, "block") == 0) {
			copy_str(mm->source, sizeof(mm->source), mbp_get_str(m, "serial", ""));
			copy_str(mm->fstype, sizeof(mm->fstype), mbp_get_str(m, "fstype", "ext4"));
		} else if (strcmp(type, "9p") == 0) {
			copy_str(mm->source, sizeof(mm->source), mbp_get_str(m, "tag", ""));
			copy_str(mm->fstype, sizeof(mm->fstype), "9p");
		} else {
			return mbp_err_set(err, -EINVAL,
			                   "boot config: mounts[%zu]: unknown type %s", i, type);
		}
		if (!mm->source[0])
			return mbp_err_set(err, -EINVAL, "boot config: mounts[%zu] needs %s", i,
			                   strcmp(type, "9p") == 0 ? "tag" : "serial");
		snprintf(mm->staged, sizeof(mm->staged), MB_MOUNTS_DIR "/%zu", i);
		cfg->nmounts = (int)i + 1;
	}
	return 0;
}

int mb_config_load(struct mb_config *cfg, mbp_err *err)
{
	json_error_t je;
	json_t *j = json_load_file(MB_BOOT_JSON, JSON_REJECT_DUPLICATES, &je);
	/* The file holds the secret token: never leave it behind, even when it is bad. */
	unlink(MB_BOOT_JSON);
	if (!j)
		return mbp_err_set(err, -EINVAL, "cannot read %s: %s (line %d)", MB_BOOT_JSON,
		                   je.text, je.line);
	int rc = mb_config_parse(cfg, j, err);
	json_decref(j);
	return rc;
}

int mb_config_parse(struct mb_config *cfg, const json_t *j, mbp_err *err)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->port = MBP_DEFAULT_PORT;
	cfg->mtu = 0;
	cfg->disk_timeout_ms = 10000;
	copy_str(cfg->hostname, sizeof(cfg->hostname), "moonbox");
	int rc = 0;
	cfg->version = (int)mbp_get_int(j, "version", 0);
	if (cfg->version != MBP_VERSION) {
		rc = mbp_err_set(err, -EPROTONOSUPPORT, "boot config version %d, agent speaks %d",
		                 cfg->version, MBP_VERSION);
		goto out;
	}
	cfg->template_mode = mbp_get_bool(j, "template", 0);
	if (cfg->template_mode) {
		/* a template has no identity yet: everything comes with the restore */
		copy_str(cfg->root_type, sizeof(cfg->root_type), "none");
		return 0;
	}
	const char *tok = mbp_get_str(j, "token", NULL);
	if (!tok || strlen(tok) < 16 || strlen(tok) >= sizeof(cfg->token)) {
		rc = mbp_err_set(err, -EINVAL, "boot config: token missing or not 16..255 chars");
		goto out;
	}
	copy_str(cfg->token, sizeof(cfg->token), tok);
	cfg->token_len = strlen(cfg->token);
	copy_str(cfg->hostname, sizeof(cfg->hostname), mbp_get_str(j, "hostname", "moonbox"));

	json_t *net = json_object_get(j, "network");
	if (net) {
		copy_str(cfg->mac, sizeof(cfg->mac), mbp_get_str(net, "mac", ""));
		const char *a = mbp_get_str(net, "address", "");
		if (*a && parse_cidr(a, cfg->address, sizeof(cfg->address), &cfg->prefix, 24)) {
			rc = mbp_err_set(err, -EINVAL, "boot config: bad network.address %s", a);
			goto out;
		}
		copy_str(cfg->gateway, sizeof(cfg->gateway), mbp_get_str(net, "gateway", ""));
		a = mbp_get_str(net, "address6", "");
		if (*a && parse_cidr(a, cfg->address6, sizeof(cfg->address6), &cfg->prefix6, 64)) {
			rc = mbp_err_set(err, -EINVAL, "boot config: bad network.address6 %s", a);
			goto out;
		}
		copy_str(cfg->gateway6, sizeof(cfg->gateway6), mbp_get_str(net, "gateway6", ""));
		cfg->mtu = (int)mbp_get_int(net, "mtu", 0);
		json_t *dns = json_object_get(net, "dns");
		for (size_t i = 0; json_is_array(dns) && i < json_array_size(dns) && i < 4; i++) {
			json_t *d = json_array_get(dns, i);
			if (json_is_string(d))
				copy_str(cfg->dns[cfg->ndns++], sizeof(cfg->dns[0]),
				         json_string_value(d));
		}
		json_t *search = json_object_get(net, "search");
		for (size_t i = 0; json_is_array(search) && i < json_array_size(search); i++) {
			json_t *d = json_array_get(search, i);
			if (!json_is_string(d))
				continue;
			size_t l = strlen(cfg->search);
			snprintf(cfg->search + l, sizeof(cfg->search) - l, "%s%s", l ? " " : "",
			         json_string_value(d));
		}
	}
	json_t *agent = json_object_get(j, "agent");
	cfg->port = (int)mbp_get_int(agent, "port", MBP_DEFAULT_PORT);

	json_t *root = json_object_get(j, "root");
	const char *rt = mbp_get_str(root, "type", "overlay");
	copy_str(cfg->root_type, sizeof(cfg->root_type), rt);
	if (strcmp(rt, "overlay") == 0) {
		copy_str(cfg->lower, sizeof(cfg->lower), mbp_get_str(root, "lower", "lower"));
		copy_str(cfg->upper, sizeof(cfg->upper), mbp_get_str(root, "upper", "upper"));
		copy_str(cfg->lower_fstype, sizeof(cfg->lower_fstype),
		         mbp_get_str(root, "lower_fstype", "erofs"));
		copy_str(cfg->upper_fstype, sizeof(cfg->upper_fstype),
		         mbp_get_str(root, "upper_fstype", "ext4"));
	} else if (strcmp(rt, "disk") == 0) {
		copy_str(cfg->root_serial, sizeof(cfg->root_serial),
		         mbp_get_str(root, "serial", "root"));
		copy_str(cfg->root_fstype, sizeof(cfg->root_fstype),
		         mbp_get_str(root, "fstype", "ext4"));
		cfg->root_ro = mbp_get_bool(root, "ro", 0);
	} else if (strcmp(rt, "none") != 0) {
		rc = mbp_err_set(err, -EINVAL, "boot config: unknown root.type %s", rt);
		goto out;
	}
	cfg->disk_timeout_ms = (int)mbp_get_int(j, "disk_timeout_ms", 10000);
	rc = parse_mounts(cfg, json_object_get(j, "mounts"), err);
	if (rc < 0)
		goto out;
	json_t *mods = json_object_get(j, "modules");
	if (json_is_array(mods))
		cfg->modules = json_incref(mods);
	json_t *run = json_object_get(j, "run");
	if (run && !json_is_null(run)) {
		if (!json_is_object(run)) {
			rc = mbp_err_set(err, -EINVAL, "boot config: run must be an object");
			goto out;
		}
		cfg->run = json_incref(run);
	}
out:
	return rc;
}

void mb_config_free(struct mb_config *cfg)
{
	free(cfg->mounts);
	json_decref(cfg->modules);
	json_decref(cfg->run);
	memset(cfg->token, 0, sizeof(cfg->token));
	cfg->mounts = NULL;
	cfg->modules = NULL;
	cfg->run = NULL;
}

static int load_module(const char *name)
{
	char path[512];
	if (strchr(name, '/'))
		snprintf(path, sizeof(path), "%s", name);
	else
		snprintf(path, sizeof(path), MODULES_DIR "/%s.ko", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		/* Not shipped: assume it is built into this kernel. */
		return 0;
	}
	long rc = syscall(SYS_finit_module, fd, "", 0);
	int e = errno;
	close(fd);
	if (rc < 0 && e != EEXIST) {
		mb_log("finit_module %s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

int mb_load_modules(const struct mb_config *cfg)
{
	int failed = 0;
	if (cfg->modules) {
		for (size_t i = 0; i < json_array_size(cfg->modules); i++) {
			json_t *m = json_array_get(cfg->modules, i);
			if (json_is_string(m) && load_module(json_string_value(m)) < 0)
				failed++;
		}
		return failed ? -EIO : 0;
	}
	char *order;
	if (mb_slurp(MODULES_ORDER, &order, NULL) < 0)
		return 0; /* custom kernel: everything is built in */
	int n = 0;
	for (char *save = NULL, *line = strtok_r(order, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (!*line || *line == '#')
			continue;
		if (load_module(line) < 0)
			failed++;
		n++;
	}
	free(order);
	mb_log("loaded %d kernel modules (%d failed)", n, failed);
	return failed ? -EIO : 0;
}

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                    const char *data)
{
	mb_mkdir_p(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0) {
		int e = errno;
		if (e != EBUSY)
			mb_log("mount %s on %s (%s): %s", src, dst, type, strerror(e));
		return -e;
	}
	return 0;
}

int mb_early_mounts(void)
{
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	return 0;
}

/* Delete the initramfs's files (like switch_root) so their memory is freed; stays on
 * the rootfs device and never descends into other mounts. */
static void delete_contents(int dfd, dev_t rootdev)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (st.st_dev != rootdev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				delete_contents(sub, rootdev);
			unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd(d), de->d_name, 0);
		}
	}
	closedir(d);
}

/*
 * Move off the initramfs onto a tmpfs root so that containers can pivot_root (which
 * refuses to work while the current root is the initial rootfs).
 */
int mb_leave_initramfs(void)
{
	struct statfs sfs;
	if (statfs("/", &sfs) < 0 ||
	    (sfs.f_type != 0x858458f6 /* RAMFS */ && sfs.f_type != 0x01021994 /* TMPFS */))
		return 0; /* booted without an initramfs: nothing to leave */
	struct stat rst;
	if (stat("/", &rst) < 0)
		return -errno;
	const char *nr = "/.moonbox-root";
	if (do_mount("tmpfs", nr, "tmpfs", MS_NOSUID, "mode=0755") < 0)
		return -EIO;
	const char *keep[] = { "/dev", "/proc", "/sys" };
	for (size_t i = 0; i < 3; i++) {
		char dst[64];
		snprintf(dst, sizeof(dst), "%s%s", nr, keep[i]);
		mb_mkdir_p(dst, 0755);
		if (mount(keep[i], dst, NULL, MS_MOVE, NULL) < 0)
			mb_log("move %s: %s", keep[i], strerror(errno));
	}
	int rootfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rootfd >= 0)
		delete_contents(rootfd, rst.st_dev);
	if (chdir(nr) < 0 || mount(nr, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0) {
		mb_log("switching to the tmpfs root failed: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

int mb_late_mounts(void)
{
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
	         "newinstance,ptmxmode=0666,mode=0620");
	do_mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	do_mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mb_mkdir_p(MB_ROOTFS_DIR, 0755);
	mb_mkdir_p(MB_ETC_DIR, 0755);
	mb_mkdir_p(MB_MOUNTS_DIR, 0755);
	/* /dev/ptmx of init's devpts instance (the devtmpfs one belongs to no instance). */
	unlink("/dev/ptmx");
	symlink("pts/ptmx", "/dev/ptmx");
	return 0;
}

int mb_find_disk(const char *serial, char *dev, size_t devlen, int timeout_ms)
{
	uint64_t deadline = mb_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
	for (;;) {
		DIR *d = opendir("/sys/block");
		if (d) {
			struct dirent *de;
			while ((de = readdir(d))) {
				if (strncmp(de->d_name, "vd", 2) != 0)
					continue;
				char p[300], s[128];
				snprintf(p, sizeof(p), "/sys/block/%s/serial", de->d_name);
				if (mb_read_file(p, s, sizeof(s)) < 0)
					continue;
				s[strcspn(s, "\n")] = 0;
				if (strcmp(s, serial) == 0) {
					snprintf(dev, devlen, "/dev/%s", de->d_name);
					closedir(d);
					/* devtmpfs creates the node asynchronously */
					for (int i = 0; i < 200 && access(dev, F_OK) < 0; i++)
						usleep(5000);
					return 0;
				}
			}
			closedir(d);
		}
		if (mb_now_ms() >= deadline)
			return -ENODEV;
		usleep(5000);
	}
}

static int mount_disk(const char *serial, const char *fstype, const char *dst, bool ro,
                      const char *opts, int timeout_ms, mbp_err *err)
{
	char dev[64];
	if (mb_find_disk(serial, dev, sizeof(dev), timeout_ms) < 0)
		return mbp_err_set(err, -ENODEV, "no virtio disk with serial '%s'", serial);
	mb_mkdir_p(dst, 0755);
	unsigned long fl = ro ? MS_RDONLY : 0;
	if (mount(dev, dst, fstype, fl, opts && *opts ? opts : NULL) < 0)
		return mbp_err_set(err, -errno, "mount %s (%s, serial %s) on %s: %s", dev, fstype,
		                   serial, dst, strerror(errno));
	return 0;
}

int mb_mount_root(struct mb_config *cfg, mbp_err *err)
{
	int rc = 0;
	if (strcmp(cfg->root_type, "overlay") == 0) {
		rc = mount_disk(cfg->lower, cfg->lower_fstype, MB_LOWER_DIR, true, NULL,
		                cfg->disk_timeout_ms, err);
		if (rc < 0)
			return rc;
		rc = mount_disk(cfg->upper, cfg->upper_fstype, MB_UPPER_DIR, false, NULL,
		                cfg->disk_timeout_ms, err);
		if (rc < 0)
			return rc;
		/* The upper disk arrives empty: make upper/ and work/ on first use. */
		mb_mkdir_p(MB_UPPER_DIR "/upper", 0755);
		mb_mkdir_p(MB_UPPER_DIR "/work", 0755);
		if (mount("overlay", MB_ROOTFS_DIR, "overlay", 0,
		          "lowerdir=" MB_LOWER_DIR ",upperdir=" MB_UPPER_DIR
		          "/upper,workdir=" MB_UPPER_DIR "/work") < 0)
			return mbp_err_set(err, -errno, "mount overlay: %s", strerror(errno));
	} else if (strcmp(cfg->root_type, "disk") == 0) {
		rc = mount_disk(cfg->root_serial, cfg->root_fstype, MB_ROOTFS_DIR, cfg->root_ro,
		                NULL, cfg->disk_timeout_ms, err);
		if (rc < 0)
			return rc;
	}
	for (int i = 0; i < cfg->nmounts; i++) {
		struct mb_mount *m = &cfg->mounts[i];
		if (strcmp(m->type, "9p") == 0) {
			char opts[512];
			snprintf(opts, sizeof(opts),
			         "trans=virtio,version=9p2000.L,msize=262144%s%s",
			         m->options[0] ? "," : "", m->options);
			mb_mkdir_p(m->staged, 0755);
			if (mount(m->source, m->staged, "9p", m->ro ? MS_RDONLY : 0, opts) < 0)
				return mbp_err_set(err, -errno, "mount 9p tag %s: %s", m->source,
				                   strerror(errno));
		} else {
			rc = mount_disk(m->source, m->fstype, m->staged, m->ro, m->options,
			                cfg->disk_timeout_ms, err);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

int mb_write_etc(const struct mb_config *cfg, const char *hostname, mbp_err *err)
{
	char buf[2048];
	int n = snprintf(buf, sizeof(buf),
	                 "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
	if (cfg->address[0])
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s\t%s\n", cfg->address, hostname);
	else
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "127.0.1.1\t%s\n", hostname);
	if (cfg->address6[0])
		n +=
		    snprintf(buf + n, sizeof(buf) - (size_t)n, "%s\t%s\n", cfg->address6, hostname);
	int rc = mb_write_file(MB_ETC_DIR "/hosts", buf, (size_t)n, 0644);
	if (rc < 0)
		return mbp_err_set(err, rc, "write hosts: %s", strerror(-rc));
	n = snprintf(buf, sizeof(buf), "%s\n", hostname);
	rc = mb_write_file(MB_ETC_DIR "/hostname", buf, (size_t)n, 0644);
	if (rc < 0)
		return mbp_err_set(err, rc, "write hostname: %s", strerror(-rc));
	n = 0;
	if (cfg->search[0])
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "search %s\n", cfg->search);
	for (int i = 0; i < cfg->ndns; i++)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "nameserver %s\n", cfg->dns[i]);
	rc = mb_write_file(MB_ETC_DIR "/resolv.conf", buf, (size_t)n, 0644);
	if (rc < 0)
		return mbp_err_set(err, rc, "write resolv.conf: %s", strerror(-rc));
	return 0;
}

static void umount_one(const char *path)
{
	if (umount2(path, 0) < 0 && errno != EINVAL && errno != ENOENT) {
		if (umount2(path, MNT_DETACH) < 0)
			mb_log("umount %s: %s", path, strerror(errno));
	}
}

void mb_unmount_all(const struct mb_config *cfg)
{
	for (int i = cfg->nmounts - 1; i >= 0; i--)
		umount_one(cfg->mounts[i].staged);
	umount_one(MB_ROOTFS_DIR);
	umount_one(MB_UPPER_DIR);
	umount_one(MB_LOWER_DIR);
}
