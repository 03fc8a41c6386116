/*
 * A small DNS responder per network (UDP on the gateway address): A records for the names
 * of the endpoints on that network, everything else relayed to the host's resolvers.
 *
 *   net._dns_start(ip [, port]) -> server | nil, msg, code
 *     srv:set({name = "10.88.0.5", ...})   replace the table of names (lower-case)
 *     srv:upstreams({"192.0.2.1", ...})    resolvers for other names (port 53)
 *     srv:stats() -> {queries, answered, forwarded, failed}
 *     srv:close()                          (also on garbage collection)
 */
#ifndef MB_NET_DNS_H
#define MB_NET_DNS_H

#include <moonbox/plugin.h>

void dns_init(const struct mb_host *host, mb_plugin *self);
void dns_register(lua_State *L); /* the server metatable */
int dns_l_start(lua_State *L);
void dns_close_all(void);

#endif
