#include "loop.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct tl_curl {
	struct tl_curl *next;
	CURL *easy;
	mb_curl_fn fn;
	void *arg;
};

struct tl_timer {
	struct tl_timer *next;
	uint64_t due;
	mb_fn fn;
	void *arg;
};

struct tl_job {
	struct test_loop *l;
	mb_fn work, done;
	void *arg;
};

struct tl_child {
	struct tl_child *next;
	pid_t pid;
	char errpath[64], outpath[64];
	mb_run_fn fn;
	void *arg;
	uint64_t deadline;
};

struct test_loop {
	CURLM *multi;
	struct tl_curl *curls;
	struct tl_timer *timers;
	struct tl_child *children;
	int pipe[2];
	int jobs;
	struct mbr_io io;
};

static int tl_curl_add(void *ud, CURL *easy, mb_curl_fn fn, void *arg, mb_err *err)
{
	struct test_loop *l = ud;
	struct tl_curl *c = calloc(1, sizeof(*c));
	if (!c)
		return mb_err_set(err, -ENOMEM, "oom");
	c->easy = easy;
	c->fn = fn;
	c->arg = arg;
	if (curl_multi_add_handle(l->multi, easy) != CURLM_OK) {
		free(c);
		return mb_err_set(err, -EIO, "curl_multi_add_handle failed");
	}
	c->next = l->curls;
	l->curls = c;
	return 0;
}

static struct tl_curl *take_curl(struct test_loop *l, CURL *easy)
{
	for (struct tl_curl **pp = &l->curls; *pp; pp = &(*pp)->next)
		if ((*pp)->easy == easy) {
			struct tl_curl *c = *pp;
			*pp = c->next;
			return c;
		}
	return NULL;
}

static void tl_curl_remove(void *ud, CURL *easy)
{
	struct test_loop *l = ud;
	struct tl_curl *c = take_curl(l, easy);
	if (c) {
		curl_multi_remove_handle(l->multi, easy);
		free(c);
	}
}

static void *tl_timer_start(void *ud, uint64_t ms, mb_fn fn, void *arg)
{
	struct test_loop *l = ud;
	struct tl_timer *t = calloc(1, sizeof(*t));
	if (!t)
		abort();
	t->due = mbr_now_ms() + ms;
	t->fn = fn;
	t->arg = arg;
	t->next = l->timers;
	l->timers = t;
	return t;
}

static void tl_timer_stop(void *ud, void *timer)
{
	struct test_loop *l = ud;
	for (struct tl_timer **pp = &l->timers; *pp; pp = &(*pp)->next)
		if (*pp == timer) {
			*pp = ((struct tl_timer *)timer)->next;
			free(timer);
			return;
		}
}

static void *job_thread(void *arg)
{
	struct tl_job *j = arg;
	j->work(j->arg);
	ssize_t n = write(j->l->pipe[1], &j, sizeof(j));
	(void)n;
	return NULL;
}

static int tl_work(void *ud, mb_fn work, mb_fn done, void *arg, mb_err *err)
{
	struct test_loop *l = ud;
	struct tl_job *j = calloc(1, sizeof(*j));
	if (!j)
		return mb_err_set(err, -ENOMEM, "oom");
	*j = (struct tl_job){ l, work, done, arg };
	pthread_t t;
	if (pthread_create(&t, NULL, job_thread, j) != 0) {
		free(j);
		return mb_err_set(err, -EAGAIN, "pthread_create failed");
	}
	pthread_detach(t);
	l->jobs++;
	return 0;
}

static int tl_run_child(void *ud, const char *const argv[], uint64_t timeout_ms, mb_run_fn fn,
                        void *arg, mb_err *err)
{
	struct test_loop *l = ud;
	struct tl_child *c = calloc(1, sizeof(*c));
	if (!c)
		return mb_err_set(err, -ENOMEM, "oom");
	snprintf(c->errpath, sizeof(c->errpath), "/tmp/mbr-loop-err-XXXXXX");
	snprintf(c->outpath, sizeof(c->outpath), "/tmp/mbr-loop-out-XXXXXX");
	int efd = mkstemp(c->errpath), ofd = mkstemp(c->outpath);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, ofd, 1);
	posix_spawn_file_actions_adddup2(&fa, efd, 2);
	int r = posix_spawnp(&c->pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(efd);
	close(ofd);
	if (r != 0) {
		unlink(c->errpath);
		unlink(c->outpath);
		free(c);
		return mb_err_set(err, -r, "spawn %s: %s", argv[0], strerror(r));
	}
	c->fn = fn;
	c->arg = arg;
	c->deadline = timeout_ms ? mbr_now_ms() + timeout_ms : 0;
	c->next = l->children;
	l->children = c;
	return 0;
}

