/*
 * A QMP client driven by the loop: one unix socket per VM, JSON lines in both directions.
 * The greeting is answered with qmp_capabilities; commands queue until then. Replies are
 * matched by "id"; events go to ops->event. EOF/HUP calls ops->closed once (the owner then
 * frees the client, never from inside a callback of this file).
 */
#include "vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct qcmd {
	struct qcmd *next;
	uint64_t id;
	char *line; /* owned, "...\n" */
	bool sent;
	qmp_ret_fn fn;
	void *ud;
};

struct qmp {
	int fd;
	mb_watch *w;
	char *in;
	size_t inlen, incap;
	char *out;
	size_t outlen, outoff;
	bool greeted, ready, closed, in_cb;
	bool free_pending;
	struct qcmd *cmds; /* FIFO */
	uint64_t next_id;
	const struct qmp_ops *ops;
	void *ud;
};

static void qmp_on_fd(int fd, uint32_t events, void *ud);

static void update_watch(struct qmp *q)
{
	if (!q->w)
		return;
	uint32_t ev = EPOLLIN | (q->outlen > q->outoff ? EPOLLOUT : 0);
	G.host->fd_modify(q->w, ev, NULL);
}

/* Append n bytes of s (borrowed, copied) to the output buffer q owns. */
static void append_out(struct qmp *q, const char *s, size_t n)
{
	if (q->outoff > 0 && q->outoff == q->outlen)
		q->outlen = q->outoff = 0;
	char *nb = realloc(q->out, q->outlen + n);
	if (!nb)
		abort();
	q->out = nb;
	memcpy(q->out + q->outlen, s, n);
	q->outlen += n;
}

