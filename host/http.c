#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include "log.h"
#include "loop.h"
#include "ws.h"

struct server {
	struct MHD_Daemon *d;
	mb_watch *w;
	int listen_fd;
	bool tcp;
	char *addr;
	uint64_t deadline; /* when MHD wants MHD_run for its timeouts; 0 = none */
	bool need_run;     /* a connection was resumed: MHD_run soon */
};

static struct {
	struct server srv[2];
	int nsrv;
	char *token;
	char *web_root;
	int web_fd;
	size_t body_limit;
	uint64_t upload_limit;
	char *upload_dir;
	uint64_t next_id;
	unsigned inflight;
	bool stopping;
	struct hreq **live; /* every request not yet freed */
	size_t nlive, caplive;
} H = { .web_fd = -1 };

/* --- request bookkeeping --- */

static void live_add(struct hreq *r)
{
	if (H.nlive == H.caplive) {
		H.caplive = H.caplive ? H.caplive * 2 : 64;
		H.live = xrealloc(H.live, H.caplive * sizeof(*H.live));
	}
	H.live[H.nlive++] = r;
}

static void live_del(struct hreq *r)
{
	for (size_t i = 0; i < H.nlive; i++) {
		if (H.live[i] == r) {
			H.live[i] = H.live[--H.nlive];
			return;
		}
	}
}

void hreq_ref(struct hreq *r)
{
	r->refs++;
}

static void free_headers(struct hdr *h)
{
	while (h) {
		struct hdr *n = h->next;
		free(h->name);
		free(h->value);
		free(h);
		h = n;
	}
}

void hreq_unref(struct hreq *r)
{
	if (--r->refs > 0)
		return;
	if (r->lua_ptr)
		*r->lua_ptr = NULL;
	live_del(r);
	if (r->resp)
		MHD_destroy_response(r->resp);
	free_headers(r->headers);
	buf_free(&r->body);
	if (r->body_fd >= 0)
		close(r->body_fd);
	if (r->body_path) {
		unlink(r->body_path);
		free(r->body_path);
	}
	buf_free(&r->out);
	free(r->method);
	free(r->path);
	free(r);
}

unsigned http_inflight(void)
{
	return H.inflight;
}

unsigned http_busy(void)
{
	unsigned n = 0;
	for (size_t i = 0; i < H.nlive; i++)
		if (H.live[i]->conn && (H.live[i]->state == H_RUNNING || H.live[i]->state == H_NEW))
			n++;
	return n;
}

/* In external-epoll mode libmicrohttpd does not wake its own epoll fd when a connection
 * is resumed, so the loop must call MHD_run (see the prepare/check hooks). */
static void resume(struct hreq *r)
{
	if (r->suspended && r->conn) {
		r->suspended = false;
		MHD_resume_connection(r->conn);
		r->srv->need_run = true;
	}
}

void http_kick(void)
{
	for (int i = 0; i < H.nsrv; i++)
		H.srv[i].need_run = true;
}

void hreq_add_header(struct hreq *r, const char *name, const char *value)
{
	struct hdr *h = xcalloc(1, sizeof(*h));
	h->name = xstrdup(name);
	h->value = xstrdup(value);
	struct hdr **p = &r->headers;
	while (*p)
		p = &(*p)->next;
	*p = h;
}

void hreq_respond(struct hreq *r, int status, struct MHD_Response *resp)
{
	if (r->resp)
		MHD_destroy_response(r->resp);
	r->status = status;
	r->resp = resp;
	r->state = H_RESPONSE;
	resume(r);
}

struct MHD_Response *http_error_response(const char *code, const char *message)
{
	json_t *j =
	    json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message ? message : "");
	if (!j) /* invalid UTF-8 in the message */
		j = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
		              "(message was not valid UTF-8)");
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	struct MHD_Response *resp =
	    MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	return resp;
}

static enum MHD_Result queue_error(struct MHD_Connection *c, int status, const char *code,
                                   const char *message)
{
	struct MHD_Response *resp = http_error_response(code, message);
	if (status == 401)
		MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"moonbox\"");
	enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* The 413 of a body over limit (the upload limit for bodies streamed to a file). */
static enum MHD_Result queue_too_large(struct MHD_Connection *c, uint64_t limit)
{
	char msg[128];
	snprintf(msg, sizeof(msg), "request body larger than %llu bytes",
	         (unsigned long long)limit);
	return queue_error(c, 413, "too_large", msg);
}

