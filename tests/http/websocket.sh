#!/usr/bin/env bash
# WebSocket (RFC 6455) on a real daemon, with a raw-socket client: handshake, echo of
# text and binary, fragmented messages, ping/pong, the close handshake, and protocol
# violations (unmasked frame, invalid UTF-8, bad opcode, oversized control frame).
MB=$1
. "$(dirname "$0")/../lib.sh"
OPS=$TMP/ops
mkdir -p "$OPS"
cat > "$OPS/ws.lua" <<'LUA'
api.route("GET", "/v1/t/echo", function(req)
  local ws = req:websocket()
  while true do
    local msg, kind = ws:recv()
    if not msg then break end
    if msg == "close-please" then ws:close(4000, "bye"); break end
    ws:send(msg, kind)
  end
end)
api.route("GET", "/v1/t/notws", function(req) req:websocket() end)
LUA
start_daemon ws --scripts "$OPS"
$PY - "$D_SOCK" <<'PY'
import os, socket, struct, sys, base64, hashlib
path = sys.argv[1]
n = 0; failed = 0
def check(desc, cond):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, desc))
    if not cond: failed += 1

def connect(target="/v1/t/echo", version="13"):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.settimeout(5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(1)
        if not c: break
        head += c
    return s, key, head.decode(errors="replace")

def frame(op, payload=b"", fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | rsv | op
    l = len(payload)
    hdr = bytes([b0])
    m = 0x80 if mask else 0
    if l < 126: hdr += bytes([m | l])
    elif l < 65536: hdr += bytes([m | 126]) + struct.pack(">H", l)
    else: hdr += bytes([m | 127]) + struct.pack(">Q", l)
    if mask:
        k = os.urandom(4)
        return hdr + k + bytes(b ^ k[i % 4] for i, b in enumerate(payload))
    return hdr + payload

def read_frame(s):
    def rx(k):
        d = b""
        while len(d) < k:
            c = s.recv(k - len(d))
            if not c: raise EOFError
            d += c
        return d
    b0, b1 = rx(2)
    l = b1 & 0x7f
    if l == 126: l = struct.unpack(">H", rx(2))[0]
    elif l == 127: l = struct.unpack(">Q", rx(8))[0]
    check_mask = b1 & 0x80
    return b0 & 0x0f, bool(b0 & 0x80), rx(l), check_mask

s, key, head = connect()
acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
check("handshake answers 101", head.startswith("HTTP/1.1 101"))
check("Sec-WebSocket-Accept is right", ("Sec-WebSocket-Accept: " + acc) in head)
s.sendall(frame(1, "héllo".encode()))
op, fin, data, masked = read_frame(s)
check("text echo", (op, data) == (1, "héllo".encode()))
check("server frames are not masked", not masked)
blob = os.urandom(70000)
s.sendall(frame(2, blob))
op, fin, data, _ = read_frame(s)
check("70 KB binary echo (64-bit length)", (op, data) == (2, blob))
s.sendall(frame(1, b"frag", fin=False) + frame(9, b"mid-ping") + frame(0, b"men", fin=False) + frame(0, b"ted"))
op, _, data, _ = read_frame(s)
check("a ping between fragments is answered with a pong", (op, data) == (10, b"mid-ping"))
op, _, data, _ = read_frame(s)
check("fragmented message reassembled", (op, data) == (1, b"fragmented"))
s.sendall(frame(8, struct.pack(">H", 1000) + b"done"))
op, _, data, _ = read_frame(s)
check("close handshake echoes 1000", op == 8 and struct.unpack(">H", data[:2])[0] == 1000)
check("server closes the connection after close", s.recv(10) == b"")

s, _, _ = connect()
s.sendall(frame(1, b"close-please"))
op, _, data, _ = read_frame(s)
check("server-initiated close with 4000", op == 8 and struct.unpack(">H", data[:2])[0] == 4000 and data[2:] == b"bye")
s.sendall(frame(8, data[:2]))
check("connection ends after the close reply", s.recv(10) == b"")

def violation(desc, payload, code):
    s, _, _ = connect()
    s.sendall(payload)
    try:
        op, _, data, _ = read_frame(s)
        got = struct.unpack(">H", data[:2])[0] if op == 8 and len(data) >= 2 else None
    except (EOFError, OSError):
        got = "eof"
    check(f"{desc} closes with {code}", got == code)
violation("an unmasked client frame", frame(1, b"x", mask=False), 1002)
violation("invalid UTF-8 in a text message", frame(1, b"\xff\xfe"), 1007)
violation("a reserved opcode", frame(3, b"x"), 1002)
violation("RSV bits without an extension", frame(1, b"x", rsv=0x40), 1002)
violation("a fragmented control frame", frame(9, b"x", fin=False), 1002)
violation("a continuation without a start", frame(0, b"x"), 1002)
violation("a new message inside a fragmented one", frame(1, b"a", fin=False) + frame(1, b"b"), 1002)
violation("a close frame with a 1-byte payload", frame(8, b"\x03"), 1002)
violation("an invalid close code", frame(8, struct.pack(">H", 1005)), 1002)

s, _, head = connect("/v1/t/echo", version="8")
check("wrong Sec-WebSocket-Version is a 400", head.startswith("HTTP/1.1 400"))
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.sendall(b"GET /v1/t/notws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
resp = s.recv(4096).decode()
check("a plain GET to a WebSocket route is a 400", resp.startswith("HTTP/1.1 400"))
print(f"# {n} checks, {failed} failed")
sys.exit(1 if failed else 0)
PY
rc=$?
expect_eq "the daemon is still healthy" "$(api GET /v1/health | status_of)" 200
rc2=0; stop_daemon || rc2=$?
expect_eq "clean stop after WebSocket traffic" "$rc2" 0
finish && exit $rc
