#include "manifest.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

bool mbr_is_manifest_type(const char *mt)
{
	return mt && (!strcmp(mt, MBR_MT_OCI_MANIFEST) || !strcmp(mt, MBR_MT_DOCKER_MANIFEST));
}

bool mbr_is_index_type(const char *mt)
{
	return mt && (!strcmp(mt, MBR_MT_OCI_INDEX) || !strcmp(mt, MBR_MT_DOCKER_LIST));
}

int mbr_layer_compression(const char *mt)
{
	if (!strcmp(mt, MBR_MT_OCI_LAYER) ||
	    !strcmp(mt, "application/vnd.oci.image.layer.nondistributable.v1.tar"))
		return MBR_COMP_NONE;
	if (!strcmp(mt, MBR_MT_OCI_LAYER_GZIP) || !strcmp(mt, MBR_MT_DOCKER_LAYER))
		return MBR_COMP_GZIP;
	if (!strcmp(mt, MBR_MT_OCI_LAYER_ZSTD))
		return MBR_COMP_ZSTD;
	return -ENOTSUP;
}

static void copy_str(char *dst, size_t cap, json_t *v)
{
	const char *s = json_string_value(v);
	snprintf(dst, cap, "%s", s ? s : "");
}

static int parse_desc(json_t *j, struct mbr_desc *d, const char *what, mb_err *err)
{
	memset(d, 0, sizeof(*d));
	if (!json_is_object(j))
		return mb_err_set(err, -EINVAL, "%s: descriptor is not an object", what);
	copy_str(d->media_type, sizeof(d->media_type), json_object_get(j, "mediaType"));
	const char *dg = json_string_value(json_object_get(j, "digest"));
	mb_err e2;
	int r = mbr_digest_parse(dg, NULL, &e2);
	if (r < 0)
		return mb_err_set(err, r, "%s: %s", what, e2.msg);
	snprintf(d->digest, sizeof(d->digest), "%s", dg);
	json_t *sz = json_object_get(j, "size");
	if (!json_is_integer(sz) || json_integer_value(sz) < 0)
		return mb_err_set(err, -EINVAL, "%s %s: missing or negative size", what, dg);
	d->size = json_integer_value(sz);
	json_t *pl = json_object_get(j, "platform");
	if (json_is_object(pl)) {
		d->has_platform = true;
		copy_str(d->os, sizeof(d->os), json_object_get(pl, "os"));
		copy_str(d->arch, sizeof(d->arch), json_object_get(pl, "architecture"));
		copy_str(d->variant, sizeof(d->variant), json_object_get(pl, "variant"));
	}
	json_t *ann = json_object_get(j, "annotations");
	copy_str(d->ref_name, sizeof(d->ref_name),
	         json_object_get(ann, "org.opencontainers.image.ref.name"));
	if (!d->ref_name[0])
		copy_str(d->ref_name, sizeof(d->ref_name),
		         json_object_get(ann, "io.containerd.image.name"));
	return 0;
}

void mbr_manifest_free(struct mbr_manifest *m)
{
	free(m->layers);
	free(m->manifests);
	memset(m, 0, sizeof(*m));
}

