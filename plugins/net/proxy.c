/*
 * Userspace port proxy (see proxy.h).
 *
 * TCP: each accepted connection gets a non-blocking connect to the target and, per
 * direction, a pipe that data is spliced through (socket -> pipe -> socket, no copy into
 * user space). Back-pressure is interest management: a direction stops asking for EPOLLIN
 * while its pipe is full and asks for EPOLLOUT on the other socket while the pipe holds
 * data, so a slow reader slows the writer down and memory per connection is bounded by
 * the two pipes. EOF is propagated as a half-close (shutdown(SHUT_WR)); the connection is
 * freed when both directions are done or either side fails.
 *
 * UDP: datagrams from a client address go out through a socket connected to the target
 * that belongs to that client (a session), so replies find their way back; replies are
 * sent from the address the client wrote to (IP_PKTINFO). Sessions idle for longer than
 * the timeout are closed by a sweep timer. Datagrams are dropped when a socket buffer is
 * full, as UDP allows.
 */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PIPE_SIZE    (256 * 1024)
#define MAX_CONNS    4096 /* per listener; beyond that accepting pauses */
#define MAX_SESSIONS 4096 /* per UDP listener; beyond that the oldest is dropped */
#define ACCEPT_BATCH 64
#define PUMP_ROUNDS  16
#define DGRAM_BATCH  64
#define DGRAM_MAX    65536
#define CONNECT_MS   10000 /* a target that never answers the SYN */

static const struct mb_host *H;
static mb_plugin *P;

struct px_conn;
struct px_sess;

struct px_listener {
	struct px_listener *next, *prev; /* all open listeners, for px_close_all */
	int proto;
	int fd;
	mb_watch *w;
	bool accepting; /* listener fd asks for EPOLLIN */
	struct sockaddr_in target;
	bool has_target;
	uint32_t udp_idle_ms;
	struct px_conn *conns;
	struct px_sess *sessions; /* most recently used first */
	mb_timer *sweep;
	struct px_stats st;
	struct px_listener **ref;
};

struct px_half { /* one direction: fd[d] -> pipe -> fd[1-d] */
	int pipe[2];
	size_t inpipe;
	bool eof;  /* read side saw EOF */
	bool shut; /* write side shut down after the pipe drained */
};

struct px_conn {
	struct px_conn *next, *prev;
	struct px_listener *l;
	int fd[2]; /* 0 = client, 1 = target */
	mb_watch *w[2];
	uint32_t ev[2];
	bool connecting;
	mb_timer *connect_timer;
	struct px_half h[2];
};

struct px_sess {
	struct px_sess *next, *prev;
	struct px_listener *l;
	struct sockaddr_in client;
	struct in_addr local; /* the address the client sent to */
	bool has_local;
	int fd;
	mb_watch *w;
	uint64_t last_ms;
};

static struct px_listener *all;
static char dgram[DGRAM_MAX];

