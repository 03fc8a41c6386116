/*
 * Validation of VM specs and process descriptions. Every message starts with the field it
 * is about ("vcpus: ...", "disks[1].path: ..."), so the REST layer can answer 400 naming
 * it. Indexes are 0-based, as in the JSON the API receives.
 */
#include "vm.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local char field_buf[96];

#define FAIL(fld, ...)                                                                             \
	do {                                                                                       \
		snprintf(field_buf, sizeof(field_buf), "%s", (fld));                               \
		if (field)                                                                         \
			*field = field_buf;                                                        \
		char m_[200];                                                                      \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                                             \
		mb_err_set(err, -EINVAL, "%s: %s", field_buf, m_);                                 \
		goto fail;                                                                         \
	} while (0)

bool vm_valid_id(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > VM_ID_MAX)
		return false;
	if (!(islower((unsigned char)s[0]) || isdigit((unsigned char)s[0])))
		return false;
	for (size_t i = 1; i < n; i++) {
		char c = s[i];
		if (!(islower((unsigned char)c) || isdigit((unsigned char)c) || c == '_' ||
		      c == '.' || c == '-'))
			return false;
	}
	return true;
}

static bool valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > VM_NAME_MAX || !isalnum((unsigned char)s[0]))
		return false;
	for (size_t i = 1; i < n; i++) {
		char c = s[i];
		if (!(isalnum((unsigned char)c) || c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

static bool valid_hostname(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '-'))
			return false;
	return true;
}

/* [A-Za-z0-9._-]{1,max} */
static bool valid_token(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
			return false;
	return true;
}

static bool valid_mac(const char *s)
{
	unsigned b[6];
	char tail;
	if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3],
	                              &b[4], &b[5], &tail) != 6)
		return false;
	return (b[0] & 1) == 0; /* unicast */
}

static bool valid_ifname(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 15)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '/' || s[i] == ':' || s[i] == ',' || isspace((unsigned char)s[i]) ||
		    !isprint((unsigned char)s[i]))
			return false;
	return true;
}

static bool valid_ip(const char *s, int af)
{
	unsigned char buf[16];
	return inet_pton(af, s, buf) == 1;
}

/* "a.b.c.d/len" or "x::y/len" */
static bool valid_cidr(const char *s, int af)
{
	char tmp[64];
	const char *slash = strchr(s, '/');
	if (!slash || (size_t)(slash - s) >= sizeof(tmp))
		return false;
	memcpy(tmp, s, (size_t)(slash - s));
	tmp[slash - s] = '\0';
	char *end;
	long len = strtol(slash + 1, &end, 10);
	if (*end || slash[1] == '\0' || len < 0 || len > (af == AF_INET ? 32 : 128))
		return false;
	return valid_ip(tmp, af);
}

/* Text without commas (QEMU option syntax) or control characters. */
static bool qemu_safe(const char *s)
{
	for (; *s; s++)
		if (*s == ',' || (unsigned char)*s < 0x20)
			return false;
	return true;
}

static bool is_list(const json_t *v)
{
	/* Lua sends an empty table as an object */
	return json_is_array(v) || (json_is_object(v) && json_object_size(v) == 0);
}

static const char *const top_fields[] = {
	"id",   "name",   "vcpus",         "memory_mib", "kernel",  "initramfs",
	"acpi", "disks",  "shares",        "nics",       "network", "hostname",
	"root", "mounts", "cmdline_extra", "labels",     "run",     NULL,
};

static bool known(const char *const *list, const char *k)
{
	for (; *list; list++)
		if (strcmp(*list, k) == 0)
			return true;
	return false;
}

/* <guest_dir>/name, malloc'ed: caller frees. */
static char *guest_file(const char *name)
{
	return vm_strf("%s/%s", G.guest_dir ? G.guest_dir : ".", name);
}

