/* The event bus: every event is persisted (monotonic id) and then handed to listeners. */
#ifndef MB_EVENTS_H
#define MB_EVENTS_H

#include <stdint.h>

#include "moonbox/plugin.h"

typedef void (*events_listener)(int64_t id, double time, const char *type, const json_t *data,
                                void *ud);

int events_init(mb_err *err);
void events_fini(void);
/* Persist and publish. Steals data (may be NULL). Returns the id (> 0) or a negative
 * errno. type: [a-z0-9_.-], at most 128 bytes. */
int64_t events_emit(const char *type, json_t *data, mb_err *err);
/* Listeners are called synchronously from events_emit(), on the loop thread. */
void events_listen(events_listener fn, void *ud);
int64_t events_last_id(void);
/* Delete all but the newest `keep` events. */
void events_prune(int64_t keep);

#endif
