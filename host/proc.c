#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "util.h"

#define RUN_CAPTURE_MAX (16u << 20)

extern char **environ;

struct childw {
	pid_t pid;
	int pidfd;
	mb_watch *w;
	mb_child_fn fn;
	void *ud;
	struct childw *prev, *next;
};

static struct childw *children;
static unsigned nchildren;

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void childw_free(struct childw *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		children = c->next;
	if (c->next)
		c->next->prev = c->prev;
	loop_unwatch(c->w);
	close(c->pidfd);
	nchildren--;
	free(c);
}

static void on_pidfd(int fd, uint32_t events, void *ud)
{
	struct childw *c = ud;
	int wstatus = -1;
	siginfo_t si = { 0 };
	/* Reap if it is our child; an adopted process (ECHILD) has nothing to reap. */
	if (waitid(P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG) == 0) {
		if (si.si_pid == 0)
			return; /* not exited yet: spurious wake-up */
		if (si.si_code == CLD_EXITED)
			wstatus = (si.si_status & 0xff) << 8;
		else
			wstatus = si.si_status & 0x7f; /* killed or dumped */
	}
	mb_child_fn fn = c->fn;
	void *cud = c->ud;
	pid_t pid = c->pid;
	childw_free(c);
	fn(pid, wstatus, cud);
}

int proc_child_watch(pid_t pid, mb_child_fn fn, void *ud, mb_err *err)
{
	int pfd = pidfd_open_(pid);
	if (pfd < 0)
		return mb_err_set(err, -errno, "pidfd_open(%d): %s", (int)pid, strerror(errno));
	struct childw *c = xcalloc(1, sizeof(*c));
	c->pid = pid;
	c->pidfd = pfd;
	c->fn = fn;
	c->ud = ud;
	c->w = loop_watch(pfd, EPOLLIN, on_pidfd, c, err);
	if (!c->w) {
		close(pfd);
		free(c);
		return err ? err->code : -EIO;
	}
	c->next = children;
	if (children)
		children->prev = c;
	children = c;
	nchildren++;
	return 0;
}

/* --- run(): spawn with pipes, capture, wait --- */

struct run {
	long id;
	pid_t pid;
	int in_fd, out_fd, err_fd;
	mb_watch *in_w, *out_w, *err_w;
	const char *in; /* borrowed copy below */
	char *in_copy;
	size_t in_len, in_off;
	buf out, errout;
	bool exited, truncated;
	int wstatus;
	mb_timer *timer;
	mb_run_fn fn;
	void *ud;
	struct run *prev, *next;
};

static struct run *runs;
static long next_run_id = 1;

static void run_unlink(struct run *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		runs = r->next;
	if (r->next)
		r->next->prev = r->prev;
}

static void close_pipe(int *fd, mb_watch **w)
{
	if (*w)
		loop_unwatch(*w);
	*w = NULL;
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void run_free(struct run *r)
{
	close_pipe(&r->in_fd, &r->in_w);
	close_pipe(&r->out_fd, &r->out_w);
	close_pipe(&r->err_fd, &r->err_w);
	loop_timer_stop(r->timer);
	buf_free(&r->out);
	buf_free(&r->errout);
	free(r->in_copy);
	free(r);
}

static void run_maybe_finish(struct run *r)
{
	if (!r->exited || r->out_fd >= 0 || r->err_fd >= 0)
		return;
	run_unlink(r);
	close_pipe(&r->in_fd, &r->in_w);
	buf_reserve(&r->out, 0);
	buf_reserve(&r->errout, 0);
	mb_run_result res = {
		.wstatus = r->wstatus,
		.out = r->out.data,
		.out_len = r->out.len,
		.errout = r->errout.data,
		.errout_len = r->errout.len,
	};
	if (r->fn)
		r->fn(&res, r->ud);
	run_free(r);
}

static void on_run_read(int fd, uint32_t events, void *ud)
{
	struct run *r = ud;
	bool is_out = fd == r->out_fd;
	buf *b = is_out ? &r->out : &r->errout;
	char chunk[65536];
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n > 0) {
			size_t keep = (size_t)n;
			if (b->len + keep > RUN_CAPTURE_MAX) {
				keep = RUN_CAPTURE_MAX - b->len;
				r->truncated = true;
			}
			buf_append(b, chunk, keep);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		break; /* EOF or error */
	}
	if (is_out)
		close_pipe(&r->out_fd, &r->out_w);
	else
		close_pipe(&r->err_fd, &r->err_w);
	run_maybe_finish(r);
}

static void on_run_write(int fd, uint32_t events, void *ud)
{
	struct run *r = ud;
	while (r->in_off < r->in_len) {
		ssize_t n = write(fd, r->in_copy + r->in_off, r->in_len - r->in_off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0)
			break; /* EPIPE: the child does not want it */
		r->in_off += (size_t)n;
	}
	close_pipe(&r->in_fd, &r->in_w);
}

