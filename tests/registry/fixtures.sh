#!/bin/bash
# Start the three test registries (plain, htpasswd basic auth, token auth), fill them
# with hand-built test images and prove they work with skopeo. Then, if MBR_PULL is set
# (the path of the standalone driver built from plugins/registry/tests), run it against
# them: see pull-tests.sh.
#
#   tests/registry/fixtures.sh                 # start, fill, check, stop
#   KEEP_FIXTURE=1 tests/registry/fixtures.sh  # keep the temp dir (registries are stopped)
#   tests/registry/fixtures.sh --serve         # start and fill, print the addresses, wait
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

fixture_init
trap 'cleanup_mounts 2>/dev/null || true; fixture_cleanup' EXIT INT TERM

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
check "plain: skopeo inspect multi (4 layers)" \
	bash -c "skopeo inspect --tls-verify=false docker://$REG_plain/test/multi:latest | jq -e '.Layers | length == 5'"
check "plain: index resolves to amd64" \
	bash -c "skopeo inspect --tls-verify=false --override-arch amd64 docker://$REG_plain/test/index:latest | jq -e '.Architecture == \"amd64\"'"
check "plain: raw index has 3 entries" \
	bash -c "skopeo inspect --raw --tls-verify=false docker://$REG_plain/test/index:latest | jq -e '.manifests | length == 3'"
check "plain: copy busybox to an OCI layout" \
	sk copy -q --src-tls-verify=false "docker://$REG_plain/test/busybox:latest" "oci:$FIXTURE_DIR/oci-busybox:latest"
check "plain: copy multi (gzip+zstd+plain layers)" \
	sk copy -q --src-tls-verify=false "docker://$REG_plain/test/multi:latest" "oci:$FIXTURE_DIR/oci-multi:latest"
check "plain: corrupt blob is refused by skopeo" \
	not sk copy -q --src-tls-verify=false "docker://$REG_plain/test/corrupt:latest" "oci:$FIXTURE_DIR/oci-corrupt:latest"
check "plain: unknown image is MANIFEST_UNKNOWN" \
	bash -c "curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://$REG_plain/v2/test/nope/manifests/latest | grep -q MANIFEST_UNKNOWN"
check "basic: anonymous is refused" \
	not sk inspect --tls-verify=false "docker://$REG_basic/test/busybox:latest"
check "basic: wrong password is refused" \
	not sk inspect --tls-verify=false --creds testuser:wrong "docker://$REG_basic/test/busybox:latest"
check "basic: right password works" \
	sk inspect --tls-verify=false --creds testuser:testpass "docker://$REG_basic/test/busybox:latest"
check "token: anonymous pull of test/busybox" \
	sk inspect --tls-verify=false "docker://$REG_token/test/busybox:latest"
check "token: anonymous pull of private/busybox is denied" \
	not sk inspect --tls-verify=false "docker://$REG_token/private/busybox:latest"
check "token: private/busybox with credentials" \
	sk inspect --tls-verify=false --creds testuser:testpass "docker://$REG_token/private/busybox:latest"
check "token: wrong password is refused" \
	not sk inspect --tls-verify=false --creds testuser:nope "docker://$REG_token/private/busybox:latest"

if [ -n "${MBR_PULL:-}" ]; then
	. "$here/pull-tests.sh"
fi

echo "$pass passed, $fail failed"
if [ "${1:-}" = "--serve" ]; then
	echo "REG_plain=$REG_plain REG_basic=$REG_basic REG_token=$REG_token FIXTURE_DIR=$FIXTURE_DIR"
	echo "serving; Ctrl-C to stop"
	sleep infinity &
	echo $! >>"$FIXTURE_DIR/pids"
	wait $! || true
fi
[ "$fail" -eq 0 ]
