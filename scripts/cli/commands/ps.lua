-- ps [-a] [-q] [--filter k=v] [--no-trunc] [-n N] [-l] [--format json|TEMPLATE]
local errors = require("cli.errors")
local format = require("cli.format")
local out = require("cli.out")
local v = format.v

local M = {}

-- docker's status filter values -> our states
local STATES = {
  created = "created", running = "running", paused = "paused", restarting = "restarting",
  exited = "stopped", stopped = "stopped", dead = "error", error = "error",
  removing = "removing", booting = "booting", initializing = "initializing", stopping = "stopping",
}

-- Splits --filter values into the API query and client-side checks (pure; unit-tested).
function M.filters(list)
  local query, local_ = {}, {}
  for _, f in ipairs(list or {}) do
    local k, val = f:match("^([^=]+)=(.*)$")
    if not k then errors.usage("bad format of filter (expected name=value): " .. f, "ps") end
    k = k:lower()
    if k == "status" or k == "state" then
      local s = STATES[val]
      if not s then
        errors.usage("invalid filter 'status=" .. val .. "': use created, running, paused, restarting, exited", "ps")
      end
      if query.state and query.state ~= s then local_.impossible = true end
      query.state = s
    elseif k == "label" then
      query.label = query.label or {}
      table.insert(query.label, val)
    elseif k == "name" then
      local_.names = local_.names or {}
      table.insert(local_.names, val)
    elseif k == "id" then
      local_.ids = local_.ids or {}
      table.insert(local_.ids, val)
    elseif k == "ancestor" then
      local_.ancestors = local_.ancestors or {}
      table.insert(local_.ancestors, val)
    else
      errors.usage("invalid filter '" .. k .. "'", "ps")
    end
  end
  return query, local_
end

local function any(list, pred)
  for _, x in ipairs(list) do if pred(x) then return true end end
  return false
end

function M.keep(c, local_)
  if local_.impossible then return false end
  if local_.names and not any(local_.names, function(n) return (v(c.name) or ""):find(n, 1, true) end) then
    return false
  end
  if local_.ids and not any(local_.ids, function(i) return (v(c.id) or ""):sub(1, #i) == i end) then
    return false
  end
  if local_.ancestors then
    local img = v(c.image) or ""
    local images = require("cli.images")
    local norm = images.normalize(img)
    if not any(local_.ancestors, function(a)
      return a == img or images.normalize(a) == norm or (v(c.image_id) or ""):gsub("^sha256:", ""):sub(1, #a) == a
    end) then
      return false
    end
  end
  -- label filters: checked here too (the API takes one)
  return true
end

local function label_ok(c, labels)
  for _, l in ipairs(labels or {}) do
    local k, val = l:match("^([^=]+)=?(.*)$")
    local have = type(v(c.labels)) == "table" and v(c.labels[k]) or nil
    if have == nil or (l:find("=", 1, true) and have ~= val) then return false end
  end
  return true
end

M.ps = {
  name = "ps",
  usage = "ps [OPTIONS]",
  summary = "List containers",
  max_args = 0,
  format = true,
  flags = {
    { "a", "all", "bool", "Show all containers (default shows just running)" },
    { "q", "quiet", "bool", "Only display container IDs" },
    { "f", "filter", "list", "Filter output based on conditions provided (status=, name=, label=, id=, ancestor=)" },
    { nil, "no-trunc", "bool", "Don't truncate output" },
    { "n", "last", "int", "Show n last created containers (includes all states)", default = -1 },
    { "l", "latest", "bool", "Show the latest created container (includes all states)" },
  },
  run = function(ctx, o)
    local query, local_ = M.filters(o.filter)
    local labels = query.label
    -- the API filters by one label; we check them all
    if labels then query.label = labels[1] end
    if o.all or o.latest or o.last > 0 then query.all = 1 end
    local list = ctx.api():check("GET", "/v1/containers", { query = query, timeout = 60 })
    local rows = {}
    for _, c in ipairs(type(list) == "table" and list or {}) do
      if M.keep(c, local_) and label_ok(c, labels) then rows[#rows + 1] = c end
    end
    -- newest first, like docker
    table.sort(rows, function(a, b) return (tonumber(v(a.created)) or 0) > (tonumber(v(b.created)) or 0) end)
    local limit = o.latest and 1 or (o.last > 0 and o.last or nil)
    if limit then
      for i = #rows, limit + 1, -1 do rows[i] = nil end
    end
    local trunc = not o.no_trunc
    local columns = {
      { "CONTAINER ID", function(c) return trunc and format.short_id(c.id) or v(c.id) end },
      { "IMAGE", function(c)
        local img = v(c.image) or ""
        return trunc and img:gsub("^docker%.io/library/", ""):gsub("^docker%.io/", "") or img
      end },
      { "COMMAND", function(c)
        local cmd = v(c.command) or ""
        if trunc then cmd = format.truncate(cmd, 20) end
        return '"' .. cmd .. '"'
      end },
      { "CREATED", function(c) return format.ago(c.created) end },
      { "STATUS", function(c) return v(c.status) or format.status(v(c.state)) end },
      { "PORTS", function(c) return format.ports(c.ports) end },
      { "NAMES", "name" },
    }
    out.list(o.format, rows, columns, { quiet = o.quiet and function(c)
      return trunc and format.short_id(c.id) or v(c.id)
    end })
    return 0
  end,
}

return M
