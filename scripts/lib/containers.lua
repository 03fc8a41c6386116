-- The container records: SQLite rows, lookups, the state machine, per-container locks.
--
-- States:  creating -> created -> booting -> initializing -> running
--          running <-> paused;  running -> stopping -> stopped;  any -> error
--          stopped/error -> restarting (a policy waits before starting again)
-- Every transition is persisted with its reason (container_transitions), and emitted as
-- the event "container.<new state>" with {id, name, from, to, reason, ...}.
local M = {}

db.migrate("containers", {
  [[CREATE TABLE containers(
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      image TEXT NOT NULL,
      image_id TEXT,
      state TEXT NOT NULL,
      reason TEXT,
      since REAL NOT NULL,
      created REAL NOT NULL,
      config TEXT NOT NULL,
      runtime TEXT NOT NULL DEFAULT '{}') STRICT;
    CREATE TABLE container_transitions(
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      container TEXT NOT NULL,
      time REAL NOT NULL,
      from_state TEXT,
      to_state TEXT NOT NULL,
      reason TEXT) STRICT;
    CREATE INDEX container_transitions_by_container ON container_transitions(container, id);]],
})

-- Which action is allowed in which state (the API answers 409 with the state otherwise).
M.ALLOWED = {
  start = { created = true, stopped = true, error = true },
  stop = { running = true, paused = true, restarting = true },
  restart = { running = true, paused = true, stopped = true, error = true, created = true },
  pause = { running = true },
  resume = { paused = true },
  kill = { running = true, paused = true },
  remove = { created = true, stopped = true, error = true },
  update = { created = true, stopped = true, error = true },
  exec = { running = true },
}

