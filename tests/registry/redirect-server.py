#!/usr/bin/python3
"""A tiny front for a registry, for tests only: answers the first --fail-first requests
with 503 (Retry-After: 0), then redirects every request (307) to --target, the way
registries hand blob downloads to object storage.

Usage: redirect-server.py --addr 127.0.0.1:PORT --target 127.0.0.1:PORT [--fail-first N]
"""
import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    target = None
    fail_left = 0

    def log_message(self, fmt, *args):
        sys.stderr.write("redirect-server: " + (fmt % args) + "\n")

    def answer(self):
        if Handler.fail_left > 0:
            Handler.fail_left -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)
        self.send_header("Location", f"http://{Handler.target}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = answer
    do_HEAD = answer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        sys.exit("redirect-server: refusing to bind anything but loopback")
    Handler.target, Handler.fail_left = a.target, a.fail_first
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
