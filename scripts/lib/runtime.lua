-- The container runtime: composes the primitives (registry, net, volume, vm) into the
-- container lifecycle, and runs the per-container watchers:
--   exit   waits for the main process to end; a natural exit tears the VM down and asks
--          the restart policy what to do
--   logs   pulls stdout/stderr from the guest agent from persisted offsets into the log
--          files (nothing is lost across daemon restarts: the agent keeps unread output)
--   stats  samples usage every STATS_EVERY seconds into an in-memory history for charts
--   health runs the health policy's check loop when the container has a health check
--
-- Every action runs under the container's lock. Functions return true/values, or
-- nil, message, code [, extra] on operational failure (the API maps codes to statuses).
local containers = require("containers")
local logs = require("logs")
local policy = require("policy")
local spec = require("spec")

local M = {}

local STATS_EVERY = 10
local STATS_KEEP = 360 -- one hour at 10 s
local MIB = 1024 * 1024

-- Per-container live state shared by every task and surviving script reloads.
local L = rawget(_G, "__moonbox_runtime")
if not L then
  L = {}
  rawset(_G, "__moonbox_runtime", L)
end

local function live(id)
  local l = L[id]
  if not l then
    l = { tasks = {}, history = {} }
    L[id] = l
  end
  return l
end
M.live = live

local function need(name)
  if not rawget(_G, name) then
    return nil, "the " .. name .. " plugin is not loaded", "unsupported"
  end
  return true
end

local function state_dir() return moonbox.config("state_dir") end
local function cdir(id) return state_dir() .. "/containers/" .. id end

