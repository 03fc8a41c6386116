# Shared helpers for the shell tests. Source it; it sets up a private temp dir and a
# trap that stops only the processes these helpers started (by PID) and removes the dir.
set -euo pipefail

PY=/usr/bin/python3
TMP=$(mktemp -d /tmp/moonbox-test.XXXXXX)
case "$TMP" in /tmp/moonbox-test.*) ;; *) echo "bad temp dir: $TMP" >&2; exit 1 ;; esac
PIDS=()
FAILED=0
CHECKS=0

# one_run_at_a_time NAME: wait for any other run on this machine that uses the same fixed
# network names (bridges, taps, the nftables table); two at once would break each other
one_run_at_a_time() {
  exec 9>"/tmp/moonbox-net-$1.lock"
  flock 9
}

cleanup() {
  local rc=$?
  # a failed test shows the end of its daemons' logs (the temp dir is removed below)
  if [ "$rc" -ne 0 ]; then
    local l
    for l in "$TMP"/*/log; do
      [ -f "$l" ] || continue
      echo "# --- last lines of $l ---" >&2
      tail -n 80 "$l" | sed 's/^/# /' >&2
    done
  fi
  # a test may define on_cleanup (stop its fixtures, remove its networks) before ours
  if declare -F on_cleanup >/dev/null; then on_cleanup || true; fi
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && stop_pid "$p" 30 >&2 || true
  done
  kill_test_vms
  if [ "${KEEP_TMP:-0}" != 1 ]; then rm -rf -- "$TMP"; else echo "kept $TMP"; fi
  exit $rc
}
trap cleanup EXIT

# VMs outlive their daemon by design (live restore): stop the ones the daemons started
# here (their pid files are under $TMP; the command line must name that pid file, so a
# reused PID is never hit)
kill_test_vms() {
  local f q
  for f in "$TMP"/*/run/vms/*/qemu.pid; do
    [ -f "$f" ] || continue
    q=$(cat "$f" 2>/dev/null) || continue
    if [ -n "$q" ] && tr '\0' ' ' <"/proc/$q/cmdline" 2>/dev/null | grep -qF -- "$f"; then
      kill -9 "$q" 2>/dev/null || true
    fi
  done
}

# remove_daemon_networks: for a test's on_cleanup: the VMs of the daemon started here,
# then every network, tap and nftables rule it made (networks outlive the daemon by
# design too). Bounded in time, never fails.
remove_daemon_networks() {
  [ -n "${D_STATE:-}" ] && [ -d "$D_STATE" ] || return 0
  kill_test_vms
  printf 'return { t = function() net.teardown { force = true } end }\n' >"$TMP/teardown_test.lua"
  timeout -k 5 60 "$MB" test --state-dir "$D_STATE" "$TMP/teardown_test.lua" >/dev/null 2>&1 || true
}

pass() { CHECKS=$((CHECKS + 1)); echo "ok $CHECKS - $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILED=$((FAILED + 1)); echo "not ok $CHECKS - $*"; }
# check "description" command...   (passes if the command succeeds)
check() { local d=$1; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
# expect_eq "description" actual expected
expect_eq() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: expected [$3], got [$2]"; fi; }
finish() {
  echo "# $CHECKS checks, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_daemon NAME [extra serve args...]: sets D_SOCK, D_PORT, D_TOKEN, D_PID, D_LOG, D_STATE
start_daemon() {
  local name=$1; shift
  D_STATE=$TMP/$name/state; D_RUN=$TMP/$name/run; D_LOG=$TMP/$name/log
  D_SOCK=$D_RUN/moonbox.sock; D_PORT=$(free_port)
  mkdir -p "$TMP/$name"
  ${DAEMON_WRAPPER:-} "$MB" serve --state-dir "$D_STATE" --run-dir "$D_RUN" \
    --http "127.0.0.1:$D_PORT" "$@" >"$D_LOG" 2>&1 &
  D_PID=$!
  PIDS+=("$D_PID")
  for _ in $(seq 1 ${START_WAIT:-100}); do
    [ -S "$D_SOCK" ] && curl -s --unix-socket "$D_SOCK" http://x/v1/health >/dev/null 2>&1 && break
    kill -0 "$D_PID" 2>/dev/null || { cat "$D_LOG"; echo "daemon died"; return 1; }
    sleep 0.1
  done
  D_TOKEN=$(cat "$D_STATE/token")
}

# stat_field PID N: field N of /proc/PID/stat counted after the command name (1 = state,
# 2 = parent PID); empty if there is no such process
stat_field() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }

# alive PID: the process exists and is not a zombie waiting to be reaped
alive() {
  local st
  st=$(stat_field "$1" 1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# stop_pid PID SECONDS: SIGTERM, then wait for it; one that is still there after SECONDS
# is a hang: its threads' stacks are printed (so a CI log says where it hung), it is killed
# with SIGKILL and the return is 124. Otherwise returns the process's exit status.
stop_pid() {
  local pid=$1 secs=$2 i rc=0
  # only our own children: a PID that was reaped already may belong to someone else now
  [ "$(stat_field "$pid" 2)" = "$$" ] || {
    wait "$pid" 2>/dev/null || rc=$?
    return $rc
  }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "# pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)) did not stop within ${secs}s of SIGTERM"
    if command -v gdb >/dev/null; then
      # (nng's own worker threads only ever wait for work: left out)
      timeout 60 gdb -p "$pid" -batch -ex "thread apply all bt 12" 2>/dev/null | grep -E '^(#|Thread)' |
        awk '/^Thread/ { skip = /"nng:/ } !skip' | head -150 | sed 's/^/#   /' || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 124
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return $rc
}

# stop_daemon: SIGTERM and its exit status (124 if it hung: see stop_pid)
stop_daemon() { stop_pid "$D_PID" "${STOP_WAIT:-90}"; }

# api METHOD PATH [curl args...]: over the unix socket; prints body, then the status on
# the last line
api() { local m=$1 p=$2; shift 2; curl -s -X "$m" --unix-socket "$D_SOCK" -w '\n%{http_code}' "$@" "http://moonbox$p"; }
status_of() { tail -n1; }
body_of() { sed '$d'; }
jq_() { jq -r "$@"; }
