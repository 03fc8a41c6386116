#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct mb_watch {
	int fd;
	uint32_t events;
	mb_fd_fn fn;
	void *ud;
	bool dead;
	struct mb_watch *next_dead;
};

struct mb_timer {
	uint64_t deadline;
	uint64_t seq; /* FIFO order among equal deadlines */
	mb_fn fn;
	void *ud;
	size_t idx; /* position in the heap; SIZE_MAX while firing */
	bool stopped;
};

struct call {
	mb_fn fn;
	void *ud;
};

struct callq {
	struct call *v;
	size_t len, cap;
};

struct hook {
	loop_prepare_fn prepare;
	mb_fn check;
	void *ud;
};

static struct {
	int epfd;
	int evfd;
	mb_watch *evwatch;
	bool running, stop;
	unsigned nwatches;
	mb_watch *dead;
	mb_timer **heap;
	size_t nheap, capheap;
	uint64_t timer_seq;
	struct callq deferred;
	pthread_mutex_t post_lock;
	struct callq posted;
	struct hook *hooks;
	size_t nhooks;
} L = { .epfd = -1, .evfd = -1, .post_lock = PTHREAD_MUTEX_INITIALIZER };

static void callq_push(struct callq *q, mb_fn fn, void *ud)
{
	if (q->len == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 64;
		q->v = xrealloc(q->v, q->cap * sizeof(*q->v));
	}
	q->v[q->len++] = (struct call){ fn, ud };
}

/* --- timers: a binary min-heap ordered by (deadline, seq) --- */

static bool timer_less(const mb_timer *a, const mb_timer *b)
{
	return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_set(size_t i, mb_timer *t)
{
	L.heap[i] = t;
	t->idx = i;
}

static void heap_up(size_t i)
{
	mb_timer *t = L.heap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!timer_less(t, L.heap[p]))
			break;
		heap_set(i, L.heap[p]);
		i = p;
	}
	heap_set(i, t);
}

static void heap_down(size_t i)
{
	mb_timer *t = L.heap[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= L.nheap)
			break;
		if (c + 1 < L.nheap && timer_less(L.heap[c + 1], L.heap[c]))
			c++;
		if (!timer_less(L.heap[c], t))
			break;
		heap_set(i, L.heap[c]);
		i = c;
	}
	heap_set(i, t);
}

static void heap_remove(size_t i)
{
	L.nheap--;
	if (i == L.nheap)
		return;
	heap_set(i, L.heap[L.nheap]);
	heap_down(i);
	heap_up(L.heap[i]->idx);
}

mb_timer *loop_timer(uint64_t ms, mb_fn fn, void *ud)
{
	mb_timer *t = xcalloc(1, sizeof(*t));
	t->deadline = mb_now_ms() + ms;
	t->seq = L.timer_seq++;
	t->fn = fn;
	t->ud = ud;
	if (L.nheap == L.capheap) {
		L.capheap = L.capheap ? L.capheap * 2 : 64;
		L.heap = xrealloc(L.heap, L.capheap * sizeof(*L.heap));
	}
	L.heap[L.nheap] = t;
	t->idx = L.nheap++;
	heap_up(t->idx);
	return t;
}

void loop_timer_stop(mb_timer *t)
{
	if (!t)
		return;
	if (t->idx == SIZE_MAX) { /* stopping itself from its own callback */
		t->stopped = true;
		return;
	}
	heap_remove(t->idx);
	free(t);
}

static void run_timers(void)
{
	uint64_t now = mb_now_ms();
	while (L.nheap && L.heap[0]->deadline <= now) {
		mb_timer *t = L.heap[0];
		heap_remove(0);
		t->idx = SIZE_MAX;
		t->fn(t->ud);
		free(t);
	}
}

/* --- fd watches --- */

mb_watch *loop_watch(int fd, uint32_t events, mb_fd_fn fn, void *ud, mb_err *err)
{
	mb_watch *w = xcalloc(1, sizeof(*w));
	w->fd = fd;
	w->events = events;
	w->fn = fn;
	w->ud = ud;
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(L.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		mb_err_set(err, -errno, "epoll_ctl(ADD, fd %d): %s", fd, strerror(errno));
		free(w);
		return NULL;
	}
	L.nwatches++;
	return w;
}