void px_init(const struct mb_host *host, mb_plugin *self)
{
	H = host;
	P = self;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- TCP ---------------------------------------------------------------------------- */

static void conn_free(struct px_conn *c)
{
	struct px_listener *l = c->l;
	if (c->connect_timer)
		H->timer_stop(c->connect_timer);
	for (int i = 0; i < 2; i++) {
		if (c->w[i])
			H->fd_unwatch(c->w[i]);
		if (c->fd[i] >= 0)
			close(c->fd[i]);
		for (int j = 0; j < 2; j++)
			if (c->h[i].pipe[j] >= 0)
				close(c->h[i].pipe[j]);
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		l->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
	l->st.active--;
	if (!l->accepting && l->fd >= 0 && l->st.active < MAX_CONNS &&
	    H->fd_modify(l->w, EPOLLIN, NULL) == 0)
		l->accepting = true;
}

/* Move data one way. Returns -1 on a fatal error (the caller frees the connection). */
static int pump(struct px_conn *c, int d)
{
	struct px_half *h = &c->h[d];
	int src = c->fd[d], dst = c->fd[1 - d];
	for (int round = 0; round < PUMP_ROUNDS; round++) {
		bool progress = false;
		if (!h->eof && h->inpipe < PIPE_SIZE) {
			ssize_t n = splice(src, NULL, h->pipe[1], NULL, PIPE_SIZE - h->inpipe,
			                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
			if (n > 0) {
				h->inpipe += (size_t)n;
				if (d == 0)
					c->l->st.bytes_in += (uint64_t)n;
				else
					c->l->st.bytes_out += (uint64_t)n;
				progress = true;
			} else if (n == 0) {
				h->eof = true;
			} else if (errno != EAGAIN && errno != EINTR) {
				return -1;
			}
		}
		if (h->inpipe > 0) {
			ssize_t n = splice(h->pipe[0], NULL, dst, NULL, h->inpipe,
			                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
			if (n > 0) {
				h->inpipe -= (size_t)n;
				progress = true;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				return -1;
			}
		}
		if (!progress)
			break;
	}
	if (h->eof && h->inpipe == 0 && !h->shut) {
		shutdown(dst, SHUT_WR);
		h->shut = true;
	}
	return 0;
}

/* Recompute what each socket waits for. Returns -1 if the connection is finished. */
static int rearm(struct px_conn *c)
{
	if (c->h[0].shut && c->h[1].shut)
		return -1;
	for (int s = 0; s < 2; s++) {
		uint32_t ev = 0;
		if (c->connecting) {
			ev = s == 1 ? EPOLLOUT : 0;
		} else {
			if (!c->h[s].eof && c->h[s].inpipe < PIPE_SIZE)
				ev |= EPOLLIN;
			if (c->h[1 - s].inpipe > 0)
				ev |= EPOLLOUT;
		}
		if (ev != c->ev[s]) {
			if (H->fd_modify(c->w[s], ev, NULL) < 0)
				return -1;
			c->ev[s] = ev;
		}
	}
	return 0;
}

static void on_conn(int fd, uint32_t events, void *ud)
{
	struct px_conn *c = ud;
	if (c->connecting) {
		if (fd != c->fd[1]) { /* the client gave up before the target answered */
			if (events & (EPOLLHUP | EPOLLERR))
				conn_free(c);
			return;
		}
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) {
			c->l->st.failed++;
			conn_free(c);
			return;
		}
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		c->connecting = false;
		H->timer_stop(c->connect_timer);
		c->connect_timer = NULL;
	}
	if (pump(c, 0) < 0 || pump(c, 1) < 0 || rearm(c) < 0) {
		conn_free(c);
		return;
	}
	/* a socket that reports only HUP/ERR with nothing left to do would spin */
	if ((events & (EPOLLHUP | EPOLLERR)) && !(events & (EPOLLIN | EPOLLOUT))) {
		int s = fd == c->fd[0] ? 0 : 1;
		if (c->ev[s] == 0)
			conn_free(c);
	}
}

static void connect_timeout(void *ud)
{
	struct px_conn *c = ud;
	c->connect_timer = NULL; /* freed by the host after this returns */
	c->l->st.failed++;
	conn_free(c);
}

static int make_pipe(struct px_half *h)
{
	if (pipe2(h->pipe, O_NONBLOCK | O_CLOEXEC) < 0)
		return -errno;
	(void)fcntl(h->pipe[0], F_SETPIPE_SZ, PIPE_SIZE);
	return 0;
}

static void accept_one(struct px_listener *l, int cfd)
{
	struct px_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->l = l;
	c->fd[0] = cfd;
	c->fd[1] = -1;
	for (int i = 0; i < 2; i++)
		c->h[i].pipe[0] = c->h[i].pipe[1] = -1;
	c->next = l->conns;
	if (c->next)
		c->next->prev = c;
	l->conns = c;
	l->st.active++;
	l->st.total++;
	int one = 1;
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd[1] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd[1] < 0 || make_pipe(&c->h[0]) < 0 || make_pipe(&c->h[1]) < 0)
		goto fail;
	setsockopt(c->fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd[1], (const struct sockaddr *)&l->target, sizeof(l->target)) < 0 &&
	    errno != EINPROGRESS)
		goto fail;
	c->connecting = true;
	c->ev[1] = EPOLLOUT;
	c->w[0] = H->fd_watch(c->fd[0], 0, on_conn, c, NULL);
	c->w[1] = H->fd_watch(c->fd[1], EPOLLOUT, on_conn, c, NULL);
	if (!c->w[0] || !c->w[1])
		goto fail;
	c->connect_timer = H->timer_start(CONNECT_MS, connect_timeout, c);
	return;
fail:
	l->st.failed++;
	conn_free(c);
}

static void on_accept(int fd, uint32_t events, void *ud)
{
	struct px_listener *l = ud;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		if (l->st.active >= MAX_CONNS) {
			if (H->fd_modify(l->w, 0, NULL) == 0)
				l->accepting = false;
			return;
		}
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0)
			return; /* EAGAIN, or a transient error (ECONNABORTED, EMFILE, ...) */
		accept_one(l, cfd);
	}
}