static bool regular_file(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void random_mac(char out[18])
{
	char hex[7];
	if (vm_random_hex(hex, 3, NULL) < 0)
		snprintf(hex, sizeof(hex), "%06x", (unsigned)(rand() & 0xffffff));
	snprintf(out, 18, "52:54:00:%c%c:%c%c:%c%c", hex[0], hex[1], hex[2], hex[3], hex[4],
	         hex[5]);
}

json_t *vm_spec_normalize(const json_t *spec, const char **field, mb_err *err)
{
	if (field)
		*field = NULL;
	json_t *out = json_object();
	char fb[96];
	if (!json_is_object(spec)) {
		snprintf(field_buf, sizeof(field_buf), "spec");
		if (field)
			*field = field_buf;
		mb_err_set(err, -EINVAL, "spec: must be an object");
		goto fail;
	}
	const char *k;
	json_t *v, *x;
	(void)x;
	json_object_foreach((json_t *)spec, k, v)
	{
		if (!known(top_fields, k))
			FAIL(k, "unknown field");
	}

	/* id, name */
	v = json_object_get(spec, "id");
	char id[VM_ID_MAX + 1];
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !vm_valid_id(json_string_value(v)))
			FAIL("id", "must match [a-z0-9][a-z0-9_.-]{0,63}");
		snprintf(id, sizeof(id), "%s", json_string_value(v));
	} else {
		if (vm_random_hex(id, 6, err) < 0)
			goto fail;
	}
	json_object_set_new(out, "id", json_string(id));
	v = json_object_get(spec, "name");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !valid_name(json_string_value(v)))
			FAIL("name", "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}");
		json_object_set(out, "name", v);
	} else {
		json_object_set_new(out, "name", json_string(id));
	}

	/* vcpus, memory */
	v = json_object_get(spec, "vcpus");
	double vcpus = 1;
	if (v && !json_is_null(v)) {
		if (!json_is_number(v))
			FAIL("vcpus", "must be a number");
		vcpus = json_number_value(v);
		if (!isfinite(vcpus) || vcpus < 0.1 - 1e-9 || vcpus > 16 + 1e-9)
			FAIL("vcpus", "must be between 0.1 and 16 (got %g)", vcpus);
		vcpus = round(vcpus * 1000) / 1000;
	}
	if (vcpus == floor(vcpus))
		json_object_set_new(out, "vcpus", json_integer((json_int_t)vcpus));
	else
		json_object_set_new(out, "vcpus", json_real(vcpus));
	v = json_object_get(spec, "memory_mib");
	json_int_t mem = 256;
	if (v && !json_is_null(v)) {
		if (!json_is_number(v) || json_number_value(v) != floor(json_number_value(v)))
			FAIL("memory_mib", "must be an integer");
		double d = json_number_value(v);
		if (d < 64 || d > 32768)
			FAIL("memory_mib", "must be between 64 and 32768 MiB (got %g)", d);
		mem = (json_int_t)d;
	}
	json_object_set_new(out, "memory_mib", json_integer(mem));

	/* kernel, initramfs, acpi */
	v = json_object_get(spec, "kernel");
	const char *kernel = "custom";
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !*json_string_value(v))
			FAIL("kernel", "must be \"custom\", \"debian\" or an absolute path");
		kernel = json_string_value(v);
	}
	bool custom_kernel = true;
	char *kpath = NULL, *ipath = NULL;
	if (strcmp(kernel, "custom") == 0) {
		kpath = guest_file("vmlinux");
		ipath = guest_file("initramfs.cpio.gz");
	} else if (strcmp(kernel, "debian") == 0) {
		custom_kernel = false;
		kpath = guest_file("vmlinux-debian");
		ipath = guest_file("initramfs-debian.cpio.gz");
	} else if (kernel[0] == '/') {
		if (!qemu_safe(kernel))
			FAIL("kernel", "path must not contain commas or control characters");
		kpath = strdup(kernel);
		ipath = guest_file("initramfs.cpio.gz");
	} else {
		FAIL("kernel", "must be \"custom\", \"debian\" or an absolute path");
	}
	if (!regular_file(kpath)) {
		snprintf(fb, sizeof(fb), "%s", kpath);
		free(kpath);
		free(ipath);
		FAIL("kernel", "no kernel image at %s (is the guest kernel built?)", fb);
	}
	free(kpath);
	json_object_set_new(out, "kernel", json_string(kernel));
	v = json_object_get(spec, "initramfs");
	if (v && !json_is_null(v)) {
		free(ipath);
		ipath = NULL;
		if (!json_is_string(v) || json_string_value(v)[0] != '/' ||
		    !qemu_safe(json_string_value(v)))
			FAIL("initramfs", "must be an absolute path");
		if (!regular_file(json_string_value(v)))
			FAIL("initramfs", "no such file %s", json_string_value(v));
		json_object_set(out, "initramfs", v);
	} else {
		bool ok = regular_file(ipath);
		snprintf(fb, sizeof(fb), "%s", ipath);
		free(ipath);
		if (!ok)
			FAIL("initramfs", "no initramfs at %s (is the guest built?)", fb);
	}
	v = json_object_get(spec, "acpi");
	bool acpi = !custom_kernel;
	if (v && !json_is_null(v)) {
		if (!json_is_boolean(v))
			FAIL("acpi", "must be a boolean");
		acpi = json_is_true(v);
	}
	json_object_set_new(out, "acpi", json_boolean(acpi));

	int ndev = 1; /* virtio-rng */
	/* disks */
	json_t *disks = json_array();
	json_object_set_new(out, "disks", disks);
	v = json_object_get(spec, "disks");
	if (v && !json_is_null(v)) {
		if (!is_list(v))
			FAIL("disks", "must be a list");
		size_t i;
		json_t *d;
		json_array_foreach(v, i, d)
		{
			snprintf(fb, sizeof(fb), "disks[%zu]", i);
			if (!json_is_object(d))
				FAIL(fb, "must be an object {path=, readonly=, serial=, format=}");
			json_object_foreach(d, k, x)
			{
				if (strcmp(k, "path") && strcmp(k, "readonly") &&
				    strcmp(k, "serial") && strcmp(k, "format")) {
					snprintf(fb, sizeof(fb), "disks[%zu].%s", i, k);
					FAIL(fb, "unknown field");
				}
			}
			json_t *p = json_object_get(d, "path");
			snprintf(fb, sizeof(fb), "disks[%zu].path", i);
			if (!json_is_string(p) || json_string_value(p)[0] != '/')
				FAIL(fb, "must be an absolute path");
			if (!qemu_safe(json_string_value(p)))
				FAIL(fb, "must not contain commas or control characters");
			struct stat st;
			if (stat(json_string_value(p), &st) < 0)
				FAIL(fb, "no such file %s", json_string_value(p));
			if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
				FAIL(fb, "%s is not a file or block device", json_string_value(p));
			json_t *ro = json_object_get(d, "readonly");
			snprintf(fb, sizeof(fb), "disks[%zu].readonly", i);
			if (ro && !json_is_null(ro) && !json_is_boolean(ro))
				FAIL(fb, "must be a boolean");
			json_t *fmt = json_object_get(d, "format");
			const char *f = "raw";
			snprintf(fb, sizeof(fb), "disks[%zu].format", i);
			if (fmt && !json_is_null(fmt)) {
				if (!json_is_string(fmt) ||
				    (strcmp(json_string_value(fmt), "raw") &&
				     strcmp(json_string_value(fmt), "qcow2")))
					FAIL(fb, "must be \"raw\" or \"qcow2\"");
				f = json_string_value(fmt);
			}
			json_t *ser = json_object_get(d, "serial");
			char sbuf[32];
			snprintf(fb, sizeof(fb), "disks[%zu].serial", i);
			if (ser && !json_is_null(ser)) {
				if (!json_is_string(ser) ||
				    !valid_token(json_string_value(ser), 20))
					FAIL(fb, "must match [A-Za-z0-9._-]{1,20}");
				snprintf(sbuf, sizeof(sbuf), "%s", json_string_value(ser));
			} else {
				snprintf(sbuf, sizeof(sbuf), "disk%zu", i);
			}
			size_t j;
			json_t *o;
			json_array_foreach(disks, j, o)
			{
				if (strcmp(json_string_value(json_object_get(o, "serial")), sbuf) ==
				    0)
					FAIL(fb, "serial \"%s\" is used twice", sbuf);
			}
			json_array_append_new(disks, json_pack("{s:O,s:b,s:s,s:s}", "path", p,
			                                       "readonly", json_is_true(ro),
			                                       "serial", sbuf, "format", f));
			ndev++;
		}
	}

	/* shares (virtio-9p) */
	json_t *shares = json_array();
	json_object_set_new(out, "shares", shares);
	v = json_object_get(spec, "shares");
	if (v && !json_is_null(v)) {
		if (!is_list(v))
			FAIL("shares", "must be a list");
		if (json_array_size(v) > 0 && strcmp(kernel, "debian") == 0)
			FAIL("shares", "9p shares need the custom kernel (Debian's has no 9p)");
		size_t i;
		json_t *s;
		json_array_foreach(v, i, s)
		{
			snprintf(fb, sizeof(fb), "shares[%zu]", i);
			if (!json_is_object(s))
				FAIL(fb, "must be an object {path=, tag=, readonly=}");
			json_object_foreach(s, k, x)
			{
				if (strcmp(k, "path") && strcmp(k, "readonly") &&
				    strcmp(k, "tag")) {
					snprintf(fb, sizeof(fb), "shares[%zu].%s", i, k);
					FAIL(fb, "unknown field");
				}
			}
			json_t *p = json_object_get(s, "path");
			snprintf(fb, sizeof(fb), "shares[%zu].path", i);
			struct stat st;
			if (!json_is_string(p) || json_string_value(p)[0] != '/' ||
			    !qemu_safe(json_string_value(p)))
				FAIL(fb, "must be an absolute path without commas");
			if (stat(json_string_value(p), &st) < 0 || !S_ISDIR(st.st_mode))
				FAIL(fb, "%s is not a directory", json_string_value(p));
			json_t *tag = json_object_get(s, "tag");
			snprintf(fb, sizeof(fb), "shares[%zu].tag", i);
			if (!json_is_string(tag) || !valid_token(json_string_value(tag), 31))
				FAIL(fb, "must match [A-Za-z0-9._-]{1,31}");
			size_t j;
			json_t *o;
			json_array_foreach(shares, j, o)
			{
				if (strcmp(json_string_value(json_object_get(o, "tag")),
				           json_string_value(tag)) == 0)
					FAIL(fb, "tag \"%s\" is used twice",
					     json_string_value(tag));
			}
			json_t *ro = json_object_get(s, "readonly");
			snprintf(fb, sizeof(fb), "shares[%zu].readonly", i);
			if (ro && !json_is_null(ro) && !json_is_boolean(ro))
				FAIL(fb, "must be a boolean");
			json_array_append_new(shares, json_pack("{s:O,s:O,s:b}", "path", p, "tag",
			                                        tag, "readonly", json_is_true(ro)));
			ndev++;
		}
	}

	/* nics */
	json_t *nics = json_array();
	json_object_set_new(out, "nics", nics);
	v = json_object_get(spec, "nics");
	bool have_user = false, have_tap = false;
	if (!v || json_is_null(v) || !is_list(v) || json_array_size(v) == 0)
		FAIL("nics",
		     "at least one NIC is required (the host reaches the agent through it)");
	if (json_array_size(v) > 4)
		FAIL("nics", "at most 4 NICs");
	{
		size_t i;
		json_t *n;
		json_array_foreach(v, i, n)
		{
			snprintf(fb, sizeof(fb), "nics[%zu]", i);
			if (!json_is_object(n))
				FAIL(fb, "must be an object {type=\"tap\"|\"user\", ...}");
			const char *type = json_string_value(json_object_get(n, "type"));
			snprintf(fb, sizeof(fb), "nics[%zu].type", i);
			if (!type || (strcmp(type, "tap") && strcmp(type, "user")))
				FAIL(fb, "must be \"tap\" or \"user\"");
			bool tap = strcmp(type, "tap") == 0;
			json_object_foreach(n, k, x)
			{
				bool ok =
				    !strcmp(k, "type") || !strcmp(k, "mac") ||
				    (tap && !strcmp(k, "ifname")) ||
				    (!tap && (!strcmp(k, "forwards") || !strcmp(k, "restrict")));
				if (!ok) {
					snprintf(fb, sizeof(fb), "nics[%zu].%s", i, k);
					FAIL(fb, "unknown field for a %s NIC", type);
				}
			}
			char mac[18];
			json_t *m = json_object_get(n, "mac");
			snprintf(fb, sizeof(fb), "nics[%zu].mac", i);
			if (m && !json_is_null(m)) {
				if (!json_is_string(m) || !valid_mac(json_string_value(m)))
					FAIL(fb, "must be a unicast MAC like 52:54:00:12:34:56");
				snprintf(mac, sizeof(mac), "%s", json_string_value(m));
				for (char *c = mac; *c; c++)
					*c = (char)tolower((unsigned char)*c);
			} else {
				random_mac(mac);
			}
			json_t *o = json_pack("{s:s,s:s}", "type", type, "mac", mac);
			json_array_append_new(nics, o);
			if (tap) {
				have_tap = true;
				json_t *ifn = json_object_get(n, "ifname");
				snprintf(fb, sizeof(fb), "nics[%zu].ifname", i);
				if (!json_is_string(ifn) || !valid_ifname(json_string_value(ifn)))
					FAIL(fb, "must be a tap interface name (1..15 characters)");
				json_object_set(o, "ifname", ifn);
			} else {
				if (have_user)
					FAIL(fb, "at most one user-mode NIC");
				have_user = true;
				json_t *r = json_object_get(n, "restrict");
				snprintf(fb, sizeof(fb), "nics[%zu].restrict", i);
				if (r && !json_is_null(r) && !json_is_boolean(r))
					FAIL(fb, "must be a boolean");
				json_object_set_new(o, "restrict", json_boolean(json_is_true(r)));
				json_t *fw = json_object_get(n, "forwards");
				json_t *fo = json_array();
				json_object_set_new(o, "forwards", fo);
				snprintf(fb, sizeof(fb), "nics[%zu].forwards", i);
				if (fw && !json_is_null(fw) && !is_list(fw))
					FAIL(fb, "must be a list");
				size_t j;
				json_t *f;
				json_array_foreach(fw, j, f)
				{
					snprintf(fb, sizeof(fb), "nics[%zu].forwards[%zu]", i, j);
					if (!json_is_object(f))
						FAIL(fb, "must be an object {proto=, host_addr=, "
						         "host_port=, guest_port=}");
					const char *proto =
					    json_string_value(json_object_get(f, "proto"));
					if (!proto)
						proto = "tcp";
					if (strcmp(proto, "tcp") && strcmp(proto, "udp"))
						FAIL(fb, "proto must be \"tcp\" or \"udp\"");
					const char *ha =
					    json_string_value(json_object_get(f, "host_addr"));
					if (!ha)
						ha = "127.0.0.1";
					if (!valid_ip(ha, AF_INET))
						FAIL(fb, "host_addr must be an IPv4 address");
					json_t *hp = json_object_get(f, "host_port");
					json_t *gp = json_object_get(f, "guest_port");
					if (!json_is_integer(hp) || json_integer_value(hp) < 1 ||
					    json_integer_value(hp) > 65535)
						FAIL(fb, "host_port must be 1..65535");
					if (!json_is_integer(gp) || json_integer_value(gp) < 1 ||
					    json_integer_value(gp) > 65535)
						FAIL(fb, "guest_port must be 1..65535");
					json_array_append_new(
					    fo, json_pack("{s:s,s:s,s:O,s:O}", "proto", proto,
					                  "host_addr", ha, "host_port", hp,
					                  "guest_port", gp));
				}
			}
			ndev++;
		}
	}

	/* network (the guest's boot.json) */
	v = json_object_get(spec, "network");
	json_t *net = json_object();
	json_object_set_new(out, "network", net);
	if (v && !json_is_null(v)) {
		if (!json_is_object(v))
			FAIL("network", "must be an object");
		json_t *netin = v;
		json_object_foreach(netin, k, v)
		{
			snprintf(fb, sizeof(fb), "network.%s", k);
			if (!strcmp(k, "address") || !strcmp(k, "address6")) {
				int af = k[7] == '6' ? AF_INET6 : AF_INET;
				if (!json_is_string(v) || !valid_cidr(json_string_value(v), af))
					FAIL(fb, "must be an %s address with a prefix length",
					     af == AF_INET ? "IPv4" : "IPv6");
			} else if (!strcmp(k, "gateway") || !strcmp(k, "gateway6")) {
				int af = k[7] == '6' ? AF_INET6 : AF_INET;
				if (!json_is_string(v) || !valid_ip(json_string_value(v), af))
					FAIL(fb, "must be an %s address",
					     af == AF_INET ? "IPv4" : "IPv6");
			} else if (!strcmp(k, "dns") || !strcmp(k, "search")) {
				if (!is_list(v) || json_array_size(v) > (k[0] == 'd' ? 4 : 6))
					FAIL(fb, "must be a list of at most %d entries",
					     k[0] == 'd' ? 4 : 6);
				size_t j;
				json_t *e;
				json_array_foreach(v, j, e)
				{
					bool ok =
					    json_is_string(e) &&
					    (k[0] == 's'
					         ? valid_token(json_string_value(e), 253)
					         : (valid_ip(json_string_value(e), AF_INET) ||
					            valid_ip(json_string_value(e), AF_INET6)));
					if (!ok)
						FAIL(fb, "entry %zu is not %s", j,
						     k[0] == 'd' ? "an IP address" : "a domain");
				}
			} else if (!strcmp(k, "mtu")) {
				if (!json_is_integer(v) || json_integer_value(v) < 68 ||
				    json_integer_value(v) > 65535)
					FAIL(fb, "must be an integer 68..65535");
			} else {
				FAIL(fb, "unknown field");
			}
			json_object_set(net, k, v);
		}
	}
	if (have_user && !have_tap) {
		/* QEMU's user network: 10.0.2.0/24, gateway .2, DNS .3 */
		if (!json_object_get(net, "address"))
			json_object_set_new(net, "address", json_string("10.0.2.15/24"));
		const char *a = json_string_value(json_object_get(net, "address"));
		if (strncmp(a, "10.0.2.", 7) != 0)
			FAIL("network.address", "a user-mode NIC puts the guest in 10.0.2.0/24");
		if (!json_object_get(net, "gateway"))
			json_object_set_new(net, "gateway", json_string("10.0.2.2"));
		if (!json_object_get(net, "dns"))
			json_object_set_new(net, "dns", json_pack("[s]", "10.0.2.3"));
	}
	const char *first = json_string_value(json_object_get(json_array_get(nics, 0), "type"));
	if (first && strcmp(first, "tap") == 0 && !json_object_get(net, "address"))
		FAIL("network.address", "required when the first NIC is a tap (the host dials the "
		                        "agent at that address)");
	if (have_user && strcmp(first, "user") != 0)
		FAIL("nics", "the user-mode NIC must come first (the guest's address is set on the "
		             "first NIC)");

	int maxdev = acpi ? 24 : 8;
	if (ndev > maxdev)
		FAIL("disks", "too many devices: %d disks+shares+NICs+rng, at most %d %s", ndev,
		     maxdev, acpi ? "" : "without ACPI (custom kernel: virtio-mmio)");

	/* hostname */
	v = json_object_get(spec, "hostname");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !valid_hostname(json_string_value(v)))
			FAIL("hostname", "must be a DNS label (letters, digits, '-', at most 63)");
		json_object_set(out, "hostname", v);
	} else {
		const char *nm = json_string_value(json_object_get(out, "name"));
		char hn[64];
		size_t j = 0;
		for (const char *c = nm; *c && j < 63; c++)
			if (isalnum((unsigned char)*c) || *c == '-')
				hn[j++] = (char)tolower((unsigned char)*c);
		hn[j] = '\0';
		while (j > 0 && hn[j - 1] == '-')
			hn[--j] = '\0';
		json_object_set_new(out, "hostname", json_string(valid_hostname(hn) ? hn : id));
	}

	/* root, mounts: as boot.json wants them; checked against the disks and shares */
	v = json_object_get(spec, "root");
	if (v && !json_is_null(v)) {
		if (!json_is_object(v))
			FAIL("root", "must be an object {type=\"overlay\"|\"disk\"|\"none\", ...}");
		const char *t = json_string_value(json_object_get(v, "type"));
		if (!t || (strcmp(t, "overlay") && strcmp(t, "disk") && strcmp(t, "none")))
			FAIL("root.type", "must be \"overlay\", \"disk\" or \"none\"");
		const char *need[2] = { NULL, NULL };
		if (!strcmp(t, "overlay")) {
			need[0] = json_string_value(json_object_get(v, "lower"));
			need[1] = json_string_value(json_object_get(v, "upper"));
			if (!need[0])
				need[0] = "lower";
			if (!need[1])
				need[1] = "upper";
		} else if (!strcmp(t, "disk")) {
			need[0] = json_string_value(json_object_get(v, "serial"));
			if (!need[0])
				FAIL("root.serial", "required for a disk root");
		}
		for (int j = 0; j < 2; j++) {
			if (!need[j])
				continue;
			bool found = false;
			size_t xi;
			json_t *d;
			json_array_foreach(disks, xi, d)
			{
				found |= !strcmp(json_string_value(json_object_get(d, "serial")),
				                 need[j]);
			}
			if (!found)
				FAIL("root", "no disk with serial \"%s\"", need[j]);
		}
		json_object_set(out, "root", v);
	} else {
		json_object_set_new(out, "root", json_pack("{s:s}", "type", "none"));
	}
	v = json_object_get(spec, "mounts");
	json_t *mounts = json_array();
	json_object_set_new(out, "mounts", mounts);
	if (v && !json_is_null(v)) {
		if (!is_list(v))
			FAIL("mounts", "must be a list");
		size_t i;
		json_t *m;
		json_array_foreach(v, i, m)
		{
			snprintf(fb, sizeof(fb), "mounts[%zu]", i);
			if (!json_is_object(m))
				FAIL(fb, "must be an object");
			const char *t = json_string_value(json_object_get(m, "type"));
			const char *target = json_string_value(json_object_get(m, "target"));
			if (!target || target[0] != '/')
				FAIL(fb, "target must be an absolute path");
			if (t && !strcmp(t, "block")) {
				const char *s = json_string_value(json_object_get(m, "serial"));
				bool found = false;
				size_t xi;
				json_t *d;
				json_array_foreach(disks, xi, d)
				{
					found |=
					    s &&
					    !strcmp(json_string_value(json_object_get(d, "serial")),
					            s);
				}
				if (!found)
					FAIL(fb, "no disk with serial \"%s\"", s ? s : "");
			} else if (t && !strcmp(t, "9p")) {
				const char *tag = json_string_value(json_object_get(m, "tag"));
				bool found = false;
				size_t xi;
				json_t *d;
				json_array_foreach(shares, xi, d)
				{
					found |=
					    tag &&
					    !strcmp(json_string_value(json_object_get(d, "tag")),
					            tag);
				}
				if (!found)
					FAIL(fb, "no share with tag \"%s\"", tag ? tag : "");
			} else {
				FAIL(fb, "type must be \"block\" or \"9p\"");
			}
			json_array_append(mounts, m);
		}
	}

	v = json_object_get(spec, "cmdline_extra");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || strlen(json_string_value(v)) > 1024)
			FAIL("cmdline_extra", "must be a string of at most 1024 bytes");
		for (const char *c = json_string_value(v); *c; c++)
			if ((unsigned char)*c < 0x20)
				FAIL("cmdline_extra", "must not contain control characters");
		json_object_set(out, "cmdline_extra", v);
	}
	v = json_object_get(spec, "labels");
	if (v && !json_is_null(v)) {
		if (!json_is_object(v))
			FAIL("labels", "must be an object");
		json_object_set(out, "labels", v);
	} else {
		json_object_set_new(out, "labels", json_object());
	}
	/* run: the main process, started by moonbox-init at every boot (PROTOCOL.md) */
	v = json_object_get(spec, "run");
	if (v && !json_is_null(v)) {
		if (!json_is_object(v))
			FAIL("run", "must be a process description (an object)");
		mb_err pe = { 0 };
		json_t *in = json_copy((json_t *)v); /* ours: the id defaults to "main" */
		if (!in)
			FAIL("run", "out of memory");
		if (!json_object_get(in, "id"))
			json_object_set_new(in, "id", json_string("main"));
		json_t *run = vm_proc_normalize(in, true, &pe);
		json_decref(in);
		if (!run)
			FAIL("run", "%.180s", pe.msg);
		json_object_set_new(out, "run", run);
	}
	return out;
