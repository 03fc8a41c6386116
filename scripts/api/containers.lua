-- REST API v1: containers. The behaviour lives in lib/runtime.lua; this file maps HTTP
-- to it. Errors are {"error":{"code","message",...}} with the status of their code
-- (400 names the field, 409 carries the current state).
local containers = require("containers")
local runtime = require("runtime")
local logs = require("logs")
local tar = require("tar")

local PIECE = 4 << 20 -- a file copied in from an uploaded archive goes to the guest in pieces

-- Turn runtime's nil, msg, code, extra into an HTTP error.
local function check(ok_, msg, code, extra)
  if ok_ == nil or ok_ == false then api.fail(msg or "failed", code or "internal", extra) end
  return ok_
end

local function find(req)
  return check(containers.get(req.params.id))
end

local function truthy(v)
  return v == "1" or v == "true" or v == "yes"
end

local function number_param(req, name, min, max)
  local v = req.query[name]
  if v == nil or v == "" then return nil end
  local n = tonumber(v)
  if not n or (min and n < min) or (max and n > max) then
    api.error(400, "invalid", string.format("%s: must be a number%s", name,
      min and string.format(" between %s and %s", min, max) or ""), { field = name })
  end
  return n
end

-- RFC 3339 or unix seconds
local function time_param(req, name)
  local v = req.query[name]
  if v == nil or v == "" then return nil end
  local n = tonumber(v)
  if n then return n end
  local y, mo, d, h, mi, s = v:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
  if not y then api.error(400, "invalid", name .. ": a unix time or an RFC 3339 date is required", { field = name }) end
  -- UTC: os.time() takes local time, so correct by the offset of the epoch
  local t = os.time({ year = y, month = mo, day = d, hour = h, min = mi, sec = s })
  return t - (os.time(os.date("*t", 0)) - os.time(os.date("!*t", 0)))
end

-- --- create, list, inspect, update, delete --------------------------------------------

api.route("POST", "/v1/containers", function(req)
  local body = req:json()
  local c = check(runtime.create(body))
  if truthy(req.query.start) then check(runtime.start(c.id)) end
  return 201, { id = c.id, name = c.name, warnings = json.array() }
end)

