#include "ref.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "digest.h"

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* path-component := [a-z0-9]+ (separator [a-z0-9]+)*, separator := [_.] | "__" | "-"+ */
static bool valid_path_component(const char *s, size_t n)
{
	if (n == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
		return false;
	for (size_t i = 0; i < n;) {
		if (is_lower_alnum(s[i])) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < n && !is_lower_alnum(s[j]))
			j++;
		size_t len = j - i;
		const char *sep = s + i;
		bool ok = (len == 1 && (*sep == '.' || *sep == '_' || *sep == '-')) ||
		          (len == 2 && sep[0] == '_' && sep[1] == '_');
		if (!ok) {
			ok = true;
			for (size_t k = 0; k < len; k++)
				ok = ok && sep[k] == '-';
		}
		if (!ok)
			return false;
		i = j;
	}
	return true;
}

static bool valid_domain_component(const char *s, size_t n)
{
	if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-')
			return false;
	return true;
}

static bool valid_domain(const char *s, size_t n)
{
	const char *end = s + n;
	const char *host_end = end;
	if (n == 0)
		return false;
	if (s[0] == '[') { /* [ipv6]:port */
		const char *rb = memchr(s, ']', n);
		if (!rb || rb == s + 1)
			return false;
		for (const char *p = s + 1; p < rb; p++)
			if (!isxdigit((unsigned char)*p) && *p != ':')
				return false;
		host_end = rb + 1;
		if (host_end == end)
			return true;
		if (*host_end != ':')
			return false;
	} else {
		const char *colon = memchr(s, ':', n);
		if (colon)
			host_end = colon;
		const char *p = s;
		while (p < host_end) {
			const char *dot = memchr(p, '.', (size_t)(host_end - p));
			const char *ce = dot ? dot : host_end;
			if (!valid_domain_component(p, (size_t)(ce - p)))
				return false;
			p = dot ? dot + 1 : host_end;
			if (dot && p == host_end)
				return false;
		}
	}
	if (host_end < end) { /* :port */
		const char *port = host_end + 1;
		if (port == end || end - port > 5)
			return false;
		for (const char *p = port; p < end; p++)
			if (!isdigit((unsigned char)*p))
				return false;
	}
	return true;
}

static bool valid_tag(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128)
		return false;
	if (!isalnum((unsigned char)s[0]) && s[0] != '_')
		return false;
	for (size_t i = 1; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return false;
	return true;
}

bool mbr_looks_like_id(const char *s)
{
	if (!strncmp(s, "sha256:", 7))
		s += 7;
	size_t n = strlen(s);
	if (n < 12 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
			return false;
	return true;
}

int mbr_ref_parse(const char *s, struct mbr_ref *out, mb_err *err)
{
	memset(out, 0, sizeof(*out));
	if (!s || !*s)
		return mb_err_set(err, -EINVAL, "invalid reference: empty");
	size_t len = strlen(s);
	if (len > 512)
		return mb_err_set(err, -EINVAL, "invalid reference: too long");
	for (size_t i = 0; i < len; i++)
		if (isspace((unsigned char)s[i]) || !isprint((unsigned char)s[i]))
			return mb_err_set(
			    err, -EINVAL,
			    "invalid reference format: \"%.100s\" contains whitespace or "
			    "control characters",
			    s);
	char buf[513];
	memcpy(buf, s, len + 1);

	/* digest */
	char *at = strchr(buf, '@');
	if (at) {
		*at = '\0';
		const char *dg = at + 1;
		if (mbr_digest_parse(dg, NULL, err) < 0)
			return mb_err_set(err, -EINVAL, "invalid reference \"%.100s\": bad digest",
			                  s);
		snprintf(out->digest, sizeof(out->digest), "%s", dg);
	}
	/* tag: a ':' after the last '/' */
	char *slash = strrchr(buf, '/');
	char *colon = strrchr(slash ? slash : buf, ':');
	if (colon) {
		*colon = '\0';
		if (!valid_tag(colon + 1))
			return mb_err_set(err, -EINVAL,
			                  "invalid reference \"%.100s\": bad tag \"%.100s\"", s,
			                  colon + 1);
		snprintf(out->tag, sizeof(out->tag), "%s", colon + 1);
	}
	/* name = [domain/]remainder */
	const char *name = buf;
	if (!*name)
		return mb_err_set(err, -EINVAL, "invalid reference \"%.100s\": empty name", s);
	const char *first_slash = strchr(name, '/');
	const char *remainder;
	size_t dlen = first_slash ? (size_t)(first_slash - name) : 0;
	bool has_domain = false;
	if (first_slash) {
		bool upper = false;
		for (size_t i = 0; i < dlen; i++)
			upper = upper || isupper((unsigned char)name[i]);
		has_domain = memchr(name, '.', dlen) || memchr(name, ':', dlen) ||
		             (dlen == 9 && !strncmp(name, "localhost", 9)) || upper;
	}
	if (has_domain) {
		if (!valid_domain(name, dlen))
			return mb_err_set(err, -EINVAL,
			                  "invalid reference \"%.100s\": bad registry host", s);
		if (dlen >= sizeof(out->domain))
			return mb_err_set(err, -EINVAL,
			                  "invalid reference \"%.100s\": host too long", s);
		memcpy(out->domain, name, dlen);
		out->domain[dlen] = '\0';
		remainder = first_slash + 1;
		if (!strcmp(out->domain, "index.docker.io"))
			strcpy(out->domain, MBR_DEFAULT_DOMAIN);
	} else {
		strcpy(out->domain, MBR_DEFAULT_DOMAIN);
		remainder = name;
	}
	/* repository path */
	for (const char *p = remainder; *p; p++)
		if (isupper((unsigned char)*p))
			return mb_err_set(
			    err, -EINVAL,
			    "invalid reference \"%.100s\": repository name must be lowercase", s);
	if (!strcmp(out->domain, MBR_DEFAULT_DOMAIN) && !strchr(remainder, '/')) {
		if (strlen(remainder) == 64 && mbr_looks_like_id(remainder))
			return mb_err_set(
			    err, -EINVAL,
			    "invalid reference \"%.100s\": a 64-character hex string is an "
			    "image id, not a repository name",
			    s);
		if (snprintf(out->path, sizeof(out->path), "library/%s", remainder) >=
		    (int)sizeof(out->path))
			return mb_err_set(err, -EINVAL,
			                  "invalid reference \"%.100s\": name too long", s);
	} else {
		if (strlen(remainder) >= sizeof(out->path))
			return mb_err_set(err, -EINVAL,
			                  "invalid reference \"%.100s\": name too long", s);
		strcpy(out->path, remainder);
	}
	const char *p = out->path;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (!valid_path_component(p, n))
			return mb_err_set(
			    err, -EINVAL,
			    "invalid reference format: \"%.100s\" (repository path component "
			    "\"%.*s\" must be lowercase letters, digits and single "
			    "separators)",
			    s, (int)n, p);
		p += n;
		if (*p == '/') {
			p++;
			if (!*p)
				return mb_err_set(err, -EINVAL,
				                  "invalid reference \"%.100s\": trailing '/'", s);
		}
	}
	if (strlen(out->domain) + 1 + strlen(out->path) > MBR_NAME_MAX)
		return mb_err_set(err, -EINVAL,
		                  "invalid reference \"%.100s\": repository name longer than %d "
		                  "characters",
		                  s, MBR_NAME_MAX);
	if (!out->tag[0] && !out->digest[0])
		strcpy(out->tag, "latest");
	return 0;
}

