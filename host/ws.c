#include "ws.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "http.h"
#include "log.h"
#include "loop.h"
#include "util.h"

#define CLOSE_TIMEOUT_MS 5000

struct msg {
	int opcode;
	char *data;
	size_t len;
	struct msg *next;
};

enum wstate { WS_OPEN, WS_CLOSE_SENT, WS_CLOSING, WS_DONE };

struct ws {
	int fd;
	bool client; /* we are the client: mask what we send, expect unmasked frames */
	struct MHD_UpgradeResponseHandle *urh; /* server side: close through MHD */
	mb_watch *w;
	enum wstate state;
	bool peer_closed;
	int peer_code;
	buf in, out;
	size_t out_off;
	/* message being assembled from fragments */
	int frag_opcode; /* 0 = none */
	buf frag;
	struct msg *head, *tail;
	size_t queued;
	mb_timer *close_timer;
	void (*notify)(void *ud, int events);
	void *ud;
	struct ws *prev, *next; /* every live connection, for ws_abort_all() */
};

static struct ws *all;

/* --- codec --- */

long ws_frame_parse(const uint8_t *p, size_t n, bool require_mask, struct ws_frame *f)
{
	if (n < 2)
		return 0;
	f->fin = p[0] & 0x80;
	if (p[0] & 0x70)
		return -1002; /* no extensions negotiated */
	f->opcode = p[0] & 0x0f;
	bool masked = p[1] & 0x80;
	uint64_t len = p[1] & 0x7f;
	size_t h = 2;
	if (f->opcode >= 3 && f->opcode <= 7)
		return -1002;
	if (f->opcode >= 11)
		return -1002;
	if (len == 126) {
		if (n < 4)
			return 0;
		len = ((uint64_t)p[2] << 8) | p[3];
		h = 4;
		if (len < 126)
			return -1002; /* not minimally encoded */
	} else if (len == 127) {
		if (n < 10)
			return 0;
		len = 0;
		for (int i = 0; i < 8; i++)
			len = (len << 8) | p[2 + i];
		h = 10;
		if (len >> 63)
			return -1002;
		if (len < 65536)
			return -1002;
	}
	if (f->opcode >= 8 && (!f->fin || len > 125))
		return -1002; /* control frames: unfragmented, short */
	if (require_mask && !masked)
		return -1002;
	if (len > WS_MAX_MESSAGE)
		return -1009;
	f->mask = NULL;
	if (masked) {
		if (n < h + 4)
			return 0;
		f->mask = p + h;
		h += 4;
	}
	f->len = len;
	f->header_len = h;
	if (n < h + len)
		return 0;
	return (long)(h + len);
}

