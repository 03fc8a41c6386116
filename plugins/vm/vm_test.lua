-- Tests of the vm module with real microVMs under TCG, run by the real binary:
--   VM_TEST_ASSETS=DIR VM_TEST_AGENTCTL=build/guest/mb-agentctl \
--     moonbox test --timeout 900 --state-dir S plugins/vm/vm_test.lua
-- (plugins/vm/tests/lua.sh builds DIR with mkrootfs.sh and checks for orphans afterwards).
-- Timings are never asserted; bounds (timeouts) only decide when a wait gives up.
local A = assert(os.getenv("VM_TEST_ASSETS"), "VM_TEST_ASSETS is not set")
local AGENTCTL = os.getenv("VM_TEST_AGENTCTL")
local STATE = moonbox.config("state_dir")
local RUN = moonbox.config("run_dir")

local n_upper = 0
local function new_upper()
  n_upper = n_upper + 1
  local p = TEST_DIR .. "/upper" .. n_upper .. ".ext4"
  local r = proc.run({ "sh", "-c", "truncate -s 64M '" .. p .. "' && mkfs.ext4 -q -F '" .. p .. "'" })
  assert(r.code == 0, r.stderr)
  return p
end

local function spec(name, extra)
  local s = {
    name = name,
    nics = { { type = "user" } },
    disks = { { path = A .. "/lower.erofs", readonly = true, serial = "lower" },
              { path = new_upper(), serial = "upper" } },
    root = { type = "overlay" },
  }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local function rand_bytes(n)
  local t = {}
  for i = 1, (n + 7) // 8 do t[i] = string.pack("<j", math.random(math.mininteger, math.maxinteger)) end
  return table.concat(t):sub(1, n)
end

local function token_of(id)
  return db.row("SELECT token FROM vm_vms WHERE id = ?", id).token
end

local function sh(cmd)
  return proc.run({ "sh", "-c", cmd })
end

