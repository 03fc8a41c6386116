#include "client.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ref.h"

#define ERRBODY_LIMIT       (64u << 10)
#define MAX_BACKOFF_MS      8000
#define MAX_HOST_CHALLENGES 64

struct host_challenge {
	char host[256];
	struct mbr_challenge ch;
};

/* Hosts' last Bearer challenges, so a cached token can be sent up front. A tiny fixed
 * table keyed by host, shared by all clients of the process (loop thread only). */
static struct host_challenge challenges[MAX_HOST_CHALLENGES];

static const struct mbr_challenge *challenge_get(const char *host)
{
	for (int i = 0; i < MAX_HOST_CHALLENGES; i++)
		if (challenges[i].host[0] && !strcmp(challenges[i].host, host))
			return &challenges[i].ch;
	return NULL;
}

static void challenge_put(const char *host, const struct mbr_challenge *ch)
{
	int slot = -1;
	for (int i = 0; i < MAX_HOST_CHALLENGES && slot < 0; i++)
		if (!challenges[i].host[0] || !strcmp(challenges[i].host, host))
			slot = i;
	if (slot < 0)
		slot = (int)(mbr_now_ms() % MAX_HOST_CHALLENGES);
	snprintf(challenges[slot].host, sizeof(challenges[slot].host), "%s", host);
	challenges[slot].ch = *ch;
}

const char *mbr_err_code_name(int code)
{
	switch (code) {
	case 0:
		return "ok";
	case MBR_E_NOT_FOUND:
		return "not_found";
	case MBR_E_UNAUTHORIZED:
	case -EPERM:
		return "unauthorized";
	case MBR_E_UNREACHABLE:
	case -ETIMEDOUT:
	case -ECONNREFUSED:
		return "unreachable";
	case MBR_E_CORRUPT:
		return "corrupt";
	case MBR_E_NO_SPACE:
	case -EDQUOT:
		return "no_space";
	case MBR_E_INVALID:
	case -ENOTSUP:
	case -ENAMETOOLONG:
	case -EFBIG:
		return "invalid";
	case MBR_E_CONFLICT:
	case -EEXIST:
		return "conflict";
	case -ECANCELED:
		return "cancelled";
	default:
		return "error";
	}
}

mbr_client *mbr_client_new(const struct mbr_io *io, mb_err *err)
{
	mbr_client *c = calloc(1, sizeof(*c));
	if (!c || !(c->tokens = mbr_token_cache_new())) {
		free(c);
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	c->io = io;
	c->max_retries = 4;
	c->backoff_ms = 250;
	c->connect_timeout_ms = 10000;
	c->low_speed_time_s = 60;
	snprintf(c->user_agent, sizeof(c->user_agent), "moonbox-registry/0.1");
	return c;
}

void mbr_client_free(mbr_client *c)
{
	if (!c)
		return;
	mbr_token_cache_free(c->tokens);
	mbr_strset_free(&c->basic_hosts);
	mbr_strset_free(&c->insecure);
	free(c);
}

const char *mbr_client_scheme(const mbr_client *c, const char *host, bool force_insecure)
{
	if (force_insecure || mbr_host_is_loopback(host) || mbr_strset_has(&c->insecure, host))
		return "http";
	return "https";
}

struct mbr_req {
	mbr_client *c;
	char *url, *accept, *scope, *host;
	struct mbr_cred cred;
	mbr_blobw *blob;
	size_t mem_limit;
	bool head;
	mbr_req_progress_fn progress;
	mbr_req_done_fn done;
	void *arg;

	CURL *easy;
	struct curl_slist *hdrs;
	bool easy_in_multi;
	void *timer;
	int attempts;
	bool tried_token;
	bool send_basic;
	char *bearer;

	/* response */
	long status;
	mbr_buf body;
	mbr_buf errbody;
	char content_type[128];
	char docker_digest[80];
	char www_auth[2048];
	long retry_after;
	bool body_started;
	uint64_t range_start;
	mb_err werr;
	bool werr_set;

	/* token sub-request */
	struct mbr_challenge ch;
	CURL *tok_easy;
	mbr_buf tokbody;
	bool tok_in_multi;
};

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
	mbr_req *r = ud;
	size_t n = sz * nm;
	char line[2200];
	size_t l = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
	memcpy(line, p, l);
	line[l] = '\0';
	trim(line);
	if (!strncmp(line, "HTTP/", 5)) { /* a new response (redirect, 100, retry) */
		r->content_type[0] = r->docker_digest[0] = r->www_auth[0] = '\0';
		r->retry_after = 0;
		return n;
	}
	char *colon = strchr(line, ':');
	if (!colon)
		return n;
	*colon = '\0';
	char *v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	if (!strcasecmp(line, "content-type"))
		snprintf(r->content_type, sizeof(r->content_type), "%s", v);
	else if (!strcasecmp(line, "docker-content-digest"))
		snprintf(r->docker_digest, sizeof(r->docker_digest), "%s", v);
	else if (!strcasecmp(line, "www-authenticate") && !r->www_auth[0])
		snprintf(r->www_auth, sizeof(r->www_auth), "%s", v);
	else if (!strcasecmp(line, "retry-after"))
		r->retry_after = strtol(v, NULL, 10);
	return n;
}