size_t ws_frame_header(uint8_t *hdr, int opcode, bool fin, uint64_t len)
{
	hdr[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
	if (len < 126) {
		hdr[1] = (uint8_t)len;
		return 2;
	}
	if (len < 65536) {
		hdr[1] = 126;
		hdr[2] = (uint8_t)(len >> 8);
		hdr[3] = (uint8_t)len;
		return 4;
	}
	hdr[1] = 127;
	for (int i = 0; i < 8; i++)
		hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
	return 10;
}

bool ws_utf8_valid(const char *str, size_t n)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t need;
		unsigned cp;
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (size_t k = 1; k <= need; k++) {
			if (i + k >= n || (s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += need + 1;
	}
	return true;
}

bool ws_close_code_valid(int code)
{
	if (code >= 1000 && code <= 1003)
		return true;
	if (code >= 1007 && code <= 1014)
		return true;
	return code >= 3000 && code <= 4999;
}

void ws_accept_key(const char *key, char out[29])
{
	static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
	unsigned char md[SHA_DIGEST_LENGTH];
	char *cat = xasprintf("%s%s", key, guid);
	SHA1((const unsigned char *)cat, strlen(cat), md);
	free(cat);
	EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
	out[28] = '\0';
}

/* --- connection --- */

static void notify(struct ws *ws, int ev)
{
	if (ws->notify)
		ws->notify(ws->ud, ev);
}

static void update_events(struct ws *ws)
{
	if (!ws->w)
		return;
	uint32_t ev = 0;
	if (ws->state != WS_DONE && ws->queued < WS_MAX_QUEUED)
		ev |= EPOLLIN;
	if (ws->out.len > ws->out_off)
		ev |= EPOLLOUT;
	loop_modify(ws->w, ev, NULL);
}

/* Close the socket for good. */
static void shut(struct ws *ws)
{
	if (ws->w) {
		loop_unwatch(ws->w);
		ws->w = NULL;
	}
	loop_timer_stop(ws->close_timer);
	ws->close_timer = NULL;
	if (ws->urh) {
		MHD_upgrade_action(ws->urh, MHD_UPGRADE_ACTION_CLOSE);
		ws->urh = NULL;
		http_kick(); /* libmicrohttpd closes the socket on its next run */
	} else if (ws->client && ws->fd >= 0) {
		close(ws->fd);
		ws->fd = -1;
	}
	bool was_done = ws->state == WS_DONE;
	ws->state = WS_DONE;
	if (!was_done)
		notify(ws, WS_EV_CLOSED);
}

static void flush(struct ws *ws)
{
	while (ws->out.len > ws->out_off) {
		ssize_t n = send(ws->fd, ws->out.data + ws->out_off, ws->out.len - ws->out_off,
		                 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			ws->out.len = ws->out_off = 0;
			shut(ws);
			return;
		}
		ws->out_off += (size_t)n;
	}
	bool drained = ws->out.len == ws->out_off;
	if (drained) {
		ws->out.len = ws->out_off = 0;
		if (ws->state == WS_CLOSING) {
			shut(ws);
			return;
		}
		notify(ws, WS_EV_WRITABLE);
	} else if (ws->out_off > (256u << 10)) {
		buf_consume(&ws->out, ws->out_off);
		ws->out_off = 0;
	}
	update_events(ws);
}

static void queue_frame(struct ws *ws, int opcode, const void *data, size_t len)
{
	uint8_t hdr[14];
	size_t h = ws_frame_header(hdr, opcode, true, len);
	if (!ws->client) {
		buf_append(&ws->out, hdr, h);
		buf_append(&ws->out, data, len);
		return;
	}
	/* client frames are masked with a fresh key (RFC 6455 5.3) */
	uint8_t key[4];
	if (getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key))
		memset(key, 0x5a, sizeof(key));
	hdr[1] |= 0x80;
	memcpy(hdr + h, key, 4);
	buf_append(&ws->out, hdr, h + 4);
	buf_reserve(&ws->out, len);
	const uint8_t *p = data;
	uint8_t *o = (uint8_t *)ws->out.data + ws->out.len;
	for (size_t i = 0; i < len; i++)
		o[i] = p[i] ^ key[i & 3];
	ws->out.len += len;
	ws->out.data[ws->out.len] = '\0';
}

static void on_close_timeout(void *ud)
{
	struct ws *ws = ud;
	ws->close_timer = NULL;
	shut(ws);
}

static void send_close(struct ws *ws, int code, const char *reason)
{
	char payload[125];
	size_t n = 0;
	if (code) {
		payload[0] = (char)(code >> 8);
		payload[1] = (char)(code & 0xff);
		n = 2;
		if (reason) {
			size_t rl = MB_MIN(strlen(reason), sizeof(payload) - 2);
			memcpy(payload + 2, reason, rl);
			n += rl;
		}
	}
	queue_frame(ws, WS_CLOSE, payload, n);
}

/* Protocol violation: send a close with the code and hang up once it is written. */
static void fail(struct ws *ws, int code, const char *why)
{
	mb_log(MB_LOG_DEBUG, "ws", "closing with %d: %s", code, why);
	if (ws->state == WS_OPEN || ws->state == WS_CLOSE_SENT)
		send_close(ws, code, why);
	ws->state = WS_CLOSING;
	if (!ws->close_timer)
		ws->close_timer = loop_timer(CLOSE_TIMEOUT_MS, on_close_timeout, ws);
	flush(ws);
}

static void deliver(struct ws *ws, int opcode, const char *data, size_t len)
{
	struct msg *m = xcalloc(1, sizeof(*m));
	m->opcode = opcode;
	m->data = xmalloc(len + 1);
	memcpy(m->data, data, len);
	m->data[len] = '\0';
	m->len = len;
	if (ws->tail)
		ws->tail->next = m;
	else
		ws->head = m;
	ws->tail = m;
	ws->queued += len;
	notify(ws, WS_EV_MESSAGE);
}

/* Handle one complete frame with its (unmasked in place) payload. Returns false if the
 * connection was failed. */
static bool on_frame(struct ws *ws, const struct ws_frame *f, uint8_t *payload)
{
	if (f->opcode >= 8) {
		switch (f->opcode) {
		case WS_PING:
			if (ws->state == WS_OPEN)
				queue_frame(ws, WS_PONG, payload, f->len);
			return true;
		case WS_PONG:
			return true;
		case WS_CLOSE: {
			int code = 1005;
			if (f->len == 1) {
				fail(ws, 1002, "close frame with a 1-byte payload");
				return false;
			}
			if (f->len >= 2) {
				code = (payload[0] << 8) | payload[1];
				if (!ws_close_code_valid(code)) {
					fail(ws, 1002, "invalid close code");
					return false;
				}
				if (!ws_utf8_valid((char *)payload + 2, f->len - 2)) {
					fail(ws, 1007, "close reason is not UTF-8");
					return false;
				}
			}
			ws->peer_closed = true;
			ws->peer_code = code;
			if (ws->state == WS_OPEN)
				send_close(ws, code == 1005 ? 1000 : code, NULL);
			ws->state = WS_CLOSING;
			notify(ws, WS_EV_CLOSED);
			return false;
		}
		}
		return true;
	}
	if (ws->state != WS_OPEN && ws->state != WS_CLOSE_SENT)
		return true; /* ignore data after we started closing */
	if (f->opcode == WS_CONT) {
		if (!ws->frag_opcode) {
			fail(ws, 1002, "continuation frame without a message");
			return false;
		}
	} else if (ws->frag_opcode) {
		fail(ws, 1002, "new message before the previous one ended");
		return false;
	}
	int opcode = f->opcode == WS_CONT ? ws->frag_opcode : f->opcode;
	if (ws->frag.len + f->len > WS_MAX_MESSAGE) {
		fail(ws, 1009, "message too big");
		return false;
	}
	if (f->fin && !ws->frag_opcode) {
		if (opcode == WS_TEXT && !ws_utf8_valid((char *)payload, f->len)) {
			fail(ws, 1007, "text message is not valid UTF-8");
			return false;
		}
		deliver(ws, opcode, (char *)payload, f->len);
		return true;
	}
	buf_append(&ws->frag, payload, f->len);
	ws->frag_opcode = opcode;
	if (f->fin) {
		if (opcode == WS_TEXT && !ws_utf8_valid(ws->frag.data, ws->frag.len)) {
			fail(ws, 1007, "text message is not valid UTF-8");
			return false;
		}
		deliver(ws, opcode, ws->frag.data, ws->frag.len);
		ws->frag.len = 0;
		ws->frag_opcode = 0;
	}
	return true;
}

static void parse(struct ws *ws)
{
	size_t off = 0;
	while (ws->state != WS_DONE) {
		struct ws_frame f;
		long n =
		    ws_frame_parse((uint8_t *)ws->in.data + off, ws->in.len - off, !ws->client, &f);
		if (n == 0)
			break;
		if (n < 0) {
			fail(ws, (int)-n, -n == 1009 ? "frame too big" : "protocol error");
			break;
		}
		uint8_t *payload = (uint8_t *)ws->in.data + off + f.header_len;
		if (ws->client && f.mask) {
			fail(ws, 1002, "masked frame from the server");
			break;
		}
		for (uint64_t i = 0; f.mask && i < f.len; i++)
			payload[i] ^= f.mask[i & 3];
		off += (size_t)n;
		if (!on_frame(ws, &f, payload))
			break;
	}
	buf_consume(&ws->in, off);
}

static void on_io(int fd, uint32_t events, void *ud)
{
	struct ws *ws = ud;
	if (events & EPOLLOUT)
		flush(ws);
	if (ws->state == WS_DONE)
		return;
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		char chunk[65536];
		for (;;) {
			ssize_t n = recv(fd, chunk, sizeof(chunk), MSG_DONTWAIT);
			if (n > 0) {
				if (ws->state == WS_CLOSING)
					continue; /* discard */
				buf_append(&ws->in, chunk, (size_t)n);
				if (ws->in.len > WS_MAX_MESSAGE + 64)
					break;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN)
				break;
			/* EOF or error: the peer is gone */
			ws->peer_closed = true;
			if (!ws->peer_code)
				ws->peer_code = 1006;
			shut(ws);
			return;
		}
		parse(ws);
		if (ws->state != WS_DONE)
			flush(ws);
	}
}

