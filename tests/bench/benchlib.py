"""Shared parts of the benchmarks (tests/bench/boot, tests/bench/start).

- Api: the daemon's HTTP API over its unix socket.
- acceleration(api): waits for the vm plugin's KVM probe and returns its verdict.
- Bare: the baseline every VM benchmark compares against, a bare qemu-system-x86_64 boot
  of the project's own kernel + initramfs (+ a boot config archive, a NIC and an rng, as
  moonbox gives every guest) until moonbox-init prints its first console line.
"""
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import time


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("moonbox", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Api:
    def __init__(self, sock):
        self.sock = sock

    def __call__(self, method, path, body=None, timeout=600):
        """-> (status, decoded JSON or raw bytes)"""
        c = _UnixHTTP(self.sock, timeout)
        c.request(method, path, json.dumps(body) if body is not None else None,
                  {"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, (json.loads(data) if data and data[:1] in b"{[" else data)


def acceleration(api):
    """-> the acceleration record of /v1/system/info once the KVM probe has decided"""
    acc = {}
    for _ in range(600):
        _, info = api("GET", "/v1/system/info")
        acc = info.get("acceleration") or {}
        if not acc.get("probing"):
            break
        time.sleep(0.1)
    return acc


def mm(v):
    """-> (min, median)"""
    return min(v), statistics.median(v)


MARKER = b"moonbox-init["


class Bare:
    """Bare QEMU boots of build/guest's kernel and initramfs; tmp is a scratch dir."""

    def __init__(self, guest, tmp, accel, tsc_khz, tb_size_mib=64):
        self.guest, self.accel, self.tsc, self.tb = guest, accel, tsc_khz, tb_size_mib
        cfg = {"version": 1, "token": "b" * 64, "hostname": "bench", "root": {"type": "none"},
               "network": {"mac": "52:54:00:12:34:56", "address": "10.0.2.15/24",
                           "gateway": "10.0.2.2"},
               "agent": {"port": 1025}}
        with open(f"{tmp}/boot.json", "w") as f:
            json.dump(cfg, f)
        subprocess.run([f"{guest}/mb-mkinitramfs", "--boot-config", f"{tmp}/boot.json", "-o",
                        f"{tmp}/boot.cpio"], check=True)
        self.initrd = f"{tmp}/bare-initrd"
        with open(self.initrd, "wb") as out:
            for part in (f"{guest}/initramfs.cpio.gz", f"{tmp}/boot.cpio"):
                with open(part, "rb") as f:
                    out.write(f.read())

    def argv(self, smp=1, mem_mib=256):
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else \
                ["-accel", f"tcg,tb-size={self.tb}", "-cpu", "qemu64,+arat"]
        append = (f"console=ttyS0 panic=-1 reboot=t tsc_early_khz={self.tsc} tsc=reliable "
                  "cryptomgr.notests no_timer_check quiet")
        return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,acpi=off"] + accel + [
            "-smp", str(smp), "-m", str(mem_mib), "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", f"{self.guest}/vmlinux", "-initrd", self.initrd, "-append", append,
            "-netdev", "user,id=n0,net=10.0.2.0/24", "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0"]

    def boot(self, n=1, **kw):
        """Start n QEMUs at once -> seconds until each printed the marker (sorted)"""
        t0 = time.monotonic()
        procs = [subprocess.Popen(self.argv(**kw), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for _ in range(n)]
        bufs = {p.stdout.fileno(): b"" for p in procs}
        done = {}
        try:
            while len(done) < n:
                ready, _, _ = select.select([fd for fd in bufs if fd not in done], [], [], 120)
                if not ready:
                    raise RuntimeError("bare QEMU: no marker within 120 s")
                for fd in ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        raise RuntimeError("bare QEMU exited before the marker")
                    bufs[fd] += chunk
                    if MARKER in bufs[fd]:
                        done[fd] = time.monotonic() - t0
            return sorted(done.values())
        finally:
            for p in procs:
                p.kill()
                p.wait()
