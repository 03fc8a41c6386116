#!/usr/bin/env bash
# The images and registries REST API (scripts/api/images.lua) of a real daemon, over its
# unix socket with curl, against the fixture registries. Run by fixtures.sh (api mode),
# which exports REG_plain, REG_basic, REG_token, FIXTURE_DIR, DEAD_PORT, ...
#   api-tests.sh path/to/moonbox
MB=$1
. "$(dirname "$0")/../lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
: "${REG_plain:?run through fixtures.sh}" "${REG_basic:?}" "${REG_token:?}" "${FIXTURE_DIR:?}"
field() { jq -r ".$2" "$FIXTURE_DIR/$1.json"; }
busybox_id=$(field plain busybox.config)
multi_id=$(field plain multi.config)

# operator routes for what only other primitives do through the Lua API (containers hold
# images with registry.use)
OPS=$TMP/ops
mkdir -p "$OPS"
cat >"$OPS/holders.lua" <<'LUA'
api.route("POST", "/v1/t/use/{ref*}", function(req)
  return { id = api.check(registry.use(req.params.ref, req.query.holder)) }
end)
api.route("POST", "/v1/t/release/{ref*}", function(req)
  return { ok = api.check(registry.release(req.params.ref, req.query.holder)) }
end)
LUA

# a front that relays blobs slowly (300 kB/s) and logs Range headers
slow_port=$(free_port)
$PY "$here/redirect-server.py" --addr "127.0.0.1:$slow_port" --target "$REG_plain" --slow 300000 \
  2>"$TMP/slow.log" &
PIDS+=($!)
for _ in $(seq 1 50); do
  $PY -c "import socket; socket.create_connection(('127.0.0.1', $slow_port))" 2>/dev/null && break
  sleep 0.1
done
SLOW=127.0.0.1:$slow_port

start_daemon main --scripts "$OPS" --log-level debug
MAIN_STATE=$D_STATE
MAIN_LOG=$D_LOG
all_out=$TMP/responses # every API answer, searched for secrets at the end
: >"$all_out"
call() { # like api, and keeps a copy of the answer
  local out
  out=$(api "$@")
  printf '%s\n' "$out" >>"$all_out"
  printf '%s\n' "$out"
}
code_of() { body_of | jq -r .error.code; }
jqe() { jq -e "$@" >/dev/null; }

# --- pull with a progress stream ----------------------------------------------------------
curl -sN --unix-socket "$D_SOCK" -D "$TMP/pull.headers" -o "$TMP/pull.ndjson" \
  -X POST http://moonbox/v1/images/pull -d "{\"reference\":\"$SLOW/test/multi\"}"
cat "$TMP/pull.ndjson" >>"$all_out"
check "pull answers 200" grep -q '^HTTP/1.1 200' "$TMP/pull.headers"
check "pull answers application/x-ndjson" grep -qi '^content-type: application/x-ndjson' "$TMP/pull.headers"
check "every line of the stream is a JSON object" jqe -s 'all(type == "object")' "$TMP/pull.ndjson"
expect_eq "the stream ends with the image" \
  "$(tail -n1 "$TMP/pull.ndjson" | jq -r '.status + " " + .image.id')" "done $multi_id"
check "progress lines carry per-layer bytes while downloading" jqe -s \
  'map(select(.status == "downloading" and (.layers | length) == 5 and .bytes_total > 0 and .bytes_done < .bytes_total)) | length >= 2' \
  "$TMP/pull.ndjson"
check "layers download in parallel (several at once in one progress line)" jqe -s \
  'any(.layers != null and ([.layers[] | select(.status == "downloading" or .status == "verifying")] | length) >= 2)' \
  "$TMP/pull.ndjson"
check "the stream shows the disk being built" jqe -s 'any(.status == "building disk")' "$TMP/pull.ndjson"
check "bytes_done only grows" jqe -s \
  '[.[] | select(.bytes_done != null) | .bytes_done] as $b | $b == ($b | sort)' "$TMP/pull.ndjson"
out=$(call GET "/v1/events?follow=false&type=image.pull.*&limit=10000")
body_of <<<"$out" >"$TMP/pull-events.json"
check "progress and done events are in the event log" jqe --arg id "$multi_id" \
  'any(.type == "image.pull.progress") and any(.type == "image.pull.done" and .data.id == $id)' \
  "$TMP/pull-events.json"

out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$REG_plain/test/busybox\"}")
expect_eq "pull with ?stream=0 answers the record" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .id)" "200 $busybox_id"

