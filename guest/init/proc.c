/*
 * Container processes: the main process (its own mount/pid/uts/ipc/cgroup namespaces,
 * pivot_root into the image rootfs) and exec'd processes (setns into the main one's
 * namespaces), their stdio streams with offsets and back-pressure, and exit status.
 *
 * Spawning: the agent (multi-threaded because of nng) fork()s an intermediate child,
 * which unshare()s (run) or setns()es (exec), joins the container cgroup and clone()s the
 * real process with CLONE_PARENT, so the agent is its parent and reaps it directly. The
 * intermediate reports the pid over a SOCK_SEQPACKET pair and exits; the process reports
 * setup errors (or passes the pty master) over the same pair, which is close-on-exec, so
 * EOF on it means the exec succeeded.
 */
#include "init.h"
#include "user.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define DEFAULT_BUFFER (1u << 20)
#define MAX_BUFFER     (64u << 20)
#define MAX_STDIN_BUF  (1u << 20)
#define DEFAULT_PATH   "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

struct mb_proc;

struct pwatch {
	struct mb_tag tag; /* first: epoll data points here */
	struct mb_proc *p;
	int which; /* 0 stdin, 1 stdout, 2 stderr */
};

struct stream {
	struct pwatch w;
	int fd;
	uint8_t *buf; /* bytes [base, base+len) */
	size_t len, cap, max;
	uint64_t base;
	bool eof;
	bool armed;
};

struct instream {
	struct pwatch w;
	int fd;
	uint8_t *buf;
	size_t len;
	uint64_t off; /* bytes accepted from the host so far */
	bool eof_req;
	bool closed;
	bool armed;
};

struct mb_proc {
	char id[128];
	char hostname[65]; /* main: the container's hostname (exec'd processes inherit it) */
	bool is_main;
	bool tty;
	pid_t pid;
	int pidfd;
	int master; /* pty master, or -1 */
	struct stream out, err;
	struct instream in;
	bool exited;
	int wstatus;
	bool oom;
	int64_t oom_base;
	uint64_t started_ms;
	struct mb_proc *next;
};

struct mb_procs {
	struct mb_proc *list;
	struct mb_proc *main;
	bool cgroup_ready;
};

int mb_procs_init(struct mb_agent *a)
{
	a->procs = calloc(1, sizeof(struct mb_procs));
	return a->procs ? 0 : -ENOMEM;
}

static struct mb_proc *find(struct mb_agent *a, const char *id)
{
	for (struct mb_proc *p = a->procs->list; p; p = p->next) {
		if (strcmp(p->id, id) == 0)
			return p;
	}
	return NULL;
}

pid_t mb_procs_main_pid(struct mb_agent *a)
{
	struct mb_proc *m = a->procs->main;
	return m && !m->exited ? m->pid : 0;
}

/* --- epoll arming ---------------------------------------------------------------- */

static void arm(struct mb_agent *a, struct pwatch *w, int fd, bool *armed, uint32_t ev)
{
	if (*armed || fd < 0)
		return;
	struct epoll_event e = { .events = ev, .data.ptr = w };
	if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &e) == 0)
		*armed = true;
}

static void disarm(struct mb_agent *a, int fd, bool *armed)
{
	if (!*armed)
		return;
	epoll_ctl(a->epfd, EPOLL_CTL_DEL, fd, NULL);
	*armed = false;
}

static void stream_close(struct mb_agent *a, struct stream *s)
{
	disarm(a, s->fd, &s->armed);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->eof = true;
}

static void in_close(struct mb_agent *a, struct instream *in)
{
	disarm(a, in->fd, &in->armed);
	if (in->fd >= 0)
		close(in->fd);
	in->fd = -1;
	in->closed = true;
	free(in->buf);
	in->buf = NULL;
	in->len = 0;
}

/* Read what the pipe has, up to the buffer limit (back-pressure beyond it). */
static void stream_fill(struct mb_agent *a, struct stream *s)
{
	while (s->fd >= 0 && s->len < s->max) {
		if (s->cap < s->max && s->len == s->cap) {
			size_t nc = s->cap ? s->cap * 2 : 65536;
			if (nc > s->max)
				nc = s->max;
			uint8_t *nb = realloc(s->buf, nc);
			if (!nb)
				break;
			s->buf = nb;
			s->cap = nc;
		}
		ssize_t r = read(s->fd, s->buf + s->len, s->cap - s->len);
		if (r > 0) {
			s->len += (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			break;
		/* 0 = EOF; EIO on a pty master = the slave side is gone. */
		stream_close(a, s);
		return;
	}
	if (s->fd >= 0 && s->len >= s->max)
		disarm(a, s->fd, &s->armed);
	else if (s->fd >= 0)
		arm(a, &s->w, s->fd, &s->armed, EPOLLIN);
}

static void in_flush(struct mb_agent *a, struct instream *in)
{
	while (in->fd >= 0 && in->len) {
		ssize_t w = write(in->fd, in->buf, in->len);
		if (w > 0) {
			memmove(in->buf, in->buf + w, in->len - (size_t)w);
			in->len -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			arm(a, &in->w, in->fd, &in->armed, EPOLLOUT);
			return;
		}
		in_close(a, in); /* EPIPE: the reader is gone */
		return;
	}
	if (in->fd >= 0)
		disarm(a, in->fd, &in->armed);
	if (in->fd >= 0 && in->eof_req) {
		if (in->fd == in->w.p->master || in->w.p->tty) {
			/* pty: send EOF (^D) instead of closing the terminal */
			char eot = 4;
			ssize_t w = write(in->fd, &eot, 1);
			(void)w;
			disarm(a, in->fd, &in->armed);
			close(in->fd);
			in->fd = -1;
			in->closed = true;
		} else {
			in_close(a, in);
		}
	}
}

void mb_procs_event(struct mb_agent *a, void *tag, uint32_t events)
{
	struct pwatch *w = tag;
	struct mb_proc *p = w->p;
	if (w->which == 0) {
		if (events & (EPOLLERR | EPOLLHUP))
			in_close(a, &p->in);
		else
			in_flush(a, &p->in);
		return;
	}
	stream_fill(a, w->which == 1 ? &p->out : &p->err);
}

/* --- exit status ----------------------------------------------------------------- */

static int64_t oom_kills(void)
{
	char buf[1024];
	if (mb_read_file(MB_CGROUP_DIR "/memory.events", buf, sizeof(buf)) < 0)
		return 0;
	char *p = strstr(buf, "oom_kill ");
	return p ? strtoll(p + 9, NULL, 10) : 0;
}

/* New reference (caller decrefs): the exit status object of p. */
static json_t *status_json(struct mb_proc *p)
{
	if (!p->exited)
		return json_pack("{s:b,s:i}", "exited", 0, "pid", p->pid);
	int code = 0, sig = 0;
	if (WIFEXITED(p->wstatus)) {
		code = WEXITSTATUS(p->wstatus);
	} else if (WIFSIGNALED(p->wstatus)) {
		sig = WTERMSIG(p->wstatus);
		code = 128 + sig;
	}
	return json_pack("{s:b,s:i,s:i,s:i,s:b}", "exited", 1, "pid", p->pid, "exit_code", code,
	                 "signal", sig, "oom_killed", p->oom);
}

void mb_procs_sigchld(struct mb_agent *a)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG | __WALL);
		if (pid <= 0)
			break;
		for (struct mb_proc *p = a->procs->list; p; p = p->next) {
			if (p->pid != pid || p->exited)
				continue;
			p->exited = true;
			p->wstatus = st;
			if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && oom_kills() > p->oom_base)
				p->oom = true;
			if (p->pidfd >= 0)
				close(p->pidfd);
			p->pidfd = -1;
			mb_log("%s %s (pid %d) exited: %s %d%s", p->is_main ? "container" : "exec",
			       p->id, pid, WIFSIGNALED(st) ? "signal" : "code",
			       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
			       p->oom ? " (OOM killed)" : "");
			/* Drain what is left; the pipes may stay open in other processes. */
			stream_fill(a, &p->out);
			stream_fill(a, &p->err);
			if (p->in.fd >= 0)
				in_close(a, &p->in);
		}
	}
}

