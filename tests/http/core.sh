#!/usr/bin/env bash
# The daemon over real sockets: auth, routes from operator scripts, reload (good and
# broken), limits, bad input, concurrency, static files, graceful stop.
MB=$1
. "$(dirname "$0")/../lib.sh"

OPS=$TMP/ops
mkdir -p "$OPS"
cat > "$OPS/slow.lua" <<'LUA'
api.route("GET", "/v1/t/slow", function() timer.sleep(0.2); return { slept = true } end)
api.route("GET", "/v1/t/spin", function() while true do end end)
api.route("POST", "/v1/t/sum", function(req)
  local b = req:json()
  if type(b.a) ~= "number" or type(b.b) ~= "number" then
    api.error(400, "invalid", "a and b must be numbers", { field = type(b.a) ~= "number" and "a" or "b" })
  end
  return { sum = b.a + b.b }
end)
api.route("POST", "/v1/t/upload", function(req)
  return { size = req.body_size, path_exists = req.body_path ~= nil and fs.exists(req.body_path),
           sha = moonbox.sha256(fs.read(req.body_path, 1 << 30)) }
end, { body = "file" })
LUA

start_daemon core --scripts "$OPS" --body-limit 65536

# --- unix socket and TCP with the bearer token ---------------------------------------
expect_eq "health on the unix socket" "$(api GET /v1/health | status_of)" 200
expect_eq "socket is mode 0660" "$(stat -c %a "$D_SOCK")" 660
expect_eq "token file is mode 0600" "$(stat -c %a "$D_STATE/token")" 600
tcp() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
expect_eq "TCP without token is 401" "$(tcp "http://127.0.0.1:$D_PORT/v1/system/info")" 401
expect_eq "TCP with a wrong token is 401" \
  "$(tcp -H 'Authorization: Bearer wrongwrongwrongwrong' "http://127.0.0.1:$D_PORT/v1/system/info")" 401
expect_eq "TCP with the token is 200" \
  "$(tcp -H "Authorization: Bearer $D_TOKEN" "http://127.0.0.1:$D_PORT/v1/system/info")" 200
expect_eq "access_token query parameter works (browsers)" \
  "$(tcp "http://127.0.0.1:$D_PORT/v1/health?access_token=$D_TOKEN")" 200
info=$(curl -s -H "Authorization: Bearer $D_TOKEN" "http://127.0.0.1:$D_PORT/v1/system/info")
expect_eq "system info names the version" "$(jq -r .version <<<"$info")" "$(${MB} --version | awk '{print $2}')"
expect_eq "401 body is a JSON error" \
  "$(curl -s "http://127.0.0.1:$D_PORT/v1/health" | jq -r .error.code)" unauthorized
expect_eq "the web UI is served without a token" "$(tcp "http://127.0.0.1:$D_PORT/")" 200

# --- routes, errors, bad input -------------------------------------------------------
out=$(api POST /v1/t/sum -d '{"a":2,"b":40}')
expect_eq "operator route works" "$(body_of <<<"$out" | jq -r .sum)" 42
out=$(api POST /v1/t/sum -d '{"a":"x","b":1}')
expect_eq "wrong type is 400" "$(status_of <<<"$out")" 400
expect_eq "the field is named" "$(body_of <<<"$out" | jq -r .error.field)" a
out=$(api POST /v1/t/sum -d '{"a":')
expect_eq "malformed JSON is 400 invalid_json" \
  "$(body_of <<<"$out" | jq -r .error.code)/$(status_of <<<"$out")" invalid_json/400