static size_t on_write(char *p, size_t sz, size_t nm, void *ud)
{
	mbr_req *r = ud;
	size_t n = sz * nm;
	long code = 0;
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
	if (code < 200 || code >= 300) {
		if (r->errbody.len < ERRBODY_LIMIT)
			mbr_buf_append(&r->errbody, p,
			               n < ERRBODY_LIMIT - r->errbody.len
			                   ? n
			                   : ERRBODY_LIMIT - r->errbody.len);
		return n;
	}
	if (r->blob) {
		if (!r->body_started) {
			r->body_started = true;
			if (r->range_start > 0 && code == 200) { /* Range ignored: start over */
				if (mbr_blobw_rewind(r->blob, &r->werr) < 0) {
					r->werr_set = true;
					return 0;
				}
			}
		}
		if (mbr_blobw_write(r->blob, p, n, &r->werr) < 0) {
			r->werr_set = true;
			return 0;
		}
		if (r->progress)
			r->progress(r, mbr_blobw_offset(r->blob), r->arg);
		return n;
	}
	int e = mbr_buf_append(&r->body, p, n);
	if (e < 0) {
		mb_err_set(&r->werr, e == -EFBIG ? -EFBIG : -ENOMEM, "response from %s too large",
		           r->host);
		r->werr_set = true;
		return 0;
	}
	return n;
}

static size_t on_token_write(char *p, size_t sz, size_t nm, void *ud)
{
	mbr_req *r = ud;
	return mbr_buf_append(&r->tokbody, p, sz * nm) < 0 ? 0 : sz * nm;
}

static void common_opts(mbr_req *r, CURL *e)
{
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, r->c->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, r->c->low_speed_time_s);
	curl_easy_setopt(e, CURLOPT_USERAGENT, r->c->user_agent);
	curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL);
}

static void on_done(CURL *easy, CURLcode res, void *arg);
static void on_token_done(CURL *easy, CURLcode res, void *arg);

static void finish(mbr_req *r, const mb_err *err)
{
	r->done(r, err, r->arg);
}

