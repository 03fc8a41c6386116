# Sourced by fixtures.sh when MBR_PULL is set: runs the registry engine (through the
# standalone driver mbr-pull, on its private curl-multi loop) against the fixtures.
# Uses check/not/pass/fail and the REG_* variables from fixtures.sh.

state="$FIXTURE_DIR/state"
mkdir -p "$state"
escape=/tmp/moonbox-fixture-escape

pull() {
	if [ "${1:-}" = --state ]; then "$MBR_PULL" "$@"; else "$MBR_PULL" --state "$state" "$@"; fi
}
# expect_ok REF [opts]: the pull succeeds and its disk exists
expect_ok() {
	local out
	out=$(pull "$@") || { echo "$out"; return 1; }
	echo "$out" | jq -e '.ok and (.disk | length > 0)' >/dev/null || { echo "$out"; return 1; }
	test -s "$(echo "$out" | jq -r .disk)"
}
# expect_code CODE MESSAGE-PART REF [opts]
expect_code() {
	local code=$1 part=$2 out
	shift 2
	out=$(pull "$@") && { echo "unexpected success: $out"; return 1; }
	echo "$out" | jq -e --arg c "$code" --arg m "$part" \
		'(.ok == false) and (.code == $c) and (.message | contains($m))' >/dev/null ||
		{ echo "$out"; return 1; }
}
field() { jq -r ".$2" "$FIXTURE_DIR/$1.json"; }
mnt_or_extract() { # erofs image -> directory with its tree
	local img=$1 dir=$2
	mkdir -p "$dir"
	if mount -t erofs -o loop,ro "$img" "$dir" 2>/dev/null; then
		echo "$dir" >>"$FIXTURE_DIR/mounts"
	else
		fsck.erofs --extract="$dir" "$img" >/dev/null
	fi
}
cleanup_mounts() {
	if [ -f "$FIXTURE_DIR/mounts" ]; then
		while read -r m; do umount "$m" 2>/dev/null || true; done <"$FIXTURE_DIR/mounts"
		rm -f "$FIXTURE_DIR/mounts"
	fi
}

check "pull busybox (docker schema2, gzip)" expect_ok "$REG_plain/test/busybox"
check "pull busybox again is cached" \
	bash -c "'$MBR_PULL' --state '$state' '$REG_plain/test/busybox' | jq -e '.cached == true'"
check "pull busybox-oci (OCI manifest without mediaType)" expect_ok "$REG_plain/test/busybox-oci"
check "pull multi (whiteouts, opaque, hardlinks, PAX, zstd, plain)" expect_ok "$REG_plain/test/multi"
check "pull zstd-only image" expect_ok "$REG_plain/test/zstd"
check "pull uncompressed image" expect_ok "$REG_plain/test/plain"
check "pull by digest" expect_ok "$REG_plain/test/busybox@$(field plain busybox.manifest)"
check "wrong digest is refused" expect_code not_found "manifest" \
	"$REG_plain/test/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
check "OCI index resolves to linux/amd64" \
	bash -c "'$MBR_PULL' --state '$state' '$REG_plain/test/index' | jq -e --arg c '$(field plain index.config)' '.id == \$c and .config.cmd[1] == \"amd64\"'"
check "OCI index with --platform linux/arm64" \
	bash -c "'$MBR_PULL' --state '$state' --platform linux/arm64 '$REG_plain/test/index' | jq -e --arg c '$(field plain index.arm64_config)' '.id == \$c'"
check "index without the platform is not_found" expect_code not_found "no manifest for linux/s390x" \
	--platform linux/s390x "$REG_plain/test/index"
check "Docker manifest list resolves to linux/amd64" \
	bash -c "'$MBR_PULL' --state '$state' '$REG_plain/test/dockerlist' | jq -e --arg c '$(field plain dockerlist.config)' '.id == \$c'"
check "three images at once share the busybox layer" \
	bash -c "'$MBR_PULL' --state '$FIXTURE_DIR/state-par' '$REG_plain/test/zstd' '$REG_plain/test/busybox' '$REG_plain/test/busybox-oci' | jq -s -e 'length == 3 and all(.ok)'"

multi_disk=$(pull "$REG_plain/test/multi" | jq -r .disk)
tree="$FIXTURE_DIR/multi-tree"
mnt_or_extract "$multi_disk" "$tree"
check "multi: whiteout removed data/remove-me and data/olddir" \
	bash -c "test -e '$tree/data/keep' && ! test -e '$tree/data/remove-me' && ! test -e '$tree/data/olddir'"
check "multi: opaque dir keeps only the upper layer" \
	bash -c "test \"\$(ls -A '$tree/opaque')\" = upper"
check "multi: no whiteout files in the image" \
	bash -c "! find '$tree' -name '.wh.*' | grep -q ."
check "multi: hard link shares the inode, setuid kept" \
	bash -c "test \"\$(stat -c %i '$tree/usr-bin-tool')\" = \"\$(stat -c %i '$tree/tool-hardlink')\" && test \"\$(stat -c %a '$tree/usr-bin-tool')\" = 4755"
