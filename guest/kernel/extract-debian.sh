#!/bin/bash
# Extract the uncompressed, PVH-bootable vmlinux from Debian's linux-image-cloud-amd64
# bzImage (QEMU microvm boots the ELF directly, skipping decompression under TCG).
#
# Usage: extract-debian.sh OUT_VMLINUX [KERNEL_RELEASE]
#   Prints the kernel release (for /lib/modules/<release>) on stdout.
set -euo pipefail

out="${1:-}"
[[ -n "$out" ]] || { echo "usage: $0 OUT_VMLINUX [RELEASE]" >&2; exit 2; }
[[ "$(realpath -m -- "$out")" != "/" ]] || { echo "refusing to write to /" >&2; exit 2; }

release="${2:-}"
if [[ -z "$release" ]]; then
	# Newest installed cloud kernel.
	release=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' -printf '%f\n' |
		sed 's/^vmlinuz-//' | sort -V | tail -n 1)
fi
[[ -n "$release" ]] || { echo "no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)" >&2; exit 1; }
bz="/boot/vmlinuz-$release"
[[ -r "$bz" ]] || { echo "cannot read $bz" >&2; exit 1; }

tmp="$out.tmp.$$"
trap 'rm -f -- "$tmp"' EXIT
# Debian compresses the payload with LZ4 (legacy frame, magic 02 21 4c 18).
off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$bz" | head -n 1 | cut -d: -f1)
[[ -n "$off" ]] || { echo "no LZ4 payload found in $bz" >&2; exit 1; }
# lz4 stops at the end of the frame; trailing data makes it complain, hence || true.
tail -c +$((off + 1)) "$bz" | lz4 -dc >"$tmp" 2>/dev/null || true
if ! readelf -n "$tmp" 2>/dev/null | grep -q Xen; then
	echo "extracted kernel from $bz is not a PVH ELF" >&2
	exit 1
fi
mv -f -- "$tmp" "$out"
trap - EXIT
echo "$release"