api.route("GET", "/v1/containers", function(req)
  local q = req.query
  local all = truthy(q.all) or q.state ~= nil
  local label_k, label_v
  if q.label then label_k, label_v = q.label:match("^([^=]+)=?(.*)$") end
  local out = json.array()
  for _, c in ipairs(containers.all()) do
    local keep = all or c.state == "running" or c.state == "paused" or c.state == "restarting"
      or c.state == "booting" or c.state == "initializing"
    if q.state and c.state ~= q.state then keep = false end
    if q.name and not c.name:find(q.name, 1, true) then keep = false end
    if label_k then
      local v = (c.config.labels or {})[label_k]
      if v == nil or (label_v ~= "" and v ~= label_v) then keep = false end
    end
    if keep then out[#out + 1] = containers.summary(c) end
  end
  return out
end)

api.route("GET", "/v1/containers/{id}", function(req)
  return containers.inspect(find(req))
end)

api.route("PATCH", "/v1/containers/{id}", function(req)
  local c = check(runtime.update(find(req).id, req:json()))
  return containers.inspect(c)
end)

api.route("DELETE", "/v1/containers/{id}", function(req)
  local c = find(req)
  check(runtime.remove(c.id, { force = truthy(req.query.force), volumes = truthy(req.query.volumes) }))
  return 204
end)

api.route("GET", "/v1/containers/{id}/transitions", function(req)
  local c = find(req)
  return containers.transitions(c.id, number_param(req, "limit", 1, 1000) or 50)
end)

-- --- actions -------------------------------------------------------------------------

local function action(fn)
  return function(req)
    local c = find(req)
    check(fn(c, req))
    return containers.inspect(check(containers.get(c.id)))
  end
end

api.route("POST", "/v1/containers/{id}/start", action(function(c) return runtime.start(c.id, "started by request") end))
api.route("POST", "/v1/containers/{id}/stop", action(function(c, req)
  return runtime.stop(c.id, { timeout = number_param(req, "timeout", 0, 3600) })
end))
api.route("POST", "/v1/containers/{id}/restart", action(function(c, req)
  return runtime.restart(c.id, "restarted by request", { timeout = number_param(req, "timeout", 0, 3600) })
end))
api.route("POST", "/v1/containers/{id}/pause", action(function(c) return runtime.pause(c.id) end))
api.route("POST", "/v1/containers/{id}/resume", action(function(c) return runtime.resume(c.id) end))
api.route("POST", "/v1/containers/{id}/kill", action(function(c, req)
  return runtime.kill(c.id, req.query.signal or "SIGKILL")
end))

api.route("POST", "/v1/containers/{id}/wait", function(req)
  local cond = req.query.condition or "not-running"
  if cond ~= "not-running" and cond ~= "next-exit" and cond ~= "removed" then
    api.error(400, "invalid", "condition: must be not-running, next-exit or removed", { field = "condition" })
  end
  -- runtime.wait answers 404 for an unknown container, and for an auto-removed one that
  -- is gone already still knows its last status
  return check(runtime.wait(req.params.id, cond, number_param(req, "timeout", 0, 86400)))
end)

api.route("POST", "/v1/containers/{id}/exec", function(req)
  local c = find(req)
  return check(runtime.exec(c.id, req:json()))
end)

-- --- interactive: exec and attach over WebSocket ----------------------------------------
-- binary frames: stdin (client) / output (server; without a tty the first byte is the
-- stream, 1 stdout or 2 stderr); text frames: JSON control messages
-- {"type":"resize","rows","cols"}, {"type":"eof"} (client) and {"type":"exit","exit_code"}
-- (server, last).

local function pump_output(sock, vmid, pid, stream, tty)
  local offset = 0
  while true do
    local data, nxt, eof = vm.read(vmid, pid, stream, offset, { wait = 25, max = 256 * 1024 })
    if data == nil then
      if not tostring(nxt):find("timeout") then return end
    else
      if #data > 0 then
        local ok_ = sock:send(tty and data or ((stream == "stdout" and "\1" or "\2") .. data), "binary")
        if not ok_ then return end
      end
      offset = nxt or offset
      if eof then return end
    end
  end
end

local function control_loop(sock, on_data, on_control)
  while true do
    local msg, kind = sock:recv()
    if not msg then return end
    if kind == "binary" then
      on_data(msg)
    else
      local m = json.decode(msg)
      if type(m) == "table" then on_control(m) end
    end
  end
end

local function ws_precheck(req)
  local c = find(req)
  if c.state ~= "running" then
    api.error(409, "conflict", "container " .. c.name .. " is " .. c.state, { state = c.state })
  end
  return c
end

api.route("GET", "/v1/containers/{id}/exec/ws", function(req)
  local c = ws_precheck(req)
  local q = req.query
  local cmd = req:query_all("cmd")
  if #cmd == 0 then api.error(400, "invalid", "cmd: at least one cmd= parameter is required", { field = "cmd" }) end
  local tty = truthy(q.tty)
  local rows = number_param(req, "rows", 1, 1000) or 24
  local cols = number_param(req, "cols", 1, 1000) or 80
  local env, user, cwd = runtime.exec_defaults(c, req:query_all("env"), q.user, q.workdir)
  local sock = req:websocket()
  local vmid = c.runtime.vm_id
  local pid = "exec-" .. moonbox.random(6)
  local p, err, ecode = vm.exec(vmid, { id = pid, argv = cmd, env = env, user = user, cwd = cwd,
                                        tty = tty, stdin = true, rows = math.floor(rows), cols = math.floor(cols) })
  if not p then
    sock:send(json.encode({ type = "error", message = tostring(err) }))
    -- the shell's codes: 127 the command was not found, 126 it could not be run
    sock:send(json.encode({ type = "exit", exit_code = ecode == "not_found" and 127 or 126 }))
    sock:close(1011, "exec failed")
    return
  end
  local outs = { task.spawn(pump_output, sock, vmid, pid, "stdout", tty) }
  if not tty then outs[2] = task.spawn(pump_output, sock, vmid, pid, "stderr", false) end
  local waiter = task.spawn(function()
    local st = vm.wait(vmid, pid)
    for _, h in ipairs(outs) do h:wait(10) end
    local code = st and (st.exit_code or (st.signal and 128 + st.signal)) or 255
    sock:send(json.encode({ type = "exit", exit_code = code }))
    sock:close(1000, "exited")
  end)
  control_loop(sock, function(data) vm.write(vmid, pid, data) end, function(m)
    if m.type == "resize" and tonumber(m.rows) and tonumber(m.cols) then
      vm.resize(vmid, pid, math.floor(m.rows), math.floor(m.cols))
    elseif m.type == "eof" then
      vm.close_stdin(vmid, pid)
    end
  end)
  -- the client went away first: end the process, like a closed terminal
  if waiter:status() == "running" then
    vm.signal(vmid, pid, 1)
    waiter:wait(5)
    if waiter:status() == "running" then vm.signal(vmid, pid, 9); waiter:wait(5) end
  end
  waiter:cancel()
  for _, h in ipairs(outs) do h:cancel() end
  vm.release(vmid, pid)
end)

-- Attach to the main process. Like docker's, an attach may come before the start (a
-- created, booting or restarting container): output is forwarded from the first byte,
-- stdin typed meanwhile is kept (up to 1 MiB) and delivered once the process runs, and
-- rows/cols (or a resize message) size the terminal then.
local ATTACH_WAIT = { created = true, booting = true, initializing = true, restarting = true }
local ATTACH_LIVE = { running = true, paused = true }

