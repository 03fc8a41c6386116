-- Test helpers: boot real microVMs (bare QEMU, TCG, the project's kernel) from what the
-- net and volume plugins hand out, and drive their agents with mb-agentctl. Loaded by the
-- VM tests with load(fs.read(...)). Every QEMU pid goes into $MB_PIDS so the shell
-- wrapper's trap can stop it even if a test dies.
--
-- boot{} takes the same pieces the vm plugin's vm.create{} will: nics={ep.nic},
-- network=ep.boot, disks=, shares=, mounts= — so switching the tests to the vm plugin is
-- a matter of replacing boot/ready/sh/stop.
local V = {}

local E = ...
V.env = E

local function run(argv, opts)
  local r, msg, code = proc.run(argv, opts or { timeout = 180 })
  if not r then
    error(table.concat(argv, " ") .. ": " .. tostring(msg), 2)
  end
  return r
end
V.run = run

local function must(argv, opts)
  local r = run(argv, opts)
  if r.code ~= 0 then
    error(table.concat(argv, " ") .. " failed (" .. tostring(r.code) .. "): " .. r.stderr .. r.stdout, 2)
  end
  return r.stdout
end
V.must = must

local seq = 0

-- Boot a VM. spec: name, nic (net.attach(...).nic), network (net.attach(...).boot),
-- disks {{path, readonly, serial}}, shares {{path, tag, readonly}}, mounts (boot.json).
function V.boot(spec)
  seq = seq + 1
  local dir = E.work .. "/" .. spec.name
  fs.mkdir(dir)
  local upper = dir .. "/upper.ext4"
  fs.truncate(upper, 64 * 1024 * 1024)
  must({ "mkfs.ext4", "-q", "-F", upper })
  local token = moonbox.sha256(moonbox.random(32))
  local boot = {
    version = 1, token = token, hostname = spec.name,
    network = spec.network,
    agent = { port = 1025 },
    root = { type = "overlay", lower = "lower", upper = "upper" },
    mounts = json.array(spec.mounts or {}),
  }
  fs.write(dir .. "/boot.json", json.encode(boot))
  must({ E.mkinitramfs, "--boot-config", dir .. "/boot.json", "-o", dir .. "/boot.cpio" })
  fs.write(dir .. "/initrd", fs.read(E.initrd, 1 << 30) .. fs.read(dir .. "/boot.cpio", 1 << 30), { mode = 384 })
  fs.remove(dir .. "/boot.json")
  local argv = { E.qemu, "-M", "microvm,x-option-roms=off,acpi=off", "-accel", "tcg,tb-size=64",
    "-cpu", "qemu64,+arat", "-m", "256", "-smp", "1", "-no-user-config", "-display", "none",
    "-monitor", "none", "-no-reboot", "-daemonize", "-pidfile", dir .. "/qemu.pid",
    "-serial", "file:" .. dir .. "/console.log",
    "-kernel", E.kernel, "-initrd", dir .. "/initrd",
    "-append", "console=ttyS0 panic=-1 reboot=t tsc_early_khz=" .. E.khz ..
      " tsc=reliable cryptomgr.notests no_timer_check quiet",
    "-drive", "id=lo,file=" .. E.lower .. ",format=raw,if=none,readonly=on",
    "-device", "virtio-blk-device,drive=lo,serial=lower",
    "-drive", "id=up,file=" .. upper .. ",format=raw,if=none",
    "-device", "virtio-blk-device,drive=up,serial=upper" }
  -- Under acpi=off the 5th virtio-mmio device gets IRQ 8, which the RTC holds: that
  -- device never works ("genirq: Flags mismatch irq 8"). Put the network and the rng
  -- first and a sacrificial second rng in slot 5, volumes and binds after it.
  local extra = {}
  for i, d in ipairs(spec.disks or {}) do
    extra[#extra + 1] = "-drive"
    extra[#extra + 1] = string.format("id=d%d,file=%s,format=raw,if=none%s", i, d.path, d.readonly and ",readonly=on" or "")
    extra[#extra + 1] = "-device"
    extra[#extra + 1] = string.format("virtio-blk-device,drive=d%d,serial=%s", i, d.serial)
  end
  for i, s in ipairs(spec.shares or {}) do
    extra[#extra + 1] = "-fsdev"
    extra[#extra + 1] = string.format("local,id=fs%d,path=%s,security_model=none%s", i, s.path, s.readonly and ",readonly=on" or "")
    extra[#extra + 1] = "-device"
    extra[#extra + 1] = string.format("virtio-9p-device,fsdev=fs%d,mount_tag=%s", i, s.tag)
  end
  local nic = spec.nic
  local addr
  if nic.type == "tap" then
    argv[#argv + 1] = "-netdev"
    argv[#argv + 1] = "tap,id=n0,ifname=" .. nic.ifname .. ",script=no,downscript=no"
    addr = spec.network.address:match("^([%d%.]+)")
  else
    local fw = {}
    for _, f in ipairs(nic.hostfwd) do
      fw[#fw + 1] = string.format("hostfwd=%s:%s:%d-10.0.2.15:%d", f.proto, f.host_ip, f.host_port, f.guest_port)
    end
    argv[#argv + 1] = "-netdev"
    argv[#argv + 1] = "user,id=n0,net=" .. nic.net .. (nic.restrict and ",restrict=on" or "") .. "," .. table.concat(fw, ",")
    addr = "127.0.0.1"
  end
  argv[#argv + 1] = "-device"
  argv[#argv + 1] = "virtio-net-device,netdev=n0,mac=" .. nic.mac
  argv[#argv + 1] = "-object"
  argv[#argv + 1] = "rng-random,id=rng0,filename=/dev/urandom"
  argv[#argv + 1] = "-device"
  argv[#argv + 1] = "virtio-rng-device,rng=rng0"
  argv[#argv + 1] = "-object"
  argv[#argv + 1] = "rng-random,id=rng1,filename=/dev/urandom"
  argv[#argv + 1] = "-device"
  argv[#argv + 1] = "virtio-rng-device,rng=rng1"
  for _, a in ipairs(extra) do
    argv[#argv + 1] = a
  end
  must(argv)
  local pid = tonumber((fs.read(dir .. "/qemu.pid") or ""):match("%d+"))
  fs.append(E.pids, tostring(pid) .. "\n")
  local port = nic.type == "tap" and 1025 or nil
  if nic.type ~= "tap" then
    for _, f in ipairs(nic.hostfwd) do
      if f.guest_port == 1025 then
        port = f.host_port
      end
    end
  end
  local vm = { name = spec.name, pid = pid, token = token, dir = dir, ip = addr, n = 0,
    addr = "tcp://" .. addr .. ":" .. port }
  return vm
end

function V.ctl(vm, args, timeout)
  local argv = { E.agentctl, "--addr", vm.addr, "--token", vm.token }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  return run(argv, { timeout = timeout or 120 })
end

function V.console(vm)
  return fs.read(vm.dir .. "/console.log") or ""
end

-- wait for the agent, then start a long-running main process (exec needs one)
function V.ready(vm)
  local r = V.ctl(vm, { "--wait-ready-ms", "150000", "hello" }, 200)
  if r.code ~= 0 then
    error("agent of " .. vm.name .. " not ready: " .. r.stderr .. "\n" .. V.console(vm):sub(-3000))
  end
  r = V.ctl(vm, { "run", "main", "--", "sh", "-c", "while :; do sleep 1000; done" })
  if r.code ~= 0 then
    error("run main in " .. vm.name .. ": " .. r.stderr .. r.stdout)
  end
  return vm
end

-- run a shell script in the container; returns stdout, exit code
function V.sh(vm, script, timeout)
  vm.n = vm.n + 1
  local r = V.ctl(vm, { "exec", "x" .. vm.n, "--attach", "--", "sh", "-c", script }, timeout)
  return r.stdout, r.code, r.stderr
end

-- start a background server in the container
function V.serve(vm, script)
  vm.n = vm.n + 1
  local r = V.ctl(vm, { "exec", "bg" .. vm.n, "--", "sh", "-c", script })
  if r.code ~= 0 then
    error("exec in " .. vm.name .. ": " .. r.stderr)
  end
end

function V.stop(vm)
  V.ctl(vm, { "shutdown", "--grace-ms", "5000" }, 30)
  for _ = 1, 300 do
    if not proc.alive(vm.pid) then
      return true
    end
    timer.sleep(0.1)
  end
  proc.kill(vm.pid, 9)
  for _ = 1, 50 do
    if not proc.alive(vm.pid) then
      return true
    end
    timer.sleep(0.1)
  end
  return false
end

-- host-side commands (optionally inside a network namespace)
function V.host(argv, ns)
  if ns then
    local a = { "ip", "netns", "exec", ns }
    for _, x in ipairs(argv) do
      a[#a + 1] = x
    end
    argv = a
  end
  local r = run(argv, { timeout = 60 })
  return r.stdout, r.code
end

-- poll fn until it returns a truthy value (VM boot and servers starting take a moment)
function V.eventually(fn, tries)
  local last
  for _ = 1, tries or 100 do
    last = table.pack(fn())
    if last[1] then
      return table.unpack(last, 1, last.n)
    end
    timer.sleep(0.2)
  end
  return table.unpack(last, 1, last.n)
end

return V
