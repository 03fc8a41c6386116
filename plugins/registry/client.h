/*
 * The distribution client: one logical HTTP request against a registry, driven by a curl
 * multi that someone else owns (the host's, through struct mbr_io; or a test loop).
 *
 * A request handles, without the caller seeing it: the 401 challenge (Basic, or Bearer
 * with a token fetched from the realm and cached per scope), retries with exponential
 * backoff on connection errors, 429 and 5xx (honouring Retry-After), redirects (to blob
 * storage; credentials are not forwarded to other hosts), and for blobs, resuming with
 * Range from the bytes already written. Bodies go to memory (manifests, configs, tokens)
 * or stream into a blob writer, hashed as they arrive.
 *
 * Threading: everything here runs on the loop thread. The per-chunk work in the write
 * callback is bounded (one network chunk, <= 16 KiB: hash update + write to the page
 * cache); everything that scales with blob size (re-hashing a partial file, fsync) is done
 * by the caller on a worker.
 */
#ifndef MBR_CLIENT_H
#define MBR_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <moonbox/plugin.h>

#include "auth.h"
#include "store.h"
#include "util.h"

/* What the client (and the pull engine) need from an event loop. The plugin maps these to
 * struct mb_host; tests map them to a private curl multi loop. */
struct mbr_io {
	void *ud;
	int (*curl_add)(void *ud, CURL *easy, mb_curl_fn fn, void *arg, mb_err *err);
	void (*curl_remove)(void *ud, CURL *easy);
	void *(*timer_start)(void *ud, uint64_t ms, mb_fn fn, void *arg);
	void (*timer_stop)(void *ud, void *timer);
	int (*work)(void *ud, mb_fn work, mb_fn done, void *arg, mb_err *err);
	int (*run)(void *ud, const char *const argv[], uint64_t timeout_ms, mb_run_fn fn, void *arg,
	           mb_err *err);
	void (*log)(void *ud, int level, const char *msg);
};

/* Error codes used across the registry (negative errno <-> Lua code string). */
#define MBR_E_NOT_FOUND    (-ENOENT)
#define MBR_E_UNAUTHORIZED (-EACCES)
#define MBR_E_UNREACHABLE  (-EHOSTUNREACH)
#define MBR_E_CORRUPT      (-EBADMSG)
#define MBR_E_NO_SPACE     (-ENOSPC)
#define MBR_E_INVALID      (-EINVAL)
#define MBR_E_CONFLICT     (-EBUSY)
/* "not_found", "unauthorized", ... for an mb_err code. Static string. */
const char *mbr_err_code_name(int code);

typedef struct mbr_client {
	const struct mbr_io *io;
	mbr_token_cache *tokens;
	mbr_strset basic_hosts; /* hosts that asked for Basic: send it up front */
	mbr_strset insecure;    /* host[:port] allowed over plain HTTP */
	int max_retries;        /* after the first try; default 4 */
	uint64_t backoff_ms;    /* first delay; doubles up to 8 s; default 250 */
	long connect_timeout_ms;
	long low_speed_time_s; /* abort a transfer slower than 1 byte/s for this long */
	char user_agent[64];
} mbr_client;

/* Caller frees with mbr_client_free. io is borrowed and must outlive the client. */
mbr_client *mbr_client_new(const struct mbr_io *io, mb_err *err);
void mbr_client_free(mbr_client *c);
/* "https://host" or "http://host" (insecure list, loopback, or force_insecure). */
const char *mbr_client_scheme(const mbr_client *c, const char *host, bool force_insecure);

typedef struct mbr_req mbr_req;
typedef void (*mbr_req_done_fn)(mbr_req *r, const mb_err *err, void *arg);
typedef void (*mbr_req_progress_fn)(mbr_req *r, uint64_t bytes, void *arg);

struct mbr_req_opts {
	const char *url;             /* copied */
	bool head;                   /* HEAD instead of GET */
	const char *accept;          /* may be NULL; copied */
	const char *scope;           /* token scope, e.g. "repository:library/nginx:pull"; copied */
	const struct mbr_cred *cred; /* may be NULL; copied */
	const char *host;            /* registry host (for messages and Basic caching); copied */
	mbr_blobw *blob;             /* borrowed: stream the body here (Range from its offset) */
	size_t mem_limit;            /* memory bodies: fail past this many bytes */
	mbr_req_progress_fn progress; /* bytes received so far (blob offset), may be NULL */
};

/* Start a request. done runs exactly once (unless mbr_req_cancel is called first), after
 * which the caller reads the results below and frees the request with mbr_req_free.
 * Returns NULL with err set if it could not start. */
mbr_req *mbr_req_start(mbr_client *c, const struct mbr_req_opts *o, mbr_req_done_fn done, void *arg,
                       mb_err *err);
/* Stop a running request (no callback) and free it. */
void mbr_req_cancel(mbr_req *r);
void mbr_req_free(mbr_req *r);

long mbr_req_status(const mbr_req *r);
/* Memory body; borrowed, valid until mbr_req_free. */
const char *mbr_req_body(const mbr_req *r, size_t *len);
/* Response headers of the final response; borrowed ("" if absent). */
const char *mbr_req_content_type(const mbr_req *r);
const char *mbr_req_docker_digest(const mbr_req *r);
int mbr_req_attempts(const mbr_req *r);

#endif