# --- list and inspect -------------------------------------------------------------------------
out=$(call GET /v1/images)
expect_eq "list has both images" "$(body_of <<<"$out" | jq -r 'map(.id) | sort | join(" ")')" \
  "$(printf '%s\n' "$busybox_id" "$multi_id" | sort | tr '\n' ' ' | sed 's/ $//')"
out=$(call GET "/v1/images/$REG_plain/test/busybox:latest")
expect_eq "inspect by reference (with / and :)" "$(body_of <<<"$out" | jq -r .id)" "$busybox_id"
rec=$(body_of <<<"$out")
check "the record has config, layers, sizes and digests" jqe \
  '.config.cmd[0] == "/bin/sh" and (.layers | length) == 1 and .layers[0].size > 0 and (.layers[0].digest | startswith("sha256:")) and .size > .layers[0].size and (.manifest_digest | startswith("sha256:")) and (.disk | endswith(".erofs"))' \
  <<<"$rec"
expect_eq "inspect by id" "$(call GET "/v1/images/$busybox_id" | body_of | jq -r .id)" "$busybox_id"
expect_eq "inspect by short id" "$(call GET "/v1/images/${busybox_id:7:12}" | body_of | jq -r .id)" "$busybox_id"
rd=$(jq -r '.repo_digests[0]' <<<"$rec")
expect_eq "inspect by name@digest" "$(call GET "/v1/images/$rd" | body_of | jq -r .id)" "$busybox_id"
enc=$(jq -rn --arg r "$REG_plain/test/busybox:latest" '$r | @uri')
expect_eq "inspect by a URL-encoded reference" "$(call GET "/v1/images/$enc" | body_of | jq -r .id)" "$busybox_id"
out=$(call GET /v1/images/nothing/here:1)
expect_eq "unknown image is 404 not_found" "$(status_of <<<"$out") $(code_of <<<"$out")" "404 not_found"

# --- bad input and registry errors ------------------------------------------------------------
pull0() { call POST "/v1/images/pull" "$@"; }
out=$(pull0 -d '{"reference":"Bad Reference"}')
expect_eq "bad reference is 400 naming the field" \
  "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r '.error.code + " " + .error.field')" "400 invalid reference"
expect_eq "... with the parser's reason" "$(body_of <<<"$out" | jq -r .error.message | cut -c1-11)" "reference: "
out=$(pull0 -d '{}')
expect_eq "missing reference is 400 naming the field" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .error.field)" "400 reference"
out=$(pull0 -d '[1]')
expect_eq "a non-object body is 400" "$(status_of <<<"$out")" 400
out=$(pull0 -d '{"reference":')
expect_eq "malformed JSON is 400" "$(status_of <<<"$out")" 400
out=$(pull0 -d "{\"reference\":\"$REG_plain/test/busybox\",\"auth\":\"x\"}")
expect_eq "auth of the wrong type is 400 naming the field" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .error.field)" "400 auth"
out=$(pull0 -d "{\"reference\":\"$REG_plain/test/busybox\",\"platform\":\"linux\"}")
expect_eq "a bad platform is 400 naming the field" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .error.field)" "400 platform"
out=$(pull0 -d "{\"reference\":\"$REG_plain/test/nope\"}")
expect_eq "unknown image is 404 before any stream" "$(status_of <<<"$out") $(code_of <<<"$out")" "404 not_found"
check "... with the registry's message" grep -q "manifest unknown" <<<"$out"
out=$(pull0 -d "{\"reference\":\"$REG_basic/test/busybox\",\"auth\":{\"username\":\"testuser\",\"password\":\"wrong\"}}")
expect_eq "wrong password is 401" "$(status_of <<<"$out") $(code_of <<<"$out")" "401 unauthorized"
check "... with a clear message" grep -q "incorrect username or password" <<<"$out"
out=$(pull0 -d "{\"reference\":\"$REG_basic/test/busybox\"}")
expect_eq "no credentials for a registry that needs them is 401" "$(status_of <<<"$out")" 401
out=$(pull0 -d "{\"reference\":\"127.0.0.1:$DEAD_PORT/test/busybox\"}")
expect_eq "registry down is 502 unreachable" "$(status_of <<<"$out") $(code_of <<<"$out")" "502 unreachable"
check "... after bounded retries" grep -q "gave up after 5 attempts" <<<"$out"
out=$(pull0 -d "{\"reference\":\"$REG_plain/test/corrupt\"}")
expect_eq "corrupt blob: the stream answers 200 first" "$(status_of <<<"$out")" 200
expect_eq "... and ends with an error object (corrupt, 422)" \
  "$(body_of <<<"$out" | sed "/^$/d" | tail -n1 | jq -r '.status + " " + .error.code + " " + (.error.status | tostring)')" "error corrupt 422"
