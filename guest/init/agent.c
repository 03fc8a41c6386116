/*
 * The agent: an nng rep0 socket listening on TCP, served by a pool of contexts.
 *
 * Threads: nng runs the aio callbacks on its own threads; they only move a received
 * message onto a queue (under `mu`) and write an eventfd. Everything else — decoding,
 * authentication, process control, long polls, replies — happens on the main thread,
 * which owns all state. A long poll (read/wait) keeps its context parked until it can
 * be answered, so it never blocks other requests (they use the other contexts).
 */
#include "init.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#define NCTX        32
#define MAX_POLLS   (NCTX - 4) /* always leave contexts for ordinary requests */
#define MAX_PIPES   64
#define MAX_WAIT_MS (10 * 60 * 1000)
#define AGENT_ID    "moonbox-init/0.1"

enum ctx_state { CTX_RECV, CTX_BUSY, CTX_SEND };
enum pipe_state { PIPE_NEW = 0, PIPE_HELLO, PIPE_AUTHED, PIPE_FAILED };
enum poll_kind { POLL_READ, POLL_WAIT };

struct srv_ctx {
	struct srv *s;
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	nng_msg *msg;
	struct srv_ctx *qnext;
	bool after_shutdown; /* this reply acknowledges a shutdown request */
};

struct pipe_auth {
	uint32_t id;
	int state;
	uint8_t host_nonce[MBP_NONCE_LEN];
	uint8_t agent_nonce[MBP_NONCE_LEN];
};

struct poll_item {
	struct srv_ctx *c;
	json_t *req;
	uint32_t pipe;
	int kind;
	uint64_t deadline;
	struct poll_item *next;
};

struct srv {
	struct mb_agent *a;
	nng_socket sock;
	struct srv_ctx ctx[NCTX];
	pthread_mutex_t mu;
	struct srv_ctx *qhead, *qtail; /* received requests, guarded by mu */
	uint32_t gone[MAX_PIPES];      /* removed pipes, guarded by mu */
	int ngone;
	int wakefd;
	struct mb_tag wake_tag;
	struct mb_tag sig_tag;
	struct pipe_auth pipes[MAX_PIPES];
	struct poll_item *polls;
	int npolls;
	bool shutdown_acked; /* the shutdown reply has been handed to nng */
	pthread_t prep;      /* opens the nng socket while init mounts the root */
	bool prep_started;
	bool prep_done; /* joined by mb_agent_prepared(): prep_rc/prep_msg are the result */
	bool listening; /* mb_agent_listen() done */
	int prep_rc;
	char prep_msg[256];
};

static void wake(struct srv *s)
{
	uint64_t one = 1;
	ssize_t w = write(s->wakefd, &one, sizeof(one));
	(void)w;
}

/* nng thread: receive or send finished. */
static void ctx_cb(void *arg)
{
	struct srv_ctx *c = arg;
	struct srv *s = c->s;
	int rv = nng_aio_result(c->aio);
	if (c->state == CTX_RECV) {
		if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
			return;
		if (rv != 0) {
			nng_ctx_recv(c->ctx, c->aio);
			return;
		}
		c->msg = nng_aio_get_msg(c->aio);
		c->state = CTX_BUSY;
		pthread_mutex_lock(&s->mu);
		c->qnext = NULL;
		if (s->qtail)
			s->qtail->qnext = c;
		else
			s->qhead = c;
		s->qtail = c;
		pthread_mutex_unlock(&s->mu);
		wake(s);
		return;
	}
	if (c->state == CTX_SEND) {
		if (rv != 0) {
			nng_msg *m = nng_aio_get_msg(c->aio);
			if (m)
				nng_msg_free(m);
		}
		if (c->after_shutdown) {
			pthread_mutex_lock(&s->mu);
			s->shutdown_acked = true;
			pthread_mutex_unlock(&s->mu);
			wake(s);
		}
		if (rv == NNG_ECLOSED)
			return;
		c->state = CTX_RECV;
		nng_ctx_recv(c->ctx, c->aio);
	}
}

