/*
 * mb-agentctl: a blocking, host-side client of the moonbox agent protocol, for tests and
 * debugging (in the spirit of kata-agent-ctl). Every command authenticates first
 * (hello + auth, verifying the agent's proof unless --no-verify-agent) and prints the
 * agent's JSON reply on stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "mbp_proto.h"

struct client {
	nng_socket sock;
	const char *addr;
	char token[256];
	bool verify_agent;
	bool no_auth; /* testing: send requests without authenticating */
	int timeout_ms;
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

__attribute__((noreturn)) static void die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mb-agentctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

/* One request/reply. hdr is stolen. On success *rep is a new reference (caller decrefs)
 * and, if payload is not NULL, *payload is malloc'ed (caller frees). */
static int call(struct client *c, json_t *hdr, const void *data, size_t dlen, int timeout_ms,
                json_t **rep, uint8_t **payload, size_t *plen, mbp_err *err)
{
	uint8_t *buf;
	size_t len;
	int rc = mbp_encode(hdr, data, dlen, &buf, &len, err);
	json_decref(hdr);
	if (rc < 0)
		return rc;
	nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, timeout_ms);
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, timeout_ms);
	int rv = nng_send(c->sock, buf, len, 0);
	free(buf);
	if (rv != 0)
		return mbp_err_set(err, rv == NNG_ETIMEDOUT ? -ETIMEDOUT : -EIO, "send: %s",
		                   nng_strerror(rv));
	void *rbuf;
	size_t rlen;
	rv = nng_recv(c->sock, &rbuf, &rlen, NNG_FLAG_ALLOC);
	if (rv != 0)
		return mbp_err_set(err, rv == NNG_ETIMEDOUT ? -ETIMEDOUT : -ECONNRESET,
		                   "receive: %s", nng_strerror(rv));
	json_t *h;
	const uint8_t *p;
	size_t pl;
	rc = mbp_decode(rbuf, rlen, &h, &p, &pl, err);
	if (rc < 0) {
		nng_free(rbuf, rlen);
		return rc;
	}
	if (payload) {
		*payload = malloc(pl + 1);
		if (!*payload) {
			nng_free(rbuf, rlen);
			json_decref(h);
			return mbp_err_set(err, -ENOMEM, "out of memory");
		}
		memcpy(*payload, p, pl);
		*plen = pl;
	}
	nng_free(rbuf, rlen);
	*rep = h;
	return 0;
}

/* hello + auth on the current connection (with the library's handshake helpers). */
static int handshake(struct client *c, int timeout_ms, json_t **hello_rep, mbp_err *err)
{
	uint8_t hn[MBP_NONCE_LEN];
	json_t *req = mbp_hello_request(hn, "mb-agentctl", err);
	if (!req)
		return err->code;
	json_t *rep;
	int rc = call(c, req, NULL, 0, timeout_ms, &rep, NULL, NULL, err);
	if (rc < 0)
		return rc;
	size_t tl = strlen(c->token);
	json_t *auth = mbp_auth_request(rep, c->token, tl, hn, err);
	if (!auth && err->code == -EACCES && !c->verify_agent) {
		/* Testing the agent's side: send a proof made with our (wrong) token anyway. */
		uint8_t an[MBP_NONCE_LEN], proof[MBP_SHA256_LEN];
		char hex[2 * MBP_SHA256_LEN + 1];
		if (mbp_hex_decode(mbp_get_str(rep, "nonce", ""), an, sizeof(an)) == 0) {
			mbp_auth_host_proof(c->token, tl, hn, an, proof);
			mbp_hex_encode(proof, sizeof(proof), hex);
			auth = json_pack("{s:s,s:s}", "op", MBP_OP_AUTH, "proof", hex);
		}
	}
	if (!auth) {
		json_decref(rep);
		return err->code;
	}
	json_t *arep;
	rc = call(c, auth, NULL, 0, timeout_ms, &arep, NULL, NULL, err);
	if (rc < 0) {
		json_decref(rep);
		return rc;
	}
	rc = mbp_reply_check(arep, err);
	json_decref(arep);
	if (rc < 0) {
		json_decref(rep);
		return rc;
	}
	if (hello_rep)
		*hello_rep = rep;
	else
		json_decref(rep);
	return 0;
}