/* --- streaming responses --- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
	struct hreq *r = cls;
	size_t avail = r->out.len - r->out_off;
	if (avail) {
		size_t n = MB_MIN(avail, max);
		memcpy(out, r->out.data + r->out_off, n);
		r->out_off += n;
		if (r->out_off == r->out.len) {
			r->out.len = r->out_off = 0;
		} else if (r->out_off > (64u << 10) && r->out_off * 2 > r->out.len) {
			buf_consume(&r->out, r->out_off);
			r->out_off = 0;
		}
		if (r->drain_wait && r->out.len - r->out_off <= STREAM_LOW_WATER)
			api_stream_drained(r, false);
		return (ssize_t)n;
	}
	if (r->out_closed)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* Nothing to send: sleep until the writer resumes us (documented as allowed). */
	if (r->conn && !r->suspended) {
		r->suspended = true;
		MHD_suspend_connection(r->conn);
	}
	return 0;
}

static void stream_free(void *cls)
{
	struct hreq *r = cls;
	r->stream_finished = true;
	if (r->drain_wait)
		api_stream_drained(r, true);
	hreq_unref(r);
}

void hreq_stream_begin(struct hreq *r)
{
	r->state = H_STREAM;
	resume(r);
}

size_t hreq_stream_write(struct hreq *r, const char *data, size_t len)
{
	buf_append(&r->out, data, len);
	resume(r);
	return r->out.len - r->out_off;
}

void hreq_stream_close(struct hreq *r)
{
	r->out_closed = true;
	resume(r);
}

bool hreq_stream_dead(const struct hreq *r)
{
	return r->stream_finished || !r->conn;
}

/* --- WebSocket upgrade --- */

static void on_upgrade(void *cls, struct MHD_Connection *c, void *con_cls, const char *extra,
                       size_t extra_len, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
	struct hreq *r = cls;
	api_upgraded(r, ws_new(sock, urh, extra, extra_len));
	hreq_unref(r); /* the ref the upgrade response held */
}

void hreq_upgrade_begin(struct hreq *r)
{
	r->state = H_UPGRADE;
	resume(r);
}

/* --- static files --- */

static const char *mime_type(const char *path)
{
	static const struct {
		const char *ext, *type;
	} types[] = {
		{ ".html", "text/html; charset=utf-8" },
		{ ".js", "text/javascript; charset=utf-8" },
		{ ".mjs", "text/javascript; charset=utf-8" },
		{ ".css", "text/css; charset=utf-8" },
		{ ".json", "application/json" },
		{ ".svg", "image/svg+xml" },
		{ ".png", "image/png" },
		{ ".ico", "image/x-icon" },
		{ ".woff2", "font/woff2" },
		{ ".map", "application/json" },
		{ ".txt", "text/plain; charset=utf-8" },
		{ ".yaml", "text/yaml; charset=utf-8" },
	};
	const char *dot = strrchr(path, '.');
	for (size_t i = 0; dot && i < ARRAY_SIZE(types); i++)
		if (strcmp(dot, types[i].ext) == 0)
			return types[i].type;
	return "application/octet-stream";
}

/* Open a file below the web root, or -1. Never leaves the root (RESOLVE_BENEATH). */
static int open_static(const char *path, struct stat *st)
{
	if (H.web_fd < 0 || path[0] != '/')
		return -1;
	const char *rel = path + 1;
	if (!*rel)
		rel = "index.html";
	if (strstr(rel, "..") || strchr(rel, '\\'))
		return -1;
	struct open_how how = { .flags = O_RDONLY | O_CLOEXEC,
		                .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
	int fd = (int)syscall(SYS_openat2, H.web_fd, rel, &how, sizeof(how));
	if (fd < 0)
		return -1;
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		return -1;
	}
	return fd;
}

static bool is_static_request(const char *method, const char *path)
{
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return false;
	if (strncmp(path, "/v1/", 4) == 0 || strcmp(path, "/v1") == 0)
		return false;
	struct stat st;
	int fd = open_static(path, &st);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* Serve a static file if one matches; true if a response was queued. */
bool http_serve_static(struct hreq *r);
bool http_serve_static(struct hreq *r)
{
	struct stat st;
	if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
		return false;
	int fd = open_static(r->path, &st);
	if (fd < 0)
		return false;
	struct MHD_Response *resp = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
	const char *p = strcmp(r->path, "/") == 0 ? "/index.html" : r->path;
	MHD_add_response_header(resp, "Content-Type", mime_type(p));
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	hreq_respond(r, 200, resp);
	return true;
}

/* --- auth --- */

static bool token_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = (unsigned char)(la != lb);
	for (size_t i = 0; i < la; i++)
		diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
	return diff == 0;
}

