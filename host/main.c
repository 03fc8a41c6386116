/*
 * moonbox — one binary: the daemon (`serve`), the Lua test runner (`test`), `--version`,
 * and the client CLI (everything else; see cli.c).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"
#include "log.h"
#include "loop.h"
#include "util.h"

int testrun_main(int argc, char **argv);
int cli_main(int argc, char **argv);

static void usage_serve(FILE *f)
{
	fprintf(
	    f,
	    "usage: moonbox serve [options]\n"
	    "  --state-dir DIR     persistent state (default /var/lib/moonbox as root)\n"
	    "  --run-dir DIR       sockets, pidfiles, VM runtime files (default /run/moonbox)\n"
	    "  --http ADDR:PORT    TCP listener, bearer token required (default 127.0.0.1:8420;\n"
	    "                      \"\" disables it)\n"
	    "  --socket PATH       unix socket, mode 0660 (default RUN_DIR/moonbox.sock; \"\" "
	    "disables)\n"
	    "  --scripts DIR       operator scripts, loaded after and overriding the shipped ones\n"
	    "  --plugins DIR       an extra plugin directory (*.so)\n"
	    "  --token-file PATH   API token file (created with a random token if missing;\n"
	    "                      default STATE_DIR/token)\n"
	    "  --guest-dir DIR     guest kernel and initramfs (default: next to the binary)\n"
	    "  --log-level LEVEL   error, warn, info (default), debug\n"
	    "  --script-budget MS  stop a script that runs this long without waiting (2000)\n"
	    "  --body-limit BYTES  largest request body accepted (default 64 MiB)\n"
	    "SIGTERM/SIGINT drain and exit; SIGHUP reloads the scripts.\n");
}

int parse_log_level(const char *s);
int parse_log_level(const char *s)
{
	if (strcmp(s, "error") == 0)
		return MB_LOG_ERROR;
	if (strcmp(s, "warn") == 0)
		return MB_LOG_WARN;
	if (strcmp(s, "debug") == 0)
		return MB_LOG_DEBUG;
	return MB_LOG_INFO;
}

static int serve_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "run-dir", required_argument, NULL, 'r' },
		{ "http", required_argument, NULL, 'H' },
		{ "socket", required_argument, NULL, 'S' },
		{ "scripts", required_argument, NULL, 'c' },
		{ "plugins", required_argument, NULL, 'p' },
		{ "token-file", required_argument, NULL, 't' },
		{ "guest-dir", required_argument, NULL, 'g' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "script-budget", required_argument, NULL, 'b' },
		{ "body-limit", required_argument, NULL, 'B' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon_opts o = { .log_level = MB_LOG_INFO };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			o.state_dir = optarg;
			break;
		case 'r':
			o.run_dir = optarg;
			break;
		case 'H':
			o.http = optarg;
			break;
		case 'S':
			o.socket = optarg;
			break;
		case 'c':
			o.scripts = optarg;
			break;
		case 'p':
			o.plugins_dir = optarg;
			break;
		case 't':
			o.token_file = optarg;
			break;
		case 'g':
			o.guest_dir = optarg;
			break;
		case 'l':
			o.log_level = parse_log_level(optarg);
			break;
		case 'b':
			o.budget_ms = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'B':
			o.body_limit = (size_t)strtoull(optarg, NULL, 10);
			break;
		case 'h':
			usage_serve(stdout);
			return 0;
		default:
			usage_serve(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "moonbox serve: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	daemon_default_paths(&o);
	mb_err err = { 0 };
	int rc = 1;
	if (daemon_init(&o, &err) < 0 || daemon_signals(&err) < 0 || daemon_http(&o, &err) < 0 ||
	    daemon_pidfile(o.run_dir, &err) < 0) {
		log_error("%s", err.msg);
		goto out;
	}
	log_info("moonbox %s ready (pid %d, state %s)", MOONBOX_VERSION, (int)getpid(),
	         o.state_dir);
	events_emit("daemon.start",
	            json_pack("{s:s,s:i}", "version", MOONBOX_VERSION, "pid", (int)getpid()), NULL);
	loop_run();
	rc = daemon_exit_code();
	log_info("stopped");
out:
	daemon_fini();
	return rc;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return serve_main(argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "test") == 0)
		return testrun_main(argc - 1, argv + 1);
	/* `moonbox version` is the CLI's (client and server); --version stays offline */
	if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
		printf("moonbox %s (API %s, plugin ABI %d.%d, %s)\n", MOONBOX_VERSION,
		       MOONBOX_API_VERSION, MB_ABI_MAJOR, MB_ABI_MINOR, LUA_RELEASE);
		return 0;
	}
	return cli_main(argc, argv);
}