static void connect_client(struct client *c, int wait_ready_ms)
{
	int rv = nng_req0_open(&c->sock);
	if (rv != 0)
		die("nng_req0_open: %s", nng_strerror(rv));
	/* Never resend: every request is answered once or fails (see PROTOCOL.md). */
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 50);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 200);
	nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, MBP_MAX_MSG);
	rv = nng_dial(c->sock, c->addr, NULL, NNG_FLAG_NONBLOCK);
	if (rv != 0)
		die("dial %s: %s", c->addr, nng_strerror(rv));
	uint64_t deadline = now_ms() + (uint64_t)wait_ready_ms;
	mbp_err err = { 0 };
	if (c->no_auth)
		return;
	for (;;) {
		int t = c->timeout_ms;
		if (wait_ready_ms > 0 && t > 2000)
			t = 2000;
		int rc = handshake(c, t, NULL, &err);
		if (rc == 0)
			return;
		bool transient = rc == -ETIMEDOUT || rc == -ECONNRESET || rc == -EPROTO;
		if (!transient || now_ms() >= deadline)
			die("%s", err.msg);
		usleep(100000);
	}
}

/* Call and retry once after re-authenticating if the connection was replaced. */
static json_t *rpc(struct client *c, json_t *req, const void *data, size_t dlen, int wait_ms,
                   uint8_t **payload, size_t *plen)
{
	mbp_err err = { 0 };
	for (int attempt = 0;; attempt++) {
		json_t *rep;
		json_incref(req);
		int rc =
		    call(c, req, data, dlen, c->timeout_ms + wait_ms, &rep, payload, plen, &err);
		if (rc == 0 && attempt == 0 && !c->no_auth && !mbp_get_bool(rep, "ok", 0) &&
		    strcmp(mbp_get_str(rep, "error", ""), "EACCES") == 0 &&
		    strstr(mbp_get_str(rep, "message", ""), "not authenticated")) {
			json_decref(rep);
			if (payload)
				free(*payload);
			if (handshake(c, c->timeout_ms, NULL, &err) < 0)
				die("%s", err.msg);
			continue;
		}
		if (rc < 0)
			die("%s", err.msg);
		json_decref(req);
		return rep;
	}
}

static void print_json(const json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	if (s) {
		puts(s);
		free(s);
	}
	fflush(stdout);
}

