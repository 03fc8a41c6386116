/*
 * Template mode (PROTOCOL.md "Templates").
 *
 * The host boots a guest with {"template": true} once per machine shape and saves it with
 * QMP migrate while it waits here; every later start of a VM of that shape restores the
 * saved guest instead of booting a kernel. A restored guest continues in this loop and
 * finds its own boot config on the config disk (the host gives the restored QEMU a new
 * file behind the same virtio disk). Before it is that VM it must forget the template:
 *
 *  - clock: the guest's clock continues from the moment of the snapshot; the config
 *    carries the host's time;
 *  - randomness: every restored guest starts from the same kernel RNG state; the config
 *    carries 32 bytes from the host's RNG, credited and followed by a forced reseed;
 *  - devices: the kernel probed the template's disks (their sizes and first sectors are
 *    cached) and its NIC (features negotiated without a peer, the template's MAC). They
 *    are unbound and bound again, which resets each device and reads the new backing
 *    file's size, serial and MAC. The config disk itself is never rebound: its size
 *    does not change and it is read with O_DIRECT only.
 */
#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CFG_HDR 16       /* magic (8) + length (8, little-endian) */
#define POLL_NS 1000000L /* 1 ms between looks at the config disk */

/* Read len bytes at offset 0 with O_DIRECT into an aligned buffer. */
static int read_direct(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		got += (size_t)n;
	}
	return 0;
}

/* Credit the host's seed to the kernel's pool and reseed the CRNG from it. */
static int reseed(const char *hex, mbp_err *err)
{
	size_t n = hex ? strlen(hex) / 2 : 0;
	if (n < 16 || n > 64)
		return mbp_err_set(err, -EINVAL, "config: seed must be 32..128 hex digits");
	struct {
		struct rand_pool_info info;
		uint8_t buf[64];
	} r = { 0 };
	if (mbp_hex_decode(hex, r.buf, n) < 0)
		return mbp_err_set(err, -EINVAL, "config: seed is not hex");
	r.info.entropy_count = (int)(n * 8);
	r.info.buf_size = (int)n;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return mbp_err_set(err, -errno, "open /dev/urandom: %s", strerror(errno));
	int rc = 0;
	if (ioctl(fd, RNDADDENTROPY, &r) < 0)
		rc = mbp_err_set(err, -errno, "RNDADDENTROPY: %s", strerror(errno));
	else if (ioctl(fd, RNDRESEEDCRNG) < 0)
		rc = mbp_err_set(err, -errno, "RNDRESEEDCRNG: %s", strerror(errno));
	close(fd);
	memset(&r, 0, sizeof(r));
	return rc;
}

static int set_clock(const json_t *clk, mbp_err *err)
{
	struct timespec ts = { .tv_sec = (time_t)mbp_get_int(clk, "sec", 0),
		               .tv_nsec = (long)mbp_get_int(clk, "nsec", 0) };
	if (ts.tv_sec <= 0 || ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000L)
		return mbp_err_set(err, -EINVAL, "config: clock.sec/nsec missing or out of range");
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		return mbp_err_set(err, -errno, "clock_settime: %s", strerror(errno));
	return 0;
}

/* Unbind and bind again every virtio disk and NIC except the config disk (cfgdev:
 * "vdX") and unused slots (serial MBP_EMPTY_SERIAL, read from the device, so the
 * restored VM's). Unbinding waits for RCU grace periods (about 60 ms per device under
 * TCG), so each device is unbound and bound on its own thread: they wait together.
 * Returns how many devices were re-probed, or a negative errno. */
struct rebind {
	char name[32], drv[16];
	pthread_t th;
	int rc;
	bool started;
};

static void *rebind_thread(void *arg)
{
	struct rebind *r = arg;
	static const char *const ops[] = { "unbind", "bind" };
	for (int i = 0; i < 2 && r->rc == 0; i++) {
		char p[128];
		snprintf(p, sizeof(p), "/sys/bus/virtio/drivers/%.15s/%s", r->drv, ops[i]);
		r->rc = mb_write_file(p, r->name, strlen(r->name), 0200);
	}
	return NULL;
}

