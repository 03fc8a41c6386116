#!/usr/bin/env bash
# Containers end to end, with real microVMs under TCG, a real registry (Debian's
# docker-registry on 127.0.0.1), real bridges, taps and nftables in test-specific names:
#   run a busybox web server -> curl through the published port -> the request is in the
#   logs -> exec -> stats -> top -> copy in/out -> stop -> start -> remove;
#   restart policies with backoff, a health check failing into a restart, a process that
#   exits at once, a guest that dies, live restore after kill -9 of the daemon, volumes
#   and binds, a private image (credentials in the spec), bad input, and 20 containers
#   created and removed with nothing left behind.
MB=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
. "$HERE/../registry/lib.sh"

# test-specific network names, so a real daemon on this machine is never touched (one run at a time)
one_run_at_a_time containers
export MOONBOX_NET_DEFAULT_BRIDGE=mbc0 MOONBOX_NET_DEFAULT_SUBNET=10.244.0.0/24
export MOONBOX_NET_TABLE=moonbox_ct MOONBOX_NET_TAP_PREFIX=mbct MOONBOX_NET_BRIDGE_PREFIX=mbcn
export MOONBOX_NET_POOL=10.243.0.0/16

on_cleanup() {
  fixture_cleanup
  remove_daemon_networks
}

fixture_init
start_registry plain plain >/dev/null
REG=$REG_plain
$PY "$HERE/images.py" "$REG" >/dev/null
HTTPD=$REG/test/httpd TOOLBOX=$REG/test/toolbox
PORT1=$(free_port) PORT2=$(free_port)

