/*
 * Registry authentication pieces that need no network:
 *  - WWW-Authenticate challenge parsing (Basic / Bearer realm, service, scope, error),
 *  - credentials: Docker's X-Registry-Auth header (base64url JSON) and the `auths`
 *    section of ~/.docker/config.json,
 *  - the bearer-token request URL and the token endpoint's answer,
 *  - a token cache keyed by (realm, service, scope, account).
 */
#ifndef MBR_AUTH_H
#define MBR_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include <moonbox/plugin.h>

enum mbr_auth_scheme { MBR_AUTH_NONE = 0, MBR_AUTH_BASIC, MBR_AUTH_BEARER };

struct mbr_challenge {
	enum mbr_auth_scheme scheme;
	char realm[1024];
	char service[256];
	char scope[512];
	char error[64]; /* e.g. "insufficient_scope", "invalid_token" */
};

/* Parse one WWW-Authenticate header value. When several challenges are present,
 * Bearer is preferred over Basic. -EINVAL if no supported scheme is found. */
int mbr_challenge_parse(const char *hdr, struct mbr_challenge *out, mb_err *err);

/* Credentials. Strings are heap-allocated; free with mbr_cred_clear(). */
struct mbr_cred {
	char *username;
	char *password;
	char *token; /* identity token (OAuth refresh token) or a registry bearer token */
	bool
	    token_is_registry; /* true: send as Bearer directly (X-Registry-Auth "registrytoken") */
};
void mbr_cred_clear(struct mbr_cred *c); /* frees and wipes the secrets */
int mbr_cred_copy(struct mbr_cred *dst, const struct mbr_cred *src);
bool mbr_cred_empty(const struct mbr_cred *c);

/* base64 (standard or URL alphabet, padding optional). Decoded output is NUL-terminated;
 * caller frees *out. */
int mbr_base64_decode(const char *in, size_t len, char **out, size_t *outlen);
/* Standard alphabet with padding; caller frees. */
char *mbr_base64_encode(const void *in, size_t len);

/* Decode an X-Registry-Auth header (base64url JSON {username,password,identitytoken,
 * registrytoken,serveraddress}). Fills *c (caller clears). */
int mbr_cred_from_x_registry_auth(const char *hdr, struct mbr_cred *c, mb_err *err);
/* Look `registry` (a host[:port], normalised with mbr_registry_key) up in a docker
 * config.json text. 0 and *c filled if found, -ENOENT if not. */
int mbr_cred_from_docker_config(const char *json_text, const char *registry, struct mbr_cred *c,
                                mb_err *err);

/* Build "<realm>?service=..&scope=..&account=..". scope/service/account may be NULL or "".
 * Caller frees. NULL on OOM. */
char *mbr_token_url(const struct mbr_challenge *ch, const char *scope, const char *account);
/* Parse the token endpoint's JSON answer. *token: caller frees; *expires_in seconds. */
int mbr_token_parse(const char *body, size_t len, char **token, int64_t *expires_in, mb_err *err);

/* Token cache. */
typedef struct mbr_token_cache mbr_token_cache;
mbr_token_cache *mbr_token_cache_new(void); /* caller frees with _free */
void mbr_token_cache_free(mbr_token_cache *tc);
/* Borrowed pointer valid until the next put/expire call, or NULL. now_ms: monotonic. */
const char *mbr_token_cache_get(mbr_token_cache *tc, const char *realm, const char *service,
                                const char *scope, const char *account, uint64_t now_ms);
int mbr_token_cache_put(mbr_token_cache *tc, const char *realm, const char *service,
                        const char *scope, const char *account, const char *token,
                        uint64_t expires_at_ms);
void mbr_token_cache_clear(mbr_token_cache *tc);

#endif
