#!/bin/bash
# End-to-end tests of the `moonbox` CLI against a real daemon (TAP-ish, via tests/lib.sh).
#
#   tests/cli/cli.sh build/moonbox
#
# Part 1: a plain daemon (whatever is on this branch): version, info, help, usage errors
#         (exit 2), unknown objects (exit 1 with the API's message), TCP + token, ps.
# Part 2: when docker-registry and Debian's python3 are there: a local registry with the
#         busybox test image (tests/registry/make-images.py), and the container commands
#         end to end, including -it through a pseudo-terminal (tests/cli/pty_drive.py).
#         Containers are real microVMs (QEMU under TCG here, user-mode networking).
# Temp dirs only; only the processes started here are stopped; no timing is asserted.
MB=$(realpath "${1:?usage: cli.sh path/to/moonbox}")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"

# Rootless networking (QEMU user mode): the daemons started here never touch the host's
# bridges, nftables or forwarding switches, and do not collide with another daemon's.
export MOONBOX_NET_MODE=user MOONBOX_NET_UPLINK_FORWARDING=off

OUT="" ERR="" RC=0
# mb ARGS...: the CLI against the daemon on its unix socket; sets OUT, ERR, RC
mb() {
  set +e
  timeout "${CLI_TIMEOUT:-180}" "$MB" -H "unix://$D_SOCK" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
  RC=$?
  set -e
  OUT=$(cat "$TMP/out"); ERR=$(cat "$TMP/err")
}
# mb_in FILE ARGS...: the same with stdin from FILE
mb_in() {
  local input=$1; shift
  set +e
  timeout "${CLI_TIMEOUT:-180}" "$MB" -H "unix://$D_SOCK" "$@" >"$TMP/out" 2>"$TMP/err" <"$input"
  RC=$?
  set -e
  OUT=$(cat "$TMP/out"); ERR=$(cat "$TMP/err")
}
has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
rc_is() { if [ "$RC" = "$2" ]; then pass "$1: exit code"; else fail "$1: exit code: expected [$2], got [$RC] (stderr [$ERR])"; fi; }
out_has() { if has "$OUT" "$2"; then pass "$1"; else fail "$1: stdout lacks [$2]: [$OUT] (stderr [$ERR])"; fi; }
err_has() { if has "$ERR" "$2"; then pass "$1"; else fail "$1: stderr lacks [$2]: [$ERR]"; fi; }
out_is() { expect_eq "$1" "$OUT" "$2"; }
# usage_error ARGS...: exit 2 with a message on stderr
usage_error() { mb "$@"; rc_is "usage error: $*" 2; [ -n "$ERR" ] && pass "usage error has a message: $*" || fail "no message: $*"; }

# ------------------------------------------------------------------------------------
echo "# part 1: a plain daemon"
start_daemon plain

mb version
rc_is "version" 0
out_has "version: client section" "Client:"
out_has "version: server section" "Server:"
out_has "version: server API" "API version:"
mb version --format json
rc_is "version --format json" 0
expect_eq "version json: server version" "$(echo "$OUT" | jq -r .server.version)" "$(echo "$OUT" | jq -r .client.version)"
set +e; "$MB" --version >"$TMP/out" 2>&1; RC=$?; set -e
rc_is "--version (offline)" 0

set +e; "$MB" -H "unix://$TMP/nothing.sock" version >"$TMP/out" 2>"$TMP/err"; RC=$?; set -e
ERR=$(cat "$TMP/err"); OUT=$(cat "$TMP/out")
rc_is "version without a daemon" 1
err_has "version without a daemon: message" "Cannot connect to the moonbox daemon at unix://$TMP/nothing.sock"
out_has "version without a daemon: still prints the client" "Client:"

mb info
rc_is "info" 0
out_has "info: server version" "Server Version:"
out_has "info: containers count" "Containers: 0"
mb info --format json
expect_eq "info --format json" "$(echo "$OUT" | jq -r '.containers.total')" "0"
mb info --format '{{.version}}'
out_is "info --format template" "$(echo "$(mb version --format json; echo "$OUT")" | jq -r .server.version)"

