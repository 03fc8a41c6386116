#include "auth.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ref.h"
#include "util.h"

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == ',')
		p++;
	return p;
}

static bool is_token_char(char c)
{
	return isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c);
}

/* Parse one token at p; returns the end. */
static const char *scan_token(const char *p)
{
	while (*p && is_token_char(*p))
		p++;
	return p;
}

static void set_param(struct mbr_challenge *ch, const char *k, size_t klen, const char *v)
{
	char *dst = NULL;
	size_t cap = 0;
	if (klen == 5 && !strncasecmp(k, "realm", 5)) {
		dst = ch->realm;
		cap = sizeof(ch->realm);
	} else if (klen == 7 && !strncasecmp(k, "service", 7)) {
		dst = ch->service;
		cap = sizeof(ch->service);
	} else if (klen == 5 && !strncasecmp(k, "scope", 5)) {
		dst = ch->scope;
		cap = sizeof(ch->scope);
	} else if (klen == 5 && !strncasecmp(k, "error", 5)) {
		dst = ch->error;
		cap = sizeof(ch->error);
	}
	if (dst)
		snprintf(dst, cap, "%s", v);
}

int mbr_challenge_parse(const char *hdr, struct mbr_challenge *out, mb_err *err)
{
	struct mbr_challenge cur, best;
	memset(&best, 0, sizeof(best));
	memset(&cur, 0, sizeof(cur));
	bool have_cur = false;
	const char *p = hdr ? hdr : "";
	char val[1024];
	for (;;) {
		p = skip_ws(p);
		if (!*p)
			break;
		const char *t = p;
		const char *te = scan_token(p);
		if (te == t)
			return mb_err_set(err, -EINVAL, "malformed WWW-Authenticate header");
		const char *q = te;
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q == '=' && q[1] != '=') {
			/* auth-param */
			q++;
			while (*q == ' ' || *q == '\t')
				q++;
			size_t n = 0;
			if (*q == '"') {
				q++;
				while (*q && *q != '"') {
					if (*q == '\\' && q[1])
						q++;
					if (n + 1 < sizeof(val))
						val[n++] = *q;
					q++;
				}
				if (*q != '"')
					return mb_err_set(err, -EINVAL,
					                  "malformed WWW-Authenticate header: "
					                  "unterminated quote");
				q++;
			} else {
				while (*q && *q != ',' && *q != ' ' && *q != '\t') {
					if (n + 1 < sizeof(val))
						val[n++] = *q;
					q++;
				}
			}
			val[n] = '\0';
			if (have_cur)
				set_param(&cur, t, (size_t)(te - t), val);
			p = q;
			continue;
		}
		/* a new scheme */
		if (have_cur && cur.scheme != MBR_AUTH_NONE &&
		    (best.scheme == MBR_AUTH_NONE ||
		     (best.scheme == MBR_AUTH_BASIC && cur.scheme == MBR_AUTH_BEARER)))
			best = cur;
		memset(&cur, 0, sizeof(cur));
		have_cur = true;
		size_t sl = (size_t)(te - t);
		if (sl == 5 && !strncasecmp(t, "basic", 5))
			cur.scheme = MBR_AUTH_BASIC;
		else if (sl == 6 && !strncasecmp(t, "bearer", 6))
			cur.scheme = MBR_AUTH_BEARER;
		p = te;
	}
	if (have_cur && cur.scheme != MBR_AUTH_NONE &&
	    (best.scheme == MBR_AUTH_NONE ||
	     (best.scheme == MBR_AUTH_BASIC && cur.scheme == MBR_AUTH_BEARER)))
		best = cur;
	if (best.scheme == MBR_AUTH_NONE)
		return mb_err_set(err, -EINVAL, "unsupported authentication challenge \"%.100s\"",
		                  hdr ? hdr : "");
	if (best.scheme == MBR_AUTH_BEARER && !best.realm[0])
		return mb_err_set(err, -EINVAL, "bearer challenge without realm");
	*out = best;
	return 0;
}

void mbr_cred_clear(struct mbr_cred *c)
{
	char **fields[] = { &c->username, &c->password, &c->token };
	for (size_t i = 0; i < 3; i++) {
		if (*fields[i]) {
			explicit_bzero(*fields[i], strlen(*fields[i]));
			free(*fields[i]);
			*fields[i] = NULL;
		}
	}
	c->token_is_registry = false;
}

int mbr_cred_copy(struct mbr_cred *dst, const struct mbr_cred *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->username = mbr_strdup(src->username);
	dst->password = mbr_strdup(src->password);
	dst->token = mbr_strdup(src->token);
	dst->token_is_registry = src->token_is_registry;
	if ((src->username && !dst->username) || (src->password && !dst->password) ||
	    (src->token && !dst->token)) {
		mbr_cred_clear(dst);
		return -ENOMEM;
	}
	return 0;
}

