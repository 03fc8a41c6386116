/*
 * The guest agent client: nng req0 over TCP, asynchronous, one nng_ctx + nng_aio per
 * request (guest/PROTOCOL.md). nng callbacks run on nng threads and only post the request
 * back to the loop (G.host->post); the loop thread drives every state change.
 *
 * Authentication is per connection (nng pipe): hello + auth must be answered on the same
 * pipe, which becomes `authed_pipe`. Ordinary requests wait in `queue` until a pipe is
 * authenticated. A reply "not authenticated" means the request travelled on a new
 * connection (nng re-queues unanswered requests after a reconnect): authenticate again and
 * resend it. Timed resends are off (NNG_OPT_REQ_RESENDTIME infinite), so a long poll is
 * never sent twice by nng itself.
 *
 * Lifetimes: an agent holds one reference for its owner plus one per live request and per
 * posted pipe event; it is freed when the last one goes. Requests are freed on the loop
 * thread after their completion ran. After fini (G.dead) or a re-init (gen changed),
 * posted completions only free their memory.
 */
#include "vm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nng/protocol/reqrep0/req.h>

#include "mbp_proto.h"

#define HELLO_TIMEOUT_MS 3000
#define MAX_RESENDS      5

enum rphase { R_NEW, R_QUEUED, R_SEND, R_RECV, R_FAILING, R_DONE };

struct agent {
	struct agent *gnext;
	atomic_int refs;
	unsigned gen;
	nng_socket sock;
	nng_dialer dialer;
	bool sock_open;
	bool slow_redial; /* reconnect backoff raised after the first authentication */
	bool closing;
	bool close_job; /* nng_close runs on a worker */
	bool want;      /* keep (re)authenticating */
	bool authing;   /* hello/auth in flight */
	bool denied;
	bool owner_ref; /* the owner's reference is still held */
	mb_err denied_err;
	char addr[128];
	char token[256];
	const struct agent_ops *ops;
	void *ud;
	uint32_t authed_pipe;
	uint32_t hello_pipe;
	uint8_t hn[MBP_NONCE_LEN];
	struct areq *queue; /* waiting for authentication, FIFO */
	mb_timer *sweep;
	mb_timer *retry;
};

struct areq {
	struct areq *gnext, *gprev; /* G.areqs */
	struct areq *qnext;         /* agent queue */
	struct agent *a;
	unsigned gen;
	nng_ctx ctx;
	bool ctx_open;
	nng_aio *aio;
	atomic_bool posted;
	enum rphase phase;
	uint8_t *buf; /* the encoded request (kept for resends) */
	size_t len;
	uint64_t deadline;
	bool internal; /* hello/auth: not gated by authentication */
	int resends;
	areq_fn fn;
	void *ud;
	mb_timer *ft; /* R_FAILING: a failure found while sending, delivered from a timer */
	mb_err ferr;
};

static void agent_unref(struct agent *a);
static void start_send(struct areq *r);
static void finish(struct areq *r, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                   const mb_err *err);

static int nng_to_errno(int rv)
{
	switch (rv) {
	case NNG_ETIMEDOUT:
		return -ETIMEDOUT;
	case NNG_ECLOSED:
		return -ECONNRESET;
	case NNG_ECANCELED:
		return -ECANCELED;
	case NNG_ECONNREFUSED:
		return -ECONNREFUSED;
	case NNG_ENOMEM:
		return -ENOMEM;
	case NNG_EMSGSIZE:
		return -EMSGSIZE;
	default:
		return -EIO;
	}
}

/* ---- requests ------------------------------------------------------------------------- */

static void req_unlink(struct areq *r)
{
	if (r->gen != G.gen)
		return; /* a list of an older plugin instance */
	if (r->gprev)
		r->gprev->gnext = r->gnext;
	else if (G.areqs == r)
		G.areqs = r->gnext;
	if (r->gnext)
		r->gnext->gprev = r->gprev;
	r->gnext = r->gprev = NULL;
}

/* Ownership: frees r and everything it holds; drops its agent reference. */
static void req_destroy(struct areq *r)
{
	req_unlink(r);
	if (r->aio)
		nng_aio_free(r->aio);
	/* A closing agent's socket closes its own contexts. nng_close runs on a worker
	 * (agent_close), and in nng 1.5 an nng_ctx_close racing with nng_close of the same
	 * socket can let the closer free the socket while the context's teardown still uses
	 * it: the loop crashed that way when a VM died with requests in flight. */
	if (r->ctx_open && !(r->a && r->a->closing))
		nng_ctx_close(r->ctx);
	free(r->buf);
	struct agent *a = r->a;
	free(r);
	if (a)
		agent_unref(a);
}

