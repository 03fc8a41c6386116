#!/usr/bin/env bash
# The daemon under valgrind, from start to SIGTERM, with traffic of every kind (routes,
# errors, a runaway script, reload, an open event stream, a WebSocket left open, an
# upload): no invalid accesses and nothing definitely or indirectly lost.
MB=$1
. "$(dirname "$0")/../lib.sh"
command -v valgrind >/dev/null || { echo "1..0 # SKIP valgrind not installed"; exit 0; }
mkdir -p "$TMP/ops"
cat > "$TMP/ops/t.lua" <<'LUA'
api.route("GET", "/v1/t/slow", function() timer.sleep(0.05); return { ok = true } end)
api.route("GET", "/v1/t/spin", function() while true do end end)
api.route("GET", "/v1/t/ws", function(req)
  local ws = req:websocket()
  while ws:recv() do end
end)
api.route("POST", "/v1/t/up", function(req) return { n = req.body_size } end, { body = "file" })
LUA
VG=$TMP/valgrind.log
DAEMON_WRAPPER="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --log-file=$VG" \
START_WAIT=600 start_daemon vg --scripts "$TMP/ops" --script-budget 1000
for i in 1 2 3; do api GET /v1/t/slow >/dev/null; done
api POST /v1/t/up --data-binary "hello" >/dev/null
api GET /v1/t/spin >/dev/null
api POST /v1/t/nope -d '{' >/dev/null
api POST /v1/system/reload >/dev/null
kill -HUP "$D_PID"; sleep 1
curl -s -H "Authorization: Bearer $D_TOKEN" "http://127.0.0.1:$D_PORT/v1/system/info" >/dev/null
(timeout 30 curl -sN --unix-socket "$D_SOCK" 'http://x/v1/events?since=0' >/dev/null || true) &
$PY - "$D_SOCK" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b"GET /v1/t/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
time.sleep(20)
PY
sleep 2
rc=0; stop_daemon || rc=$?
expect_eq "valgrind exit code (99 means errors or leaks)" "$rc" 0
check "no invalid reads or writes" bash -c "grep -q 'ERROR SUMMARY: 0 errors' '$VG'"
if [ "$FAILED" -ne 0 ]; then sed -n '1,200p' "$VG"; fi
finish
