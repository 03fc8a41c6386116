#!/usr/bin/python3
"""Build the test images by hand and push them to a registry (no Docker engine needed).

Usage: make-images.py REGISTRY(127.0.0.1:PORT) [--user U --password P] [--set SET]
                      [--storage DIR] [--prefix test]
SET: all (default) | basic (busybox only)

Writes a summary JSON (image name -> manifest digest, config digest, expectations) to
stdout. --storage is the registry's filesystem root: needed to corrupt/truncate blobs
after upload (the registry itself verifies digests on upload).
"""
import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUSYBOX = "/bin/busybox"
MTIME = 1700000000


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, addr, user=None, password=None):
        self.base = "http://" + addr
        self.user, self.password = user, password
        self.tokens = {}

    def _auth_header(self, challenge, scope):
        if challenge.lower().startswith("basic"):
            if not self.user:
                return None
            raw = f"{self.user}:{self.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        params = {}
        for part in challenge[7:].split(","):
            k, _, v = part.strip().partition("=")
            params[k] = v.strip('"')
        q = {"service": params.get("service", ""), "scope": scope}
        req = urllib.request.Request(params["realm"] + "?" + urllib.parse.urlencode(q))
        if self.user:
            raw = f"{self.user}:{self.password}".encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(raw).decode())
        with urllib.request.urlopen(req) as r:
            return "Bearer " + json.load(r)["token"]

    def request(self, method, path, data=None, headers=None, scope=None):
        url = path if path.startswith("http") else self.base + path
        headers = dict(headers or {})
        if scope in self.tokens:
            headers["Authorization"] = self.tokens[scope]
        for attempt in range(2):
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0:
                    h = self._auth_header(e.headers.get("WWW-Authenticate", ""), scope)
                    if h:
                        self.tokens[scope] = headers["Authorization"] = h
                        continue
                raise RuntimeError(f"{method} {url}: {e.code} {e.read()[:300]!r}")

    def push_blob(self, repo, data):
        d = sha(data)
        scope = f"repository:{repo}:pull,push"
        _, h, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", scope=scope)
        loc = h["Location"]
        if not loc.startswith("http"):
            loc = self.base + loc
        sep = "&" if "?" in loc else "?"
        self.request("PUT", f"{loc}{sep}digest={d}", data,
                     {"Content-Type": "application/octet-stream"}, scope=scope)
        return {"digest": d, "size": len(data)}

    def push_manifest(self, repo, ref, doc, media_type):
        data = json.dumps(doc, separators=(",", ":")).encode() if not isinstance(doc, bytes) else doc
        self.request("PUT", f"/v2/{repo}/manifests/{ref}", data,
                     {"Content-Type": media_type}, scope=f"repository:{repo}:pull,push")
        return {"digest": sha(data), "size": len(data), "mediaType": media_type}


# ---- tarballs -------------------------------------------------------------------------

class Layer:
    def __init__(self, fmt=tarfile.PAX_FORMAT):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _info(self, name, typ, mode=0o644, uid=0, gid=0):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = typ, mode, uid, gid, MTIME
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))
        return self

    def file(self, name, data=b"", mode=0o644, uid=0, gid=0):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE)
        ti.linkname = target
        self.tar.addfile(ti)
        return self

    def device(self, name, typ, major, minor):
        ti = self._info(name, typ, 0o666)
        ti.devmajor, ti.devminor = major, minor
        self.tar.addfile(ti)
        return self

    def tar_bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def compress(raw, how):
    if how == "gzip":
        return gzip.compress(raw, mtime=0), MT_LAYER_GZIP
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, stdout=subprocess.PIPE,
                              check=True).stdout, MT_LAYER_ZSTD
    return raw, MT_LAYER_TAR


def busybox_layer():
    l = Layer().dir("bin").dir("etc").dir("tmp", 0o1777).dir("root", 0o700)
    with open(BUSYBOX, "rb") as f:
        l.file("bin/busybox", f.read(), 0o755)
    for applet in ("sh", "ls", "cat", "echo", "true", "sleep", "env", "id", "stat", "readlink"):
        l.symlink(f"bin/{applet}", "busybox")
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    l.file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    return l.tar_bytes()


def config_for(raws, arch="amd64", cmd=None, extra=None):
    cfg = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                      "Cmd": cmd or ["/bin/sh"], "WorkingDir": "/", "Labels": {"fixture": "moonbox"}},
           "rootfs": {"type": "layers", "diff_ids": [sha(r) for r in raws]},
           "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "make-images.py"}
                       for _ in raws]}
    if extra:
        cfg["config"].update(extra)
    return json.dumps(cfg, separators=(",", ":")).encode()


