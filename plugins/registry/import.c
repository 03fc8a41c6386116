#include "import.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "unpack.h"

enum ent_kind { ENT_FILE, ENT_SYMLINK, ENT_HARDLINK };

struct ent {
	char *path;
	enum ent_kind kind;
	char *target;  /* symlink/hardlink target (cleaned for hardlinks) */
	char *tmpfile; /* ENT_FILE */
	char digest[MBR_DIGEST_LEN + 1];
	int64_t size;
	bool adopted;
};

struct imp {
	const mbr_store *s;
	char *dir; /* scratch dir under tmp/ */
	struct ent *ents;
	size_t n, cap;
};

static void imp_free(struct imp *im)
{
	for (size_t i = 0; i < im->n; i++) {
		free(im->ents[i].path);
		free(im->ents[i].target);
		free(im->ents[i].tmpfile);
	}
	free(im->ents);
	if (im->dir) {
		mbr_rm_tree(im->dir, NULL);
		free(im->dir);
	}
}

static struct ent *find(struct imp *im, const char *path)
{
	for (size_t i = im->n; i-- > 0;) /* last entry with a name wins, like tar -x */
		if (!strcmp(im->ents[i].path, path))
			return &im->ents[i];
	return NULL;
}

/* Follow symlinks and hard links (inside the archive only) to a file entry. */
static struct ent *resolve_file(struct imp *im, const char *path, mb_err *err)
{
	char cur[PATH_MAX];
	if (mbr_clean_path(path, cur, sizeof(cur), err) < 0)
		return NULL;
	for (int hops = 0; hops < 16; hops++) {
		struct ent *e = find(im, cur);
		if (!e) {
			mb_err_set(err, -EINVAL, "archive does not contain %.200s", cur);
			return NULL;
		}
		if (e->kind == ENT_FILE)
			return e;
		char next[PATH_MAX * 2];
		if (e->kind == ENT_HARDLINK || e->target[0] == '/') {
			snprintf(next, sizeof(next), "%s", e->target);
		} else {
			const char *slash = strrchr(cur, '/');
			snprintf(next, sizeof(next), "%.*s%s%s", slash ? (int)(slash - cur) : 0,
			         cur, slash ? "/" : "", e->target);
		}
		/* resolve ".." lexically, clamped at the archive root */
		char out[PATH_MAX];
		size_t n = 0;
		const char *p = next;
		while (*p) {
			while (*p == '/')
				p++;
			size_t l = strcspn(p, "/");
			if (!l)
				break;
			if (l == 1 && *p == '.') {
			} else if (l == 2 && p[0] == '.' && p[1] == '.') {
				while (n > 0 && out[n - 1] != '/')
					n--;
				if (n > 0)
					n--;
			} else {
				if (n + l + 2 > sizeof(out)) {
					mb_err_set(err, -ENAMETOOLONG, "link target too long");
					return NULL;
				}
				if (n)
					out[n++] = '/';
				memcpy(out + n, p, l);
				n += l;
			}
			p += l;
		}
		out[n] = '\0';
		snprintf(cur, sizeof(cur), "%s", out);
	}
	mb_err_set(err, -ELOOP, "too many links resolving %.200s", path);
	return NULL;
}