static void queue_remove(struct agent *a, struct areq *r)
{
	for (struct areq **pp = &a->queue; *pp; pp = &(*pp)->qnext)
		if (*pp == r) {
			*pp = r->qnext;
			r->qnext = NULL;
			return;
		}
}

static void queue_append(struct agent *a, struct areq *r)
{
	r->phase = R_QUEUED;
	r->qnext = NULL;
	struct areq **pp = &a->queue;
	while (*pp)
		pp = &(*pp)->qnext;
	*pp = r;
}

static void finish(struct areq *r, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                   const mb_err *err)
{
	r->phase = R_DONE;
	areq_fn fn = r->fn;
	r->fn = NULL;
	if (fn)
		fn(r->ud, rc, rep, p, plen, err);
	req_destroy(r);
}

static void finish_err(struct areq *r, int rc, const char *what, const char *detail)
{
	mb_err e = { 0 };
	mb_err_set(&e, rc, "%s%s", what, detail);
	finish(r, rc, NULL, NULL, 0, &e);
}

static void on_reply(struct areq *r, nng_msg *msg);
static void agent_connect_now(struct agent *a);

static void step(void *arg)
{
	struct areq *r = arg;
	atomic_store(&r->posted, false);
	if (G.dead || r->gen != G.gen) {
		/* stale completion after fini: only free memory */
		nng_msg *m = nng_aio_get_msg(r->aio);
		int res = nng_aio_result(r->aio);
		if (m && ((r->phase == R_RECV && res == 0) || (r->phase == R_SEND && res != 0)))
			nng_msg_free(m);
		r->fn = NULL;
		req_destroy(r);
		return;
	}
	int rv = nng_aio_result(r->aio);
	if (r->phase == R_SEND) {
		if (rv != 0) {
			nng_msg_free(nng_aio_get_msg(r->aio));
			nng_aio_set_msg(r->aio, NULL);
			r->phase = R_DONE;
			finish_err(r, nng_to_errno(rv),
			           "agent request not sent: ", nng_strerror(rv));
			return;
		}
		r->phase = R_RECV;
		uint64_t now = vm_mono_ms();
		nng_aio_set_timeout(r->aio,
		                    r->deadline > now ? (nng_duration)(r->deadline - now) : 1);
		nng_ctx_recv(r->ctx, r->aio);
		return;
	}
	if (r->phase == R_RECV) {
		if (rv != 0) {
			const char *why = rv == NNG_ETIMEDOUT ? "the agent did not answer in time"
			                                      : nng_strerror(rv);
			finish_err(r, nng_to_errno(rv), "agent: ", why);
			return;
		}
		nng_msg *msg = nng_aio_get_msg(r->aio);
		nng_aio_set_msg(r->aio, NULL);
		on_reply(r, msg);
		return;
	}
	/* R_DONE/R_QUEUED: nothing in flight (a cancelled request completing) */
	if (!r->fn)
		req_destroy(r);
}

static void aio_cb(void *arg)
{
	struct areq *r = arg;
	atomic_store(&r->posted, true);
	G.host->post(step, r);
}

static void on_reply(struct areq *r, nng_msg *msg)
{
	struct agent *a = r->a;
	uint32_t pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
	json_t *hdr = NULL;
	const uint8_t *payload = NULL;
	size_t plen = 0;
	mbp_err pe = { 0 };
	if (mbp_decode(nng_msg_body(msg), nng_msg_len(msg), &hdr, &payload, &plen, &pe) < 0) {
		nng_msg_free(msg);
		finish_err(r, -EBADMSG, "agent sent a malformed reply: ", pe.msg);
		return;
	}
	mb_err e = { 0 };
	int rc = mbp_reply_check(hdr, (mbp_err *)&e);
	if (!r->internal && rc == -EACCES && strstr(e.msg, "not authenticated") && !a->closing &&
	    r->resends < MAX_RESENDS && r->fn) {
		/* sent on a connection we have not authenticated (a reconnect): again */
		json_decref(hdr);
		nng_msg_free(msg);
		if (a->authed_pipe == pipe) {
			a->authed_pipe = 0;
			if (a->ops && a->ops->disconnected)
				a->ops->disconnected(a->ud);
		}
		r->resends++;
		queue_append(a, r);
		agent_connect_now(a);
		return;
	}
	r->phase = R_DONE;
	areq_fn fn = r->fn;
	r->fn = NULL;
	if (r->internal) {
		/* internal completions need the pipe: pass it through e.code of a side channel */
		json_object_set_new(hdr, "_pipe", json_integer(pipe));
	}
	if (fn)
		fn(r->ud, rc, hdr, payload, plen, &e);
	json_decref(hdr);
	nng_msg_free(msg);
	req_destroy(r);
}