static int start_attempt(mbr_req *r, mb_err *err)
{
	r->status = 0;
	r->body.len = 0;
	if (r->body.data)
		r->body.data[0] = '\0';
	mbr_buf_free(&r->errbody);
	r->body_started = false;
	r->werr_set = false;
	r->content_type[0] = r->docker_digest[0] = r->www_auth[0] = '\0';
	r->retry_after = 0;
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;

	/* a cached token for this scope, if the host is known to want one */
	const struct mbr_challenge *ch = challenge_get(r->host);
	if (!r->bearer && ch && ch->scheme == MBR_AUTH_BEARER) {
		const char *t = mbr_token_cache_get(r->c->tokens, ch->realm, ch->service, r->scope,
		                                    r->cred.username, mbr_now_ms());
		if (t)
			r->bearer = strdup(t);
	}
	if (!r->send_basic && r->cred.username && mbr_strset_has(&r->c->basic_hosts, r->host))
		r->send_basic = true;

	CURL *e = curl_easy_init();
	if (!e)
		return mb_err_set(err, -ENOMEM, "curl_easy_init failed");
	common_opts(r, e);
	curl_easy_setopt(e, CURLOPT_URL, r->url);
	if (r->head)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	if (r->accept) {
		char *h = mbr_sprintf("Accept: %s", r->accept);
		if (h)
			r->hdrs = curl_slist_append(r->hdrs, h);
		free(h);
	}
	if (r->bearer) {
		char *h = mbr_sprintf("Authorization: Bearer %s", r->bearer);
		if (h)
			r->hdrs = curl_slist_append(r->hdrs, h);
		if (h)
			explicit_bzero(h, strlen(h));
		free(h);
	} else if (r->send_basic && r->cred.username) {
		curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		curl_easy_setopt(e, CURLOPT_USERNAME, r->cred.username);
		curl_easy_setopt(e, CURLOPT_PASSWORD, r->cred.password ? r->cred.password : "");
	}
	if (r->hdrs)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
	r->range_start = 0;
	if (r->blob) {
		r->range_start = mbr_blobw_offset(r->blob);
		if (r->range_start > 0) {
			char range[48];
			snprintf(range, sizeof(range), "%llu-", (unsigned long long)r->range_start);
			curl_easy_setopt(e, CURLOPT_RANGE, range);
		}
	} else {
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 120000L);
	}
	r->easy = e;
	int rc = r->c->io->curl_add(r->c->io->ud, e, on_done, r, err);
	if (rc < 0) {
		curl_easy_cleanup(e);
		r->easy = NULL;
		return rc;
	}
	r->easy_in_multi = true;
	r->attempts++;
	return 0;
}

static void retry_timer(void *arg)
{
	mbr_req *r = arg;
	r->timer = NULL;
	mb_err err = { 0 };
	if (start_attempt(r, &err) < 0)
		finish(r, &err);
}

/* Retry later if attempts remain, else fail with err. */
static void retry_or_fail(mbr_req *r, const mb_err *err)
{
	if (r->attempts > r->c->max_retries) {
		mb_err e2;
		mb_err_set(&e2, err->code, "%s (gave up after %d attempts)", err->msg, r->attempts);
		finish(r, &e2);
		return;
	}
	uint64_t delay = r->c->backoff_ms << (r->attempts > 6 ? 6 : r->attempts - 1);
	if (delay > MAX_BACKOFF_MS)
		delay = MAX_BACKOFF_MS;
	delay += mbr_now_ms() % (delay / 4 + 1); /* jitter */
	if (r->retry_after > 0)
		delay = (uint64_t)(r->retry_after > 30 ? 30 : r->retry_after) * 1000;
	if (r->c->io->log) {
		char m[400];
		snprintf(m, sizeof(m), "registry: %s; retrying in %llu ms", err->msg,
		         (unsigned long long)delay);
		r->c->io->log(r->c->io->ud, MB_LOG_WARN, m);
	}
	r->timer = r->c->io->timer_start(r->c->io->ud, delay, retry_timer, r);
}

/* "MANIFEST_UNKNOWN: manifest unknown" from a registry error body, else "". */
static void registry_message(const mbr_buf *b, char *out, size_t cap)
{
	out[0] = '\0';
	if (!b->len)
		return;
	json_t *j = json_loadb(b->data, b->len, 0, NULL);
	json_t *e0 = json_array_get(json_object_get(j, "errors"), 0);
	const char *code = json_string_value(json_object_get(e0, "code"));
	const char *msg = json_string_value(json_object_get(e0, "message"));
	if (!msg)
		msg = json_string_value(json_object_get(j, "details"));
	if (msg || code)
		snprintf(out, cap, "%s%s%s", msg ? msg : "", code && msg ? " " : "",
		         code ? code : "");
	if (code && msg) /* "manifest unknown (MANIFEST_UNKNOWN)" */
		snprintf(out, cap, "%s (%s)", msg, code);
	json_decref(j);
}

