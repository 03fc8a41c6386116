#!/bin/bash
# Boot a real moonbox microVM under QEMU/TCG (no daemon) and drive moonbox-init with
# mb-agentctl: authentication both ways, run/exec/stdio/pty/signals/stats/files/shutdown.
# The rootfs is a busybox-static tree built here (erofs lower + empty ext4 upper).
#
# usage: vm_test.sh --flavor custom|debian --kernel VMLINUX --initrd BASE.cpio.gz
#                   --ctl mb-agentctl --mkinitramfs mb-mkinitramfs [--qemu qemu-system-x86_64]
# Prints one "ok"/"not ok" line per check and "N passed, N failed" at the end.
set -euo pipefail

flavor="" kernel="" initrd="" ctl="" mk="" qemu="qemu-system-x86_64"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--flavor) flavor="$2"; shift 2 ;;
	--kernel) kernel="$2"; shift 2 ;;
	--initrd) initrd="$2"; shift 2 ;;
	--ctl) ctl="$2"; shift 2 ;;
	--mkinitramfs) mk="$2"; shift 2 ;;
	--qemu) qemu="$2"; shift 2 ;;
	*) echo "unknown argument $1" >&2; exit 2 ;;
	esac
done
for v in flavor kernel initrd ctl mk; do
	[[ -n "${!v}" ]] || { echo "missing --$v" >&2; exit 2; }
done
for f in "$kernel" "$initrd" "$ctl" "$mk"; do
	[[ -e "$f" ]] || { echo "missing $f (build first)" >&2; exit 2; }
done

tmp=$(mktemp -d /tmp/mb-vmtest.XXXXXXXX)
qemu_pid=""
cleanup() {
	if [[ -n "$qemu_pid" ]] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	if [[ -n "$tmp" && "$tmp" == /tmp/mb-vmtest.* && -d "$tmp" ]]; then
		rm -rf -- "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

pass=0
fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
bad() {
	echo "not ok - $*"
	fail=$((fail + 1))
}
# check NAME COMMAND...: the command's success is the check.
check() {
	local name="$1"
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}
contains() { grep -qF -- "$2" <<<"$1"; }
jget() { jq -r "$2" <<<"$1"; }

# --- host TSC frequency (tsc_early_khz, research/vm.md §0) ------------------------------
tsc_khz() {
	local mhz
	mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n 1 || true)
	[[ -n "$mhz" ]] || mhz=$(awk -F': ' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo)
	awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }'
}

# --- the container image: busybox-static --------------------------------------------
root="$tmp/rootfs"
mkdir -p "$root"/{bin,etc,root,tmp,home/app,proc,sys,dev,run,var/log}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
	[[ -e "$root/bin/$a" ]] || ln -s busybox "$root/bin/$a"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app user:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
app:x:1000:
extra:x:2000:app
nogroup:x:65534:
GROUP
echo "image-file" >"$root/etc/image-file"
chmod 1777 "$root/tmp"
chown 1000:1000 "$root/home/app"
mkfs.erofs "$tmp/lower.erofs" "$root" >/dev/null
truncate -s 64M "$tmp/upper.ext4"
mkfs.ext4 -q -F "$tmp/upper.ext4"
mkdir -p "$tmp/volsrc"
echo "volume-data" >"$tmp/volsrc/vol-file"
truncate -s 16M "$tmp/vol.ext4"
mkfs.ext4 -q -F -d "$tmp/volsrc" "$tmp/vol.ext4"
mkdir -p "$tmp/share"
echo "shared-from-host" >"$tmp/share/share-file"

# --- per-VM boot config, appended to the base initramfs as a second archive --------------
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
mounts='[{"type":"block","serial":"vol1","fstype":"ext4","target":"/data"}'
if [[ "$flavor" == custom ]]; then
	mounts+=',{"type":"9p","tag":"hostshare","target":"/host","ro":true}'