static void fail_cb(void *ud)
{
	struct areq *r = ud;
	r->ft = NULL;
	mb_err e = r->ferr;
	finish(r, e.code, NULL, NULL, 0, &e);
}

/* A failure while sending: never complete inside the caller's call (it may not have
 * yielded yet), deliver it from a timer. */
static void fail_later(struct areq *r, int rc, const char *what, const char *detail)
{
	r->phase = R_FAILING;
	mb_err_set(&r->ferr, rc, "%s%s", what, detail);
	r->ft = G.host->timer_start(0, fail_cb, r);
}

static void start_send(struct areq *r)
{
	struct agent *a = r->a;
	int rv = 0;
	if (a->closing) {
		/* never a context on a socket being closed (see req_destroy) */
		fail_later(r, -ECONNRESET, "agent: ", "the VM stopped");
		return;
	}
	if (!r->ctx_open) {
		rv = nng_ctx_open(&r->ctx, a->sock);
		if (rv == 0)
			r->ctx_open = true;
	}
	nng_msg *m = NULL;
	if (rv == 0)
		rv = nng_msg_alloc(&m, 0);
	if (rv == 0)
		rv = nng_msg_append(m, r->buf, r->len);
	if (rv != 0) {
		if (m)
			nng_msg_free(m);
		fail_later(r, nng_to_errno(rv), "agent request: ", nng_strerror(rv));
		return;
	}
	uint64_t now = vm_mono_ms();
	if (r->deadline <= now) {
		nng_msg_free(m);
		fail_later(r, -ETIMEDOUT, "agent: ", "the agent did not answer in time");
		return;
	}
	r->phase = R_SEND;
	nng_aio_set_msg(r->aio, m);
	nng_aio_set_timeout(r->aio, (nng_duration)(r->deadline - now));
	nng_ctx_send(r->ctx, r->aio);
}

/* Ownership: hdr is stolen. Returns NULL with err. */
static struct areq *req_new(struct agent *a, json_t *hdr, const void *data, size_t len,
                            int timeout_ms, areq_fn fn, void *ud, mb_err *err)
{
	struct areq *r = calloc(1, sizeof(*r));
	if (!r) {
		json_decref(hdr);
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	mbp_err pe = { 0 };
	if (mbp_encode(hdr, data, len, &r->buf, &r->len, &pe) < 0) {
		json_decref(hdr);
		free(r);
		mb_err_set(err, pe.code, "%s", pe.msg);
		return NULL;
	}
	json_decref(hdr);
	int rv = nng_aio_alloc(&r->aio, aio_cb, r);
	if (rv != 0) {
		free(r->buf);
		free(r);
		mb_err_set(err, -ENOMEM, "nng_aio_alloc: %s", nng_strerror(rv));
		return NULL;
	}
	r->a = a;
	atomic_fetch_add(&a->refs, 1);
	r->gen = G.gen;
	r->fn = fn;
	r->ud = ud;
	r->deadline = vm_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 60000);
	r->gnext = G.areqs;
	if (G.areqs)
		G.areqs->gprev = r;
	G.areqs = r;
	return r;
}

/* ---- the handshake ----------------------------------------------------------------------- */

static void sweep_cb(void *ud);

static void arm_sweep(struct agent *a)
{
	if (!a->sweep && a->queue && !a->closing)
		a->sweep = G.host->timer_start(250, sweep_cb, a);
}

static void sweep_cb(void *ud)
{
	struct agent *a = ud;
	a->sweep = NULL;
	uint64_t now = vm_mono_ms();
	struct areq **pp = &a->queue;
	while (*pp) {
		struct areq *r = *pp;
		if (r->deadline <= now) {
			*pp = r->qnext;
			r->qnext = NULL;
			if (a->denied)
				finish(r, a->denied_err.code, NULL, NULL, 0, &a->denied_err);
			else
				finish_err(r, -ETIMEDOUT, "agent: ",
				           "not reachable (no authenticated connection)");
			continue;
		}
		pp = &r->qnext;
	}
	arm_sweep(a);
}