fail:
	json_decref(out);
	return NULL;
}

/* ---- processes ------------------------------------------------------------------------- */

json_t *vm_proc_normalize(const json_t *proc, bool is_run, mb_err *err)
{
	const char **field = NULL;
	json_t *out = json_object();
	char fb[64];
	if (!json_is_object(proc))
		FAIL("proc", "must be a table");
	json_t *v = json_object_get(proc, "id");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v) || !*json_string_value(v) ||
		    strlen(json_string_value(v)) > 127)
			FAIL("id", "must be a string of 1..127 bytes");
		json_object_set(out, "id", v);
	} else {
		char hex[17];
		if (vm_random_hex(hex, 8, err) < 0)
			goto fail;
		json_object_set_new(out, "id", json_string(hex));
	}
	v = json_object_get(proc, "argv");
	if (!is_list(v) || json_array_size(v) == 0)
		FAIL("argv", "must be a non-empty list of strings");
	size_t i;
	json_t *a;
	json_array_foreach(v, i, a)
	{
		snprintf(fb, sizeof(fb), "argv[%zu]", i);
		if (!json_is_string(a))
			FAIL(fb, "must be a string");
	}
	json_object_set(out, "argv", v);
	v = json_object_get(proc, "env");
	if (v && !json_is_null(v)) {
		json_t *env = json_array();
		json_object_set_new(out, "env", env);
		if (json_is_array(v)) {
			json_array_foreach(v, i, a)
			{
				snprintf(fb, sizeof(fb), "env[%zu]", i);
				if (!json_is_string(a) || !strchr(json_string_value(a), '=') ||
				    json_string_value(a)[0] == '=')
					FAIL(fb, "must be a \"KEY=value\" string");
				json_array_append(env, a);
			}
		} else if (json_is_object(v)) {
			const char *k;
			json_object_foreach((json_t *)v, k, a)
			{
				snprintf(fb, sizeof(fb), "env.%s", k);
				if (!*k || strchr(k, '='))
					FAIL(fb, "bad variable name");
				if (!json_is_string(a) && !json_is_number(a))
					FAIL(fb, "must be a string");
				char *kv = json_is_string(a)
				               ? vm_strf("%s=%s", k, json_string_value(a))
				               : vm_strf("%s=%g", k, json_number_value(a));
				json_array_append_new(env, json_string(kv));
				free(kv);
			}
		} else {
			FAIL("env", "must be a list of \"K=V\" or a table {K=V}");
		}
	}
	static const char *const strs[] = { "cwd", "user", "hostname", "cpu_max", NULL };
	for (int j = 0; strs[j]; j++) {
		v = json_object_get(proc, strs[j]);
		if (!v || json_is_null(v))
			continue;
		if (!json_is_string(v))
			FAIL(strs[j], "must be a string");
		if ((!strcmp(strs[j], "hostname") || !strcmp(strs[j], "cpu_max")) && !is_run)
			FAIL(strs[j], "only for the main process (run)");
		json_object_set(out, strs[j], v);
	}
	static const char *const bools[] = { "tty", "stdin", NULL };
	for (int j = 0; bools[j]; j++) {
		v = json_object_get(proc, bools[j]);
		if (!v || json_is_null(v))
			continue;
		if (!json_is_boolean(v))
			FAIL(bools[j], "must be a boolean");
		json_object_set(out, bools[j], v);
	}
	static const struct {
		const char *k;
		double lo, hi;
		bool run_only;
	} ints[] = { { "buffer", 4096, 64 << 20, false }, { "rows", 1, 65535, false },
		     { "cols", 1, 65535, false },         { "memory_max", 1 << 20, 1e15, true },
		     { "pids_max", 1, 4194304, true },    { NULL, 0, 0, false } };
	for (int j = 0; ints[j].k; j++) {
		v = json_object_get(proc, ints[j].k);
		if (!v || json_is_null(v))
			continue;
		if (!json_is_number(v) || json_number_value(v) != floor(json_number_value(v)) ||
		    json_number_value(v) < ints[j].lo || json_number_value(v) > ints[j].hi)
			FAIL(ints[j].k, "must be an integer in %.0f..%.0f", ints[j].lo, ints[j].hi);
		if (ints[j].run_only && !is_run)
			FAIL(ints[j].k, "only for the main process (run)");
		json_object_set_new(out, ints[j].k, json_integer((json_int_t)json_number_value(v)));
	}
	static const char *const proc_fields[] = { "id",         "argv",     "env",     "cwd",
		                                   "user",       "hostname", "cpu_max", "tty",
		                                   "stdin",      "buffer",   "rows",    "cols",
		                                   "memory_max", "pids_max", NULL };
	const char *k;
	json_object_foreach((json_t *)proc, k, v)
	{
		if (!known(proc_fields, k))
			FAIL(k, "unknown field");
	}
	return out;
fail:
	json_decref(out);
	return NULL;
}
