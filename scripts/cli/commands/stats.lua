-- stats [--no-stream] [-a] [CONTAINER...]: live resource usage, redrawn every second
-- on a terminal (one table per update otherwise).
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local out = require("cli.out")
local v = format.v

local M = {}

local function pct(x)
  x = tonumber(v(x))
  if not x then return "--" end
  return string.format("%.2f%%", x)
end

M.COLUMNS = {
  { "CONTAINER ID", function(r) return format.short_id(r.id) end },
  { "NAME", "name" },
  { "CPU %", function(r) return r.sample and pct(r.sample.cpu_percent) or "--" end },
  { "MEM USAGE / LIMIT", function(r)
    local s = r.sample
    if not s then return "-- / --" end
    return format.bytes(s.memory_used) .. " / " .. format.bytes(s.memory_limit)
  end },
  { "MEM %", function(r) return r.sample and pct(r.sample.memory_percent) or "--" end },
  { "NET I/O", function(r)
    local s = r.sample
    if not s then return "-- / --" end
    return format.size(s.net_rx) .. " / " .. format.size(s.net_tx)
  end },
  { "BLOCK I/O", function(r)
    local s = r.sample
    if not s then return "-- / --" end
    return format.size(s.block_read) .. " / " .. format.size(s.block_write)
  end },
  { "PIDS", function(r) return r.sample and tostring(math.tointeger(v(r.sample.pids)) or v(r.sample.pids) or 0) or "--" end },
}

local function path(id) return "/v1/containers/" .. client.urlencode(id) .. "/stats" end

-- The containers to show: the named ones (resolved), or the running ones (-a: all).
local function targets(api, o, pos)
  local rows = {}
  if #pos > 0 then
    for _, n in ipairs(pos) do
      local c, err = api:call("GET", "/v1/containers/" .. client.urlencode(n), { timeout = 60 })
      if not c then errors.api(err) end
      rows[#rows + 1] = { id = c.id, name = c.name, state = c.state, arg = n }
    end
  else
    local list = api:check("GET", "/v1/containers", { query = { all = o.all and 1 or nil }, timeout = 60 })
    for _, c in ipairs(list) do rows[#rows + 1] = { id = c.id, name = c.name, state = c.state } end
  end
  return rows
end

local function render(o, rows, fmt)
  if fmt == "json" then
    local arr = {}
    for _, r in ipairs(rows) do
      local s = r.sample or {}
      local copy = { id = r.id, name = r.name }
      for k, x in pairs(s) do copy[k] = x end
      arr[#arr + 1] = copy
    end
    return json.encode(json.array(arr)) .. "\n"
  elseif format.is_template(fmt) then
    local lines = {}
    for _, r in ipairs(rows) do
      local obj = { id = r.id, name = r.name }
      for k, x in pairs(r.sample or {}) do obj[k] = x end
      lines[#lines + 1] = format.template(fmt, obj) .. "\n"
    end
    return table.concat(lines)
  end
  return format.table(M.COLUMNS, rows)
end

M.stats = {
  name = "stats",
  usage = "stats [OPTIONS] [CONTAINER...]",
  summary = "Display a live stream of container(s) resource usage statistics",
  format = true,
  flags = {
    { "a", "all", "bool", "Show all containers (default shows just running)" },
    { nil, "no-stream", "bool", "Disable streaming stats and only pull the first result" },
    { nil, "no-trunc", "bool", "Do not truncate output", hidden = true },
  },
  run = function(ctx, o, pos)
    local api = ctx.api()
    local rows = targets(api, o, pos)
    if o.no_stream then
      local failed = 0
      for _, r in ipairs(rows) do
        if r.state == "running" or r.state == "paused" then
          local s, err = api:call("GET", path(r.id), { timeout = 60 })
          if s then r.sample = s
          elseif #pos > 0 then failed = failed + 1; out.err(errors.describe(err)) end
        end
      end
      out.write(render(o, rows, o.format))
      return failed > 0 and 1 or 0
    end
    -- streaming: one reader per container, a redraw every second
    local readers = {}
    for _, r in ipairs(rows) do
      readers[#readers + 1] = task.spawn(function()
        local resp = api:stream("GET", path(r.id), { query = { stream = 1 } })
        if not resp then r.gone = true; return end
        local ok = pcall(function()
          for line in client.lines(resp) do
            local good, s = pcall(json.decode, line)
            if good and type(s) == "table" then r.sample = s end
          end
        end)
        resp:close()
        r.gone = true
        return ok
      end)
    end
    local tty = term.isatty(1)
    local ok, err = pcall(function()
      while true do
        timer.sleep(1)
        local live = {}
        local any = false
        for _, r in ipairs(rows) do
          if not r.gone then any = true end
          if not r.gone or #pos > 0 then live[#live + 1] = r end
        end
        local text = render(o, live, o.format)
        if tty and not (o.format == "json" or format.is_template(o.format)) then
          out.write("\27[2J\27[H" .. text)
        else
          out.write(text)
        end
        if not any and #rows > 0 then break end
        if #rows == 0 and #pos == 0 then
          -- nothing to show yet: look again for running containers
          rows = targets(api, o, pos)
          for _, r in ipairs(rows) do r.gone = true end
          if #rows > 0 then return "again" end
        end
      end
    end)
    for _, h in ipairs(readers) do h:cancel() end
    if not ok then error(err, 0) end
    if err == "again" then return M.stats.run(ctx, o, pos) end
    return 0
  end,
}

return M