static int reprobe(const char *cfgdev, mbp_err *err)
{
	static const char base[] = "/sys/bus/virtio/devices";
	struct rebind rb[16];
	int n = 0;
	DIR *d = opendir(base);
	if (!d)
		return mbp_err_set(err, -errno, "%s: %s", base, strerror(errno));
	struct dirent *de;
	while ((de = readdir(d)) && n < 16) {
		size_t nl = strlen(de->d_name);
		if (de->d_name[0] == '.' || nl >= sizeof(rb[0].name))
			continue;
		char p[300], link[300];
		snprintf(p, sizeof(p), "%s/%.31s/driver", base, de->d_name);
		ssize_t l = readlink(p, link, sizeof(link) - 1);
		if (l < 0)
			continue;
		link[l] = '\0';
		const char *drv = strrchr(link, '/');
		drv = drv ? drv + 1 : link;
		if (strlen(drv) >= sizeof(rb[0].drv))
			continue;
		if (strcmp(drv, "virtio_blk") == 0) {
			snprintf(p, sizeof(p), "%s/%.31s/block/%.31s", base, de->d_name, cfgdev);
			if (access(p, F_OK) == 0)
				continue; /* the config disk */
			char bp[200], serial[64] = "";
			snprintf(bp, sizeof(bp), "%s/%.31s/block", base, de->d_name);
			DIR *bd = opendir(bp);
			struct dirent *be;
			while (bd && (be = readdir(bd))) {
				if (be->d_name[0] == '.')
					continue;
				snprintf(p, sizeof(p), "%s/%.31s/serial", bp, be->d_name);
				if (mb_read_file(p, serial, sizeof(serial)) >= 0)
					serial[strcspn(serial, "\n")] = '\0';
				break;
			}
			if (bd)
				closedir(bd);
			if (strcmp(serial, MBP_EMPTY_SERIAL) == 0)
				continue; /* nothing will read it */
		} else if (strcmp(drv, "virtio_net") != 0) {
			continue;
		}
		memset(&rb[n], 0, sizeof(rb[n]));
		memcpy(rb[n].name, de->d_name, nl + 1);
		memcpy(rb[n].drv, drv, strlen(drv) + 1);
		n++;
	}
	closedir(d);
	for (int i = 0; i < n; i++)
		rb[i].started = pthread_create(&rb[i].th, NULL, rebind_thread, &rb[i]) == 0;
	int rc = 0;
	for (int i = 0; i < n; i++) {
		if (rb[i].started)
			pthread_join(rb[i].th, NULL);
		else
			rebind_thread(&rb[i]);
		if (rb[i].rc < 0 && rc == 0)
			rc = mbp_err_set(err, rb[i].rc, "re-probing %s (%s): %s", rb[i].name,
			                 rb[i].drv, strerror(-rb[i].rc));
	}
	return rc < 0 ? rc : n;
}

int mb_template_wait(struct mb_agent *a, struct mb_config *cfg, mbp_err *err)
{
	char dev[64];
	if (mb_find_disk(MBP_CONFIG_SERIAL, dev, sizeof(dev), 10000) < 0)
		return mbp_err_set(err, -ENODEV, "no config disk (serial %s)", MBP_CONFIG_SERIAL);
	int fd = open(dev, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return mbp_err_set(err, -errno, "open %s: %s", dev, strerror(errno));
	void *buf = NULL;
	if (posix_memalign(&buf, 4096, MBP_CONFIG_DISK_SIZE) != 0) {
		close(fd);
		return mbp_err_set(err, -ENOMEM, "out of memory");
	}
	/* what a restored guest would otherwise wait for is done before the snapshot */
	mb_agent_prepared(a);
	mb_procs_prepared();
	mb_log("template: waiting for a config on %s", dev);
	int rc;
	for (;;) {
		rc = read_direct(fd, buf, 4096);
		if (rc < 0) {
			rc = mbp_err_set(err, rc, "read %s: %s", dev, strerror(-rc));
			goto out;
		}
		if (memcmp(buf, MBP_CONFIG_MAGIC, 8) == 0)
			break;
		struct timespec ts = { 0, POLL_NS };
		nanosleep(&ts, NULL);
	}
	uint64_t t0 = mb_now_ms();
	uint64_t len = 0;
	for (int i = 7; i >= 0; i--)
		len = len << 8 | ((const uint8_t *)buf)[8 + i];
	if (len == 0 || len > MBP_CONFIG_DISK_SIZE - CFG_HDR) {
		rc = mbp_err_set(err, -EINVAL, "config disk: bad length %llu",
		                 (unsigned long long)len);
		goto out;
	}
	size_t want = (CFG_HDR + (size_t)len + 4095) & ~(size_t)4095;
	if (want > 4096 && (rc = read_direct(fd, buf, want)) < 0) {
		rc = mbp_err_set(err, rc, "read %s: %s", dev, strerror(-rc));
		goto out;
	}
	json_error_t je;
	json_t *j =
	    json_loadb((const char *)buf + CFG_HDR, (size_t)len, JSON_REJECT_DUPLICATES, &je);
	memset(buf, 0, want); /* it held the token */
	if (!j) {
		rc = mbp_err_set(err, -EINVAL, "config disk: %s (line %d)", je.text, je.line);
		goto out;
	}
	if ((rc = set_clock(json_object_get(j, "clock"), err)) < 0 ||
	    (rc = reseed(mbp_get_str(j, "seed", NULL), err)) < 0) {
		json_decref(j);
		goto out;
	}
	mb_config_free(cfg);
	rc = mb_config_parse(cfg, j, err);
	json_decref(j);
	if (rc < 0)
		goto out;
	if (cfg->template_mode) {
		rc =
		    mbp_err_set(err, -EINVAL, "config disk: a restored guest cannot be a template");
		goto out;
	}
	int n = reprobe(dev + 5, err);
	if (n < 0) {
		rc = n;
		goto out;
	}
	a->boot_ms = mb_now_ms(); /* uptime counts from the restore */
	mb_log("template: restored as %s (%d devices re-probed in %llu ms)", cfg->hostname, n,
	       (unsigned long long)(mb_now_ms() - t0));
	rc = 0;
out:
	free(buf);
	close(fd);
	return rc;
}