fi
mounts+=']'
cat >"$tmp/boot.json" <<JSON
{"version": 1, "token": "$token", "hostname": "testvm",
 "network": {"mac": "52:54:00:12:34:56", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
             "address6": "fec0::15/64", "gateway6": "fec0::2",
             "dns": ["10.0.2.3"], "mtu": 1500},
 "agent": {"port": 1025},
 "root": {"type": "overlay", "lower": "lower", "upper": "upper"},
 "mounts": $mounts}
JSON
"$mk" --boot-config "$tmp/boot.json" -o "$tmp/boot.cpio"
cat "$initrd" "$tmp/boot.cpio" >"$tmp/initrd"

khz=$(tsc_khz)
append="console=ttyS0 panic=-1 reboot=t tsc_early_khz=$khz tsc=reliable cryptomgr.notests"
machine="microvm,x-option-roms=off"
if [[ "$flavor" == custom ]]; then
	machine+=",acpi=off"
	append+=" no_timer_check quiet"
else
	append+=" quiet init_on_alloc=0 mitigations=off"
fi

boot() {
	local tries=0
	while :; do
		port=$((20000 + RANDOM % 30000))
		local extra=()
		if [[ "$flavor" == custom ]]; then
			extra+=(-fsdev "local,id=fs0,path=$tmp/share,security_model=none,readonly=on"
				-device virtio-9p-device,fsdev=fs0,mount_tag=hostshare)
		fi
		"$qemu" -M "$machine" -accel tcg,tb-size=64 -cpu qemu64,+arat -m 256 -smp 1 \
			-no-user-config -display none -monitor none -no-reboot \
			-serial "file:$tmp/console.log" \
			-kernel "$kernel" -initrd "$tmp/initrd" -append "$append" \
			-drive "id=lo,file=$tmp/lower.erofs,format=raw,if=none,readonly=on" \
			-device virtio-blk-device,drive=lo,serial=lower \
			-drive "id=up,file=$tmp/upper.ext4,format=raw,if=none" \
			-device virtio-blk-device,drive=up,serial=upper \
			-drive "id=v1,file=$tmp/vol.ext4,format=raw,if=none" \
			-device virtio-blk-device,drive=v1,serial=vol1 \
			-netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-10.0.2.15:1025" \
			-device virtio-net-device,netdev=n0,mac=52:54:00:12:34:56 \
			-object rng-random,id=rng0,filename=/dev/urandom \
			-device virtio-rng-device,rng=rng0 \
			"${extra[@]}" 2>"$tmp/qemu.err" &
		qemu_pid=$!
		sleep 0.3
		if kill -0 "$qemu_pid" 2>/dev/null; then
			return 0
		fi
		wait "$qemu_pid" 2>/dev/null || true
		qemu_pid=""
		tries=$((tries + 1))
		if [[ $tries -ge 5 ]] || ! grep -q 'hostfwd\|Could not set up host forwarding' "$tmp/qemu.err"; then
			cat "$tmp/qemu.err" >&2
			return 1
		fi
	done
}

show_console() {
	echo "----- guest console ($flavor) -----"
	cat "$tmp/console.log" 2>/dev/null | tail -n 60 || true
	echo "-----------------------------------"
}

on_error() {
	echo "not ok - the script failed at line $1" >&2
	show_console >&2
	echo "$flavor: $pass passed, $((fail + 1)) failed"
}
trap 'on_error $LINENO' ERR

echo "# flavor=$flavor kernel=$kernel tsc_early_khz=$khz"
boot
A=(--addr "tcp://127.0.0.1:$port" --token "$token")
C() { "$ctl" "${A[@]}" "$@"; }

# --- authentication -------------------------------------------------------------------
if out=$("$ctl" "${A[@]}" --wait-ready-ms 120000 hello); then
	check "hello with the right token" test "$(jget "$out" .version)" = 1
else
	bad "hello with the right token"
	show_console
	echo "$pass passed, $fail failed"
	exit 1
fi
if out=$("$ctl" --addr "tcp://127.0.0.1:$port" --token "wrong-token-0123456789" ping 2>&1); then
	bad "host detects an agent that does not prove the host's token"