api.route("GET", "/v1/containers/{id}/attach/ws", function(req)
  local c = find(req)
  if not (ATTACH_LIVE[c.state] or ATTACH_WAIT[c.state]) then
    api.error(409, "conflict", "container " .. c.name .. " is " .. c.state, { state = c.state })
  end
  local rows = number_param(req, "rows", 1, 1000)
  local cols = number_param(req, "cols", 1, 1000)
  local tty, stdin = c.config.tty, c.config.stdin
  local replay = req.query.logs == nil or truthy(req.query.logs)
  local sock = req:websocket()
  local id = c.id
  -- subscribe and read what is already there in one go (no wait between): no gap
  local sub = logs.raw_subscribe(id)
  if replay then
    local eol = tty and "\r\n" or "\n"
    for _, e in ipairs(logs.read(id, { tail = 1000 })) do
      local line = e.line .. eol
      sock:send(tty and line or ((e.stream == "stdout" and "\1" or "\2") .. line), "binary")
    end
    for stream, rest in pairs(sub.partial) do
      if rest ~= "" then sock:send(tty and rest or ((stream == "stdout" and "\1" or "\2") .. rest), "binary") end
    end
  end
  -- the VM of the running process (nil until then); what the client sent before that
  local vmid, pending, pending_bytes, pending_eof = nil, {}, 0, false
  local function became_live(v)
    if rows and cols and tty then vm.resize(v, "main", math.floor(rows), math.floor(cols)) end
    while pending[1] do vm.write(v, "main", table.remove(pending, 1)) end
    if pending_eof then vm.close_stdin(v, "main") end
    vmid = v -- no yield since the loop ended: nothing can slip into pending now
  end
  local forward = task.spawn(function()
    while true do
      local chunks = sub:next(vmid and 15 or 0.25)
      for _, ch in ipairs(chunks or {}) do
        if not sock:send(tty and ch.data or ((ch.stream == "stdout" and "\1" or "\2") .. ch.data), "binary") then
          return
        end
      end
      local cur = containers.get(id)
      local st = cur and cur.state
      if st and ATTACH_LIVE[st] then
        if not vmid then became_live(cur.runtime.vm_id) end
      elseif not (st and not vmid and ATTACH_WAIT[st]) then
        local ex = runtime.wait(id, "not-running", 10) or {}
        sock:send(json.encode({ type = "exit", exit_code = ex.exit_code or 0 }))
        sock:close(1000, "exited")
        return
      end
    end
  end)
  control_loop(sock, function(data)
    if not stdin then return end
    if vmid then
      vm.write(vmid, "main", data)
    elseif pending_bytes + #data <= 1024 * 1024 then
      pending[#pending + 1], pending_bytes = data, pending_bytes + #data
    end
  end, function(m)
    if m.type == "resize" and tonumber(m.rows) and tonumber(m.cols) then
      if vmid then
        vm.resize(vmid, "main", math.floor(m.rows), math.floor(m.cols))
      else
        rows, cols = tonumber(m.rows), tonumber(m.cols)
      end
    elseif m.type == "eof" and stdin then
      if vmid then vm.close_stdin(vmid, "main") else pending_eof = true end
    end
  end)
  sub:close()
  forward:cancel()
end)

-- --- logs ------------------------------------------------------------------------------

api.route("GET", "/v1/containers/{id}/logs", function(req)
  local c = find(req)
  local q = req.query
  local opts = {
    since = time_param(req, "since"), until_ = time_param(req, "until"),
    tail = (q.tail and q.tail ~= "all") and number_param(req, "tail", 0, 1e9) or nil,
    stdout = q.stdout ~= "0" and q.stdout ~= "false",
    stderr = q.stderr ~= "0" and q.stderr ~= "false",
  }
  local format = q.format or "json"
  if format ~= "json" and format ~= "text" then
    api.error(400, "invalid", "format: must be json or text", { field = "format" })
  end
  local ts = truthy(q.timestamps)
  local function render(entries)
    local out = {}
    for i, e in ipairs(entries) do
      out[i] = format == "json" and json.encode(e) or logs.format(e, ts)
    end
    return #out > 0 and (table.concat(out, "\n") .. "\n") or ""
  end
  local ctype = format == "json" and "application/x-ndjson" or "text/plain; charset=utf-8"
  local headers = { ["Content-Type"] = ctype }
  if truthy(q.download) then
    headers["Content-Disposition"] = string.format('attachment; filename="%s.log"', c.name)
  end
  if not truthy(q.follow) then
    return 200, render(logs.read(c.id, opts)), headers
  end
  local sub = logs.subscribe(c.id) -- before reading, in the same slice: no gap
  local first = render(logs.read(c.id, opts))
  local s = req:stream(200, headers)
  local ok_ = first == "" or s:write(first)
  while ok_ do
    local batch = sub:next(15)
    if batch and #batch > 0 then
      local keep = {}
      for _, e in ipairs(batch) do
        if (e.stream == "stdout" and opts.stdout or e.stream == "stderr" and opts.stderr)
          and (not opts.until_ or e.time < opts.until_) then keep[#keep + 1] = e end
      end
      if #keep > 0 then ok_ = s:write(render(keep)) end
    else
      local cur = containers.get(c.id)
      if not cur or (cur.state ~= "running" and cur.state ~= "paused" and cur.state ~= "restarting"
        and cur.state ~= "booting" and cur.state ~= "initializing" and cur.state ~= "stopping") then
        break
      end
      if s:is_closed() then break end
    end
  end
  sub:close()
  s:close()
end)

-- --- stats and processes ----------------------------------------------------------------

local function public_sample(s)
  return { time = s.time, cpu_percent = s.cpu_percent, memory_used = s.memory_used,
           memory_limit = s.memory_limit, memory_percent = s.memory_percent, net_rx = s.net_rx,
           net_tx = s.net_tx, block_read = s.block_read, block_write = s.block_write, pids = s.pids,
           uptime = s.uptime }
end

api.route("GET", "/v1/containers/{id}/stats", function(req)
  local c = find(req)
  if c.state ~= "running" and c.state ~= "paused" then
    api.error(409, "conflict", "container " .. c.name .. " is " .. c.state, { state = c.state })
  end
  local l = runtime.live(c.id)
  local prev = l.last_sample
  if not prev or timer.now() - prev.mono > 30 then
    prev = check(runtime.sample(c, nil))
    timer.sleep(0.5)
  end
  if not truthy(req.query.stream) then
    return public_sample(check(runtime.sample(c, prev)))
  end
  local s = req:stream(200, { ["Content-Type"] = "application/x-ndjson" })
  while true do
    c = containers.get(c.id)
    if not c or (c.state ~= "running" and c.state ~= "paused") then break end
    local cur = runtime.sample(c, prev)
    if not cur then break end
    prev = cur
    if not s:write(json.encode(public_sample(cur)) .. "\n") then break end
    timer.sleep(1)
  end
  s:close()
end)

api.route("GET", "/v1/containers/{id}/stats/history", function(req)
  local c = find(req)
  local out = json.array()
  for i, s in ipairs(runtime.history(c.id)) do out[i] = public_sample(s) end
  return { interval = 10, samples = out }
end)

-- ps-like listing from the container's /proc (read through the agent)
api.route("GET", "/v1/containers/{id}/top", function(req)
  local c = ws_precheck(req)
  local vmid = c.runtime.vm_id
  local entries = check(vm.fs_readdir(vmid, "/proc"))
  local users = {}
  local passwd = vm.fs_read(vmid, "/etc/passwd")
  for line in (type(passwd) == "string" and passwd or ""):gmatch("[^\n]+") do
    local name, uid = line:match("^([^:]*):[^:]*:(%d+):")
    if name then users[tonumber(uid)] = name end
  end
  local procs = json.array()
  for _, e in ipairs(entries) do
    local name = type(e) == "table" and e.name or e
    if tostring(name):find("^%d+$") then
      local stat = vm.fs_read(vmid, "/proc/" .. name .. "/stat")
      local status = vm.fs_read(vmid, "/proc/" .. name .. "/status")
      local cmdline = vm.fs_read(vmid, "/proc/" .. name .. "/cmdline")
      if type(stat) == "string" then
        local comm, rest = stat:match("%((.*)%) (.*)")
        local fields = {}
        for f in (rest or ""):gmatch("%S+") do fields[#fields + 1] = f end
        local ticks = (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
        local uid = type(status) == "string" and tonumber(status:match("Uid:%s+(%d+)")) or 0
        local cmd = type(cmdline) == "string" and cmdline:gsub("%z$", ""):gsub("%z", " ") or ""
        local secs = ticks // 100
        procs[#procs + 1] = { name, users[uid] or tostring(uid), fields[1] or "?",
          string.format("%02d:%02d:%02d", secs // 3600, secs // 60 % 60, secs % 60),
          cmd ~= "" and cmd or ("[" .. (comm or "?") .. "]") }
      end
    end
  end
  table.sort(procs, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
  return { titles = { "PID", "USER", "STATE", "TIME", "COMMAND" }, processes = procs }
end)

-- --- copying files in and out (tar) --------------------------------------------------------

local function stat_path(vmid, path)
  local st, err, code = vm.fs_stat(vmid, path)
  if not st then
    if code == "not_found" then api.error(404, "not_found", "no such file in the container: " .. path) end
    api.fail(err, code)
  end
  return st
end

-- Both work on running containers and, through a short-lived VM without network or
-- process (runtime.with_files), on created, stopped and failed ones, like docker cp.
api.route("GET", "/v1/containers/{id}/archive", function(req)
  find(req)
  local path = req.query.path
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    api.error(400, "invalid", "path: an absolute path in the container is required", { field = "path" })
  end
  return check(runtime.with_files(req.params.id, function(vmid)
    local root = stat_path(vmid, path)
    local base = path:match("([^/]+)/*$") or "root"
    local s = req:stream(200, { ["Content-Type"] = "application/x-tar",
                                ["Content-Disposition"] = 'attachment; filename="' .. base .. '.tar"' })
    local function add(p, st, name, depth)
      if depth > 64 then return true end
      local kind = st.type
      if kind == "directory" or kind == "dir" then
        if not s:write(tar.header { name = name, type = "dir", mode = st.mode, mtime = st.mtime }) then return false end
        local list = vm.fs_readdir(vmid, p) or {}
        for _, e in ipairs(list) do
          local child = type(e) == "table" and e.name or e
          if child ~= "." and child ~= ".." then
            local cst = vm.fs_stat(vmid, p .. "/" .. child)
            if cst and not add(p .. "/" .. child, cst, name .. "/" .. child, depth + 1) then return false end
          end
        end
        return true
      elseif kind == "symlink" or kind == "link" then
        return s:write(tar.header { name = name, type = "symlink", link = st.target or st.link or "", mtime = st.mtime })
      elseif kind == "file" or kind == "regular" then
        -- streamed in 1 MiB reads, so a file of any size goes through in bounded memory
        local size = st.size or 0
        if not s:write(tar.header { name = name, type = "file", size = size, mode = st.mode, mtime = st.mtime }) then
          return false
        end
        local off = 0
        while off < size do
          local want = math.min(1024 * 1024, size - off)
          local data = vm.fs_read(vmid, p, { offset = off, max = want })
          -- the file shrank (or went away) meanwhile: zeros keep the archive well formed
          if not data or #data == 0 then data = string.rep("\0", want) end
          if #data > want then data = data:sub(1, want) end
          if not s:write(data) then return false end
          off = off + #data
        end
        return s:write(tar.pad(size))
      end
      return true -- devices, sockets: skipped
    end
    if add(path, root, base, 0) then s:write(tar.finish()) end
    s:close()
    return true
  end))
end)

api.route("PUT", "/v1/containers/{id}/archive", function(req)
  find(req)
  local dest = req.query.path
  if type(dest) ~= "string" or dest:sub(1, 1) ~= "/" then
    api.error(400, "invalid", "path: an absolute directory in the container is required", { field = "path" })
  end
  return check(runtime.with_files(req.params.id, function(vmid)
    local st = stat_path(vmid, dest)
    if st.type ~= "directory" and st.type ~= "dir" then
      api.error(400, "invalid", "path: " .. dest .. " is not a directory", { field = "path" })
    end
    -- the core streams a large body to a file: read the archive from it piece by piece
    local src, body = req.body, req.body_path
    if body then
      src = function(o, len) return check(fs.read_at(body, o, len)) end
    end
    local n = 0
    local ok_, err = pcall(function()
      for e in tar.entries(src) do
        local rel = tar.safe_name(e.name)
        if not rel then error("unsafe name in the archive: " .. tostring(e.name), 0) end
        local target = (dest == "/" and "" or dest) .. "/" .. rel
        if e.type == "dir" then
          check(vm.fs_mkdir(vmid, target, { mode = e.mode, parents = true }))
        elseif e.type == "file" then
          local parent = target:match("^(.*)/[^/]+$")
          if parent and parent ~= "" then vm.fs_mkdir(vmid, parent, { parents = true }) end
          if e.data then
            check(vm.fs_write(vmid, target, e.data, { mode = e.mode }))
          else -- in pieces of at most PIECE bytes, never the whole file in memory
            local off = 0
            repeat
              local piece = src(e.offset + off, math.min(PIECE, e.size - off))
              if #piece == 0 and off < e.size then error("tar: truncated archive", 0) end
              check(vm.fs_write(vmid, target, piece, { mode = e.mode, offset = off }))
              off = off + #piece
            until off >= e.size
          end
          n = n + 1
        elseif e.type == "symlink" then
          check(vm.fs_symlink(vmid, target, e.link))
        end
      end
    end)
    if not ok_ then
      if type(err) == "table" then error(err, 0) end
      api.error(400, "invalid", tostring(err))
    end
    return { written = n }
  end))
end, { body = "file" })

-- --- documentation (served in /v1/openapi.json) ------------------------------------------
local apidoc = require("apidoc")
local S = function(t) return { type = t } end
local A = function(items) return { type = "array", items = items } end
local PORT = { type = "object", properties = { host_ip = S("string"), host_port = S("integer"),
  container_port = S("integer"), proto = { type = "string", enum = { "tcp", "udp" } } } }
apidoc.schema("CreateSpec", { type = "object", required = { "image" }, properties = {
  image = S("string"), name = S("string"), cmd = A(S("string")), entrypoint = A(S("string")),
  env = { description = "[\"K=V\"] or {K: V}" }, workdir = S("string"), user = S("string"),
  hostname = S("string"), cpus = { type = "number", minimum = 0.1, maximum = 16, multipleOf = 0.1 },
  memory = { description = "bytes (64 MiB..32 GiB) or \"256m\"; default 256 MiB" },
  ports = A({ description = "\"8080:80\", \"127.0.0.1:53:53/udp\", \"80\" or a port object" }),
  volumes = A({ description = "\"name:/path[:ro]\", \"/host:/path[:ro]\", \"/path\" or an object" }),
  network = S("string"), restart = { description = "no | always | unless-stopped | on-failure[:N]" },
  healthcheck = { type = "object", properties = { test = A(S("string")), interval = S("number"),
    timeout = S("number"), retries = S("integer"), start_period = S("number") } },
  labels = { type = "object", additionalProperties = S("string") }, auto_remove = S("boolean"),
  tty = S("boolean"), stdin = S("boolean"), stop_signal = S("string"), stop_timeout = S("number"),
  disk_size = { description = "size of the writable layer" },
  auth = { type = "object", description = "registry credentials for the pull; never stored" } } })
apidoc.schema("ContainerSummary", { type = "object", properties = {
  id = S("string"), short_id = S("string"), name = S("string"), image = S("string"), command = S("string"),
  state = { type = "string", enum = { "creating", "created", "booting", "initializing", "running", "paused",
    "stopping", "stopped", "restarting", "error" } },
  status = S("string"), created = S("number"), ports = A(PORT), labels = S("object") } })
apidoc.schema("Container", { allOf = { { ["$ref"] = "#/components/schemas/ContainerSummary" },
  { type = "object", properties = { image_id = S("string"), state_detail = S("object"), config = S("object"),
    resources = S("object"), mounts = A(S("object")), network = S("object"), restart_policy = S("object"),
    auto_remove = S("boolean") } } } })
apidoc.schema("Stats", { type = "object", properties = {
  time = S("number"), cpu_percent = S("number"), memory_used = S("integer"), memory_limit = S("integer"),
  memory_percent = S("number"), net_rx = S("integer"), net_tx = S("integer"), block_read = S("integer"),
  block_write = S("integer"), pids = S("integer"), uptime = S("number") } })
apidoc.schema("ExitStatus", { type = "object", properties = { exit_code = S("integer"), signal = S("integer"),
  oom_killed = S("boolean"), error = S("string") } })

local T = { "containers" }
local OBJ = { [200] = "Container", [404] = true, [409] = true }
apidoc.add("POST", "/v1/containers", { summary = "Create a container (the image is pulled if missing)", tags = T,
  body = "CreateSpec", query = { { name = "start", type = "boolean", desc = "start it as well" } },
  responses = { [201] = { type = "object", properties = { id = S("string"), name = S("string") } },
                [400] = true, [404] = true, [409] = true, [501] = true } })
apidoc.add("GET", "/v1/containers", { summary = "List containers", tags = T, query = {
  { name = "all", type = "boolean", desc = "include stopped ones" }, { name = "state" },
  { name = "label", desc = "key or key=value" }, { name = "name", desc = "substring" } },
  responses = { [200] = A({ ["$ref"] = "#/components/schemas/ContainerSummary" }) } })
apidoc.add("GET", "/v1/containers/{id}", { summary = "Inspect (id, name or unique id prefix)", tags = T,
  responses = { [200] = "Container", [404] = true } })
apidoc.add("PATCH", "/v1/containers/{id}", { summary = "Update cpus, memory (while stopped) or the restart policy",
  tags = T, body = { type = "object", properties = { cpus = S("number"), memory = {}, restart = {} } },
  responses = { [200] = "Container", [400] = true, [404] = true, [409] = true } })
apidoc.add("DELETE", "/v1/containers/{id}", { summary = "Remove (VM, writable layer, network, anonymous volumes)",
  tags = T, query = { { name = "force", type = "boolean", desc = "stop it first" },
  { name = "volumes", type = "boolean" } }, responses = { [204] = true, [404] = true, [409] = true } })
apidoc.add("GET", "/v1/containers/{id}/transitions", { summary = "State changes with their reasons", tags = T,
  query = { { name = "limit", type = "integer" } } })
apidoc.add("POST", "/v1/containers/{id}/start", { summary = "Start", tags = T, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/stop", { summary = "Stop: stop signal, grace period, then kill", tags = T,
  query = { { name = "timeout", type = "number", desc = "grace period in seconds" } }, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/restart", { summary = "Restart", tags = T,
  query = { { name = "timeout", type = "number" } }, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/pause", { summary = "Pause (the VM stops running)", tags = T, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/resume", { summary = "Resume", tags = T, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/kill", { summary = "Send a signal to the main process", tags = T,
  query = { { name = "signal", desc = "name or number, default SIGKILL" } }, responses = OBJ })
apidoc.add("POST", "/v1/containers/{id}/wait", { summary = "Wait for the container to stop (long poll)", tags = T,
  query = { { name = "condition", desc = "not-running | next-exit | removed (answers with the last exit status; "
    .. "still answers for 5 minutes after the removal)" }, { name = "timeout", type = "number" } },
  responses = { [200] = "ExitStatus", [404] = true, [504] = true } })
apidoc.add("POST", "/v1/containers/{id}/exec", { summary = "Run a command, return its output and exit code", tags = T,
  desc = "Like docker exec, the command gets the container's environment (env on top, a later K=V wins), "
    .. "user and working directory unless the request gives them. A command that cannot be found or run "
    .. "is a 400 naming it.",
  body = { type = "object", required = { "cmd" }, properties = { cmd = A(S("string")), env = A(S("string")),
    user = S("string"), workdir = S("string"), stdin = S("string"), timeout = S("number") } },
  responses = { [200] = { type = "object", properties = { exit_code = S("integer"), stdout = S("string"),
    stderr = S("string") } }, [400] = true, [404] = true, [409] = true } })
apidoc.add("GET", "/v1/containers/{id}/exec/ws", { summary = "Interactive exec over WebSocket", tags = T,
  desc = "Binary frames carry stdin and output (without a tty the first byte is the stream: 1 stdout, 2 stderr); "
    .. "text frames carry JSON control messages: resize {rows, cols}, eof, and a final exit {exit_code}. "
    .. "Environment, user and workdir default as for POST .../exec. A command that cannot start sends "
    .. "{type: error, message} and exit 127 (not found) or 126 (cannot run).",
  query = { { name = "cmd", required = true, desc = "repeat for each argument" }, { name = "tty", type = "boolean" },
    { name = "rows", type = "integer" }, { name = "cols", type = "integer" }, { name = "env", desc = "K=V, repeatable" },
    { name = "user" }, { name = "workdir" } }, responses = { [101] = true, [400] = true, [404] = true, [409] = true } })
apidoc.add("GET", "/v1/containers/{id}/attach/ws", { summary = "Attach to the main process over WebSocket", tags = T,
  desc = "Frames as for exec/ws. Allowed while running or paused and, like docker, before the start (created, "
    .. "booting, restarting): output is forwarded from its first byte, stdin sent meanwhile (up to 1 MiB) is "
    .. "delivered when the process runs, and rows/cols or a resize message size its terminal then. "
    .. "Ends with {type: exit, exit_code} when the container stops.",
  query = { { name = "logs", type = "boolean", desc = "replay the stored output first (default true)" },
    { name = "rows", type = "integer" }, { name = "cols", type = "integer" } },
  responses = { [101] = true, [404] = true, [409] = true } })
apidoc.add("GET", "/v1/containers/{id}/logs", { summary = "Logs (stored, and followed)", tags = T, query = {
  { name = "follow", type = "boolean" }, { name = "tail", desc = "number of lines or all" },
  { name = "since", desc = "unix time or RFC 3339" }, { name = "until", desc = "unix time or RFC 3339" },
  { name = "timestamps", type = "boolean" }, { name = "stdout", type = "boolean" }, { name = "stderr", type = "boolean" },
  { name = "format", desc = "json (NDJSON {time, stream, line}) or text" },
  { name = "download", type = "boolean", desc = "as an attachment" } },
  responses = { [200] = "ndjson", [400] = true, [404] = true } })
apidoc.add("GET", "/v1/containers/{id}/stats", { summary = "Usage now, or a stream (NDJSON each second)", tags = T,
  query = { { name = "stream", type = "boolean" } }, responses = { [200] = "Stats", [404] = true, [409] = true } })
apidoc.add("GET", "/v1/containers/{id}/stats/history", { summary = "Usage samples of the last hour (for charts)",
  tags = T, responses = { [200] = { type = "object", properties = { interval = S("number"),
    samples = A({ ["$ref"] = "#/components/schemas/Stats" }) } } } })
apidoc.add("GET", "/v1/containers/{id}/top", { summary = "Processes in the container", tags = T,
  responses = { [200] = { type = "object", properties = { titles = A(S("string")), processes = A(A(S("string"))) } },
    [404] = true, [409] = true } })
local FILES_DESC = "Works on running and paused containers and, like docker cp, on created, stopped and "
  .. "failed ones: those get a short-lived VM with the container's disks, volumes and binds, no network "
  .. "and no process (a start waits for it; about a boot's time more under TCG)."
apidoc.add("GET", "/v1/containers/{id}/archive", { summary = "Copy a file or directory out (tar)", tags = T,
  desc = FILES_DESC, query = { { name = "path", required = true } },
  responses = { [200] = "tar", [400] = true, [404] = true, [409] = true } })
apidoc.add("PUT", "/v1/containers/{id}/archive", { summary = "Copy files in: a tar extracted into path", tags = T,
  desc = FILES_DESC, query = { { name = "path", required = true, desc = "an existing directory" } }, body = "tar",
  responses = { [200] = { type = "object", properties = { written = S("integer") } }, [400] = true, [404] = true,
    [409] = true } })