int mbr_manifest_parse(const char *data, size_t len, const char *content_type,
                       struct mbr_manifest *out, mb_err *err)
{
	memset(out, 0, sizeof(*out));
	if (len > MBR_MAX_MANIFEST)
		return mb_err_set(err, -EFBIG, "manifest larger than %u bytes", MBR_MAX_MANIFEST);
	json_error_t je;
	json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		return mb_err_set(err, -EINVAL, "manifest is not a JSON object: %s", je.text);
	}
	int r = 0;
	json_int_t sv = json_integer_value(json_object_get(j, "schemaVersion"));
	const char *mt = json_string_value(json_object_get(j, "mediaType"));
	char ct[128] = "";
	if (content_type) { /* strip parameters: "type; charset=..." */
		snprintf(ct, sizeof(ct), "%s", content_type);
		ct[strcspn(ct, "; ")] = '\0';
	}
	if (sv == 1 || strstr(ct, "vnd.docker.distribution.manifest.v1")) {
		r = mb_err_set(err, -ENOTSUP,
		               "Docker schema1 manifests are not supported (the image must be "
		               "re-pushed with a current client)");
		goto out;
	}
	if (sv != 2) {
		r = mb_err_set(err, -EINVAL, "manifest has unsupported schemaVersion %lld",
		               (long long)sv);
		goto out;
	}
	if (!mt || !*mt) {
		if (mbr_is_manifest_type(ct) || mbr_is_index_type(ct))
			mt = ct;
		else if (json_object_get(j, "manifests"))
			mt = MBR_MT_OCI_INDEX;
		else if (json_object_get(j, "layers"))
			mt = MBR_MT_OCI_MANIFEST;
	}
	if (!mt || (!mbr_is_manifest_type(mt) && !mbr_is_index_type(mt))) {
		r = mb_err_set(err, -ENOTSUP, "unsupported manifest media type \"%s\"",
		               mt ? mt : "");
		goto out;
	}
	snprintf(out->media_type, sizeof(out->media_type), "%s", mt);
	if (mbr_is_index_type(mt)) {
		out->kind = MBR_KIND_INDEX;
		json_t *ms = json_object_get(j, "manifests");
		if (!json_is_array(ms)) {
			r = mb_err_set(err, -EINVAL, "index without manifests array");
			goto out;
		}
		size_t n = json_array_size(ms);
		if (n > 4096) {
			r = mb_err_set(err, -EINVAL, "index lists too many manifests");
			goto out;
		}
		out->manifests = calloc(n ? n : 1, sizeof(*out->manifests));
		if (!out->manifests) {
			r = mb_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			r = parse_desc(json_array_get(ms, i), &out->manifests[i], "index entry",
			               err);
			if (r < 0)
				goto out;
		}
		out->nmanifests = n;
	} else {
		out->kind = MBR_KIND_MANIFEST;
		r = parse_desc(json_object_get(j, "config"), &out->config, "config", err);
		if (r < 0)
			goto out;
		json_t *ls = json_object_get(j, "layers");
		if (!json_is_array(ls)) {
			r = mb_err_set(err, -EINVAL, "manifest without layers array");
			goto out;
		}
		size_t n = json_array_size(ls);
		if (n > MBR_MAX_LAYERS) {
			r = mb_err_set(err, -EINVAL, "manifest has %zu layers (limit %d)", n,
			               MBR_MAX_LAYERS);
			goto out;
		}
		out->layers = calloc(n ? n : 1, sizeof(*out->layers));
		if (!out->layers) {
			r = mb_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			struct mbr_desc *d = &out->layers[i];
			r = parse_desc(json_array_get(ls, i), d, "layer", err);
			if (r < 0)
				goto out;
			if (!d->media_type[0])
				snprintf(d->media_type, sizeof(d->media_type), "%s",
				         MBR_MT_OCI_LAYER_GZIP);
			if (mbr_layer_compression(d->media_type) < 0) {
				r = mb_err_set(err, -ENOTSUP,
				               "layer %s has unsupported media type %s", d->digest,
				               d->media_type);
				goto out;
			}
		}
		out->nlayers = n;
	}
out:
	json_decref(j);
	if (r < 0)
		mbr_manifest_free(out);
	return r;
}