static void start_token_fetch(mbr_req *r)
{
	mb_err err = { 0 };
	const char *scope = r->ch.scope[0] ? r->ch.scope : r->scope;
	char *url = mbr_token_url(&r->ch, scope, r->cred.username);
	CURL *e = curl_easy_init();
	if (!url || !e) {
		free(url);
		if (e)
			curl_easy_cleanup(e);
		mb_err_set(&err, -ENOMEM, "out of memory");
		finish(r, &err);
		return;
	}
	common_opts(r, e);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_token_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	mbr_buf_free(&r->tokbody);
	r->tokbody.limit = 1 << 20;
	char *form = NULL;
	if (r->cred.token && !r->cred.token_is_registry) {
		/* OAuth2 refresh-token grant with an identity token */
		char *rt = curl_easy_escape(e, r->cred.token, 0);
		char *sv = curl_easy_escape(e, r->ch.service, 0);
		char *sc = curl_easy_escape(e, scope ? scope : "", 0);
		form = mbr_sprintf("grant_type=refresh_token&client_id=moonbox&refresh_token=%s&"
		                   "service=%s&scope=%s",
		                   rt, sv, sc);
		curl_free(rt);
		curl_free(sv);
		curl_free(sc);
		curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, form ? form : "");
		if (form)
			explicit_bzero(form, strlen(form));
		free(form);
	} else if (r->cred.username) {
		curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		curl_easy_setopt(e, CURLOPT_USERNAME, r->cred.username);
		curl_easy_setopt(e, CURLOPT_PASSWORD, r->cred.password ? r->cred.password : "");
	}
	free(url);
	r->tok_easy = e;
	if (r->c->io->curl_add(r->c->io->ud, e, on_token_done, r, &err) < 0) {
		curl_easy_cleanup(e);
		r->tok_easy = NULL;
		finish(r, &err);
		return;
	}
	r->tok_in_multi = true;
}

static void on_token_done(CURL *easy, CURLcode res, void *arg)
{
	mbr_req *r = arg;
	mb_err err = { 0 };
	long code = 0;
	r->tok_in_multi = false;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
	char cerr[128];
	snprintf(cerr, sizeof(cerr), "%s", curl_easy_strerror(res));
	curl_easy_cleanup(easy);
	r->tok_easy = NULL;
	if (res != CURLE_OK) {
		mb_err_set(&err, MBR_E_UNREACHABLE, "cannot reach the token server %s: %s",
		           r->ch.realm, cerr);
		retry_or_fail(r, &err);
		return;
	}
	if (code == 401 || code == 403) {
		char msg[200];
		registry_message(&r->tokbody, msg, sizeof(msg));
		if (r->cred.username || r->cred.token)
			mb_err_set(
			    &err, MBR_E_UNAUTHORIZED,
			    "%s: incorrect username or password (token server: HTTP %ld%s%s)",
			    r->host, code, msg[0] ? ", " : "", msg);
		else
			mb_err_set(&err, MBR_E_UNAUTHORIZED,
			           "%s: the token server refused anonymous access (HTTP %ld)",
			           r->host, code);
		finish(r, &err);
		return;
	}
	if (code == 429 || code >= 500) {
		mb_err_set(&err, MBR_E_UNREACHABLE, "token server %s answered HTTP %ld",
		           r->ch.realm, code);
		retry_or_fail(r, &err);
		return;
	}
	char *tok = NULL;
	int64_t exp = 0;
	if (code != 200 || mbr_token_parse(r->tokbody.data ? r->tokbody.data : "", r->tokbody.len,
	                                   &tok, &exp, &err) < 0) {
		if (code != 200)
			mb_err_set(&err, -EPROTO, "token server %s answered HTTP %ld", r->ch.realm,
			           code);
		finish(r, &err);
		return;
	}
	explicit_bzero(r->tokbody.data, r->tokbody.len);
	const char *scope = r->ch.scope[0] ? r->ch.scope : r->scope;
	uint64_t ttl = (uint64_t)exp * 1000;
	mbr_token_cache_put(r->c->tokens, r->ch.realm, r->ch.service, scope, r->cred.username, tok,
	                    mbr_now_ms() + (ttl > 20000 ? ttl - 10000 : ttl / 2));
	if (strcmp(scope, r->scope ? r->scope : "")) /* also under the scope we will look up */
		mbr_token_cache_put(r->c->tokens, r->ch.realm, r->ch.service, r->scope,
		                    r->cred.username, tok,
		                    mbr_now_ms() + (ttl > 20000 ? ttl - 10000 : ttl / 2));
	free(r->bearer);
	r->bearer = tok;
	r->tried_token = true;
	if (start_attempt(r, &err) < 0)
		finish(r, &err);
}

