/*
 * moonbox agent protocol: constants and the message codec shared by the guest agent
 * (moonbox-init, linked statically) and the host (plugins/vm, mb-agentctl).
 * See guest/PROTOCOL.md for the protocol itself.
 *
 * One nng message = u32 big-endian header length H | H bytes of JSON (an object) |
 * payload (the rest, raw bytes, may be empty).
 *
 * Errors: functions that can fail return 0 (or a non-negative count) or a negative errno
 * and take an `mbp_err *err` out-parameter last (may be NULL). mbp_err has the same layout
 * as the host's mb_err (int code; char msg[256]).
 */
#ifndef MOONBOX_MBP_PROTO_H
#define MOONBOX_MBP_PROTO_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mbp_sha256.h"

#define MBP_VERSION      1    /* protocol version carried in hello */
#define MBP_DEFAULT_PORT 1025 /* TCP port the agent listens on */
#define MBP_NONCE_LEN    32   /* bytes of each side's challenge */
#define MBP_MAX_HEADER   (1u << 20)
#define MBP_MAX_MSG      (8u << 20) /* the agent sets NNG_OPT_RECVMAXSZ to this */
#define MBP_MAX_CHUNK    (1u << 20) /* largest payload a read/fs_read returns */

/* Template mode (PROTOCOL.md "Templates"): a guest booted with "template": true waits for
 * its real boot config on the virtio disk with this serial: MBP_CONFIG_MAGIC, the JSON
 * length as 8 bytes little-endian, the JSON; the disk is MBP_CONFIG_DISK_SIZE bytes. */
#define MBP_CONFIG_SERIAL    "mb-config"
#define MBP_CONFIG_MAGIC     "MBCONF01"
#define MBP_CONFIG_DISK_SIZE (1u << 20)
#define MBP_EMPTY_SERIAL     "mb-empty" /* unused disk slots of a restored template */

/* Operations (the "op" field of a request). */
#define MBP_OP_HELLO      "hello"
#define MBP_OP_AUTH       "auth"
#define MBP_OP_PING       "ping"
#define MBP_OP_RUN        "run"
#define MBP_OP_EXEC       "exec"
#define MBP_OP_READ       "read"
#define MBP_OP_WRITE      "write"
#define MBP_OP_RESIZE     "resize"
#define MBP_OP_SIGNAL     "signal"
#define MBP_OP_WAIT       "wait"
#define MBP_OP_RELEASE    "release"
#define MBP_OP_LIST       "list"
#define MBP_OP_STATS      "stats"
#define MBP_OP_FS_STAT    "fs_stat"
#define MBP_OP_FS_READ    "fs_read"
#define MBP_OP_FS_WRITE   "fs_write"
#define MBP_OP_FS_MKDIR   "fs_mkdir"
#define MBP_OP_FS_READDIR "fs_readdir"
#define MBP_OP_FS_SYMLINK "fs_symlink"
#define MBP_OP_SHUTDOWN   "shutdown"

/* Labels mixed into the two HMAC proofs so that one can never be replayed as the other. */
#define MBP_AUTH_AGENT_LABEL "moonbox-agent-proof-v1"
#define MBP_AUTH_HOST_LABEL  "moonbox-host-proof-v1"

typedef struct mbp_err {
	int code;      /* 0 or a negative errno */
	char msg[256]; /* NUL-terminated, for humans */
} mbp_err;