static void flush_queue(struct agent *a)
{
	struct areq *q = a->queue;
	a->queue = NULL;
	while (q) {
		struct areq *n = q->qnext;
		q->qnext = NULL;
		start_send(q);
		q = n;
	}
}

static void fail_queue(struct agent *a, int code, const mb_err *err)
{
	struct areq *q = a->queue;
	a->queue = NULL;
	while (q) {
		struct areq *n = q->qnext;
		q->qnext = NULL;
		finish(q, code, NULL, NULL, 0, err);
		q = n;
	}
}

static void retry_cb(void *ud)
{
	struct agent *a = ud;
	a->retry = NULL;
	agent_connect_now(a);
}

static void schedule_retry(struct agent *a, uint64_t ms)
{
	if (a->closing || a->denied || a->retry)
		return;
	a->retry = G.host->timer_start(ms, retry_cb, a);
}

static void set_denied(struct agent *a, const mb_err *err)
{
	a->denied = true;
	a->authing = false;
	a->denied_err = *err;
	a->denied_err.code = -EACCES;
	fail_queue(a, -EACCES, &a->denied_err);
	if (a->ops && a->ops->denied)
		a->ops->denied(a->ud, &a->denied_err);
}

static void auth_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                      const mb_err *err)
{
	struct agent *a = ud;
	a->authing = false;
	if (a->closing)
		return;
	uint32_t pipe = rep ? (uint32_t)json_integer_value(json_object_get(rep, "_pipe")) : 0;
	if (rc == -EACCES && rep) {
		mb_err e = { 0 };
		mb_err_set(&e, -EACCES, "the agent refused our proof of the VM's token: %s",
		           err ? err->msg : "");
		set_denied(a, &e);
		return;
	}
	if (rc < 0 || pipe == 0 || pipe != a->hello_pipe) {
		/* timeout, reconnect in between (EPROTO), ...: start over */
		schedule_retry(a, rc == -ETIMEDOUT ? 1 : 50);
		return;
	}
	a->authed_pipe = pipe;
	if (!a->slow_redial) {
		a->slow_redial = true;
		nng_dialer_set_ms(a->dialer, NNG_OPT_RECONNMAXT, 500);
	}
	flush_queue(a);
	if (a->ops && a->ops->authed)
		a->ops->authed(a->ud);
}

static void hello_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                       const mb_err *err)
{
	struct agent *a = ud;
	if (a->closing) {
		a->authing = false;
		return;
	}
	if (!rep) {
		a->authing = false;
		schedule_retry(a, rc == -ETIMEDOUT ? 1 : 50);
		return;
	}
	a->hello_pipe = (uint32_t)json_integer_value(json_object_get(rep, "_pipe"));
	vm_log(MB_LOG_DEBUG, "agent %s: hello answered", a->addr);
	mbp_err pe = { 0 };
	json_t *auth = mbp_auth_request(rep, a->token, strlen(a->token), a->hn, &pe);
	if (!auth) {
		if (pe.code == -EACCES || pe.code == -EPROTONOSUPPORT) {
			mb_err e = { 0 };
			mb_err_set(&e, -EACCES, "%s", pe.msg);
			set_denied(a, &e);
			return;
		}
		a->authing = false;
		schedule_retry(a, 100);
		return;
	}
	mb_err e = { 0 };
	struct areq *r = req_new(a, auth, NULL, 0, HELLO_TIMEOUT_MS, auth_done, a, &e);
	if (!r) {
		a->authing = false;
		schedule_retry(a, 200);
		return;
	}
	r->internal = true;
	start_send(r);
}

static void agent_connect_now(struct agent *a)
{
	if (a->closing || a->denied || a->authing || a->authed_pipe)
		return;
	a->want = true;
	a->authing = true;
	a->hello_pipe = 0;
	mbp_err pe = { 0 };
	json_t *hello = mbp_hello_request(a->hn, "moonbox-vm", &pe);
	mb_err e = { 0 };
	struct areq *r =
	    hello ? req_new(a, hello, NULL, 0, HELLO_TIMEOUT_MS, hello_done, a, &e) : NULL;
	if (!r) {
		a->authing = false;
		schedule_retry(a, 200);
		return;
	}
	r->internal = true;
	start_send(r);
	arm_sweep(a);
}

