/*
 * Lua module `term` (the client CLI's terminal):
 *   term.isatty(fd)           -> boolean            (0 stdin, 1 stdout, 2 stderr)
 *   term.size()               -> rows, cols | nil   (of stdout, else stdin)
 *   term.raw(on)              -> true               raw mode on stdin; restored at exit
 *   term.read([max])          ⏳ -> data | nil at end of input
 *   term.write(s), term.ewrite(s)                   blocking writes to stdout / stderr
 *   term.resized()            ⏳ -> rows, cols      the next window-size change (SIGWINCH)
 *   term.signal()             ⏳ -> "SIGINT"|"SIGTERM"|"SIGHUP"|"SIGQUIT"   from the first
 *                             call on, those signals no longer end the client: each one is
 *                             handed to the waiting task (up to 8 are queued meanwhile)
 * stdin is never switched to O_NONBLOCK (that would leak into the user's shell): the loop
 * waits for readiness and then reads once.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "bindings.h"
#include "loop.h"
#include "task.h"

static struct {
	bool raw;
	struct termios saved;
	mb_watch *in_w;
	mb_wait *in_wait;
	size_t in_max;
	int sigfd;
	mb_watch *sig_w;
	mb_wait *sig_wait;
} TM = { .sigfd = -1 };

static void restore(void)
{
	if (TM.raw) {
		tcsetattr(0, TCSANOW, &TM.saved);
		TM.raw = false;
	}
}

static int l_isatty(lua_State *L)
{
	lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
	return 1;
}

static int l_size(lua_State *L)
{
	struct winsize ws;
	if (ioctl(1, TIOCGWINSZ, &ws) < 0 && ioctl(0, TIOCGWINSZ, &ws) < 0)
		return 0;
	lua_pushinteger(L, ws.ws_row);
	lua_pushinteger(L, ws.ws_col);
	return 2;
}

static int l_raw(lua_State *L)
{
	bool on = lua_toboolean(L, 1);
	if (on && !TM.raw && isatty(0)) {
		if (tcgetattr(0, &TM.saved) < 0)
			return lua_failf(L, -errno, "tcgetattr: %s", strerror(errno));
		struct termios t = TM.saved;
		cfmakeraw(&t);
		/* TCSANOW: input typed ahead is kept (TCSAFLUSH would drop it) */
		if (tcsetattr(0, TCSANOW, &t) < 0)
			return lua_failf(L, -errno, "tcsetattr: %s", strerror(errno));
		TM.raw = true;
		static bool registered;
		if (!registered) {
			registered = true;
			atexit(restore);
		}
	} else if (!on) {
		restore();
	}
	lua_pushboolean(L, 1);
	return 1;
}

static void in_stop(void)
{
	if (TM.in_w)
		loop_unwatch(TM.in_w);
	TM.in_w = NULL;
}

static void on_stdin(int fd, uint32_t events, void *ud)
{
	mb_wait *w = TM.in_wait;
	TM.in_wait = NULL;
	in_stop();
	if (!w)
		return;
	lua_State *T = rt_wait_thread(w);
	char *chunk = xmalloc(TM.in_max);
	ssize_t n;
	do
		n = read(0, chunk, TM.in_max); /* readiness said there is data (or EOF) */
	while (n < 0 && errno == EINTR);
	if (n > 0)
		lua_pushlstring(T, chunk, (size_t)n);
	else
		lua_pushnil(T);
	free(chunk);
	rt_wait_done(w, 1);
}

static void in_cancel(void *ud)
{
	TM.in_wait = NULL;
	in_stop();
}

static int l_read(lua_State *L)
{
	lua_Integer max = luaL_optinteger(L, 1, 65536);
	if (max < 1 || max > (16 << 20))
		return luaL_argerror(L, 1, "1..16 MiB");
	if (TM.in_wait)
		return luaL_error(L, "term.read: another task is already reading");
	rt_wait_check(L);
	TM.in_max = (size_t)max;
	mb_err err = { 0 };
	TM.in_w = loop_watch(0, EPOLLIN, on_stdin, NULL, &err);
	if (!TM.in_w) {
		if (err.code != -EPERM)
			return lua_fail(L, &err);
		/* a regular file: epoll cannot watch it, but reading it never blocks */
		char *chunk = xmalloc((size_t)max);
		ssize_t n = read(0, chunk, (size_t)max);
		if (n > 0)
			lua_pushlstring(L, chunk, (size_t)n);
		else
			lua_pushnil(L);
		free(chunk);
		return 1;
	}
	TM.in_wait = rt_wait_begin(L, in_cancel, NULL);
	return rt_wait_yield(L, TM.in_wait, NULL, 0);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int l_write(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	int r = write_all(1, s, n);
	if (r < 0)
		return lua_failf(L, r, "stdout: %s", strerror(-r));
	lua_pushboolean(L, 1);
	return 1;
}

static int l_ewrite(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	write_all(2, s, n);
	return 0;
}

static void on_winch(int fd, uint32_t events, void *ud)
{
	struct signalfd_siginfo si;
	while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
	}
	mb_wait *w = TM.sig_wait;
	TM.sig_wait = NULL;
	if (!w)
		return;
	lua_State *T = rt_wait_thread(w);
	struct winsize ws = { 0 };
	if (ioctl(1, TIOCGWINSZ, &ws) < 0)
		ioctl(0, TIOCGWINSZ, &ws);
	lua_pushinteger(T, ws.ws_row);
	lua_pushinteger(T, ws.ws_col);
	rt_wait_done(w, 2);
}