/* Fill *err (if not NULL) and return code, so callers can `return mbp_err_set(...)`. */
int mbp_err_set(mbp_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* --- codec ------------------------------------------------------------------------ */

/* Encode hdr (borrowed; must be a JSON object) and payload (borrowed, may be NULL when
 * payload_len is 0) into one buffer. On success *out is malloc'ed: caller frees. */
int mbp_encode(const json_t *hdr, const void *payload, size_t payload_len, uint8_t **out,
               size_t *out_len, mbp_err *err);

/* Size of the encoded header prefix (length word + JSON) for hdr; lets callers that own
 * a message buffer (nng_msg) append pieces without an extra copy. On success *json is a
 * malloc'ed compact JSON string of length *json_len: caller frees. */
int mbp_encode_header(const json_t *hdr, char **json, size_t *json_len, mbp_err *err);

/* Decode buf (borrowed). On success *hdr is a new reference (caller json_decref()s) and
 * *payload points into buf (borrowed, valid as long as buf). */
int mbp_decode(const void *buf, size_t len, json_t **hdr, const uint8_t **payload,
               size_t *payload_len, mbp_err *err);

/* --- building and checking messages ------------------------------------------------ */

/* {"op": op}. Returns a new reference (caller json_decref()s) or NULL on OOM. */
json_t *mbp_request(const char *op);
/* {"ok": true}. New reference or NULL. */
json_t *mbp_reply_ok(void);
/* {"ok": false, "errno": -code, "error": "ENAME", "message": "..."} for a negative errno
 * code. New reference or NULL. */
json_t *mbp_reply_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 0 when rep (borrowed) says ok; else the negative errno it carries, with its message in
 * err. */
int mbp_reply_check(const json_t *rep, mbp_err *err);

/* Short symbolic name of a negative or positive errno ("ENOENT"); static string. */
const char *mbp_errno_name(int code);
/* Inverse of mbp_errno_name (returns a negative errno, or -EIO for unknown names). */
int mbp_errno_from_name(const char *name);

/* Convenience getters on a borrowed object; return dflt when the key is missing or has
 * another type. Strings are borrowed from obj. */
const char *mbp_get_str(const json_t *obj, const char *key, const char *dflt);
int64_t mbp_get_int(const json_t *obj, const char *key, int64_t dflt);
int mbp_get_bool(const json_t *obj, const char *key, int dflt);

/* --- authentication ---------------------------------------------------------------- */

/* Agent proof = HMAC-SHA256(token, AGENT_LABEL | host_nonce | agent_nonce).
 * Host proof  = HMAC-SHA256(token, HOST_LABEL  | agent_nonce | host_nonce). */
void mbp_auth_agent_proof(const char *token, size_t token_len,
                          const uint8_t host_nonce[MBP_NONCE_LEN],
                          const uint8_t agent_nonce[MBP_NONCE_LEN], uint8_t out[MBP_SHA256_LEN]);
void mbp_auth_host_proof(const char *token, size_t token_len,
                         const uint8_t host_nonce[MBP_NONCE_LEN],
                         const uint8_t agent_nonce[MBP_NONCE_LEN], uint8_t out[MBP_SHA256_LEN]);
/* Fill buf with len bytes from getrandom(2). 0 or negative errno. */
int mbp_random(void *buf, size_t len, mbp_err *err);

/*
 * Host side of the handshake, so that every client does it the same way:
 *   uint8_t hn[MBP_NONCE_LEN];
 *   json_t *hello = mbp_hello_request(hn, "moonbox-vm", &err);     // send it
 *   json_t *auth = mbp_auth_request(hello_reply, token, len, hn, &err); // send it
 * then check the auth reply with mbp_reply_check(). Both must travel on the same
 * connection (nng pipe); after a reconnect start again with a new hello.
 */
/* Build a hello request with a fresh random nonce (written to host_nonce). New reference
 * (caller decrefs) or NULL with err filled. */
json_t *mbp_hello_request(uint8_t host_nonce[MBP_NONCE_LEN], const char *client, mbp_err *err);
/* Check hello_reply (borrowed): protocol version and the agent's proof of the token.
 * Returns the auth request to send (new reference, caller decrefs), or NULL with err
 * filled: -EACCES when the agent does not know the token (do not talk to it),
 * -EPROTONOSUPPORT on a version mismatch, -EBADMSG on a malformed reply. */
json_t *mbp_auth_request(const json_t *hello_reply, const char *token, size_t token_len,
                         const uint8_t host_nonce[MBP_NONCE_LEN], mbp_err *err);

/* The host's TSC frequency in kHz, for the guest's tsc_early_khz= (under TCG the guest TSC
 * is the host TSC). Read from /proc/cpuinfo ("cpu MHz"); returns kHz > 0 or a negative
 * errno. */
long mbp_host_tsc_khz(mbp_err *err);

/* Lower-case hex of len bytes into out (2*len+1 bytes, NUL-terminated). */
void mbp_hex_encode(const uint8_t *in, size_t len, char *out);
/* Decode exactly len bytes from a hex string; -EINVAL if hex is not 2*len hex digits. */
int mbp_hex_decode(const char *hex, uint8_t *out, size_t len);

#endif
