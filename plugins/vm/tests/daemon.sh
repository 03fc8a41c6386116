#!/usr/bin/env bash
# plugins/vm through a real daemon: the REST endpoints of scripts/api/vms.lua, and daemon
# restarts: SIGKILL then restart re-adopts a running VM (which still execs); a VM that died
# while no daemon ran is marked stopped with vm.died; SIGTERM leaves VMs running.
# usage: daemon.sh MOONBOX GUEST_DIR
MB=$1
GUEST=$2
. "$(dirname "$0")/../../../tests/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

"$here/mkrootfs.sh" "$TMP/assets" >/dev/null
upper() {
  local p="$TMP/assets/upper-$1.ext4"
  truncate -s 64M "$p"
  mkfs.ext4 -q -F "$p"
  echo "$p"
}
spec() { # NAME UPPER [extra JSON fields]
  echo "{\"name\":\"$1\",\"nics\":[{\"type\":\"user\"}],\"root\":{\"type\":\"overlay\"},
    \"disks\":[{\"path\":\"$TMP/assets/lower.erofs\",\"readonly\":true,\"serial\":\"lower\"},
               {\"path\":\"$2\",\"serial\":\"upper\"}]${3:+,$3}}"
}
json_post() { api POST "$1" -H 'content-type: application/json' -d "$2"; }

start_daemon d1 --guest-dir "$GUEST"

# --- validation and errors ------------------------------------------------------------------
out=$(json_post /v1/vms '{"vcpus":17,"nics":[{"type":"user"}]}')
expect_eq "bad vcpus: 400" "$(status_of <<<"$out")" 400
expect_eq "bad vcpus: the field is named" "$(body_of <<<"$out" | jq_ .error.field)" vcpus
expect_eq "bad vcpus: code invalid" "$(body_of <<<"$out" | jq_ .error.code)" invalid
out=$(json_post /v1/vms '{"memory_mib":10,"nics":[{"type":"user"}]}')
expect_eq "10 MiB: 400 naming memory_mib" "$(status_of <<<"$out") $(body_of <<<"$out" | jq_ .error.field)" "400 memory_mib"
out=$(json_post /v1/vms '{"kernel":"/nonexistent","nics":[{"type":"user"}]}')
expect_eq "missing kernel: 400 naming kernel" "$(status_of <<<"$out") $(body_of <<<"$out" | jq_ .error.field)" "400 kernel"
out=$(json_post /v1/vms '{"nics":')
expect_eq "bad JSON: 400" "$(status_of <<<"$out")" 400
out=$(api GET /v1/vms/nope)
expect_eq "unknown VM: 404" "$(status_of <<<"$out")" 404
expect_eq "nothing was created by bad input" "$(api GET /v1/vms | body_of | jq_ length)" 0

# --- create + start, exec, console, pause ----------------------------------------------------
out=$(json_post /v1/vms "$(spec web "$(upper web)" '"start":true,"labels":{"app":"web"}')")
expect_eq "create with start: 201" "$(status_of <<<"$out")" 201
rec=$(body_of <<<"$out")
expect_eq "create with start: running" "$(jq_ .state <<<"$rec")" running
id=$(jq_ .id <<<"$rec")
pid=$(jq_ .pid <<<"$rec")
PIDS+=("$pid")
check "QEMU is alive" kill -0 "$pid"
check "the token is not in the record" bash -c "! grep -qi token <<<'$rec'"
expect_eq "list shows it" "$(api GET /v1/vms | body_of | jq_ '.[0].name')" web
out=$(api POST /v1/vms/web/start)
expect_eq "start while running: 409" "$(status_of <<<"$out")" 409
expect_eq "409 carries the state" "$(body_of <<<"$out" | jq_ .error.state)" running
out=$(json_post /v1/vms/web/exec '{"cmd":["true"]}')
expect_eq "exec without a main process: 409" "$(status_of <<<"$out")" 409
out=$(json_post /v1/vms/web/run '{"cmd":["sh","-c","while :; do sleep 1; done"]}')
expect_eq "run the main process: 201" "$(status_of <<<"$out")" 201
out=$(json_post /v1/vms/web/exec '{"cmd":["sh","-c","echo hi; echo err >&2; exit 3"]}')
expect_eq "exec: 200" "$(status_of <<<"$out")" 200
expect_eq "exec: exit code 3" "$(body_of <<<"$out" | jq_ .exit_code)" 3
expect_eq "exec: stdout" "$(body_of <<<"$out" | jq -j .stdout)" hi
expect_eq "exec: stderr" "$(body_of <<<"$out" | jq -j .stderr)" err
out=$(json_post /v1/vms/web/exec '{"cmd":["cat"],"stdin":"from-stdin"}')
expect_eq "exec: stdin" "$(body_of <<<"$out" | jq -j .stdout)" from-stdin
out=$(json_post /v1/vms/web/exec '{"cmd":["sh","-c","printf \"\\377\\376\""]}')
expect_eq "exec: binary output comes back as base64" \
  "$(body_of <<<"$out" | jq -r '.stdout_encoding + " " + .stdout')" "base64 //4="
out=$(json_post /v1/vms/web/exec '{"cmd":"ls"}')
expect_eq "exec: bad cmd is 400 naming it" "$(status_of <<<"$out") $(body_of <<<"$out" | jq_ .error.field)" "400 cmd"
out=$(json_post /v1/vms/web/exec '{"cmd":["sleep","100"],"timeout":0.5}')
expect_eq "exec: timeout is 504" "$(status_of <<<"$out")" 504
out=$(api GET /v1/vms/web/console)
check "console: the agent's log" grep -q "moonbox-init" <<<"$out"
expect_eq "console: tail" "$(curl -s --unix-socket "$D_SOCK" 'http://x/v1/vms/web/console?tail=5' | wc -c)" 5
out=$(api GET /v1/vms/web/stats)
check "stats: host RSS" test "$(body_of <<<"$out" | jq_ .host.rss_bytes)" -gt 0
out=$(api POST /v1/vms/web/pause)
expect_eq "pause" "$(body_of <<<"$out" | jq_ .state)" paused
out=$(json_post /v1/vms/web/exec '{"cmd":["true"]}')
expect_eq "exec while paused: 409 with the state" \
  "$(status_of <<<"$out") $(body_of <<<"$out" | jq_ .error.state)" "409 paused"
out=$(api POST /v1/vms/web/resume)
expect_eq "resume" "$(body_of <<<"$out" | jq_ .state)" running
out=$(api DELETE /v1/vms/web)
expect_eq "delete while running: 409" "$(status_of <<<"$out")" 409
out=$(api GET /v1/system/info)
sel=$(body_of <<<"$out" | jq_ .acceleration.selected)
check "system info: acceleration selected ($sel)" test "$sel" = tcg -o "$sel" = kvm
expect_eq "system info: the acceleration contributor" \
  "$(body_of <<<"$out" | jq_ .extra.acceleration.selected)" "$sel"

# --- daemon killed with SIGKILL: the VM is re-adopted and still execs ---------------------------
kill -9 "$D_PID"
wait "$D_PID" 2>/dev/null || true
check "QEMU survives the daemon's SIGKILL" kill -0 "$pid"
start_daemon d1 --guest-dir "$GUEST"
out=$(api GET /v1/vms/web)
expect_eq "after restart: still running" "$(body_of <<<"$out" | jq_ .state)" running
expect_eq "after restart: same QEMU" "$(body_of <<<"$out" | jq_ .pid)" "$pid"
for _ in $(seq 1 300); do
  [ "$(api GET /v1/vms/web | body_of | jq_ .agent)" = connected ] && break
  sleep 0.1
done
expect_eq "after restart: agent reconnected" "$(api GET /v1/vms/web | body_of | jq_ .agent)" connected
out=$(json_post /v1/vms/web/exec '{"cmd":["sh","-c","echo adopted; exit 0"]}')
expect_eq "after restart: exec works" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -j .stdout)" "200 adopted"
out=$(api GET '/v1/events?follow=false&since=0&type=vm.adopted')
expect_eq "vm.adopted event" "$(body_of <<<"$out" | jq_ '.[-1].data.id')" "$id"
check "QEMU runs in its own session" test "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid"

