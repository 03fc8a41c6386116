/*
 * The HTTP server: libmicrohttpd in external-epoll mode inside our loop, one daemon
 * for the unix socket and one for TCP (bearer token required). Requests are handed
 * to l_api.c, which runs each in a Lua task; a task that waits suspends the
 * connection and resumes it when it has produced a response.
 */
#ifndef MB_HTTP_H
#define MB_HTTP_H

#include <microhttpd.h>
#include <stdbool.h>

#include "moonbox/plugin.h"
#include "util.h"

struct http_config {
	const char *tcp;        /* "ADDR:PORT", NULL or "" for none */
	const char *sock;       /* unix socket path, NULL or "" for none */
	const char *token;      /* required on TCP */
	const char *web_root;   /* static files, may be NULL */
	size_t body_limit;      /* bytes kept in memory */
	uint64_t upload_limit;  /* bytes for routes that stream the body to a file */
	const char *upload_dir; /* where those files go */
};

enum hreq_state {
	H_NEW,      /* headers and body arriving */
	H_RUNNING,  /* the task runs; connection suspended while it waits */
	H_RESPONSE, /* a complete response is ready to queue */
	H_STREAM,   /* the task started a streaming response */
	H_UPGRADE,  /* the task asked for a WebSocket upgrade */
	H_SENT,     /* a response has been queued */
};

struct hdr {
	char *name, *value;
	struct hdr *next;
};

struct ws;

/* One HTTP request. Freed when both the connection and its task are done (refs). */
struct hreq {
	struct MHD_Connection *conn; /* NULL once MHD completed the request */
	struct server *srv;
	char *method, *path;
	buf body;
	bool too_large;
	/* routes declared with {body = "file"} receive the body in a temp file instead */
	int body_fd;
	char *body_path;
	uint64_t body_bytes;
	int body_errno;
	int early_status; /* rejected before dispatch: 401, 413 */
	enum hreq_state state;
	bool suspended;
	int refs;
	uint64_t id, start_ms;
	/* the response */
	int status;
	struct MHD_Response *resp;
	struct hdr *headers; /* for streams and upgrades */
	/* streaming */
	buf out;
	size_t out_off;
	bool out_closed, stream_finished;
	mb_wait *drain_wait;
	/* upgrade */
	mb_wait *upgrade_wait;
	/* the Lua request object pointing at us (cleared when we go) */
	struct hreq **lua_ptr;
	void *task; /* the running task, or NULL */
};

int http_start(const struct http_config *cfg, mb_err *err);
/* Stop accepting new connections (listening sockets closed). */
void http_quiesce(void);
/* Resume everything, stop the daemons, free all. */
void http_stop(void);
/* Make the loop run libmicrohttpd soon (it does not wake itself for resumed
 * connections or closed upgrades in external-epoll mode). */
void http_kick(void);
/* Free what is left after the Lua state is gone. */
void http_fini(void);
/* Requests still computing a response (streams and WebSockets excluded). */
unsigned http_busy(void);
/* Requests in flight. */
unsigned http_inflight(void);
/* The TCP address actually bound ("127.0.0.1:8420"), or NULL. */
const char *http_tcp_address(void);

/* Used by l_api.c */
void hreq_ref(struct hreq *r);
void hreq_unref(struct hreq *r);
/* The task produced a complete response (takes ownership of resp). */
void hreq_respond(struct hreq *r, int status, struct MHD_Response *resp);
/* Build a JSON error response {"error":{"code","message"}}. */
struct MHD_Response *http_error_response(const char *code, const char *message);
void hreq_add_header(struct hreq *r, const char *name, const char *value);
/* Start a streaming response with r->status and r->headers. */
void hreq_stream_begin(struct hreq *r);
/* Append to the stream; returns bytes pending after the append. */
size_t hreq_stream_write(struct hreq *r, const char *data, size_t len);
void hreq_stream_close(struct hreq *r);
bool hreq_stream_dead(const struct hreq *r);
/* Begin the WebSocket upgrade (headers already set). */
void hreq_upgrade_begin(struct hreq *r);
/* Callbacks into l_api.c */
bool api_wants_file_body(const char *method, const char *path);
void api_dispatch(struct hreq *r);
void api_stream_drained(struct hreq *r, bool closed);
void api_upgraded(struct hreq *r, struct ws *ws);
void api_request_gone(struct hreq *r);

#define STREAM_HIGH_WATER (1u << 20)
#define STREAM_LOW_WATER  (256u << 10)

#endif