out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$REG_plain/test/truncated\"}")
expect_eq "truncated blob with ?stream=0 is 422 corrupt" "$(status_of <<<"$out") $(code_of <<<"$out")" "422 corrupt"
bad1=$(field plain corrupt.bad_blob); bad2=$(field plain truncated.bad_blob)
check "rejected blobs are removed, never stored" bash -c \
  "! ls '$MAIN_STATE/images/blobs/sha256' '$MAIN_STATE/images/tmp' | grep -q -e '${bad1#sha256:}' -e '${bad2#sha256:}'"
expect_eq "failed pulls record no image" "$(call GET /v1/images | body_of | jq length)" 2
xra=$(printf '{"username":"testuser","password":"testpass"}' | base64 -w0 | tr '+/' '-_')
out=$(call POST "/v1/images/pull?stream=0" -H "X-Registry-Auth: $xra" -d "{\"reference\":\"$REG_token/private/busybox\"}")
expect_eq "X-Registry-Auth header (token registry, private repo)" "$(status_of <<<"$out")" 200
out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$REG_basic/test/busybox\",\"auth\":{\"username\":\"testuser\",\"password\":\"testpass\"}}")
expect_eq "auth in the body (basic registry)" "$(status_of <<<"$out")" 200

# --- delete -----------------------------------------------------------------------------------
expect_eq "registry.use holds the image" "$(call POST "/v1/t/use/$busybox_id?holder=c1" | body_of | jq -r .id)" "$busybox_id"
out=$(call DELETE "/v1/images/$busybox_id")
expect_eq "delete while in use is 409" "$(status_of <<<"$out") $(code_of <<<"$out")" "409 conflict"
check "... saying so" grep -q "in use" <<<"$out"
expect_eq "... also with force" "$(call DELETE "/v1/images/$busybox_id?force=1" | status_of)" 409
expect_eq "inspect shows the holder" "$(call GET "/v1/images/$busybox_id" | body_of | jq -c '[.in_use, .holders]')" '[1,["c1"]]'
expect_eq "release" "$(call POST "/v1/t/release/$busybox_id?holder=c1" | status_of)" 200
out=$(call DELETE "/v1/images/$busybox_id")
expect_eq "an id with several names needs force (409)" "$(status_of <<<"$out")" 409
out=$(call DELETE "/v1/images/$REG_plain/test/busybox:latest")
expect_eq "delete by reference untags" "$(body_of <<<"$out" | jq -c '[.deleted, .untagged]')" "[false,[\"$REG_plain/test/busybox:latest\"]]"
out=$(call DELETE "/v1/images/$busybox_id?force=1")
expect_eq "force deletes" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .deleted)" "200 true"
expect_eq "the deleted image is 404" "$(call GET "/v1/images/$busybox_id" | status_of)" 404
expect_eq "deleting it again is 404" "$(call DELETE "/v1/images/$busybox_id" | status_of)" 404
out=$(call POST /v1/images/gc)
expect_eq "gc answers its counts" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r 'has("blobs_removed") and has("bytes_freed")')" "200 true"
check "the deleted image's disk is gone" bash -c "! test -e '$MAIN_STATE/images/disks/sha256-${busybox_id#sha256:}.erofs'"

# --- load -------------------------------------------------------------------------------------
out=$(call POST /v1/images/load --data-binary @"$FIXTURE_DIR/busybox-docker.tar")
expect_eq "load a docker-save .tar" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r '.images[0].id')" "200 $busybox_id"
expect_eq "... named as in the archive" "$(body_of <<<"$out" | jq -r '.images[0].references[0]')" docker.io/test/busybox:latest
out=$(call POST /v1/images/load --data-binary @"$FIXTURE_DIR/busybox-docker.tar.gz")
expect_eq "load a docker-save .tar.gz" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r '.images[0].id')" "200 $busybox_id"
out=$(call POST /v1/images/load -H 'Content-Type: application/x-tar' --data-binary @"$FIXTURE_DIR/multi-oci.tar")
expect_eq "load an OCI archive" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r '.images[0].id') $(body_of <<<"$out" | jq '.images[0].layers | length')" "200 $multi_id 5"
expect_eq "loaded images are listed" "$(call GET /v1/images/docker.io/test/busybox:latest | body_of | jq -r .id)" "$busybox_id"
head -c 100000 /dev/urandom >"$TMP/garbage"
out=$(call POST /v1/images/load --data-binary @"$TMP/garbage")
expect_eq "load of garbage is 400" "$(status_of <<<"$out") $(code_of <<<"$out")" "400 invalid"
out=$(call POST /v1/images/load)
expect_eq "load without a body is 400" "$(status_of <<<"$out")" 400
head -c 200000 "$FIXTURE_DIR/busybox-docker.tar" >"$TMP/cut.tar"
out=$(call POST /v1/images/load --data-binary @"$TMP/cut.tar")
expect_eq "load of a truncated archive fails cleanly (4xx)" "$(status_of <<<"$out" | cut -c1)" 4
check "uploads are removed after the request" bash -c "[ -z \"\$(ls -A '$MAIN_STATE/tmp/uploads' 2>/dev/null)\" ]"

