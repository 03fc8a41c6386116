/*
 * The userspace port proxy of plugins/net: listeners that reserve a host port by binding
 * it, then forward TCP connections (splice through pipes, back-pressure by interest) or
 * UDP datagrams (one connected socket per client, idle timeout) to a target address.
 * Everything runs on the loop thread through host->fd_watch.
 */
#ifndef MB_NET_PROXY_H
#define MB_NET_PROXY_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include <moonbox/plugin.h>

struct px_listener;

struct px_stats {
	uint64_t active;    /* open TCP connections or UDP sessions */
	uint64_t total;     /* accepted connections or sessions created */
	uint64_t bytes_in;  /* client -> target */
	uint64_t bytes_out; /* target -> client */
	uint64_t failed;    /* connections the target refused or reset before connecting */
	uint16_t port;      /* the bound host port (useful after binding port 0) */
};

/* The host table, set once by the plugin's init. */
void px_init(const struct mb_host *host, mb_plugin *self);

/* Bind proto (IPPROTO_TCP or IPPROTO_UDP) on addr:port (port 0 = any free port) and, for
 * TCP, listen. Nothing is accepted until px_forward(). Returns a new listener (caller owns
 * it: px_close() frees it) or NULL with err filled (-EADDRINUSE when the port is taken). */
struct px_listener *px_bind(int proto, const struct in_addr *addr, uint16_t port, mb_err *err);

/* Start (or retarget) forwarding to target. udp_idle_ms: UDP session idle timeout. */
int px_forward(struct px_listener *l, const struct sockaddr_in *target, uint32_t udp_idle_ms,
               mb_err *err);

/* *ref is set to NULL when l is closed (by px_close or px_close_all); ref is borrowed and
 * must stay valid while l is open. */
void px_set_ref(struct px_listener *l, struct px_listener **ref);

void px_get_stats(const struct px_listener *l, struct px_stats *st);

/* Close the listening socket and every connection or session; frees l. */
void px_close(struct px_listener *l);

/* Close every listener still open (plugin fini). */
void px_close_all(void);

#endif