/* nng thread: a connection went away. */
static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	struct srv *s = arg;
	if (ev != NNG_PIPE_EV_REM_POST)
		return;
	pthread_mutex_lock(&s->mu);
	if (s->ngone < MAX_PIPES)
		s->gone[s->ngone++] = nng_pipe_id(p);
	pthread_mutex_unlock(&s->mu);
	wake(s);
}

/* Send hdr (stolen) + payload (freed) as the reply on c. */
static void reply(struct srv *s, struct srv_ctx *c, json_t *hdr, uint8_t *payload, size_t plen)
{
	(void)s;
	char *js = NULL;
	size_t jl = 0;
	nng_msg *m = NULL;
	if (!hdr)
		hdr = mbp_reply_error(-ENOMEM, "out of memory");
	if (!hdr || mbp_encode_header(hdr, &js, &jl, NULL) < 0 || nng_msg_alloc(&m, 0) != 0 ||
	    nng_msg_append_u32(m, (uint32_t)jl) != 0 || nng_msg_append(m, js, jl) != 0 ||
	    (plen && nng_msg_append(m, payload, plen) != 0)) {
		mb_log("agent: cannot build a reply");
		if (m)
			nng_msg_free(m);
		m = NULL;
	}
	json_decref(hdr);
	free(js);
	free(payload);
	if (!m) {
		/* Without a reply the request stays pending on the host; drop it here. */
		c->state = CTX_RECV;
		nng_ctx_recv(c->ctx, c->aio);
		return;
	}
	c->state = CTX_SEND;
	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);
}

static struct pipe_auth *pipe_get(struct srv *s, uint32_t id, bool create)
{
	struct pipe_auth *free_slot = NULL;
	for (int i = 0; i < MAX_PIPES; i++) {
		if (s->pipes[i].id == id)
			return &s->pipes[i];
		if (!s->pipes[i].id && !free_slot)
			free_slot = &s->pipes[i];
	}
	if (!create)
		return NULL;
	if (!free_slot) {
		/* Full: recycle a slot that never authenticated. */
		for (int i = 0; i < MAX_PIPES && !free_slot; i++) {
			if (s->pipes[i].state != PIPE_AUTHED)
				free_slot = &s->pipes[i];
		}
		if (!free_slot)
			return NULL;
	}
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->id = id;
	return free_slot;
}

/* op_hello/op_auth borrow req and return a new reply reference (caller decrefs). */
static json_t *op_hello(struct srv *s, struct pipe_auth *pa, json_t *req)
{
	int v = (int)mbp_get_int(req, "version", 0);
	if (v != MBP_VERSION) {
		json_t *r =
		    mbp_reply_error(-EPROTONOSUPPORT, "protocol version %d not supported", v);
		json_object_set_new(r, "version", json_integer(MBP_VERSION));
		return r;
	}
	/* A new hello (re-)starts authentication: the connection is unauthenticated until the
	 * matching auth succeeds. */
	pa->state = PIPE_NEW;
	if (mbp_hex_decode(mbp_get_str(req, "nonce", ""), pa->host_nonce, MBP_NONCE_LEN) < 0)
		return mbp_reply_error(-EINVAL, "nonce must be %d hex digits", 2 * MBP_NONCE_LEN);
	mbp_err e = { 0 };
	if (mbp_random(pa->agent_nonce, MBP_NONCE_LEN, &e) < 0)
		return mbp_reply_error(e.code, "%s", e.msg);
	uint8_t proof[MBP_SHA256_LEN];
	mbp_auth_agent_proof(s->a->cfg->token, s->a->cfg->token_len, pa->host_nonce,
	                     pa->agent_nonce, proof);
	char nonce_hex[2 * MBP_NONCE_LEN + 1], proof_hex[2 * MBP_SHA256_LEN + 1];
	mbp_hex_encode(pa->agent_nonce, MBP_NONCE_LEN, nonce_hex);
	mbp_hex_encode(proof, MBP_SHA256_LEN, proof_hex);
	pa->state = PIPE_HELLO;
	return json_pack("{s:b,s:i,s:s,s:s,s:s}", "ok", 1, "version", MBP_VERSION, "nonce",
	                 nonce_hex, "proof", proof_hex, "agent", AGENT_ID);
}