else
	check "host detects an agent that does not prove the host's token" \
		contains "$out" "agent failed authentication"
fi
if out=$("$ctl" --addr "tcp://127.0.0.1:$port" --token "wrong-token-0123456789" \
	--no-verify-agent ping 2>&1); then
	bad "agent rejects a host with the wrong token"
else
	check "agent rejects a host with the wrong token" contains "$out" "authentication failed"
fi
out=$(C raw '{"op":"auth","proof":"00"}' || true)
check "auth without hello is refused" contains "$out" '"ok":false'
out=$("$ctl" "${A[@]}" --no-auth raw '{"op":"stats"}' || true)
check "requests on an unauthenticated connection are refused" contains "$out" "not authenticated"

# --- the container's main process: exit codes, separated streams ----------------------------
rc=0
out=$(C run m0 --attach -- echo hello 2>"$tmp/err") || rc=$?
check "run echo: exit code 0" test "$rc" = 0
check "run echo: stdout" test "$out" = hello
C release m0 >/dev/null
rc=0
out=$(C run m3 --attach -- sh -c 'echo out; echo err >&2; exit 3' 2>"$tmp/err") || rc=$?
check "run exit 3: exit code" test "$rc" = 3
check "run exit 3: stdout only on stdout" test "$out" = out
check "run exit 3: stderr only on stderr" test "$(cat "$tmp/err")" = err
out=$(C wait m3)
check "wait reports exit_code 3" test "$(jget "$out" .exit_code)" = 3
C release m3 >/dev/null
out=$(C run m9 --attach -- nonexistent-binary 2>&1 || true)
check "run of a missing binary fails with a clear error" \
	contains "$out" 'executable file not found'

# OOM: a main process over its memory limit is killed and reported as such.
rc=0
C run oom --memory-max 16777216 --attach -- dd if=/dev/zero of=/dev/null bs=64M count=1 >/dev/null 2>&1 || rc=$?
out=$(C wait oom)
check "OOM kill reported (oom_killed, SIGKILL)" test "$(jget "$out" '.oom_killed and .signal == 9')" = true
C release oom >/dev/null

out=$(C run main --env GREETING=hi -- sh -c \
	'trap "echo got-term; exit 0" TERM; echo main-up; while :; do sleep 1 & wait $!; done')
check "run long-running main process" test "$(jget "$out" .ok)" = true
out=$(C run main -- true)
check "run is idempotent for the same id" test "$(jget "$out" .existing)" = true
out=$(C read main --wait-ms 20000)
check "read main output (long poll)" contains "$out" main-up

# --- exec in the running container -------------------------------------------------------
out=$(C exec e1 --attach -- sh -c 'cat /proc/1/cmdline | tr "\0" " "; echo; hostname; cat /etc/resolv.conf /etc/hosts')
check "exec sees the container's pid 1" contains "$out" "trap"
check "exec: hostname from the config" contains "$out" testvm
check "exec: resolv.conf from the config" contains "$out" "nameserver 10.0.2.3"
check "exec: /etc/hosts has the hostname" contains "$out" "10.0.2.15	testvm"
out=$(C exec e2 --user app --cwd /tmp --env FOO=bar --attach -- sh -c 'id -u; id -g; id -G; pwd; echo $FOO; echo $HOME')
check "exec --user app: uid" test "$(sed -n 1p <<<"$out")" = 1000
check "exec --user app: supplementary group" contains "$(sed -n 3p <<<"$out")" 2000
check "exec --cwd" test "$(sed -n 4p <<<"$out")" = /tmp
check "exec --env" test "$(sed -n 5p <<<"$out")" = bar
check "exec: HOME from passwd" test "$(sed -n 6p <<<"$out")" = /home/app
out=$(C exec e3 --user 1000:2000 --attach -- sh -c 'id -u; id -g')
check "exec --user uid:gid" test "$(tr '\n' ' ' <<<"$out")" = "1000 2000 "
out=$(C exec e4 --user nosuchuser --attach -- true 2>&1 || true)
check "exec --user unknown is refused" contains "$out" "unable to find user nosuchuser"
out=$(C exec e5 --attach -- sh -c 'cat /data/vol-file; cat /etc/image-file; grep -c " / overlay" /proc/mounts; ls /dev')
check "volume mounted at /data" contains "$out" volume-data
check "image rootfs is the root" contains "$out" image-file
check "/dev is minimal" contains "$out" urandom
if [[ "$flavor" == custom ]]; then
	out=$(C exec e6 --attach -- sh -c 'cat /host/share-file; touch /host/x 2>&1 || echo read-only')
	check "9p host directory bind" contains "$out" shared-from-host
	check "9p bind is read-only" contains "$out" read-only
