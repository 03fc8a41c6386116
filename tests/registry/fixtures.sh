#!/bin/bash
# Start the test registries (plain, htpasswd basic auth, token auth), fill them with
# hand-built test images, prove they work with skopeo, then run moonbox against them:
#
#   MOONBOX=build/moonbox tests/registry/fixtures.sh lua   # registry_test.lua in `moonbox test`
#   MOONBOX=build/moonbox tests/registry/fixtures.sh api   # the REST API of a real daemon (curl)
#   tests/registry/fixtures.sh --serve                     # start and fill, print the addresses, wait
#   KEEP_FIXTURE=1 ...                                     # keep the temp dir afterwards
#
# Everything binds to 127.0.0.1 and lives in a fresh mktemp -d; only the PIDs this script
# started are stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

serve=0
modes=()
for a in "$@"; do
	case "$a" in
	--serve) serve=1 ;;
	lua | api) modes+=("$a") ;;
	*) echo "usage: fixtures.sh [--serve] [lua] [api]" >&2; exit 2 ;;
	esac
done
if [ "${#modes[@]}" -gt 0 ] && [ -z "${MOONBOX:-}" ]; then
	echo "fixtures.sh: set MOONBOX to the moonbox binary" >&2
	exit 2
fi

fixture_init
trap 'fixture_cleanup' EXIT INT TERM

start_registry plain plain
start_registry basic basic
start_registry token token

py=$FIXTURE_PY
"$py" "$here/make-images.py" "$REG_plain" --storage "$REG_plain_STORAGE" >"$FIXTURE_DIR/plain.json"
"$py" "$here/make-images.py" "$REG_basic" --user testuser --password testpass --set basic \
	>"$FIXTURE_DIR/basic.json"
"$py" "$here/make-images.py" "$REG_token" --user testuser --password testpass --set basic \
	>"$FIXTURE_DIR/token.json"
"$py" "$here/make-images.py" "$REG_token" --user testuser --password testpass --set basic \
	--prefix private >"$FIXTURE_DIR/token-private.json"

pass=0
fail=0
check() { # description, command...
	local what=$1
	shift
	if "$@" >"$FIXTURE_DIR/check.out" 2>&1; then
		pass=$((pass + 1))
		echo "ok   - $what"
	else
		fail=$((fail + 1))
		echo "FAIL - $what"
		sed 's/^/       /' "$FIXTURE_DIR/check.out" | tail -5
	fi
}
not() { ! "$@"; }
sk() { skopeo --override-os linux --override-arch amd64 "$@"; }

check "plain: skopeo inspect busybox" sk inspect --tls-verify=false "docker://$REG_plain/test/busybox:latest"
check "plain: skopeo inspect multi (5 layers)" \
	bash -c "skopeo inspect --tls-verify=false docker://$REG_plain/test/multi:latest | jq -e '.Layers | length == 5'"
check "plain: index resolves to amd64" \
	bash -c "skopeo inspect --tls-verify=false --override-arch amd64 docker://$REG_plain/test/index:latest | jq -e '.Architecture == \"amd64\"'"
check "plain: corrupt blob is refused by skopeo" \
	not sk copy -q --src-tls-verify=false "docker://$REG_plain/test/corrupt:latest" "oci:$FIXTURE_DIR/oci-corrupt:latest"
check "basic: anonymous is refused" \
	not sk inspect --tls-verify=false "docker://$REG_basic/test/busybox:latest"
check "basic: right password works" \
	sk inspect --tls-verify=false --creds testuser:testpass "docker://$REG_basic/test/busybox:latest"
check "token: anonymous pull of private/busybox is denied" \
	not sk inspect --tls-verify=false "docker://$REG_token/private/busybox:latest"
check "token: private/busybox with credentials" \
	sk inspect --tls-verify=false --creds testuser:testpass "docker://$REG_token/private/busybox:latest"