static json_t *op_auth(struct srv *s, struct pipe_auth *pa, json_t *req)
{
	if (pa->state != PIPE_HELLO)
		return mbp_reply_error(-EPROTO, "auth must follow hello on the same connection");
	uint8_t got[MBP_SHA256_LEN], want[MBP_SHA256_LEN];
	int bad = mbp_hex_decode(mbp_get_str(req, "proof", ""), got, sizeof(got)) < 0;
	mbp_auth_host_proof(s->a->cfg->token, s->a->cfg->token_len, pa->host_nonce, pa->agent_nonce,
	                    want);
	if (bad || !mbp_ct_equal(got, want, sizeof(want))) {
		pa->state = PIPE_FAILED;
		mb_log("agent: authentication failed on connection %u", pa->id);
		return mbp_reply_error(-EACCES, "authentication failed");
	}
	pa->state = PIPE_AUTHED;
	mb_log("agent: host authenticated on connection %u", pa->id);
	return json_pack("{s:b,s:s,s:I}", "ok", 1, "hostname", s->a->cfg->hostname, "uptime_ms",
	                 (json_int_t)(mb_now_ms() - s->a->boot_ms));
}

/* Answer a long poll now or park it; takes ownership of req. */
static void park(struct srv *s, struct srv_ctx *c, json_t *req, uint32_t pipe, int kind)
{
	int64_t wait_ms = mbp_get_int(req, "wait_ms", 0);
	if (wait_ms > MAX_WAIT_MS)
		wait_ms = MAX_WAIT_MS;
	bool final = wait_ms <= 0 || s->npolls >= MAX_POLLS;
	uint8_t *payload = NULL;
	size_t plen = 0;
	json_t *r = kind == POLL_READ ? mb_poll_read(s->a, req, final, &payload, &plen)
	                              : mb_poll_wait(s->a, req, final);
	if (r) {
		json_decref(req);
		reply(s, c, r, payload, plen);
		return;
	}
	struct poll_item *p = calloc(1, sizeof(*p));
	if (!p) {
		json_decref(req);
		reply(s, c, mbp_reply_error(-ENOMEM, "out of memory"), NULL, 0);
		return;
	}
	p->c = c;
	p->req = req;
	p->pipe = pipe;
	p->kind = kind;
	p->deadline = mb_now_ms() + (uint64_t)wait_ms;
	p->next = s->polls;
	s->polls = p;
	s->npolls++;
}

/* Answer every parked poll that can be answered (all of them when force is set, or those
 * past their deadline, or those of pipe `gone_pipe`). */
static void run_polls(struct srv *s, bool force, uint32_t gone_pipe)
{
	uint64_t now = mb_now_ms();
	struct poll_item **pp = &s->polls;
	while (*pp) {
		struct poll_item *p = *pp;
		bool final = force || now >= p->deadline || (gone_pipe && p->pipe == gone_pipe);
		uint8_t *payload = NULL;
		size_t plen = 0;
		json_t *r = p->kind == POLL_READ
		                ? mb_poll_read(s->a, p->req, final, &payload, &plen)
		                : mb_poll_wait(s->a, p->req, final);
		if (!r) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		s->npolls--;
		reply(s, p->c, r, payload, plen);
		json_decref(p->req);
		free(p);
	}
}