check "multi: owners and modes" \
	bash -c "test \"\$(stat -c %u:%g:%a '$tree/home/user')\" = 1000:1000:750"
check "multi: symlinks kept as written" \
	bash -c "test \"\$(readlink '$tree/abs-link')\" = /etc/os-release && test \"\$(readlink '$tree/rel-link')\" = etc/os-release"
check "multi: PAX long path, zstd and plain layers" \
	bash -c "test \"\$(cat '$tree/$(field plain multi.longdir)/deep-file')\" = deep && test -f '$tree/zstd/hello' && test -f '$tree/plain/hello'"
cleanup_mounts

check "unknown image is not_found with the registry's message" \
	expect_code not_found "manifest unknown" "$REG_plain/test/nope"
check "corrupt blob is rejected (corrupt)" expect_code corrupt "digest mismatch" "$REG_plain/test/corrupt"
check "truncated blob is rejected (corrupt)" expect_code corrupt "truncated" "$REG_plain/test/truncated"
check "rejected blobs are not in the store, no partial files left" \
	bash -c "! test -e '$state/images/blobs/sha256/$(field plain corrupt.bad_blob | cut -d: -f2)' && ! test -e '$state/images/blobs/sha256/$(field plain truncated.bad_blob | cut -d: -f2)' && ! ls '$state/images/tmp' | grep -q ."
dead=$(free_port)
check "registry down: unreachable after bounded retries" \
	bash -c "MBR_RETRIES=2 '$MBR_PULL' --state '$state' '127.0.0.1:$dead/test/busybox' | jq -e '.code == \"unreachable\" and (.message | contains(\"gave up after 3 attempts\"))'"
check "invalid reference is invalid" expect_code invalid "lowercase" "$REG_plain/Test/Busybox"

for evil in dotdot hardlink whiteout-dotdot longname symlink symlink-rel; do
	check "malicious layer ($evil) is refused" expect_code invalid "layer" "$REG_plain/test/evil-$evil"
done
check "absolute paths land inside the root" expect_ok "$REG_plain/test/evil-absolute"
check "device nodes are skipped" expect_ok "$REG_plain/test/evil-device"
check "nothing escaped to $escape" not test -e "$escape"

check "basic: anonymous is unauthorized" expect_code unauthorized "authentication required" \
	"$REG_basic/test/busybox"
check "basic: wrong password is unauthorized" expect_code unauthorized "incorrect username or password" \
	--user testuser --password wrong "$REG_basic/test/busybox"
check "basic: right password pulls" expect_ok --user testuser --password testpass "$REG_basic/test/busybox"
check "token: anonymous pull" expect_ok "$REG_token/test/busybox"
check "token: private repo needs credentials" expect_code unauthorized "pull access denied" \
	"$REG_token/private/busybox"
check "token: wrong password is unauthorized" expect_code unauthorized "incorrect username or password" \
	--user testuser --password wrong "$REG_token/private/busybox"
check "token: private repo with credentials" expect_ok --user testuser --password testpass \
	"$REG_token/private/busybox"
check "token: unknown image is not_found" expect_code not_found "manifest unknown" "$REG_token/test/nope"

# redirects (as to blob storage) and transient 503s before them
rport=$(free_port)
"$FIXTURE_PY" "$here/redirect-server.py" --addr "127.0.0.1:$rport" --target "$REG_plain" \
	--fail-first 2 2>"$FIXTURE_DIR/redirect.log" &
echo $! >>"$FIXTURE_DIR/pids"
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$rport/" && break; sleep 0.1; done
check "503s are retried, then redirects are followed" \
	bash -c "'$MBR_PULL' --state '$FIXTURE_DIR/state-redirect' '127.0.0.1:$rport/test/busybox' | jq -e '.ok'"
check "the front really answered 503 and 307" \
	bash -c "grep -q '\" 503 ' '$FIXTURE_DIR/redirect.log' && grep -q '\" 307 ' '$FIXTURE_DIR/redirect.log'"

# resuming: a partial download left by an earlier run continues with Range
rstate="$FIXTURE_DIR/state-resume"
mkdir -p "$rstate/images/tmp"
layer=$(curl -s -H "Accept: application/vnd.docker.distribution.manifest.v2+json" \
	"http://$REG_plain/v2/test/busybox/manifests/latest" | jq -r '.layers[0].digest')
curl -s -o "$rstate/images/tmp/${layer#sha256:}.partial" "http://$REG_plain/v2/test/busybox/blobs/$layer"
truncate -s 300000 "$rstate/images/tmp/${layer#sha256:}.partial"
check "a partial blob is resumed (Range) and verified" \
	bash -c "'$MBR_PULL' --state '$rstate' '$REG_plain/test/busybox' | jq -e '.ok'"