static void flush_out(struct qmp *q)
{
	while (q->outoff < q->outlen) {
		ssize_t w = send(q->fd, q->out + q->outoff, q->outlen - q->outoff, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		q->outoff += (size_t)w;
	}
	update_watch(q);
}

static void send_pending(struct qmp *q)
{
	for (struct qcmd *c = q->cmds; c; c = c->next) {
		if (c->sent)
			continue;
		append_out(q, c->line, strlen(c->line));
		c->sent = true;
	}
	flush_out(q);
}

/* Ownership: args is stolen. */
static struct qcmd *make_cmd(struct qmp *q, const char *cmd, json_t *args, qmp_ret_fn fn, void *ud)
{
	struct qcmd *c = calloc(1, sizeof(*c));
	if (!c)
		abort();
	c->id = ++q->next_id;
	json_t *j = json_pack("{s:s,s:I}", "execute", cmd, "id", (json_int_t)c->id);
	if (args)
		json_object_set_new(j, "arguments", args);
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	c->line = vm_strf("%s\n", s ? s : "{}");
	free(s);
	c->fn = fn;
	c->ud = ud;
	return c;
}

int qmp_command(struct qmp *q, const char *cmd, json_t *args, qmp_ret_fn fn, void *ud)
{
	if (q->closed) {
		json_decref(args);
		return -ENOTCONN;
	}
	struct qcmd *c = make_cmd(q, cmd, args, fn, ud);
	struct qcmd **tail = &q->cmds;
	while (*tail)
		tail = &(*tail)->next;
	*tail = c;
	if (q->ready)
		send_pending(q);
	return 0;
}

void qmp_forget(struct qmp *q, void *ud)
{
	if (!q)
		return;
	for (struct qcmd *c = q->cmds; c; c = c->next)
		if (c->ud == ud)
			c->fn = NULL;
}

bool qmp_is_ready(const struct qmp *q)
{
	return q && q->ready && !q->closed;
}

static void fail_all(struct qmp *q, const char *why)
{
	struct qcmd *c = q->cmds;
	q->cmds = NULL;
	while (c) {
		struct qcmd *n = c->next;
		if (c->fn)
			c->fn(c->ud, NULL, why);
		free(c->line);
		free(c);
		c = n;
	}
}

static void do_close(struct qmp *q)
{
	if (q->closed)
		return;
	q->closed = true;
	if (q->w) {
		G.host->fd_unwatch(q->w);
		q->w = NULL;
	}
	if (q->fd >= 0) {
		close(q->fd);
		q->fd = -1;
	}
	q->in_cb = true;
	fail_all(q, "QMP connection closed");
	if (q->ops->closed)
		q->ops->closed(q->ud);
	q->in_cb = false;
}

static void handle_line(struct qmp *q, const char *line)
{
	json_t *j = json_loads(line, 0, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		return;
	}
	if (json_object_get(j, "QMP")) {
		q->greeted = true;
		/* capabilities negotiation goes first, ahead of anything queued */
		struct qcmd *c = make_cmd(q, "qmp_capabilities", NULL, NULL, NULL);
		c->next = q->cmds;
		q->cmds = c;
		append_out(q, c->line, strlen(c->line));
		c->sent = true;
		flush_out(q);
	} else if (json_object_get(j, "event")) {
		const char *ev = json_string_value(json_object_get(j, "event"));
		if (ev && q->ops->event)
			q->ops->event(q->ud, ev, json_object_get(j, "data"));
	} else if (json_object_get(j, "return") || json_object_get(j, "error")) {
		json_int_t id = json_integer_value(json_object_get(j, "id"));
		struct qcmd **pp = &q->cmds;
		while (*pp && (*pp)->id != (uint64_t)id)
			pp = &(*pp)->next;
		struct qcmd *c = *pp;
		if (c) {
			*pp = c->next;
			json_t *e = json_object_get(j, "error");
			const char *emsg = NULL;
			if (e)
				emsg = json_string_value(json_object_get(e, "desc"));
			if (e && !emsg)
				emsg = "QMP error";
			bool caps = !q->ready && strstr(c->line, "qmp_capabilities");
			if (c->fn)
				c->fn(c->ud, json_object_get(j, "return"), emsg);
			free(c->line);
			free(c);
			if (caps && !q->closed) {
				q->ready = true;
				if (q->ops->ready)
					q->ops->ready(q->ud);
				if (!q->closed)
					send_pending(q);
			}
		}
	}
	json_decref(j);
}

static void qmp_on_fd(int fd, uint32_t events, void *ud)
{
	struct qmp *q = ud;
	if (q->closed)
		return;
	q->in_cb = true;
	if (events & EPOLLOUT)
		flush_out(q);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		for (;;) {
			if (q->incap - q->inlen < 4096) {
				size_t nc = q->incap ? q->incap * 2 : 8192;
				if (nc > (4u << 20)) {
					/* a single reply over 4 MiB: not something we ask for */
					q->in_cb = false;
					do_close(q);
					if (q->free_pending)
						qmp_free(q);
					return;
				}
				char *nb = realloc(q->in, nc);
				if (!nb)
					abort();
				q->in = nb;
				q->incap = nc;
			}
			ssize_t r = recv(fd, q->in + q->inlen, q->incap - q->inlen - 1, 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			if (r <= 0) {
				q->in_cb = false;
				do_close(q);
				if (q->free_pending)
					qmp_free(q);
				return;
			}
			q->inlen += (size_t)r;
			q->in[q->inlen] = '\0';
			char *start = q->in, *nl;
			while (!q->closed &&
			       (nl = memchr(start, '\n', q->inlen - (size_t)(start - q->in)))) {
				*nl = '\0';
				handle_line(q, start);
				start = nl + 1;
			}
			if (q->closed)
				break;
			size_t rest = q->inlen - (size_t)(start - q->in);
			memmove(q->in, start, rest);
			q->inlen = rest;
		}
	}
	q->in_cb = false;
	if (q->free_pending)
		qmp_free(q);
}

struct qmp *qmp_connect(const char *path, const struct qmp_ops *ops, void *ud, mb_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		mb_err_set(err, -ENAMETOOLONG, "QMP socket path too long: %s", path);
		return NULL;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mb_err_set(err, -errno, "socket: %s", strerror(errno));
		return NULL;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS &&
	    errno != EAGAIN) {
		int e = errno;
		close(fd);
		mb_err_set(err, -e, "connect to QMP %s: %s", path, strerror(e));
		return NULL;
	}
	struct qmp *q = calloc(1, sizeof(*q));
	if (!q)
		abort();
	q->fd = fd;
	q->ops = ops;
	q->ud = ud;
	q->w = G.host->fd_watch(fd, EPOLLIN, qmp_on_fd, q, err);
	if (!q->w) {
		close(fd);
		free(q);
		return NULL;
	}
	return q;
}

void qmp_free(struct qmp *q)
{
	if (!q)
		return;
	if (q->in_cb) {
		/* closing from inside our own callback: finish after it returns */
		q->free_pending = true;
		for (struct qcmd *c = q->cmds; c; c = c->next)
			c->fn = NULL;
		if (q->w) {
			G.host->fd_unwatch(q->w);
			q->w = NULL;
		}
		if (q->fd >= 0) {
			close(q->fd);
			q->fd = -1;
		}
		q->closed = true;
		return;
	}
	if (q->w)
		G.host->fd_unwatch(q->w);
	if (q->fd >= 0)
		close(q->fd);
	struct qcmd *c = q->cmds;
	while (c) {
		struct qcmd *n = c->next;
		free(c->line);
		free(c);
		c = n;
	}
	free(q->in);
	free(q->out);
	free(q);
}