static struct ws *ws_create(int sock, struct MHD_UpgradeResponseHandle *urh, bool client,
                            const char *extra, size_t extra_len)
{
	struct ws *ws = xcalloc(1, sizeof(*ws));
	ws->fd = sock;
	ws->urh = urh;
	ws->client = client;
	ws->next = all;
	if (all)
		all->prev = ws;
	all = ws;
	fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
	if (extra_len)
		buf_append(&ws->in, extra, extra_len);
	mb_err err;
	ws->w = loop_watch(sock, EPOLLIN, on_io, ws, &err);
	if (!ws->w) {
		log_error("ws: %s", err.msg);
		shut(ws);
	}
	return ws;
}

struct ws *ws_new(int sock, struct MHD_UpgradeResponseHandle *urh, const char *extra,
                  size_t extra_len)
{
	return ws_create(sock, urh, false, extra, extra_len);
}

struct ws *ws_new_client(int fd, const char *extra, size_t extra_len)
{
	return ws_create(fd, NULL, true, extra, extra_len);
}

void ws_set_owner(struct ws *ws, void (*fn)(void *ud, int events), void *ud)
{
	ws->notify = fn;
	ws->ud = ud;
	if (ws->in.len)
		parse(ws);
	if (ws->head)
		notify(ws, WS_EV_MESSAGE);
	if (ws->state == WS_DONE)
		notify(ws, WS_EV_CLOSED);
}