fi
out=$(C exec e7 --attach -- sh -c 'echo x > /etc/written; ls /sys/kernel >/dev/null && touch /sys/x 2>/dev/null || echo sys-ro')
check "/sys is read-only in the container" contains "$out" sys-ro

out=$(C exec v6 --attach -- sh -c 'cat /proc/net/if_inet6; httpd -f -p "[::]:8080" -h /etc </dev/null >/dev/null 2>&1 &
	for i in $(seq 1 100); do wget -q -O - "http://[::1]:8080/image-file" && break; sleep 0.2; done')
check "IPv6 address from the config" contains "$out" "fec0000000000000000000000000001"
check "a server can listen on [::]" contains "$out" image-file

# --- 1 MiB of output, intact, through a small buffer (back-pressure) -------------------------
out=$(C exec big-gen --attach -- sh -c 'head -c 1048576 /dev/urandom > /tmp/big; sha256sum /tmp/big')
want=$(awk '{print $1}' <<<"$out")
C exec big --buffer 65536 --attach -- cat /tmp/big >"$tmp/big.out"
got=$(sha256sum "$tmp/big.out" | awk '{print $1}')
check "1 MiB of stdout intact (64 KiB buffer)" test "$got" = "$want" -a "$(stat -c %s "$tmp/big.out")" = 1048576

# --- reading again from an unacknowledged offset (host restart) -------------------------------
C exec rr -- echo resume-me >/dev/null
C wait rr >/dev/null
out1=$(C read rr --stdout 0 --stderr 0)
out2=$(C read rr --stdout 0 --stderr 0)
check "read is repeatable until acknowledged (new connection each time)" \
	test "$(tail -n 1 <<<"$out1")" = resume-me -a "$out1" = "$out2"
out=$(C read rr --stdout 10 --stderr 0 | head -n 1)
check "reading from the end: eof and exit status" \
	test "$(jget "$out" '.stdout.eof and .exited and .status.exit_code == 0')" = true
out=$(C read rr --stdout 0 --stderr 0 | head -n 1 || true)
check "acknowledged data cannot be read again" test "$(jget "$out" .error)" = ERANGE

# --- stdin ------------------------------------------------------------------------------
head -c 307200 /dev/urandom >"$tmp/stdin.bin"
C exec in1 --stdin --attach -- cat <"$tmp/stdin.bin" >"$tmp/stdin.out"
check "stdin round trip (300 KiB)" cmp -s "$tmp/stdin.bin" "$tmp/stdin.out"
out=$(printf 'a\nb\nc\n' | C exec in2 --stdin --attach -- wc -l)
check "stdin EOF reaches the process" test "$(tr -d ' ' <<<"$out")" = 3

# --- pty -------------------------------------------------------------------------------
out=$(C exec t1 --tty --rows 30 --cols 100 --attach -- sh -c 'tty; stty size' | tr -d '\r')
check "exec --tty gets a pty" contains "$out" /dev/pts/
check "exec --tty initial window size" contains "$out" "30 100"
C exec t2 --tty --stdin -- sh -c 'read x; stty size' >/dev/null
C resize t2 40 120 >/dev/null
C write t2 $'go\n' >/dev/null
out=$(C attach t2 | tr -d '\r')
check "pty resize" contains "$out" "40 120"

# --- signals ---------------------------------------------------------------------------
C exec s1 -- sleep 1000 >/dev/null
C signal s1 TERM >/dev/null
out=$(C wait s1)
check "killed by SIGTERM: signal 15" test "$(jget "$out" .signal)" = 15
check "killed by SIGTERM: exit_code 143" test "$(jget "$out" .exit_code)" = 143
C exec s2 -- sleep 1000 >/dev/null
C signal s2 9 >/dev/null
out=$(C wait s2)
check "killed by SIGKILL: signal 9" test "$(jget "$out" .signal)" = 9
out=$(C list)
check "list shows the processes" contains "$out" '"id":"s2"'

# --- stats -------------------------------------------------------------------------------
out=$(C stats)
check "stats: ok" test "$(jget "$out" .ok)" = true
check "stats: container memory" test "$(jget "$out" .memory.current)" -gt 0
check "stats: network counters" test "$(jget "$out" '.networks.eth0.rx_bytes')" -gt 0
check "stats: block devices" test "$(jget "$out" '.block | length')" -ge 3
check "stats: pids" test "$(jget "$out" .pids.current)" -ge 1
check "stats: cpu" test "$(jget "$out" .cpu.usage_usec)" -gt 0

# --- files in and out ----------------------------------------------------------------------
head -c 2621440 /dev/urandom >"$tmp/cp.bin"
C cp-in "$tmp/cp.bin" /tmp/cp.bin --mode 0640 >/dev/null
out=$(C exec cp1 --attach -- sha256sum /tmp/cp.bin)
check "cp-in 2.5 MiB (chunked)" test "$(awk '{print $1}' <<<"$out")" = "$(sha256sum "$tmp/cp.bin" | awk '{print $1}')"
out=$(C stat /tmp/cp.bin)
check "stat: size and mode" test "$(jget "$out" .size)/$(jget "$out" .mode)" = "2621440/416"
C cp-out /tmp/cp.bin "$tmp/cp.back" >/dev/null
check "cp-out 2.5 MiB (chunked)" cmp -s "$tmp/cp.bin" "$tmp/cp.back"
C cp-out /data/vol-file "$tmp/vol.back" >/dev/null
check "cp-out from a volume" test "$(cat "$tmp/vol.back")" = volume-data
C mkdir /tmp/a/b/c --parents >/dev/null
out=$(C ls /tmp/a/b)
check "mkdir --parents + ls" test "$(jget "$out" '.entries[0].name')" = c
out=$(C cp-out /etc/../../../../etc/passwd "$tmp/passwd.back" >/dev/null; cat "$tmp/passwd.back")
check "paths cannot leave the container root" contains "$out" "app user"
C exec ln1 --attach -- ln -s / /tmp/escape >/dev/null
out=$(C stat /tmp/escape/init || true)
check "symlinks resolve inside the container root" contains "$out" '"ok":false'

# --- shutdown: SIGTERM, grace, QEMU exits --------------------------------------------------
out=$(C shutdown --grace-ms 20000)
check "shutdown acknowledged" test "$(jget "$out" .ok)" = true
exited=0
for _ in $(seq 1 600); do
	if ! kill -0 "$qemu_pid" 2>/dev/null; then
		exited=1
		break
	fi
	sleep 0.1
done
check "QEMU exits after shutdown" test "$exited" = 1
if [[ $exited == 1 ]]; then
	wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=""
fi
check "main process got SIGTERM and exited 0" grep -q "container main (pid [0-9]*) exited: code 0" "$tmp/console.log"
check "guest rebooted cleanly" grep -q "shutdown: rebooting" "$tmp/console.log"
check "the token never appears on the console" bash -c '! grep -qF -- "$1" "$0"' "$tmp/console.log" "$token"

if [[ $fail -gt 0 ]]; then
	show_console
fi
echo "$flavor: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