/* --- UDP ---------------------------------------------------------------------------- */

static void sess_free(struct px_sess *s)
{
	struct px_listener *l = s->l;
	if (s->w)
		H->fd_unwatch(s->w);
	if (s->fd >= 0)
		close(s->fd);
	if (s->prev)
		s->prev->next = s->next;
	else
		l->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
	l->st.active--;
}

static void send_to_client(struct px_sess *s, const char *buf, size_t n)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
	union {
		char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_name = &s->client,
		            .msg_namelen = sizeof(s->client),
		            .msg_iov = &iov,
		            .msg_iovlen = 1 };
	if (s->has_local) {
		memset(&u, 0, sizeof(u));
		m.msg_control = u.buf;
		m.msg_controllen = sizeof(u.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
		cm->cmsg_level = IPPROTO_IP;
		cm->cmsg_type = IP_PKTINFO;
		cm->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
		struct in_pktinfo pi = { .ipi_spec_dst = s->local };
		memcpy(CMSG_DATA(cm), &pi, sizeof(pi));
	}
	(void)sendmsg(s->l->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void on_sess(int fd, uint32_t events, void *ud)
{
	struct px_sess *s = ud;
	for (int i = 0; i < DGRAM_BATCH; i++) {
		ssize_t n = recv(fd, dgram, sizeof(dgram), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			continue; /* ECONNREFUSED from an ICMP error: keep the session */
		}
		s->last_ms = now_ms();
		s->l->st.bytes_out += (uint64_t)n;
		send_to_client(s, dgram, (size_t)n);
	}
}

static void sweep(void *ud)
{
	struct px_listener *l = ud;
	l->sweep = NULL;
	uint64_t now = now_ms();
	for (struct px_sess *s = l->sessions, *next; s; s = next) {
		next = s->next;
		if (now - s->last_ms >= l->udp_idle_ms)
			sess_free(s);
	}
	if (l->sessions) {
		uint64_t every = l->udp_idle_ms / 4;
		l->sweep = H->timer_start(every < 50 ? 50 : every, sweep, l);
	}
}

static struct px_sess *sess_get(struct px_listener *l, const struct sockaddr_in *from,
                                const struct in_addr *local)
{
	for (struct px_sess *s = l->sessions; s; s = s->next) {
		if (s->client.sin_port == from->sin_port &&
		    s->client.sin_addr.s_addr == from->sin_addr.s_addr) {
			if (s != l->sessions) { /* move to the front */
				s->prev->next = s->next;
				if (s->next)
					s->next->prev = s->prev;
				s->prev = NULL;
				s->next = l->sessions;
				l->sessions->prev = s;
				l->sessions = s;
			}
			return s;
		}
	}
	if (l->st.active >= MAX_SESSIONS) {
		struct px_sess *last = l->sessions;
		while (last && last->next)
			last = last->next;
		if (last)
			sess_free(last);
	}
	struct px_sess *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->l = l;
	s->client = *from;
	if (local) {
		s->local = *local;
		s->has_local = true;
	}
	s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	s->next = l->sessions;
	if (s->next)
		s->next->prev = s;
	l->sessions = s;
	l->st.active++;
	l->st.total++;
	if (s->fd < 0 ||
	    connect(s->fd, (const struct sockaddr *)&l->target, sizeof(l->target)) < 0 ||
	    !(s->w = H->fd_watch(s->fd, EPOLLIN, on_sess, s, NULL))) {
		l->st.failed++;
		sess_free(s);
		return NULL;
	}
	if (!l->sweep) {
		uint64_t every = l->udp_idle_ms / 4;
		l->sweep = H->timer_start(every < 50 ? 50 : every, sweep, l);
	}
	return s;
}

static void on_dgram(int fd, uint32_t events, void *ud)
{
	struct px_listener *l = ud;
	for (int i = 0; i < DGRAM_BATCH; i++) {
		struct sockaddr_in from;
		struct iovec iov = { .iov_base = dgram, .iov_len = sizeof(dgram) };
		union {
			char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
			struct cmsghdr align;
		} u;
		struct msghdr m = { .msg_name = &from,
			            .msg_namelen = sizeof(from),
			            .msg_iov = &iov,
			            .msg_iovlen = 1,
			            .msg_control = u.buf,
			            .msg_controllen = sizeof(u.buf) };
		ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT);
		if (n < 0)
			return;
		if (m.msg_namelen < sizeof(from) || from.sin_family != AF_INET)
			continue;
		struct in_addr local, *lp = NULL;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
				struct in_pktinfo pi;
				memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
				local = pi.ipi_addr;
				lp = &local;
			}
		}
		struct px_sess *s = sess_get(l, &from, lp);
		if (!s)
			continue;
		s->last_ms = now_ms();
		l->st.bytes_in += (uint64_t)n;
		(void)send(s->fd, dgram, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
}

/* --- listeners ------------------------------------------------------------------------ */

struct px_listener *px_bind(int proto, const struct in_addr *addr, uint16_t port, mb_err *err)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
		mb_err_set(err, -EINVAL, "unknown protocol %d", proto);
		return NULL;
	}
	int type = proto == IPPROTO_TCP ? SOCK_STREAM : SOCK_DGRAM;
	int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mb_err_set(err, -errno, "socket: %s", strerror(errno));
		return NULL;
	}
	int one = 1;
	if (proto == IPPROTO_TCP) /* rebinding after a restart must not wait for TIME_WAIT */
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	else
		setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET,
		                  .sin_port = htons(port),
		                  .sin_addr = *addr };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    (proto == IPPROTO_TCP && listen(fd, 512) < 0)) {
		int e = errno;
		close(fd);
		if (e == EADDRINUSE)
			mb_err_set(err, -e, "port %u/%s is already in use", port,
			           proto == IPPROTO_TCP ? "tcp" : "udp");
		else if (e == EADDRNOTAVAIL)
			mb_err_set(err, -e, "host address is not an address of this host");
		else
			mb_err_set(err, -e, "bind port %u: %s", port, strerror(e));
		return NULL;
	}
	socklen_t len = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &len);
	struct px_listener *l = calloc(1, sizeof(*l));
	if (!l) {
		close(fd);
		mb_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	l->proto = proto;
	l->fd = fd;
	l->st.port = ntohs(sa.sin_port);
	l->udp_idle_ms = 60000;
	l->next = all;
	if (all)
		all->prev = l;
	all = l;
	H->hold(P, +1);
	return l;
}

