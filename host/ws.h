/*
 * WebSocket (RFC 6455) server side on a socket handed over by libmicrohttpd's upgrade:
 * frame parsing (masked client frames, fragmentation, control frames), ping/pong,
 * the close handshake, UTF-8 checks, size limits, and buffered non-blocking writes.
 */
#ifndef MB_WS_H
#define MB_WS_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { WS_CONT = 0, WS_TEXT = 1, WS_BINARY = 2, WS_CLOSE = 8, WS_PING = 9, WS_PONG = 10 };
enum { WS_EV_MESSAGE = 1, WS_EV_CLOSED = 2, WS_EV_WRITABLE = 4 };

#define WS_MAX_MESSAGE (16u << 20)
#define WS_MAX_QUEUED  (32u << 20)

/* --- pure frame codec (unit-tested) --- */
struct ws_frame {
	bool fin;
	int opcode;
	uint64_t len;
	const uint8_t *mask; /* NULL if unmasked */
	size_t header_len;
};
/* Parse one frame header from p[0..n). Returns header+payload bytes if the whole frame
 * is present, 0 if more bytes are needed, or -(close code) for a protocol violation. */
long ws_frame_parse(const uint8_t *p, size_t n, bool require_mask, struct ws_frame *f);
/* Write an unmasked frame header into hdr (>= 10 bytes, 14 if a mask key follows);
 * returns its length. */
size_t ws_frame_header(uint8_t *hdr, int opcode, bool fin, uint64_t len);
bool ws_utf8_valid(const char *s, size_t n);
bool ws_close_code_valid(int code);
/* Sec-WebSocket-Accept for a key; writes 28 chars + NUL into out. */
void ws_accept_key(const char *key, char out[29]);

/* --- connections --- */
struct ws;
/* Takes over sock (closed through urh); extra is data already read past the headers. */
struct ws *ws_new(int sock, struct MHD_UpgradeResponseHandle *urh, const char *extra,
                  size_t extra_len);
/* A client connection on a connected socket after a successful handshake (takes fd). */
struct ws *ws_new_client(int fd, const char *extra, size_t extra_len);
/* The owner is told about WS_EV_* (may be called from ws_new's first read). */
void ws_set_owner(struct ws *ws, void (*notify)(void *ud, int events), void *ud);
/* Pop the next whole message: 1 (caller frees *data), 0 none yet, -EPIPE closed. */
int ws_recv(struct ws *ws, int *opcode, char **data, size_t *len);
/* Queue a message; returns bytes waiting to be written, or -EPIPE if closed. */
long ws_send(struct ws *ws, int opcode, const char *data, size_t len);
/* Start the close handshake (code 1000 if 0). */
void ws_close(struct ws *ws, int code, const char *reason);
/* Close the socket now (daemon shutdown). */
void ws_abort(struct ws *ws);
/* Close every connection now (before the HTTP daemons stop); owners still free them. */
void ws_abort_all(void);
/* Release: the owner is done; closes the socket if still open. */
void ws_free(struct ws *ws);
bool ws_is_closed(const struct ws *ws);
int ws_peer_close_code(const struct ws *ws);
size_t ws_pending(const struct ws *ws);

#endif