void agent_connect(struct agent *a)
{
	agent_connect_now(a);
}

bool agent_authed(const struct agent *a)
{
	return a && a->authed_pipe != 0 && !a->closing;
}

/* ---- pipe events -------------------------------------------------------------------------- */

struct pev {
	struct agent *a;
	unsigned gen;
	nng_pipe_ev ev;
	uint32_t pipe;
};

static void pev_step(void *arg)
{
	struct pev *e = arg;
	struct agent *a = e->a;
	vm_log(MB_LOG_DEBUG, "agent %s: pipe %u event %d", a->addr, e->pipe, (int)e->ev);
	if (G.dead || e->gen != G.gen || a->closing) {
		free(e);
		agent_unref(a);
		return;
	}
	if (e->ev == NNG_PIPE_EV_REM_POST && e->pipe == a->authed_pipe) {
		a->authed_pipe = 0;
		if (a->ops && a->ops->disconnected)
			a->ops->disconnected(a->ud);
		if (a->want)
			schedule_retry(a, 20);
	}
	free(e);
	agent_unref(a);
}

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	struct agent *a = arg;
	struct pev *e = malloc(sizeof(*e));
	if (!e)
		return;
	atomic_fetch_add(&a->refs, 1);
	e->a = a;
	e->gen = a->gen;
	e->ev = ev;
	e->pipe = (uint32_t)nng_pipe_id(p);
	G.host->post(pev_step, e);
}

/* ---- open / call / close ------------------------------------------------------------------ */

