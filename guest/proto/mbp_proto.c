/* Message codec and authentication helpers of the moonbox agent protocol. */
#include "mbp_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

int mbp_err_set(mbp_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		err->code = code;
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

int mbp_encode_header(const json_t *hdr, char **json, size_t *json_len, mbp_err *err)
{
	if (!json_is_object(hdr))
		return mbp_err_set(err, -EINVAL, "message header must be a JSON object");
	char *s = json_dumps(hdr, JSON_COMPACT);
	if (!s)
		return mbp_err_set(err, -ENOMEM, "cannot serialise message header");
	size_t n = strlen(s);
	if (n > MBP_MAX_HEADER) {
		free(s);
		return mbp_err_set(err, -EMSGSIZE, "message header too large (%zu bytes)", n);
	}
	*json = s;
	*json_len = n;
	return 0;
}

int mbp_encode(const json_t *hdr, const void *payload, size_t payload_len, uint8_t **out,
               size_t *out_len, mbp_err *err)
{
	char *js;
	size_t jl;
	int rc = mbp_encode_header(hdr, &js, &jl, err);
	if (rc < 0)
		return rc;
	size_t total = 4 + jl + payload_len;
	uint8_t *b = malloc(total ? total : 1);
	if (!b) {
		free(js);
		return mbp_err_set(err, -ENOMEM, "out of memory encoding a message");
	}
	b[0] = (uint8_t)(jl >> 24);
	b[1] = (uint8_t)(jl >> 16);
	b[2] = (uint8_t)(jl >> 8);
	b[3] = (uint8_t)jl;
	memcpy(b + 4, js, jl);
	if (payload_len)
		memcpy(b + 4 + jl, payload, payload_len);
	free(js);
	*out = b;
	*out_len = total;
	return 0;
}

int mbp_decode(const void *buf, size_t len, json_t **hdr, const uint8_t **payload,
               size_t *payload_len, mbp_err *err)
{
	const uint8_t *b = buf;
	if (len < 4)
		return mbp_err_set(err, -EBADMSG, "message too short (%zu bytes)", len);
	size_t jl = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
	if (jl > MBP_MAX_HEADER || jl > len - 4)
		return mbp_err_set(err, -EBADMSG, "bad header length %zu in %zu-byte message", jl,
		                   len);
	json_error_t je;
	json_t *j = json_loadb((const char *)b + 4, jl, JSON_REJECT_DUPLICATES, &je);
	if (!j)
		return mbp_err_set(err, -EBADMSG, "bad message header: %s", je.text);
	if (!json_is_object(j)) {
		json_decref(j);
		return mbp_err_set(err, -EBADMSG, "message header is not a JSON object");
	}
	*hdr = j;
	*payload = b + 4 + jl;
	*payload_len = len - 4 - jl;
	return 0;
}

json_t *mbp_request(const char *op)
{
	return json_pack("{s:s}", "op", op);
}

json_t *mbp_reply_ok(void)
{
	return json_pack("{s:b}", "ok", 1);
}

static const struct {
	int code;
	const char *name;
} errnames[] = {
	{ EPERM, "EPERM" },
	{ ENOENT, "ENOENT" },
	{ ESRCH, "ESRCH" },
	{ EINTR, "EINTR" },
	{ EIO, "EIO" },
	{ E2BIG, "E2BIG" },
	{ ENOEXEC, "ENOEXEC" },
	{ EBADF, "EBADF" },
	{ ECHILD, "ECHILD" },
	{ EAGAIN, "EAGAIN" },
	{ ENOMEM, "ENOMEM" },
	{ EACCES, "EACCES" },
	{ EFAULT, "EFAULT" },
	{ EBUSY, "EBUSY" },
	{ EEXIST, "EEXIST" },
	{ ENODEV, "ENODEV" },
	{ ENOTDIR, "ENOTDIR" },
	{ EISDIR, "EISDIR" },
	{ EINVAL, "EINVAL" },
	{ ENFILE, "ENFILE" },
	{ EMFILE, "EMFILE" },
	{ ENOTTY, "ENOTTY" },
	{ EFBIG, "EFBIG" },
	{ ENOSPC, "ENOSPC" },
	{ EROFS, "EROFS" },
	{ EPIPE, "EPIPE" },
	{ ERANGE, "ERANGE" },
	{ ENAMETOOLONG, "ENAMETOOLONG" },
	{ ENOSYS, "ENOSYS" },
	{ ENOTEMPTY, "ENOTEMPTY" },
	{ ELOOP, "ELOOP" },
	{ EBADMSG, "EBADMSG" },
	{ EOVERFLOW, "EOVERFLOW" },
	{ EMSGSIZE, "EMSGSIZE" },
	{ EPROTO, "EPROTO" },
	{ ENOTSUP, "ENOTSUP" },
	{ ECONNRESET, "ECONNRESET" },
	{ ETIMEDOUT, "ETIMEDOUT" },
	{ ECANCELED, "ECANCELED" },
	{ EALREADY, "EALREADY" },
	{ ENOTCONN, "ENOTCONN" },
	{ EXDEV, "EXDEV" },
	{ ESTALE, "ESTALE" },
	{ EPROTONOSUPPORT, "EPROTONOSUPPORT" },
};

const char *mbp_errno_name(int code)
{
	if (code < 0)
		code = -code;
	for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++) {
		if (errnames[i].code == code)
			return errnames[i].name;
	}
	return "EIO";
}

