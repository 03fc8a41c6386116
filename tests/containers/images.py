#!/usr/bin/python3
"""Push the images the container tests use (no Docker engine needed).

Usage: images.py REGISTRY(127.0.0.1:PORT) [--prefix test] [--user U --password P]

  PREFIX/httpd     busybox with every applet, /www/index.html, and as its command
                   httpd -f -v -p 80 -h /www (a web server that logs each request)
  PREFIX/toolbox   the same busybox, command sh, a declared volume /data and a
                   health check (nc to localhost:80)

Prints a JSON summary (name -> reference) on stdout.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("mkimg", os.path.join(HERE, "../registry/make-images.py"))
mkimg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mkimg)


def full_busybox_layer(extra_files=()):
    applets = subprocess.run([mkimg.BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    l = mkimg.Layer()
    for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755),
                    ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("var", 0o755),
                    ("www", 0o755), ("data", 0o755)):
        l.dir(d, mode)
    with open(mkimg.BUSYBOX, "rb") as f:
        l.file("bin/busybox", f.read(), 0o755)
    for a in applets:
        if a != "busybox":
            l.symlink(f"bin/{a}", "busybox")
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n"
                         "nobody:x:65534:65534::/:/bin/false\n")
    l.file("etc/group", "root:x:0:\nwww:x:33:\nnogroup:x:65534:\n")
    for name, data in extra_files:
        l.file(name, data)
    return l.tar_bytes()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("registry")
    ap.add_argument("--prefix", default="test")
    ap.add_argument("--user", help="for a registry that wants a login")
    ap.add_argument("--password")
    a = ap.parse_args()
    reg = mkimg.Registry(a.registry, a.user, a.password)
    out = {}
    page = "<html><body><h1>hello from moonbox</h1></body></html>\n"
    layer = full_busybox_layer([("www/index.html", page)])
    mkimg.push_image(reg, f"{a.prefix}/httpd", "latest", [(layer, "gzip")], docker=True,
                     cmd=["httpd", "-f", "-v", "-p", "80", "-h", "/www"],
                     extra={"ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM"})
    out["httpd"] = f"{a.registry}/{a.prefix}/httpd:latest"
    mkimg.push_image(reg, f"{a.prefix}/toolbox", "latest", [(layer, "gzip")],
                     cmd=["sh"], extra={"Volumes": {"/data": {}},
                     "Healthcheck": {"Test": ["CMD-SHELL", "echo | nc 127.0.0.1 80"],
                                     "Interval": 2_000_000_000, "Timeout": 2_000_000_000, "Retries": 2}})
    out["toolbox"] = f"{a.registry}/{a.prefix}/toolbox:latest"
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
