#!/bin/bash
# Build (once per machine) the moonbox guest kernel: an uncompressed, PVH-bootable
# vmlinux made from Debian's linux-source-6.1 with tinyconfig + moonbox.fragment.
#
# Usage: build.sh [--print-path]
#   Prints the path of the cached vmlinux on stdout; build logs go to stderr and to
#   <cache>/<hash>/build.log.
# Environment:
#   MOONBOX_KERNEL_CACHE   cache root (default /var/cache/moonbox/kernel)
#   MOONBOX_KERNEL_SOURCE  source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   MOONBOX_KERNEL_JOBS    make -j (default: number of CPUs)
# The cache key is a hash of the fragment, this script and the source package version,
# so changing any of them builds a new kernel next to the old one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/moonbox.fragment"
script="$here/build.sh"
src_tar="${MOONBOX_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}"
cache_root="${MOONBOX_KERNEL_CACHE:-/var/cache/moonbox/kernel}"
jobs="${MOONBOX_KERNEL_JOBS:-$(nproc)}"

die() {
	echo "kernel/build.sh: $*" >&2
	exit 1
}

# Refuse targets that would make `rm -rf` dangerous.
check_dir() {
	local d="$1"
	[[ -n "$d" ]] || die "empty directory path"
	local r
	r=$(realpath -m -- "$d")
	[[ "$r" != "/" ]] || die "refusing to use / as a build or cache directory"
	[[ "$r" == /* ]] || die "not an absolute path: $d"
}

check_dir "$cache_root"
[[ -r "$src_tar" ]] || die "kernel source not found: $src_tar (apt-get install linux-source-6.1)"
[[ -r "$fragment" ]] || die "missing $fragment"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
if [[ -z "$src_version" ]]; then
	# Not installed from a package: key on the tarball's size and mtime instead.
	src_version=$(stat -c '%s-%Y' "$src_tar")
fi
hash=$( {
	cat "$fragment"
	echo "source-version: $src_version"
	cat "$script"
} | sha256sum | cut -c1-16)

out="$cache_root/$hash"
if [[ -s "$out/vmlinux" ]]; then
	echo "$out/vmlinux"
	exit 0
fi

mkdir -p "$cache_root"
# One builder at a time per hash; the others wait and then find the result.
exec 9>"$cache_root/.lock-$hash"
flock 9
if [[ -s "$out/vmlinux" ]]; then
	echo "$out/vmlinux"
	exit 0
fi

work=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
check_dir "$work"
cleanup() {
	if [[ -n "${work:-}" && "$work" == "$cache_root"/.build-* && -d "$work" ]]; then
		rm -rf -- "$work"
	fi
}
trap cleanup EXIT

log="$work/build.log"
echo "kernel/build.sh: building guest kernel $hash in $work (log: $log)" >&2

{
	echo "== extract $src_tar"
	tar -xJf "$src_tar" -C "$work"
} >>"$log" 2>&1 || {
	tail -n 30 "$log" >&2
	die "extracting the source failed"
}
srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)
[[ -n "$srcdir" ]] || die "no linux-source-* directory in $src_tar"

mk() {
	nice -n 19 make -C "$srcdir" ARCH=x86_64 "$@" >>"$log" 2>&1 || {
		tail -n 40 "$log" >&2
		die "make $* failed (full log: $log)"
	}
}

mk tinyconfig
(cd "$srcdir" && ./scripts/kconfig/merge_config.sh -m .config "$fragment") >>"$log" 2>&1 ||
	die "merge_config failed"
mk olddefconfig

# Every fragment line (including "# CONFIG_X is not set") must be in the final .config.
missing=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qxF -- "$line" "$srcdir/.config" || {
			echo "kernel/build.sh: fragment line did not survive: $line" >&2
			missing=1
		}
		;;
	"# CONFIG_"*" is not set")
		sym=${line#\# }
		sym=${sym%% *}
		if grep -q -- "^$sym=" "$srcdir/.config"; then
			echo "kernel/build.sh: fragment says unset but olddefconfig set: $sym" >&2
			missing=1
		fi
		;;
	esac
done <"$fragment"
[[ $missing -eq 0 ]] || die "config verification failed (see above)"

mk -j"$jobs" vmlinux

# PVH needs the Xen ELF note; refuse a kernel QEMU could not boot directly.
if ! readelf -n "$srcdir/vmlinux" 2>/dev/null | grep -q 'Xen'; then
	die "vmlinux has no PVH (Xen) ELF note"
fi

stage="$work/out"
mkdir -p "$stage"
cp "$srcdir/vmlinux" "$stage/vmlinux"
strip --strip-debug "$stage/vmlinux" 2>/dev/null || true
cp "$srcdir/.config" "$stage/config"
cp "$fragment" "$stage/moonbox.fragment"
echo "$src_version" >"$stage/source-version"
cp "$log" "$stage/build.log"
rm -rf -- "$out"
mv "$stage" "$out"
echo "kernel/build.sh: done: $out/vmlinux" >&2
echo "$out/vmlinux"
