/*
 * The client side of the binary: `moonbox <command>` talks to a running daemon.
 */
#include <stdio.h>
#include <string.h>

int cli_main(int argc, char **argv);

static void usage(FILE *f)
{
	fprintf(f, "usage: moonbox <command> [args]\n"
	           "  serve      run the daemon (moonbox serve --help)\n"
	           "  test       run Lua test files inside the runtime\n"
	           "  version    print the version\n");
}

int cli_main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "moonbox: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