static void tl_log(void *ud, int level, const char *msg)
{
	if (getenv("MBR_VERBOSE"))
		fprintf(stderr, "[%d] %s\n", level, msg);
}

struct test_loop *tl_new(void)
{
	struct test_loop *l = calloc(1, sizeof(*l));
	if (!l || pipe2(l->pipe, O_CLOEXEC) < 0)
		abort();
	l->multi = curl_multi_init();
	l->io = (struct mbr_io){ .ud = l,
		                 .curl_add = tl_curl_add,
		                 .curl_remove = tl_curl_remove,
		                 .timer_start = tl_timer_start,
		                 .timer_stop = tl_timer_stop,
		                 .work = tl_work,
		                 .run = tl_run_child,
		                 .log = tl_log };
	return l;
}

void tl_free(struct test_loop *l)
{
	while (l->curls)
		tl_curl_remove(l, l->curls->easy);
	while (l->timers)
		tl_timer_stop(l, l->timers);
	curl_multi_cleanup(l->multi);
	close(l->pipe[0]);
	close(l->pipe[1]);
	free(l);
}

const struct mbr_io *tl_io(struct test_loop *l)
{
	return &l->io;
}

static void reap_children(struct test_loop *l)
{
	for (struct tl_child **pp = &l->children; *pp;) {
		struct tl_child *c = *pp;
		int st;
		if (c->deadline && mbr_now_ms() > c->deadline)
			kill(c->pid, SIGKILL);
		pid_t r = waitpid(c->pid, &st, WNOHANG);
		if (r == 0) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		mb_run_result res = { .wstatus = r < 0 ? -1 : st };
		mbr_read_file(c->errpath, 16 << 20, &res.errout, &res.errout_len, NULL);
		mbr_read_file(c->outpath, 16 << 20, &res.out, &res.out_len, NULL);
		unlink(c->errpath);
		unlink(c->outpath);
		c->fn(&res, c->arg);
		free(res.errout);
		free(res.out);
		free(c);
	}
}

void tl_run(struct test_loop *l, volatile bool *stop)
{
	while (!*stop) {
		if (!l->curls && !l->timers && !l->jobs && !l->children)
			return;
		uint64_t now = mbr_now_ms();
		long wait = l->children ? 20 : 500;
		for (struct tl_timer *t = l->timers; t; t = t->next)
			if ((long)(t->due > now ? t->due - now : 0) < wait)
				wait = (long)(t->due > now ? t->due - now : 0);
		struct curl_waitfd wfd = { .fd = l->pipe[0], .events = CURL_WAIT_POLLIN };
		curl_multi_poll(l->multi, &wfd, 1, (int)wait, NULL);
		int running;
		curl_multi_perform(l->multi, &running);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(l->multi, &left))) {
			if (m->msg != CURLMSG_DONE)
				continue;
			CURL *e = m->easy_handle;
			CURLcode res = m->data.result;
			struct tl_curl *c = take_curl(l, e);
			curl_multi_remove_handle(l->multi, e);
			if (c) {
				c->fn(e, res, c->arg);
				free(c);
			}
		}
		if (wfd.revents & CURL_WAIT_POLLIN) {
			struct tl_job *j;
			struct pollfd pf = { .fd = l->pipe[0], .events = POLLIN };
			while (poll(&pf, 1, 0) == 1 &&
			       read(l->pipe[0], &j, sizeof(j)) == sizeof(j)) {
				l->jobs--;
				j->done(j->arg);
				free(j);
			}
		}
		now = mbr_now_ms();
		for (struct tl_timer **pp = &l->timers; *pp;) {
			struct tl_timer *t = *pp;
			if (t->due <= now) {
				*pp = t->next;
				mb_fn fn = t->fn;
				void *arg = t->arg;
				free(t);
				fn(arg);
				pp = &l->timers; /* the list may have changed */
			} else {
				pp = &t->next;
			}
		}
		if (l->children)
			reap_children(l);
	}
}
