/* libcurl multi driven by the loop (CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION). */
#ifndef MB_CURLM_H
#define MB_CURLM_H

#include "moonbox/plugin.h"

int curlm_init(mb_err *err);
/* Removes and completes nothing: handles still added are removed without callbacks
 * (their owners must have been cancelled first). */
void curlm_fini(void);
int curlm_add(CURL *easy, mb_curl_fn fn, void *ud, mb_err *err);
void curlm_remove(CURL *easy);
unsigned curlm_active(void);

#endif