# --- registry credentials ---------------------------------------------------------------------
out=$(call POST /v1/registries/login -d "{\"registry\":\"$REG_basic\",\"username\":\"testuser\",\"password\":\"wrong\"}")
expect_eq "login with a wrong password is 401" "$(status_of <<<"$out") $(code_of <<<"$out")" "401 unauthorized"
out=$(call POST /v1/registries/login -d "{\"registry\":\"$REG_basic\",\"username\":\"testuser\"}")
expect_eq "login without a password is 400 naming the field" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .error.field)" "400 password"
out=$(call POST /v1/registries/login -d "{\"registry\":\"127.0.0.1:$DEAD_PORT\",\"username\":\"u\",\"password\":\"p\"}")
expect_eq "login to a registry that is down is 502" "$(status_of <<<"$out")" 502
out=$(call POST /v1/registries/login -d "{\"registry\":\"$REG_basic\",\"username\":\"testuser\",\"password\":\"testpass\"}")
expect_eq "login" "$(status_of <<<"$out")" 200
out=$(call POST /v1/registries/login -d "{\"registry\":\"$REG_token\",\"username\":\"testuser\",\"password\":\"testpass\"}")
expect_eq "login to the token registry" "$(status_of <<<"$out")" 200
out=$(call GET /v1/registries)
expect_eq "registries lists registries and usernames only" "$(body_of <<<"$out" | jq -c 'sort_by(.registry) | map(keys)')" '[["registry","username"],["registry","username"]]'
expect_eq "... the right ones" "$(body_of <<<"$out" | jq -r 'map(.registry + "=" + .username) | sort | join(" ")')" \
  "$(printf '%s\n' "$REG_basic=testuser" "$REG_token=testuser" | sort | tr '\n' ' ' | sed 's/ $//')"
expect_eq "credentials are stored 0600" "$(stat -c %a "$MAIN_STATE/registry/auth.json")" 600
out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$REG_token/private/busybox\"}")
expect_eq "pull with the stored login (token registry)" "$(status_of <<<"$out")" 200
expect_eq "logout" "$(call DELETE "/v1/registries/$REG_basic" | status_of)" 200
expect_eq "logout again is 404" "$(call DELETE "/v1/registries/$REG_basic" | status_of)" 404
expect_eq "logout of the token registry" "$(call DELETE "/v1/registries/$REG_token" | status_of)" 200
expect_eq "no logins left" "$(call GET /v1/registries | body_of)" "[]"
out=$(pull0 -d "{\"reference\":\"$REG_basic/test/busybox\"}")
expect_eq "after logout the registry wants credentials again" "$(status_of <<<"$out")" 401

call GET "/v1/events?follow=false&limit=10000" >"$TMP/events.json"
b64=$(printf testuser:testpass | base64 -w0)
secrets=(-e testpass -e "${b64%=*}" -e "${xra%=*}")
for where in "$MAIN_LOG" "$all_out" "$TMP/events.json"; do
  check "no password in $(basename "$where")" bash -c '! grep -q "${@:2}" "$1"' _ "$where" "${secrets[@]}"
done
check "no password anywhere in the state dir but registry/auth.json" bash -c \
  '! grep -rl -a "${@:2}" "$1" | grep -v "/registry/auth.json$"' _ "$MAIN_STATE" "${secrets[@]}"
check "the log is at debug level (so the grep means something)" grep -q "DEBUG\|debug" "$MAIN_LOG"

# --- a pull cut short by a shutdown resumes after the restart --------------------------------
curl -sN --unix-socket "$D_SOCK" -X POST http://moonbox/v1/images/pull \
  -d "{\"reference\":\"$SLOW/test/zstd\"}" >"$TMP/cut.ndjson" 2>/dev/null &
cut_curl=$!
for _ in $(seq 1 100); do
  grep -q '"bytes_done":[1-9]' "$TMP/cut.ndjson" 2>/dev/null && break
  sleep 0.1