int ws_recv(struct ws *ws, int *opcode, char **data, size_t *len)
{
	struct msg *m = ws->head;
	if (!m)
		return ws->state == WS_OPEN || ws->state == WS_CLOSE_SENT ? 0 : -EPIPE;
	ws->head = m->next;
	if (!ws->head)
		ws->tail = NULL;
	ws->queued -= m->len;
	*opcode = m->opcode;
	*data = m->data;
	*len = m->len;
	free(m);
	update_events(ws);
	return 1;
}

long ws_send(struct ws *ws, int opcode, const char *data, size_t len)
{
	if (ws->state != WS_OPEN)
		return -EPIPE;
	queue_frame(ws, opcode, data, len);
	flush(ws);
	if (ws->state == WS_DONE)
		return -EPIPE;
	return (long)(ws->out.len - ws->out_off);
}

void ws_close(struct ws *ws, int code, const char *reason)
{
	if (ws->state != WS_OPEN)
		return;
	send_close(ws, code ? code : 1000, reason);
	ws->state = WS_CLOSE_SENT;
	ws->close_timer = loop_timer(CLOSE_TIMEOUT_MS, on_close_timeout, ws);
	flush(ws);
}

void ws_abort(struct ws *ws)
{
	if (ws->state == WS_OPEN) {
		send_close(ws, 1001, "server shutting down");
		flush(ws);
	}
	shut(ws);
}

void ws_abort_all(void)
{
	for (struct ws *ws = all; ws; ws = ws->next)
		ws_abort(ws);
}

void ws_free(struct ws *ws)
{
	ws->notify = NULL;
	shut(ws);
	if (ws->prev)
		ws->prev->next = ws->next;
	else
		all = ws->next;
	if (ws->next)
		ws->next->prev = ws->prev;
	while (ws->head) {
		struct msg *m = ws->head;
		ws->head = m->next;
		free(m->data);
		free(m);
	}
	buf_free(&ws->in);
	buf_free(&ws->out);
	buf_free(&ws->frag);
	free(ws);
}

bool ws_is_closed(const struct ws *ws)
{
	return ws->state != WS_OPEN;
}

int ws_peer_close_code(const struct ws *ws)
{
	return ws->peer_code;
}

size_t ws_pending(const struct ws *ws)
{
	return ws->out.len - ws->out_off;
}
