/*
 * OCI / Docker schema2 manifests, indexes (manifest lists) and image configs.
 * Parsing validates what later code relies on: digests, sizes, layer media types.
 */
#ifndef MBR_MANIFEST_H
#define MBR_MANIFEST_H

#include <stdbool.h>
#include <stdint.h>

#include <moonbox/plugin.h>

#include "digest.h"

#define MBR_MT_OCI_MANIFEST    "application/vnd.oci.image.manifest.v1+json"
#define MBR_MT_OCI_INDEX       "application/vnd.oci.image.index.v1+json"
#define MBR_MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define MBR_MT_DOCKER_LIST     "application/vnd.docker.distribution.manifest.list.v2+json"
#define MBR_MT_OCI_CONFIG      "application/vnd.oci.image.config.v1+json"
#define MBR_MT_DOCKER_CONFIG   "application/vnd.docker.container.image.v1+json"
#define MBR_MT_OCI_LAYER       "application/vnd.oci.image.layer.v1.tar"
#define MBR_MT_OCI_LAYER_GZIP  "application/vnd.oci.image.layer.v1.tar+gzip"
#define MBR_MT_OCI_LAYER_ZSTD  "application/vnd.oci.image.layer.v1.tar+zstd"
#define MBR_MT_DOCKER_LAYER    "application/vnd.docker.image.rootfs.diff.tar.gzip"

/* The Accept header value for manifest requests: OCI + Docker, manifest + index. Never
 * schema1 (a registry converts schema2 to schema1 when Accept is missing). */
#define MBR_MANIFEST_ACCEPT                                                                        \
	MBR_MT_OCI_MANIFEST ", " MBR_MT_OCI_INDEX ", " MBR_MT_DOCKER_MANIFEST                      \
	                    ", " MBR_MT_DOCKER_LIST

#define MBR_MAX_LAYERS   512
#define MBR_MAX_MANIFEST (4u << 20) /* bytes */
#define MBR_MAX_CONFIG   (8u << 20)

enum mbr_kind { MBR_KIND_MANIFEST = 1, MBR_KIND_INDEX = 2 };
enum mbr_compression { MBR_COMP_NONE = 0, MBR_COMP_GZIP = 1, MBR_COMP_ZSTD = 2 };

struct mbr_desc {
	char media_type[128];
	char digest[MBR_DIGEST_LEN + 1];
	int64_t size;
	bool has_platform;
	char os[32];
	char arch[32];
	char variant[32];
	char ref_name[256]; /* annotation org.opencontainers.image.ref.name, if any */
};

struct mbr_manifest {
	enum mbr_kind kind;
	char media_type[128];
	struct mbr_desc config; /* manifest */
	struct mbr_desc *layers;
	size_t nlayers;
	struct mbr_desc *manifests; /* index */
	size_t nmanifests;
};

/* Parse bytes. content_type (may be NULL) is used when the document has no mediaType
 * field. Schema1 and unknown documents are -ENOTSUP / -EINVAL with a message. The caller
 * frees *out with mbr_manifest_free. */
int mbr_manifest_parse(const char *data, size_t len, const char *content_type,
                       struct mbr_manifest *out, mb_err *err);
void mbr_manifest_free(struct mbr_manifest *m);

/* Pick the entry of an index for os/arch[/variant] (NULL = linux/amd64). Returns its
 * position, or -ENOENT with the available platforms in the message. */
int mbr_index_select(const struct mbr_manifest *idx, const char *os, const char *arch,
                     const char *variant, mb_err *err);
/* Split "linux/arm64/v8" into parts (any may be omitted: "arm64"). Normalises x86_64 ->
 * amd64, aarch64 -> arm64. */
int mbr_platform_parse(const char *s, char os[32], char arch[32], char variant[32], mb_err *err);

/* Compression implied by a layer media type, or -ENOTSUP for unknown/foreign layers. */
int mbr_layer_compression(const char *media_type);
/* True for media types of a manifest (not an index). */
bool mbr_is_manifest_type(const char *mt);
bool mbr_is_index_type(const char *mt);

/*
 * The image config reduced to what the lifecycle scripts use. Returns a new JSON object:
 *   { "os","architecture","variant","created","author",
 *     "entrypoint":[..]|null, "cmd":[..]|null, "env":[..], "working_dir", "user",
 *     "exposed_ports":["80/tcp",..], "volumes":["/data",..], "stop_signal",
 *     "healthcheck":{test,interval,timeout,start_period,retries}|null, "labels":{..},
 *     "diff_ids":[..] }
 * Caller owns the reference.
 */
json_t *mbr_config_summary(const char *data, size_t len, mb_err *err);

/* A new OCI manifest JSON text for config + layers (used by archive import). Caller frees. */
char *mbr_manifest_build(const struct mbr_desc *config, const struct mbr_desc *layers,
                         size_t nlayers);

#endif