mb
rc_is "no command: help" 0
out_has "no command: lists commands" "Common Commands:"
mb help run
rc_is "help run" 0
out_has "help run: usage" "Usage:  moonbox run [OPTIONS] IMAGE [COMMAND] [ARG...]"
mb run --help
out_has "run --help: a flag" "-p, --publish list"
mb volume --help
out_has "volume --help: subcommands" "create"

usage_error nosuchcommand
err_has "unknown command message" "'nosuchcommand' is not a moonbox command"
usage_error ps --bogus
err_has "unknown flag message" "unknown flag: --bogus"
usage_error stop
err_has "missing argument message" '"moonbox stop" requires at least 1 argument.'
usage_error run
usage_error run -p 99999:80 busybox
err_has "bad port message" "invalid port mapping"
usage_error run -v relative:path busybox
usage_error run --memory lots busybox
usage_error run --restart sometimes busybox
usage_error logs
usage_error logs --tail many web
usage_error cp a b
usage_error cp a:/x b:/y
usage_error kill -s NOTASIGNAL!! web
usage_error ps --filter color=red
usage_error -H bogus:// ps
usage_error volume frobnicate
usage_error info extra

mb inspect nope
rc_is "inspect unknown" 1
err_has "inspect unknown: message" "No such object: nope"
out_is "inspect unknown: empty array" "[]"
for cmd in "stop nope" "start nope" "rm nope" "logs nope" "top nope" "kill nope" "restart nope" "pause nope" "wait nope"; do
  mb $cmd
  rc_is "$cmd" 1
  err_has "$cmd: the API's message" "Error response from daemon: no such container: nope"
done
mb exec nope sh
rc_is "exec on an unknown container" 1
err_has "exec unknown: message" "no such container: nope"
mb cp nope:/etc/hostname "$TMP/x"
rc_is "cp from an unknown container" 1
mb stop nope1 nope2
rc_is "stop of two unknown containers" 1
expect_eq "stop: one message per name" "$(echo "$ERR" | grep -c 'no such container')" "2"

mb ps
rc_is "ps" 0
out_has "ps header" "CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES"
mb ps -aq
out_is "ps -aq: nothing" ""
mb ps --format json
out_is "ps --format json: []" "[]"
mb images
rc_is "images" 0
out_has "images header" "REPOSITORY   TAG   IMAGE ID   CREATED   SIZE"
mb run --pull never busybox:nothere
rc_is "run with a missing image and --pull never" 125
err_has "run --pull never: message" "No such image: busybox:nothere"

# volumes and networks: 0 once their API is there, else a clear 1
for c in "volume ls" "network ls"; do
  mb $c
  if [ "$RC" = 0 ]; then pass "$c"; elif [ "$RC" = 1 ] && has "$ERR" "does not support it"; then
    pass "$c: this daemon has no such API (said so)"; else fail "$c: rc=$RC [$ERR]"; fi
done

# TCP: the token from --token, $MOONBOX_TOKEN, or the local state dir
set +e
MOONBOX_STATE_DIR=$D_STATE "$MB" -H "tcp://127.0.0.1:$D_PORT" version >"$TMP/out" 2>"$TMP/err"; RC=$?
rc_is "tcp: token read from the state dir" 0
"$MB" -H "tcp://127.0.0.1:$D_PORT" --token "$D_TOKEN" ps >"$TMP/out" 2>"$TMP/err"; RC=$?
rc_is "tcp: --token" 0
MOONBOX_TOKEN=$D_TOKEN MOONBOX_HOST="tcp://127.0.0.1:$D_PORT" "$MB" ps >"$TMP/out" 2>"$TMP/err"; RC=$?
rc_is "tcp: MOONBOX_HOST and MOONBOX_TOKEN" 0
MOONBOX_STATE_DIR=$TMP/none "$MB" -H "tcp://127.0.0.1:$D_PORT" --token wrong ps >"$TMP/out" 2>"$TMP/err"; RC=$?
set -e
rc_is "tcp: a wrong token" 1
ERR=$(cat "$TMP/err"); err_has "tcp: a wrong token: message" "Error response from daemon:"
stop_daemon || true