done
check "the slow pull is under way" grep -q '"status":"downloading"' "$TMP/cut.ndjson"
rc=0; stop_daemon || rc=$?
wait "$cut_curl" || true
expect_eq "SIGTERM during a pull exits 0" "$rc" 0
check "only resumable partial downloads are left in images/tmp" bash -c \
  "ls '$MAIN_STATE/images/tmp' | grep -q '\.partial$' && ! ls '$MAIN_STATE/images/tmp' | grep -qv '\.partial$'"
ram_dir=/dev/shm/moonbox-$(printf %s "$MAIN_STATE/images" | sha256sum | cut -c1-16)
# what a crashed daemon would leave: scratch trees on disk and in RAM (swept at start-up)
mkdir -p "$MAIN_STATE/images/tmp/unpack-stale/rootfs/etc" "$ram_dir/unpack-stale/rootfs"
touch -d '1 minute ago' "$MAIN_STATE/images/tmp/unpack-stale" "$ram_dir/unpack-stale"
n_ranges=$(grep -c "range=bytes=" "$TMP/slow.log" || true)
start_daemon main --scripts "$OPS" --log-level debug
check "scratch trees of an earlier run are swept at start-up (disk and RAM)" bash -c \
  "for i in \$(seq 50); do ! test -e '$MAIN_STATE/images/tmp/unpack-stale' && ! test -e '$ram_dir/unpack-stale' && exit 0; sleep 0.1; done; exit 1"
check "... while the partial download stays" bash -c "ls '$MAIN_STATE/images/tmp' | grep -q '\.partial$'"
expect_eq "no image was recorded for the cut pull" \
  "$(call GET "/v1/images/$(field plain zstd.config)" | status_of)" 404
out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$SLOW/test/zstd\"}")
expect_eq "after a restart the pull completes" "$(status_of <<<"$out") $(body_of <<<"$out" | jq -r .id)" "200 $(field plain zstd.config)"
check "... resuming the partial download with Range" test "$(grep -c "range=bytes=" "$TMP/slow.log")" -gt "$n_ranges"
check "... and images/tmp and the RAM scratch are empty again" bash -c "for i in \$(seq 50); do [ -z \"\$(find '$MAIN_STATE/images/tmp' '$ram_dir' -mindepth 1 2>/dev/null)\" ] && exit 0; sleep 0.1; done; exit 1"
stop_daemon

# --- disk full mid-pull: 507, nothing recorded ------------------------------------------------
# images/ on a 2 MiB tmpfs: the blobs fit, the rest does not. With the unpacked tree in RAM
# (the default) mkfs.erofs runs out of room; with scratch="disk" the unpacking does.
mkdir -p "$TMP/small"
if mount -t tmpfs -o size=2m tmpfs "$TMP/small" 2>/dev/null; then
  trap 'rc=$?; set +e; umount "$TMP/small" 2>/dev/null; (exit $rc); cleanup' EXIT
  mkdir -p "$TMP/disk-ops"
  echo 'registry.configure({ scratch = "disk" })' >"$TMP/disk-ops/scratch.lua"
  for mode in ram disk; do
    rm -rf "$TMP/full" && mkdir -p "$TMP/full/state"
    find "$TMP/small" -mindepth 1 -delete
    ln -s "$TMP/small" "$TMP/full/state/images"
    if [ "$mode" = disk ]; then start_daemon full --scripts "$TMP/disk-ops"; else start_daemon full; fi
    out=$(call POST "/v1/images/pull?stream=0" -d "{\"reference\":\"$REG_plain/test/multi\"}")
    expect_eq "disk full mid-pull ($mode scratch) is 507 no_space" "$(status_of <<<"$out") $(code_of <<<"$out")" "507 no_space"
    out=$(call POST "/v1/images/pull" -d "{\"reference\":\"$REG_plain/test/multi\"}")
    expect_eq "... streamed: the error object says 507" "$(body_of <<<"$out" | sed "/^$/d" | tail -n1 | jq -r '.error.code + " " + (.error.status | tostring)')" "no_space 507"
    expect_eq "... and no image is recorded" "$(call GET /v1/images | body_of)" "[]"
    check "... no disk, no scratch tree" bash -c "for i in \$(seq 50); do ! ls '$TMP/small/disks' | grep -q . && ! ls '$TMP/small/tmp' | grep -qv '\.partial$' && exit 0; sleep 0.1; done; exit 1"
    stop_daemon
  done
  umount "$TMP/small"
else
  echo "# skip - disk full (cannot mount a tmpfs)"
fi
finish