/* Takes ownership of c->msg; always leads to a reply or a new receive on c. */
static void handle(struct srv *s, struct srv_ctx *c)
{
	nng_msg *m = c->msg;
	c->msg = NULL;
	nng_pipe np = nng_msg_get_pipe(m);
	uint32_t pipe = (uint32_t)nng_pipe_id(np);
	json_t *req = NULL;
	const uint8_t *data;
	size_t dlen;
	mbp_err e = { 0 };
	if (mbp_decode(nng_msg_body(m), nng_msg_len(m), &req, &data, &dlen, &e) < 0) {
		nng_msg_free(m);
		reply(s, c, mbp_reply_error(e.code, "%s", e.msg), NULL, 0);
		return;
	}
	struct pipe_auth *pa = pipe_get(s, pipe, true);
	const char *op = mbp_get_str(req, "op", "");
	json_t *r = NULL;
	uint8_t *payload = NULL;
	size_t plen = 0;

	if (!pa) {
		r = mbp_reply_error(-EBUSY, "too many connections");
	} else if (pa->state == PIPE_FAILED) {
		/* Never answer a connection that failed authentication again. */
		nng_msg_free(m);
		json_decref(req);
		nng_pipe_close(np);
		c->state = CTX_RECV;
		nng_ctx_recv(c->ctx, c->aio);
		return;
	} else if (strcmp(op, MBP_OP_HELLO) == 0) {
		r = op_hello(s, pa, req);
	} else if (strcmp(op, MBP_OP_AUTH) == 0) {
		r = op_auth(s, pa, req);
	} else if (pa->state != PIPE_AUTHED) {
		r = mbp_reply_error(-EACCES, "not authenticated: send hello and auth first");
	} else if (s->a->shutting_down && strcmp(op, MBP_OP_READ) != 0 &&
	           strcmp(op, MBP_OP_WAIT) != 0 && strcmp(op, MBP_OP_PING) != 0 &&
	           strcmp(op, MBP_OP_SHUTDOWN) != 0 && strcmp(op, MBP_OP_STATS) != 0) {
		r = mbp_reply_error(-ESHUTDOWN, "the VM is shutting down");
	} else if (strcmp(op, MBP_OP_PING) == 0) {
		r = json_pack("{s:b,s:I,s:b}", "ok", 1, "uptime_ms",
		              (json_int_t)(mb_now_ms() - s->a->boot_ms), "shutting_down",
		              s->a->shutting_down);
	} else if (strcmp(op, MBP_OP_RUN) == 0) {
		r = mb_op_run(s->a, req, false);
	} else if (strcmp(op, MBP_OP_EXEC) == 0) {
		r = mb_op_run(s->a, req, true);
	} else if (strcmp(op, MBP_OP_READ) == 0 || strcmp(op, MBP_OP_WAIT) == 0) {
		nng_msg_free(m);
		park(s, c, req, pipe, strcmp(op, MBP_OP_READ) == 0 ? POLL_READ : POLL_WAIT);
		return;
	} else if (strcmp(op, MBP_OP_WRITE) == 0) {
		r = mb_op_write(s->a, req, data, dlen);
	} else if (strcmp(op, MBP_OP_RESIZE) == 0) {
		r = mb_op_resize(s->a, req);
	} else if (strcmp(op, MBP_OP_SIGNAL) == 0) {
		r = mb_op_signal(s->a, req);
	} else if (strcmp(op, MBP_OP_RELEASE) == 0) {
		r = mb_op_release(s->a, req);
	} else if (strcmp(op, MBP_OP_LIST) == 0) {
		r = mb_op_list(s->a, req);
	} else if (strcmp(op, MBP_OP_STATS) == 0) {
		r = mb_op_stats(s->a, req);
	} else if (strncmp(op, "fs_", 3) == 0) {
		r = mb_op_fs(s->a, op, req, data, dlen, &payload, &plen);
	} else if (strcmp(op, MBP_OP_SHUTDOWN) == 0) {
		int64_t grace = mbp_get_int(req, "grace_ms", 10000);
		mb_begin_shutdown(s->a, grace);
		c->after_shutdown = true;
		r = mbp_reply_ok();
	} else {
		r = mbp_reply_error(-ENOSYS, "unknown op '%s'", op);
	}
	nng_msg_free(m);
	json_decref(req);
	reply(s, c, r, payload, plen);
}