-- QEMU processes started under this test's state directory
local function qemus(id)
  -- (-name moonbox-vm-ID is an argument in the middle of QEMU's command line)
  local r = sh("pgrep -f -- '" .. (id and ("moonbox-vm-" .. id .. "( |$)") or STATE) .. "' || true")
  local pids = {}
  for p in r.stdout:gmatch("%d+") do
    -- pgrep -f STATE also matches sh -c itself: keep only qemu
    local c = fs.read("/proc/" .. p .. "/cmdline") or ""
    if c:find("qemu-system", 1, true) and (not id or c:find("\0moonbox-vm-" .. id .. "\0", 1, true)) then
      pids[#pids + 1] = tonumber(p)
    end
  end
  return pids
end

local function alive(pid)
  return pid and pid > 0 and proc.alive(pid)
end

local function wait_until(what, fn, seconds)
  local deadline = timer.now() + (seconds or 60)
  while timer.now() < deadline do
    local v = fn()
    if v then return v end
    timer.sleep(0.1)
  end
  error("timed out waiting for " .. what)
end

-- nothing of VM `id` left behind: no QEMU, no record, no directories
local function assert_gone(id)
  eq(#qemus(id), 0, "no QEMU left for " .. id)
  ok(not vm.get(id), "no record for " .. id)
  local row = db.row("SELECT count(*) AS n FROM vm_vms WHERE id = ?", id)
  eq(row.n, 0, "no row for " .. id)
  ok(not fs.exists(STATE .. "/vm/" .. id), "state dir removed")
  ok(not fs.exists(RUN .. "/vms/" .. id), "run dir removed")
end

local function main_loop(id, ignore_term)
  local body = ignore_term and 'trap "" TERM; ' or ""
  local p, e = vm.run(id, { id = "main", argv = { "sh", "-c", body .. "while :; do sleep 1; done" } })
  ok(p, e)
  return p
end

return {
  test_a_acceleration = function()
    local acc = wait_until("the KVM probe", function()
      local a = vm.acceleration()
      return not a.probing and a
    end, 120)
    ok(acc.selected == "tcg" or acc.selected == "kvm", "selected " .. tostring(acc.selected))
    -- KVM only when a probe guest really booted under it
    if acc.selected == "kvm" then eq(acc.kvm.boots, true) end
    ok(#acc.available >= 1 and acc.available[1] == "tcg")
    ok(type(acc.reason) == "string" and #acc.reason > 0)
    ok(acc.tsc_khz > 0, "host TSC kHz known")
    ok(fs.exists(STATE .. "/vm/accel.json"), "the verdict is cached in the state dir")
  end,

  test_b_bad_input = function()
    local lower = A .. "/lower.erofs"
    local base = function(t)
      local s = { nics = { { type = "user" } } }
      for k, v in pairs(t) do s[k] = v end
      return s
    end
    local cases = {
      { base { vcpus = 0 }, "vcpus" },
      { base { vcpus = 17 }, "vcpus" },
      { base { memory_mib = 10 }, "memory_mib" },
      { base { memory_mib = 40000 }, "memory_mib" },
      { base { kernel = "/nonexistent/vmlinux" }, "kernel" },
      { base { kernel = "windows" }, "kernel" },
      { base { disks = { { path = "/nonexistent.img" } } }, "disks[0].path" },
      { base { disks = { { path = lower, format = "vmdk" } } }, "disks[0].format" },
      { base { disks = { { path = lower, serial = "a" }, { path = lower, serial = "a" } } },
        "disks[1].serial" },
      { base { id = "Bad ID" }, "id" },
      { base { name = "no spaces please" }, "name" },
      { base { bogus = 1 }, "bogus" },
      { { name = "nonic" }, "nics" },
      { base { nics = { { type = "tap" } } }, "nics[0].ifname" },
      { base { nics = { { type = "user", mac = "01:00:00:00:00:01" } } }, "nics[0].mac" },
      { base { shares = { { path = "/nonexistent-dir", tag = "x" } } }, "shares[0].path" },
      { base { kernel = "debian", shares = { { path = "/tmp", tag = "x" } } }, "shares" },
      { base { network = { address = "10.0.2.300/24" } }, "network.address" },
      { base { root = { type = "overlay" } }, "root" },
      { base { mounts = { { type = "block", serial = "nope", target = "/data" } } }, "mounts[0]" },
      { base { run = { argv = {} } }, "run" },
      { base { run = "sh" }, "run" },
    }
    for i, c in ipairs(cases) do
      local rec, msg, code, field = vm.create(c[1])
      eq(rec, nil, "case " .. i .. " must fail")
      eq(code, "invalid", "case " .. i .. ": " .. tostring(msg))
      eq(field, c[2], "case " .. i .. " names the field (" .. tostring(msg) .. ")")
      ok(msg:sub(1, #c[2]) == c[2], "the message starts with the field: " .. msg)
    end
    -- misuse raises
    fails(function() vm.create("nope") end)
    fails(function() vm.start({}) end)
    -- a duplicate name is a conflict
    local r1 = ok(vm.create(spec("dup")))
    local r2, msg, code = vm.create(spec("dup"))
    eq(r2, nil); eq(code, "conflict"); ok(msg:find("dup"))
    ok(vm.remove(r1.id))
    -- nothing left behind
    eq(#vm.list(), 0)
    eq(db.row("SELECT count(*) AS n FROM vm_vms").n, 0)
    for _, e in ipairs(fs.list(STATE .. "/vm") or {}) do
      ok(e == "accel.json", "unexpected entry in the state dir: " .. e)
    end
    eq(#(fs.list(RUN .. "/vms") or {}), 0, "nothing in the run dir")
    eq(#qemus(), 0, "no QEMU")
    -- unknown ids
    local g, m2, c2 = vm.get("nope")
    eq(g, nil); eq(c2, "not_found"); ok(m2:find("nope"))
    local s, _, c3 = vm.start("nope")
    eq(s, nil); eq(c3, "not_found")
  end,

  test_c_lifecycle = function()
    local since = events.last_id()
    -- a host directory shared read-only (virtio-9p) and an ext4 volume mounted at /data
    local share = TEST_DIR .. "/share"
    fs.mkdir(share)
    fs.write(share .. "/share-file", "shared-from-host\n")
    local vol = TEST_DIR .. "/vol.ext4"
    fs.mkdir(TEST_DIR .. "/volsrc")
    fs.write(TEST_DIR .. "/volsrc/vol-file", "volume-data\n")
    eq(sh("truncate -s 16M '" .. vol .. "' && mkfs.ext4 -q -F -d '" .. TEST_DIR .. "/volsrc' '"
          .. vol .. "'").code, 0)
    local sp = spec("life", { vcpus = 1, memory_mib = 192, hostname = "lifevm",
                              labels = { owner = "tests" },
                              shares = { { path = share, tag = "hostshare", readonly = true } },
                              mounts = { { type = "9p", tag = "hostshare", target = "/host", ro = true },
                                         { type = "block", serial = "vol", target = "/data" } } })
    sp.disks[3] = { path = vol, serial = "vol" }
    local rec = ok(vm.create(sp))
    eq(rec.state, "created"); eq(rec.pid, 0); eq(rec.labels.owner, "tests")
    ok(rec.token == nil and not json.encode(rec):find("token"), "the token is never returned")
    local id = rec.id
    -- a guest call before start is a conflict
    local x, _, xc = vm.command(id, { "true" })
    eq(x, nil); eq(xc, "conflict")

    local r = ok(vm.start(id))
    eq(r.state, "running"); eq(r.agent, "connected"); ok(alive(r.pid)); eq(r.boots, 1)
    ok(r.accel == "tcg" or r.accel == "kvm")
    ok(not fs.exists(RUN .. "/vms/" .. id .. "/initrd"), "the boot archive is gone once up")
    local cmdline = fs.read("/proc/" .. r.pid .. "/cmdline"):gsub("%z", " ")
    ok(cmdline:find("tsc_early_khz=%d+"), "tsc_early_khz on the kernel command line")
    ok(cmdline:find("tsc=reliable", 1, true)); ok(cmdline:find("-sandbox", 1, true))
    if r.accel == "tcg" then
      ok(cmdline:find("qemu64,+arat", 1, true)); ok(cmdline:find("tb-size=", 1, true))
    end
    local token = token_of(id)
    ok(#token == 64)
    ok(not cmdline:find(token, 1, true), "the token is not on QEMU's command line")
    ok(not json.encode(vm.get(id)):find(token, 1, true), "nor in the record")
    -- starting a running VM is a conflict
    local s2, _, c2 = vm.start(id)
    eq(s2, nil); eq(c2, "conflict")

    -- the container's main process (ignores SIGTERM, like a careless PID 1)
    main_loop(id, true)

    -- exec with exit codes 0 and 3, separated streams
    local o = ok(vm.command(id, { "echo", "hello" }))
    eq(o.exit_code, 0); eq(o.stdout, "hello\n"); eq(o.stderr, "")
    o = ok(vm.command(id, { "sh", "-c", "echo out; echo err >&2; exit 3" }))
    eq(o.exit_code, 3); eq(o.stdout, "out\n"); eq(o.stderr, "err\n")
    o = ok(vm.command(id, { "sh", "-c", "cat /etc/image-file; hostname; echo $FOO; id -u" },
                      { env = { FOO = "bar" }, user = "app" }))
    eq(o.stdout, "image-file\nlifevm\nbar\n1000\n")
    o = ok(vm.command(id, { "sh", "-c", "cat /host/share-file /data/vol-file; touch /host/x 2>/dev/null || echo ro" }))
    eq(o.stdout, "shared-from-host\nvolume-data\nro\n")
    local nf, nfm = vm.command(id, { "no-such-binary" })
    eq(nf, nil); ok(nfm:find("not found"), nfm)

    -- 1 MiB of output, intact
    o = ok(vm.command(id, { "sh", "-c", "head -c 1048576 /dev/urandom > /tmp/big; sha256sum /tmp/big" }))
    local want = o.stdout:match("^(%x+)")
    o = ok(vm.command(id, { "cat", "/tmp/big" }))
    eq(#o.stdout, 1048576); eq(moonbox.sha256(o.stdout), want)

    -- stdin (300 KiB through vm.command)
    local input = rand_bytes(300 * 1024)
    o = ok(vm.command(id, { "sha256sum" }, { stdin = input }))
    eq(o.stdout:match("^(%x+)"), moonbox.sha256(input))

    -- the low-level calls: exec, write, close_stdin, read, wait, release
    local p = ok(vm.exec(id, { id = "cat1", argv = { "sh", "-c", "cat; echo done >&2" }, stdin = true }))
    eq(p.id, "cat1"); ok(p.pid > 0)
    ok(vm.write(id, "cat1", "abc"))
    ok(vm.write(id, "cat1", "def\n"))
    local data, off, eof = ok(vm.read(id, "cat1", "stdout", 0, { wait = 30 }))
    ok(#data > 0 and ("abcdef\n"):sub(1, #data) == data, data)
    ok(vm.close_stdin(id, "cat1"))
    local out = data
    while not eof do
      data, off, eof = vm.read(id, "cat1", "stdout", off, { wait = 30 })
      ok(data, off)
      out = out .. data
    end
    eq(out, "abcdef\n")
    local edata = vm.read(id, "cat1", "stderr", 0, { wait = 30 })
    eq(edata, "done\n")
    local st = ok(vm.wait(id, "cat1", { timeout = 30 }))
    eq(st.exit_code, 0); eq(st.signal, 0); eq(st.oom_killed, false)
    local list = ok(vm.processes(id))
    local seen = false
    for _, q in ipairs(list) do seen = seen or q.id == "cat1" end
    ok(seen, "processes lists cat1")
    ok(vm.release(id, "cat1"))
    -- signals and wait timeouts
    ok(vm.exec(id, { id = "sleeper", argv = { "sleep", "1000" } }))
    local w, _, wc = vm.wait(id, "sleeper", { timeout = 0.2 })
    eq(w, nil); eq(wc, "timeout")
    ok(vm.signal(id, "sleeper", "TERM"))
    st = ok(vm.wait(id, "sleeper", { timeout = 30 }))
    eq(st.signal, 15); eq(st.exit_code, 143)
    ok(vm.release(id, "sleeper"))

    -- files in and out
    local blob = rand_bytes(1536 * 1024)
    ok(vm.fs_mkdir(id, "/tmp/a/b", { parents = true }))
    ok(vm.fs_write(id, "/tmp/a/b/blob", blob, { mode = tonumber("640", 8) }))
    local back, info = ok(vm.fs_read(id, "/tmp/a/b/blob"))
    eq(#back, #blob); ok(back == blob, "fs_read returns what fs_write wrote"); eq(info.eof, true)
    local stt = ok(vm.fs_stat(id, "/tmp/a/b/blob"))
    eq(stt.size, #blob); eq(stt.mode, tonumber("640", 8)); eq(stt.type, "file")
    local ents = ok(vm.fs_readdir(id, "/tmp/a/b"))
    eq(#ents, 1); eq(ents[1].name, "blob")
    local part = ok(vm.fs_read(id, "/tmp/a/b/blob", { offset = 10, max = 5 }))
    eq(part, blob:sub(11, 15))
    local nofile, _, nfc = vm.fs_read(id, "/nonexistent")
    eq(nofile, nil); eq(nfc, "not_found")

    -- stats: the agent's plus the host's view of QEMU
    local stats = ok(vm.stats(id))
    ok(stats.host.rss_bytes > 0); ok(stats.host.cpu_usec > 0); ok(stats.memory.vm_total > 0)

    -- someone without the token cannot talk to the agent
    if AGENTCTL then
      local rec2 = vm.get(id)
      local res = proc.run({ AGENTCTL, "--addr", rec2.agent_addr, "--token",
                             "not-the-token-0123456789", "--no-verify-agent", "ping" })
      ok(res.code ~= 0, "the agent refuses a wrong token")
      ok((res.stdout .. res.stderr):find("authentication failed"), res.stdout .. res.stderr)
      res = proc.run({ AGENTCTL, "--addr", rec2.agent_addr, "--token", "not-the-token-0123456789",
                       "ping" })
      ok(res.code ~= 0 and (res.stdout .. res.stderr):find("agent failed authentication"),
         "and a client with a wrong token recognises the agent does not know it")
      -- our own connection still works
      ok(vm.command(id, { "true" }))
    end

    -- pause/resume: guest time does not advance while paused
    local up1 = tonumber(ok(vm.command(id, { "cat", "/proc/uptime" })).stdout:match("^([%d.]+)"))
    local h1 = timer.now()
    local pr = ok(vm.pause(id))
    eq(pr.state, "paused")
    local pc, _, pcc = vm.command(id, { "true" })
    eq(pc, nil); eq(pcc, "conflict")
    timer.sleep(2)
    eq(ok(vm.pause(id)).state, "paused") -- idempotent
    local rr = ok(vm.resume(id))
    eq(rr.state, "running")
    local up2 = tonumber(ok(vm.command(id, { "cat", "/proc/uptime" })).stdout:match("^([%d.]+)"))
    local h2 = timer.now()
    -- the guest cannot have seen the 2 s it was paused (its clock never runs ahead of ours)
    ok((h2 - h1) - (up2 - up1) > 1.0,
       string.format("guest %.2f s vs host %.2f s across a 2 s pause", up2 - up1, h2 - h1))

    -- stop: SIGTERM is ignored by the main process, so the grace expires and it is killed
    local pid = r.pid
    local sr = ok(vm.stop(id, { timeout = 2 }))
    eq(sr.state, "stopped"); eq(sr.exit.reason, "stop"); eq(sr.pid, 0)
    ok(not alive(pid), "QEMU exited")
    local con = ok(vm.console(id))
    ok(con:find("shutdown: SIGTERM to container processes, grace 2000 ms", 1, true), con)
    -- main did not exit on SIGTERM: nothing between the SIGTERM and the final kill
    local between = con:match("grace 2000 ms\r?\n(.-)shutdown: killing remaining processes")
    ok(between, "the grace expired and the rest was killed: " .. con:sub(-600))
    ok(not between:find("container main"), "main survived SIGTERM until the kill")
    ok(con:find("shutdown: rebooting", 1, true))
    ok(not con:find(token, 1, true), "the token never appears on the console")
    ok(not (fs.read(STATE .. "/vm/" .. id .. "/qemu.log") or ""):find(token, 1, true))
    eq(ok(vm.stop(id)).state, "stopped") -- idempotent
    eq(#qemus(id), 0)
    -- tail
    eq(#ok(vm.console(id, { tail = 10 })), 10)

    -- a second boot of the same VM (same upper disk: the file written before is there)
    r = ok(vm.start(id))
    eq(r.boots, 2)
    main_loop(id)
    o = ok(vm.command(id, { "sh", "-c", "test -f /tmp/big || echo tmp-is-tmpfs; ls /" }))
    ok(o.exit_code == 0)
    -- kill
    pid = r.pid
    local kr = ok(vm.kill(id))
    eq(kr.state, "stopped"); eq(kr.exit.reason, "kill")
    ok(not alive(pid))
    local k2, _, kc = vm.kill(id)
    eq(k2, nil); eq(kc, "conflict")

    -- events, in order
    local types = {}
    for _, ev in ipairs(events.list { since = since, pattern = "vm.*", limit = 1000 }) do
      if ev.data and ev.data.id == id then types[#types + 1] = ev.type end
    end
    local want_seq = { "vm.created", "vm.starting", "vm.started", "vm.paused", "vm.resumed",
                       "vm.stopping", "vm.stopped", "vm.starting", "vm.started", "vm.stopped" }
    eq(types, want_seq)

    ok(vm.remove(id))
    assert_gone(id)
  end,

  test_d_crash_detected = function()
    local rec = ok(vm.create(spec("crash")))
    local r = ok(vm.start(rec.id))
    main_loop(rec.id)
    local sub = events.subscribe { pattern = "vm.died" }
    ok(proc.kill(r.pid, 9)) -- from outside, nobody asked
    local ev = ok(sub:next(60))
    eq(ev.type, "vm.died"); eq(ev.data.id, rec.id); eq(ev.data.reason, "crashed")
    local g = vm.get(rec.id)
    eq(g.state, "stopped"); eq(g.exit.reason, "crashed"); eq(g.exit.signal, 9)
    ok(not alive(r.pid))
    -- a guest call now is a conflict, a start works again
    local c, _, cc = vm.command(rec.id, { "true" })
    eq(c, nil); eq(cc, "conflict")
    -- the guest going down by itself (someone else with the token asks the agent to shut
    -- down): QMP reports a guest reset, the VM died with that reason
    if AGENTCTL then
      r = ok(vm.start(rec.id))
      local res = proc.run({ AGENTCTL, "--addr", r.agent_addr, "--token", token_of(rec.id),
                             "shutdown", "--grace-ms", "0" })
      eq(res.code, 0, res.stderr)
      ev = ok(sub:next(120))
      eq(ev.data.id, rec.id); eq(ev.data.reason, "guest-reset")
      g = vm.get(rec.id)
      eq(g.state, "stopped"); eq(g.exit.qmp_reason, "guest-reset")
    end
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_e_auth_mismatch = function()
    local rec = ok(vm.create(spec("badtoken")))
    local r, msg, code = vm.start(rec.id, { debug_boot_token = string.rep("f", 64) })
    eq(r, nil)
    eq(code, "denied", msg)
    ok(msg:find("authentication"), msg)
    local g = vm.get(rec.id)
    eq(g.state, "error"); ok(g.error:find("authentication"))
    eq(#qemus(rec.id), 0, "QEMU killed")
    ok(not fs.exists(RUN .. "/vms/" .. rec.id .. "/initrd"))
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_f_qemu_exits_early = function()
    local s = spec("early")
    s.disks[1].format = "qcow2" -- an erofs image is not qcow2: QEMU refuses to start
    local rec = ok(vm.create(s))
    local r, msg, code = vm.start(rec.id)
    eq(r, nil)
    eq(code, "io", msg)
    ok(msg:find("QEMU exited during boot", 1, true), msg)
    ok(msg:find("qcow2", 1, true), "QEMU's own message is in the error: " .. msg)
    eq(vm.get(rec.id).state, "error")
    eq(#qemus(rec.id), 0)
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_g_never_hello = function()
    local rec = ok(vm.create(spec("silent", { initramfs = A .. "/hang.cpio.gz" })))
    local r, msg, code = vm.start(rec.id, { timeout = 10 })
    eq(r, nil)
    eq(code, "timeout", msg)
    ok(msg:find("did not answer", 1, true), msg)
    ok(msg:find("never-hello", 1, true), "the console tail is in the message: " .. msg)
    local g = vm.get(rec.id)
    eq(g.state, "error"); eq(g.exit.reason, "start-failed")
    eq(#qemus(rec.id), 0, "QEMU killed")
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_h_fractional_vcpus = function()
    local rec = ok(vm.create(spec("half", { vcpus = 0.5 })))
    eq(rec.vcpus, 0.5)
    local r, msg = vm.start(rec.id)
    if not r and msg:find("cgroup") then skip(msg) end
    ok(r, msg)
    ok(r.cgroup, "a CPU cgroup")
    local quota = fs.read(r.cgroup .. "/cpu.cfs_quota_us") or fs.read(r.cgroup .. "/cpu.max")
    ok(quota:find("^50000"), quota)
    local procs = fs.read(r.cgroup .. "/cgroup.procs")
    ok(procs:find(tostring(r.pid)), "QEMU is in it")
    local cmdline = fs.read("/proc/" .. r.pid .. "/cmdline"):gsub("%z", " ")
    ok(cmdline:find("-smp 1", 1, true), "smp = ceil(vcpus)")
    ok(vm.kill(rec.id))
    ok(not fs.exists(r.cgroup), "the cgroup is removed with the VM's QEMU")
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_i_cancellation = function()
    local rec = ok(vm.create(spec("cancel")))
    -- a cancelled vm.start does not abort the start: the VM comes up on its own
    local h = task.spawn(function() return vm.start(rec.id) end)
    timer.sleep(0.05)
    h:cancel()
    wait_until("the VM to run", function() return vm.get(rec.id).state == "running" end, 120)
    main_loop(rec.id)
    -- a cancelled command does not leave its process running
    local h2 = task.spawn(function() return vm.command(rec.id, { "sleep", "1000" }) end)
    local procs
    wait_until("the command to start", function()
      procs = vm.processes(rec.id)
      for _, p in ipairs(procs) do if p.id:find("^cmd%-") then return true end end
    end, 30)
    h2:cancel()
    wait_until("the command to be killed and released", function()
      for _, p in ipairs(vm.processes(rec.id)) do if p.id:find("^cmd%-") then return false end end
      return true
    end, 60)
    -- a command with a timeout
    local t, tm, tc = vm.command(rec.id, { "sleep", "1000" }, { timeout = 0.5 })
    eq(t, nil); eq(tc, "timeout", tm)
    -- a removal with force kills first
    local rm, rmm, rmc = vm.remove(rec.id)
    eq(rm, nil); eq(rmc, "conflict", rmm)
    ok(vm.remove(rec.id, { force = true }))
    assert_gone(rec.id)
  end,

  test_j_debian_kernel = function()
    if not fs.exists(moonbox.config("guest_dir") .. "/vmlinux-debian") then
      skip("no Debian guest kernel built")
    end
    local rec = ok(vm.create(spec("deb", { kernel = "debian" })))
    eq(rec.spec.acpi, true)
    local r = ok(vm.start(rec.id))
    local cmdline = fs.read("/proc/" .. r.pid .. "/cmdline"):gsub("%z", " ")
    ok(cmdline:find("vmlinux-debian", 1, true)); ok(not cmdline:find("acpi=off", 1, true))
    main_loop(rec.id)
    local o = ok(vm.command(rec.id, { "sh", "-c", "uname -r; cat /etc/image-file" }))
    ok(o.stdout:find("cloud", 1, true) and o.stdout:find("image-file", 1, true), o.stdout)
    ok(vm.stop(rec.id, { timeout = 1 }))
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_k_run_at_boot = function()
    -- the spec's run: moonbox-init starts it before the host asks
    local rec = ok(vm.create(spec("bootrun", {
      run = { argv = { "sh", "-c", "echo from-boot:$WHO; exec sleep 600" }, env = { "WHO=init" } } })))
    eq(rec.spec.run.id, "main")
    ok(vm.start(rec.id))
    local out, off = "", 0
    wait_until("the boot-run output", function()
      local d, nxt = ok(vm.read(rec.id, "main", "stdout", off, { wait = 1 }))
      out, off = out .. d, nxt
      return out:find("from-boot:init", 1, true)
    end, 60)
    -- the host's run with the same id finds it (it was not started twice)
    local p = ok(vm.run(rec.id, { id = "main", argv = { "sh", "-c", "echo second" } }))
    eq(p.existing, true)
    local con = vm.console(rec.id)
    -- it did not wait for the host: started before the host's connection was authenticated
    local started = con:find("container main started", 1, true)
    local authed = con:find("agent: host authenticated", 1, true)
    ok(started and authed and started < authed, "started before the host was authenticated")
    ok(vm.kill(rec.id))
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
    -- a process that cannot start: the VM still comes up, vm.run reports why
    rec = ok(vm.create(spec("bootrun-missing", { run = { argv = { "/no/such/binary" } } })))
    ok(vm.start(rec.id))
    ok(vm.console(rec.id):find("boot run:", 1, true), "the console says why")
    local r, msg, code = vm.run(rec.id, { id = "main", argv = { "/no/such/binary" } })
    eq(r, nil); eq(code, "not_found", msg); ok(msg:find("/no/such/binary", 1, true), msg)
    ok(vm.kill(rec.id))
    ok(vm.remove(rec.id))
    assert_gone(rec.id)
  end,

  test_t_templates = function()
    -- the default shape's template: built beside the first start of that shape (earlier
    -- tests started several), restored by every later start
    local function tpl(key)
      for _, t in ipairs(vm.templates()) do
        if t.memory_mib == 256 and t.vcpus == 1 and (not key or t.key == key) then return t end
      end
    end
    local first = ok(vm.create(spec("tpl-first")))
    ok(vm.start(first.id))
    local t = wait_until("the template", function()
      local x = tpl()
      return x and x.state ~= "building" and x
    end, 120)
    eq(t.state, "ready", t.error)
    ok(fs.exists(t.dir .. "/snapshot"), "the snapshot is on disk")
    eq(fs.stat(t.dir .. "/snapshot").mode & 511, 384, "the snapshot is 0600")
    ok(vm.kill(first.id)); ok(vm.remove(first.id))
    -- two VMs restored from it are two different machines
    local seen = {}
    for i = 1, 2 do
      local rec = ok(vm.create(spec("tpl-" .. i, { hostname = "restored-" .. i })))
      local before = os.time()
      local r = ok(vm.start(rec.id))
      eq(r.template, t.key, "restored from the template")
      main_loop(rec.id)
      local o = ok(vm.command(rec.id, { "sh", "-c",
        "cat /sys/class/net/eth0/address; hostname; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo;" ..
        " cat /etc/os-release 2>/dev/null | head -1; ls /; echo hi > /tmp/x; cat /tmp/x" }))
      eq(o.exit_code, 0, o.stderr)
      local mac, host, date, rnd = o.stdout:match("^(%S+)\n(%S+)\n(%d+)\n(%x+)\n")
      eq(mac, r.spec.nics[1].mac, "the VM's MAC, not the template's")
      eq(host, "restored-" .. i)
      ok(math.abs(tonumber(date) - before) <= 5, "the guest clock is the host's: " .. date .. " vs " .. before)
      ok(not seen[rnd], "the RNG differs between restored VMs")
      seen[rnd] = true
      ok(o.stdout:find("\nbin\n", 1, true), "the VM's own root file system: " .. o.stdout)
      ok(o.stdout:find("hi\n", 1, true), "its writable layer works")
      local con = vm.console(rec.id)
      ok(con:find("template: restored as restored-" .. i, 1, true), con)
      -- a second boot of the same VM is restored again
      ok(vm.stop(rec.id, { timeout = 1 }))
      r = ok(vm.start(rec.id))
      eq(r.template, t.key)
      eq(r.boots, 2)
      ok(not fs.exists(RUN .. "/vms/" .. rec.id .. "/config.img"), "the config disk (token) is gone once up")
      ok(vm.kill(rec.id)); ok(vm.remove(rec.id))
      assert_gone(rec.id)
    end
    -- one build at a time, at most MOONBOX_VM_TEMPLATES_MAX (2, from lua.sh) templates
    local function shape(mem)
      for _, x in ipairs(vm.templates()) do
        if x.memory_mib == mem then return x end
      end
    end
    local ready = 0
    for _, x in ipairs(vm.templates()) do ready = ready + (x.state == "ready" and 1 or 0) end
    eq(ready, 1, "only the default shape has a template so far")
    local a_ = ok(vm.create(spec("tpl-a", { memory_mib = 320 })))
    local b_ = ok(vm.create(spec("tpl-b", { memory_mib = 384 })))
    -- A's start (in a task) begins the 320 MiB build; B starts while it runs (a build is
    -- a whole boot, so it is still running 0.1 s after it began)
    task.spawn(function() return vm.start(a_.id) end)
    wait_until("the 320 MiB build", function() return shape(320) end, 30)
    eq(shape(320).state, "building", "a new shape builds its template beside its start")
    eq(ok(vm.start(b_.id)).template, json.null)
    eq(shape(384), nil, "no second build while one runs")
    wait_until("A to run", function() return vm.get(a_.id).state == "running" end, 120)
    eq(vm.get(a_.id).template, json.null, "a new shape's first start boots")
    local ta = wait_until("the 320 MiB template", function()
      local x = shape(320)
      return x.state ~= "building" and x
    end, 120)
    eq(ta.state, "ready", ta.error)
    ok(vm.stop(b_.id, { timeout = 1 }))
    eq(ok(vm.start(b_.id)).template, json.null)
    eq(shape(384), nil, "no template past the cap")
    ok(vm.stop(a_.id, { timeout = 1 }))
    eq(ok(vm.start(a_.id)).template, ta.key, "the new shape's template restores")
    for _, x in ipairs({ a_, b_ }) do
      ok(vm.kill(x.id)); ok(vm.remove(x.id)); assert_gone(x.id)
    end
    -- VMs that do not fit the layout boot as before
    local odd = ok(vm.create(spec("tpl-odd", { cmdline_extra = "loglevel=4" })))
    local r = ok(vm.start(odd.id))
    eq(r.template, json.null)
    ok(vm.kill(odd.id)); ok(vm.remove(odd.id))
    -- a snapshot that does not load: that start boots instead (one QEMU left, the booted
    -- one), the template is marked broken with QEMU's words and not used again
    local snap = t.dir .. "/snapshot"
    sh("truncate -s 4096 '" .. snap .. "'")
    local bad = ok(vm.create(spec("tpl-bad")))
    r = ok(vm.start(bad.id))
    eq(r.template, json.null, "booted instead of restoring")
    eq(r.boots, 1)
    main_loop(bad.id)
    eq(#qemus(bad.id), 1, "only the booted QEMU")
    eq(tpl(t.key).state, "broken")
    ok(tpl(t.key).error:find("restore failed: QEMU could not load the saved state", 1, true), tpl(t.key).error)
    ok(vm.stop(bad.id, { timeout = 1 }))
    r = ok(vm.start(bad.id))
    eq(r.template, json.null, "the broken template is not tried again")
    ok(vm.kill(bad.id)); ok(vm.remove(bad.id))
    assert_gone(bad.id)
  end,

  test_z_nothing_left = function()
    eq(#vm.list(), 0)
    eq(#qemus(), 0)
  end,
}