-- An undo list: steps registered as an action progresses, run in reverse on failure.
local function undo_list()
  local steps = {}
  return {
    add = function(fn) steps[#steps + 1] = fn end,
    run = function()
      for i = #steps, 1, -1 do
        local ok_, err = pcall(steps[i])
        if not ok_ then log.warn("cleanup step failed: %s", tostring(err)) end
      end
      steps = {}
    end,
    clear = function() steps = {} end,
  }
end

-- --- the writable layer -----------------------------------------------------------------

-- A freshly made, empty ext4 image of `size`, made once per size and copied (sparsely,
-- or by reflink) for every container: creating a container never copies the image.
local function upper_template(size)
  local dir = state_dir() .. "/containers/.templates"
  local t = dir .. "/upper-" .. size .. ".ext4"
  if fs.exists(t) then return t end
  return containers.locked(".template", function()
    if fs.exists(t) then return t end
    fs.mkdir(dir)
    local tmp = t .. ".tmp"
    fs.remove(tmp)
    local ok_, err, code = fs.truncate(tmp, size)
    if not ok_ then return nil, err, code end
    local r, perr, pcode = proc.run({ "mkfs.ext4", "-q", "-F", "-L", "upper", "-m", "0",
      "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp }, { timeout = 120 })
    if not r or r.code ~= 0 then
      fs.remove(tmp)
      return nil, "mkfs.ext4 failed: " .. (r and r.stderr or perr), pcode or "io"
    end
    fs.rename(tmp, t)
    return t
  end)
end

-- --- image config merge --------------------------------------------------------------

local function merge_env(base, over)
  local out, index = json.array(), {}
  local function add(kv)
    local k = kv:match("^([^=]+)")
    if not k then return end
    if index[k] then out[index[k]] = kv else out[#out + 1] = kv; index[k] = #out end
  end
  for _, kv in ipairs(base or {}) do add(kv) end
  for _, kv in ipairs(over or {}) do add(kv) end
  return out
end

local function list_or_empty(v)
  if type(v) == "table" then return v end
  return {}
end

-- Docker's image healthcheck (nanoseconds) in our form (seconds).
local function image_healthcheck(h)
  if type(h) ~= "table" then return nil end
  local test = h.Test or h.test
  if type(test) ~= "table" or #test == 0 then return nil end
  local ns = function(v, d) return (type(v) == "number" and v > 0) and v / 1e9 or d end
  local hc = spec.parse_healthcheck("healthcheck", {
    test = test,
    interval = ns(h.Interval or h.interval, 30),
    timeout = ns(h.Timeout or h.timeout, 30),
    retries = (h.Retries or h.retries or 3) > 0 and (h.Retries or h.retries or 3) or 3,
    start_period = ns(h.StartPeriod or h.start_period, 0),
  })
  return hc
end

-- --- create ----------------------------------------------------------------------------

function M.create(body)
  local cfg, verr = spec.validate(body)
  if not cfg then return nil, verr.message, "invalid", { field = verr.field } end
  for _, mod in ipairs({ "registry", "vm" }) do
    local ok_, err, code = need(mod)
    if not ok_ then return nil, err, code end
  end
  if cfg.name and containers.name_taken(cfg.name) then
    return nil, "the name " .. cfg.name .. " is already in use", "conflict", { field = "name" }
  end
  local name = cfg.name
  while not name or containers.name_taken(name) do name = spec.random_name() end

  -- the image, pulled on demand (progress is published as image.pull.progress events)
  local img = registry.inspect(cfg.image)
  if not img then
    local err, code
    img, err, code = registry.pull(cfg.image, { auth = cfg.auth })
    if not img then return nil, err, code, code == "invalid" and { field = "image" } or nil end
  end
  cfg.auth = nil -- credentials are used for the pull only and never stored
  local ic = img.config or {}
  local entrypoint = cfg.entrypoint or list_or_empty(ic.entrypoint)
  local cmd = cfg.cmd or (cfg.entrypoint and {} or list_or_empty(ic.cmd))
  local argv = json.array()
  for _, a in ipairs(entrypoint) do argv[#argv + 1] = a end
  for _, a in ipairs(cmd) do argv[#argv + 1] = a end
  if #argv == 0 then
    return nil, "cmd: the image has no entrypoint or command and none was given", "invalid", { field = "cmd" }
  end
  cfg.argv = argv
  cfg.env = merge_env(list_or_empty(ic.env), cfg.env)
  cfg.workdir = cfg.workdir or (type(ic.working_dir) == "string" and ic.working_dir ~= "" and ic.working_dir) or "/"
  cfg.user = cfg.user or (type(ic.user) == "string" and ic.user) or ""
  cfg.stop_signal = cfg.stop_signal or (type(ic.stop_signal) == "string" and ic.stop_signal) or "SIGTERM"
  cfg.stop_timeout = cfg.stop_timeout or 10
  if not body.healthcheck then cfg.healthcheck = image_healthcheck(ic.healthcheck) end

  local id = moonbox.id()
  local undo = undo_list()
  local dir = cdir(id)
  local ok_, err, code = fs.mkdir(dir)
  if not ok_ then return nil, err, code end
  undo.add(function() fs.rmtree(dir) end)

  -- volumes: named ones are created on first use (like docker), anonymous ones for
  -- -v /path and for the image's declared volumes; all attached to this container
  local image_volumes = {}
  if type(ic.volumes) == "table" then
    for p in pairs(ic.volumes) do if type(p) == "string" then image_volumes[#image_volumes + 1] = p end end
    table.sort(image_volumes)
  end
  cfg.vm_disks, cfg.vm_shares, cfg.vm_mounts, cfg.mounts = json.array(), json.array(), json.array(), json.array()
  if #cfg.volumes > 0 or #image_volumes > 0 then
    local okv, verr2, vcode = need("volume")
    if not okv then undo.run(); return nil, verr2, vcode end
    local specs = {}
    for i, v in ipairs(cfg.volumes) do
      specs[i] = { type = v.type, source = v.source ~= "" and v.source or nil, target = v.destination,
                   readonly = v.read_only }
    end
    local ent, e, ecode = volume.vm_entries(specs, { owner = id, image_volumes = image_volumes })
    if not ent then undo.run(); return nil, e, ecode, ecode == "invalid" and { field = "volumes" } or nil end
    undo.add(function() volume.detach_all(id, { remove_anonymous = true }) end)
    cfg.vm_disks, cfg.vm_shares, cfg.vm_mounts = ent.disks, ent.shares, ent.mounts
    for _, v in ipairs(ent.volumes or {}) do
      cfg.mounts[#cfg.mounts + 1] = { type = "volume", name = v.name, source = v.name, destination = v.target,
                                      read_only = v.readonly == true, anonymous = v.anonymous == true }
    end
    for _, sh in ipairs(ent.shares or {}) do
      for _, m in ipairs(ent.mounts) do
        if m.type == "9p" and m.tag == sh.tag then
          cfg.mounts[#cfg.mounts + 1] = { type = "bind", source = sh.path, destination = m.target,
                                          read_only = sh.readonly == true }
        end
      end
    end
  end
  cfg.volumes = nil

  -- the writable layer
  local tmpl, terr, tcode = upper_template(cfg.disk_size)
  if not tmpl then undo.run(); return nil, terr, tcode end
  local upper = dir .. "/upper.ext4"
  ok_, err, code = fs.copy(tmpl, upper)
  if not ok_ then undo.run(); return nil, err, code end

  local holder, herr, hcode = registry.use(img.id, id)
  if not holder then undo.run(); return nil, herr, hcode end
  undo.add(function() registry.release(img.id, id) end)

  local now = timer.time()
  local c = {
    id = id, name = name, image = cfg.image, image_id = img.id, state = "created",
    reason = "created", since = now, created = now, config = cfg,
    runtime = { upper = upper, restart_count = 0, run = 0 },
  }
  ok_, err, code = containers.insert(c)
  if not ok_ then
    undo.run()
    if code == "conflict" then return nil, "the name " .. name .. " is already in use", "conflict", { field = "name" } end
    return nil, err, code
  end
  undo.clear()
  events.emit("container.created", { id = id, name = name, image = cfg.image })
  return containers.get(id)
end

-- --- start -----------------------------------------------------------------------------

local function vm_id_for(c)
  return "c" .. containers.short(c.id) .. "-" .. c.runtime.run
end

-- The vm.create spec of a VM with the container's file system: the image's disk, the
-- writable layer, volumes and binds (no NIC yet).
local function storage_spec(c, img, id)
  local cfg = c.config
  local spec = {
    id = id, name = id,
    -- the container gets the memory it asked for (its cgroup limit); the VM has 64 MiB
    -- more for the guest kernel and the agent
    vcpus = cfg.cpus, memory_mib = cfg.memory // MIB + 64,
    disks = { { path = img.disk, readonly = true, serial = "lower" },
              { path = c.runtime.upper, readonly = false, serial = "upper" } },
    shares = {}, nics = {}, mounts = {},
    hostname = cfg.hostname or containers.short(c.id),
    root = { type = "overlay", lower = "lower", upper = "upper" },
    labels = { container = c.id, name = c.name },
  }
  for _, d in ipairs(cfg.vm_disks or {}) do spec.disks[#spec.disks + 1] = d end
  for _, sh in ipairs(cfg.vm_shares or {}) do spec.shares[#spec.shares + 1] = sh end
  for _, m in ipairs(cfg.vm_mounts or {}) do spec.mounts[#spec.mounts + 1] = m end
  return spec
end

-- Stop a VM (gracefully, so its disks are synced; killed if that fails) and remove it.
local function dispose_vm(vmid)
  local v = vm.get(vmid)
  if v and (v.state == "running" or v.state == "paused" or v.state == "starting") then
    local ok_ = vm.stop(vmid, { timeout = 5 })
    if not ok_ then vm.kill(vmid) end
  end
  vm.remove(vmid, { force = true })
end

-- Network, volumes and disks for the VM; returns the vm.create spec.
local function build_vm(c, img, undo)
  local cfg, rt = c.config, c.runtime
  local vmspec = storage_spec(c, img, vm_id_for(c))
  if not rawget(_G, "net") then
    return nil, "the net plugin is not loaded", "unsupported"
  end
  -- the same flow in bridge and rootless (QEMU user networking) mode: attach, publish
  -- (before the VM starts: in user mode the forwards are on QEMU's command line), nic
  local ep, err, code = net.attach(cfg.network, c.id, { name = c.name })
  if not ep then return nil, err, code, code == "not_found" and { field = "network" } or nil end
  undo.add(function() net.detach(c.id) end)
  rt.network = { name = ep.network, ip = ep.ip, mac = ep.mac, tap = ep.tap, mode = ep.mode }
  rt.ports = json.array()
  if #cfg.ports > 0 then
    local want = {}
    for i, p in ipairs(cfg.ports) do
      want[i] = { host_ip = p.host_ip ~= "" and p.host_ip or nil, host_port = p.host_port ~= 0 and p.host_port or nil,
                  container_port = p.container_port, proto = p.proto }
    end
    local pub, perr, pcode = net.publish(c.id, want)
    if not pub then return nil, perr, pcode, pcode == "invalid" and { field = "ports" } or nil end
    for i, p in ipairs(pub) do
      rt.ports[i] = { host_ip = p.host_ip, host_port = p.host_port, container_port = p.container_port, proto = p.proto }
    end
  end
  local nic = net.nic(c.id) or ep.nic
  if nic.type == "user" then
    -- rootless: the vm plugin adds its own forward for the agent; pass the published ones
    local fwd = {}
    for _, f in ipairs(nic.hostfwd or {}) do
      if f.guest_port ~= (ep.agent and ep.agent.port or 1025) or f.host_port == 0 then
        fwd[#fwd + 1] = { proto = f.proto, host_addr = f.host_ip, host_port = f.host_port, guest_port = f.guest_port }
      end
    end
    nic = { type = "user", mac = nic.mac, restrict = nic.restrict, forwards = fwd }
  end
  vmspec.nics = { nic }
  -- the guest's addresses (the vm plugin takes the MAC from the NIC itself)
  vmspec.network = {}
  for k, v in pairs(ep.boot or {}) do if k ~= "mac" then vmspec.network[k] = v end end
  return vmspec
end

local start_watchers

-- Tear down what a run set up (VM, ports, network); keeps the writable layer.
local function teardown(c, how)
  local rt = c.runtime
  local l = live(c.id)
  for name, h in pairs(l.tasks) do
    if name ~= how then h:cancel() end
    l.tasks[name] = nil
  end
  if rt.vm_id and rawget(_G, "vm") then dispose_vm(rt.vm_id) end
  rt.vm_id = nil
  if rawget(_G, "net") and rt.network then
    net.detach(c.id) -- also unpublishes its ports
  end
  rt.network, rt.ports = nil, nil
  logs.poke(c.id)
end

local function do_start(c, reason)
  for _, mod in ipairs({ "registry", "vm" }) do
    local ok_, err, code = need(mod)
    if not ok_ then return nil, err, code end
  end
  local img, ierr, icode = registry.inspect(c.image_id)
  if not img then return nil, "the image is gone: " .. tostring(ierr), icode end
  local rt = c.runtime
  rt.run = (rt.run or 0) + 1
  rt.error, rt.exit_code, rt.signal, rt.oom_killed = nil, nil, nil, nil
  rt.stop_requested = nil
  rt.log_offsets = { stdout = 0, stderr = 0 }
  rt.health = c.config.healthcheck and { status = "starting", failing_streak = 0, log = json.array() } or nil
  containers.transition(c, "booting", reason)
  local undo = undo_list()
  local function fail(err, code)
    rt.error = err
    undo.run()
    teardown(c)
    containers.transition(c, "error", err)
    return nil, err, code
  end
  local vmspec, err, code = build_vm(c, img, undo)
  if not vmspec then return fail(err, code) end
  local cfg = c.config
  local proc_spec = {
    id = "main", argv = cfg.argv, env = cfg.env, cwd = cfg.workdir, user = cfg.user,
    hostname = cfg.hostname or containers.short(c.id), tty = cfg.tty, stdin = cfg.stdin,
    buffer = 4 * MIB, memory_max = cfg.memory,
  }
  -- moonbox-init starts the main process as soon as its disks and network are up
  -- (guest/PROTOCOL.md, boot config "run"); the vm.run below then finds it running, or
  -- retries and reports why it could not start.
  vmspec.run = proc_spec
  local v
  v, err, code = vm.create(vmspec)
  if not v then return fail("cannot create the VM: " .. tostring(err), code) end
  rt.vm_id = vmspec.id
  containers.save(c)
  v, err, code = vm.start(rt.vm_id)
  if not v then return fail("the VM did not start: " .. tostring(err), code) end
  containers.transition(c, "initializing", "the guest agent is up")
  local r
  r, err, code = vm.run(rt.vm_id, proc_spec)
  if not r then return fail(tostring(err), code == "not_found" and "invalid" or code) end
  rt.started_at = timer.time()
  rt.finished_at = nil
  undo.clear()
  containers.transition(c, "running", reason == "created" and "started" or reason, { vm = rt.vm_id })
  start_watchers(c)
  return true
end

-- --- the watchers ----------------------------------------------------------------------

local on_exit

local function exit_watcher(id)
  local c = containers.get(id)
  if not c or not c.runtime.vm_id then return end
  local vmid = c.runtime.vm_id
  local st, err
  repeat
    st, err = vm.wait(vmid, "main")
    -- a timeout only means "still running"; keep waiting
  until st or (err ~= "timeout" and err ~= nil and not tostring(err):find("timeout"))
  live(id).exit = st or { error = err }
  containers.cond(id):signal()
  on_exit(id, vmid, st, err)
end

local function log_pump(id, stream)
  local c = containers.get(id)
  if not c or not c.runtime.vm_id then return end
  local vmid, offset = c.runtime.vm_id, (c.runtime.log_offsets or {})[stream] or 0
  local l = live(id)
  l.writer = l.writer or logs.writer(id)
  while true do
    local data, next_off, eof = vm.read(vmid, "main", stream, offset, { wait = 25, max = 256 * 1024 })
    if data == nil then
      if next_off == "timeout" or tostring(next_off):find("timeout") then
        -- nothing new; ask again
      else
        break -- the VM or the process is gone
      end
    else
      if #data > 0 then
        l.writer:write(stream, data) -- written to the file before the offset is kept
      end
      if next_off and next_off ~= offset then
        offset = next_off
        local cur = containers.get(id)
        if not cur then return end
        cur.runtime.log_offsets = cur.runtime.log_offsets or {}
        cur.runtime.log_offsets[stream] = offset
        containers.save(cur)
      end
      if eof then break end
    end
  end
  l.writer:flush(stream)
end

local function sum(list, field)
  local n = 0
  for _, v in pairs(list or {}) do n = n + (tonumber(v[field]) or 0) end
  return n
end

-- One normalised sample from vm.stats (cpu_percent relative to the previous sample).
function M.sample(c, prev)
  local s, err, code = vm.stats(c.runtime.vm_id)
  if not s then return nil, err, code end
  local now = timer.now()
  local cpu, mem, pids = s.cpu or {}, s.memory or {}, s.pids or {}
  local limit = tonumber(mem.limit) or c.config.memory
  local out = {
    time = timer.time(),
    mono = now,
    cpu_seconds = (tonumber(cpu.usage_usec) or 0) / 1e6,
    memory_used = tonumber(mem.current) or 0,
    memory_limit = (limit and limit > 0) and limit or c.config.memory,
    net_rx = sum(s.networks, "rx_bytes"),
    net_tx = sum(s.networks, "tx_bytes"),
    block_read = sum(s.block, "read_bytes"),
    block_write = sum(s.block, "write_bytes"),
    pids = tonumber(pids.current) or 0,
    uptime = tonumber(s.uptime_s) or (c.runtime.started_at and timer.time() - c.runtime.started_at) or 0,
  }
  out.memory_percent = out.memory_limit > 0 and (100 * out.memory_used / out.memory_limit) or 0
  if prev and now > prev.mono then
    out.cpu_percent = math.max(0, 100 * (out.cpu_seconds - prev.cpu_seconds) / (now - prev.mono))
  else
    out.cpu_percent = 0
  end
  return out
end

local function stats_sampler(id)
  local l = live(id)
  while true do
    local c = containers.get(id)
    if not c or not c.runtime.vm_id then return end
    if c.state == "running" then
      local s = M.sample(c, l.last_sample)
      if s then
        l.last_sample = s
        local h = l.history
        h[#h + 1] = s
        if #h > STATS_KEEP then table.remove(h, 1) end
      end
    end
    timer.sleep(STATS_EVERY)
  end
end

-- What the health policy's check loop can do.
local function health_ctx(id)
  local ctx = {}
  function ctx.container() return containers.get(id) end
  function ctx.exec(argv, timeout)
    local c = containers.get(id)
    if not c or not c.runtime.vm_id then return nil, "not running", "conflict" end
    return vm.command(c.runtime.vm_id, argv, { timeout = timeout })
  end
  function ctx.record(status, entry)
    local c = containers.get(id)
    if not c then return end
    local h = c.runtime.health or { log = json.array() }
    local changed = h.status ~= status
    h.status = status
    h.failing_streak = status == "unhealthy" and (h.failing_streak or 0)
      or (entry and entry.exit_code ~= 0 and (h.failing_streak or 0) + 1 or 0)
    if entry then
      h.log = h.log or json.array()
      h.log[#h.log + 1] = entry
      while #h.log > 5 do table.remove(h.log, 1) end
    end
    c.runtime.health = h
    containers.save(c)
    if changed then events.emit("container.health", { id = id, name = c.name, status = status }) end
    return h
  end
  function ctx.restart(reason)
    -- the decision is the health policy's; the action is ours
    task.spawn(function() M.restart(id, reason or "unhealthy") end)
  end
  return ctx
end

start_watchers = function(c)
  local id = c.id
  local l = live(id)
  l.exit = nil
  l.writer = logs.writer(id)
  l.tasks.exit = task.spawn(exit_watcher, id)
  l.tasks.stdout = task.spawn(log_pump, id, "stdout")
  if not c.config.tty then l.tasks.stderr = task.spawn(log_pump, id, "stderr") end
  l.tasks.stats = task.spawn(stats_sampler, id)
  if c.config.healthcheck and policy.get("health") then
    l.tasks.health = task.spawn(function()
      policy.call("health", "check", containers.get(id), health_ctx(id))
    end)
  end
end
M.start_watchers = start_watchers

-- The main process ended by itself (or its VM died): record, tear down, ask the policy.
on_exit = function(id, vmid, st, err)
  containers.lock(id)
  local c = containers.get(id)
  if not c or c.runtime.vm_id ~= vmid or (c.state ~= "running" and c.state ~= "paused") then
    containers.unlock(id)
    return -- someone else (stop, remove) is handling it
  end
  local rt = c.runtime
  rt.finished_at = timer.time()
  local died = st == nil
  if st then
    rt.exit_code, rt.signal, rt.oom_killed = st.exit_code, st.signal, st.oom_killed == true
    if rt.exit_code == nil and st.signal then rt.exit_code = 128 + st.signal end
  else
    rt.exit_code = rt.exit_code or 255
    local v = vm.get(vmid)
    rt.error = "the VM stopped unexpectedly" .. (v and v.exit and v.exit.reason and (": " .. v.exit.reason) or "")
      .. (err and (" (" .. tostring(err) .. ")") or "")
    rt.console_tail = vm.console and vm.console(vmid, { tail = 2000 }) or nil
  end
  -- let the log pumps drain what the process wrote before it ended
  local l = live(id)
  for _, name in ipairs({ "stdout", "stderr" }) do
    local h = l.tasks[name]
    if h then h:wait(5) end
  end
  teardown(c, "exit")
  -- the last lines, so that a container that died at once explains itself in inspect
  local tail = json.array()
  for _, e in ipairs(logs.read(id, { tail = 10, since = rt.started_at })) do tail[#tail + 1] = e.line end
  rt.log_tail = tail
  local reason = died and rt.error or string.format("exited with code %d%s", rt.exit_code,
    rt.oom_killed and " (out of memory)" or "")
  containers.transition(c, died and "error" or "stopped", reason,
    { exit_code = rt.exit_code, oom_killed = rt.oom_killed })
  local exit = { exit_code = rt.exit_code, signal = rt.signal, oom_killed = rt.oom_killed, error = died and rt.error,
                 started_at = rt.started_at, finished_at = rt.finished_at }
  if c.config.auto_remove then
    containers.unlock(id)
    M.remove(id, { force = true })
    return
  end
  local delay, why = policy.call("restart", "on_exit", c, exit)
  containers.save(c) -- the policy may keep counters in c.runtime
  if delay then
    rt.restart_count = (rt.restart_count or 0) + 1
    containers.transition(c, "restarting", string.format("restarting in %.1f s (%s)", delay, reason))
    l.restart_timer = timer.after(delay, function()
      l.restart_timer = nil
      local cur = containers.get(id)
      if cur and cur.state == "restarting" then M.start(id, "restarted by the restart policy") end
    end)
  elseif why then
    events.emit("container.gave_up", { id = id, name = c.name, reason = why })
    log.warn("container %s: %s", c.name, why)
  end
  containers.unlock(id)
end

-- --- the actions ------------------------------------------------------------------------

local function not_allowed(c, action)
  return nil, string.format("cannot %s container %s: it is %s", action, c.name, c.state), "conflict",
    { state = c.state }
end

function M.start(ref, reason)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  containers.lock(c.id)
  c = containers.get(c.id)
  if not c then containers.unlock(ref); return nil, "no such container: " .. ref, "not_found" end
  local ok_, res, e2, c2 = pcall(function()
    if c.state == "restarting" then
      local l = live(c.id)
      if l.restart_timer then l.restart_timer:cancel(); l.restart_timer = nil end
    elseif not containers.ALLOWED.start[c.state] then
      return not_allowed(c, "start")
    end
    return do_start(c, reason or "started")
  end)
  containers.unlock(c.id)
  if not ok_ then error(res, 0) end
  return res, e2, c2
end

-- Stop: the stop signal, a grace period, then SIGKILL, then the VM is shut down.
local function do_stop(c, timeout, why)
  local rt, cfg = c.runtime, c.config
  local l = live(c.id)
  if l.restart_timer then l.restart_timer:cancel(); l.restart_timer = nil end
  if c.state == "restarting" then
    rt.stop_requested = true
    containers.transition(c, "stopped", why)
    return true
  end
  rt.stop_requested = true
  containers.transition(c, "stopping", why)
  local vmid = rt.vm_id
  if vmid and c.state ~= "error" then
    local v = vm.get(vmid)
    if v and v.state == "paused" then vm.resume(vmid) end
    local sig = spec.signal_number(cfg.stop_signal or "SIGTERM") or 15
    vm.signal(vmid, "main", sig)
    local deadline = timer.now() + (timeout or cfg.stop_timeout or 10)
    local cv = containers.cond(c.id)
    while not l.exit and timer.now() < deadline do cv:wait(math.max(0.05, deadline - timer.now())) end
    if not l.exit then
      vm.signal(vmid, "main", 9)
      local kill_deadline = timer.now() + 5
      while not l.exit and timer.now() < kill_deadline do cv:wait(0.5) end
    end
  end
  local st = l.exit
  rt.finished_at = timer.time()
  if st and not st.error then
    rt.exit_code, rt.signal, rt.oom_killed = st.exit_code, st.signal, st.oom_killed == true
    if rt.exit_code == nil and st.signal then rt.exit_code = 128 + st.signal end
  else
    rt.exit_code = rt.exit_code or 137
  end
  for _, name in ipairs({ "stdout", "stderr" }) do
    local h = l.tasks[name]
    if h then h:wait(3) end
  end
  teardown(c, "exit")
  containers.transition(c, "stopped", why, { exit_code = rt.exit_code })
  return true
end

function M.stop(ref, opts)
  opts = opts or {}
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not containers.ALLOWED.stop[c.state] then return not_allowed(c, "stop") end
    return do_stop(c, opts.timeout, opts.reason or "stopped by request")
  end)
end

function M.restart(ref, reason, opts)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not containers.ALLOWED.restart[c.state] and c.state ~= "restarting" then return not_allowed(c, "restart") end
    if c.state == "running" or c.state == "paused" or c.state == "restarting" then
      do_stop(c, opts and opts.timeout, "restarting: " .. (reason or "requested"))
      c = containers.get(c.id)
    end
    c.runtime.restart_count = (c.runtime.restart_count or 0) + 1
    return do_start(c, reason or "restarted by request")
  end)
end

function M.kill(ref, signal)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  local sig = spec.signal_number(signal or "SIGKILL")
  if not sig then return nil, "signal: unknown signal " .. tostring(signal), "invalid", { field = "signal" } end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not containers.ALLOWED.kill[c.state] then return not_allowed(c, "kill") end
    if c.state == "paused" then vm.resume(c.runtime.vm_id) end
    local ok_, e, cd = vm.signal(c.runtime.vm_id, "main", sig)
    if not ok_ then return nil, e, cd end
    events.emit("container.kill", { id = c.id, name = c.name, signal = sig })
    return true
  end)
end

function M.pause(ref)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not containers.ALLOWED.pause[c.state] then return not_allowed(c, "pause") end
    local ok_, e, cd = vm.pause(c.runtime.vm_id)
    if not ok_ then return nil, e, cd end
    containers.transition(c, "paused", "paused by request")
    return true
  end)
end

function M.resume(ref)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not containers.ALLOWED.resume[c.state] then return not_allowed(c, "resume") end
    local ok_, e, cd = vm.resume(c.runtime.vm_id)
    if not ok_ then return nil, e, cd end
    containers.transition(c, "running", "resumed by request")
    return true
  end)
end

function M.remove(ref, opts)
  opts = opts or {}
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not c then return true end
    if not containers.ALLOWED.remove[c.state] then
      if not opts.force then
        return nil, string.format("cannot remove container %s: it is %s (stop it first, or force)", c.name, c.state),
          "conflict", { state = c.state }
      end
      if c.state ~= "creating" then do_stop(c, 0, "removing") end
      c = containers.get(c.id)
    end
    teardown(c)
    L[c.id] = nil
    if rawget(_G, "volume") then
      -- named volumes are kept; anonymous ones go with the container
      volume.detach_all(c.id, { remove_anonymous = true })
    end
    if rawget(_G, "registry") and c.image_id then registry.release(c.image_id, c.id) end
    logs.remove(c.id)
    fs.rmtree(cdir(c.id))
    containers.delete(c.id)
    events.emit("container.removed", { id = c.id, name = c.name })
    return true
  end)
end

function M.update(ref, body)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  if type(body) ~= "table" then return nil, "body: must be a JSON object", "invalid", { field = "body" } end
  for k in pairs(body) do
    if k ~= "cpus" and k ~= "memory" and k ~= "restart" then
      return nil, k .. ": cannot be updated (cpus, memory and restart can)", "invalid", { field = k }
    end
  end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    local probe = { image = c.image, cpus = body.cpus or c.config.cpus, memory = body.memory or c.config.memory,
                    restart = body.restart or c.config.restart }
    local checked, verr = spec.validate(probe)
    if not checked then return nil, verr.message, "invalid", { field = verr.field } end
    if (body.cpus or body.memory) and not containers.ALLOWED.update[c.state] then
      return nil, "resources can only be changed while the container is stopped (it is " .. c.state .. ")",
        "conflict", { state = c.state }
    end
    c.config.cpus, c.config.memory, c.config.restart = checked.cpus, checked.memory, checked.restart
    containers.save(c)
    events.emit("container.updated", { id = c.id, name = c.name })
    return containers.get(c.id)
  end)
end

-- Wait for the container to leave the running states (condition "not-running"), or for
-- its next exit ("next-exit"), or for its removal ("removed").
function M.wait(ref, condition, timeout)
  condition = condition or "not-running"
  local c, err, code = containers.get(ref)
  if not c then
    -- removed already (auto-remove is quick): its last status is still known for a while
    local gone = condition == "removed" and containers.gone(ref)
    if gone then return gone end
    return nil, err, code
  end
  local id = c.id
  local deadline = timeout and (timer.now() + timeout) or nil
  local running = { booting = true, initializing = true, running = true, paused = true, stopping = true,
                    restarting = true, creating = true }
  local first_run = c.runtime.run or 0
  while true do
    c = containers.get(id)
    if condition == "removed" then
      if not c then return containers.gone(id) or { exit_code = 0 } end
    elseif not c then
      return nil, "the container was removed", "not_found"
    elseif condition == "next-exit" then
      if (c.runtime.run or 0) >= first_run and c.runtime.finished_at and c.runtime.finished_at >= (c.runtime.started_at or 0)
        and not running[c.state] and c.state ~= "created" then
        return { exit_code = c.runtime.exit_code, signal = c.runtime.signal, oom_killed = c.runtime.oom_killed == true,
                 error = c.runtime.error }
      end
    elseif not running[c.state] then
      return { exit_code = c.runtime.exit_code, signal = c.runtime.signal, oom_killed = c.runtime.oom_killed == true,
               error = c.runtime.error }
    end
    local left = deadline and (deadline - timer.now()) or 30
    if deadline and left <= 0 then return nil, "timeout", "timeout" end
    containers.cond(id):wait(math.min(left, 30))
  end
end

-- What an exec'd process gets unless the request says otherwise, like `docker exec`: the
-- container's environment (the request's env on top: a later K=V replaces an earlier
-- one), its user and its working directory. env: list of "K=V" or {K = "V"} or nil.
function M.exec_defaults(c, env, user, workdir)
  local over = {}
  if type(env) == "table" then
    if #env > 0 or next(env) == nil then
      for _, kv in ipairs(env) do over[#over + 1] = tostring(kv) end
    else
      local keys = {}
      for k in pairs(env) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do over[#over + 1] = k .. "=" .. tostring(env[k]) end
    end
  end
  local cfg = c.config or {}
  local function given(v) return v ~= nil and v ~= "" and v ~= json.null end
  return merge_env(list_or_empty(cfg.env), over),
         given(user) and user or cfg.user,
         given(workdir) and workdir or cfg.workdir
end

-- Non-interactive exec: {cmd=, env=, user=, workdir=, stdin=} -> {exit_code, stdout, stderr}
function M.exec(ref, body)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  if c.state ~= "running" then return not_allowed(c, "exec in") end
  if type(body) ~= "table" then return nil, "body: must be a JSON object", "invalid", { field = "body" } end
  local cmd = body.cmd
  if type(cmd) == "string" then cmd = { "/bin/sh", "-c", cmd } end
  if type(cmd) ~= "table" or #cmd == 0 then return nil, "cmd: a non-empty array is required", "invalid", { field = "cmd" } end
  for i, a in ipairs(cmd) do
    if type(a) ~= "string" then return nil, "cmd: item " .. i .. " must be a string", "invalid", { field = "cmd" } end
  end
  if body.stdin ~= nil and type(body.stdin) ~= "string" then
    return nil, "stdin: must be a string", "invalid", { field = "stdin" }
  end
  local timeout = body.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0 or timeout > 86400) then
    return nil, "timeout: must be a number of seconds", "invalid", { field = "timeout" }
  end
  if body.env ~= nil and type(body.env) ~= "table" then
    return nil, "env: must be a list of \"K=V\" strings or an object", "invalid", { field = "env" }
  end
  local env, user, cwd = M.exec_defaults(c, body.env, body.user, body.workdir)
  local r, e, cd = vm.command(c.runtime.vm_id, cmd, {
    timeout = timeout or 300, stdin = body.stdin, env = env, user = user, cwd = cwd,
  })
  if not r then return nil, e, cd == "not_found" and "invalid" or cd end
  return r
end

-- --- files of a container -----------------------------------------------------------------

-- fn(vmid, c) with a VM that has the container's file system: its own VM while it runs,
-- else (created, stopped, error) a short-lived one with the same root disks, volumes and
-- binds, no network and no process (the guest mounts the root, nothing runs), so that
-- `docker cp` works on a stopped container too. Holds the container's lock meanwhile (a
-- start waits). Returns fn's results, or nil, err, code.
local FILES_STATES = { created = true, stopped = true, error = true }

function M.with_files(ref, fn)
  local c, err, code = containers.get(ref)
  if not c then return nil, err, code end
  if c.state == "running" or c.state == "paused" then return fn(c.runtime.vm_id, c) end
  if not FILES_STATES[c.state] then return not_allowed(c, "copy files of") end
  for _, mod in ipairs({ "registry", "vm" }) do
    local ok_, nerr, ncode = need(mod)
    if not ok_ then return nil, nerr, ncode end
  end
  return containers.locked(c.id, function()
    c = containers.get(c.id)
    if not c then return nil, "the container was removed", "not_found" end
    if c.state == "running" or c.state == "paused" then return fn(c.runtime.vm_id, c) end
    if not FILES_STATES[c.state] then return not_allowed(c, "copy files of") end
    local img, ierr, icode = registry.inspect(c.image_id)
    if not img then return nil, "the image is gone: " .. tostring(ierr), icode end
    local id = "c" .. containers.short(c.id) .. "-files-" .. moonbox.random(3)
    local spec = storage_spec(c, img, id)
    spec.vcpus, spec.memory_mib = 1, 128
    spec.nics = { { type = "user", restrict = true } }
    spec.labels.purpose = "files"
    local v, verr, vcode = vm.create(spec)
    if not v then return nil, "cannot create a VM for the container's files: " .. tostring(verr), vcode end
    local res
    v, verr, vcode = vm.start(id)
    if v then
      res = table.pack(pcall(fn, id, c))
    end
    dispose_vm(id)
    if not v then return nil, "the VM for the container's files did not start: " .. tostring(verr), vcode end
    if not res[1] then error(res[2], 0) end
    return table.unpack(res, 2, res.n)
  end)
end

-- --- live restore ------------------------------------------------------------------------

-- After a daemon start: re-adopt running containers, finish what was interrupted, and
-- let restart policies act on containers whose VM went away while we were down.
function M.reconcile()
  -- VMs lent for a stopped container's files (with_files) when the daemon stopped
  for _, v in ipairs(rawget(_G, "vm") and vm.list() or {}) do
    if type(v.labels) == "table" and v.labels.purpose == "files" then
      log.info("removing VM %s (it served a container's files when the daemon stopped)", v.id)
      vm.remove(v.id, { force = true })
    end
  end
  for _, c in ipairs(containers.all()) do
    local ok_, err = pcall(function()
      local s = c.state
      if s == "running" or s == "paused" or s == "initializing" or s == "booting" or s == "stopping" then
        local v = c.runtime.vm_id and rawget(_G, "vm") and vm.get(c.runtime.vm_id)
        if v and (v.state == "running" or v.state == "paused") and (s == "running" or s == "paused") then
          log.info("container %s: re-adopted its running VM %s", c.name, c.runtime.vm_id)
          events.emit("container.restored", { id = c.id, name = c.name })
          start_watchers(c)
        else
          containers.lock(c.id)
          c = containers.get(c.id)
          c.runtime.finished_at = timer.time()
          c.runtime.exit_code = c.runtime.exit_code or 255
          c.runtime.error = "the container was " .. s .. " when the daemon stopped and its VM is gone"
          teardown(c)
          containers.transition(c, "error", c.runtime.error)
          local delay = policy.call("restart", "on_exit", c, { exit_code = 255, error = c.runtime.error,
            started_at = c.runtime.started_at, finished_at = c.runtime.finished_at })
          containers.save(c)
          containers.unlock(c.id)
          if delay then
            containers.transition(c, "restarting", "restart policy after the daemon restarted")
            timer.after(delay, function() M.start(c.id, "restarted by the restart policy") end)
          end
        end
      elseif s == "restarting" then
        timer.after(0.5, function() M.start(c.id, "restarted by the restart policy") end)
      elseif s == "creating" then
        containers.transition(c, "error", "the daemon stopped while the container was being created")
      end
    end)
    if not ok_ then log.error("reconcile %s: %s", c.name, tostring(err)) end
  end
end

-- The last usage sample and the history (for charts).
function M.history(id)
  return live(id).history
end

return M