int mbr_platform_parse(const char *s, char os[32], char arch[32], char variant[32], mb_err *err)
{
	snprintf(os, 32, "linux");
	snprintf(arch, 32, "amd64");
	variant[0] = '\0';
	if (!s || !*s)
		return 0;
	char parts[3][32] = { "", "", "" };
	int n = 0;
	const char *p = s;
	while (*p) {
		size_t l = strcspn(p, "/");
		if (n == 3 || l == 0 || l >= 32)
			return mb_err_set(err, -EINVAL, "invalid platform \"%s\"", s);
		memcpy(parts[n], p, l);
		parts[n][l] = '\0';
		n++;
		p += l;
		if (*p == '/')
			p++;
	}
	if (n == 1) {
		snprintf(arch, 32, "%s", parts[0]);
	} else {
		snprintf(os, 32, "%s", parts[0]);
		snprintf(arch, 32, "%s", parts[1]);
		snprintf(variant, 32, "%s", parts[2]);
	}
	if (!strcmp(arch, "x86_64") || !strcmp(arch, "x86-64"))
		snprintf(arch, 32, "amd64");
	else if (!strcmp(arch, "aarch64"))
		snprintf(arch, 32, "arm64");
	return 0;
}

static bool variant_match(const char *arch, const char *want, const char *have)
{
	if (!want || !*want)
		return true;          /* any variant (the index's first match wins) */
	if (!strcmp(arch, "arm64")) { /* "" and "v8" are the same on arm64 */
		const char *w = *want ? want : "v8", *h = *have ? have : "v8";
		return !strcmp(w, h);
	}
	return !strcmp(want, have);
}

int mbr_index_select(const struct mbr_manifest *idx, const char *os, const char *arch,
                     const char *variant, mb_err *err)
{
	if (!os || !*os)
		os = "linux";
	if (!arch || !*arch)
		arch = "amd64";
	for (size_t i = 0; i < idx->nmanifests; i++) {
		const struct mbr_desc *d = &idx->manifests[i];
		if (!d->has_platform || strcmp(d->os, os) || strcmp(d->arch, arch))
			continue;
		if (!variant_match(arch, variant, d->variant))
			continue;
		if (d->media_type[0] && !mbr_is_manifest_type(d->media_type))
			continue;
		return (int)i;
	}
	char avail[160] = "";
	size_t used = 0;
	for (size_t i = 0; i < idx->nmanifests && used < sizeof(avail) - 1; i++) {
		const struct mbr_desc *d = &idx->manifests[i];
		if (!d->has_platform || !strcmp(d->os, "unknown"))
			continue;
		int k =
		    snprintf(avail + used, sizeof(avail) - used, "%s%s/%s%s%s", used ? ", " : "",
		             d->os, d->arch, d->variant[0] ? "/" : "", d->variant);
		if (k < 0)
			break;
		used += (size_t)k;
		if (used >= sizeof(avail))
			used = sizeof(avail) - 1;
	}
	return mb_err_set(
	    err, -ENOENT, "no manifest for %s/%s%s%s in the image index (available: %s)", os, arch,
	    variant && *variant ? "/" : "", variant ? variant : "", avail[0] ? avail : "none");
}

static json_t *string_array_or_null(json_t *v)
{
	if (!json_is_array(v))
		return json_null();
	json_t *a = json_array();
	size_t i;
	json_t *e;
	json_array_foreach(v, i, e)
	{
		if (json_is_string(e))
			json_array_append(a, e);
	}
	return a;
}

static json_t *object_keys_sorted(json_t *o)
{
	json_t *a = json_array();
	if (!json_is_object(o))
		return a;
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v)
	{
		json_array_append_new(a, json_string(k));
	}
	/* insertion sort: tiny arrays */
	size_t n = json_array_size(a);
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0; j--) {
			const char *x = json_string_value(json_array_get(a, j - 1));
			const char *y = json_string_value(json_array_get(a, j));
			if (strcmp(x, y) <= 0)
				break;
			json_t *tx = json_incref(json_array_get(a, j - 1));
			json_array_set(a, j - 1, json_array_get(a, j));
			json_array_set_new(a, j, tx);
		}
	return a;
}

static json_t *str_or_empty(json_t *v)
{
	return json_string(json_is_string(v) ? json_string_value(v) : "");
}