expect_eq "unknown route is 404" "$(api GET /v1/nothing/here | status_of)" 404
expect_eq "wrong method is 405" "$(api DELETE /v1/health | status_of)" 405
big=$(head -c 100000 /dev/zero | tr '\0' a)
expect_eq "oversized body is 413" "$(api POST /v1/t/sum --data-binary "$big" | status_of)" 413
head -c 300000 /dev/urandom > "$TMP/blob"
out=$(api POST /v1/t/upload --data-binary @"$TMP/blob")
expect_eq "a file-body route takes more than the memory limit" "$(body_of <<<"$out" | jq -r .size)" 300000
expect_eq "the upload arrives intact" "$(body_of <<<"$out" | jq -r .sha)" "$(sha256sum "$TMP/blob" | cut -d' ' -f1)"
check "upload files are removed after the request" bash -c "[ -z \"\$(ls -A '$D_STATE/tmp/uploads' 2>/dev/null)\" ]"
out=$(api GET /v1/t/spin)
expect_eq "a runaway script gets a 500 script_timeout" \
  "$(status_of <<<"$out")/$(body_of <<<"$out" | jq -r .error.code)" 500/script_timeout
expect_eq "the daemon still answers after a runaway script" "$(api GET /v1/health | status_of)" 200

# --- 100 concurrent slow requests (each waits 200 ms) --------------------------------
start=$(date +%s.%N)
$PY - "$D_SOCK" > "$TMP/conc" <<'PY'
import socket, sys, threading
path = sys.argv[1]; codes = []
def one():
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    s.sendall(b"GET /v1/t/slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        c = s.recv(4096)
        if not c: break
        data += c
    codes.append(data.split(b" ")[1].decode())
ts = [threading.Thread(target=one) for _ in range(100)]
[t.start() for t in ts]; [t.join() for t in ts]
print(" ".join(sorted(set(codes))), len(codes))
PY
end=$(date +%s.%N)
expect_eq "100 concurrent 200 ms requests all succeed" "$(cat "$TMP/conc")" "200 100"
echo "# 100 concurrent slow requests took $(echo "$end - $start" | bc) s (printed, not asserted)"

# --- reload: a new route appears, a broken script keeps the old ones -----------------
cat > "$OPS/added.lua" <<'LUA'
api.route("GET", "/v1/t/added", function() return { added = true } end)
LUA
kill -HUP "$D_PID"
for _ in $(seq 50); do [ "$(api GET /v1/t/added | status_of)" = 200 ] && break; sleep 0.1; done
expect_eq "SIGHUP loads a new operator route" "$(api GET /v1/t/added | status_of)" 200
echo 'api.route("GET", "/v1/t/broken", function() end' > "$OPS/zz-broken.lua"
kill -HUP "$D_PID"; sleep 0.5
expect_eq "after a broken reload the old route stays" "$(api GET /v1/t/added | status_of)" 200
expect_eq "the broken script's route is absent" "$(api GET /v1/t/broken | status_of)" 404
check "the load error is logged with file and line" grep -q "zz-broken.lua:2" "$D_LOG"
out=$(api POST /v1/system/reload)
expect_eq "API reload with a broken script is 422" "$(status_of <<<"$out")" 422
check "the 422 names the broken file" grep -q "zz-broken.lua" <<<"$out"
rm "$OPS/zz-broken.lua"
expect_eq "API reload after the fix is 200" "$(api POST /v1/system/reload | status_of)" 200

# --- events ------------------------------------------------------------------------
out=$(api GET '/v1/events?follow=false&type=daemon.*')
check "daemon.start is in the event log" grep -q '"daemon.start"' <<<"$out"
timeout 2 curl -sN --unix-socket "$D_SOCK" 'http://x/v1/events?since=0' > "$TMP/sse" || true
check "SSE replays stored events with ids" grep -q '^id: 1$' "$TMP/sse"

# --- graceful stop -----------------------------------------------------------------
(timeout 20 curl -sN --unix-socket "$D_SOCK" 'http://x/v1/events' > /dev/null || true) &
sleep 0.2
rc=0; stop_daemon || rc=$?
expect_eq "SIGTERM exits 0 even with an open event stream" "$rc" 0
check "the socket is removed" test ! -e "$D_SOCK"
check "the pidfile is removed" test ! -e "$D_RUN/moonbox.pid"
check "no errors were logged by the HTTP layer" bash -c "! grep -q 'AddressSanitizer\|runtime error' '$D_LOG'"
finish