static bool authorized(struct MHD_Connection *c)
{
	if (!H.token || !*H.token)
		return false; /* TCP without a token is never open */
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	if (h && strncasecmp(h, "Bearer ", 7) == 0)
		return token_equal(h + 7, H.token);
	/* Browsers cannot set headers on EventSource/WebSocket: allow ?access_token= */
	const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "access_token");
	return q && token_equal(q, H.token);
}

/* --- libmicrohttpd callbacks --- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
	struct server *srv = cls;
	struct hreq *r = *con_cls;
	if (!r) {
		r = xcalloc(1, sizeof(*r));
		r->conn = c;
		r->srv = srv;
		r->method = xstrdup(method);
		r->path = xstrdup(url);
		r->id = ++H.next_id;
		r->start_ms = mb_now_ms();
		r->refs = 1; /* held by the connection until completed */
		r->body_fd = -1;
		live_add(r);
		*con_cls = r;
		H.inflight++;
		if (H.stopping)
			r->early_status = 503;
		else if (srv->tcp && !authorized(c) && !is_static_request(method, url))
			r->early_status = 401;
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
		bool to_file = !r->early_status && api_wants_file_body(method, url);
		uint64_t limit = to_file ? H.upload_limit : H.body_limit;
		if (!r->early_status && cl && strtoull(cl, NULL, 10) > limit)
			r->early_status = 413;
		if (!r->early_status && to_file) {
			mb_mkdir_p(H.upload_dir, 0700);
			r->body_path = xasprintf("%s/upload-XXXXXX", H.upload_dir);
			r->body_fd = mkostemp(r->body_path, O_CLOEXEC);
			if (r->body_fd < 0) {
				free(r->body_path);
				r->body_path = NULL;
				r->early_status = 507;
			}
		}
		if (r->early_status) {
			r->state = H_SENT;
			if (r->early_status == 401)
				return queue_error(c, 401, "unauthorized",
				                   "missing or wrong bearer token");
			if (r->early_status == 503)
				return queue_error(c, 503, "shutting_down",
				                   "the daemon is shutting down");
			return queue_too_large(c, limit);
		}
		return MHD_YES;
	}
	if (*upload_size && r->body_fd >= 0) {
		if (!r->too_large && !r->body_errno) {
			if (r->body_bytes + *upload_size > H.upload_limit) {
				r->too_large = true;
			} else {
				const char *p = upload;
				size_t left = *upload_size;
				while (left) { /* page-cache writes: quick */
					ssize_t w = write(r->body_fd, p, left);
					if (w < 0 && errno == EINTR)
						continue;
					if (w < 0) {
						r->body_errno = errno;
						break;
					}
					p += w;
					left -= (size_t)w;
				}
				r->body_bytes += *upload_size;
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!r->too_large) {
			if (r->body.len + *upload_size > H.body_limit) {
				r->too_large = true;
				buf_free(&r->body);
			} else {
				buf_append(&r->body, upload, *upload_size);
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->state == H_NEW) {
		if (r->too_large) {
			r->state = H_SENT;
			return queue_too_large(c, r->body_path ? H.upload_limit : H.body_limit);
		}
		r->state = H_RUNNING;
		api_dispatch(r);
	}
	switch (r->state) {
	case H_RESPONSE: {
		struct MHD_Response *resp = r->resp;
		r->resp = NULL;
		r->state = H_SENT;
		enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	case H_STREAM: {
		hreq_ref(r); /* held by the response until stream_free */
		struct MHD_Response *resp = MHD_create_response_from_callback(
		    MHD_SIZE_UNKNOWN, 32 * 1024, stream_reader, r, stream_free);
		for (struct hdr *h = r->headers; h; h = h->next)
			MHD_add_response_header(resp, h->name, h->value);
		r->state = H_SENT;
		enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->status, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	case H_UPGRADE: {
		hreq_ref(r); /* held until on_upgrade */
		struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgrade, r);
		for (struct hdr *h = r->headers; h; h = h->next)
			MHD_add_response_header(resp, h->name, h->value);
		r->state = H_SENT;
		enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
		MHD_destroy_response(resp);
		if (ret != MHD_YES)
			hreq_unref(r);
		return ret;
	}
	case H_RUNNING:
		if (H.stopping) {
			r->state = H_SENT;
			return queue_error(c, 503, "shutting_down", "the daemon is shutting down");
		}
		r->suspended = true;
		MHD_suspend_connection(c);
		return MHD_YES;
	default:
		return MHD_YES;
	}
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	struct hreq *r = *con_cls;
	if (!r)
		return;
	*con_cls = NULL;
	H.inflight--;
	if (log_get_level() >= MB_LOG_DEBUG)
		mb_log(MB_LOG_DEBUG, "http", "%s %s -> %d (%llu ms)%s", r->method, r->path,
		       r->early_status ? r->early_status : r->status,
		       (unsigned long long)(mb_now_ms() - r->start_ms),
		       toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " [aborted]");
	r->conn = NULL;
	r->suspended = false;
	if (r->drain_wait)
		api_stream_drained(r, true);
	api_request_gone(r);
	hreq_unref(r);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
	mb_logv(MB_LOG_DEBUG, "http", fmt, ap); /* client-side noise: debug only */
}

/* --- loop integration --- */

static void on_mhd(int fd, uint32_t events, void *ud)
{
	struct server *s = ud;
	s->need_run = false;
	MHD_run(s->d);
}

static int64_t prepare(void *ud)
{
	int64_t best = -1;
	uint64_t now = mb_now_ms();
	for (int i = 0; i < H.nsrv; i++) {
		MHD_UNSIGNED_LONG_LONG t;
		if (H.srv[i].need_run)
			return 0;
		if (H.srv[i].d && MHD_get_timeout(H.srv[i].d, &t) == MHD_YES) {
			H.srv[i].deadline = now + t;
			if (best < 0 || (int64_t)t < best)
				best = (int64_t)t;
		} else {
			H.srv[i].deadline = 0;
		}
	}
	return best;
}

static void check(void *ud)
{
	uint64_t now = mb_now_ms();
	for (int i = 0; i < H.nsrv; i++) {
		struct server *s = &H.srv[i];
		/* MHD_run may resume more connections (a response completes a task that
		 * answers another request): loop until settled. */
		for (int k = 0;
		     k < 8 && s->d && (s->need_run || (s->deadline && s->deadline <= now)); k++) {
			s->need_run = false;
			s->deadline = 0;
			MHD_run(s->d);
		}
	}
}

static int listen_tcp(const char *spec, char **bound, mb_err *err)
{
	char host[256];
	const char *colon = strrchr(spec, ':');
	if (!colon || colon == spec)
		return mb_err_set(err, -EINVAL, "--http: expected ADDR:PORT, got '%s'", spec);
	size_t hl = (size_t)(colon - spec);
	if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return mb_err_set(err, -EINVAL, "--http: address too long");
	memcpy(host, spec, hl);
	host[hl] = '\0';
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
		                  .ai_socktype = SOCK_STREAM,
		                  .ai_flags = AI_PASSIVE | AI_NUMERICSERV },
	                *res = NULL;
	int g = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
	if (g != 0)
		return mb_err_set(err, -EINVAL, "--http %s: %s", spec, gai_strerror(g));
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		freeaddrinfo(res);
		return mb_err_set(err, -errno, "socket: %s", strerror(errno));
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
		int e = errno;
		close(fd);
		freeaddrinfo(res);
		return mb_err_set(err, -e, "cannot listen on %s: %s", spec, strerror(e));
	}
	freeaddrinfo(res);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char a[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a));
			port = ntohs(in->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
			port = ntohs(in6->sin6_port);
		}
	}
	*bound =
	    ss.ss_family == AF_INET6 ? xasprintf("[%s]:%d", a, port) : xasprintf("%s:%d", a, port);
	return fd;
}

