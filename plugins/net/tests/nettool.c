/*
 * mb-nettool: a small static network tool for the net tests and the benchmark. It runs
 * on the host, in network namespaces and inside the test guests (busybox's nc has no UDP
 * and is too slow to measure throughput).
 *
 *   mb-nettool sink PORT                 TCP: read each connection to EOF, answer "N\n"
 *   mb-nettool send HOST PORT BYTES      TCP: send BYTES, read the answer; prints
 *                                        "bytes=N seconds=S mib_s=R"
 *   mb-nettool udp-echo PORT             UDP: answer every datagram with "echo:" + data
 *   mb-nettool udp-ask HOST PORT MSG [MS] UDP: send MSG, print the answer (exit 1: none)
 *   mb-nettool peer PORT                 TCP: answer each connection with "peer=IP\n"
 *   mb-nettool tcp-ask HOST PORT [MS]    TCP: connect, print what the server sends until
 *                                        EOF; prints "refused"/"timeout" (exit 1) on failure
 *   mb-nettool http HOST PORT [PATH]     HTTP/1.0 GET, prints the response (busybox wget
 *                                        crashes in a static build)
 * Servers run until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr_of(const char *host, const char *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		exit(2);
	}
	return a;
}

static int listen_on(int type, const char *port)
{
	int fd = socket(AF_INET, type, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 64) < 0)) {
		perror("bind");
		exit(1);
	}
	return fd;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int connect_timeout(const struct sockaddr_in *a, int ms)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (connect(fd, (const struct sockaddr *)a, sizeof(*a)) < 0 && errno != EINPROGRESS) {
		printf("%s\n", errno == ECONNREFUSED ? "refused" : strerror(errno));
		exit(1);
	}
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	if (poll(&p, 1, ms) != 1) {
		printf("timeout\n");
		exit(1);
	}
	int err = 0;
	socklen_t len = sizeof(err);
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
	if (err) {
		printf("%s\n", err == ECONNREFUSED ? "refused" : strerror(err));
		exit(1);
	}
	fcntl(fd, F_SETFL, 0);
	return fd;
}

__attribute__((noreturn)) static int sink(const char *port)
{
	static char buf[256 * 1024];
	int l = listen_on(SOCK_STREAM, port);
	for (;;) {
		int c = accept(l, NULL, NULL);
		if (c < 0)
			continue;
		unsigned long long n = 0;
		ssize_t r;
		while ((r = read(c, buf, sizeof(buf))) > 0)
			n += (unsigned long long)r;
		char out[64];
		int len = snprintf(out, sizeof(out), "%llu\n", n);
		(void)!write(c, out, (size_t)len);
		close(c);
	}
}

static int send_bytes(const char *host, const char *port, const char *bytes)
{
	static char buf[256 * 1024];
	memset(buf, 'x', sizeof(buf));
	struct sockaddr_in a = addr_of(host, port);
	int fd = connect_timeout(&a, 10000);
	unsigned long long total = strtoull(bytes, NULL, 10), sent = 0;
	double t0 = now();
	while (sent < total) {
		size_t chunk = total - sent < sizeof(buf) ? (size_t)(total - sent) : sizeof(buf);
		ssize_t w = write(fd, buf, chunk);
		if (w <= 0) {
			perror("write");
			return 1;
		}
		sent += (unsigned long long)w;
	}
	shutdown(fd, SHUT_WR);
	char ans[64] = { 0 };
	ssize_t r = read(fd, ans, sizeof(ans) - 1);
	double dt = now() - t0;
	if (r <= 0 || strtoull(ans, NULL, 10) != total) {
		fprintf(stderr, "sink answered %s\n", r > 0 ? ans : "nothing");
		return 1;
	}
	printf("bytes=%llu seconds=%.3f mib_s=%.1f\n", total, dt, (double)total / dt / 1048576.0);
	return 0;
}

__attribute__((noreturn)) static int udp_echo(const char *port)
{
	char buf[65536];
	int fd = listen_on(SOCK_DGRAM, port);
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n =
		    recvfrom(fd, buf + 5, sizeof(buf) - 5, 0, (struct sockaddr *)&from, &fl);
		if (n < 0)
			continue;
		memcpy(buf, "echo:", 5);
		sendto(fd, buf, (size_t)n + 5, 0, (struct sockaddr *)&from, fl);
	}
}

static int udp_ask(const char *host, const char *port, const char *msg, int ms)
{
	struct sockaddr_in a = addr_of(host, port);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	connect(fd, (struct sockaddr *)&a, sizeof(a));
	for (int attempt = 0; attempt < 3; attempt++) {
		send(fd, msg, strlen(msg), 0);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, ms / 3) == 1) {
			char buf[65536];
			ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
			if (n >= 0) {
				buf[n] = 0;
				printf("%s\n", buf);
				return 0;
			}
		}
	}
	printf("timeout\n");
	return 1;
}

__attribute__((noreturn)) static int peer(const char *port)
{
	int l = listen_on(SOCK_STREAM, port);
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		int c = accept(l, (struct sockaddr *)&from, &fl);
		if (c < 0)
			continue;
		char ip[INET_ADDRSTRLEN], out[64];
		inet_ntop(AF_INET, &from.sin_addr, ip, sizeof(ip));
		int len = snprintf(out, sizeof(out), "peer=%s\n", ip);
		(void)!write(c, out, (size_t)len);
		close(c);
	}
}

static int tcp_ask(const char *host, const char *port, int ms)
{
	struct sockaddr_in a = addr_of(host, port);
	int fd = connect_timeout(&a, ms);
	char buf[4096];
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int got = 0;
	while (poll(&p, 1, ms) == 1) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		fwrite(buf, 1, (size_t)n, stdout);
		got = 1;
	}
	if (!got)
		printf("connected\n");
	return 0;
}

static int http_get(const char *host, const char *port, const char *path)
{
	struct sockaddr_in a = addr_of(host, port);
	int fd = connect_timeout(&a, 5000);
	char req[512];
	int len = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
	(void)!write(fd, req, (size_t)len);
	char buf[4096];
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (poll(&p, 1, 5000) == 1) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		fwrite(buf, 1, (size_t)n, stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && strcmp(argv[1], "sink") == 0)
		return sink(argv[2]);
	if (argc >= 5 && strcmp(argv[1], "send") == 0)
		return send_bytes(argv[2], argv[3], argv[4]);
	if (argc >= 3 && strcmp(argv[1], "udp-echo") == 0)
		return udp_echo(argv[2]);
	if (argc >= 5 && strcmp(argv[1], "udp-ask") == 0)
		return udp_ask(argv[2], argv[3], argv[4], argc >= 6 ? atoi(argv[5]) : 3000);
	if (argc >= 3 && strcmp(argv[1], "peer") == 0)
		return peer(argv[2]);
	if (argc >= 4 && strcmp(argv[1], "tcp-ask") == 0)
		return tcp_ask(argv[2], argv[3], argc >= 5 ? atoi(argv[4]) : 3000);
	if (argc >= 4 && strcmp(argv[1], "http") == 0)
		return http_get(argv[2], argv[3], argc >= 5 ? argv[4] : "/");
	fprintf(stderr, "usage: see the comment at the top of nettool.c\n");
	return 2;
}