void mb_procs_signal_all(struct mb_agent *a, int sig)
{
	for (struct mb_proc *p = a->procs->list; p; p = p->next) {
		if (!p->exited && p->pid > 0)
			kill(p->pid, sig);
	}
}

bool mb_procs_alive(struct mb_agent *a)
{
	for (struct mb_proc *p = a->procs->list; p; p = p->next) {
		if (!p->exited)
			return true;
	}
	return false;
}

/* --- spawning --------------------------------------------------------------------- */

struct spec {
	bool is_exec;
	bool tty;
	bool open_stdin;
	unsigned short rows, cols;
	char **argv; /* heap, NULL-terminated */
	char **envp; /* heap, NULL-terminated */
	const char *cwd;
	const char *user;
	const char *hostname;
	const struct mb_config *cfg;
	int target_pidfd; /* exec: the main process */
};

struct ctlmsg {
	char kind; /* 'P' pid, 'F' pty master (SCM_RIGHTS), 'E' error */
	int val;
	char text[240];
};

static void ctl_send(int fd, char kind, int val, int passfd, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void ctl_send(int fd, char kind, int val, int passfd, const char *fmt, ...)
{
	struct ctlmsg m;
	memset(&m, 0, sizeof(m));
	m.kind = kind;
	m.val = val;
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(m.text, sizeof(m.text), fmt, ap);
		va_end(ap);
	}
	struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (passfd >= 0) {
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &passfd, sizeof(int));
	}
	ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
	(void)w;
}

#define FAIL(ctl, e, ...)                                                                          \
	do {                                                                                       \
		ctl_send(ctl, 'E', e, -1, __VA_ARGS__);                                            \
		_exit(127);                                                                        \
	} while (0)