static int print_reply(json_t *rep)
{
	print_json(rep);
	int ok = mbp_get_bool(rep, "ok", 0);
	json_decref(rep);
	return ok ? 0 : 1;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write: %s", strerror(errno));
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Stream a process's output (and optionally our stdin to it) until it has exited and
 * both streams are at EOF. Returns the process's exit code. */
static int attach(struct client *c, const char *id, bool send_stdin)
{
	int64_t off[2] = { 0, 0 };
	uint8_t *in = NULL;
	size_t inlen = 0, insent = 0;
	bool in_done = !send_stdin;
	if (send_stdin) {
		size_t cap = 0;
		for (;;) {
			if (inlen == cap) {
				cap = cap ? cap * 2 : 65536;
				in = realloc(in, cap);
				if (!in)
					die("out of memory");
			}
			ssize_t r = read(0, in + inlen, cap - inlen);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				die("read stdin: %s", strerror(errno));
			if (r == 0)
				break;
			inlen += (size_t)r;
		}
	}
	for (;;) {
		if (!in_done) {
			size_t n = inlen - insent > 262144 ? 262144 : inlen - insent;
			bool eof = insent + n == inlen;
			json_t *req = json_pack("{s:s,s:s,s:I,s:b}", "op", MBP_OP_WRITE, "id", id,
			                        "offset", (json_int_t)insent, "eof", eof);
			json_t *rep = rpc(c, req, in + insent, n, 0, NULL, NULL);
			if (!mbp_get_bool(rep, "ok", 0)) {
				in_done = true; /* stdin closed by the process */
			} else {
				insent = (size_t)mbp_get_int(rep, "offset", (int64_t)insent);
				if (insent == inlen && eof)
					in_done = true;
			}
			json_decref(rep);
		}
		json_t *req = json_pack("{s:s,s:s,s:I,s:I,s:i,s:i}", "op", MBP_OP_READ, "id", id,
		                        "stdout", (json_int_t)off[0], "stderr", (json_int_t)off[1],
		                        "max", 1 << 20, "wait_ms", in_done ? 5000 : 0);
		uint8_t *data = NULL;
		size_t dlen = 0;
		json_t *rep = rpc(c, req, NULL, 0, 5000, &data, &dlen);
		if (!mbp_get_bool(rep, "ok", 0)) {
			print_json(rep);
			exit(1);
		}
		json_t *so = json_object_get(rep, "stdout"), *se = json_object_get(rep, "stderr");
		size_t l1 = (size_t)mbp_get_int(so, "len", 0),
		       l2 = (size_t)mbp_get_int(se, "len", 0);
		if (l1 + l2 > dlen)
			die("short read reply");
		write_all(1, data, l1);
		write_all(2, data + l1, l2);
		off[0] += (int64_t)l1;
		off[1] += (int64_t)l2;
		free(data);
		bool eof = mbp_get_bool(so, "eof", 0) && mbp_get_bool(se, "eof", 0);
		if (eof && mbp_get_bool(rep, "exited", 0)) {
			int code =
			    (int)mbp_get_int(json_object_get(rep, "status"), "exit_code", 255);
			json_decref(rep);
			free(in);
			return code;
		}
		json_decref(rep);
	}
}

static void usage(void)
{
	fputs(
	    "usage: mb-agentctl --addr tcp://HOST:PORT (--token T | --token-file F) [options] "
	    "COMMAND ...\n"
	    "options: --timeout-ms N  --wait-ready-ms N  --no-verify-agent  --no-auth (testing)\n"
	    "commands:\n"
	    "  hello | ping | list | stats\n"
	    "  run ID [proc options] -- ARGV...     start the container's main process\n"
	    "  exec ID [proc options] -- ARGV...    start a process in the running container\n"
	    "     proc options: --tty --stdin --attach --user U --cwd D --env K=V --hostname H\n"
	    "                   --rows N --cols N --memory-max BYTES --pids-max N --buffer BYTES\n"
	    "     --attach streams output (and stdin with --stdin) and exits with its code\n"
	    "  attach ID [--stdin]\n"
	    "  write ID [--eof] [--offset N] DATA\n"
	    "  read ID [--stdout N] [--stderr N] [--wait-ms N]\n"
	    "  wait ID [--wait-ms N] | signal ID SIG | resize ID ROWS COLS | release ID\n"
	    "  cp-in LOCAL PATH [--mode M] | cp-out PATH LOCAL | stat PATH | ls PATH\n"
	    "  mkdir PATH [--parents] | shutdown [--grace-ms N] | raw JSON\n",
	    stderr);
	exit(2);
}

static int cmd_run(struct client *c, int argc, char **argv, bool is_exec)
{
	if (argc < 1)
		usage();
	const char *id = argv[0];
	json_t *req = json_pack("{s:s,s:s}", "op", is_exec ? MBP_OP_EXEC : MBP_OP_RUN, "id", id);
	json_t *env = json_array();
	bool do_attach = false, send_stdin = false;
	int i = 1;
	for (; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		} else if (strcmp(a, "--tty") == 0) {
			json_object_set_new(req, "tty", json_true());
		} else if (strcmp(a, "--stdin") == 0) {
			json_object_set_new(req, "stdin", json_true());
			send_stdin = true;
		} else if (strcmp(a, "--attach") == 0) {
			do_attach = true;
		} else if (v && (strcmp(a, "--user") == 0 || strcmp(a, "--cwd") == 0 ||
		                 strcmp(a, "--hostname") == 0 || strcmp(a, "--cpu-max") == 0)) {
			const char *key = strcmp(a, "--cpu-max") == 0 ? "cpu_max" : a + 2;
			json_object_set_new(req, key, json_string(v));
			i++;
		} else if (v && strcmp(a, "--env") == 0) {
			json_array_append_new(env, json_string(v));
			i++;
		} else if (v && (strcmp(a, "--rows") == 0 || strcmp(a, "--cols") == 0 ||
		                 strcmp(a, "--memory-max") == 0 || strcmp(a, "--pids-max") == 0 ||
		                 strcmp(a, "--buffer") == 0)) {
			char key[32];
			snprintf(key, sizeof(key), "%s", a + 2);
			for (char *p = key; *p; p++)
				*p = *p == '-' ? '_' : *p;
			json_object_set_new(req, key, json_integer(strtoll(v, NULL, 10)));
			i++;
		} else {
			die("unknown option %s", a);
		}
	}
	if (i >= argc)
		die("missing command after --");
	json_t *av = json_array();
	for (; i < argc; i++)
		json_array_append_new(av, json_string(argv[i]));
	json_object_set_new(req, "argv", av);
	json_object_set_new(req, "env", env);
	json_t *rep = rpc(c, req, NULL, 0, 0, NULL, NULL);
	if (!do_attach)
		return print_reply(rep);
	if (!mbp_get_bool(rep, "ok", 0))
		return print_reply(rep);
	json_decref(rep);
	return attach(c, id, send_stdin);
}

