-- Pure formatting helpers: tables, sizes, durations, ids, ports, status strings,
-- --format templates. No I/O here (unit-tested in tests/cli/format_test.lua).
local M = {}

local null = json and json.null

-- A value from decoded JSON, with json.null as nil.
function M.v(x)
  if x == null then return nil end
  return x
end
local v = M.v

-- Aligned columns like docker's tabwriter: at least 3 spaces between columns, the last
-- column not padded. columns = { {"HEADER", key_or_fn}, ... }; rows are objects.
function M.table(columns, rows, opts)
  opts = opts or {}
  local cells = {}
  if not opts.no_header then
    local h = {}
    for i, c in ipairs(columns) do h[i] = c[1] end
    cells[1] = h
  end
  for _, row in ipairs(rows) do
    local r = {}
    for i, c in ipairs(columns) do
      local x = c[2]
      local val
      if type(x) == "function" then val = x(row) else val = row[x] end
      val = v(val)
      r[i] = val == nil and "" or tostring(val)
    end
    cells[#cells + 1] = r
  end
  local width = {}
  for _, r in ipairs(cells) do
    for i, s in ipairs(r) do
      local w = utf8.len(s) or #s
      if not width[i] or w > width[i] then width[i] = w end
    end
  end
  local lines = {}
  for _, r in ipairs(cells) do
    local parts = {}
    for i, s in ipairs(r) do
      if i < #r then
        parts[i] = s .. string.rep(" ", width[i] - (utf8.len(s) or #s) + 3)
      else
        parts[i] = s
      end
    end
    lines[#lines + 1] = (table.concat(parts):gsub("%s+$", ""))
  end
  if #lines == 0 then return "" end
  return table.concat(lines, "\n") .. "\n"
end

-- Decimal sizes like docker's HumanSize with 3 significant digits: 0B, 512B, 5.24kB,
-- 187MB, 1.23GB.
local DEC = { "B", "kB", "MB", "GB", "TB", "PB", "EB" }
function M.size(n)
  n = tonumber(v(n))
  if not n then return "" end
  local i = 1
  while n >= 1000 and i < #DEC do n = n / 1000; i = i + 1 end
  local s = string.format("%.3g", n)
  if tonumber(s) >= 1000 and i < #DEC then
    n = n / 1000; i = i + 1
    s = string.format("%.3g", n)
  end
  return s .. DEC[i]
end

-- Binary sizes like docker stats (BytesSize, 4 significant digits): 1.5MiB, 256MiB.
local BIN = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" }
function M.bytes(n)
  n = tonumber(v(n))
  if not n then return "" end
  local i = 1
  while n >= 1024 and i < #BIN do n = n / 1024; i = i + 1 end
  local s = string.format("%.4g", n)
  if tonumber(s) >= 1024 and i < #BIN then
    n = n / 1024; i = i + 1
    s = string.format("%.4g", n)
  end
  return s .. BIN[i]
end

-- Human durations, docker's wording (units.HumanDuration).
function M.duration(seconds)
  seconds = tonumber(v(seconds)) or 0
  local s = math.floor(seconds)
  if s < 1 then return "Less than a second" end
  if s == 1 then return "1 second" end
  if s < 60 then return s .. " seconds" end
  local minutes = math.floor(seconds / 60)
  if minutes == 1 then return "About a minute" end
  if minutes < 60 then return minutes .. " minutes" end
  local hours = math.floor(seconds / 3600 + 0.5)
  if hours == 1 then return "About an hour" end
  if hours < 48 then return hours .. " hours" end
  if hours < 24 * 7 * 2 then return (hours // 24) .. " days" end
  if hours < 24 * 30 * 2 then return (hours // (24 * 7)) .. " weeks" end
  if hours < 24 * 365 * 2 then return (hours // (24 * 30)) .. " months" end
  return (math.floor(seconds / 3600) // (24 * 365)) .. " years"
end

-- RFC 3339 (UTC, optional fraction) -> unix seconds; numbers pass through.
function M.parse_time(t)
  t = v(t)
  if type(t) == "number" then return t end
  if type(t) ~= "string" then return nil end
  if t:match("^%d+%.?%d*$") then return tonumber(t) end
  local Y, m, d, H, M_, S, rest = t:match("^(%d+)-(%d+)-(%d+)[T ](%d+):(%d+):(%d+)(.*)$")
  if not Y then
    Y, m, d = t:match("^(%d+)-(%d+)-(%d+)$")
    if not Y then return nil end
    H, M_, S, rest = 0, 0, 0, ""
  end
  -- days from civil (Howard Hinnant's algorithm), so no dependence on the local zone
  local y, mo, dd = tonumber(Y), tonumber(m), tonumber(d)
  y = mo <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + dd - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  local secs = days * 86400 + tonumber(H) * 3600 + tonumber(M_) * 60 + tonumber(S)
  local frac = rest:match("^%.(%d+)")
  if frac then
    secs = secs + tonumber("0." .. frac)
    rest = rest:sub(#frac + 2)
  end
  local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
  if sign then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    secs = sign == "+" and secs - off or secs + off
  end
  return secs
end

-- "2 minutes ago" for a time (unix seconds or RFC 3339); now defaults to the clock.
function M.ago(t, now)
  local ts = M.parse_time(t)
  if not ts or ts <= 0 then return "" end
  now = now or (timer and timer.time() or os.time())
  return M.duration(math.max(0, now - ts)) .. " ago"
end

-- RFC 3339 with nanoseconds, trailing zeros trimmed (Go's RFC3339Nano), in UTC.
function M.rfc3339(t)
  t = tonumber(t) or 0
  local sec = math.floor(t)
  local us = math.floor((t - sec) * 1e6 + 0.5)
  if us >= 1000000 then sec = sec + 1; us = us - 1000000 end
  local s = os.date("!%Y-%m-%dT%H:%M:%S", sec)
  if us > 0 then
    s = s .. ("." .. string.format("%06d", us)):gsub("0+$", "")
  end
  return s .. "Z"
end

function M.short_id(id)
  id = v(id)
  if type(id) ~= "string" then return "" end
  id = id:gsub("^sha256:", "")
  return id:sub(1, 12)
end

-- Docker shows "…" at the end of what it cut.
function M.truncate(s, n)
  s = tostring(s or "")
  local len = utf8.len(s) or #s
  if len <= n then return s end
  if n <= 1 then return "…" end
  local cut = utf8.offset(s, n) or n
  return s:sub(1, cut - 1) .. "…"
end

-- One port mapping: 0.0.0.0:8080->80/tcp (docker's ps column).
function M.port(p)
  local proto = v(p.proto) or "tcp"
  local cport = v(p.container_port)
  local hport = v(p.host_port)
  if not hport or hport == 0 or hport == "" then
    return tostring(cport) .. "/" .. proto
  end
  local ip = v(p.host_ip)
  if not ip or ip == "" then ip = "0.0.0.0" end
  if ip:find(":", 1, true) then ip = "[" .. ip .. "]" end
  return ip .. ":" .. tostring(hport) .. "->" .. tostring(cport) .. "/" .. proto
end

function M.ports(list)
  list = v(list)
  if type(list) ~= "table" then return "" end
  local out = {}
  for _, p in ipairs(list) do
    if type(p) == "table" then out[#out + 1] = M.port(p)
    elseif type(p) == "string" then out[#out + 1] = p end
  end
  return table.concat(out, ", ")
end

-- A command line for display: "nginx -g 'daemon off;'" (quoted when needed).
function M.command(argv)
  argv = v(argv)
  if type(argv) == "string" then return argv end
  if type(argv) ~= "table" then return "" end
  local out = {}
  for _, a in ipairs(argv) do
    a = tostring(a)
    if a == "" or a:find("[%s'\"\\$`;&|<>*?()#]") then
      a = "'" .. a:gsub("'", "'\\''") .. "'"
    end
    out[#out + 1] = a
  end
  return table.concat(out, " ")
end

-- A status like docker's, from a container's state and its details:
--   Up 5 minutes, Up 2 hours (Paused), Up 3 seconds (healthy), Exited (0) 2 minutes ago,
--   Created, Restarting (1) 5 seconds ago, Removal In Progress, Dead.
function M.status(state, detail, now)
  detail = v(detail) or {}
  now = now or (timer and timer.time() or os.time())
  local since = M.parse_time(v(detail.started_at)) or M.parse_time(v(detail.since))
  local health = v(detail.health)
  local hs = health and v(health.status)
  local suffix = ""
  if hs and hs ~= "" and hs ~= "none" then
    suffix = hs == "starting" and " (health: starting)" or " (" .. hs .. ")"
  end
  if state == "running" then
    return "Up " .. M.duration(since and (now - since) or 0) .. suffix
  elseif state == "paused" then
    return "Up " .. M.duration(since and (now - since) or 0) .. " (Paused)"
  elseif state == "exited" or state == "stopped" then
    local fin = M.parse_time(v(detail.finished_at)) or M.parse_time(v(detail.since))
    local code = v(detail.exit_code) or 0
    return "Exited (" .. tostring(code) .. ")" .. (fin and (" " .. M.ago(fin, now)) or "")
  elseif state == "restarting" then
    local fin = M.parse_time(v(detail.finished_at)) or M.parse_time(v(detail.since))
    return "Restarting (" .. tostring(v(detail.exit_code) or 0) .. ")" ..
      (fin and (" " .. M.ago(fin, now)) or "")
  elseif state == "created" then
    return "Created"
  elseif state == "removing" then
    return "Removal In Progress"
  elseif state == "dead" then
    return "Dead"
  end
  return state and (tostring(state):gsub("^%l", string.upper)) or ""
end

-- --format templates: "{{.name}}\t{{.state_detail.exit_code}}", "{{json .config}}",
-- "{{.Name}}" (a key is tried as written, then lower-cased, then snake_case). Missing
-- values print "<no value>" like Go templates.
local function lookup(obj, path)
  local cur = obj
  for part in path:gmatch("[^%.]+") do
    if type(cur) ~= "table" then return nil end
    local nxt = cur[part]
    if nxt == nil then nxt = cur[part:lower()] end
    if nxt == nil then
      local snake = part:gsub("(%l)(%u)", "%1_%2"):lower()
      nxt = cur[snake]
    end
    if nxt == nil and tonumber(part) then nxt = cur[tonumber(part) + 1] end
    cur = nxt
  end
  return cur
end

local function is_array(t)
  if json.is_array(t) then return true end
  local n = #t
  if n == 0 then return false end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end
M.is_array = is_array

local function show(x)
  if x == nil then return "<no value>" end
  if x == null then return "<nil>" end
  if type(x) == "table" then
    if is_array(x) then
      local parts = {}
      for i, e in ipairs(x) do parts[i] = show(e) end
      return "[" .. table.concat(parts, " ") .. "]"
    end
    return json.encode(x, { sort = true })
  end
  if type(x) == "number" and math.type(x) == "float" and x == math.floor(x) and
     math.abs(x) < 2 ^ 53 then
    return string.format("%d", x)
  end
  return tostring(x)
end

function M.template(tpl, obj)
  tpl = tpl:gsub("\\t", "\t"):gsub("\\n", "\n")
  return (tpl:gsub("{{%s*(.-)%s*}}", function(expr)
    local fn, arg = expr:match("^(%w+)%s+(%S+)$")
    if not fn then arg = expr end
    local val
    if arg == "." then val = obj
    elseif arg:sub(1, 1) == "." then val = lookup(obj, arg:sub(2))
    else return "{{" .. expr .. "}}" end
    if fn == "json" then return json.encode(val == nil and null or val, { sort = true }) end
    if fn == "upper" then return show(val):upper() end
    if fn == "lower" then return show(val):lower() end
    if fn == "len" then return tostring(type(val) == "table" and #val or #show(val)) end
    return show(val)
  end))
end

-- Does a --format value ask for a template (anything other than table/json)?
function M.is_template(f)
  return f ~= nil and f ~= "" and f ~= "table" and f ~= "json"
end

return M