static int add_ent(struct imp *im, struct ent *e)
{
	if (im->n == im->cap) {
		size_t cap = im->cap ? im->cap * 2 : 32;
		struct ent *n = realloc(im->ents, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		im->ents = n;
		im->cap = cap;
	}
	im->ents[im->n++] = *e;
	return 0;
}

static int read_entries(struct imp *im, const char *path, mb_err *err)
{
	struct archive *a = archive_read_new();
	if (!a)
		return mb_err_set(err, -ENOMEM, "out of memory");
	archive_read_support_filter_gzip(a);
	archive_read_support_filter_zstd(a);
	archive_read_support_format_tar(a);
	int r = 0;
	char *buf = malloc(1 << 20);
	mbr_sha256 *h = mbr_sha256_new();
	if (!buf || !h) {
		r = mb_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	if (archive_read_open_filename(a, path, 1 << 17) != ARCHIVE_OK) {
		if (archive_errno(a) == ENOENT)
			r = mb_err_set(err, -ENOENT, "%s: no such file", path);
		else
			r = mb_err_set(err, -EINVAL, "%s is not a tar archive: %s", path,
			               archive_error_string(a) ? archive_error_string(a) : "?");
		goto out;
	}
	for (unsigned idx = 0;; idx++) {
		struct archive_entry *ae;
		int ar = archive_read_next_header(a, &ae);
		if (ar == ARCHIVE_EOF)
			break;
		if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN) {
			r = mb_err_set(err, -EINVAL, "reading %s: %s", path,
			               archive_error_string(a) ? archive_error_string(a) : "?");
			goto out;
		}
		char clean[PATH_MAX];
		if ((r = mbr_clean_path(archive_entry_pathname(ae), clean, sizeof(clean), err)) < 0)
			goto out;
		struct ent e = { 0 };
		const char *hl = archive_entry_hardlink(ae);
		mode_t t = archive_entry_filetype(ae);
		if (hl) {
			char tc[PATH_MAX];
			if ((r = mbr_clean_path(hl, tc, sizeof(tc), err)) < 0)
				goto out;
			e.kind = ENT_HARDLINK;
			e.target = strdup(tc);
		} else if (t == AE_IFLNK) {
			e.kind = ENT_SYMLINK;
			e.target =
			    strdup(archive_entry_symlink(ae) ? archive_entry_symlink(ae) : "");
		} else if (t == AE_IFREG) {
			e.kind = ENT_FILE;
			e.tmpfile = mbr_sprintf("%s/%u", im->dir, idx);
			if (!e.tmpfile) {
				r = mb_err_set(err, -ENOMEM, "out of memory");
				goto out;
			}
			int fd = open(e.tmpfile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd < 0) {
				r = mb_err_set(err, -errno, "create %s: %s", e.tmpfile,
				               strerror(errno));
				free(e.tmpfile);
				goto out;
			}
			mbr_sha256_reset(h);
			ssize_t n;
			while ((n = archive_read_data(a, buf, 1 << 20)) > 0) {
				mbr_sha256_update(h, buf, (size_t)n);
				for (ssize_t off = 0; off < n;) {
					ssize_t w = write(fd, buf + off, (size_t)(n - off));
					if (w < 0 && errno == EINTR)
						continue;
					if (w < 0) {
						int en = errno;
						close(fd);
						free(e.tmpfile);
						r = mb_err_set(err, en == ENOSPC ? -ENOSPC : -en,
						               "write: %s", strerror(en));
						goto out;
					}
					off += w;
				}
			}
			close(fd);
			if (n < 0) {
				free(e.tmpfile);
				r = mb_err_set(err, -EINVAL, "reading %s: %s", clean,
				               archive_error_string(a));
				goto out;
			}
			e.size = (int64_t)mbr_sha256_count(h);
			mbr_sha256_final(h, e.digest);
		} else {
			continue;
		}
		e.path = strdup(clean);
		if (!e.path || (e.kind != ENT_FILE && !e.target) || add_ent(im, &e) < 0) {
			free(e.path);
			free(e.target);
			free(e.tmpfile);
			r = mb_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
	}
out:
	free(buf);
	mbr_sha256_free(h);
	archive_read_free(a);
	return r;
}

static json_t *load_json(struct ent *e, mb_err *err)
{
	char *text = NULL;
	size_t len = 0;
	if (mbr_read_file(e->tmpfile, 8u << 20, &text, &len, err) < 0)
		return NULL;
	json_error_t je;
	json_t *j = json_loadb(text, len, 0, &je);
	free(text);
	if (!j)
		mb_err_set(err, -EINVAL, "%s: invalid JSON: %s", e->path, je.text);
	return j;
}

static int adopt(struct imp *im, struct ent *e, mb_err *err)
{
	if (e->adopted || mbr_store_has_blob(im->s, e->digest, NULL)) {
		e->adopted = true;
		return 0;
	}
	int r = mbr_store_adopt(im->s, e->tmpfile, e->digest, err);
	if (r == 0)
		e->adopted = true;
	return r;
}

static const char *sniff_layer_type(struct ent *e)
{
	unsigned char m[4] = { 0 };
	int fd = open(e->tmpfile, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, m, 4) < 0)
			m[0] = 0;
		close(fd);
	}
	if (m[0] == 0x1f && m[1] == 0x8b)
		return MBR_MT_OCI_LAYER_GZIP;
	if (m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd)
		return MBR_MT_OCI_LAYER_ZSTD;
	return MBR_MT_OCI_LAYER;
}