rstate2="$FIXTURE_DIR/state-resume-bad"
mkdir -p "$rstate2/images/tmp"
head -c 300000 /dev/zero >"$rstate2/images/tmp/${layer#sha256:}.partial"
check "a partial blob with wrong bytes fails verification and is dropped" \
	expect_code corrupt "digest mismatch" --state "$rstate2" "$REG_plain/test/busybox"
check "... and the next pull starts over and succeeds" expect_ok --state "$rstate2" "$REG_plain/test/busybox"

# cancelling running pulls at various points: nothing but resumable partials stays behind
cstate="$FIXTURE_DIR/state-cancel"
cancel_ok=1
for ms in 0 10 30 80; do
	"$MBR_PULL" --state "$cstate" --cancel-after "$ms" "$REG_plain/test/multi" \
		"$REG_plain/test/busybox-oci" >/dev/null 2>"$FIXTURE_DIR/cancel.err" || cancel_ok=0
	if ls "$cstate/images/tmp" | grep -qv '\.partial$'; then cancel_ok=0; fi
done
check "cancelled pulls leave only resumable partial files" test "$cancel_ok" = 1
check "... and a later pull completes" expect_ok --state "$cstate" "$REG_plain/test/multi"

# archives made by skopeo: docker save format (legacy layout, symlinks) and OCI archive.
# (skopeo cannot write zstd layers into a docker archive, so that one holds busybox.)
skopeo copy -q --src-tls-verify=false "docker://$REG_plain/test/busybox:latest" \
	"docker-archive:$FIXTURE_DIR/busybox-docker.tar:test/busybox:latest" >/dev/null 2>&1 || true
skopeo copy -q --src-tls-verify=false "docker://$REG_plain/test/multi:latest" \
	"oci-archive:$FIXTURE_DIR/multi-oci.tar:test/multi:latest" >/dev/null 2>&1 || true
gzip -k "$FIXTURE_DIR/busybox-docker.tar" 2>/dev/null || true
check "load docker-archive (.tar) gives the pulled image id" \
	bash -c "'$MBR_PULL' --state '$FIXTURE_DIR/state-load' --load '$FIXTURE_DIR/busybox-docker.tar' | jq -e --arg c '$(field plain busybox.config)' '.ok and .id == \$c'"
check "load docker-archive (.tar.gz)" \
	bash -c "'$MBR_PULL' --state '$FIXTURE_DIR/state-load2' --load '$FIXTURE_DIR/busybox-docker.tar.gz' | jq -e '.ok'"
check "load OCI archive (multi: gzip, zstd and plain layers)" \
	bash -c "'$MBR_PULL' --state '$FIXTURE_DIR/state-load' --load '$FIXTURE_DIR/multi-oci.tar' | jq -e --arg c '$(field plain multi.config)' '.ok and .layers == 5 and .id == \$c'"

# disk full: a 3 MiB tmpfs as the state dir (needs mount rights; skipped otherwise)
small="$FIXTURE_DIR/small"
mkdir -p "$small"
if mount -t tmpfs -o size=3m tmpfs "$small" 2>/dev/null; then
	echo "$small" >>"$FIXTURE_DIR/mounts"
	check "disk full mid-pull is no_space" expect_code no_space "space" --state "$small" \
		"$REG_plain/test/multi"
	check "disk full leaves no partial image (no disk, no scratch)" \
		bash -c "! ls '$small/images/disks' | grep -q . && ! ls '$small/images/tmp' | grep -qv partial"
	cleanup_mounts
else
	echo "skip - disk full (cannot mount tmpfs)"
fi

# The plugin itself, loaded by mbr-fakehost (a stand-in for the core) and driven from Lua.
if [ -n "${MBR_FAKEHOST:-}" ] && [ -n "${MBR_PLUGIN:-}" ]; then
	pstate="$FIXTURE_DIR/plugin-state"
	mkdir -p "$pstate"
	# a ~/.docker/config.json naming the basic registry as localhost:PORT (an alias, so
	# that the 127.0.0.1:PORT tests still run without credentials)
	mkdir -p "$FIXTURE_DIR/home/.docker"
	alias_basic="localhost:${REG_basic##*:}"
	printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$alias_basic" "$(printf testuser:testpass | base64 -w0)" \
		>"$FIXTURE_DIR/home/.docker/config.json"
	if HOME="$FIXTURE_DIR/home" REG_plain=$REG_plain REG_basic=$REG_basic REG_token=$REG_token \
		REG_basic_alias=$alias_basic MBR_STATE=$pstate \
		"$MBR_FAKEHOST" "$MBR_PLUGIN" "$pstate" "$here/plugin_test.lua" >"$FIXTURE_DIR/plugin.out" 2>&1; then
		pass=$((pass + 1))
		echo "ok   - plugin Lua module (fakehost): $(tail -1 "$FIXTURE_DIR/plugin.out")"
	else
		fail=$((fail + 1))
		echo "FAIL - plugin Lua module (fakehost)"
	fi
	grep -E "^(FAIL|task error)" -A3 "$FIXTURE_DIR/plugin.out" | sed 's/^/       /' || true
fi
