-- A stand-in for the vm and net plugins, for the CLI's end-to-end tests only: loaded as an
-- operator script (moonbox serve --scripts tests/cli/fake) when the real plugins are not
-- there. The daemon's real containers API, runtime, logs, registry and store run on top
-- of it; only "inside the VM" is simulated: a process is a Lua task interpreting a tiny
-- shell (echo, cat, sleep, exit, printenv, pwd, hostname, stty size, tick, true, false,
-- sh -c "a; b", and an interactive sh with a prompt on a tty), and the guest file system
-- is an in-memory tree.
if rawget(_G, "vm") then return end -- the real plugin is loaded: leave it alone

local insecure = os.getenv("MOONBOX_TEST_INSECURE")
if insecure and insecure ~= "" and rawget(_G, "registry") then
  registry.configure { insecure = { insecure } }
end

local S = rawget(_G, "__fakevm")
if not S then
  S = { vms = {} }
  rawset(_G, "__fakevm", S)
end

local KILLED = setmetatable({}, { __tostring = function() return "killed" end })

-- --- the guest file system ----------------------------------------------------------------

local function new_fs(spec)
  local now = timer.time()
  local root = { type = "directory", mode = 493, mtime = now, children = {} }
  local fsys = { root = root }
  local function mk(path, node)
    local parent = root
    local parts = {}
    for seg in path:gmatch("[^/]+") do parts[#parts + 1] = seg end
    for i = 1, #parts - 1 do
      local nxt = parent.children[parts[i]]
      if not nxt then
        nxt = { type = "directory", mode = 493, mtime = now, children = {} }
        parent.children[parts[i]] = nxt
      end
      parent = nxt
    end
    parent.children[parts[#parts]] = node
  end
  fsys.mk = mk
  local function file(path, data, mode) mk(path, { type = "file", mode = mode or 420, mtime = now, data = data }) end
  file("/etc/hostname", (spec.hostname or "fake") .. "\n")
  file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
  file("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
  file("/proc/1/stat", "1 (sh) S 0 1 1 0 -1 4194560 0 0 0 0 150 50 0 0 20 0 1 0 100 0 0\n")
  file("/proc/1/status", "Name:\tsh\nUid:\t0\t0\t0\t0\n")
  file("/proc/1/cmdline", "/bin/sh\0-c\0main\0")
  mk("/tmp", { type = "directory", mode = 1023, mtime = now, children = {} })
  mk("/bin/sh", { type = "symlink", mode = 511, mtime = now, target = "busybox" })
  return fsys
end

local function lookup(fsys, path)
  local node = fsys.root
  for seg in path:gmatch("[^/]+") do
    if node.type ~= "directory" then return nil end
    node = node.children[seg]
    if not node then return nil end
  end
  return node
end

local function parent_and_name(fsys, path)
  local dir, name = path:match("^(.*)/([^/]+)/*$")
  if not dir then return nil end
  local parent = lookup(fsys, dir == "" and "/" or dir)
  return parent, name
end

-- --- processes -------------------------------------------------------------------------------

local function vm_of(id)
  local v = S.vms[id]
  if not v then return nil, "no such vm: " .. tostring(id), "not_found" end
  return v
end

local function proc_write(p, stream, data)
  if p.tty then
    stream = "stdout"
    data = data:gsub("\r?\n", "\r\n")
  end
  p.out[stream] = p.out[stream] .. data
  p.cond:signal()
end

local function check_alive(p)
  if p.exit then error(KILLED, 0) end
end

local function psleep(p, secs)
  local deadline = timer.now() + secs
  while true do
    check_alive(p)
    local left = deadline - timer.now()
    if left <= 0 then return end
    p.cond:wait(left)
  end
end

-- Reads stdin: one chunk, or nil at its end.
local function pread(p)
  while true do
    check_alive(p)
    if #p.stdin > 0 then
      local d = p.stdin
      p.stdin = ""
      return d
    end
    if p.stdin_closed then return nil end
    p.cond:wait(1)
  end
end

local function words(s)
  local out = {}
  local i = 1
  while i <= #s do
    local c = s:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif c == "'" or c == '"' then
      local j = s:find(c, i + 1, true) or (#s + 1)
      out[#out + 1] = s:sub(i + 1, j - 1)
      i = j + 1
    else
      local j = s:find("[%s]", i) or (#s + 1)
      out[#out + 1] = s:sub(i, j - 1)
      i = j
    end
  end
  return out
end

local run_argv

local function env_get(p, k)
  for _, kv in ipairs(p.env or {}) do
    local kk, vv = kv:match("^([^=]+)=(.*)$")
    if kk == k then return vv end
  end
end

local function run_script(p, script)
  local code = 0
  for part in (script .. ";"):gmatch("([^;]*);") do
    part = part:gsub("^%s+", ""):gsub("%s+$", "")
    if part ~= "" then
      local argv = words(part)
      local stream = "stdout"
      if argv[#argv] == ">&2" or argv[#argv] == "1>&2" then argv[#argv] = nil; stream = "stderr" end
      if argv[1] == "exit" then return tonumber(argv[2]) or code, true end
      code = run_argv(p, argv, stream)
    end
  end
  return code
end

-- The interactive shell on a tty: a prompt, echo, a line at a time.
local function interactive(p)
  local line = ""
  proc_write(p, "stdout", "# ")
  while true do
    local data = pread(p)
    if not data then return 0 end
    for i = 1, #data do
      local c = data:sub(i, i)
      if c == "\r" or c == "\n" then
        proc_write(p, "stdout", "\n")
        local code, exited = run_script(p, line)
        if exited then return code end
        line = ""
        proc_write(p, "stdout", "# ")
      elseif c == "\4" and line == "" then
        return 0
      elseif c == "\127" then
        line = line:sub(1, -2)
        proc_write(p, "stdout", "\b \b")
      else
        line = line .. c
        proc_write(p, "stdout", c)
      end
    end
  end
end

run_argv = function(p, argv, stream)
  stream = stream or "stdout"
  if (argv[1] or ""):gsub("^.*/", "") == "busybox" and argv[2] then
    argv = { table.unpack(argv, 2) }
  end
  for i = 2, #argv do
    argv[i] = argv[i]:gsub("%$(%w+)", function(k) return env_get(p, k) or "" end)
  end
  local cmd = (argv[1] or ""):gsub("^.*/", "")
  if cmd == "echo" then
    proc_write(p, stream, table.concat(argv, " ", 2) .. "\n")
    return 0
  elseif cmd == "true" then return 0
  elseif cmd == "false" then return 1
  elseif cmd == "sh" then
    if argv[2] == "-c" then
      local code = run_script(p, argv[3] or "")
      return code
    end
    if p.tty then return interactive(p) end
    -- a shell reading commands from stdin
    local buf = ""
    while true do
      local d = pread(p)
      if not d then break end
      buf = buf .. d
    end
    local code = 0
    for l in buf:gmatch("[^\n]+") do
      local c, exited = run_script(p, l)
      code = c
      if exited then break end
    end
    return code
  elseif cmd == "cat" then
    if argv[2] then
      local node = lookup(p.vm.fs, argv[2])
      if not node or node.type ~= "file" then
        proc_write(p, "stderr", "cat: can't open '" .. argv[2] .. "': No such file or directory\n")
        return 1
      end
      proc_write(p, stream, node.data)
      return 0
    end
    while true do
      local d = pread(p)
      if not d then return 0 end
      proc_write(p, stream, d)
    end
  elseif cmd == "sleep" then
    psleep(p, tonumber(argv[2]) or 0)
    return 0
  elseif cmd == "tick" then -- prints tick N every 0.2 s, forever or N times
    local n = tonumber(argv[2])
    local i = 0
    while not n or i < n do
      i = i + 1
      proc_write(p, stream, "tick " .. i .. "\n")
      psleep(p, 0.2)
    end
    return 0
  elseif cmd == "printenv" then
    if argv[2] then
      local val = env_get(p, argv[2])
      if not val then return 1 end
      proc_write(p, stream, val .. "\n")
      return 0
    end
    for _, kv in ipairs(p.env or {}) do proc_write(p, stream, kv .. "\n") end
    return 0
  elseif cmd == "pwd" then
    proc_write(p, stream, (p.cwd or "/") .. "\n")
    return 0
  elseif cmd == "whoami" or (cmd == "id" and argv[2] == "-un") then
    proc_write(p, stream, ((p.user and p.user ~= "") and p.user or "root") .. "\n")
    return 0
  elseif cmd == "hostname" then
    proc_write(p, stream, (p.vm.spec.hostname or "fake") .. "\n")
    return 0
  elseif cmd == "stty" and argv[2] == "size" then
    proc_write(p, stream, tostring(p.rows or 24) .. " " .. tostring(p.cols or 80) .. "\n")
    return 0
  end
  proc_write(p, "stderr", "sh: " .. tostring(argv[1]) .. ": not found\n")
  return 127
end

local function finish(p, st)
  if p.exit then return end
  p.exit = st
  p.cond:signal()
end

local function start_proc(v, spec)
  local p = {
    id = spec.id or ("p" .. moonbox.random(4)), vm = v, argv = spec.argv or {}, env = spec.env,
    cwd = spec.cwd, user = spec.user, tty = spec.tty == true, rows = spec.rows, cols = spec.cols,
    out = { stdout = "", stderr = "" }, stdin = "", stdin_closed = not spec.stdin,
    cond = task.cond(),
  }
  v.procs[p.id] = p
  p.task = task.spawn(function()
    local ok, code = pcall(run_argv, p, p.argv)
    if ok then finish(p, { exit_code = math.tointeger(code) or 0 })
    elseif code ~= KILLED then
      proc_write(p, "stderr", "fakevm: " .. tostring(code) .. "\n")
      finish(p, { exit_code = 255 })
    end
  end)
  return p
end

local function proc_of(vmid, pid)
  local v, err, code = vm_of(vmid)
  if not v then return nil, err, code end
  local p = v.procs[pid]
  if not p then return nil, "no such process: " .. tostring(pid), "not_found" end
  return p
end

local function kill_proc(p, sig)
  if p.exit then return end
  finish(p, { exit_code = 128 + sig, signal = sig })
  if p.task then p.task:cancel() end
end

-- --- the vm module ---------------------------------------------------------------------------

local vm = {}

function vm.create(spec)
  if S.vms[spec.id] then return nil, "vm exists: " .. spec.id, "conflict" end
  S.vms[spec.id] = { id = spec.id, spec = spec, state = "created", procs = {}, fs = new_fs(spec),
                     started = timer.time() }
  return { id = spec.id, state = "created" }
end

function vm.start(id)
  local v, err, code = vm_of(id)
  if not v then return nil, err, code end
  v.state = "running"
  return { id = id, state = "running" }
end

function vm.get(id)
  local v = S.vms[id]
  if not v then return nil, "no such vm", "not_found" end
  return { id = id, state = v.state }
end

local function stop_all(v)
  for _, p in pairs(v.procs) do kill_proc(p, 9) end
  v.state = "stopped"
  return true
end

function vm.stop(id) local v = S.vms[id]; if v then stop_all(v) end; return true end
function vm.kill(id) return vm.stop(id) end
function vm.remove(id) local v = S.vms[id]; if v then stop_all(v) end; S.vms[id] = nil; return true end
function vm.pause(id) local v, e, c = vm_of(id); if not v then return nil, e, c end; v.state = "paused"; return true end
function vm.resume(id) local v, e, c = vm_of(id); if not v then return nil, e, c end; v.state = "running"; return true end
function vm.console() return "" end

function vm.stats(id)
  local v, e, c = vm_of(id)
  if not v then return nil, e, c end
  local n = 0
  for _, p in pairs(v.procs) do if not p.exit then n = n + 1 end end
  -- the vm plugin's shape (plugins/vm/README.md)
  return { cpu = { usage_usec = math.floor((timer.time() - v.started) * 1e4) },
           memory = { current = 48 * 1024 * 1024, limit = (v.spec.memory_mib or 512) * 1024 * 1024 },
           pids = { current = n }, networks = { eth0 = { rx_bytes = 1234, tx_bytes = 5678 } },
           block = { vda = { read_bytes = 4096, write_bytes = 8192 } },
           uptime_s = timer.time() - v.started }
end

function vm.run(id, spec)
  local v, e, c = vm_of(id)
  if not v then return nil, e, c end
  return { id = start_proc(v, spec).id }
end
vm.exec = vm.run

function vm.command(id, argv, opts)
  opts = opts or {}
  local v, e, c = vm_of(id)
  if not v then return nil, e, c end
  local p = start_proc(v, { argv = argv, env = opts.env, user = opts.user, cwd = opts.cwd,
                            stdin = opts.stdin ~= nil })
  if opts.stdin then p.stdin = opts.stdin; p.stdin_closed = true end
  local deadline = timer.now() + (opts.timeout or 300)
  while not p.exit and timer.now() < deadline do p.cond:wait(deadline - timer.now()) end
  if not p.exit then kill_proc(p, 9) end
  v.procs[p.id] = nil
  return { exit_code = p.exit.exit_code, stdout = p.out.stdout, stderr = p.out.stderr }
end

function vm.read(id, pid, stream, offset, opts)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  opts = opts or {}
  local deadline = timer.now() + (opts.wait or 0)
  while true do
    local buf = p.out[stream] or ""
    if #buf > offset then
      local data = buf:sub(offset + 1, offset + (opts.max or 262144))
      return data, offset + #data, false
    end
    if p.exit then return "", offset, true end
    local left = deadline - timer.now()
    if left <= 0 then return nil, "timeout", "timeout" end
    p.cond:wait(left)
  end
end

function vm.write(id, pid, data)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  if p.stdin_closed then return nil, "stdin is closed", "closed" end
  p.stdin = p.stdin .. data
  p.cond:signal()
  return true
end

function vm.close_stdin(id, pid)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  p.stdin_closed = true
  p.cond:signal()
  return true
end

function vm.resize(id, pid, rows, cols)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  p.rows, p.cols = rows, cols
  return true
end

function vm.signal(id, pid, sig)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  if sig == 28 or sig == 18 or sig == 19 or sig == 20 or sig == 17 then return true end
  kill_proc(p, sig)
  return true
end

function vm.wait(id, pid, timeout)
  local p, e, c = proc_of(id, pid)
  if not p then return nil, e, c end
  local deadline = timeout and (timer.now() + timeout)
  while not p.exit do
    if deadline and timer.now() >= deadline then return nil, "timeout", "timeout" end
    p.cond:wait(deadline and (deadline - timer.now()) or 30)
  end
  return p.exit
end

function vm.release(id, pid)
  local v = S.vms[id]
  if v then v.procs[pid] = nil end
  return true
end

-- files
local function need_fs(id)
  local v, e, c = vm_of(id)
  if not v then return nil, e, c end
  return v.fs
end

function vm.fs_stat(id, path)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  local n = lookup(fsys, path)
  if not n then return nil, "no such file: " .. path, "not_found" end
  return { type = n.type, mode = n.mode, mtime = n.mtime, size = n.data and #n.data or 0, target = n.target }
end

function vm.fs_readdir(id, path)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  local n = lookup(fsys, path)
  if not n or n.type ~= "directory" then return nil, "not a directory: " .. path, "not_found" end
  local names = {}
  for k in pairs(n.children) do names[#names + 1] = k end
  table.sort(names)
  return names
end

function vm.fs_read(id, path)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  local n = lookup(fsys, path)
  if not n or n.type ~= "file" then return nil, "no such file: " .. path, "not_found" end
  return n.data
end

function vm.fs_write(id, path, data, opts)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  local parent, name = parent_and_name(fsys, path)
  if not parent or parent.type ~= "directory" then return nil, "no such directory for " .. path, "not_found" end
  parent.children[name] = { type = "file", mode = (opts and opts.mode) or 420, mtime = timer.time(), data = data }
  return true
end

function vm.fs_mkdir(id, path, opts)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  local node = fsys.root
  for seg in path:gmatch("[^/]+") do
    local nxt = node.children[seg]
    if not nxt then
      nxt = { type = "directory", mode = (opts and opts.mode) or 493, mtime = timer.time(), children = {} }
      node.children[seg] = nxt
    elseif nxt.type ~= "directory" then
      return nil, "not a directory: " .. seg, "conflict"
    end
    node = nxt
  end
  return true
end

function vm.fs_symlink(id, target, path)
  local fsys, e, c = need_fs(id)
  if not fsys then return nil, e, c end
  fsys.mk(path, { type = "symlink", mode = 511, mtime = timer.time(), target = target })
  return true
end

rawset(_G, "vm", vm)

-- --- net: QEMU user networking, nothing to set up ------------------------------------------
if not rawget(_G, "net") then
  local published = {}
  rawset(_G, "net", {
    mode = function() return "user" end,
    default_name = function() return "fake" end,
    attach = function(network, owner)
      return { network = network or "fake", ip = "10.99.0.2", mac = "02:00:0a:63:00:02", mode = "user",
               nic = { type = "user" }, boot = {} }
    end,
    publish = function(owner, want)
      local out = {}
      for i, p in ipairs(want) do
        out[i] = { host_ip = p.host_ip or "0.0.0.0", host_port = p.host_port or (40000 + i),
                   container_port = p.container_port, proto = p.proto or "tcp" }
      end
      published[owner] = out
      return out
    end,
    nic = function() return nil end,
    detach = function(owner) published[owner] = nil; return true end,
  })
end

log.warn("fakevm: the simulated vm and net modules are active (tests only)")