static void drain(struct srv *s)
{
	uint64_t v;
	ssize_t rd = read(s->wakefd, &v, sizeof(v));
	(void)rd;
	for (;;) {
		pthread_mutex_lock(&s->mu);
		struct srv_ctx *c = s->qhead;
		if (c) {
			s->qhead = c->qnext;
			if (!s->qhead)
				s->qtail = NULL;
		}
		uint32_t gone[MAX_PIPES];
		int ngone = s->ngone;
		memcpy(gone, s->gone, sizeof(uint32_t) * (size_t)ngone);
		s->ngone = 0;
		pthread_mutex_unlock(&s->mu);
		for (int i = 0; i < ngone; i++) {
			struct pipe_auth *pa = pipe_get(s, gone[i], false);
			if (pa)
				memset(pa, 0, sizeof(*pa));
			run_polls(s, false, gone[i]);
		}
		if (!c)
			break;
		handle(s, c);
	}
}

/* The nng socket and its receiving contexts (no listener yet). nng's first socket
 * starts its thread pools, which costs a good part of the agent's start-up under TCG:
 * mb_agent_prepare() runs this on a thread while init mounts disks and sets up the
 * network. */
static int srv_open(struct srv *s, mbp_err *err)
{
	int rv = nng_rep0_open(&s->sock);
	if (rv != 0)
		return mbp_err_set(err, -EIO, "nng_rep0_open: %s", nng_strerror(rv));
	nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, MBP_MAX_MSG);
	nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, pipe_cb, s);
	for (int i = 0; i < NCTX; i++) {
		struct srv_ctx *c = &s->ctx[i];
		c->s = s;
		if ((rv = nng_ctx_open(&c->ctx, s->sock)) != 0 ||
		    (rv = nng_aio_alloc(&c->aio, ctx_cb, c)) != 0)
			return mbp_err_set(err, -EIO, "nng context: %s", nng_strerror(rv));
		c->state = CTX_RECV;
		nng_ctx_recv(c->ctx, c->aio);
	}
	return 0;
}

static void *srv_prep_thread(void *arg)
{
	struct srv *s = arg;
	mbp_err e = { 0 };
	s->prep_rc = srv_open(s, &e);
	if (s->prep_rc < 0)
		snprintf(s->prep_msg, sizeof(s->prep_msg), "%s", e.msg);
	return NULL;
}

void mb_agent_prepare(struct mb_agent *a)
{
	struct srv *s = calloc(1, sizeof(*s));
	if (!s) {
		mb_log("agent: out of memory");
		reboot(RB_AUTOBOOT);
	}
	s->a = a;
	a->srv = s;
	pthread_mutex_init(&s->mu, NULL);
	s->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->prep_started = pthread_create(&s->prep, NULL, srv_prep_thread, s) == 0;
}

void mb_agent_prepared(struct mb_agent *a)
{
	struct srv *s = a->srv;
	if (s && s->prep_started) {
		pthread_join(s->prep, NULL);
		s->prep_started = false;
		s->prep_done = true;
	}
}

static int srv_start(struct srv *s, mbp_err *err)
{
	struct mb_config *cfg = s->a->cfg;
	int rv;
	mb_agent_prepared(s->a);
	if (s->prep_done) {
		if (s->prep_rc < 0)
			return mbp_err_set(err, s->prep_rc, "%s", s->prep_msg);
	} else if ((rv = srv_open(s, err)) < 0) {
		return rv;
	}
	char url[128];
	snprintf(url, sizeof(url), "tcp://%s:%d", cfg->address[0] ? cfg->address : "0.0.0.0",
	         cfg->port);
	/* The address may need a moment after the link comes up. */
	for (int i = 0; i < 200; i++) {
		rv = nng_listen(s->sock, url, NULL, 0);
		if (rv == 0)
			break;
		usleep(10000);
	}
	if (rv != 0)
		return mbp_err_set(err, -EIO, "listen on %s: %s", url, nng_strerror(rv));
	mb_log("agent: listening on %s", url);
	return 0;
}

