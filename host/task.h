/*
 * The Lua runtime: one lua_State, and tasks — each a coroutine that runs until it
 * waits (yields to the loop) or finishes. Every HTTP request, event handler and timer
 * callback is a task.
 */
#ifndef MB_TASK_H
#define MB_TASK_H

#include <stdbool.h>
#include <stdint.h>

#include "moonbox/plugin.h"

typedef struct task task;

/* Status passed to a task's done callback besides LUA_OK and the LUA_ERR* codes. */
#define TASK_CANCELLED 100

/*
 * Called once when a task ends. status LUA_OK: nres results on top of co. An error:
 * the error value on top of co; task_traceback(t) has the traceback. TASK_CANCELLED:
 * nothing on co. The callback must not keep co; the task is freed after it returns.
 */
typedef void (*task_done_fn)(task *t, int status, lua_State *co, int nres, void *ud);

int rt_init(unsigned budget_ms, mb_err *err);
/* Cancels every task and closes the state. */
void rt_fini(void);
lua_State *rt_state(void);

/*
 * Start a task running the function below nargs arguments on top of the main state
 * (both are popped). If now, it runs immediately until it first waits or ends (the
 * done callback may therefore run before task_start returns, in which case NULL is
 * returned); else it starts from the loop. name is copied. Returns the task, valid
 * until its done callback has returned.
 */
task *task_start(lua_State *L, int nargs, const char *name, bool now, task_done_fn done, void *ud);
/* Cancel: run the pending wait's cancel callback, close the coroutine, call done with
 * TASK_CANCELLED. A running task (the caller itself) is stopped at its next wait. */
void task_cancel(task *t);
void task_cancel_all(void);
task *task_current(void);
uint64_t task_id(const task *t);
const char *task_name(const task *t);
const char *task_traceback(const task *t);
bool task_runaway(const task *t);
void *task_ud(const task *t);
unsigned task_count(void);
/* Find a live task by id (NULL if gone). */
task *task_find(uint64_t id);

/* Raise unless the running code may wait now (call before allocating for a wait). */
void rt_wait_check(lua_State *L);
/* The mb_wait primitives of struct mb_host. */
mb_wait *rt_wait_begin(lua_State *L, mb_fn cancel, void *ud);
int rt_wait_yield(lua_State *L, mb_wait *w, lua_KFunction k, lua_KContext ctx);
lua_State *rt_wait_thread(mb_wait *w);
void rt_wait_done(mb_wait *w, int nresults);

/* Protect a script-load section against runaway code (main state): begin arms the
 * budget, end disarms it. */
void rt_load_begin(void);
void rt_load_end(void);

/* The hook budget in ms (a task slice or a script load running longer is stopped). */
unsigned rt_budget_ms(void);

#endif
