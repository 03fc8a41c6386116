#include "curlm.h"

#include <errno.h>
#include <sys/epoll.h>

#include "log.h"
#include "loop.h"
#include "util.h"

struct xfer {
	CURL *easy;
	mb_curl_fn fn;
	void *ud;
	struct xfer *prev, *next;
};

static struct {
	CURLM *multi;
	mb_timer *timer;
	struct xfer *xfers;
	unsigned n;
	bool in_action;
} C;

static void check_done(void)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(C.multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		CURL *e = msg->easy_handle;
		CURLcode res = msg->data.result;
		struct xfer *x = NULL;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
		curl_multi_remove_handle(C.multi, e);
		if (!x)
			continue;
		if (x->prev)
			x->prev->next = x->next;
		else
			C.xfers = x->next;
		if (x->next)
			x->next->prev = x->prev;
		C.n--;
		mb_curl_fn fn = x->fn;
		void *ud = x->ud;
		free(x);
		fn(e, res, ud);
	}
}

static void socket_action(curl_socket_t s, int flags)
{
	int running;
	curl_multi_socket_action(C.multi, s, flags, &running);
	check_done();
}

static void on_sock(int fd, uint32_t events, void *ud)
{
	int flags = 0;
	if (events & (EPOLLIN | EPOLLHUP))
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & EPOLLERR)
		flags |= CURL_CSELECT_ERR;
	socket_action(fd, flags);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
	mb_watch *w = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (w)
			loop_unwatch(w);
		curl_multi_assign(C.multi, s, NULL);
		return 0;
	}
	uint32_t ev = 0;
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (w) {
		loop_modify(w, ev, NULL);
	} else {
		mb_err err;
		w = loop_watch(s, ev, on_sock, NULL, &err);
		if (!w) {
			log_error("curl: %s", err.msg);
			return -1;
		}
		curl_multi_assign(C.multi, s, w);
	}
	return 0;
}

static void on_timer(void *ud)
{
	C.timer = NULL;
	socket_action(CURL_SOCKET_TIMEOUT, 0);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	/* Do not call libcurl from here: just (re)arm our timer. */
	loop_timer_stop(C.timer);
	C.timer = NULL;
	if (timeout_ms >= 0)
		C.timer = loop_timer((uint64_t)timeout_ms, on_timer, NULL);
	return 0;
}

int curlm_init(mb_err *err)
{
	C.multi = curl_multi_init();
	if (!C.multi)
		return mb_err_set(err, -ENOMEM, "curl_multi_init failed");
	curl_multi_setopt(C.multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(C.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(C.multi, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
	return 0;
}

void curlm_fini(void)
{
	while (C.xfers) {
		struct xfer *x = C.xfers;
		C.xfers = x->next;
		curl_multi_remove_handle(C.multi, x->easy);
		free(x);
	}
	C.n = 0;
	loop_timer_stop(C.timer);
	C.timer = NULL;
	if (C.multi)
		curl_multi_cleanup(C.multi);
	C.multi = NULL;
}

int curlm_add(CURL *easy, mb_curl_fn fn, void *ud, mb_err *err)
{
	struct xfer *x = xcalloc(1, sizeof(*x));
	x->easy = easy;
	x->fn = fn;
	x->ud = ud;
	curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	CURLMcode mc = curl_multi_add_handle(C.multi, easy);
	if (mc != CURLM_OK) {
		free(x);
		return mb_err_set(err, -EINVAL, "curl_multi_add_handle: %s",
		                  curl_multi_strerror(mc));
	}
	x->next = C.xfers;
	if (C.xfers)
		C.xfers->prev = x;
	C.xfers = x;
	C.n++;
	return 0;
}

void curlm_remove(CURL *easy)
{
	struct xfer *x = NULL;
	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
	curl_multi_remove_handle(C.multi, easy);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
	if (!x)
		return;
	if (x->prev)
		x->prev->next = x->next;
	else
		C.xfers = x->next;
	if (x->next)
		x->next->prev = x->prev;
	C.n--;
	free(x);
}

unsigned curlm_active(void)
{
	return C.n;
}
