#!/bin/bash
# Runs net_test.lua (the net and volume Lua APIs and REST endpoints, no VMs) in a moonbox
# runtime with test-only names, and removes whatever it made even if the test dies.
# usage: api_test.sh MOONBOX NETTOOL TEST.lua...
set -euo pipefail
mb=$1 nettool=$2
shift 2
if [[ $(id -u) != 0 ]] || ! command -v nft >/dev/null || ! command -v ip >/dev/null; then
	echo "skip: needs root, ip and nft"
	exit 77
fi
exec 9>/tmp/moonbox-net-apitest.lock
flock 9
TABLE=moonbox_tapi
tmp=$(mktemp -d /tmp/mb-netapi.XXXXXXXX)
cleanup() {
	local rc=$?
	set +e
	if [[ -f "$tmp/pids" ]]; then
		while read -r p; do [[ -n "$p" ]] && kill "$p" 2>/dev/null; done <"$tmp/pids"
	fi
	for l in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^mbr' || true); do
		ip link del "$l" 2>/dev/null
	done
	nft delete table inet "$TABLE" 2>/dev/null
	nft delete table bridge "$TABLE" 2>/dev/null
	[[ -n "$tmp" && "$tmp" == /tmp/mb-netapi.* && -d "$tmp" ]] && rm -rf -- "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
touch "$tmp/pids"
export MOONBOX_NET_DEFAULT_BRIDGE=mbr0 MOONBOX_NET_BRIDGE_PREFIX=mbrn MOONBOX_NET_TAP_PREFIX=mbrt \
	MOONBOX_NET_TABLE=$TABLE MOONBOX_NET_DEFAULT_SUBNET=10.254.0.0/16 MOONBOX_NET_POOL=10.250.0.0/16 \
	MOONBOX_NET_UDP_IDLE_MS=300 MOONBOX_NET_UPLINK_FORWARDING=off MB_NETTOOL="$nettool" MB_PIDS="$tmp/pids"
mkdir -p "$tmp/state"
"$mb" test --state-dir "$tmp/state" --socket "$tmp/api.sock" --timeout 300 "$@"
