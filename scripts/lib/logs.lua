-- Container logs: one JSON object per line, {"time":..., "stream":"stdout"|"stderr",
-- "line":"..."}, in <state>/containers/<id>/logs/container.log, rotated by size
-- (container.log.1 .. .N), kept after the container stops, removed with it.
-- Followers (logs -f) get new lines pushed to them as they are written.
local M = {}

M.MAX_FILE = 10 * 1024 * 1024 -- rotate above this
M.KEEP = 3                    -- rotated files kept
M.MAX_LINE = 16 * 1024        -- longer lines are split

local S = rawget(_G, "__moonbox_log_state")
if not S then
  S = { subs = {}, raw = {}, writers = {} } -- per container: line and raw subscriptions
  rawset(_G, "__moonbox_log_state", S)
end

function M.dir(id) return moonbox.config("state_dir") .. "/containers/" .. id .. "/logs" end
local function file(id, n) return M.dir(id) .. "/container.log" .. (n and n > 0 and ("." .. n) or "") end

local function rotate(id)
  local path = file(id)
  local st = fs.stat(path)
  if not st or st.size < M.MAX_FILE then return end
  fs.remove(file(id, M.KEEP))
  for i = M.KEEP - 1, 1, -1 do
    if fs.exists(file(id, i)) then fs.rename(file(id, i), file(id, i + 1)) end
  end
  fs.rename(path, file(id, 1))
end

local function publish(id, entries)
  local subs = S.subs[id]
  if not subs then return end
  for sub in pairs(subs) do
    for _, e in ipairs(entries) do sub.queue[#sub.queue + 1] = e end
    sub.cond:signal()
  end
end

-- Append entries ({time, stream, line}) to the container's log.
function M.append(id, entries)
  if #entries == 0 then return true end
  local parts = {}
  for i, e in ipairs(entries) do parts[i] = json.encode(e) end
  fs.mkdir(M.dir(id))
  local ok, err, code = fs.append(file(id), table.concat(parts, "\n") .. "\n")
  if not ok then return nil, err, code end
  rotate(id)
  publish(id, entries)
  return true
end

-- A writer splits a byte stream into lines (per stream), stamping each with the time
-- its bytes arrived.
function M.writer(id)
  local w = { id = id, partial = { stdout = "", stderr = "" } }
  S.writers[id] = w
  function w:write(stream, data)
    local now = timer.time()
    -- attached clients get the raw bytes (a prompt has no newline yet)
    for sub in pairs(S.raw[self.id] or {}) do
      sub.queue[#sub.queue + 1] = { stream = stream, data = data }
      sub.cond:signal()
    end
    local buf = self.partial[stream] .. data
    local entries = {}
    local pos = 1
    while true do
      local nl = buf:find("\n", pos, true)
      if not nl then break end
      local line = buf:sub(pos, nl - 1)
      if line:sub(-1) == "\r" then line = line:sub(1, -2) end
      entries[#entries + 1] = { time = now, stream = stream, line = line }
      pos = nl + 1
    end
    local rest = buf:sub(pos)
    while #rest >= M.MAX_LINE do
      entries[#entries + 1] = { time = now, stream = stream, line = rest:sub(1, M.MAX_LINE) }
      rest = rest:sub(M.MAX_LINE + 1)
    end
    self.partial[stream] = rest
    return M.append(self.id, entries)
  end
  function w:flush(stream)
    for s, rest in pairs(self.partial) do
      if (not stream or s == stream) and rest ~= "" then
        self.partial[s] = ""
        M.append(self.id, { { time = timer.time(), stream = s, line = rest } })
      end
    end
  end
  return w
end

-- Stored entries, oldest first. opts: since, until_ (unix seconds), tail (last N),
-- stdout/stderr (booleans, default both).
function M.read(id, opts)
  opts = opts or {}
  local want_out = opts.stdout ~= false
  local want_err = opts.stderr ~= false
  local files = {}
  for i = M.KEEP, 0, -1 do
    local f = file(id, i)
    if fs.exists(f) then files[#files + 1] = f end
  end
  local out = {}
  for _, f in ipairs(files) do
    local data = fs.read(f, M.MAX_FILE * 2) or ""
    for line in data:gmatch("[^\n]+") do
      local e = json.decode(line)
      if type(e) == "table" and (e.stream == "stdout" and want_out or e.stream == "stderr" and want_err)
        and (not opts.since or e.time >= opts.since) and (not opts.until_ or e.time < opts.until_) then
        out[#out + 1] = e
      end
    end
  end
  if opts.tail and opts.tail >= 0 and #out > opts.tail then
    local cut = {}
    for i = #out - opts.tail + 1, #out do cut[#cut + 1] = out[i] end
    out = cut
  end
  return out
end

-- A subscriber registered in set[id]: what is pushed to sub.queue is taken with
-- sub:next(timeout) (waits while empty); sub:close() unregisters it.
local function new_sub(set, id)
  local sub = { queue = {}, cond = task.cond() }
  set[id] = set[id] or {}
  set[id][sub] = true
  function sub:next(timeout)
    if #self.queue == 0 then
      local ok_, _, code = self.cond:wait(timeout)
      if not ok_ then return nil, code end
    end
    local q = self.queue
    self.queue = {}
    return q
  end
  function sub:close()
    if set[id] then set[id][self] = nil end
    self.cond:signal()
  end
  return sub
end

-- Follow: entries written after the call arrive in sub.queue; sub:next(timeout) waits.
function M.subscribe(id)
  return new_sub(S.subs, id)
end

-- Attach: raw output chunks {stream=, data=} written after the call, plus what is
-- already there (the stored lines and the pending partial lines) for a replay.
function M.raw_subscribe(id)
  local sub = new_sub(S.raw, id)
  local w = S.writers[id]
  sub.partial = w and { stdout = w.partial.stdout, stderr = w.partial.stderr } or {}
  return sub
end

-- Wake followers of a container (it stopped; they re-check its state).
function M.poke(id)
  for sub in pairs(S.subs[id] or {}) do sub.cond:signal() end
  for sub in pairs(S.raw[id] or {}) do sub.cond:signal() end
end

function M.remove(id)
  for sub in pairs(S.subs[id] or {}) do sub:close() end
  S.subs[id] = nil
  for sub in pairs(S.raw[id] or {}) do sub:close() end
  S.raw[id] = nil
  S.writers[id] = nil
  return fs.rmtree(M.dir(id))
end

function M.format(e, timestamps)
  if not timestamps then return e.line end
  local secs = math.floor(e.time)
  return string.format("%s.%06dZ %s", os.date("!%Y-%m-%dT%H:%M:%S", secs),
    math.floor((e.time - secs) * 1e6), e.line)
end

return M
