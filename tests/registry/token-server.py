#!/usr/bin/python3
"""A small bearer-token issuer for docker-registry's `auth: token` (tests only).

Usage: token-server.py --addr 127.0.0.1:PORT --key KEY.pem --cert CERT.pem
       token-server.py --gen KEY.pem CERT.pem      (make an EC P-256 key + self-signed cert)

Tokens are ES256 JWTs whose header carries the certificate in x5c; the registry trusts
that certificate through `rootcertbundle`. Policy:
  * user testuser / password testpass gets every action it asks for;
  * a wrong password gets 401;
  * anonymous clients get "pull" everywhere except repositories under private/.
"""
import argparse
import base64
import datetime
import json
import os
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USERS = {"testuser": "testpass"}
ISSUER = "local-token-issuer"


def gen(key_path, cert_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moonbox test token issuer")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


class Handler(BaseHTTPRequestHandler):
    key = None
    x5c = None

    def log_message(self, fmt, *args):
        sys.stderr.write("token-server: " + (fmt % args) + "\n")

    def reply(self, code, body, extra=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urlparse(self.path)
        if u.path != "/token":
            return self.reply(404, {"error": "not found"})
        q = parse_qs(u.query)
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                return self.reply(400, {"error": "bad authorization header"})
            if USERS.get(user) != pw:
                return self.reply(401, {"details": "incorrect username or password"},
                                  {"WWW-Authenticate": 'Basic realm="token"'})
        access = []
        for scope in q.get("scope", []):
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                actions = [] if name.startswith("private/") else [a for a in actions if a == "pull"]
            access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user or "", "aud": q.get("service", [""])[0],
                  "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        tok = jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": [self.x5c]})
        iso = datetime.datetime.utcfromtimestamp(now).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply(200, {"token": tok, "access_token": tok, "expires_in": 300, "issued_at": iso})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", nargs=2, metavar=("KEY", "CERT"))
    ap.add_argument("--addr")
    ap.add_argument("--key")
    ap.add_argument("--cert")
    a = ap.parse_args()
    if a.gen:
        return gen(*a.gen)
    host, port = a.addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        sys.exit("token-server: refusing to bind anything but loopback")
    with open(a.key, "rb") as f:
        Handler.key = serialization.load_pem_private_key(f.read(), None)
    with open(a.cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    Handler.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
