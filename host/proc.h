/* Child processes: pidfd watching and run() (spawn, feed stdin, capture output). */
#ifndef MB_PROC_H
#define MB_PROC_H

#include <sys/types.h>

#include "moonbox/plugin.h"

int proc_child_watch(pid_t pid, mb_child_fn fn, void *ud, mb_err *err);
int proc_run(const char *const argv[], const char *in, size_t in_len, uint64_t timeout_ms,
             mb_run_fn fn, void *ud, mb_err *err);
/* Same, with extra options; env may be NULL (inherit), cwd may be NULL. Returns the
 * run id (> 0) usable with proc_run_cancel(). */
long proc_run_ex(const char *const argv[], const char *const env[], const char *cwd, const char *in,
                 size_t in_len, uint64_t timeout_ms, mb_run_fn fn, void *ud, mb_err *err);
/* Kill a run started by proc_run_ex (SIGKILL) and drop its callback. */
void proc_run_cancel(long id);
/* Runs and child watches still active. */
unsigned proc_active(void);
/* Kill every running child run() started and forget watches (shutdown). */
void proc_fini(void);

#endif
