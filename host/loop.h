/*
 * The event loop: one thread, one epoll set. Everything that happens in the daemon
 * is a callback from here: fd readiness, timers, work posted from other threads,
 * and deferred calls (task resumes).
 */
#ifndef MB_LOOP_H
#define MB_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "moonbox/plugin.h"

int loop_init(mb_err *err);
/* Frees the loop. Watches and timers still registered are freed without callbacks. */
void loop_fini(void);
/* Run until loop_stop(). Returns 0. */
int loop_run(void);
void loop_stop(void);
/* Run one iteration, waiting at most max_ms (for tests and draining). */
void loop_once(int max_ms);

/* See struct mb_host for the contract of these. */
mb_watch *loop_watch(int fd, uint32_t events, mb_fd_fn fn, void *ud, mb_err *err);
int loop_modify(mb_watch *w, uint32_t events, mb_err *err);
void loop_unwatch(mb_watch *w);
mb_timer *loop_timer(uint64_t ms, mb_fn fn, void *ud);
void loop_timer_stop(mb_timer *t);
int loop_post(mb_fn fn, void *ud);
/* Loop thread only: run fn(ud) at the start of the next iteration, in FIFO order. */
void loop_defer(mb_fn fn, void *ud);

/* A hook pair around each poll: prepare returns the longest the loop may sleep in ms
 * (-1: no limit); check runs after the poll. Used for libmicrohttpd's timeouts. */
typedef int64_t (*loop_prepare_fn)(void *ud);
void loop_add_hook(loop_prepare_fn prepare, mb_fn check, void *ud);
void loop_remove_hook(void *ud);

/* Number of registered watches and pending timers (for stats and leak tests). */
void loop_counts(unsigned *watches, unsigned *timers);

#endif