static int push_image(struct mbr_import_result *res, struct mbr_import_image *img)
{
	struct mbr_import_image *n = realloc(res->images, (res->n + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	res->images = n;
	res->images[res->n++] = *img;
	return 0;
}

static void image_free(struct mbr_import_image *img)
{
	free(img->manifest);
	for (size_t i = 0; i < img->nrefs; i++)
		free(img->refs[i]);
	free(img->refs);
	memset(img, 0, sizeof(*img));
}

static int add_ref(struct mbr_import_image *img, const char *ref)
{
	char **n = realloc(img->refs, (img->nrefs + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	img->refs = n;
	if (!(img->refs[img->nrefs] = strdup(ref)))
		return -ENOMEM;
	img->nrefs++;
	return 0;
}

static int import_docker(struct imp *im, struct ent *mf, struct mbr_import_result *res, mb_err *err)
{
	json_t *j = load_json(mf, err);
	if (!j)
		return err ? err->code : -EINVAL;
	int r = 0;
	if (!json_is_array(j) || !json_array_size(j)) {
		r = mb_err_set(err, -EINVAL, "manifest.json is not a non-empty array");
		goto out;
	}
	size_t i;
	json_t *it;
	json_array_foreach(j, i, it)
	{
		struct mbr_import_image img = { 0 };
		const char *cfgp = json_string_value(json_object_get(it, "Config"));
		json_t *layers = json_object_get(it, "Layers");
		if (!cfgp || !json_is_array(layers) || json_array_size(layers) > MBR_MAX_LAYERS) {
			r = mb_err_set(err, -EINVAL, "manifest.json entry %zu lacks Config/Layers",
			               i);
			goto out;
		}
		struct ent *cfg = resolve_file(im, cfgp, err);
		if (!cfg) {
			r = err ? err->code : -EINVAL;
			goto out;
		}
		json_t *cj = load_json(cfg, err);
		if (!cj) {
			r = err ? err->code : -EINVAL;
			goto out;
		}
		json_t *diff_ids = json_object_get(json_object_get(cj, "rootfs"), "diff_ids");
		size_t nl = json_array_size(layers);
		struct mbr_desc *ld = calloc(nl ? nl : 1, sizeof(*ld));
		if (!ld) {
			json_decref(cj);
			r = mb_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		for (size_t k = 0; k < nl && r == 0; k++) {
			const char *lp = json_string_value(json_array_get(layers, k));
			struct ent *le = lp ? resolve_file(im, lp, err) : NULL;
			if (!le) {
				r = lp ? (err ? err->code : -EINVAL)
				       : mb_err_set(err, -EINVAL, "bad layer path");
				break;
			}
			snprintf(ld[k].media_type, sizeof(ld[k].media_type), "%s",
			         sniff_layer_type(le));
			snprintf(ld[k].digest, sizeof(ld[k].digest), "%s", le->digest);
			ld[k].size = le->size;
			const char *did = json_string_value(json_array_get(diff_ids, k));
			if (!strcmp(ld[k].media_type, MBR_MT_OCI_LAYER) && did &&
			    strcmp(did, le->digest))
				r = mb_err_set(err, -EBADMSG,
				               "layer %s does not match diff_id %s in the config",
				               lp, did);
			if (r == 0)
				r = adopt(im, le, err);
		}
		json_decref(cj);
		struct mbr_desc cd = { .size = cfg->size };
		snprintf(cd.media_type, sizeof(cd.media_type), "%s", MBR_MT_OCI_CONFIG);
		snprintf(cd.digest, sizeof(cd.digest), "%s", cfg->digest);
		if (r == 0)
			r = adopt(im, cfg, err);
		if (r == 0) {
			img.manifest = mbr_manifest_build(&cd, ld, nl);
			if (!img.manifest)
				r = mb_err_set(err, -ENOMEM, "out of memory");
		}
		free(ld);
		if (r == 0) {
			img.manifest_len = strlen(img.manifest);
			mbr_sha256_buf(img.manifest, img.manifest_len, img.manifest_digest);
			snprintf(img.media_type, sizeof(img.media_type), "%s", MBR_MT_OCI_MANIFEST);
			snprintf(img.config_digest, sizeof(img.config_digest), "%s", cfg->digest);
			r = mbr_store_put_buf(im->s, img.manifest_digest, img.manifest,
			                      img.manifest_len, err);
		}
		json_t *tags = json_object_get(it, "RepoTags");
		size_t ti;
		json_t *tv;
		json_array_foreach(tags, ti, tv)
		{
			if (r == 0 && json_is_string(tv) &&
			    add_ref(&img, json_string_value(tv)) < 0)
				r = mb_err_set(err, -ENOMEM, "out of memory");
		}
		if (r == 0 && push_image(res, &img) < 0)
			r = mb_err_set(err, -ENOMEM, "out of memory");
		if (r < 0) {
			image_free(&img);
			goto out;
		}
	}
	snprintf(res->format, sizeof(res->format), "docker");
out:
	json_decref(j);
	return r;
}

static struct ent *oci_blob(struct imp *im, const struct mbr_desc *d, mb_err *err)
{
	const char *hex = strchr(d->digest, ':') + 1;
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "blobs/sha256/%s", hex);
	struct ent *e = resolve_file(im, p, err);
	if (!e)
		return NULL;
	if (strcmp(e->digest, d->digest)) {
		mb_err_set(err, -EBADMSG, "blob %s does not match its digest (got %s)", d->digest,
		           e->digest);
		return NULL;
	}
	if (d->size != e->size) {
		mb_err_set(err, -EBADMSG, "blob %s has size %lld, descriptor says %lld", d->digest,
		           (long long)e->size, (long long)d->size);
		return NULL;
	}
	return e;
}

static int import_oci_manifest(struct imp *im, const struct mbr_desc *md, const char *ref,
                               const char *os, const char *arch, const char *variant, int depth,
                               struct mbr_import_result *res, mb_err *err)
{
	if (depth > 4)
		return mb_err_set(err, -EINVAL, "index nesting too deep");
	struct ent *me = oci_blob(im, md, err);
	if (!me)
		return err ? err->code : -EINVAL;
	char *text = NULL;
	size_t len = 0;
	int r = mbr_read_file(me->tmpfile, MBR_MAX_MANIFEST, &text, &len, err);
	if (r < 0)
		return r;
	struct mbr_manifest m;
	r = mbr_manifest_parse(text, len, md->media_type[0] ? md->media_type : NULL, &m, err);
	if (r < 0) {
		free(text);
		return r;
	}
	if (m.kind == MBR_KIND_INDEX) {
		free(text);
		int k = mbr_index_select(&m, os, arch, variant, err);
		if (k >= 0)
			r = import_oci_manifest(im, &m.manifests[k], ref, os, arch, variant,
			                        depth + 1, res, err);
		else
			r = k;
		mbr_manifest_free(&m);
		return r;
	}
	struct mbr_import_image img = { .manifest = text, .manifest_len = len };
	struct ent *ce = oci_blob(im, &m.config, err);
	r = ce ? adopt(im, ce, err) : (err ? err->code : -EINVAL);
	for (size_t i = 0; i < m.nlayers && r == 0; i++) {
		struct ent *le = oci_blob(im, &m.layers[i], err);
		r = le ? adopt(im, le, err) : (err ? err->code : -EINVAL);
	}
	if (r == 0)
		r = adopt(im, me, err);
	if (r == 0) {
		snprintf(img.manifest_digest, sizeof(img.manifest_digest), "%s", md->digest);
		snprintf(img.media_type, sizeof(img.media_type), "%s", m.media_type);
		snprintf(img.config_digest, sizeof(img.config_digest), "%s", m.config.digest);
		if (ref && *ref && add_ref(&img, ref) < 0)
			r = mb_err_set(err, -ENOMEM, "out of memory");
	}
	mbr_manifest_free(&m);
	if (r == 0 && push_image(res, &img) < 0)
		r = mb_err_set(err, -ENOMEM, "out of memory");
	if (r < 0)
		image_free(&img);
	return r;
}

static int import_oci(struct imp *im, struct ent *idx, const char *os, const char *arch,
                      const char *variant, struct mbr_import_result *res, mb_err *err)
{
	char *text = NULL;
	size_t len = 0;
	int r = mbr_read_file(idx->tmpfile, MBR_MAX_MANIFEST, &text, &len, err);
	if (r < 0)
		return r;
	struct mbr_manifest m;
	r = mbr_manifest_parse(text, len, MBR_MT_OCI_INDEX, &m, err);
	free(text);
	if (r < 0)
		return r;
	if (m.kind != MBR_KIND_INDEX) {
		mbr_manifest_free(&m);
		return mb_err_set(err, -EINVAL, "index.json is not an image index");
	}
	for (size_t i = 0; i < m.nmanifests && r == 0; i++) {
		struct mbr_desc *d = &m.manifests[i];
		/* entries of the top-level index are images (or nested indexes); platform
		 * entries for other architectures are skipped */
		if (d->has_platform) {
			struct mbr_manifest one = { .kind = MBR_KIND_INDEX,
				                    .manifests = d,
				                    .nmanifests = 1 };
			if (mbr_index_select(&one, os, arch, variant, NULL) < 0)
				continue;
		}
		r = import_oci_manifest(im, d, d->ref_name, os, arch, variant, 0, res, err);
	}
	mbr_manifest_free(&m);
	if (r == 0 && res->n == 0)
		r = mb_err_set(err, -ENOENT, "the OCI archive holds no image for this platform");
	snprintf(res->format, sizeof(res->format), "oci");
	return r;
}

int mbr_import_archive(const mbr_store *s, const char *path, const char *os, const char *arch,
                       const char *variant, struct mbr_import_result *res, mb_err *err)
{
	memset(res, 0, sizeof(*res));
	struct imp im = { .s = s };
	im.dir = mbr_store_tmp_path(s, "import");
	if (!im.dir)
		return mb_err_set(err, -ENOMEM, "out of memory");
	if (mkdir(im.dir, 0700) < 0) {
		int e = errno;
		free(im.dir);
		im.dir = NULL;
		return mb_err_set(err, -e, "mkdir: %s", strerror(e));
	}
	int r = read_entries(&im, path, err);
	if (r == 0) {
		struct ent *mf = find(&im, "manifest.json");
		struct ent *ix = find(&im, "index.json");
		if (mf && mf->kind == ENT_FILE)
			r = import_docker(&im, mf, res, err);
		else if (ix && ix->kind == ENT_FILE && find(&im, "oci-layout"))
			r = import_oci(&im, ix, os, arch, variant, res, err);
		else
			r = mb_err_set(err, -EINVAL,
			               "not an image archive: neither manifest.json (docker save) "
			               "nor oci-layout + index.json found");
	}
	if (r < 0)
		mbr_import_result_free(res);
	imp_free(&im);
	return r;
}

void mbr_import_result_free(struct mbr_import_result *res)
{
	for (size_t i = 0; i < res->n; i++)
		image_free(&res->images[i]);
	free(res->images);
	res->images = NULL;
	res->n = 0;
}
