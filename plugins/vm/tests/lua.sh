#!/bin/bash
# Run plugins/vm/vm_test.lua inside the real binary against real microVMs (TCG), with test
# assets built here, then check that nothing (QEMU, files) was left behind.
# usage: lua.sh MOONBOX GUEST_DIR VM_TEST_LUA
set -euo pipefail
MB=$1 GUEST=$2 TEST=$3
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/mbvm-lua.XXXXXX)
case "$tmp" in /tmp/mbvm-lua.*) ;; *) echo "bad temp dir $tmp" >&2; exit 1 ;; esac
cleanup() {
	local rc=$?
	# only QEMUs started under our temp dir (their -pidfile path contains it)
	for p in $(pgrep -f -- "$tmp/state" || true); do
		if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^qemu-system'; then
			echo "# killing leftover QEMU $p" >&2
			kill -9 "$p" 2>/dev/null || true
		fi
	done
	rm -rf -- "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
"$here/mkrootfs.sh" "$tmp/assets" >/dev/null
mkdir -p "$tmp/state"
rc=0
MOONBOX_VM_TEMPLATES_MAX=2 VM_TEST_ASSETS="$tmp/assets" VM_TEST_AGENTCTL="$GUEST/mb-agentctl" \
	"$MB" test --timeout 900 --state-dir "$tmp/state" --guest-dir "$GUEST" \
	--socket "$tmp/mb.sock" "$TEST" || rc=$?
left=0
for p in $(pgrep -f -- "$tmp/state" || true); do
	if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^qemu-system'; then
		left=$((left + 1))
	fi
done
if [[ $left -gt 0 ]]; then
	echo "not ok - $left QEMU process(es) left behind"
	rc=1
else
	echo "ok - no QEMU left behind"
fi
exit $rc
