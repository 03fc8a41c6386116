#!/usr/bin/python3
"""A tiny front for a registry, for tests only: answers the first --fail-first requests
with 503 (Retry-After: 0), then redirects every request (307) to --target, the way
registries hand blob downloads to object storage. Logs every request, and the Range header
of those that carry one ("range=bytes=N- for PATH"), so tests can see resumed downloads.

With --slow BYTES_PER_SECOND, blob downloads are not redirected but relayed from the
target at that rate (Range passed through), so that tests can act while a pull is busy.

Usage: redirect-server.py --addr 127.0.0.1:PORT --target 127.0.0.1:PORT [--fail-first N]
                          [--slow BPS]
"""
import argparse
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELAYED = ("Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest",
           "Accept-Ranges", "Www-Authenticate")


class Handler(BaseHTTPRequestHandler):
    target = None
    fail_left = 0
    slow = 0

    def log_message(self, fmt, *args):
        sys.stderr.write("redirect-server: " + (fmt % args) + "\n")

    def relay_slowly(self):
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "authorization")}
        req = urllib.request.Request(f"http://{Handler.target}{self.path}", headers=headers)
        try:
            resp = urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            resp = e
        self.send_response(resp.status)
        for k in RELAYED:
            if resp.headers.get(k):
                self.send_header(k, resp.headers[k])
        self.end_headers()
        chunk = 16384
        try:
            while True:
                data = resp.read(chunk)
                if not data:
                    break
                self.wfile.write(data)
                self.wfile.flush()
                time.sleep(len(data) / Handler.slow)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def answer(self):
        rng = self.headers.get("Range")
        if rng:
            sys.stderr.write(f"redirect-server: range={rng} for {self.path}\n")
        if Handler.fail_left > 0:
            Handler.fail_left -= 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if Handler.slow and self.command == "GET" and "/blobs/" in self.path:
            return self.relay_slowly()
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
    ap.add_argument("--slow", type=int, default=0)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        sys.exit("redirect-server: refusing to bind anything but loopback")
    Handler.target, Handler.fail_left, Handler.slow = a.target, a.fail_first, a.slow
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