int px_forward(struct px_listener *l, const struct sockaddr_in *target, uint32_t udp_idle_ms,
               mb_err *err)
{
	l->target = *target;
	l->has_target = true;
	l->udp_idle_ms = udp_idle_ms ? udp_idle_ms : 60000;
	if (l->w)
		return 0;
	l->w = H->fd_watch(l->fd, EPOLLIN, l->proto == IPPROTO_TCP ? on_accept : on_dgram, l, err);
	if (!l->w)
		return err ? err->code : -EIO;
	l->accepting = true;
	return 0;
}

void px_set_ref(struct px_listener *l, struct px_listener **ref)
{
	l->ref = ref;
}

void px_get_stats(const struct px_listener *l, struct px_stats *st)
{
	*st = l->st;
}

void px_close(struct px_listener *l)
{
	while (l->conns)
		conn_free(l->conns);
	while (l->sessions)
		sess_free(l->sessions);
	if (l->sweep)
		H->timer_stop(l->sweep);
	if (l->w)
		H->fd_unwatch(l->w);
	l->w = NULL;
	close(l->fd);
	l->fd = -1;
	if (l->prev)
		l->prev->next = l->next;
	else
		all = l->next;
	if (l->next)
		l->next->prev = l->prev;
	if (l->ref)
		*l->ref = NULL;
	free(l);
	H->hold(P, -1);
}

void px_close_all(void)
{
	while (all)
		px_close(all);
}