def push_image(reg, repo, tag, layers, docker=False, arch="amd64", cmd=None, extra=None,
               push_tag=True):
    """layers: list of (raw_tar, compression). Returns (manifest desc, config digest, layer descs)."""
    raws = [r for r, _ in layers]
    cfg = config_for(raws, arch, cmd, extra)
    cdesc = reg.push_blob(repo, cfg)
    cdesc["mediaType"] = MT_DOCKER_CONFIG if docker else MT_OCI_CONFIG
    ldescs = []
    for raw, how in layers:
        blob, mt = compress(raw, how)
        d = reg.push_blob(repo, blob)
        d["mediaType"] = MT_DOCKER_LAYER if docker and how == "gzip" else mt
        ldescs.append(d)
    doc = {"schemaVersion": 2, "config": cdesc, "layers": ldescs}
    if docker:
        doc = {"schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST, **doc}
    mt = MT_DOCKER_MANIFEST if docker else MT_OCI_MANIFEST
    data = json.dumps(doc, separators=(",", ":")).encode()
    if push_tag:
        mdesc = reg.push_manifest(repo, tag, data, mt)
    else:
        mdesc = reg.push_manifest(repo, sha(data), data, mt)
    return mdesc, cdesc["digest"], ldescs


def blob_data_path(storage, digest):
    h = digest.split(":")[1]
    return os.path.join(storage, "docker/registry/v2/blobs/sha256", h[:2], h, "data")


# ---- the image set ----------------------------------------------------------------------

def multi_layers():
    l1 = (Layer().dir("etc").file("etc/os-release", "ID=moonbox-test\n")
          .dir("data").file("data/keep", "keep").file("data/remove-me", "gone")
          .dir("data/olddir").file("data/olddir/x", "x")
          .dir("opaque").file("opaque/lower1", "l1").dir("opaque/sub").file("opaque/sub/lower2", "l2")
          .file("usr-bin-tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0)
          .hardlink("tool-hardlink", "usr-bin-tool")
          .symlink("rel-link", "etc/os-release").symlink("abs-link", "/etc/os-release")
          .dir("home").dir("home/user", 0o750, 1000, 1000).file("home/user/.profile", "x", 0o600, 1000, 1000)
          .tar_bytes())
    longdir = "/".join(["a-rather-long-directory-name-for-pax-%02d" % i for i in range(6)])
    l2 = (Layer().dir("data").file("data/.wh.remove-me").file("data/.wh.olddir")
          .dir("opaque").file("opaque/.wh..wh..opq").file("opaque/upper", "u")
          .file(longdir + "/deep-file", "deep").tar_bytes())
    l3 = Layer().dir("zstd").file("zstd/hello", "from a zstd layer\n").tar_bytes()
    l4 = Layer(tarfile.GNU_FORMAT).dir("plain").file("plain/hello", "from an uncompressed layer\n").tar_bytes()
    return [(l1, "gzip"), (l2, "gzip"), (l3, "zstd"), (l4, "none")], longdir


def evil_layers(storage_hint):
    outside = "/tmp/moonbox-fixture-escape"
    return {
        "dotdot": Layer().file("../../../../tmp/moonbox-fixture-escape/dotdot", "pwned").tar_bytes(),
        "absolute": Layer().file(outside + "/absolute", "pwned").tar_bytes(),
        "symlink": Layer().symlink("evil", outside).file("evil/symlink", "pwned").tar_bytes(),
        "symlink-rel": Layer().symlink("evil", "../../../../../../../../tmp/moonbox-fixture-escape")
                        .file("evil/symlink-rel", "pwned").tar_bytes(),
        "hardlink": Layer().hardlink("evil-hard", "../../../../etc/shadow").tar_bytes(),
        "device": Layer().dir("dev").device("dev/evil-mem", tarfile.CHRTYPE, 1, 1)
                  .device("dev/evil-sda", tarfile.BLKTYPE, 8, 0).tar_bytes(),
        "whiteout-dotdot": Layer().dir("x").file("x/.wh..").tar_bytes(),
        "longname": Layer().file("n" * 300, "x").tar_bytes(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("registry")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--set", default="all")
    ap.add_argument("--storage")
    ap.add_argument("--prefix", default="test")
    a = ap.parse_args()
    reg = Registry(a.registry, a.user, a.password)
    p = a.prefix
    out = {}

    bb = busybox_layer()
    m, c, _ = push_image(reg, f"{p}/busybox", "latest", [(bb, "gzip")], docker=True,
                         cmd=["/bin/sh"], extra={"StopSignal": "SIGTERM"})
    out["busybox"] = {"ref": f"{a.registry}/{p}/busybox:latest", "manifest": m["digest"], "config": c}
    if a.set == "basic":
        json.dump(out, sys.stdout, indent=1)
        return

    # OCI variant of busybox
    m, c, _ = push_image(reg, f"{p}/busybox-oci", "latest", [(bb, "gzip")])
    out["busybox-oci"] = {"ref": f"{a.registry}/{p}/busybox-oci:latest", "manifest": m["digest"], "config": c}

    layers, longdir = multi_layers()
    m, c, _ = push_image(reg, f"{p}/multi", "latest", [(bb, "gzip")] + layers,
                         extra={"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                                "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}},
                                "User": "1000:1000", "WorkingDir": "/home/user",
                                "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000}})
    out["multi"] = {"ref": f"{a.registry}/{p}/multi:latest", "manifest": m["digest"], "config": c,
                    "longdir": longdir}

    # multi-platform: OCI index and Docker manifest list
    mam, cam, _ = push_image(reg, f"{p}/index", "amd64", [(bb, "gzip")], cmd=["/bin/echo", "amd64"])
    marm, carm, _ = push_image(reg, f"{p}/index", "arm64", [(bb, "gzip")], arch="arm64",
                               cmd=["/bin/echo", "arm64"])
    idx = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        {**marm, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {**mam, "platform": {"architecture": "amd64", "os": "linux"}},
        {**mam, "platform": {"architecture": "unknown", "os": "unknown"}}]}
    ix = reg.push_manifest(f"{p}/index", "latest", idx, MT_OCI_INDEX)
    out["index"] = {"ref": f"{a.registry}/{p}/index:latest", "manifest": ix["digest"],
                    "amd64_manifest": mam["digest"], "config": cam, "arm64_config": carm}
    dam, dcam, _ = push_image(reg, f"{p}/dockerlist", "amd64", [(bb, "gzip")], docker=True)
    darm, dcarm, _ = push_image(reg, f"{p}/dockerlist", "arm64", [(bb, "gzip")], docker=True, arch="arm64")
    lst = {"schemaVersion": 2, "mediaType": MT_DOCKER_LIST, "manifests": [
        {**darm, "platform": {"architecture": "arm64", "os": "linux"}},
        {**dam, "platform": {"architecture": "amd64", "os": "linux"}}]}
    dl = reg.push_manifest(f"{p}/dockerlist", "latest", lst, MT_DOCKER_LIST)
    out["dockerlist"] = {"ref": f"{a.registry}/{p}/dockerlist:latest", "manifest": dl["digest"], "config": dcam}

    # zstd-only and uncompressed-only images
    m, c, _ = push_image(reg, f"{p}/zstd", "latest", [(bb, "zstd")])
    out["zstd"] = {"ref": f"{a.registry}/{p}/zstd:latest", "manifest": m["digest"], "config": c}
    m, c, _ = push_image(reg, f"{p}/plain", "latest", [(bb, "none")])
    out["plain"] = {"ref": f"{a.registry}/{p}/plain:latest", "manifest": m["digest"], "config": c}

    # corrupt and truncated blobs: upload good bytes, then damage the registry's copy
    if a.storage:
        for kind in ("corrupt", "truncated"):
            uniq = Layer().file(f"{kind}-marker", kind * 1000).tar_bytes()
            m, c, ls = push_image(reg, f"{p}/{kind}", "latest", [(bb, "gzip"), (uniq, "gzip")])
            path = blob_data_path(a.storage, ls[1]["digest"])
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                if kind == "corrupt":
                    f.write(data[:-10] + bytes(10))      # same size, wrong bytes
                else:
                    f.write(data[: len(data) // 2])      # cut short
            out[kind] = {"ref": f"{a.registry}/{p}/{kind}:latest", "manifest": m["digest"],
                         "bad_blob": ls[1]["digest"]}

    # malicious layers, one image each
    for name, raw in evil_layers(a.storage).items():
        m, c, _ = push_image(reg, f"{p}/evil-{name}", "latest", [(bb, "gzip"), (raw, "gzip")])
        out[f"evil-{name}"] = {"ref": f"{a.registry}/{p}/evil-{name}:latest", "manifest": m["digest"]}

    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