int mbp_errno_from_name(const char *name)
{
	if (name) {
		for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++) {
			if (strcmp(errnames[i].name, name) == 0)
				return -errnames[i].code;
		}
	}
	return -EIO;
}

json_t *mbp_reply_error(int code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (code >= 0)
		code = -EIO;
	return json_pack("{s:b,s:i,s:s,s:s}", "ok", 0, "errno", -code, "error",
	                 mbp_errno_name(code), "message", msg);
}

int mbp_reply_check(const json_t *rep, mbp_err *err)
{
	if (!json_is_object(rep))
		return mbp_err_set(err, -EBADMSG, "reply is not a JSON object");
	json_t *ok = json_object_get(rep, "ok");
	if (json_is_true(ok))
		return 0;
	int code = mbp_errno_from_name(mbp_get_str(rep, "error", NULL));
	return mbp_err_set(err, code, "%s", mbp_get_str(rep, "message", "agent reported an error"));
}

const char *mbp_get_str(const json_t *obj, const char *key, const char *dflt)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : dflt;
}

int64_t mbp_get_int(const json_t *obj, const char *key, int64_t dflt)
{
	json_t *v = json_object_get(obj, key);
	return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

int mbp_get_bool(const json_t *obj, const char *key, int dflt)
{
	json_t *v = json_object_get(obj, key);
	return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static void proof(const char *label, const char *token, size_t token_len, const uint8_t *first,
                  const uint8_t *second, uint8_t out[MBP_SHA256_LEN])
{
	mbp_hmac_ctx h;
	mbp_hmac_init(&h, token, token_len);
	mbp_hmac_update(&h, label, strlen(label));
	mbp_hmac_update(&h, first, MBP_NONCE_LEN);
	mbp_hmac_update(&h, second, MBP_NONCE_LEN);
	mbp_hmac_final(&h, out);
}

void mbp_auth_agent_proof(const char *token, size_t token_len,
                          const uint8_t host_nonce[MBP_NONCE_LEN],
                          const uint8_t agent_nonce[MBP_NONCE_LEN], uint8_t out[MBP_SHA256_LEN])
{
	proof(MBP_AUTH_AGENT_LABEL, token, token_len, host_nonce, agent_nonce, out);
}

void mbp_auth_host_proof(const char *token, size_t token_len,
                         const uint8_t host_nonce[MBP_NONCE_LEN],
                         const uint8_t agent_nonce[MBP_NONCE_LEN], uint8_t out[MBP_SHA256_LEN])
{
	proof(MBP_AUTH_HOST_LABEL, token, token_len, agent_nonce, host_nonce, out);
}

int mbp_random(void *buf, size_t len, mbp_err *err)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = getrandom(p, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return mbp_err_set(err, -errno, "getrandom: %s", strerror(errno));
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void mbp_hex_encode(const uint8_t *in, size_t len, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = hx[in[i] >> 4];
		out[2 * i + 1] = hx[in[i] & 15];
	}
	out[2 * len] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int mbp_hex_decode(const char *hex, uint8_t *out, size_t len)
{
	if (!hex || strlen(hex) != 2 * len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		int a = hexval(hex[2 * i]), b = hexval(hex[2 * i + 1]);
		if (a < 0 || b < 0)
			return -EINVAL;
		out[i] = (uint8_t)(a << 4 | b);
	}
	return 0;
}

json_t *mbp_hello_request(uint8_t host_nonce[MBP_NONCE_LEN], const char *client, mbp_err *err)
{
	if (mbp_random(host_nonce, MBP_NONCE_LEN, err) < 0)
		return NULL;
	char hex[2 * MBP_NONCE_LEN + 1];
	mbp_hex_encode(host_nonce, MBP_NONCE_LEN, hex);
	json_t *r = json_pack("{s:s,s:i,s:s,s:s}", "op", MBP_OP_HELLO, "version", MBP_VERSION,
	                      "nonce", hex, "client", client ? client : "moonbox");
	if (!r)
		mbp_err_set(err, -ENOMEM, "out of memory");
	return r;
}

json_t *mbp_auth_request(const json_t *hello_reply, const char *token, size_t token_len,
                         const uint8_t host_nonce[MBP_NONCE_LEN], mbp_err *err)
{
	if (mbp_reply_check(hello_reply, err) < 0)
		return NULL;
	int64_t v = mbp_get_int(hello_reply, "version", 0);
	if (v != MBP_VERSION) {
		mbp_err_set(err, -EPROTONOSUPPORT, "agent speaks protocol %lld, we speak %d",
		            (long long)v, MBP_VERSION);
		return NULL;
	}
	uint8_t an[MBP_NONCE_LEN], got[MBP_SHA256_LEN], want[MBP_SHA256_LEN];
	if (mbp_hex_decode(mbp_get_str(hello_reply, "nonce", ""), an, sizeof(an)) < 0 ||
	    mbp_hex_decode(mbp_get_str(hello_reply, "proof", ""), got, sizeof(got)) < 0) {
		mbp_err_set(err, -EBADMSG, "malformed hello reply");
		return NULL;
	}
	mbp_auth_agent_proof(token, token_len, host_nonce, an, want);
	if (!mbp_ct_equal(got, want, sizeof(want))) {
		mbp_err_set(err, -EACCES,
		            "agent failed authentication: it does not know the token");
		return NULL;
	}
	mbp_auth_host_proof(token, token_len, host_nonce, an, want);
	char hex[2 * MBP_SHA256_LEN + 1];
	mbp_hex_encode(want, sizeof(want), hex);
	json_t *r = json_pack("{s:s,s:s}", "op", MBP_OP_AUTH, "proof", hex);
	if (!r)
		mbp_err_set(err, -ENOMEM, "out of memory");
	return r;
}

long mbp_host_tsc_khz(mbp_err *err)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	if (!f)
		return mbp_err_set(err, -errno, "/proc/cpuinfo: %s", strerror(errno));
	char line[512];
	long khz = 0;
	while (fgets(line, sizeof(line), f)) {
		double mhz;
		if (sscanf(line, "cpu MHz : %lf", &mhz) == 1) {
			khz = (long)(mhz * 1000.0 + 0.5);
			break;
		}
	}
	fclose(f);
	if (khz <= 0)
		return mbp_err_set(err, -ENOENT, "no \"cpu MHz\" in /proc/cpuinfo");
	return khz;
}