static int cmd_cp_in(struct client *c, const char *local, const char *path, int mode)
{
	int fd = open(local, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: %s", local, strerror(errno));
	struct stat st;
	fstat(fd, &st);
	if (mode < 0)
		mode = (int)(st.st_mode & 07777);
	size_t cap = MBP_MAX_CHUNK;
	uint8_t *buf = malloc(cap);
	int64_t off = 0;
	for (;;) {
		ssize_t n = read(fd, buf, cap);
		if (n < 0)
			die("read %s: %s", local, strerror(errno));
		if (n == 0 && off > 0)
			break;
		json_t *req = json_pack("{s:s,s:s,s:I,s:i}", "op", MBP_OP_FS_WRITE, "path", path,
		                        "offset", (json_int_t)off, "mode", mode);
		json_t *rep = rpc(c, req, buf, (size_t)n, 0, NULL, NULL);
		if (!mbp_get_bool(rep, "ok", 0)) {
			free(buf);
			close(fd);
			return print_reply(rep);
		}
		json_decref(rep);
		off += n;
		if (n == 0)
			break;
	}
	free(buf);
	close(fd);
	json_t *r = json_pack("{s:b,s:I}", "ok", 1, "bytes", (json_int_t)off);
	return print_reply(r);
}

static int cmd_cp_out(struct client *c, const char *path, const char *local)
{
	int fd = strcmp(local, "-") == 0
	             ? 1
	             : open(local, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("%s: %s", local, strerror(errno));
	int64_t off = 0;
	for (;;) {
		json_t *req = json_pack("{s:s,s:s,s:I,s:i}", "op", MBP_OP_FS_READ, "path", path,
		                        "offset", (json_int_t)off, "max", MBP_MAX_CHUNK);
		uint8_t *data = NULL;
		size_t dlen = 0;
		json_t *rep = rpc(c, req, NULL, 0, 0, &data, &dlen);
		if (!mbp_get_bool(rep, "ok", 0)) {
			free(data);
			return print_reply(rep);
		}
		write_all(fd, data, dlen);
		free(data);
		off += (int64_t)dlen;
		bool eof = mbp_get_bool(rep, "eof", 1);
		json_decref(rep);
		if (eof)
			break;
	}
	if (fd != 1)
		close(fd);
	if (fd != 1)
		return print_reply(json_pack("{s:b,s:I}", "ok", 1, "bytes", (json_int_t)off));
	return 0;
}

int main(int argc, char **argv)
{
	struct client c = { .verify_agent = true, .timeout_ms = 10000 };
	int wait_ready = 0;
	static const struct option opts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "token", required_argument, NULL, 't' },
		{ "token-file", required_argument, NULL, 'T' },
		{ "timeout-ms", required_argument, NULL, 'o' },
		{ "wait-ready-ms", required_argument, NULL, 'w' },
		{ "no-verify-agent", no_argument, NULL, 'n' },
		{ "no-auth", no_argument, NULL, 'N' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	/* "+": stop at the command so that its own options pass through. */
	while ((ch = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			c.addr = optarg;
			break;
		case 't':
			snprintf(c.token, sizeof(c.token), "%s", optarg);
			break;
		case 'T': {
			FILE *f = fopen(optarg, "r");
			if (!f || !fgets(c.token, sizeof(c.token), f))
				die("cannot read token file %s", optarg);
			fclose(f);
			c.token[strcspn(c.token, "\r\n")] = 0;
			break;
		}
		case 'o':
			c.timeout_ms = atoi(optarg);
			break;
		case 'w':
			wait_ready = atoi(optarg);
			break;
		case 'n':
			c.verify_agent = false;
			break;
		case 'N':
			c.no_auth = true;
			break;
		default:
			usage();
		}
	}
	if (!c.addr || !c.token[0] || optind >= argc)
		usage();
	const char *cmd = argv[optind];
	int ac = argc - optind - 1;
	char **av = argv + optind + 1;
	connect_client(&c, wait_ready);
	int rc = 0;
	if (strcmp(cmd, "hello") == 0) {
		/* connect_client already authenticated; show a fresh handshake's reply */
		json_t *rep;
		mbp_err err = { 0 };
		if (handshake(&c, c.timeout_ms, &rep, &err) < 0)
			die("%s", err.msg);
		rc = print_reply(rep);
	} else if (strcmp(cmd, "ping") == 0 || strcmp(cmd, "list") == 0 ||
	           strcmp(cmd, "stats") == 0) {
		rc = print_reply(rpc(&c, mbp_request(cmd), NULL, 0, 0, NULL, NULL));
	} else if (strcmp(cmd, "run") == 0 || strcmp(cmd, "exec") == 0) {
		rc = cmd_run(&c, ac, av, strcmp(cmd, "exec") == 0);
	} else if (strcmp(cmd, "attach") == 0 && ac >= 1) {
		rc = attach(&c, av[0], ac >= 2 && strcmp(av[1], "--stdin") == 0);
	} else if (strcmp(cmd, "write") == 0 && ac >= 2) {
		json_t *req = json_pack("{s:s,s:s}", "op", MBP_OP_WRITE, "id", av[0]);
		const char *data = av[ac - 1];
		for (int i = 1; i < ac - 1; i++) {
			if (strcmp(av[i], "--eof") == 0)
				json_object_set_new(req, "eof", json_true());
			else if (strcmp(av[i], "--offset") == 0 && i + 1 < ac - 1)
				json_object_set_new(req, "offset",
				                    json_integer(strtoll(av[++i], NULL, 10)));
		}
		rc = print_reply(rpc(&c, req, data, strlen(data), 0, NULL, NULL));
	} else if (strcmp(cmd, "read") == 0 && ac >= 1) {
		json_t *req = json_pack("{s:s,s:s}", "op", MBP_OP_READ, "id", av[0]);
		int wait = 0;
		for (int i = 1; i + 1 < ac; i += 2) {
			if (strcmp(av[i], "--wait-ms") == 0)
				wait = atoi(av[i + 1]);
			json_object_set_new(req, av[i] + 2,
			                    json_integer(strtoll(av[i + 1], NULL, 10)));
		}
		json_object_del(req, "wait-ms");
		json_object_set_new(req, "wait_ms", json_integer(wait));
		uint8_t *data = NULL;
		size_t dlen = 0;
		json_t *rep = rpc(&c, req, NULL, 0, wait, &data, &dlen);
		print_json(rep);
		write_all(1, data, dlen);
		free(data);
		rc = mbp_get_bool(rep, "ok", 0) ? 0 : 1;
		json_decref(rep);
	} else if (strcmp(cmd, "wait") == 0 && ac >= 1) {
		int wait = ac >= 3 && strcmp(av[1], "--wait-ms") == 0 ? atoi(av[2]) : 60000;
		json_t *req =
		    json_pack("{s:s,s:s,s:i}", "op", MBP_OP_WAIT, "id", av[0], "wait_ms", wait);
		rc = print_reply(rpc(&c, req, NULL, 0, wait, NULL, NULL));
	} else if (strcmp(cmd, "signal") == 0 && ac >= 2) {
		json_t *req = json_pack("{s:s,s:s}", "op", MBP_OP_SIGNAL, "id", av[0]);
		char *end;
		long n = strtol(av[1], &end, 10);
		json_object_set_new(req, "signal", *end ? json_string(av[1]) : json_integer(n));
		rc = print_reply(rpc(&c, req, NULL, 0, 0, NULL, NULL));
	} else if (strcmp(cmd, "resize") == 0 && ac >= 3) {
		json_t *req = json_pack("{s:s,s:s,s:i,s:i}", "op", MBP_OP_RESIZE, "id", av[0],
		                        "rows", atoi(av[1]), "cols", atoi(av[2]));
		rc = print_reply(rpc(&c, req, NULL, 0, 0, NULL, NULL));
	} else if (strcmp(cmd, "release") == 0 && ac >= 1) {
		rc = print_reply(rpc(&c, json_pack("{s:s,s:s}", "op", MBP_OP_RELEASE, "id", av[0]),
		                     NULL, 0, 0, NULL, NULL));
	} else if (strcmp(cmd, "cp-in") == 0 && ac >= 2) {
		int mode =
		    ac >= 4 && strcmp(av[2], "--mode") == 0 ? (int)strtol(av[3], NULL, 8) : -1;
		rc = cmd_cp_in(&c, av[0], av[1], mode);
	} else if (strcmp(cmd, "cp-out") == 0 && ac >= 2) {
		rc = cmd_cp_out(&c, av[0], av[1]);
	} else if ((strcmp(cmd, "stat") == 0 || strcmp(cmd, "ls") == 0) && ac >= 1) {
		const char *op = strcmp(cmd, "stat") == 0 ? MBP_OP_FS_STAT : MBP_OP_FS_READDIR;
		rc = print_reply(rpc(&c, json_pack("{s:s,s:s}", "op", op, "path", av[0]), NULL, 0,
		                     0, NULL, NULL));
	} else if (strcmp(cmd, "mkdir") == 0 && ac >= 1) {
		json_t *req = json_pack("{s:s,s:s,s:b}", "op", MBP_OP_FS_MKDIR, "path", av[0],
		                        "parents", ac >= 2 && strcmp(av[1], "--parents") == 0);
		rc = print_reply(rpc(&c, req, NULL, 0, 0, NULL, NULL));
	} else if (strcmp(cmd, "shutdown") == 0) {
		int grace = ac >= 2 && strcmp(av[0], "--grace-ms") == 0 ? atoi(av[1]) : 10000;
		rc = print_reply(
		    rpc(&c, json_pack("{s:s,s:i}", "op", MBP_OP_SHUTDOWN, "grace_ms", grace), NULL,
		        0, 0, NULL, NULL));
	} else if (strcmp(cmd, "raw") == 0 && ac >= 1) {
		json_error_t je;
		json_t *req = json_loads(av[0], 0, &je);
		if (!req)
			die("bad JSON: %s", je.text);
		rc = print_reply(
		    rpc(&c, req, NULL, 0, (int)mbp_get_int(req, "wait_ms", 0), NULL, NULL));
	} else {
		usage();
	}
	nng_close(c.sock);
	return rc;
}