# --- SIGTERM: fini releases host-side resources only; the VM keeps running ------------------
rc=0; stop_daemon || rc=$?
expect_eq "the daemon exits cleanly while a VM runs (sanitizers: no leak)" "$rc" 0
if [ "$rc" != 0 ]; then tail -50 "$D_LOG"; fi
check "QEMU survives a clean daemon stop" kill -0 "$pid"
start_daemon d1 --guest-dir "$GUEST"
out=$(json_post /v1/vms/web/exec '{"cmd":["echo","again"]}')
expect_eq "after a clean restart: exec works" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -j .stdout)" "200 again"

# --- the VM dies while no daemon runs ---------------------------------------------------------
kill -9 "$D_PID"
wait "$D_PID" 2>/dev/null || true
kill -9 "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
# (this daemon also gets a smaller TCG translation cache, checked below)
MOONBOX_VM_TB_SIZE_MIB=24 start_daemon d1 --guest-dir "$GUEST"
out=$(api GET /v1/vms/web)
expect_eq "died while the daemon was down: stopped" "$(body_of <<<"$out" | jq_ .state)" stopped
expect_eq "died while the daemon was down: reason" "$(body_of <<<"$out" | jq_ .exit.reason)" crashed
out=$(api GET '/v1/events?follow=false&since=0&type=vm.died')
expect_eq "vm.died event" "$(body_of <<<"$out" | jq_ '.[-1].data.id')" "$id"