static void handle_401(mbr_req *r)
{
	mb_err err = { 0 };
	char msg[300];
	registry_message(&r->errbody, msg, sizeof(msg));
	struct mbr_challenge ch;
	if (mbr_challenge_parse(r->www_auth, &ch, NULL) < 0) {
		mb_err_set(&err, MBR_E_UNAUTHORIZED, "%s requires authentication: %s", r->host,
		           msg[0] ? msg : "unsupported challenge");
		finish(r, &err);
		return;
	}
	bool have_cred = r->cred.username || r->cred.token;
	if (ch.scheme == MBR_AUTH_BASIC) {
		if (r->cred.username && !r->send_basic) {
			r->send_basic = true;
			mbr_strset_add(&r->c->basic_hosts, r->host);
			if (start_attempt(r, &err) < 0)
				finish(r, &err);
			return;
		}
		mb_err_set(&err, MBR_E_UNAUTHORIZED, "%s: %s", r->host,
		           have_cred ? "incorrect username or password"
		                     : "authentication required (no credentials given)");
		finish(r, &err);
		return;
	}
	/* Bearer */
	challenge_put(r->host, &ch);
	if (r->tried_token) {
		if (!strcmp(ch.error, "insufficient_scope") || !ch.error[0])
			mb_err_set(&err, MBR_E_UNAUTHORIZED,
			           "pull access denied for %s: the repository does not exist or "
			           "needs %scredentials%s%s",
			           r->scope ? r->scope : r->host, have_cred ? "other " : "",
			           msg[0] ? ": " : "", msg);
		else
			mb_err_set(&err, MBR_E_UNAUTHORIZED, "%s rejected the token: %s", r->host,
			           ch.error);
		finish(r, &err);
		return;
	}
	free(r->bearer);
	r->bearer = NULL;
	r->ch = ch;
	start_token_fetch(r);
}

static void on_done(CURL *easy, CURLcode res, void *arg)
{
	mbr_req *r = arg;
	mb_err err = { 0 };
	r->easy_in_multi = false;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r->status);
	char cerr[160];
	snprintf(cerr, sizeof(cerr), "%s", curl_easy_strerror(res));
	curl_easy_cleanup(easy);
	r->easy = NULL;
	if (r->werr_set) { /* our own write failure: disk full, oversize, ... */
		finish(r, &r->werr);
		return;
	}
	if (res == CURLE_PARTIAL_FILE) {
		/* the body ended early: retried with Range; if it keeps happening the registry's
		 * copy is short, which makes the blob corrupt, not the registry unreachable */
		mb_err_set(&err, MBR_E_CORRUPT, "%s sent a truncated body for %s", r->host, r->url);
		retry_or_fail(r, &err);
		return;
	}
	if (res != CURLE_OK) {
		mb_err_set(&err, MBR_E_UNREACHABLE, "cannot reach %s: %s", r->host, cerr);
		retry_or_fail(r, &err);
		return;
	}
	char msg[300];
	long s = r->status;
	if (s >= 200 && s < 300) {
		finish(r, NULL);
		return;
	}
	registry_message(&r->errbody, msg, sizeof(msg));
	if (s == 401) {
		handle_401(r);
		return;
	}
	if (s == 416 && r->blob && r->range_start > 0) { /* stale partial file */
		if (mbr_blobw_rewind(r->blob, &err) < 0 || start_attempt(r, &err) < 0)
			finish(r, &err);
		return;
	}
	if (s == 404) {
		mb_err_set(&err, MBR_E_NOT_FOUND, "%s", msg[0] ? msg : "not found");
		finish(r, &err);
		return;
	}
	if (s == 403) {
		mb_err_set(&err, MBR_E_UNAUTHORIZED, "%s: access denied%s%s", r->host,
		           msg[0] ? ": " : "", msg);
		finish(r, &err);
		return;
	}
	if (s == 408 || s == 429 || s >= 500) {
		mb_err_set(&err, MBR_E_UNREACHABLE, "%s answered HTTP %ld%s%s", r->host, s,
		           msg[0] ? ": " : "", msg);
		retry_or_fail(r, &err);
		return;
	}
	mb_err_set(&err, -EPROTO, "%s answered HTTP %ld%s%s", r->host, s, msg[0] ? ": " : "", msg);
	finish(r, &err);
}

