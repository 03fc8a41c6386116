/*
 * mbr-pull: the registry engine on a private loop, for integration tests and benchmarks.
 *
 *   mbr-pull --state DIR [--user U --password P] [--insecure] [--platform P]
 *            [--parallel N] [--progress] [--cancel-after MS] REF...
 *   mbr-pull --state DIR --load ARCHIVE
 *
 * Prints one JSON object per line: {"ok":true,"reference","id","disk","layers","cached",...}
 * or {"ok":false,"code","message"}. Exit status 0 when every item succeeded.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"
#include "loop.h"
#include "pull.h"

static volatile bool stop;
static int failures;
static bool show_progress;
static mbr_pull *active[64];
static int nactive;

static void forget(mbr_pull *p)
{
	for (int i = 0; i < nactive; i++)
		if (active[i] == p)
			active[i] = active[--nactive];
}

/* --cancel-after: free every running job (the cancel path, for sanitizer runs) */
static void cancel_all(void *arg)
{
	while (nactive > 0) {
		mbr_pull *p = active[--nactive];
		printf("{\"ok\":false,\"code\":\"cancelled\",\"reference\":\"%s\"}\n",
		       mbr_pull_reference(p));
		mbr_pull_free(p);
	}
	fflush(stdout);
}

static void print_err(const char *what, const mb_err *err)
{
	json_t *j = json_pack("{s:b,s:s,s:s,s:s}", "ok", 0, "item", what, "code",
	                      mbr_err_code_name(err->code), "message", err->msg);
	char *s = json_dumps(j, JSON_COMPACT);
	printf("%s\n", s);
	free(s);
	json_decref(j);
	fflush(stdout);
	failures++;
}

static void on_progress(mbr_pull *p, void *arg)
{
	if (!show_progress)
		return;
	json_t *j = mbr_pull_progress_json(p);
	char *s = json_dumps(j, JSON_COMPACT);
	fprintf(stderr, "progress %s\n", s);
	free(s);
	json_decref(j);
}

static void on_done(mbr_pull *p, const struct mbr_pull_result *res, const mb_err *err, void *arg)
{
	const char *what = arg;
	if (err) {
		print_err(what, err);
	} else {
		json_t *j =
		    json_pack("{s:b,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:b,s:O}", "ok", 1, "reference",
		              res->reference, "repo_digest", res->repo_digest, "id", res->id,
		              "manifest_digest", res->manifest_digest, "disk", res->disk, "layers",
		              (json_int_t)res->nlayers, "size", (json_int_t)res->size, "cached",
		              res->cached, "config", res->summary);
		char *s = json_dumps(j, JSON_COMPACT);
		printf("%s\n", s);
		free(s);
		json_decref(j);
		fflush(stdout);
	}
	forget(p);
	mbr_pull_free(p);
}

int main(int argc, char **argv)
{
	const char *state = NULL, *user = NULL, *pass = NULL, *platform = NULL, *load = NULL;
	bool insecure = false;
	int parallel = 3;
	int cancel_after = -1;
	static const struct option lo[] = {
		{ "state", 1, 0, 's' },        { "user", 1, 0, 'u' },
		{ "password", 1, 0, 'p' },     { "insecure", 0, 0, 'i' },
		{ "platform", 1, 0, 'P' },     { "parallel", 1, 0, 'j' },
		{ "load", 1, 0, 'l' },         { "progress", 0, 0, 'v' },
		{ "cancel-after", 1, 0, 'c' }, { 0, 0, 0, 0 }
	};
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			state = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case 'p':
			pass = optarg;
			break;
		case 'i':
			insecure = true;
			break;
		case 'P':
			platform = optarg;
			break;
		case 'j':
			parallel = atoi(optarg);
			break;
		case 'l':
			load = optarg;
			break;
		case 'v':
			show_progress = true;
			break;
		case 'c':
			cancel_after = atoi(optarg);
			break;
		default:
			return 2;
		}
	}
	if (!state || (!load && optind >= argc)) {
		fprintf(stderr, "usage: mbr-pull --state DIR [opts] REF... | --load ARCHIVE\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	struct test_loop *l = tl_new();
	mb_err err = { 0 };
	char images[4096];
	snprintf(images, sizeof(images), "%s/images", state);
	mbr_engine *e = mbr_engine_new(tl_io(l), images, &err);
	if (!e) {
		fprintf(stderr, "engine: %s\n", err.msg);
		return 1;
	}
	e->parallel = parallel;
	if (getenv("MBR_RETRIES"))
		e->client->max_retries = atoi(getenv("MBR_RETRIES"));
	if (getenv("MBR_ALLOW_DEVICES"))
		e->unpack.allow_devices = true;
	struct mbr_cred cred = { .username = (char *)user, .password = (char *)pass };
	if (load) {
		struct mbr_import_result res;
		/* blocking here is fine: this is a test driver, not the loop thread of a daemon */
		if (mbr_import_archive(e->store, load, NULL, NULL, NULL, &res, &err) < 0) {
			print_err(load, &err);
		} else {
			for (size_t i = 0; i < res.n; i++) {
				mbr_pull *p = mbr_build_start(
				    e, res.images[i].manifest, res.images[i].manifest_len,
				    res.images[i].manifest_digest, on_progress, on_done,
				    (void *)load, &err);
				if (!p)
					print_err(load, &err);
			}
			tl_run(l, &stop);
			mbr_import_result_free(&res);
		}
	} else {
		for (int i = optind; i < argc; i++) {
			struct mbr_pull_opts o = { .reference = argv[i],
				                   .cred = user ? &cred : NULL,
				                   .insecure = insecure,
				                   .platform = platform };
			mbr_pull *p = mbr_pull_start(e, &o, on_progress, on_done, argv[i], &err);
			if (!p)
				print_err(argv[i], &err);
			else if (nactive < 64)
				active[nactive++] = p;
		}
		if (cancel_after >= 0)
			tl_io(l)->timer_start(tl_io(l)->ud, (uint64_t)cancel_after, cancel_all,
			                      NULL);
		tl_run(l, &stop);
	}
	mbr_engine_free(e);
	tl_free(l);
	curl_global_cleanup();
	return failures ? 1 : 0;
}