static void on_run_exit(pid_t pid, int wstatus, void *ud)
{
	struct run *r = ud;
	r->exited = true;
	r->wstatus = wstatus;
	loop_timer_stop(r->timer);
	r->timer = NULL;
	run_maybe_finish(r);
}

static void on_run_timeout(void *ud)
{
	struct run *r = ud;
	r->timer = NULL;
	log_warn("killing process %d: timed out", (int)r->pid);
	kill(r->pid, SIGKILL);
}

static int make_pipe(int fds[2], mb_err *err)
{
	if (pipe2(fds, O_CLOEXEC) < 0)
		return mb_err_set(err, -errno, "pipe2: %s", strerror(errno));
	return 0;
}

long proc_run_ex(const char *const argv[], const char *const env[], const char *cwd, const char *in,
                 size_t in_len, uint64_t timeout_ms, mb_run_fn fn, void *ud, mb_err *err)
{
	int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int r;
	if (!argv || !argv[0])
		return mb_err_set(err, -EINVAL, "run: empty argv");
	if ((r = make_pipe(pin, err)) < 0 || (r = make_pipe(pout, err)) < 0 ||
	    (r = make_pipe(perr, err)) < 0)
		goto fail_pipes;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
	posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
	posix_spawn_file_actions_adddup2(&fa, perr[1], 2);
	if (cwd)
		posix_spawn_file_actions_addchdir_np(&fa, cwd);
	posix_spawnattr_init(&attr);
	/* Children start with default signal dispositions and an empty mask (the daemon
	 * blocks the signals it reads through signalfd). */
	sigset_t all, none;
	sigfillset(&all);
	sigemptyset(&none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
	                                    POSIX_SPAWN_SETSID);
	pid_t pid;
	r = posix_spawnp(&pid, argv[0], &fa, &attr, (char *const *)argv,
	                 env ? (char *const *)env : environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (r != 0) {
		mb_err_set(err, -r, "cannot run %s: %s", argv[0], strerror(r));
		r = -r;
		goto fail_pipes;
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	struct run *ru = xcalloc(1, sizeof(*ru));
	ru->id = next_run_id++;
	ru->pid = pid;
	ru->in_fd = pin[1];
	ru->out_fd = pout[0];
	ru->err_fd = perr[0];
	ru->fn = fn;
	ru->ud = ud;
	fcntl(ru->in_fd, F_SETFL, O_NONBLOCK);
	fcntl(ru->out_fd, F_SETFL, O_NONBLOCK);
	fcntl(ru->err_fd, F_SETFL, O_NONBLOCK);
	if (in && in_len) {
		ru->in_copy = xmalloc(in_len);
		memcpy(ru->in_copy, in, in_len);
		ru->in_len = in_len;
		ru->in_w = loop_watch(ru->in_fd, EPOLLOUT, on_run_write, ru, NULL);
	} else {
		close(ru->in_fd);
		ru->in_fd = -1;
	}
	ru->out_w = loop_watch(ru->out_fd, EPOLLIN, on_run_read, ru, NULL);
	ru->err_w = loop_watch(ru->err_fd, EPOLLIN, on_run_read, ru, NULL);
	ru->next = runs;
	if (runs)
		runs->prev = ru;
	runs = ru;
	if (timeout_ms)
		ru->timer = loop_timer(timeout_ms, on_run_timeout, ru);
	if (proc_child_watch(pid, on_run_exit, ru, err) < 0) {
		/* Cannot watch it: kill and reap synchronously (it is ours, this is quick). */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		run_unlink(ru);
		run_free(ru);
		return err ? err->code : -EIO;
	}
	return ru->id;
fail_pipes:
	for (int i = 0; i < 2; i++) {
		if (pin[i] >= 0)
			close(pin[i]);
		if (pout[i] >= 0)
			close(pout[i]);
		if (perr[i] >= 0)
			close(perr[i]);
	}
	return r;
}

int proc_run(const char *const argv[], const char *in, size_t in_len, uint64_t timeout_ms,
             mb_run_fn fn, void *ud, mb_err *err)
{
	long id = proc_run_ex(argv, NULL, NULL, in, in_len, timeout_ms, fn, ud, err);
	return id < 0 ? (int)id : 0;
}

void proc_run_cancel(long id)
{
	for (struct run *r = runs; r; r = r->next) {
		if (r->id == id) {
			r->fn = NULL;
			if (!r->exited)
				kill(r->pid, SIGKILL);
			return;
		}
	}
}

unsigned proc_active(void)
{
	return nchildren;
}

void proc_fini(void)
{
	/* Kill what run() started and reap it, so nothing is left behind. */
	while (runs) {
		struct run *r = runs;
		run_unlink(r);
		if (!r->exited) {
			kill(r->pid, SIGKILL);
			waitpid(r->pid, NULL, 0);
		}
		for (struct childw *c = children; c; c = c->next) {
			if (c->ud == r) {
				childw_free(c);
				break;
			}
		}
		run_free(r);
	}
	while (children)
		childw_free(children);
}