start_daemon ct --log-level info
post() { api POST "$@"; }
state() { api GET "/v1/containers/$1" | body_of | jq -r .state; }
# wait_state NAME STATE...: until the container is in one of the states (bounded)
wait_state() {
  local name=$1; shift
  for _ in $(seq 1 300); do
    local s; s=$(state "$name")
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.2
  done
  echo "# $name stayed $(state "$name"), wanted $*" >&2
  return 1
}
qemu_of() { # the QEMU processes this daemon started
  local n=0
  for d in "$D_RUN"/vms/*/; do
    [ -f "$d/qemu.pid" ] && kill -0 "$(cat "$d/qemu.pid")" 2>/dev/null && n=$((n + 1))
  done
  echo $n
}

# --- the full flow ------------------------------------------------------------------
out=$(post "/v1/containers?start=1" -d "{\"image\":\"$HTTPD\",\"name\":\"web\",\"ports\":[\"$PORT1:80\"],\"cpus\":0.5,\"memory\":\"128m\",\"env\":[\"GREETING=hi\"]}")
expect_eq "create + start answers 201" "$(status_of <<<"$out")" 201
check "the image was pulled on demand, with progress events" \
  bash -c "curl -s --unix-socket '$D_SOCK' 'http://x/v1/events?follow=false&type=image.pull.*' | jq -e 'length > 0' >/dev/null"
expect_eq "web is running" "$(state web)" running
# page PATH: GET from the published port; "running" means the process was started, so
# give the server a moment to listen (bounded)
page() {
  local out=""
  for _ in $(seq 1 50); do out=$(curl -s -m 5 "http://127.0.0.1:$PORT1$1" || true); [ -n "$out" ] && break; sleep 0.2; done
  printf '%s' "$out"
}
page=$(page /)
check "the published port serves the page from 127.0.0.1" grep -q "hello from moonbox" <<<"$page"
sleep 0.5
check "the request shows in the logs" bash -c "curl -s --unix-socket '$D_SOCK' 'http://x/v1/containers/web/logs?format=text' | grep -q 'response:200'"
out=$(post /v1/containers/web/exec -d '{"cmd":["sh","-c","echo out; echo err >&2; exit 3"]}')
expect_eq "exec returns the exit code" "$(body_of <<<"$out" | jq -r .exit_code)" 3
expect_eq "exec keeps stdout and stderr apart" "$(body_of <<<"$out" | jq -c '[.stdout, .stderr]')" '["out\n","err\n"]'
expect_eq "exec sees the container's environment" "$(post /v1/containers/web/exec -d '{"cmd":["sh","-c","echo $GREETING"]}' | body_of | jq -r .stdout)" "hi"
expect_eq "exec env goes on top of it" "$(post /v1/containers/web/exec -d '{"cmd":["sh","-c","echo $GREETING"],"env":["GREETING=yo"]}' | body_of | jq -r .stdout)" "yo"
out=$(post /v1/containers/web/exec -d '{"cmd":["no-such-command"]}')
expect_eq "exec of a missing command is a 400" "$(status_of <<<"$out")" 400
check "... naming the command" grep -q "no-such-command" <<<"$out"
stats=$(api GET /v1/containers/web/stats | body_of)
check "stats report memory and network counters" jq -e '.memory_used > 0 and .memory_limit == 134217728 and .net_rx > 0 and .pids >= 1' <<<"$stats"
check "top lists httpd" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/containers/web/top | jq -e '[.processes[][4]] | any(test(\"httpd\"))' >/dev/null"
mkdir -p "$TMP/in" && echo "copied in" > "$TMP/in/new.txt" && tar -C "$TMP/in" -cf "$TMP/in.tar" new.txt
expect_eq "copy a file in (tar)" "$(api PUT '/v1/containers/web/archive?path=/www' --data-binary @"$TMP/in.tar" | body_of | jq -r .written)" 1
expect_eq "the copied file is served" "$(curl -s -m 5 "http://127.0.0.1:$PORT1/new.txt")" "copied in"
api GET '/v1/containers/web/archive?path=/www' | body_of > "$TMP/out.tar"
check "copy a directory out (tar)" bash -c "tar -tf '$TMP/out.tar' | grep -q 'www/index.html'"
post /v1/containers/web/exec -d '{"cmd":["sh","-c","head -c 3000000 /dev/urandom > /tmp/big; md5sum /tmp/big"]}' | body_of | jq -r .stdout | cut -d' ' -f1 > "$TMP/big.md5"
curl -s --unix-socket "$D_SOCK" 'http://x/v1/containers/web/archive?path=/tmp/big' > "$TMP/big.tar"
expect_eq "copy a 3 MB file out (read in chunks), intact" "$(tar -xOf "$TMP/big.tar" big | md5sum | cut -d' ' -f1)" "$(cat "$TMP/big.md5")"
# copy in: a 9 MB file in a new directory goes to the guest in pieces, never whole in memory
mkdir -p "$TMP/in3/deep/er" && head -c 9000000 /dev/urandom > "$TMP/in3/deep/er/big.bin"
tar -C "$TMP/in3" -cf "$TMP/in3.tar" deep
expect_eq "copy a 9 MB file in (tar, in pieces)" "$(api PUT '/v1/containers/web/archive?path=/tmp' --data-binary @"$TMP/in3.tar" | body_of | jq -r .written)" 1
expect_eq "the 9 MB file arrived intact" "$(post /v1/containers/web/exec -d '{"cmd":["md5sum","/tmp/deep/er/big.bin"]}' | body_of | jq -r .stdout | cut -d' ' -f1)" "$(md5sum < "$TMP/in3/deep/er/big.bin" | cut -d' ' -f1)"
head -c 5000000 "$TMP/in3.tar" > "$TMP/cut.tar"
out=$(api PUT '/v1/containers/web/archive?path=/tmp' --data-binary @"$TMP/cut.tar")
expect_eq "a truncated archive is refused (400)" "$(status_of <<<"$out")" 400
check "the error says it is truncated" grep -q truncated <<<"$(body_of <<<"$out")"
out=$(post "/v1/containers/web/stop?timeout=1")
expect_eq "stop" "$(body_of <<<"$out" | jq -r .state)" stopped
check "the port is closed while stopped" bash -c "! curl -s -m 2 http://127.0.0.1:$PORT1/ >/dev/null"
expect_eq "no QEMU left while stopped" "$(qemu_of)" 0
echo "while stopped" > "$TMP/in/stopped.txt" && tar -C "$TMP/in" -cf "$TMP/in2.tar" stopped.txt
expect_eq "copy in while stopped (a VM just for the files)" "$(api PUT '/v1/containers/web/archive?path=/www' --data-binary @"$TMP/in2.tar" | body_of | jq -r .written)" 1
api GET '/v1/containers/web/archive?path=/www/new.txt' | body_of > "$TMP/out2.tar"
expect_eq "copy out while stopped" "$(tar -xOf "$TMP/out2.tar" new.txt)" "copied in"
# (a GET's answer ends before its VM is stopped and removed: give that a bounded moment)
files_dirs() { ls -d "$D_RUN"/vms/*-files-* "$D_STATE"/vm/*-files-* 2>/dev/null | wc -l; }
for _ in $(seq 1 100); do [ "$(qemu_of)" = 0 ] && [ "$(files_dirs)" = 0 ] && break; sleep 0.2; done
expect_eq "the VM for the files is gone afterwards" "$(qemu_of)" 0
expect_eq "... and its directories too" "$(files_dirs)" 0
expect_eq "the container is still stopped" "$(state web)" stopped
out=$(post /v1/containers/web/start)
expect_eq "start again" "$(body_of <<<"$out" | jq -r .state)" running
expect_eq "the copied file survived the restart (writable layer)" "$(page /new.txt)" "copied in"
expect_eq "the file copied in while stopped is there" "$(page /stopped.txt)" "while stopped"
expect_eq "pause" "$(post /v1/containers/web/pause | body_of | jq -r .state)" paused
check "a paused container does not answer" bash -c "! curl -s -m 2 http://127.0.0.1:$PORT1/ >/dev/null"
expect_eq "resume" "$(post /v1/containers/web/resume | body_of | jq -r .state)" running
check "it answers again" grep -q hello <<<"$(page /)"
expect_eq "remove while running is refused" "$(api DELETE /v1/containers/web | status_of)" 409

# --- live restore ------------------------------------------------------------------
# a ticker prints a counter; whatever it printed while the daemon was down must be in its
# logs afterwards (the guest agent keeps a bounded backlog until the daemon reads again)
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"ticker\",\"cmd\":[\"sh\",\"-c\",\"i=0; while :; do i=\$((i+1)); echo line \$i; sleep 0.2; done\"],\"memory\":\"64m\",\"healthcheck\":{\"test\":[\"NONE\"]}}" >/dev/null
sleep 1
kill -9 "$D_PID"; wait "$D_PID" 2>/dev/null || true
PIDS=("${PIDS[@]/$D_PID}")
check "the VMs outlive the daemon" test "$(qemu_of)" = 2
sleep 3 # ~15 lines are printed while nobody is listening
start_daemon ct --log-level info
expect_eq "after kill -9 and a restart the container is still running" "$(state web)" running
check "its port still works" grep -q hello <<<"$(page /)"
sleep 1
api GET '/v1/containers/ticker/logs?format=text' | body_of > "$TMP/ticker.log"
check "the ticker's logs have no gap across the restart ($(wc -l < "$TMP/ticker.log") lines)" \
  awk 'BEGIN { n = 0 } $1 == "line" { if ($2 != n + 1) exit 1; n = $2 } END { exit !(n >= 20) }' "$TMP/ticker.log"
api DELETE '/v1/containers/ticker?force=1' >/dev/null
expect_eq "exec works after the restart" "$(post /v1/containers/web/exec -d '{"cmd":["echo","hi"]}' | body_of | jq -r .stdout)" "hi"
expect_eq "remove with force" "$(api DELETE '/v1/containers/web?force=1' | status_of)" 204
expect_eq "it is gone" "$(api GET /v1/containers/web | status_of)" 404

# --- restart policy: a crash loop with backoff that gives up ------------------------
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"crash\",\"cmd\":[\"sh\",\"-c\",\"echo run; exit 1\"],\"restart\":\"on-failure:2\",\"memory\":\"64m\"}" >/dev/null
for _ in $(seq 1 200); do
  api GET '/v1/events?follow=false&type=container.gave_up' | body_of | jq -e 'length > 0' >/dev/null && break
  sleep 0.3
done
c=$(api GET /v1/containers/crash | body_of)
expect_eq "on-failure:2 restarted twice, then gave up" "$(jq -r '.state + " " + (.state_detail.restart_count|tostring)' <<<"$c")" "stopped 2"
expect_eq "three runs in the logs" "$(api GET '/v1/containers/crash/logs?format=text' | body_of | grep -c '^run$')" 3
check "the backoff grew (0.5 s, then 1 s)" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/containers/crash/transitions | jq -e '[.[].reason] | (any(test(\"in 0.5 s\")) and any(test(\"in 1.0 s\")))' >/dev/null"
check "the exit code and the log tail are in inspect" jq -e '.state_detail.exit_code == 1 and (.state_detail.log_tail | index("run") != null)' <<<"$c"

# --- a health check failing into a restart --------------------------------------------
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"sick\",\"cmd\":[\"sleep\",\"1000\"],\"restart\":\"always\",\"stop_timeout\":1,\"memory\":\"64m\",\"healthcheck\":{\"test\":[\"CMD\",\"false\"],\"interval\":1,\"retries\":2}}" >/dev/null
for _ in $(seq 1 200); do
  [ "$(api GET /v1/containers/sick | body_of | jq -r .state_detail.restart_count)" -ge 1 ] 2>/dev/null && break
  sleep 0.3
done
check "unhealthy was announced" bash -c "curl -s --unix-socket '$D_SOCK' 'http://x/v1/events?follow=false&type=container.health' | jq -e 'any(.[]; .data.status == \"unhealthy\")' >/dev/null"
check "the unhealthy container was restarted" test "$(api GET /v1/containers/sick | body_of | jq -r .state_detail.restart_count)" -ge 1
api DELETE '/v1/containers/sick?force=1' >/dev/null

# --- a process that exits at once; a guest that dies ----------------------------------
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"quick\",\"cmd\":[\"sh\",\"-c\",\"echo bye; exit 7\"],\"memory\":\"64m\"}" >/dev/null
wait_state quick stopped
c=$(api GET /v1/containers/quick | body_of)
check "an immediate exit: stopped with its code and log tail" jq -e '.state_detail.exit_code == 7 and (.state_detail.log_tail | index("bye") != null)' <<<"$c"
post /v1/containers -d "{\"image\":\"$TOOLBOX\",\"name\":\"ephemeral\",\"cmd\":[\"sh\",\"-c\",\"exit 5\"],\"auto_remove\":true,\"memory\":\"64m\"}" >/dev/null
curl -s --unix-socket "$D_SOCK" -X POST 'http://x/v1/containers/ephemeral/wait?condition=removed&timeout=300' >"$TMP/wait.out" &
wait_pid=$!
post /v1/containers/ephemeral/start >/dev/null
wait "$wait_pid" || true
expect_eq "wait?condition=removed answers with the exit code of an auto-removed container" "$(jq -r .exit_code "$TMP/wait.out")" 5
expect_eq "... which is gone" "$(api GET /v1/containers/ephemeral | status_of)" 404
expect_eq "... and a late wait still gets its code" "$(post '/v1/containers/ephemeral/wait?condition=removed' | body_of | jq -r .exit_code)" 5
# a guest killed with requests in flight (execs waiting on the agent), three times: each
# request gets an answer, the daemon survives (nng contexts and the socket's close race)
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"victim\",\"cmd\":[\"sleep\",\"1000\"],\"memory\":\"64m\"}" >/dev/null
answered=0
for round in 1 2 3; do
  [ "$round" = 1 ] || post /v1/containers/victim/start >/dev/null
  wait_state victim running
  xp=()
  for i in $(seq 1 8); do
    curl -s -m 90 -o /dev/null -w '%{http_code}' -X POST --unix-socket "$D_SOCK" -d '{"cmd":["sleep","100"]}' \
      http://x/v1/containers/victim/exec > "$TMP/inflight.$round.$i" &
    xp+=($!)
  done
  sleep 1
  vmid=$(api GET /v1/containers/victim | body_of | jq -r .vm.id)
  kill -9 "$(cat "$D_RUN/vms/$vmid/qemu.pid")"
  wait_state victim error
  for p in "${xp[@]}"; do wait "$p" || true; done
  for i in $(seq 1 8); do [[ "$(cat "$TMP/inflight.$round.$i")" =~ ^[1-5][0-9][0-9]$ ]] && answered=$((answered + 1)); done
done
expect_eq "every exec in flight when its guest died got an answer" "$answered" 24
check "a dead guest is an error with the reason" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/containers/victim | jq -e '.state_detail.reason | test(\"VM stopped unexpectedly\")' >/dev/null"

# --- volumes and binds --------------------------------------------------------------
mkdir -p "$TMP/bind" && echo "from the host" > "$TMP/bind/host.txt"
out=$(post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"writer\",\"cmd\":[\"sh\",\"-c\",\"echo kept > /data/file; cat /src/host.txt > /src/back.txt; sleep 1000\"],\"volumes\":[\"ctdata:/data\",\"$TMP/bind:/src\"],\"memory\":\"64m\"}")
expect_eq "a container with a named volume and a bind" "$(status_of <<<"$out")" 201
sleep 1
expect_eq "the bind round-trips a file" "$(cat "$TMP/bind/back.txt" 2>/dev/null)" "from the host"
api DELETE '/v1/containers/writer?force=1' >/dev/null
post "/v1/containers?start=1" -d "{\"image\":\"$TOOLBOX\",\"name\":\"reader\",\"cmd\":[\"sleep\",\"1000\"],\"volumes\":[\"ctdata:/data:ro\",\"$TMP/bind:/src:ro\"],\"memory\":\"64m\"}" >/dev/null
expect_eq "the next container reads the named volume" "$(post /v1/containers/reader/exec -d '{"cmd":["cat","/data/file"]}' | body_of | jq -r .stdout)" "kept"
expect_eq "ro binds reject writes" "$(post /v1/containers/reader/exec -d '{"cmd":["sh","-c","echo x > /src/no.txt"]}' | body_of | jq -r .exit_code)" 1
check "the volume survives the containers" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/volumes/ctdata | jq -e .name >/dev/null"

# --- a private image: credentials in the spec (used for the pull, never kept) ---------
start_registry priv basic >/dev/null
$PY "$HERE/images.py" "$REG_priv" --prefix private --user testuser --password testpass >/dev/null
PRIV=$REG_priv/private/httpd
out=$(post "/v1/containers?start=1" -d "{\"image\":\"$PRIV\",\"name\":\"priv\",\"memory\":\"64m\"}")
expect_eq "a private image without credentials is 401" "$(status_of <<<"$out")" 401
msg=$(body_of <<<"$out" | jq -r .error.message)
check "... saying so ($msg)" grep -qiE "credential|unauthori|password|login" <<<"$msg"
out=$(post "/v1/containers?start=1" -d "{\"image\":\"$PRIV\",\"name\":\"priv\",\"memory\":\"64m\",\"auth\":{\"username\":\"testuser\",\"password\":\"wrong\"}}")
expect_eq "a wrong password is 401" "$(status_of <<<"$out")" 401
expect_eq "... and no container was made" "$(api GET /v1/containers/priv | status_of)" 404
out=$(post "/v1/containers?start=1" -d "{\"image\":\"$PRIV\",\"name\":\"priv\",\"memory\":\"64m\",\"auth\":{\"username\":\"testuser\",\"password\":\"testpass\"}}")
expect_eq "with credentials in the spec it is pulled and runs" "$(status_of <<<"$out"):$(state priv)" "201:running"
insp=$(api GET /v1/containers/priv)
check "inspect shows no password" bash -c '! grep -q testpass' <<<"$insp"
# (the database, its WAL, records and logs; not the disk images)
check "the state dir keeps no password" bash -c "! find '$D_STATE' -type f -size -16M -exec grep -la testpass {} + | grep -q ."
api DELETE '/v1/containers/priv?force=1' >/dev/null
# docker's way: log in once (the daemon keeps the login), then pull without credentials
expect_eq "the image can go" "$(api DELETE "/v1/images/$PRIV" | status_of)" 200
expect_eq "login with a wrong password is 401" "$(post /v1/registries/login -d "{\"registry\":\"$REG_priv\",\"username\":\"testuser\",\"password\":\"nope\"}" | status_of)" 401
expect_eq "login" "$(post /v1/registries/login -d "{\"registry\":\"$REG_priv\",\"username\":\"testuser\",\"password\":\"testpass\"}" | status_of)" 200
expect_eq "after a login a create pulls without credentials" "$(post /v1/containers -d "{\"image\":\"$PRIV\",\"name\":\"priv2\",\"memory\":\"64m\"}" | status_of)" 201
api DELETE '/v1/containers/priv2' >/dev/null
expect_eq "logout" "$(api DELETE "/v1/registries/$REG_priv" | status_of)" 200

# --- bad input ---------------------------------------------------------------------
expect_eq "an unknown image is 404" "$(post /v1/containers -d "{\"image\":\"$REG/test/nope\"}" | status_of)" 404
expect_eq "a name in use is 409" "$(post /v1/containers -d "{\"image\":\"$TOOLBOX\",\"name\":\"reader\"}" | status_of)" 409
expect_eq "a wrong type names the field" "$(post /v1/containers -d "{\"image\":\"$TOOLBOX\",\"cpus\":\"lots\"}" | body_of | jq -r .error.field)" cpus
post /v1/containers -d "{\"image\":\"$HTTPD\",\"name\":\"p1\",\"ports\":[\"$PORT2:80\"],\"memory\":\"64m\"}" >/dev/null
post /v1/containers -d "{\"image\":\"$HTTPD\",\"name\":\"p2\",\"ports\":[\"$PORT2:80\"],\"memory\":\"64m\"}" >/dev/null
expect_eq "the first container gets the port" "$(post /v1/containers/p1/start | status_of)" 200
expect_eq "a port taken by another container is 409" "$(post /v1/containers/p2/start | status_of)" 409
$PY -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1]); time.sleep(60)" > "$TMP/busyport" &
PIDS+=($!); sleep 0.5
post /v1/containers -d "{\"image\":\"$HTTPD\",\"name\":\"p3\",\"ports\":[\"127.0.0.1:$(cat "$TMP/busyport"):80\"],\"memory\":\"64m\"}" >/dev/null
expect_eq "a port taken by another process is 409" "$(post /v1/containers/p3/start | status_of)" 409
check "a failed start leaves no tap behind" bash -c "[ \$(ip -o link | grep -c mbct) -eq 2 ]"
for n in p1 p2 p3 quick victim reader crash; do api DELETE "/v1/containers/$n?force=1" >/dev/null; done

# --- 20 containers created, started and removed: nothing left --------------------------
names=()
for i in $(seq 1 20); do
  names+=("bulk$i")
  post /v1/containers -d "{\"image\":\"$TOOLBOX\",\"name\":\"bulk$i\",\"cmd\":[\"sleep\",\"1000\"],\"memory\":\"64m\",\"cpus\":0.2,\"volumes\":[\"/scratch\"],\"healthcheck\":{\"test\":[\"NONE\"]}}" >/dev/null
done
# (wait on these PIDs only: a bare `wait` would also wait for the registry)
for batch in 0 5 10 15; do
  jobs_=()
  for i in $(seq $((batch + 1)) $((batch + 5))); do post "/v1/containers/bulk$i/start" >/dev/null & jobs_+=($!); done
  wait "${jobs_[@]}"
done
expect_eq "20 containers running" "$(api GET '/v1/containers?state=running' | body_of | jq length)" 20
jobs_=()
for n in "${names[@]}"; do api DELETE "/v1/containers/$n?force=1" >/dev/null & jobs_+=($!); done
wait "${jobs_[@]}"
expect_eq "all removed" "$(api GET '/v1/containers?all=1' | body_of | jq length)" 0
expect_eq "no QEMU left" "$(qemu_of)" 0
expect_eq "no tap left" "$(ip -o link | grep -c mbct || true)" 0
check "no address still allocated" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/networks | jq -e 'all(.[]; .endpoint_count == 0)' >/dev/null"
expect_eq "no anonymous volume left" "$(api GET /v1/volumes | body_of | jq '[.[] | select(.anonymous)] | length')" 0
expect_eq "no container directory left" "$(ls "$D_STATE/containers" | wc -l)" 0
check "the image is no longer in use" bash -c "curl -s --unix-socket '$D_SOCK' http://x/v1/images | jq -e 'all(.[]; (.holders // []) | length == 0)' >/dev/null"

rc=0; stop_daemon || rc=$?
expect_eq "the daemon stops cleanly" "$rc" 0
finish