int loop_modify(mb_watch *w, uint32_t events, mb_err *err)
{
	if (w->events == events)
		return 0;
	struct epoll_event ev = { .events = events, .data.ptr = w };
	if (epoll_ctl(L.epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
		return mb_err_set(err, -errno, "epoll_ctl(MOD, fd %d): %s", w->fd, strerror(errno));
	w->events = events;
	return 0;
}

void loop_unwatch(mb_watch *w)
{
	if (!w || w->dead)
		return;
	epoll_ctl(L.epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->dead = true;
	w->next_dead = L.dead;
	L.dead = w;
	L.nwatches--;
}

static void free_dead(void)
{
	while (L.dead) {
		mb_watch *w = L.dead;
		L.dead = w->next_dead;
		free(w);
	}
}

/* --- cross-thread posts and deferred calls --- */

int loop_post(mb_fn fn, void *ud)
{
	pthread_mutex_lock(&L.post_lock);
	callq_push(&L.posted, fn, ud);
	pthread_mutex_unlock(&L.post_lock);
	uint64_t one = 1;
	ssize_t r = write(L.evfd, &one, sizeof(one));
	(void)r; /* EAGAIN means the counter is already non-zero: the loop will wake */
	return 0;
}

static void on_posted(int fd, uint32_t events, void *ud)
{
	uint64_t n;
	ssize_t r = read(fd, &n, sizeof(n));
	(void)r;
	pthread_mutex_lock(&L.post_lock);
	struct callq q = L.posted;
	L.posted = (struct callq){ 0 };
	pthread_mutex_unlock(&L.post_lock);
	for (size_t i = 0; i < q.len; i++)
		q.v[i].fn(q.v[i].ud);
	free(q.v);
}

void loop_defer(mb_fn fn, void *ud)
{
	callq_push(&L.deferred, fn, ud);
}

static void run_deferred(void)
{
	/* Only what was queued before this pass runs now, so a task that keeps yielding
	 * cannot starve I/O. */
	struct callq q = L.deferred;
	L.deferred = (struct callq){ 0 };
	for (size_t i = 0; i < q.len; i++)
		q.v[i].fn(q.v[i].ud);
	free(q.v);
}

void loop_add_hook(loop_prepare_fn prepare, mb_fn check, void *ud)
{
	L.hooks = xrealloc(L.hooks, (L.nhooks + 1) * sizeof(*L.hooks));
	L.hooks[L.nhooks++] = (struct hook){ prepare, check, ud };
}

void loop_remove_hook(void *ud)
{
	for (size_t i = 0; i < L.nhooks; i++) {
		if (L.hooks[i].ud == ud) {
			memmove(&L.hooks[i], &L.hooks[i + 1],
			        (L.nhooks - i - 1) * sizeof(*L.hooks));
			L.nhooks--;
			return;
		}
	}
}

void loop_counts(unsigned *watches, unsigned *timers)
{
	if (watches)
		*watches = L.nwatches;
	if (timers)
		*timers = (unsigned)L.nheap;
}

/* --- the loop --- */

int loop_init(mb_err *err)
{
	L.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (L.epfd < 0)
		return mb_err_set(err, -errno, "epoll_create1: %s", strerror(errno));
	L.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (L.evfd < 0) {
		int e = mb_err_set(err, -errno, "eventfd: %s", strerror(errno));
		close(L.epfd);
		L.epfd = -1;
		return e;
	}
	L.evwatch = loop_watch(L.evfd, EPOLLIN, on_posted, NULL, err);
	if (!L.evwatch) {
		close(L.evfd);
		close(L.epfd);
		L.evfd = L.epfd = -1;
		return err ? err->code : -EIO;
	}
	return 0;
}

void loop_once(int max_ms)
{
	struct epoll_event evs[64];
	run_deferred();
	int64_t timeout = max_ms;
	if (L.deferred.len || L.stop)
		timeout = 0; /* more to do now, or a stop was requested: do not sleep */
	if (L.nheap) {
		uint64_t now = mb_now_ms();
		int64_t t = L.heap[0]->deadline > now ? (int64_t)(L.heap[0]->deadline - now) : 0;
		if (timeout < 0 || t < timeout)
			timeout = t;
	}
	for (size_t i = 0; i < L.nhooks; i++) {
		if (!L.hooks[i].prepare)
			continue;
		int64_t t = L.hooks[i].prepare(L.hooks[i].ud);
		if (t >= 0 && (timeout < 0 || t < timeout))
			timeout = t;
	}
	if (timeout > 60000)
		timeout = 60000;
	int n = epoll_wait(L.epfd, evs, (int)ARRAY_SIZE(evs), (int)timeout);
	if (n < 0 && errno != EINTR)
		log_error("epoll_wait: %s", strerror(errno));
	for (int i = 0; i < n; i++) {
		mb_watch *w = evs[i].data.ptr;
		if (!w->dead)
			w->fn(w->fd, evs[i].events, w->ud);
	}
	free_dead();
	run_timers();
	for (size_t i = 0; i < L.nhooks; i++)
		if (L.hooks[i].check)
			L.hooks[i].check(L.hooks[i].ud);
}

int loop_run(void)
{
	L.running = true;
	L.stop = false;
	while (!L.stop)
		loop_once(-1);
	L.running = false;
	L.stop = false;
	return 0;
}

void loop_stop(void)
{
	L.stop = true;
}

void loop_fini(void)
{
	/* Pending deferred and posted calls are dropped: callers drain before this. */
	if (L.evwatch)
		loop_unwatch(L.evwatch);
	free_dead();
	for (size_t i = 0; i < L.nheap; i++)
		free(L.heap[i]);
	free(L.heap);
	free(L.deferred.v);
	free(L.posted.v);
	free(L.hooks);
	if (L.evfd >= 0)
		close(L.evfd);
	if (L.epfd >= 0)
		close(L.epfd);
	L.heap = NULL;
	L.nheap = L.capheap = 0;
	L.deferred = (struct callq){ 0 };
	L.posted = (struct callq){ 0 };
	L.hooks = NULL;
	L.nhooks = 0;
	L.evwatch = NULL;
	L.evfd = L.epfd = -1;
}
