/* Daemon start-up and shut-down (shared by `moonbox serve` and `moonbox test`). */
#ifndef MB_DAEMON_H
#define MB_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

#include "moonbox/plugin.h"

struct daemon_opts {
	const char *state_dir, *run_dir, *http, *socket, *scripts, *plugins_dir, *token_file;
	const char *guest_dir;
	int log_level;
	unsigned budget_ms, workers;
	size_t body_limit;
	bool no_shipped, no_scripts, no_builtin_plugins;
};

/* Fill unset paths with the defaults (root: /var/lib/moonbox, /run/moonbox). */
void daemon_default_paths(struct daemon_opts *o);
/* Everything up to and including loading the scripts. */
int daemon_init(const struct daemon_opts *o, mb_err *err);
/* Token and listeners. */
int daemon_http(const struct daemon_opts *o, mb_err *err);
int daemon_signals(mb_err *err);
int daemon_pidfile(const char *run_dir, mb_err *err);
/* Begin a graceful stop (drain, then the loop ends). */
void daemon_request_stop(int code);
int daemon_exit_code(void);
/* Tear everything down; safe after a partial init. */
void daemon_fini(void);

void gen_fini(lua_State *L);

#endif
