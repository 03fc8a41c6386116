/*
 * A private event loop implementing struct mbr_io for tests and the standalone driver:
 * a curl multi polled with curl_multi_poll, one-shot timers, worker threads (one per job)
 * that report back through a pipe, and child processes reaped with waitpid.
 * Single-threaded like the host loop: every callback runs on the thread calling
 * tl_run().
 */
#ifndef MBR_TEST_LOOP_H
#define MBR_TEST_LOOP_H

#include <stdbool.h>

#include "client.h"

struct test_loop;
/* Caller frees with tl_free. */
struct test_loop *tl_new(void);
void tl_free(struct test_loop *l);
const struct mbr_io *tl_io(struct test_loop *l); /* borrowed */
/* Run until *stop becomes true or nothing is pending. */
void tl_run(struct test_loop *l, volatile bool *stop);

#endif