# ------------------------------------------------------------------------------------
if ! command -v docker-registry >/dev/null || [ ! -x /usr/bin/python3 ] || ! command -v mkfs.ext4 >/dev/null; then
  echo "# part 2 skipped: needs docker-registry, /usr/bin/python3 and mkfs.ext4"
  finish
  exit $?
fi
echo "# part 2: a local registry and containers"
REG_PORT=$(free_port)
mkdir -p "$TMP/registry/storage"
cat >"$TMP/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $TMP/registry/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REG_PORT, secret: moonbox-cli-test}
EOF
docker-registry serve "$TMP/registry/config.yml" >"$TMP/registry/log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break; sleep 0.1; done
/usr/bin/python3 "$HERE/../registry/make-images.py" "127.0.0.1:$REG_PORT" --set basic >"$TMP/images.json"
IMG=127.0.0.1:$REG_PORT/test/busybox
export MOONBOX_TEST_INSECURE=127.0.0.1:$REG_PORT
start_daemon cli
echo "# containers: real microVMs"
TICK=(sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done')
TICK3=(sh -c 'for i in 1 2 3; do echo tick $i; sleep 0.2; done')
HOST_PORT=$(free_port)

mb pull "$IMG"
rc_is "pull" 0
out_has "pull: digest line" "Digest: sha256:"
expect_eq "pull: the reference last" "$(echo "$OUT" | tail -n1)" "$IMG:latest"
mb images
out_has "images: the pulled image" "$IMG   latest"
mb images -q
expect_eq "images -q: one short id" "$(echo "$OUT" | grep -cE '^[0-9a-f]{12}$')" "1"
mb images --format json
expect_eq "images --format json" "$(echo "$OUT" | jq -r '.[0].references[0]')" "$IMG:latest"
mb inspect "$IMG"
rc_is "inspect an image" 0
expect_eq "inspect image: its references" "$(echo "$OUT" | jq -r '.[0].references[0]')" "$IMG:latest"

mb run --rm "$IMG" echo hello world
rc_is "run --rm echo" 0
out_is "run: output" "hello world"
mb run "$IMG" sh -c 'echo out; echo err >&2; exit 3'
rc_is "run: the container's exit code" 3
out_is "run: stdout" "out"
err_has "run: stderr on stderr" "err"
mb run --rm "$IMG" sh -c 'exit 9'
rc_is "run --rm: the exit code survives the removal" 9
mb run --rm "$IMG" nothere
rc_is "run: command not found in the container" 127
err_has "run: command not found: the reason" "not found"
# signal proxy: SIGINT to the attached client reaches the container's process
"$MB" -H "unix://$D_SOCK" run --rm --name sigs "$IMG" sh -c 'trap "echo got INT; exit 7" INT; echo ready; while :; do sleep 0.2; done' \
  >"$TMP/sig.out" 2>"$TMP/sig.err" &
sig_pid=$!
for _ in $(seq 1 300); do grep -q ready "$TMP/sig.out" 2>/dev/null && break; sleep 0.2; done
kill -INT "$sig_pid"
for _ in $(seq 1 300); do kill -0 "$sig_pid" 2>/dev/null || break; sleep 0.2; done
kill -0 "$sig_pid" 2>/dev/null && kill -9 "$sig_pid" # (bounded: the proxy did not work)
RC=0; wait "$sig_pid" || RC=$?
OUT=$(cat "$TMP/sig.out"); ERR=$(cat "$TMP/sig.err")
rc_is "run: Ctrl-C goes to the container (--sig-proxy), its exit code comes back" 7
out_has "run: the container's trap ran" "got INT"
"$MB" -H "unix://$D_SOCK" rm -f sigs >/dev/null 2>&1 || true
printf 'piped\ninput\n' >"$TMP/in.txt"
mb_in "$TMP/in.txt" run -i --rm "$IMG" cat
rc_is "run -i" 0
out_is "run -i: stdin reaches the container" "$(printf 'piped\ninput')"
mb run --name web2 --rm --restart always "$IMG" true
rc_is "run: the API refuses --rm with a restart policy" 125
err_has "run: the API's message" "auto_remove"

mb run -d --name web -p "$HOST_PORT:80" -e A=1 -l app=x --health-cmd true --health-interval 1s "$IMG" "${TICK[@]}"
rc_is "run -d" 0
expect_eq "run -d: prints the id" "$(echo "$OUT" | grep -cE '^[0-9a-f]{64}$')" "1"
WEB_ID=$OUT
mb ps
out_has "ps: the container" "web"
out_has "ps: its port" ":$HOST_PORT->80/tcp"
mb ps -q
out_is "ps -q: the short id" "${WEB_ID:0:12}"
mb ps -q --filter label=app=x
out_is "ps --filter label" "${WEB_ID:0:12}"
mb ps -q --filter label=app=y
out_is "ps --filter label (no match)" ""
mb ps -a -q --filter status=exited
expect_eq "ps --filter status=exited" "$(echo "$OUT" | grep -c .)" "1"
mb ps --format '{{.name}} {{.state}}'
out_is "ps --format template" "web running"
mb inspect -f '{{.state}} {{.config.labels.app}}' web
out_is "inspect -f" "running x"
mb inspect web
expect_eq "inspect: JSON" "$(echo "$OUT" | jq -r '.[0].ports[0].host_port')" "$HOST_PORT"

for _ in $(seq 1 100); do mb logs web; has "$OUT" "tick 3" && break; sleep 0.1; done
out_has "logs" "tick 1"
mb logs --tail 1 web
expect_eq "logs --tail 1" "$(echo "$OUT" | grep -c tick)" "1"
mb logs -t --tail 1 web
expect_eq "logs -t: RFC 3339 prefix" "$(echo "$OUT" | grep -cE '^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z tick [0-9]+$')" "1"
mb logs --since 1h web
out_has "logs --since" "tick 1"

mb run -d --name short "$IMG" "${TICK3[@]}"
mb logs -f short
rc_is "logs -f ends when the container stops" 0
out_has "logs -f: everything" "tick 3"

mb exec web echo hi
rc_is "exec" 0
out_is "exec: output" "hi"
mb exec web sh -c 'exit 7'
rc_is "exec: the command's exit code" 7
mb exec web sh -c 'echo $A'
out_is "exec: the container's environment" "1"
mb exec -e A=2 -w /tmp -u nobody web sh -c 'echo $A; pwd; id -un'
out_is "exec -e -w -u" "$(printf '2\n/tmp\nnobody')"
mb_in "$TMP/in.txt" exec -i web cat
out_is "exec -i: stdin" "$(printf 'piped\ninput')"
mb exec web nothere
rc_is "exec: not found" 127
err_has "exec: the reason" "not found"

mb top web
rc_is "top" 0
out_has "top: titles" "PID"
mb stats --no-stream web
rc_is "stats --no-stream" 0
out_has "stats: columns" "MEM USAGE / LIMIT"
out_has "stats: the container" "web"
mb stats --no-stream --format json
expect_eq "stats --format json" "$(echo "$OUT" | jq -r '.[0].name')" "web"
set +e; timeout 6 "$MB" -H "unix://$D_SOCK" stats web >"$TMP/out" 2>&1 </dev/null; set -e
if grep -q "CPU %" "$TMP/out"; then pass "stats (streaming) draws a table"; else fail "stats streaming: $(cat "$TMP/out")"; fi

mb pause web
rc_is "pause" 0
out_is "pause: prints the name" "web"
mb ps --format '{{.status}}'
out_has "ps: paused" "(Paused)"
mb unpause web
rc_is "unpause" 0
mb stop -t 1 web nope
rc_is "stop: one of two failed" 1
out_is "stop: the one that stopped" "web"
err_has "stop: the one that failed" "no such container: nope"
mb exec web echo hi
rc_is "exec in a stopped container" 1
err_has "exec in a stopped container: state" "stopped"
mb cp web:/etc/passwd "$TMP/stopped-passwd"
rc_is "cp out of a stopped container" 0
check "cp out of a stopped container: the file" grep -q "^root:" "$TMP/stopped-passwd"
mb update --cpus 2 --memory 1g web
rc_is "update" 0
mb inspect -f '{{.resources.cpus}} {{.resources.memory}}' web
out_is "update: applied" "2 1073741824"
mb start web
rc_is "start" 0
mb start web
rc_is "start a running container" 1
err_has "start a running container: message" "cannot start container web: it is running"
mb restart -t 1 web
rc_is "restart" 0
mb kill web
rc_is "kill" 0
mb wait web
out_is "wait: the exit code (SIGKILL)" "137"
mb rm web short
rc_is "rm two" 0
out_is "rm: names" "$(printf 'web\nshort')"

# cp, both ways
mb run -d --name box "$IMG" sleep 1000
mkdir -p "$TMP/cp/src/sub"; echo one >"$TMP/cp/src/a.txt"; echo two >"$TMP/cp/src/sub/b.txt"
chmod 600 "$TMP/cp/src/a.txt"
ln -s a.txt "$TMP/cp/src/ln"
mb cp box:/etc/passwd "$TMP/cp/"
rc_is "cp a file out into a directory" 0
expect_eq "cp: content" "$(head -n1 "$TMP/cp/passwd")" "root:x:0:0:root:/root:/bin/sh"
mb cp box:/etc/group "$TMP/cp/renamed"
expect_eq "cp a file out under a new name" "$(head -n1 "$TMP/cp/renamed")" "root:x:0:"
mb cp box:/etc "$TMP/cp/etc-copy"
rc_is "cp a directory out" 0
[ -f "$TMP/cp/etc-copy/passwd" ] && pass "cp: directory contents" || fail "cp: no etc-copy/passwd"
mb cp box:/etc/nope "$TMP/cp/x"
rc_is "cp a missing file" 1
err_has "cp a missing file: message" "no such file"
mb cp "$TMP/cp/src" box:/tmp
rc_is "cp a directory in" 0
mb exec box cat /tmp/src/sub/b.txt
out_is "cp in: nested file" "two"
mb exec box readlink /tmp/src/ln
out_is "cp in: a symbolic link stays a link" "a.txt"
mb cp "$TMP/cp/src/a.txt" box:/tmp/new.txt
mb exec box cat /tmp/new.txt
out_is "cp a file in under a new name" "one"
mb cp box:/tmp/src "$TMP/cp/back"
if diff -r "$TMP/cp/src" "$TMP/cp/back" >/dev/null; then pass "cp: round trip"; else fail "cp: round trip differs"; fi
expect_eq "cp: mode kept" "$(stat -c %a "$TMP/cp/back/a.txt")" "600"
expect_eq "cp out: a symbolic link stays a link" "$(readlink "$TMP/cp/back/ln")" "a.txt"
set +e; "$MB" -H "unix://$D_SOCK" cp box:/etc/group - 2>/dev/null | tar -tf - >"$TMP/out"; set -e
OUT=$(cat "$TMP/out"); expect_eq "cp to stdout: a tar of the file" "$OUT" "group"
tar -C "$TMP/cp" -cf "$TMP/cp/in.tar" src
mb_in "$TMP/cp/in.tar" cp - box:/
rc_is "cp a tar from stdin" 0
mb exec box cat /src/a.txt
out_is "cp from stdin: extracted" "one"

# -it through a pseudo-terminal: raw mode, resize, exit code, terminal restored
PTY="/usr/bin/python3 $HERE/pty_drive.py"
set +e
$PTY 'expect:# ;;send:echo hi\r;;expect:hi;;send:busybox stty size\r;;expect:24 80;;resize:30x100;;sleep:0.5;;send:busybox stty size\r;;expect:30 100;;send:exit 5\r' \
  -- "$MB" -H "unix://$D_SOCK" run -it --rm "$IMG" sh >"$TMP/out" 2>&1; RC=$?
set -e
OUT=$(cat "$TMP/out")
rc_is "run -it: the session" 0
out_has "run -it: the container's exit code" "exit=5"
out_has "run -it: the terminal is restored" "termios=restored"
set +e
PTY_SIZE=33x111 $PTY 'expect:# ;;send:busybox stty size\r;;expect:33 111;;send:exit 6\r' \
  -- "$MB" -H "unix://$D_SOCK" run -it --rm "$IMG" sh >"$TMP/out" 2>&1; RC=$?
set -e
OUT=$(cat "$TMP/out")
out_has "run -it: the terminal has the client's size from the start (attached before the start)" "exit=6"
set +e
$PTY 'expect:# ;;send:busybox stty size\r;;expect:24 80;;send:exit 4\r' -- "$MB" -H "unix://$D_SOCK" exec -it box sh >"$TMP/out" 2>&1; RC=$?
set -e
OUT=$(cat "$TMP/out")
out_has "exec -it: exit code" "exit=4"
out_has "exec -it: terminal restored" "termios=restored"
set +e
$PTY 'expect:# ;;send:\x10\x11;;expect:read escape sequence' -- "$MB" -H "unix://$D_SOCK" run -it --name det "$IMG" sh >"$TMP/out" 2>&1; RC=$?
set -e
OUT=$(cat "$TMP/out")
out_has "run -it: ctrl-p ctrl-q detaches" "exit=0"
mb ps --filter name=det --format '{{.state}}'
out_is "detached container keeps running" "running"
mb run -it "$IMG" sh
rc_is "run -it without a terminal" 1
err_has "run -it without a terminal: message" "the input device is not a TTY"

# images in use, then removed
mb rmi "$IMG"
rc_is "rmi while in use" 1
mb rm -f box det
rc_is "rm -f" 0
mb ps -aq
for id in $OUT; do mb rm -f "$id"; done
mb rmi "$IMG"
rc_is "rmi" 0
out_has "rmi: untagged" "Untagged: $IMG:latest"
out_has "rmi: deleted" "Deleted: sha256:"
mb images -q
out_is "images: empty after rmi" ""

echo secret >"$TMP/pw"
mb_in "$TMP/pw" login -u bob --password-stdin "127.0.0.1:$REG_PORT"
rc_is "login --password-stdin" 0
out_is "login: the daemon's answer" "Login Succeeded"
mb logout "127.0.0.1:$REG_PORT"
rc_is "logout" 0
set +e
PTY_SHOW=1 $PTY 'expect:Username: ;;send:bob\r;;expect:Password: ;;send:hidden-pw\r;;expect:Login Succeeded' \
  -- "$MB" -H "unix://$D_SOCK" login "127.0.0.1:$REG_PORT" >"$TMP/out" 2>&1; RC=$?
set -e
OUT=$(cat "$TMP/out")
out_has "login prompts on a terminal" "exit=0"
if has "$OUT" "hidden-pw"; then fail "login: the password was echoed"; else pass "login: the password is not echoed"; fi
mb logout "127.0.0.1:$REG_PORT"
mb logout "127.0.0.1:$REG_PORT"
rc_is "logout when not logged in" 0
out_has "logout when not logged in: says so" "Not logged in to 127.0.0.1:$REG_PORT"

mb events --no-follow --filter 'type=container.*'
rc_is "events --no-follow" 0
out_has "events: a removal" "container.removed"
mb events --no-follow --format json
expect_eq "events --format json: one object per line" "$(echo "$OUT" | head -n1 | jq -r .type)" "daemon.start"

# load: a docker-archive of the test image (the daemon may not take uploads yet)
if command -v skopeo >/dev/null; then
  skopeo copy -q --src-tls-verify=false "docker://$IMG:latest" "docker-archive:$TMP/bb.tar:test/loaded:v1" >/dev/null 2>&1 || true
  if [ -s "$TMP/bb.tar" ]; then
    mb load -i "$TMP/bb.tar"
    if [ "$RC" = 0 ]; then out_has "load -i" "Loaded image: test/loaded:v1"
    elif [ "$RC" = 1 ] && [ -n "$ERR" ]; then pass "load -i: the daemon's refusal is reported ($ERR)"
    else fail "load -i: rc=$RC [$ERR]"; fi
  fi
fi
stop_daemon || true
finish