mbr_req *mbr_req_start(mbr_client *c, const struct mbr_req_opts *o, mbr_req_done_fn done, void *arg,
                       mb_err *err)
{
	mbr_req *r = calloc(1, sizeof(*r));
	if (!r) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	r->c = c;
	r->url = mbr_strdup(o->url);
	r->accept = mbr_strdup(o->accept);
	r->scope = mbr_strdup(o->scope ? o->scope : "");
	r->host = mbr_strdup(o->host ? o->host : "registry");
	r->blob = o->blob;
	r->mem_limit = o->mem_limit ? o->mem_limit : (4u << 20);
	r->body.limit = r->mem_limit;
	r->head = o->head;
	r->progress = o->progress;
	r->done = done;
	r->arg = arg;
	if (!r->url || !r->scope || !r->host || (o->accept && !r->accept) ||
	    (o->cred && mbr_cred_copy(&r->cred, o->cred) < 0)) {
		mb_err_set(err, -ENOMEM, "out of memory");
		mbr_req_free(r);
		return NULL;
	}
	if (r->cred.token && r->cred.token_is_registry) {
		r->bearer = strdup(r->cred.token);
		r->tried_token = true;
	}
	if (start_attempt(r, err) < 0) {
		mbr_req_free(r);
		return NULL;
	}
	return r;
}

void mbr_req_free(mbr_req *r)
{
	if (!r)
		return;
	if (r->easy) {
		if (r->easy_in_multi)
			r->c->io->curl_remove(r->c->io->ud, r->easy);
		curl_easy_cleanup(r->easy);
	}
	if (r->tok_easy) {
		if (r->tok_in_multi)
			r->c->io->curl_remove(r->c->io->ud, r->tok_easy);
		curl_easy_cleanup(r->tok_easy);
	}
	if (r->timer)
		r->c->io->timer_stop(r->c->io->ud, r->timer);
	curl_slist_free_all(r->hdrs);
	free(r->url);
	free(r->accept);
	free(r->scope);
	free(r->host);
	if (r->bearer) {
		explicit_bzero(r->bearer, strlen(r->bearer));
		free(r->bearer);
	}
	mbr_cred_clear(&r->cred);
	mbr_buf_free(&r->body);
	mbr_buf_free(&r->errbody);
	mbr_buf_free(&r->tokbody);
	free(r);
}

void mbr_req_cancel(mbr_req *r)
{
	mbr_req_free(r);
}

long mbr_req_status(const mbr_req *r)
{
	return r->status;
}

const char *mbr_req_body(const mbr_req *r, size_t *len)
{
	if (len)
		*len = r->body.len;
	return r->body.data ? r->body.data : "";
}

const char *mbr_req_content_type(const mbr_req *r)
{
	return r->content_type;
}

const char *mbr_req_docker_digest(const mbr_req *r)
{
	return r->docker_digest;
}

int mbr_req_attempts(const mbr_req *r)
{
	return r->attempts;
}
