/* Worker pool: blocking or CPU-heavy jobs run on threads; completions come back to
 * the loop through loop_post(). */
#ifndef MB_WORK_H
#define MB_WORK_H

#include "moonbox/plugin.h"

int work_init(unsigned nthreads, mb_err *err);
/* Waits for queued and running jobs to finish (their done callbacks are posted to the
 * loop, so run the loop afterwards to deliver them), then joins the threads. */
void work_fini(void);
/* work(ud) on a worker thread, then done(ud) on the loop thread. done may be NULL. */
int work_submit(mb_fn work, mb_fn done, void *ud, mb_err *err);
/* Jobs queued or running. */
unsigned work_pending(void);

#endif