bool mbr_cred_empty(const struct mbr_cred *c)
{
	return !c || ((!c->username || !*c->username) && (!c->token || !*c->token));
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

int mbr_base64_decode(const char *in, size_t len, char **out, size_t *outlen)
{
	char *o = malloc(len / 4 * 3 + 4);
	if (!o)
		return -ENOMEM;
	size_t n = 0;
	uint32_t acc = 0;
	int bits = 0;
	size_t i;
	for (i = 0; i < len; i++) {
		char c = in[i];
		if (c == '=' || c == '\n' || c == '\r')
			break;
		int v = b64val(c);
		if (v < 0) {
			free(o);
			return -EINVAL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			o[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	for (; i < len; i++)
		if (in[i] != '=' && in[i] != '\n' && in[i] != '\r') {
			free(o);
			return -EINVAL;
		}
	o[n] = '\0';
	*out = o;
	if (outlen)
		*outlen = n;
	return 0;
}

char *mbr_base64_encode(const void *in, size_t len)
{
	static const char tbl[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = in;
	char *o = malloc((len + 2) / 3 * 4 + 1);
	if (!o)
		return NULL;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		o[n++] = tbl[(v >> 18) & 63];
		o[n++] = tbl[(v >> 12) & 63];
		o[n++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
		o[n++] = i + 2 < len ? tbl[v & 63] : '=';
	}
	o[n] = '\0';
	return o;
}

static char *json_strdup_field(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s && *s ? strdup(s) : NULL;
}

int mbr_cred_from_x_registry_auth(const char *hdr, struct mbr_cred *c, mb_err *err)
{
	memset(c, 0, sizeof(*c));
	char *raw = NULL;
	size_t rawlen = 0;
	if (!hdr || mbr_base64_decode(hdr, strlen(hdr), &raw, &rawlen) < 0)
		return mb_err_set(err, -EINVAL, "X-Registry-Auth is not valid base64");
	json_error_t je;
	json_t *j = json_loadb(raw, rawlen, 0, &je);
	explicit_bzero(raw, rawlen);
	free(raw);
	if (!json_is_object(j)) {
		json_decref(j);
		return mb_err_set(err, -EINVAL, "X-Registry-Auth is not a JSON object");
	}
	c->username = json_strdup_field(j, "username");
	c->password = json_strdup_field(j, "password");
	char *idt = json_strdup_field(j, "identitytoken");
	char *rt = json_strdup_field(j, "registrytoken");
	if (rt) {
		c->token = rt;
		c->token_is_registry = true;
		free(idt);
	} else {
		c->token = idt;
	}
	/* wipe secrets held by jansson */
	json_t *pw = json_object_get(j, "password");
	if (json_is_string(pw))
		explicit_bzero((char *)json_string_value(pw), json_string_length(pw));
	json_decref(j);
	return 0;
}

int mbr_cred_from_docker_config(const char *json_text, const char *registry, struct mbr_cred *c,
                                mb_err *err)
{
	memset(c, 0, sizeof(*c));
	json_error_t je;
	json_t *j = json_loads(json_text, 0, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		return mb_err_set(err, -EINVAL, "docker config: %s", je.text);
	}
	char want[300];
	if (mbr_registry_key(registry, want, sizeof(want)) < 0) {
		json_decref(j);
		return mb_err_set(err, -EINVAL, "bad registry name");
	}
	json_t *auths = json_object_get(j, "auths");
	const char *key;
	json_t *ent;
	int r = -ENOENT;
	json_object_foreach(auths, key, ent)
	{
		char k[300];
		if (mbr_registry_key(key, k, sizeof(k)) < 0 || strcmp(k, want))
			continue;
		const char *a = json_string_value(json_object_get(ent, "auth"));
		if (a && *a) {
			char *dec = NULL;
			size_t dl = 0;
			if (mbr_base64_decode(a, strlen(a), &dec, &dl) < 0) {
				r = mb_err_set(err, -EINVAL, "docker config: bad auth for %s", key);
				break;
			}
			char *colon = strchr(dec, ':');
			if (colon) {
				*colon = '\0';
				c->username = strdup(dec);
				c->password = strdup(colon + 1);
			}
			explicit_bzero(dec, dl);
			free(dec);
		} else {
			c->username = json_strdup_field(ent, "username");
			c->password = json_strdup_field(ent, "password");
		}
		c->token = json_strdup_field(ent, "identitytoken");
		r = mbr_cred_empty(c) ? -ENOENT : 0;
		break;
	}
	json_decref(j);
	return r;
}

static int url_escape(mbr_buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	int r = 0;
	for (; *s && r == 0; s++) {
		unsigned char c = (unsigned char)*s;
		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
			r = mbr_buf_append(b, s, 1);
		} else {
			char e[3] = { '%', hex[c >> 4], hex[c & 15] };
			r = mbr_buf_append(b, e, 3);
		}
	}
	return r;
}

char *mbr_token_url(const struct mbr_challenge *ch, const char *scope, const char *account)
{
	mbr_buf b = { 0 };
	char sep = strchr(ch->realm, '?') ? '&' : '?';
	int r = mbr_buf_append(&b, ch->realm, strlen(ch->realm));
	const char *keys[] = { "service", "scope", "account" };
	const char *vals[] = { ch->service, scope, account };
	for (int i = 0; i < 3 && r == 0; i++) {
		if (!vals[i] || !*vals[i])
			continue;
		/* scope may hold several space-separated scopes: one parameter each */
		const char *v = vals[i];
		while (*v && r == 0) {
			size_t n = i == 1 ? strcspn(v, " ") : strlen(v);
			char one[1024];
			snprintf(one, sizeof(one), "%.*s", (int)n, v);
			if (n) {
				r = mbr_buf_append(&b, &sep, 1);
				sep = '&';
				if (r == 0)
					r = mbr_buf_append(&b, keys[i], strlen(keys[i]));
				if (r == 0)
					r = mbr_buf_append(&b, "=", 1);
				if (r == 0)
					r = url_escape(&b, one);
			}
			v += n;
			while (*v == ' ')
				v++;
		}
	}
	if (r < 0) {
		mbr_buf_free(&b);
		return NULL;
	}
	return mbr_buf_steal(&b, NULL);
}

int mbr_token_parse(const char *body, size_t len, char **token, int64_t *expires_in, mb_err *err)
{
	json_error_t je;
	json_t *j = json_loadb(body, len, 0, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		return mb_err_set(err, -EPROTO, "token server answered invalid JSON");
	}
	const char *t = json_string_value(json_object_get(j, "token"));
	if (!t || !*t)
		t = json_string_value(json_object_get(j, "access_token"));
	if (!t || !*t) {
		json_decref(j);
		return mb_err_set(err, -EPROTO, "token server answered without a token");
	}
	*token = strdup(t);
	json_int_t e = json_integer_value(json_object_get(j, "expires_in"));
	*expires_in = e >= 60 ? e : 60; /* the spec's minimum */
	json_decref(j);
	return *token ? 0 : mb_err_set(err, -ENOMEM, "out of memory");
}

struct tok {
	struct tok *next;
	char *key;
	char *token;
	uint64_t expires_at;
};

struct mbr_token_cache {
	struct tok *head;
};

mbr_token_cache *mbr_token_cache_new(void)
{
	return calloc(1, sizeof(mbr_token_cache));
}

void mbr_token_cache_clear(mbr_token_cache *tc)
{
	struct tok *t = tc->head;
	while (t) {
		struct tok *n = t->next;
		free(t->key);
		explicit_bzero(t->token, strlen(t->token));
		free(t->token);
		free(t);
		t = n;
	}
	tc->head = NULL;
}

void mbr_token_cache_free(mbr_token_cache *tc)
{
	if (!tc)
		return;
	mbr_token_cache_clear(tc);
	free(tc);
}

static char *tok_key(const char *realm, const char *service, const char *scope, const char *account)
{
	return mbr_sprintf("%s\n%s\n%s\n%s", realm ? realm : "", service ? service : "",
	                   scope ? scope : "", account ? account : "");
}

const char *mbr_token_cache_get(mbr_token_cache *tc, const char *realm, const char *service,
                                const char *scope, const char *account, uint64_t now_ms)
{
	_cleanup_free_ char *k = tok_key(realm, service, scope, account);
	if (!k)
		return NULL;
	for (struct tok **pp = &tc->head; *pp;) {
		struct tok *t = *pp;
		if (t->expires_at <= now_ms) { /* drop expired entries as we go */
			*pp = t->next;
			free(t->key);
			explicit_bzero(t->token, strlen(t->token));
			free(t->token);
			free(t);
			continue;
		}
		if (!strcmp(t->key, k))
			return t->token;
		pp = &t->next;
	}
	return NULL;
}

int mbr_token_cache_put(mbr_token_cache *tc, const char *realm, const char *service,
                        const char *scope, const char *account, const char *token,
                        uint64_t expires_at_ms)
{
	char *k = tok_key(realm, service, scope, account);
	char *tk = strdup(token);
	struct tok *t = calloc(1, sizeof(*t));
	if (!k || !tk || !t) {
		free(k);
		free(tk);
		free(t);
		return -ENOMEM;
	}
	for (struct tok **pp = &tc->head; *pp; pp = &(*pp)->next) {
		if (!strcmp((*pp)->key, k)) {
			struct tok *old = *pp;
			*pp = old->next;
			free(old->key);
			explicit_bzero(old->token, strlen(old->token));
			free(old->token);
			free(old);
			break;
		}
	}
	t->key = k;
	t->token = tk;
	t->expires_at = expires_at_ms;
	t->next = tc->head;
	tc->head = t;
	return 0;
}