static void sig_cancel(void *ud)
{
	TM.sig_wait = NULL;
}

static int l_resized(lua_State *L)
{
	if (TM.sig_wait)
		return luaL_error(L, "term.resized: another task is already waiting");
	rt_wait_check(L);
	if (TM.sigfd < 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGWINCH);
		sigprocmask(SIG_BLOCK, &set, NULL);
		TM.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
		mb_err err = { 0 };
		if (TM.sigfd < 0 ||
		    !(TM.sig_w = loop_watch(TM.sigfd, EPOLLIN, on_winch, NULL, &err)))
			return lua_failf(L, -EIO, "cannot watch window size changes");
	}
	TM.sig_wait = rt_wait_begin(L, sig_cancel, NULL);
	return rt_wait_yield(L, TM.sig_wait, NULL, 0);
}

/* ---- term.signal: INT/TERM/HUP/QUIT delivered to a task (run's signal proxy) ---------- */

static struct {
	int fd[2]; /* self-pipe: the handler writes the signal number, the loop reads it */
	mb_watch *w;
	mb_wait *wait;
	int queue[8];
	int n;
} SP = { .fd = { -1, -1 } };

static const int proxied[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

static const char *sig_name(int sig)
{
	switch (sig) {
	case SIGINT:
		return "SIGINT";
	case SIGTERM:
		return "SIGTERM";
	case SIGHUP:
		return "SIGHUP";
	default:
		return "SIGQUIT";
	}
}

/* A handler rather than signalfd: the client's worker threads were started with these
 * signals unblocked, and any of them may be the one that receives it. */
static void proxy_handler(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char)sig;
	ssize_t r = write(SP.fd[1], &b, 1); /* full pipe: the signal is dropped */
	(void)r;
	errno = saved;
}

static void on_proxy_signal(int fd, uint32_t events, void *ud)
{
	unsigned char b;
	while (read(fd, &b, 1) == 1) {
		if (SP.wait) {
			mb_wait *w = SP.wait;
			SP.wait = NULL;
			lua_pushstring(rt_wait_thread(w), sig_name(b));
			rt_wait_done(w, 1);
		} else if (SP.n < (int)(sizeof(SP.queue) / sizeof(SP.queue[0]))) {
			SP.queue[SP.n++] = b;
		}
	}
}

static void proxy_cancel(void *ud)
{
	SP.wait = NULL;
}

static int l_signal(lua_State *L)
{
	if (SP.wait)
		return luaL_error(L, "term.signal: another task is already waiting");
	rt_wait_check(L);
	if (SP.fd[0] < 0) {
		mb_err err = { 0 };
		if (pipe2(SP.fd, O_NONBLOCK | O_CLOEXEC) < 0 ||
		    !(SP.w = loop_watch(SP.fd[0], EPOLLIN, on_proxy_signal, NULL, &err)))
			return lua_failf(L, -EIO, "cannot watch signals");
		/* also takes back SIGINT/SIGQUIT that a shell ignores for background jobs */
		struct sigaction sa = { .sa_handler = proxy_handler, .sa_flags = SA_RESTART };
		sigemptyset(&sa.sa_mask);
		for (size_t i = 0; i < sizeof(proxied) / sizeof(proxied[0]); i++)
			sigaction(proxied[i], &sa, NULL);
	}
	if (SP.n > 0) {
		int sig = SP.queue[0];
		memmove(SP.queue, SP.queue + 1, (size_t)(--SP.n) * sizeof(SP.queue[0]));
		lua_pushstring(L, sig_name(sig));
		return 1;
	}
	SP.wait = rt_wait_begin(L, proxy_cancel, NULL);
	return rt_wait_yield(L, SP.wait, NULL, 0);
}

/* Called by the client runtime before the loop goes away. */
void term_fini(void);
void term_fini(void)
{
	restore();
	in_stop();
	if (TM.sig_w)
		loop_unwatch(TM.sig_w);
	TM.sig_w = NULL;
	if (TM.sigfd >= 0)
		close(TM.sigfd);
	TM.sigfd = -1;
	if (SP.w)
		loop_unwatch(SP.w);
	SP.w = NULL;
	if (SP.fd[0] >= 0) {
		/* the signals end the client again; then the pipe can go */
		for (size_t i = 0; i < sizeof(proxied) / sizeof(proxied[0]); i++)
			signal(proxied[i], SIG_DFL);
		close(SP.fd[0]);
		close(SP.fd[1]);
	}
	SP.fd[0] = SP.fd[1] = -1;
}

static const luaL_Reg funcs[] = {
	{ "isatty", l_isatty },   { "size", l_size },     { "raw", l_raw },
	{ "read", l_read },       { "write", l_write },   { "ewrite", l_ewrite },
	{ "resized", l_resized }, { "signal", l_signal }, { NULL, NULL },
};

int luaopen_mb_term(lua_State *L)
{
	luaL_newlib(L, funcs);
	return 1;
}