int mbr_ref_name(const struct mbr_ref *r, char *buf, size_t n)
{
	int k = snprintf(buf, n, "%s/%s", r->domain, r->path);
	return k < 0 || (size_t)k >= n ? -ENOSPC : k;
}

int mbr_ref_string(const struct mbr_ref *r, char *buf, size_t n)
{
	int k = snprintf(buf, n, "%s/%s%s%s%s%s", r->domain, r->path, r->tag[0] ? ":" : "", r->tag,
	                 r->digest[0] ? "@" : "", r->digest);
	return k < 0 || (size_t)k >= n ? -ENOSPC : k;
}

int mbr_ref_familiar(const struct mbr_ref *r, char *buf, size_t n)
{
	const char *path = r->path;
	int k;
	if (!strcmp(r->domain, MBR_DEFAULT_DOMAIN)) {
		if (!strncmp(path, "library/", 8) && !strchr(path + 8, '/'))
			path += 8;
		k = snprintf(buf, n, "%s", path);
	} else {
		k = snprintf(buf, n, "%s/%s", r->domain, path);
	}
	if (k < 0 || (size_t)k >= n)
		return -ENOSPC;
	int k2 = snprintf(buf + k, n - (size_t)k, "%s%s%s%s", r->tag[0] ? ":" : "", r->tag,
	                  r->digest[0] ? "@" : "", r->digest);
	return k2 < 0 || (size_t)(k + k2) >= n ? -ENOSPC : k + k2;
}

const char *mbr_ref_api_host(const struct mbr_ref *r)
{
	return strcmp(r->domain, MBR_DEFAULT_DOMAIN) ? r->domain : "registry-1.docker.io";
}

bool mbr_host_is_loopback(const char *domain)
{
	char host[MBR_NAME_MAX + 1];
	snprintf(host, sizeof(host), "%s", domain);
	if (host[0] == '[') {
		char *rb = strchr(host, ']');
		if (rb)
			rb[1] = '\0';
		return !strcmp(host, "[::1]");
	}
	char *colon = strchr(host, ':');
	if (colon)
		*colon = '\0';
	/* 127.0.0.0/8 only as a literal address: "127.example.com" is somebody's host */
	struct in_addr a;
	return !strcmp(host, "localhost") ||
	       (inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127);
}

int mbr_registry_key(const char *in, char *buf, size_t n)
{
	const char *s = in;
	if (!strncmp(s, "https://", 8))
		s += 8;
	else if (!strncmp(s, "http://", 7))
		s += 7;
	size_t len = strcspn(s, "/");
	if (len == 0 || len >= n)
		return -EINVAL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	for (char *p = buf; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	if (!strcmp(buf, "index.docker.io") || !strcmp(buf, "registry-1.docker.io") ||
	    !strcmp(buf, "registry.hub.docker.com"))
		snprintf(buf, n, "%s", MBR_DEFAULT_DOMAIN);
	return 0;
}
