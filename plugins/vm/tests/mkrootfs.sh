#!/bin/bash
# Build the test assets of plugins/vm into OUT (a fresh directory under /tmp):
#   OUT/lower.erofs    busybox-static container image (erofs, read-only lower disk)
#   OUT/hang.cpio.gz   an initramfs whose /init prints "never-hello" and sleeps forever
#                      (a guest that never answers the host)
# usage: mkrootfs.sh OUT
set -euo pipefail
out="${1:-}"
case "$out" in
"" | "/") echo "mkrootfs.sh: refusing target '$out'" >&2; exit 2 ;;
/tmp/*) ;;
*) echo "mkrootfs.sh: the target must be under /tmp (got $out)" >&2; exit 2 ;;
esac
mkdir -p "$out"
root="$out/rootfs"
[[ -n "$root" && "$root" != "/" ]] || exit 2
rm -rf -- "$root"
mkdir -p "$root"/{bin,etc,root,tmp,home/app,proc,sys,dev,run,var/log}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
	[[ -e "$root/bin/$a" ]] || ln -s busybox "$root/bin/$a"
done
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'app:x:1000:1000:app:/home/app:/bin/sh' \
	>"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'app:x:1000:' >"$root/etc/group"
echo "image-file" >"$root/etc/image-file"
chmod 1777 "$root/tmp"
rm -f -- "$out/lower.erofs"
mkfs.erofs "$out/lower.erofs" "$root" >/dev/null

# the never-hello initramfs: busybox + a shell /init
ir="$out/hang-root"
rm -rf -- "$ir"
mkdir -p "$ir/bin" "$ir/dev" "$ir/proc"
cp /bin/busybox "$ir/bin/busybox"
ln -s busybox "$ir/bin/sh"
printf '%s\n' '#!/bin/sh' '/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null' \
	'echo never-hello > /dev/console' 'exec /bin/busybox sleep 1000000' >"$ir/init"
chmod 755 "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/hang.cpio.gz"
rm -rf -- "$ir"
echo "$out"