# Archives made by skopeo: docker save format (legacy layout, symlinks) and OCI archive.
# (skopeo cannot write zstd layers into a docker archive, so that one holds busybox.)
check "archives: docker-archive and oci-archive written by skopeo" bash -c "
	skopeo copy -q --src-tls-verify=false 'docker://$REG_plain/test/busybox:latest' \
		'docker-archive:$FIXTURE_DIR/busybox-docker.tar:test/busybox:latest' &&
	skopeo copy -q --src-tls-verify=false 'docker://$REG_plain/test/multi:latest' \
		'oci-archive:$FIXTURE_DIR/multi-oci.tar:test/multi:latest' &&
	gzip -k '$FIXTURE_DIR/busybox-docker.tar'"

# ~/.docker/config.json naming the basic registry as localhost:PORT (an alias, so that the
# 127.0.0.1:PORT tests still run without credentials)
mkdir -p "$FIXTURE_DIR/home/.docker"
REG_basic_alias="localhost:${REG_basic##*:}"
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REG_basic_alias" "$(printf testuser:testpass | base64 -w0)" \
	>"$FIXTURE_DIR/home/.docker/config.json"

# a front that answers 503 twice, then redirects to the plain registry (logs Range headers)
start_front() {
	local port
	port=$(free_port)
	"$FIXTURE_PY" "$here/redirect-server.py" --addr "127.0.0.1:$port" --target "$REG_plain" \
		--fail-first 2 2>"$FIXTURE_DIR/redirect.log" &
	echo $! >>"$FIXTURE_DIR/pids"
	for _ in $(seq 1 50); do
		# a raw connect: any HTTP request would use up the front's 503s
		"$FIXTURE_PY" -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
		sleep 0.1
	done
	REG_redirect=127.0.0.1:$port
}

export FIXTURE_DIR REG_plain REG_basic REG_token REG_basic_alias
export REG_plain_STORAGE TOKEN_LOG="$FIXTURE_DIR/token/token.log"
export DEAD_PORT REDIRECT_LOG="$FIXTURE_DIR/redirect.log"
DEAD_PORT=$(free_port) # nothing listens there

for mode in "${modes[@]}"; do
	case "$mode" in
	lua)
		start_front
		export REG_redirect MBR_STATE="$FIXTURE_DIR/lua-state"
		mkdir -p "$MBR_STATE" "$FIXTURE_DIR/ram-tiny"
		# a RAM scratch with room for bytes but only 8 inodes (needs mount rights)
		if mount -t tmpfs -o size=512m,nr_inodes=8,mode=0700 tmpfs "$FIXTURE_DIR/ram-tiny" 2>/dev/null; then
			export RAM_TINY="$FIXTURE_DIR/ram-tiny"
		fi
		if HOME="$FIXTURE_DIR/home" "$MOONBOX" test --state-dir "$MBR_STATE" --timeout 300 \
			"$here/registry_test.lua" >"$FIXTURE_DIR/lua.out" 2>&1; then
			pass=$((pass + 1))
			echo "ok   - registry_test.lua in moonbox test: $(tail -1 "$FIXTURE_DIR/lua.out")"
		else
			fail=$((fail + 1))
			echo "FAIL - registry_test.lua in moonbox test"
		fi
		sed 's/^/       /' "$FIXTURE_DIR/lua.out"
		;;
	api)
		if HOME="$FIXTURE_DIR/home" bash "$here/api-tests.sh" "$MOONBOX"; then
			pass=$((pass + 1))
			echo "ok   - api-tests.sh"
		else
			fail=$((fail + 1))
			echo "FAIL - api-tests.sh"
		fi
		;;
	esac
done
echo "fixtures: $pass passed, $fail failed"

if [ "$serve" = 1 ]; then
	echo "REG_plain=$REG_plain REG_basic=$REG_basic REG_token=$REG_token FIXTURE_DIR=$FIXTURE_DIR"
	echo "serving; Ctrl-C to stop"
	sleep infinity &
	echo $! >>"$FIXTURE_DIR/pids"
	wait $! || true
fi
[ "$fail" -eq 0 ]