void mb_begin_shutdown(struct mb_agent *a, int64_t grace_ms)
{
	if (a->shutting_down)
		return;
	if (grace_ms < 0)
		grace_ms = 0;
	mb_log("shutdown: SIGTERM to container processes, grace %lld ms", (long long)grace_ms);
	a->shutting_down = true;
	a->shutdown_deadline = mb_now_ms() + (uint64_t)grace_ms;
	mb_procs_signal_all(a, SIGTERM);
}

static void reap_all(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

__attribute__((noreturn)) static void finish_shutdown(struct mb_agent *a, struct srv *s)
{
	mb_log("shutdown: killing remaining processes");
	kill(-1, SIGKILL);
	for (int i = 0; i < 100; i++) {
		reap_all();
		if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
			break;
		usleep(10000);
	}
	/* Let the shutdown reply leave before the network goes away. */
	for (int i = 0; i < 50; i++) {
		pthread_mutex_lock(&s->mu);
		bool acked = s->shutdown_acked;
		pthread_mutex_unlock(&s->mu);
		if (acked)
			break;
		usleep(10000);
	}
	usleep(100000);
	nng_close(s->sock);
	sync();
	mb_unmount_all(a->cfg);
	sync();
	mb_log("shutdown: rebooting (QEMU -no-reboot exits)");
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

void mb_agent_listen(struct mb_agent *a)
{
	if (!a->srv)
		mb_agent_prepare(a);
	struct srv *s = a->srv;
	if (s->listening)
		return;
	s->wake_tag.kind = MB_TAG_WAKE;
	s->sig_tag.kind = MB_TAG_SIGNAL;
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &s->wake_tag };
	epoll_ctl(a->epfd, EPOLL_CTL_ADD, s->wakefd, &ev);
	ev.data.ptr = &s->sig_tag;
	epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->sigfd, &ev);

	mbp_err e = { 0 };
	if (srv_start(s, &e) < 0) {
		mb_log("agent: %s", e.msg);
		mb_begin_shutdown(a, 0);
		finish_shutdown(a, s);
	}
	s->listening = true;
}

void mb_agent_run(struct mb_agent *a)
{
	mb_agent_listen(a);
	struct srv *s = a->srv;
	mb_log("ready");
	for (;;) {
		int timeout = -1;
		uint64_t now = mb_now_ms();
		for (struct poll_item *p = s->polls; p; p = p->next) {
			int t = p->deadline > now ? (int)(p->deadline - now) : 0;
			if (timeout < 0 || t < timeout)
				timeout = t;
		}
		if (a->shutting_down) {
			int t = a->shutdown_deadline > now ? (int)(a->shutdown_deadline - now) : 0;
			if (timeout < 0 || t < timeout)
				timeout = t;
		}
		struct epoll_event evs[32];
		int n = epoll_wait(a->epfd, evs, 32, timeout);
		for (int i = 0; i < n; i++) {
			struct mb_tag *t = evs[i].data.ptr;
			if (t->kind == MB_TAG_WAKE) {
				drain(s);
			} else if (t->kind == MB_TAG_SIGNAL) {
				struct signalfd_siginfo si;
				while (read(a->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
					if (si.ssi_signo == SIGCHLD)
						mb_procs_sigchld(a);
					else if (si.ssi_signo == SIGTERM ||
					         si.ssi_signo == SIGPWR || si.ssi_signo == SIGINT)
						mb_begin_shutdown(a, 10000);
				}
			} else {
				mb_procs_event(a, t, evs[i].events);
			}
		}
		run_polls(s, false, 0);
		if (a->shutting_down &&
		    (!mb_procs_alive(a) || mb_now_ms() >= a->shutdown_deadline)) {
			run_polls(s, true, 0);
			finish_shutdown(a, s);
		}
	}
}
