/*
 * Image references, parsed and normalised the way Docker does:
 *   nginx                       -> docker.io/library/nginx:latest
 *   localhost:5000/a/b@sha256:… -> registry localhost:5000, repository a/b, that digest
 * No heap memory: struct mbr_ref holds fixed-size fields.
 */
#ifndef MBR_REF_H
#define MBR_REF_H

#include <stdbool.h>
#include <stddef.h>

#include <moonbox/plugin.h>

#define MBR_DEFAULT_DOMAIN "docker.io"
#define MBR_NAME_MAX       255 /* domain + '/' + path, like Docker */

struct mbr_ref {
	char domain[MBR_NAME_MAX + 1]; /* "docker.io", "localhost:5000", "[::1]:5000" */
	char path[MBR_NAME_MAX + 1];   /* "library/nginx" */
	char tag[129];                 /* "" when the reference names only a digest */
	char digest[136];              /* "" or "sha256:<64 hex>" */
};

/* Parse and normalise s. Adds "latest" when neither tag nor digest is given.
 * -EINVAL with a message that says what is wrong. */
int mbr_ref_parse(const char *s, struct mbr_ref *out, mb_err *err);

/* "domain/path" */
int mbr_ref_name(const struct mbr_ref *r, char *buf, size_t n);
/* Full normalised form: "domain/path[:tag][@digest]". Returns the length or -ENOSPC. */
int mbr_ref_string(const struct mbr_ref *r, char *buf, size_t n);
/* Docker's short form ("nginx:latest", "me/app:1", "localhost:5000/x:y"). */
int mbr_ref_familiar(const struct mbr_ref *r, char *buf, size_t n);
/* The host to talk to: docker.io -> registry-1.docker.io; others unchanged. Static/borrowed. */
const char *mbr_ref_api_host(const struct mbr_ref *r);
/* True for loopback registries that may use plain HTTP without operator say-so. */
bool mbr_host_is_loopback(const char *domain);
/* Normalise a registry host name the way credentials are keyed: strips scheme and path,
 * maps index.docker.io / registry-1.docker.io / docker.io to "docker.io". */
int mbr_registry_key(const char *in, char *buf, size_t n);

/* True if s looks like a (possibly truncated, >= 12 hex chars) image id, with or without
 * "sha256:". */
bool mbr_looks_like_id(const char *s);

#endif