static int listen_unix(const char *path, mb_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return mb_err_set(err, -ENAMETOOLONG, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mb_err_set(err, -errno, "socket: %s", strerror(errno));
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			close(fd);
			return mb_err_set(err, -EEXIST, "%s exists and is not a socket", path);
		}
		/* A live daemon answers; a stale socket file is replaced. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			close(fd);
			return mb_err_set(err, -EADDRINUSE, "another daemon is listening on %s",
			                  path);
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	mode_t old = umask(0117);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || chmod(path, 0660) < 0 || listen(fd, 1024) < 0) {
		int e = errno;
		close(fd);
		return mb_err_set(err, -e, "cannot listen on %s: %s", path, strerror(e));
	}
	return fd;
}

static int start_server(int fd, bool tcp, char *addr, mb_err *err)
{
	struct server *s = &H.srv[H.nsrv];
	memset(s, 0, sizeof(*s));
	s->listen_fd = fd;
	s->tcp = tcp;
	s->addr = addr;
	unsigned flags =
	    MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
	s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
	                        mhd_logger, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
	                        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
	                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
	                        MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000, MHD_OPTION_END);
	if (!s->d) {
		int r = mb_err_set(err, -EIO, "cannot start the HTTP server on %s", addr);
		close(fd);
		free(addr);
		return r;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
	s->w = loop_watch(info->epoll_fd, EPOLLIN, on_mhd, s, err);
	if (!s->w) {
		MHD_stop_daemon(s->d);
		close(fd);
		free(addr);
		return err ? err->code : -EIO;
	}
	H.nsrv++;
	return 0;
}

int http_start(const struct http_config *cfg, mb_err *err)
{
	H.token = cfg->token ? xstrdup(cfg->token) : NULL;
	H.body_limit = cfg->body_limit ? cfg->body_limit : (64u << 20);
	H.upload_limit = cfg->upload_limit ? cfg->upload_limit : (64ull << 30);
	H.upload_dir = xstrdup(cfg->upload_dir ? cfg->upload_dir : "/tmp");
	if (cfg->web_root) {
		H.web_root = xstrdup(cfg->web_root);
		H.web_fd = open(cfg->web_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (H.web_fd < 0)
			log_warn("web root %s: %s (no web UI)", cfg->web_root, strerror(errno));
	}
	int r;
	if (cfg->sock && *cfg->sock) {
		int fd = listen_unix(cfg->sock, err);
		if (fd < 0 || (r = start_server(fd, false, xstrdup(cfg->sock), err)) < 0)
			goto fail;
		log_info("listening on unix:%s", cfg->sock);
	}
	if (cfg->tcp && *cfg->tcp) {
		char *bound = NULL;
		int fd = listen_tcp(cfg->tcp, &bound, err);
		if (fd < 0 || (r = start_server(fd, true, bound, err)) < 0)
			goto fail;
		log_info("listening on http://%s", bound);
	}
	loop_add_hook(prepare, check, &H);
	return 0;
fail:
	http_stop();
	return err ? err->code : -EIO;
}

const char *http_tcp_address(void)
{
	for (int i = 0; i < H.nsrv; i++)
		if (H.srv[i].tcp)
			return H.srv[i].addr;
	return NULL;
}

void http_quiesce(void)
{
	H.stopping = true;
	for (int i = 0; i < H.nsrv; i++) {
		struct server *s = &H.srv[i];
		if (!s->d || s->listen_fd < 0)
			continue;
		MHD_socket fd = MHD_quiesce_daemon(s->d);
		if (fd >= 0)
			close(fd);
		s->listen_fd = -1;
		if (!s->tcp)
			unlink(s->addr);
	}
}

void http_stop(void)
{
	H.stopping = true;
	/* libmicrohttpd must not be stopped with suspended connections: wake them (they
	 * answer 503) and close WebSockets. */
	ws_abort_all();
	for (size_t i = 0; i < H.nlive; i++) {
		struct hreq *r = H.live[i];
		r->out_closed = true;
		resume(r);
	}
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < H.nsrv; i++)
			MHD_run(H.srv[i].d);
	loop_remove_hook(&H);
	for (int i = 0; i < H.nsrv; i++) {
		struct server *s = &H.srv[i];
		loop_unwatch(s->w);
		if (s->listen_fd >= 0) {
			MHD_socket fd = MHD_quiesce_daemon(s->d);
			if (fd >= 0)
				close(fd);
			if (!s->tcp)
				unlink(s->addr);
		}
		MHD_stop_daemon(s->d);
		free(s->addr);
		s->d = NULL;
	}
	H.nsrv = 0;
	/* Requests still referenced (by Lua stream objects of cancelled tasks) are freed
	 * when those objects are collected, or by http_fini(). */
	H.web_fd = -1;
}

void http_fini(void)
{
	/* After the Lua state is closed nothing can reference a request any more. */
	while (H.nlive) {
		struct hreq *r = H.live[H.nlive - 1];
		r->refs = 1;
		hreq_unref(r);
	}
	free(H.live);
	H.live = NULL;
	H.caplive = 0;
}
