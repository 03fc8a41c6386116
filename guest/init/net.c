/* Network set-up with plain ioctls (the Debian kernel has no IP_PNP and init has no
 * netlink library): loopback, address/prefix, MTU, default routes (IPv4 and IPv6). */
#include "init.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* From <linux/ipv6.h> / <linux/ipv6_route.h>, which clash with glibc's headers. */
struct mb_in6_ifreq {
	struct in6_addr ifr6_addr;
	uint32_t ifr6_prefixlen;
	int ifr6_ifindex;
};
struct mb_in6_rtmsg {
	struct in6_addr rtmsg_dst;
	struct in6_addr rtmsg_src;
	struct in6_addr rtmsg_gateway;
	uint32_t rtmsg_type;
	uint16_t rtmsg_dst_len;
	uint16_t rtmsg_src_len;
	uint32_t rtmsg_metric;
	unsigned long rtmsg_info;
	uint32_t rtmsg_flags;
	int rtmsg_ifindex;
};

static int if_flags_up(int fd, const char *ifname)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		return -errno;
	return 0;
}

static int find_ifname(struct mb_config *cfg)
{
	for (int tries = 0; tries < 400; tries++) {
		DIR *d = opendir("/sys/class/net");
		if (d) {
			struct dirent *de;
			while ((de = readdir(d))) {
				if (de->d_name[0] == '.' || strcmp(de->d_name, "lo") == 0)
					continue;
				char p[300], mac[64];
				snprintf(p, sizeof(p), "/sys/class/net/%s/address", de->d_name);
				if (mb_read_file(p, mac, sizeof(mac)) < 0)
					continue;
				mac[strcspn(mac, "\n")] = 0;
				if (!cfg->mac[0] || strcasecmp(mac, cfg->mac) == 0) {
					snprintf(cfg->ifname, sizeof(cfg->ifname), "%.15s",
					         de->d_name);
					closedir(d);
					return 0;
				}
			}
			closedir(d);
		}
		usleep(5000); /* the driver may still be probing (modules) */
	}
	return -ENODEV;
}

static int setup_v6(struct mb_config *cfg, mbp_err *err)
{
	int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mbp_err_set(err, -errno, "IPv6 socket: %s", strerror(errno));
	int rc = 0;
	int idx = (int)if_nametoindex(cfg->ifname);
	struct mb_in6_ifreq r;
	memset(&r, 0, sizeof(r));
	if (inet_pton(AF_INET6, cfg->address6, &r.ifr6_addr) != 1) {
		rc = mbp_err_set(err, -EINVAL, "bad IPv6 address %s", cfg->address6);
		goto out;
	}
	r.ifr6_prefixlen = (uint32_t)cfg->prefix6;
	r.ifr6_ifindex = idx;
	if (ioctl(fd, SIOCSIFADDR, &r) < 0 && errno != EEXIST) {
		rc = mbp_err_set(err, -errno, "set IPv6 address: %s", strerror(errno));
		goto out;
	}
	if (cfg->gateway6[0]) {
		struct mb_in6_rtmsg rt;
		memset(&rt, 0, sizeof(rt));
		if (inet_pton(AF_INET6, cfg->gateway6, &rt.rtmsg_gateway) != 1) {
			rc = mbp_err_set(err, -EINVAL, "bad IPv6 gateway %s", cfg->gateway6);
			goto out;
		}
		rt.rtmsg_flags = RTF_UP | RTF_GATEWAY;
		rt.rtmsg_metric = 1;
		rt.rtmsg_ifindex = idx;
		if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST)
			rc =
			    mbp_err_set(err, -errno, "add IPv6 default route: %s", strerror(errno));
	}
out:
	close(fd);
	return rc;
}

int mb_net_setup(struct mb_config *cfg, mbp_err *err)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mbp_err_set(err, -errno, "socket: %s", strerror(errno));
	int rc = if_flags_up(fd, "lo");
	if (rc < 0)
		mb_log("bringing up lo: %s", strerror(-rc));
	if (!cfg->address[0] && !cfg->address6[0]) {
		close(fd);
		return 0;
	}
	if (find_ifname(cfg) < 0) {
		close(fd);
		return mbp_err_set(err, -ENODEV, "no network interface%s%s",
		                   cfg->mac[0] ? " with MAC " : "", cfg->mac);
	}
	struct ifreq ifr;
	if (cfg->mtu > 0) {
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%.15s", cfg->ifname);
		ifr.ifr_mtu = cfg->mtu;
		if (ioctl(fd, SIOCSIFMTU, &ifr) < 0)
			mb_log("set MTU %d on %s: %s", cfg->mtu, cfg->ifname, strerror(errno));
	}
	if (cfg->address[0]) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%.15s", cfg->ifname);
		sin->sin_family = AF_INET;
		if (inet_pton(AF_INET, cfg->address, &sin->sin_addr) != 1) {
			close(fd);
			return mbp_err_set(err, -EINVAL, "bad IPv4 address %s", cfg->address);
		}
		if (ioctl(fd, SIOCSIFADDR, &ifr) < 0) {
			rc = mbp_err_set(err, -errno, "set address: %s", strerror(errno));
			close(fd);
			return rc;
		}
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%.15s", cfg->ifname);
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr =
		    cfg->prefix ? htonl(0xffffffffu << (32 - (cfg->prefix > 32 ? 32 : cfg->prefix)))
		                : 0;
		if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0)
			mb_log("set netmask: %s", strerror(errno));
	}
	rc = if_flags_up(fd, cfg->ifname);
	if (rc < 0) {
		close(fd);
		return mbp_err_set(err, rc, "bring up %s: %s", cfg->ifname, strerror(-rc));
	}
	if (cfg->gateway[0]) {
		struct rtentry rt;
		memset(&rt, 0, sizeof(rt));
		struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
		struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
		struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
		gw->sin_family = dst->sin_family = mask->sin_family = AF_INET;
		if (inet_pton(AF_INET, cfg->gateway, &gw->sin_addr) != 1) {
			close(fd);
			return mbp_err_set(err, -EINVAL, "bad gateway %s", cfg->gateway);
		}
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = cfg->ifname;
		if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
			rc = mbp_err_set(err, -errno, "add default route via %s: %s", cfg->gateway,
			                 strerror(errno));
			close(fd);
			return rc;
		}
	}
	close(fd);
	if (cfg->address6[0])
		return setup_v6(cfg, err);
	return 0;
}