# --- start again, graceful stop, delete -----------------------------------------------------------
out=$(json_post /v1/vms/web/start '{"timeout":120}')
expect_eq "start again" "$(body_of <<<"$out" | jq_ .state)" running
pid=$(body_of <<<"$out" | jq_ .pid)
PIDS+=("$pid")
check "MOONBOX_VM_TB_SIZE_MIB reaches QEMU" bash -c "tr '\\0' ' ' </proc/$pid/cmdline | grep -q 'tcg,tb-size=24 '"
expect_eq "and the system info" "$(api GET /v1/system/info | body_of | jq_ .acceleration.tb_size_mib)" 24
out=$(json_post /v1/vms/web/stop '{"timeout":2}')
expect_eq "stop: stopped" "$(body_of <<<"$out" | jq_ .state)" stopped
expect_eq "stop: reason" "$(body_of <<<"$out" | jq_ .exit.reason)" stop
check "stop: QEMU is gone" bash -c "! kill -0 $pid 2>/dev/null"
out=$(api POST /v1/vms/web/pause)
expect_eq "pause while stopped: 409 with the state" \
  "$(status_of <<<"$out") $(body_of <<<"$out" | jq_ .error.state)" "409 stopped"
out=$(api DELETE /v1/vms/web)
expect_eq "delete: 204" "$(status_of <<<"$out")" 204
expect_eq "deleted: 404" "$(api GET /v1/vms/web | status_of)" 404
check "no state dir left" test ! -e "$D_STATE/vm/$id"
check "no run dir left" test ! -e "$D_RUN/vms/$id"

# --- force delete of a running VM -----------------------------------------------------------------
out=$(json_post /v1/vms "$(spec doomed "$(upper doomed)" '"start":true')")
expect_eq "second VM running" "$(body_of <<<"$out" | jq_ .state)" running
pid2=$(body_of <<<"$out" | jq_ .pid)
PIDS+=("$pid2")
out=$(api DELETE '/v1/vms/doomed?force=1')
expect_eq "force delete: 204" "$(status_of <<<"$out")" 204
check "force delete: QEMU is gone" bash -c "! kill -0 $pid2 2>/dev/null"
expect_eq "nothing left" "$(api GET /v1/vms | body_of | jq_ length)" 0
expect_eq "no QEMU of this daemon" "$(pgrep -fc -- "$D_RUN/vms" || true)" 0
rc=0; stop_daemon || rc=$?
expect_eq "the daemon exits cleanly" "$rc" 0
if [ "$rc" != 0 ]; then tail -50 "$D_LOG"; fi
finish