json_t *mbr_config_summary(const char *data, size_t len, mb_err *err)
{
	if (len > MBR_MAX_CONFIG) {
		mb_err_set(err, -EFBIG, "image config too large");
		return NULL;
	}
	json_error_t je;
	json_t *j = json_loadb(data, len, 0, &je);
	if (!json_is_object(j)) {
		json_decref(j);
		mb_err_set(err, -EINVAL, "image config is not a JSON object: %s", je.text);
		return NULL;
	}
	json_t *c = json_object_get(j, "config");
	json_t *out = json_object();
	json_object_set_new(out, "os", str_or_empty(json_object_get(j, "os")));
	json_object_set_new(out, "architecture", str_or_empty(json_object_get(j, "architecture")));
	json_object_set_new(out, "variant", str_or_empty(json_object_get(j, "variant")));
	json_object_set_new(out, "created", str_or_empty(json_object_get(j, "created")));
	json_object_set_new(out, "author", str_or_empty(json_object_get(j, "author")));
	json_object_set_new(out, "entrypoint",
	                    string_array_or_null(json_object_get(c, "Entrypoint")));
	json_object_set_new(out, "cmd", string_array_or_null(json_object_get(c, "Cmd")));
	json_t *env = string_array_or_null(json_object_get(c, "Env"));
	json_object_set_new(out, "env", json_is_null(env) ? json_array() : env);
	json_object_set_new(out, "working_dir", str_or_empty(json_object_get(c, "WorkingDir")));
	json_object_set_new(out, "user", str_or_empty(json_object_get(c, "User")));
	json_object_set_new(out, "exposed_ports",
	                    object_keys_sorted(json_object_get(c, "ExposedPorts")));
	json_object_set_new(out, "volumes", object_keys_sorted(json_object_get(c, "Volumes")));
	json_object_set_new(out, "stop_signal", str_or_empty(json_object_get(c, "StopSignal")));
	json_t *hc = json_object_get(c, "Healthcheck");
	if (json_is_object(hc)) {
		json_t *h = json_object();
		json_object_set_new(h, "test", string_array_or_null(json_object_get(hc, "Test")));
		const char *nums[][2] = { { "Interval", "interval" },
			                  { "Timeout", "timeout" },
			                  { "StartPeriod", "start_period" },
			                  { "StartInterval", "start_interval" },
			                  { "Retries", "retries" } };
		for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
			json_object_set_new(
			    h, nums[i][1],
			    json_integer(json_integer_value(json_object_get(hc, nums[i][0]))));
		json_object_set_new(out, "healthcheck", h);
	} else {
		json_object_set_new(out, "healthcheck", json_null());
	}
	json_t *labels = json_object_get(c, "Labels");
	json_t *lo = json_object();
	const char *k;
	json_t *v;
	json_object_foreach(labels, k, v)
	{
		if (json_is_string(v))
			json_object_set(lo, k, v);
	}
	json_object_set_new(out, "labels", lo);
	json_t *rootfs = json_object_get(j, "rootfs");
	json_t *diff_ids = string_array_or_null(json_object_get(rootfs, "diff_ids"));
	json_object_set_new(out, "diff_ids", json_is_null(diff_ids) ? json_array() : diff_ids);
	json_decref(j);
	return out;
}

char *mbr_manifest_build(const struct mbr_desc *config, const struct mbr_desc *layers,
                         size_t nlayers)
{
	json_t *ls = json_array();
	for (size_t i = 0; i < nlayers; i++)
		json_array_append_new(
		    ls, json_pack("{s:s,s:s,s:I}", "mediaType", layers[i].media_type, "digest",
		                  layers[i].digest, "size", (json_int_t)layers[i].size));
	json_t *m =
	    json_pack("{s:i,s:s,s:{s:s,s:s,s:I},s:o}", "schemaVersion", 2, "mediaType",
	              MBR_MT_OCI_MANIFEST, "config", "mediaType", config->media_type, "digest",
	              config->digest, "size", (json_int_t)config->size, "layers", ls);
	if (!m)
		return NULL;
	char *s = json_dumps(m, JSON_COMPACT);
	json_decref(m);
	return s;
}