struct agent *agent_open(const char *addr, const char *token, const struct agent_ops *ops, void *ud,
                         mb_err *err)
{
	struct agent *a = calloc(1, sizeof(*a));
	if (!a) {
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	atomic_init(&a->refs, 1);
	a->owner_ref = true;
	a->gen = G.gen;
	snprintf(a->addr, sizeof(a->addr), "%s", addr);
	snprintf(a->token, sizeof(a->token), "%s", token);
	a->ops = ops;
	a->ud = ud;
	int rv = nng_req0_open(&a->sock);
	if (rv != 0) {
		free(a);
		mb_err_set(err, -EIO, "nng_req0_open: %s", nng_strerror(rv));
		return NULL;
	}
	a->sock_open = true;
	/* before any context is opened: contexts copy the socket's value */
	nng_socket_set_ms(a->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_size(a->sock, NNG_OPT_RECVMAXSZ, MBP_MAX_MSG);
	nng_pipe_notify(a->sock, NNG_PIPE_EV_REM_POST, pipe_cb, a);
	nng_pipe_notify(a->sock, NNG_PIPE_EV_ADD_POST, pipe_cb, a);
	/* While the guest boots, redial fast (a refused attempt costs a RST); after the first
	 * authentication back off to 500 ms so a silent guest is not hammered. */
	rv = nng_dialer_create(&a->dialer, a->sock, a->addr);
	if (rv == 0) {
		nng_dialer_set_ms(a->dialer, NNG_OPT_RECONNMINT, 5);
		nng_dialer_set_ms(a->dialer, NNG_OPT_RECONNMAXT, 20);
		rv = nng_dialer_start(a->dialer, NNG_FLAG_NONBLOCK);
	}
	if (rv != 0) {
		nng_close(a->sock);
		explicit_bzero(a->token, sizeof(a->token));
		free(a);
		mb_err_set(err, -EIO, "dial %s: %s", addr, nng_strerror(rv));
		return NULL;
	}
	a->gnext = G.agents;
	G.agents = a;
	return a;
}

int agent_call(struct agent *a, json_t *hdr, const void *data, size_t len, int timeout_ms,
               areq_fn fn, void *ud, struct areq **out, mb_err *err)
{
	if (out)
		*out = NULL;
	if (!a || a->closing) {
		json_decref(hdr);
		return mb_err_set(err, -ENOTCONN, "the VM's agent is not connected");
	}
	if (a->denied) {
		json_decref(hdr);
		if (err)
			*err = a->denied_err;
		return -EACCES;
	}
	struct areq *r = req_new(a, hdr, data, len, timeout_ms, fn, ud, err);
	if (!r)
		return err ? err->code : -ENOMEM;
	if (out)
		*out = r;
	if (a->authed_pipe) {
		start_send(r);
	} else {
		queue_append(a, r);
		arm_sweep(a);
		agent_connect_now(a);
	}
	return 0;
}

void agent_cancel(struct areq *r)
{
	if (!r)
		return;
	r->fn = NULL;
	if (r->phase == R_QUEUED) {
		queue_remove(r->a, r);
		r->phase = R_DONE;
		req_destroy(r);
	} else if (r->phase == R_FAILING) {
		G.host->timer_stop(r->ft);
		r->ft = NULL;
		r->phase = R_DONE;
		req_destroy(r);
	} else if (r->phase == R_SEND || r->phase == R_RECV) {
		nng_aio_cancel(r->aio); /* completes through step(), which frees it */
	}
}

static void nowait_done(void *ud, int rc, const json_t *rep, const uint8_t *p, size_t plen,
                        const mb_err *err)
{
}

void agent_send_nowait(struct agent *a, json_t *hdr)
{
	agent_call(a, hdr, NULL, 0, 30000, nowait_done, NULL, NULL, NULL);
}

/* Ownership: frees a (its token wiped); only when the last reference went. */
static void agent_free(struct agent *a)
{
	if (a->gen == G.gen) {
		for (struct agent **pp = &G.agents; *pp; pp = &(*pp)->gnext)
			if (*pp == a) {
				*pp = a->gnext;
				break;
			}
	}
	explicit_bzero(a->token, sizeof(a->token));
	free(a);
}

static void agent_unref(struct agent *a)
{
	if (atomic_fetch_sub(&a->refs, 1) == 1)
		agent_free(a);
}

struct close_job {
	struct agent *a;
	nng_socket sock;
};

static void close_work(void *ud)
{
	struct close_job *j = ud;
	nng_close(j->sock);
}

static void close_done(void *ud)
{
	struct close_job *j = ud;
	struct agent *a = j->a;
	free(j);
	a->owner_ref = false;
	agent_unref(a);
}

void agent_close(struct agent *a)
{
	if (!a || a->closing)
		return;
	a->closing = true;
	a->ops = NULL;
	a->ud = NULL;
	a->authed_pipe = 0;
	if (a->sweep) {
		G.host->timer_stop(a->sweep);
		a->sweep = NULL;
	}
	if (a->retry) {
		G.host->timer_stop(a->retry);
		a->retry = NULL;
	}
	mb_err e = { 0 };
	mb_err_set(&e, -ECONNRESET, "the VM stopped");
	fail_queue(a, -ECONNRESET, &e);
	/* nng_close waits for pipes and callbacks: do it on a worker */
	struct close_job *j = calloc(1, sizeof(*j));
	if (j) {
		j->a = a;
		j->sock = a->sock;
		a->sock_open = false;
		a->close_job = true;
		if (G.host->work(close_work, close_done, j, NULL) == 0)
			return;
		free(j);
		a->close_job = false;
		a->sock_open = true;
	}
	nng_close(a->sock);
	a->sock_open = false;
	a->owner_ref = false;
	agent_unref(a);
}

void agent_fini_all(void)
{
	/* Sockets first: that aborts every aio (their callbacks post a completion). */
	for (struct agent *a = G.agents; a; a = a->gnext) {
		if (a->sweep)
			G.host->timer_stop(a->sweep);
		if (a->retry)
			G.host->timer_stop(a->retry);
		a->sweep = a->retry = NULL;
		a->closing = true;
		a->ops = NULL;
		if (a->sock_open) {
			nng_close(a->sock);
			a->sock_open = false;
		}
	}
	/* Then every request: wait for its callback; free it unless a completion is posted
	 * (that one frees it when the loop delivers it, seeing G.dead). */
	struct areq *r = G.areqs;
	while (r) {
		struct areq *n = r->gnext;
		nng_aio_stop(r->aio);
		if (r->ft) {
			G.host->timer_stop(r->ft);
			r->ft = NULL;
			r->phase = R_DONE;
		}
		if (r->phase == R_QUEUED || r->phase == R_DONE) {
			r->phase = R_DONE;
			r->fn = NULL;
			r->qnext = NULL;
			req_destroy(r);
		} else if (!atomic_load(&r->posted)) {
			r->fn = NULL;
			req_destroy(r);
		} else {
			req_unlink(r);
		}
		r = n;
	}
	G.areqs = NULL;
	/* Owner references: agents still referenced by posted work go when that runs. */
	struct agent *a = G.agents;
	while (a) {
		struct agent *n = a->gnext;
		a->queue = NULL;
		if (a->owner_ref && !a->close_job) {
			a->owner_ref = false;
			agent_unref(a);
		}
		a = n;
	}
}