-- Memory that survives script reloads (locks and conditions belong to live tasks).
local S = rawget(_G, "__moonbox_container_state")
if not S then
  -- rt: the runtime table of each container, shared by every task that looks the
  -- container up (so no task can overwrite another's changes with a stale copy)
  S = { locks = {}, conds = {}, rt = {} }
  rawset(_G, "__moonbox_container_state", S)
end
-- gone: the last exit status of recently removed containers, for wait?condition=removed
S.gone = S.gone or {}

local function decode(row)
  if not row then return nil end
  row.config = json.decode(row.config)
  local rt = S.rt[row.id]
  if not rt then
    rt = json.decode(row.runtime)
    if type(rt) ~= "table" then rt = {} end
    S.rt[row.id] = rt
  end
  row.runtime = rt
  return row
end

function M.get(ref)
  if type(ref) ~= "string" or ref == "" then return nil, "a container id or name is required", "invalid" end
  local row = db.row("SELECT * FROM containers WHERE id = ? OR name = ?", ref, ref)
  if row then return decode(row) end
  if ref:find("^%x+$") and #ref >= 3 then
    local rows = db.query("SELECT * FROM containers WHERE id LIKE ? LIMIT 2", ref .. "%")
    if #rows == 1 then return decode(rows[1]) end
    if #rows > 1 then return nil, "the id prefix " .. ref .. " is ambiguous", "conflict" end
  end
  return nil, "no such container: " .. ref, "not_found"
end

function M.all()
  local out = {}
  for i, row in ipairs(db.query("SELECT * FROM containers ORDER BY created")) do out[i] = decode(row) end
  return out
end

function M.name_taken(name)
  return db.row("SELECT id FROM containers WHERE name = ?", name) ~= nil
end

function M.insert(c)
  c.runtime = c.runtime or {}
  local n, err, code = db.run(
    "INSERT INTO containers(id, name, image, image_id, state, reason, since, created, config, runtime) "
      .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    c.id, c.name, c.image, c.image_id, c.state, c.reason, c.since, c.created,
    json.encode(c.config), json.encode(c.runtime or {}))
  if not n then return nil, err, code end
  S.rt[c.id] = c.runtime
  db.run("INSERT INTO container_transitions(container, time, from_state, to_state, reason) VALUES (?, ?, NULL, ?, ?)",
    c.id, c.since, c.state, c.reason)
  return true
end

-- Persist config and runtime (state changes go through transition()).
function M.save(c)
  return db.run("UPDATE containers SET config = ?, runtime = ?, image_id = ? WHERE id = ?",
    json.encode(c.config), json.encode(c.runtime), c.image_id, c.id)
end

function M.cond(id)
  local cv = S.conds[id]
  if not cv then cv = task.cond(); S.conds[id] = cv end
  return cv
end

function M.transition(c, to, reason, extra)
  local from = c.state
  local now = timer.time()
  c.state, c.reason, c.since = to, reason, now
  db.transaction(function()
    db.run("UPDATE containers SET state = ?, reason = ?, since = ?, runtime = ? WHERE id = ?",
      to, reason, now, json.encode(c.runtime), c.id)
    db.run("INSERT INTO container_transitions(container, time, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
      c.id, now, from, to, reason)
  end)
  local data = { id = c.id, name = c.name, from = from, to = to, reason = reason }
  for k, v in pairs(extra or {}) do data[k] = v end
  events.emit("container." .. to, data)
  M.cond(c.id):signal()
  if from ~= to then log.info("container %s (%s): %s -> %s%s", c.name, c.id:sub(1, 12), tostring(from), to,
    reason and (": " .. reason) or "") end
end

function M.transitions(id, limit)
  return db.query("SELECT time, from_state, to_state, reason FROM container_transitions WHERE container = ? "
    .. "ORDER BY id DESC LIMIT ?", id, limit or 50)
end

-- The exit status a removed container had (by id or name, kept 5 minutes), or nil.
function M.gone(id)
  local g = S.gone[id]
  return g and g.status
end

function M.delete(id)
  local c, now = M.get(id), timer.now()
  for k, g in pairs(S.gone) do
    if g.time < now - 300 then S.gone[k] = nil end
  end
  if c then
    local rt = c.runtime
    local g = { time = now, status = { exit_code = rt.exit_code or 0, signal = rt.signal,
                                       oom_killed = rt.oom_killed == true, error = rt.error } }
    S.gone[id], S.gone[c.name] = g, g
  end
  db.transaction(function()
    db.run("DELETE FROM containers WHERE id = ?", id)
    db.run("DELETE FROM container_transitions WHERE container = ?", id)
  end)
  S.locks[id] = nil
  S.rt[id] = nil
  local cv = S.conds[id]
  S.conds[id] = nil
  if cv then cv:signal() end
end

-- One operation at a time per container: start, stop, remove... wait for each other.
function M.lock(id)
  local l = S.locks[id]
  if not l then l = { cond = task.cond() }; S.locks[id] = l end
  while l.held do l.cond:wait() end
  l.held = task.id() or true
end

function M.unlock(id)
  local l = S.locks[id]
  if not l then return end
  l.held = nil
  l.cond:signal()
end

-- Run fn(...) holding the container's lock; errors release it and propagate.
function M.locked(id, fn, ...)
  M.lock(id)
  local res = table.pack(pcall(fn, ...))
  M.unlock(id)
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

function M.short(id) return id:sub(1, 12) end

-- "Up 5 minutes", "Exited (0) 2 minutes ago": docker's wording (units.HumanDuration,
-- which scripts/cli/format.lua's duration() also follows).
local function human(seconds)
  seconds = math.max(0, seconds)
  local s = math.floor(seconds)
  if s < 1 then return "Less than a second" end
  if s == 1 then return "1 second" end
  if s < 60 then return s .. " seconds" end
  local m = s // 60
  if m == 1 then return "About a minute" end
  if m < 60 then return m .. " minutes" end
  local h = math.floor(seconds / 3600 + 0.5)
  if h == 1 then return "About an hour" end
  if h < 48 then return h .. " hours" end
  if h < 24 * 7 * 2 then return (h // 24) .. " days" end
  if h < 24 * 30 * 2 then return (h // (24 * 7)) .. " weeks" end
  if h < 24 * 365 * 2 then return (h // (24 * 30)) .. " months" end
  return (s // 3600 // (24 * 365)) .. " years"
end
M.human = human

function M.status(c)
  local rt, now = c.runtime, timer.time()
  local s = c.state
  if s == "running" or s == "paused" then
    local up = "Up " .. human(now - (rt.started_at or c.since))
    local h = rt.health and rt.health.status
    if h and h ~= "none" then up = up .. " (" .. h .. ")" end
    return s == "paused" and (up .. " (Paused)") or up
  elseif s == "stopped" then
    return string.format("Exited (%d) %s ago", rt.exit_code or 0, human(now - (rt.finished_at or c.since)))
  elseif s == "restarting" then
    return string.format("Restarting (%d) %s ago", rt.exit_code or 0, human(now - c.since))
  elseif s == "error" then
    return "Error: " .. (c.reason or "unknown")
  end
  return s:sub(1, 1):upper() .. s:sub(2)
end

local function ports(c)
  return (c.runtime.ports and #c.runtime.ports > 0) and c.runtime.ports or c.config.ports or json.array()
end

function M.summary(c)
  return {
    id = c.id, short_id = M.short(c.id), name = c.name, image = c.image, image_id = c.image_id,
    command = table.concat(c.config.argv or {}, " "),
    state = c.state, status = M.status(c), created = c.created,
    ports = json.array(ports(c)), labels = c.config.labels or {},
  }
end

function M.inspect(c)
  local cfg, rt = c.config, c.runtime
  return {
    id = c.id, short_id = M.short(c.id), name = c.name, image = c.image, image_id = c.image_id,
    state = c.state, status = M.status(c), created = c.created,
    state_detail = {
      status = c.state, reason = c.reason, since = c.since,
      exit_code = rt.exit_code, signal = rt.signal, oom_killed = rt.oom_killed == true,
      started_at = rt.started_at, finished_at = rt.finished_at,
      restart_count = rt.restart_count or 0, error = rt.error,
      log_tail = (c.state ~= "running" and c.state ~= "paused") and rt.log_tail or nil,
      health = rt.health or (cfg.healthcheck and { status = "starting", failing_streak = 0, log = json.array() })
        or { status = "none" },
    },
    config = {
      cmd = cfg.cmd or json.array(), entrypoint = cfg.entrypoint or json.array(), argv = cfg.argv,
      env = cfg.env, workdir = cfg.workdir, user = cfg.user, hostname = cfg.hostname,
      tty = cfg.tty, stdin = cfg.stdin, labels = cfg.labels, healthcheck = cfg.healthcheck or json.null,
      stop_signal = cfg.stop_signal, stop_timeout = cfg.stop_timeout, disk_size = cfg.disk_size,
    },
    resources = { cpus = cfg.cpus, memory = cfg.memory },
    ports = json.array(ports(c)),
    mounts = json.array(cfg.mounts or {}),
    network = rt.network and { name = rt.network.name, ip = rt.network.ip, mac = rt.network.mac }
      or { name = cfg.network or json.null },
    restart_policy = cfg.restart,
    auto_remove = cfg.auto_remove,
    vm = rt.vm_id and { id = rt.vm_id } or json.null,
  }
end

return M