static int ensure_file(const char *path)
{
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (S_ISREG(st.st_mode))
			return 0;
		if (S_ISDIR(st.st_mode))
			return -EISDIR;
		unlink(path); /* a symlink (e.g. to systemd-resolved): replace it */
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static void mount_or_fail(int ctl, const char *src, const char *dst, const char *type,
                          unsigned long flags, const char *data)
{
	mb_mkdir_p(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0)
		FAIL(ctl, errno, "mount %s on %s: %s", type, dst, strerror(errno));
}

/* In the new mount namespace: build the container's root and pivot into it. */
static void setup_root(int ctl, const struct spec *sp)
{
	static const char *etc[] = { "hosts", "hostname", "resolv.conf" };
	int etcfd[3];
	const struct mb_config *cfg = sp->cfg;
	int volfd[64];
	int nvol = cfg->nmounts < 64 ? cfg->nmounts : 64;

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		FAIL(ctl, errno, "make mounts private: %s", strerror(errno));
	for (int i = 0; i < 3; i++) {
		char src[128];
		snprintf(src, sizeof(src), MB_ETC_DIR "/%s", etc[i]);
		etcfd[i] = open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (etcfd[i] < 0)
			FAIL(ctl, errno, "open_tree %s: %s", src, strerror(errno));
	}
	for (int i = 0; i < nvol; i++) {
		volfd[i] = open_tree(AT_FDCWD, cfg->mounts[i].staged,
		                     OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
		if (volfd[i] < 0)
			FAIL(ctl, errno, "open_tree %s: %s", cfg->mounts[i].staged,
			     strerror(errno));
	}
	if (chdir(MB_ROOTFS_DIR) < 0)
		FAIL(ctl, errno, "chdir rootfs: %s", strerror(errno));
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		FAIL(ctl, errno, "pivot_root: %s", strerror(errno));
	if (umount2(".", MNT_DETACH) < 0)
		FAIL(ctl, errno, "detach old root: %s", strerror(errno));
	if (chdir("/") < 0)
		FAIL(ctl, errno, "chdir /: %s", strerror(errno));

	mount_or_fail(ctl, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_fail(ctl, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME,
	              "mode=755,size=65536k");
	static const struct {
		const char *name;
		unsigned maj, min;
	} nodes[] = { { "null", 1, 3 },   { "zero", 1, 5 },    { "full", 1, 7 },
		      { "random", 1, 8 }, { "urandom", 1, 9 }, { "tty", 5, 0 } };
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		char p[64];
		snprintf(p, sizeof(p), "/dev/%s", nodes[i].name);
		if (mknod(p, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
			FAIL(ctl, errno, "mknod %s: %s", p, strerror(errno));
		chmod(p, 0666);
	}
	symlink("/proc/self/fd", "/dev/fd");
	symlink("/proc/self/fd/0", "/dev/stdin");
	symlink("/proc/self/fd/1", "/dev/stdout");
	symlink("/proc/self/fd/2", "/dev/stderr");
	symlink("pts/ptmx", "/dev/ptmx");
	mount_or_fail(ctl, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
	              "newinstance,ptmxmode=0666,mode=0620,gid=5");
	mount_or_fail(ctl, "shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
	              "mode=1777,size=65536k");
	mb_mkdir_p("/dev/mqueue", 0755);
	mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_fail(ctl, "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
	              NULL);
	mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
	      NULL);

	mb_mkdir_p("/etc", 0755);
	for (int i = 0; i < 3; i++) {
		char dst[64];
		snprintf(dst, sizeof(dst), "/etc/%s", etc[i]);
		if (ensure_file(dst) < 0)
			continue;
		if (move_mount(etcfd[i], "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
			FAIL(ctl, errno, "mount %s: %s", dst, strerror(errno));
		close(etcfd[i]);
	}
	for (int i = 0; i < nvol; i++) {
		const struct mb_mount *m = &cfg->mounts[i];
		int rc = mb_mkdir_p(m->target, 0755);
		if (rc < 0)
			FAIL(ctl, -rc, "mkdir %s: %s", m->target, strerror(-rc));
		if (move_mount(volfd[i], "", AT_FDCWD, m->target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
			FAIL(ctl, errno, "mount %s: %s", m->target, strerror(errno));
		close(volfd[i]);
		if (m->ro &&
		    mount(NULL, m->target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
			FAIL(ctl, errno, "remount %s read-only: %s", m->target, strerror(errno));
	}
	if (sp->hostname && *sp->hostname)
		sethostname(sp->hostname, strlen(sp->hostname));
}

static bool env_has(char **envp, const char *key)
{
	size_t kl = strlen(key);
	for (char **e = envp; e && *e; e++) {
		if (strncmp(*e, key, kl) == 0 && (*e)[kl] == '=')
			return true;
	}
	return false;
}

/* Returns a new environment with defaults added (heap; the process execs right after). */
static char **env_defaults(char **envp, const struct spec *sp, const struct mb_user *u)
{
	size_t n = 0;
	while (envp && envp[n])
		n++;
	char **e = calloc(n + 5, sizeof(char *));
	if (!e)
		return envp;
	for (size_t i = 0; i < n; i++)
		e[i] = envp[i];
	if (!env_has(e, "PATH"))
		e[n++] = (char *)"PATH=" DEFAULT_PATH;
	if (!env_has(e, "HOME")) {
		char *h = malloc(strlen(u->home) + 6);
		if (h) {
			sprintf(h, "HOME=%s", u->home);
			e[n++] = h;
		}
	}
	if (!env_has(e, "HOSTNAME") && sp->hostname && *sp->hostname) {
		char *h = malloc(strlen(sp->hostname) + 10);
		if (h) {
			sprintf(h, "HOSTNAME=%s", sp->hostname);
			e[n++] = h;
		}
	}
	if (sp->tty && !env_has(e, "TERM"))
		e[n++] = (char *)"TERM=xterm";
	e[n] = NULL;
	return e;
}

__attribute__((noreturn)) static void child_exec(int ctl, const struct spec *sp, int fds[3])
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);

	if (!sp->is_exec)
		setup_root(ctl, sp);

	int slave = -1;
	if (sp->tty) {
		int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (master < 0)
			FAIL(ctl, errno, "open /dev/ptmx: %s", strerror(errno));
		char name[64];
		if (unlockpt(master) < 0 || ptsname_r(master, name, sizeof(name)) != 0)
			FAIL(ctl, errno, "pty: %s", strerror(errno));
		slave = open(name, O_RDWR | O_NOCTTY);
		if (slave < 0)
			FAIL(ctl, errno, "open %s: %s", name, strerror(errno));
		if (sp->rows && sp->cols) {
			struct winsize ws = { .ws_row = sp->rows, .ws_col = sp->cols };
			ioctl(slave, TIOCSWINSZ, &ws);
		}
		ctl_send(ctl, 'F', 0, master, NULL);
		close(master);
		if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0)
			FAIL(ctl, errno, "controlling terminal: %s", strerror(errno));
		/* Like docker -t: stdin is the terminal even when the host sends no input. */
		dup2(slave, 0);
		dup2(slave, 1);
		dup2(slave, 2);
		if (slave > 2)
			close(slave);
	} else {
		setsid();
		int in = fds[0];
		if (in < 0)
			in = open("/dev/null", O_RDONLY);
		if (in < 0 || dup2(in, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0)
			FAIL(ctl, errno, "stdio: %s", strerror(errno));
	}

	struct mb_user u;
	char why[240];
	int rc = mb_resolve_user(sp->user, &u, why, sizeof(why));
	if (rc < 0)
		FAIL(ctl, -rc, "%s", why);
	const char *cwd = sp->cwd && *sp->cwd ? sp->cwd : "/";
	if (chdir(cwd) < 0) {
		if (errno == ENOENT && !sp->is_exec && mb_mkdir_p(cwd, 0755) == 0 &&
		    chdir(cwd) == 0) {
			/* Docker creates a missing working directory for the container */
		} else {
			FAIL(ctl, errno, "chdir to cwd (\"%s\") set in config: %s", cwd,
			     strerror(errno));
		}
	}
	if (setgroups((size_t)u.ngroups, u.groups) < 0 || setgid(u.gid) < 0 || setuid(u.uid) < 0)
		FAIL(ctl, errno, "set user %s: %s", sp->user ? sp->user : "", strerror(errno));
	if (chdir(cwd) < 0) {
		/* permissions may differ once the user is switched */
		FAIL(ctl, errno, "chdir to cwd (\"%s\"): %s", cwd, strerror(errno));
	}
	environ = env_defaults(sp->envp, sp, &u);
	close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
	execvp(sp->argv[0], sp->argv);
	int e = errno;
	if (e == ENOENT && !strchr(sp->argv[0], '/'))
		FAIL(ctl, e, "exec: \"%s\": executable file not found in $PATH", sp->argv[0]);
	FAIL(ctl, e, "exec: \"%s\": %s", sp->argv[0], strerror(e));
}

/* The container's cgroup: enable the controllers whose files cgroup_setup() writes and
 * create the group. Creating it costs tens of milliseconds under TCG, largely waiting in
 * the kernel, so mb_procs_prepare() does it on a thread while init mounts the disks.
 * Returns 0 or a negative errno. */
static int cgroup_create(void)
{
	static const char *ctrls[] = { "+cpu", "+memory", "+pids" };
	for (size_t i = 0; i < sizeof(ctrls) / sizeof(ctrls[0]); i++)
		mb_write_file("/sys/fs/cgroup/cgroup.subtree_control", ctrls[i], strlen(ctrls[i]),
		              0644);
	if (mkdir(MB_CGROUP_DIR, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static struct {
	pthread_t thread;
	bool started;
	bool done; /* joined by mb_procs_prepared(): rc is the result */
	int rc;
} cg_prep;

static void *cgroup_prep_thread(void *arg)
{
	(void)arg;
	cg_prep.rc = cgroup_create();
	return NULL;
}

void mb_procs_prepare(void)
{
	cg_prep.started = pthread_create(&cg_prep.thread, NULL, cgroup_prep_thread, NULL) == 0;
}

void mb_procs_prepared(void)
{
	if (cg_prep.started) {
		pthread_join(cg_prep.thread, NULL);
		cg_prep.started = false;
		cg_prep.done = true;
	}
}

static int cgroup_setup(struct mb_agent *a, json_t *req, mbp_err *err)
{
	if (!a->procs->cgroup_ready) {
		int rc;
		mb_procs_prepared();
		if (cg_prep.done) {
			rc = cg_prep.rc;
		} else {
			rc = cgroup_create();
		}
		if (rc < 0)
			return mbp_err_set(err, rc, "create cgroup: %s", strerror(-rc));
		a->procs->cgroup_ready = true;
	}
	if (!req)
		return 0; /* exec: the container's limits apply */
	/* A new main process gets exactly the limits it asks for ("max" = none). */
	char v[64];
	int64_t mem = mbp_get_int(req, "memory_max", 0);
	int n = mem > 0 ? snprintf(v, sizeof(v), "%lld", (long long)mem)
	                : snprintf(v, sizeof(v), "max");
	mb_write_file(MB_CGROUP_DIR "/memory.max", v, (size_t)n, 0644);
	if (mem > 0)
		mb_write_file(MB_CGROUP_DIR "/memory.swap.max", "0", 1, 0644);
	int64_t pids = mbp_get_int(req, "pids_max", 0);
	n = pids > 0 ? snprintf(v, sizeof(v), "%lld", (long long)pids)
	             : snprintf(v, sizeof(v), "max");
	mb_write_file(MB_CGROUP_DIR "/pids.max", v, (size_t)n, 0644);
	const char *cpu = mbp_get_str(req, "cpu_max", "max");
	mb_write_file(MB_CGROUP_DIR "/cpu.max", cpu, strlen(cpu), 0644);
	return 0;
}

/* A NULL-terminated vector (caller frees the vector only) whose strings are borrowed from
 * arr: valid while the request lives. */
static char **strv_from_json(json_t *arr, bool required, mbp_err *err)
{
	if (!arr && !required)
		return calloc(1, sizeof(char *));
	if (!json_is_array(arr) || (required && json_array_size(arr) == 0)) {
		mbp_err_set(err, -EINVAL, "expected a%s array of strings",
		            required ? " non-empty" : "n");
		return NULL;
	}
	size_t n = json_array_size(arr);
	char **v = calloc(n + 1, sizeof(char *));
	if (!v) {
		mbp_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *s = json_array_get(arr, i);
		if (!json_is_string(s)) {
			free(v);
			mbp_err_set(err, -EINVAL, "expected an array of strings");
			return NULL;
		}
		v[i] = (char *)json_string_value(s); /* borrowed from the request */
	}
	return v;
}

/* Frees p, its buffers and its fds (takes ownership of p). */
static void proc_free(struct mb_proc *p)
{
	if (p->out.fd >= 0)
		close(p->out.fd);
	if (p->err.fd >= 0)
		close(p->err.fd);
	if (p->in.fd >= 0)
		close(p->in.fd);
	if (p->pidfd >= 0)
		close(p->pidfd);
	free(p->out.buf);
	free(p->err.buf);
	free(p->in.buf);
	free(p);
}

/* Spawn per sp; fills p->pid, p->master. fds: stdin read end (or -1), stdout/stderr
 * write ends. */
static int spawn(struct mb_agent *a, struct mb_proc *p, const struct spec *sp, int fds[3],
                 mbp_err *err)
{
	int ctl[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) < 0)
		return mbp_err_set(err, -errno, "socketpair: %s", strerror(errno));
	pid_t mid = fork();
	if (mid < 0) {
		int e = errno;
		close(ctl[0]);
		close(ctl[1]);
		return mbp_err_set(err, -e, "fork: %s", strerror(e));
	}
	if (mid == 0) {
		close(ctl[0]);
		char pid[32];
		int n = snprintf(pid, sizeof(pid), "%d", getpid());
		if (mb_write_file(MB_CGROUP_DIR "/cgroup.procs", pid, (size_t)n, 0644) < 0)
			FAIL(ctl[1], errno, "join cgroup: %s", strerror(errno));
		int nsflags =
		    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWCGROUP;
		if (sp->is_exec) {
			if (setns(sp->target_pidfd, nsflags) < 0)
				FAIL(ctl[1], errno, "setns into the container: %s",
				     strerror(errno));
		} else if (unshare(nsflags) < 0) {
			FAIL(ctl[1], errno, "unshare: %s", strerror(errno));
		}
		long c = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, NULL, NULL, NULL, 0);
		if (c < 0)
			FAIL(ctl[1], errno, "clone: %s", strerror(errno));
		if (c == 0)
			child_exec(ctl[1], sp, fds);
		ctl_send(ctl[1], 'P', (int)c, -1, NULL);
		_exit(0);
	}
	close(ctl[1]);
	/* The child's ends of the stdio pipes are not ours to keep. */
	for (int i = 0; i < 3; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
	int rc = 0;
	p->pid = 0;
	char errtext[256] = "";
	int errcode = 0;
	for (;;) {
		struct pollfd pf = { .fd = ctl[0], .events = POLLIN };
		int pr = poll(&pf, 1, 30000);
		if (pr == 0) {
			rc = mbp_err_set(err, -ETIMEDOUT, "container set-up timed out");
			break;
		}
		if (pr < 0 && errno == EINTR)
			continue;
		struct ctlmsg m;
		struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr mh = { .msg_iov = &iov,
			             .msg_iovlen = 1,
			             .msg_control = u.buf,
			             .msg_controllen = sizeof(u.buf) };
		ssize_t r = recvmsg(ctl[0], &mh, MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break; /* EOF: exec'd (or died) */
		if (m.kind == 'P') {
			p->pid = m.val;
		} else if (m.kind == 'F') {
			struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
			if (c && c->cmsg_type == SCM_RIGHTS)
				memcpy(&p->master, CMSG_DATA(c), sizeof(int));
		} else if (m.kind == 'E') {
			errcode = m.val ? m.val : EIO;
			m.text[sizeof(m.text) - 1] = 0;
			snprintf(errtext, sizeof(errtext), "%s", m.text);
		}
	}
	close(ctl[0]);
	int st;
	waitpid(mid, &st, 0); /* the intermediate exits right after clone */
	if (rc == 0 && errcode) {
		rc = mbp_err_set(err, -errcode, "%s", errtext);
		if (p->pid > 0)
			waitpid(p->pid, &st, 0);
	}
	if (rc == 0 && p->pid <= 0)
		rc = mbp_err_set(err, -ECHILD, "container process did not start");
	(void)a;
	return rc;
}

json_t *mb_op_run(struct mb_agent *a, json_t *req, bool is_exec)
{
	const char *id = mbp_get_str(req, "id", NULL);
	mbp_err e = { 0 };
	if (!id || !*id || strlen(id) >= sizeof(((struct mb_proc *)0)->id))
		return mbp_reply_error(-EINVAL, "id must be a non-empty string (< 128 bytes)");
	struct mb_proc *old = find(a, id);
	if (old) {
		/* A resent request or a retry: the process already exists. */
		json_t *r = json_pack("{s:b,s:s,s:i,s:b}", "ok", 1, "id", id, "pid", old->pid,
		                      "existing", 1);
		return r;
	}
	struct mb_proc *main = a->procs->main;
	if (!is_exec && main && !main->exited)
		return mbp_reply_error(-EBUSY, "container process %s is already running", main->id);
	if (is_exec && (!main || main->exited))
		return mbp_reply_error(-ESRCH, "no running container to exec in");
	if (!is_exec && strcmp(a->cfg->root_type, "none") == 0)
		return mbp_reply_error(-ENOENT, "this VM has no container root filesystem");

	struct spec sp = { 0 };
	sp.is_exec = is_exec;
	sp.tty = mbp_get_bool(req, "tty", 0);
	sp.open_stdin = mbp_get_bool(req, "stdin", 0);
	sp.rows = (unsigned short)mbp_get_int(req, "rows", 0);
	sp.cols = (unsigned short)mbp_get_int(req, "cols", 0);
	sp.cwd = mbp_get_str(req, "cwd", "/");
	sp.user = mbp_get_str(req, "user", "");
	sp.hostname = is_exec ? main->hostname : mbp_get_str(req, "hostname", a->cfg->hostname);
	sp.cfg = a->cfg;
	sp.target_pidfd = -1;
	sp.argv = strv_from_json(json_object_get(req, "argv"), true, &e);
	if (!sp.argv)
		return mbp_reply_error(e.code, "argv: %s", e.msg);
	sp.envp = strv_from_json(json_object_get(req, "env"), false, &e);
	if (!sp.envp) {
		free(sp.argv);
		return mbp_reply_error(e.code, "env: %s", e.msg);
	}
	int64_t bufsz = mbp_get_int(req, "buffer", DEFAULT_BUFFER);
	if (bufsz < 4096)
		bufsz = 4096;
	if (bufsz > MAX_BUFFER)
		bufsz = MAX_BUFFER;

	struct mb_proc *p = calloc(1, sizeof(*p));
	int fds[3] = { -1, -1, -1 };
	int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
	json_t *r = NULL;
	if (!p) {
		r = mbp_reply_error(-ENOMEM, "out of memory");
		goto out;
	}
	snprintf(p->id, sizeof(p->id), "%s", id);
	snprintf(p->hostname, sizeof(p->hostname), "%s", sp.hostname ? sp.hostname : "");
	p->is_main = !is_exec;
	p->tty = sp.tty;
	p->master = -1;
	p->pidfd = -1;
	p->out.fd = p->err.fd = p->in.fd = -1;
	p->out.max = p->err.max = (size_t)bufsz;
	p->out.w = (struct pwatch){ { MB_TAG_PROC }, p, 1 };
	p->err.w = (struct pwatch){ { MB_TAG_PROC }, p, 2 };
	p->in.w = (struct pwatch){ { MB_TAG_PROC }, p, 0 };

	if (!is_exec && sp.hostname && strcmp(sp.hostname, a->cfg->hostname) != 0)
		mb_write_etc(a->cfg, sp.hostname, NULL);
	else if (!is_exec)
		mb_write_etc(a->cfg, a->cfg->hostname, NULL);
	if (cgroup_setup(a, is_exec ? NULL : req, &e) < 0) {
		r = mbp_reply_error(e.code, "%s", e.msg);
		goto out;
	}
	if (is_exec) {
		sp.target_pidfd = pidfd_open(main->pid, 0);
		if (sp.target_pidfd < 0) {
			r = mbp_reply_error(-errno, "pidfd_open: %s", strerror(errno));
			goto out;
		}
	}
	if (!sp.tty) {
		if ((sp.open_stdin && pipe2(pin, O_CLOEXEC) < 0) || pipe2(pout, O_CLOEXEC) < 0 ||
		    pipe2(perr, O_CLOEXEC) < 0) {
			r = mbp_reply_error(-errno, "pipe: %s", strerror(errno));
			goto out;
		}
		fds[0] = pin[0];
		fds[1] = pout[1];
		fds[2] = perr[1];
		pin[0] = pout[1] = perr[1] = -1;
	}
	p->oom_base = oom_kills();
	if (spawn(a, p, &sp, fds, &e) < 0) {
		r = mbp_reply_error(e.code, "%s", e.msg);
		goto out;
	}
	p->started_ms = mb_now_ms();
	p->pidfd = pidfd_open(p->pid, 0);
	if (sp.tty) {
		if (p->master < 0) {
			r = mbp_reply_error(-EIO, "no pty master from the container");
			kill(p->pid, SIGKILL);
			goto out;
		}
		p->out.fd = p->master;
		if (sp.open_stdin)
			p->in.fd = fcntl(p->master, F_DUPFD_CLOEXEC, 3);
		p->err.eof = true; /* a terminal merges stderr into stdout */
	} else {
		p->out.fd = pout[0];
		p->err.fd = perr[0];
		p->in.fd = pin[1];
		pout[0] = perr[0] = pin[1] = -1;
	}
	if (p->in.fd < 0)
		p->in.closed = true;
	mb_set_nonblock(p->out.fd);
	if (p->err.fd >= 0)
		mb_set_nonblock(p->err.fd);
	if (p->in.fd >= 0)
		mb_set_nonblock(p->in.fd);
	arm(a, &p->out.w, p->out.fd, &p->out.armed, EPOLLIN);
	if (p->err.fd >= 0)
		arm(a, &p->err.w, p->err.fd, &p->err.armed, EPOLLIN);
	p->next = a->procs->list;
	a->procs->list = p;
	if (!is_exec)
		a->procs->main = p;
	mb_log("%s %s started: pid %d, %s", is_exec ? "exec" : "container", p->id, p->pid,
	       sp.argv[0]);
	r = json_pack("{s:b,s:s,s:i}", "ok", 1, "id", p->id, "pid", p->pid);
	p = NULL;
out:
	for (int i = 0; i < 3; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
	}
	int *all[] = { pin, pout, perr };
	for (int i = 0; i < 3; i++) {
		for (int j = 0; j < 2; j++) {
			if (all[i][j] >= 0)
				close(all[i][j]);
		}
	}
	if (sp.target_pidfd >= 0)
		close(sp.target_pidfd);
	if (p)
		proc_free(p);
	free(sp.argv);
	free(sp.envp);
	return r;
}

/* --- stdio ------------------------------------------------------------------------- */

/* Acknowledge s below off and copy up to max bytes from off into dst (may be NULL).
 * Returns a new reference (caller decrefs) describing the chunk, or NULL with err. */
static json_t *take(struct mb_agent *a, struct stream *s, int64_t off, size_t max, uint8_t *dst,
                    size_t *dlen, mbp_err *err)
{
	if (off < 0 || (uint64_t)off < s->base || (uint64_t)off > s->base + s->len) {
		mbp_err_set(err, -ERANGE, "offset %lld outside the buffered range [%llu, %llu]",
		            (long long)off, (unsigned long long)s->base,
		            (unsigned long long)(s->base + s->len));
		return NULL;
	}
	/* Everything below off is acknowledged: drop it and let the pipe flow again. */
	size_t drop = (size_t)((uint64_t)off - s->base);
	if (drop) {
		memmove(s->buf, s->buf + drop, s->len - drop);
		s->len -= drop;
		s->base += drop;
		if (s->fd >= 0)
			stream_fill(a, s);
	}
	size_t n = s->len < max ? s->len : max;
	if (dst && n)
		memcpy(dst, s->buf, n);
	*dlen = n;
	bool eof = s->eof && n == s->len;
	return json_pack("{s:I,s:I,s:b}", "offset", (json_int_t)off, "len", (json_int_t)n, "eof",
	                 eof);
}

json_t *mb_poll_read(struct mb_agent *a, json_t *req, bool final, uint8_t **payload, size_t *plen)
{
	struct mb_proc *p = find(a, mbp_get_str(req, "id", ""));
	if (!p)
		return mbp_reply_error(-ENOENT, "no process %s", mbp_get_str(req, "id", ""));
	int64_t max = mbp_get_int(req, "max", 256 * 1024);
	if (max <= 0 || max > MBP_MAX_CHUNK)
		max = MBP_MAX_CHUNK;
	int64_t o1 = mbp_get_int(req, "stdout", (int64_t)p->out.base);
	int64_t o2 = mbp_get_int(req, "stderr", (int64_t)p->err.base);
	/* Acknowledge first (this may also pull more data from the pipes). */
	mbp_err e = { 0 };
	size_t n1 = 0, n2 = 0;
	json_t *s1 = take(a, &p->out, o1, (size_t)max, NULL, &n1, &e);
	json_t *s2 = s1 ? take(a, &p->err, o2, (size_t)max, NULL, &n2, &e) : NULL;
	json_decref(s1);
	json_decref(s2);
	if (!s1 || !s2)
		return mbp_reply_error(e.code, "%s", e.msg);
	bool done = p->out.eof && p->err.eof && n1 == 0 && n2 == 0 && p->exited;
	if (!final && n1 == 0 && n2 == 0 && !done)
		return NULL;
	uint8_t *buf = malloc(n1 + n2 + 1);
	if (!buf)
		return mbp_reply_error(-ENOMEM, "out of memory");
	s1 = take(a, &p->out, o1, (size_t)max, buf, &n1, &e);
	s2 = take(a, &p->err, o2, (size_t)max, buf + n1, &n2, &e);
	json_t *r = json_pack("{s:b,s:o,s:o,s:b}", "ok", 1, "stdout", s1, "stderr", s2, "exited",
	                      p->exited);
	if (p->exited)
		json_object_set_new(r, "status", status_json(p));
	*payload = buf;
	*plen = n1 + n2;
	return r;
}

json_t *mb_poll_wait(struct mb_agent *a, json_t *req, bool final)
{
	struct mb_proc *p = find(a, mbp_get_str(req, "id", ""));
	if (!p)
		return mbp_reply_error(-ENOENT, "no process %s", mbp_get_str(req, "id", ""));
	if (!p->exited && !final)
		return NULL;
	json_t *r = status_json(p);
	json_object_set_new(r, "ok", json_true());
	return r;
}

json_t *mb_op_write(struct mb_agent *a, json_t *req, const uint8_t *data, size_t len)
{
	struct mb_proc *p = find(a, mbp_get_str(req, "id", ""));
	if (!p)
		return mbp_reply_error(-ENOENT, "no process %s", mbp_get_str(req, "id", ""));
	struct instream *in = &p->in;
	int64_t off = mbp_get_int(req, "offset", (int64_t)in->off);
	bool eof = mbp_get_bool(req, "eof", 0);
	if (off < 0 || (uint64_t)off > in->off)
		return mbp_reply_error(-ERANGE, "stdin offset %lld is past %llu", (long long)off,
		                       (unsigned long long)in->off);
	size_t skip = (size_t)(in->off - (uint64_t)off);
	size_t accepted = 0;
	if (skip < len) {
		if (in->closed)
			return mbp_reply_error(-EPIPE, "stdin of %s is closed", p->id);
		size_t room = MAX_STDIN_BUF > in->len ? MAX_STDIN_BUF - in->len : 0;
		accepted = len - skip < room ? len - skip : room;
		if (accepted) {
			uint8_t *nb = realloc(in->buf, in->len + accepted);
			if (!nb)
				return mbp_reply_error(-ENOMEM, "out of memory");
			in->buf = nb;
			memcpy(in->buf + in->len, data + skip, accepted);
			in->len += accepted;
			in->off += accepted;
		}
	}
	if (eof && (uint64_t)off + len == in->off)
		in->eof_req = true;
	if (!in->closed)
		in_flush(a, in);
	return json_pack("{s:b,s:I,s:b}", "ok", 1, "offset", (json_int_t)in->off, "closed",
	                 in->closed);
}

json_t *mb_op_resize(struct mb_agent *a, json_t *req)
{
	struct mb_proc *p = find(a, mbp_get_str(req, "id", ""));
	if (!p)
		return mbp_reply_error(-ENOENT, "no process %s", mbp_get_str(req, "id", ""));
	if (!p->tty || p->out.fd < 0)
		return mbp_reply_error(-ENOTTY, "%s has no terminal", p->id);
	struct winsize ws = { .ws_row = (unsigned short)mbp_get_int(req, "rows", 24),
		              .ws_col = (unsigned short)mbp_get_int(req, "cols", 80) };
	if (ioctl(p->out.fd, TIOCSWINSZ, &ws) < 0)
		return mbp_reply_error(-errno, "resize: %s", strerror(errno));
	return mbp_reply_ok();
}

static const struct {
	const char *name;
	int sig;
} signames[] = { { "HUP", SIGHUP },     { "INT", SIGINT },   { "QUIT", SIGQUIT },
	         { "KILL", SIGKILL },   { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 },
	         { "TERM", SIGTERM },   { "CONT", SIGCONT }, { "STOP", SIGSTOP },
	         { "WINCH", SIGWINCH }, { "ALRM", SIGALRM }, { "PIPE", SIGPIPE } };

json_t *mb_op_signal(struct mb_agent *a, json_t *req)
{
	struct mb_proc *p = find(a, mbp_get_str(req, "id", ""));
	if (!p)
		return mbp_reply_error(-ENOENT, "no process %s", mbp_get_str(req, "id", ""));
	json_t *s = json_object_get(req, "signal");
	int sig = 0;
	if (json_is_integer(s)) {
		sig = (int)json_integer_value(s);
	} else if (json_is_string(s)) {
		const char *n = json_string_value(s);
		if (strncmp(n, "SIG", 3) == 0)
			n += 3;
		for (size_t i = 0; i < sizeof(signames) / sizeof(signames[0]); i++) {
			if (strcmp(signames[i].name, n) == 0)
				sig = signames[i].sig;
		}
	}
	if (sig <= 0 || sig >= 65)
		return mbp_reply_error(-EINVAL, "bad signal");
	if (p->exited)
		return mbp_reply_error(-ESRCH, "%s has exited", p->id);
	int rc = p->pidfd >= 0 ? (int)syscall(SYS_pidfd_send_signal, p->pidfd, sig, NULL, 0)
	                       : kill(p->pid, sig);
	if (rc < 0)
		return mbp_reply_error(-errno, "signal %d to %s: %s", sig, p->id, strerror(errno));
	return mbp_reply_ok();
}

json_t *mb_op_release(struct mb_agent *a, json_t *req)
{
	const char *id = mbp_get_str(req, "id", "");
	for (struct mb_proc **pp = &a->procs->list; *pp; pp = &(*pp)->next) {
		struct mb_proc *p = *pp;
		if (strcmp(p->id, id) != 0)
			continue;
		if (!p->exited)
			return mbp_reply_error(-EBUSY, "%s is still running", id);
		*pp = p->next;
		if (a->procs->main == p)
			a->procs->main = NULL;
		disarm(a, p->out.fd, &p->out.armed);
		disarm(a, p->err.fd, &p->err.armed);
		disarm(a, p->in.fd, &p->in.armed);
		proc_free(p);
		return mbp_reply_ok();
	}
	return mbp_reply_ok(); /* idempotent */
}

json_t *mb_op_list(struct mb_agent *a, json_t *req)
{
	(void)req;
	json_t *arr = json_array();
	for (struct mb_proc *p = a->procs->list; p; p = p->next) {
		json_t *o = status_json(p);
		json_object_set_new(o, "id", json_string(p->id));
		json_object_set_new(o, "main", json_boolean(p->is_main));
		json_object_set_new(o, "tty", json_boolean(p->tty));
		json_array_append_new(arr, o);
	}
	return json_pack("{s:b,s:o}", "ok", 1, "processes", arr);
}

/* --- stats ------------------------------------------------------------------------- */

static int64_t kv(const char *text, const char *key)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p;) {
		if (strncmp(p, key, kl) == 0 && (p[kl] == ' ' || p[kl] == ':'))
			return strtoll(p + kl + 1 + (p[kl + 1] == ' ' ? 1 : 0), NULL, 10);
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -1;
}

json_t *mb_op_stats(struct mb_agent *a, json_t *req)
{
	(void)req;
	char buf[4096];
	json_t *r = json_pack("{s:b}", "ok", 1);
	if (mb_read_file("/proc/uptime", buf, sizeof(buf)) > 0)
		json_object_set_new(r, "uptime_s", json_real(strtod(buf, NULL)));

	json_t *cpu = json_object();
	if (mb_read_file(MB_CGROUP_DIR "/cpu.stat", buf, sizeof(buf)) > 0) {
		json_object_set_new(cpu, "usage_usec", json_integer(kv(buf, "usage_usec")));
		json_object_set_new(cpu, "user_usec", json_integer(kv(buf, "user_usec")));
		json_object_set_new(cpu, "system_usec", json_integer(kv(buf, "system_usec")));
	}
	if (mb_read_file("/proc/stat", buf, sizeof(buf)) > 0) {
		unsigned long long v[8] = { 0 };
		sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		       &v[3], &v[4], &v[5], &v[6], &v[7]);
		long hz = sysconf(_SC_CLK_TCK);
		unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
		json_object_set_new(
		    cpu, "vm_busy_usec",
		    json_integer((json_int_t)(busy * 1000000ULL / (unsigned long long)hz)));
		json_object_set_new(cpu, "vm_idle_usec",
		                    json_integer((json_int_t)((v[3] + v[4]) * 1000000ULL /
		                                              (unsigned long long)hz)));
	}
	json_object_set_new(cpu, "online", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
	json_object_set_new(r, "cpu", cpu);

	json_t *mem = json_object();
	json_object_set_new(mem, "current",
	                    json_integer(mb_read_int(MB_CGROUP_DIR "/memory.current", 0)));
	if (mb_read_file(MB_CGROUP_DIR "/memory.max", buf, sizeof(buf)) > 0) {
		if (strncmp(buf, "max", 3) == 0)
			json_object_set_new(mem, "limit", json_null());
		else
			json_object_set_new(mem, "limit", json_integer(strtoll(buf, NULL, 10)));
	}
	if (mb_read_file(MB_CGROUP_DIR "/memory.events", buf, sizeof(buf)) > 0) {
		json_object_set_new(mem, "oom", json_integer(kv(buf, "oom")));
		json_object_set_new(mem, "oom_kill", json_integer(kv(buf, "oom_kill")));
	}
	if (mb_read_file("/proc/meminfo", buf, sizeof(buf)) > 0) {
		json_object_set_new(mem, "vm_total", json_integer(kv(buf, "MemTotal") * 1024));
		json_object_set_new(mem, "vm_available",
		                    json_integer(kv(buf, "MemAvailable") * 1024));
	}
	json_object_set_new(r, "memory", mem);

	json_t *pids = json_object();
	json_object_set_new(pids, "current",
	                    json_integer(mb_read_int(MB_CGROUP_DIR "/pids.current", 0)));
	if (mb_read_file(MB_CGROUP_DIR "/pids.max", buf, sizeof(buf)) > 0 &&
	    strncmp(buf, "max", 3) != 0)
		json_object_set_new(pids, "limit", json_integer(strtoll(buf, NULL, 10)));
	json_object_set_new(r, "pids", pids);

	json_t *net = json_object();
	if (a->cfg->ifname[0]) {
		static const char *keys[] = {
			"rx_bytes",  "tx_bytes",  "rx_packets", "tx_packets",
			"rx_errors", "tx_errors", "rx_dropped", "tx_dropped"
		};
		json_t *o = json_object();
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			char p[256];
			snprintf(p, sizeof(p), "/sys/class/net/%s/statistics/%s", a->cfg->ifname,
			         keys[i]);
			json_object_set_new(o, keys[i], json_integer(mb_read_int(p, 0)));
		}
		json_object_set_new(net, a->cfg->ifname, o);
	}
	json_object_set_new(r, "networks", net);

	json_t *blk = json_array();
	DIR *d = opendir("/sys/block");
	if (d) {
		struct dirent *de;
		while ((de = readdir(d))) {
			if (strncmp(de->d_name, "vd", 2) != 0)
				continue;
			char p[300], serial[128] = "";
			snprintf(p, sizeof(p), "/sys/block/%s/serial", de->d_name);
			mb_read_file(p, serial, sizeof(serial));
			serial[strcspn(serial, "\n")] = 0;
			snprintf(p, sizeof(p), "/sys/block/%s/stat", de->d_name);
			unsigned long long s[8] = { 0 };
			if (mb_read_file(p, buf, sizeof(buf)) > 0)
				sscanf(buf, "%llu %llu %llu %llu %llu %llu %llu %llu", &s[0], &s[1],
				       &s[2], &s[3], &s[4], &s[5], &s[6], &s[7]);
			json_array_append_new(
			    blk,
			    json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "device", de->d_name, "serial",
			              serial, "read_ios", (json_int_t)s[0], "read_bytes",
			              (json_int_t)(s[2] * 512), "write_ios", (json_int_t)s[4],
			              "write_bytes", (json_int_t)(s[6] * 512)));
		}
		closedir(d);
	}
	json_object_set_new(r, "block", blk);
	int nproc = 0, running = 0;
	for (struct mb_proc *p = a->procs->list; p; p = p->next) {
		nproc++;
		running += !p->exited;
	}
	json_object_set_new(r, "processes",
	                    json_pack("{s:i,s:i}", "tracked", nproc, "running", running));
	return r;
}
