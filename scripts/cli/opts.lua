-- Parsing of option values (pure; unit-tested): ports, volumes, sizes, durations,
-- restart policies, env, labels, signals, times. Each parser returns the value or
-- nil, message (the command turns that into a usage error, exit 2).
local format = require("cli.format")

local M = {}

local function port_num(s)
  local n = math.tointeger(tonumber(s))
  if not n or n < 1 or n > 65535 or not s:match("^%d+$") then return nil end
  return n
end

local function range(s)
  local a, b = s:match("^(%d+)-(%d+)$")
  if a then
    a, b = port_num(a), port_num(b)
    if not a or not b or b < a then return nil end
    return a, b
  end
  local p = port_num(s)
  return p, p
end

-- -p/--publish: "[ip:][host_port[-end]:]container_port[-end][/proto]" -> list of specs
-- the API takes ("8080:80", "127.0.0.1:5353:53/udp", "[::1]:8080:80/tcp", "80").
function M.ports(spec)
  local bad = function(why) return nil, "invalid port mapping " .. string.format("%q", spec) .. ": " .. why end
  local s, proto = spec, "tcp"
  local body, p = s:match("^(.*)/(%a+)$")
  if body then s, proto = body, p:lower() end
  if proto ~= "tcp" and proto ~= "udp" and proto ~= "sctp" then return bad("unknown protocol " .. proto) end
  local ip, rest = s:match("^%[([%x:]+)%]:(.*)$")
  if not ip then
    local a, b, c = s:match("^([^:]*):([^:]*):([^:]*)$")
    if a then ip, rest = a, b .. ":" .. c else rest = s end
  end
  local hp, cp = rest:match("^([^:]*):([^:]*)$")
  if not hp then hp, cp = "", rest end
  if ip and ip ~= "" then
    local v4 = ip:match("^%d+%.%d+%.%d+%.%d+$")
    if not v4 and not ip:find(":", 1, true) then return bad("bad host IP " .. ip) end
  end
  local c1, c2 = range(cp)
  if not c1 then return bad("bad container port " .. string.format("%q", cp)) end
  local h1, h2
  if hp ~= "" then
    h1, h2 = range(hp)
    if not h1 then return bad("bad host port " .. string.format("%q", hp)) end
    if h2 - h1 ~= c2 - c1 then return bad("host and container port ranges differ in size") end
  end
  local out = {}
  local ipre = ""
  if ip and ip ~= "" then ipre = (ip:find(":", 1, true) and ("[" .. ip .. "]") or ip) .. ":" end
  for i = 0, c2 - c1 do
    local host = h1 and tostring(h1 + i) or ""
    local x
    if ipre ~= "" then x = ipre .. host .. ":" .. (c1 + i)
    elseif host ~= "" then x = host .. ":" .. (c1 + i)
    else x = tostring(c1 + i) end
    if proto ~= "tcp" then x = x .. "/" .. proto end
    out[#out + 1] = x
  end
  return out
end

local function abs_path(p)
  if p:sub(1, 2) == "~/" or p == "~" then
    local home = os.getenv("HOME") or "/root"
    return home .. p:sub(2)
  end
  if p == "." or p == ".." or p:sub(1, 2) == "./" or p:sub(1, 3) == "../" then
    local cwd = os.getenv("PWD") or "."
    return M.clean_path(cwd .. "/" .. p)
  end
  return p
end

-- "/a/./b/../c/" -> "/a/c"
function M.clean_path(p)
  local abs = p:sub(1, 1) == "/"
  local parts = {}
  for seg in p:gmatch("[^/]+") do
    if seg == ".." then
      if #parts > 0 and parts[#parts] ~= ".." then parts[#parts] = nil
      elseif not abs then parts[#parts + 1] = ".." end
    elseif seg ~= "." then
      parts[#parts + 1] = seg
    end
  end
  local s = table.concat(parts, "/")
  if abs then return "/" .. s end
  return s == "" and "." or s
end

-- -v/--volume: "name:/dst[:ro]", "/host:/dst[:ro|rw]", "./rel:/dst", "/dst" (anonymous)
function M.volume(spec)
  local bad = function(why) return nil, "invalid volume " .. string.format("%q", spec) .. ": " .. why end
  local parts = {}
  for seg in (spec .. ":"):gmatch("([^:]*):") do parts[#parts + 1] = seg end
  local src, dst, mode
  if #parts == 1 then dst = parts[1]
  elseif #parts == 2 then
    if parts[2] == "ro" or parts[2] == "rw" then dst, mode = parts[1], parts[2]
    else src, dst = parts[1], parts[2] end
  elseif #parts == 3 then src, dst, mode = parts[1], parts[2], parts[3]
  else return bad("too many colons") end
  if dst == "" or dst:sub(1, 1) ~= "/" then return bad("the container path must be absolute") end
  if mode then
    local ok = true
    for m in mode:gmatch("[^,]+") do -- (no SELinux z/Z: the daemon takes ro/rw)
      if m ~= "ro" and m ~= "rw" then ok = false end
    end
    if not ok or mode == "" then return bad("mode must be ro or rw") end
  end
  if src then
    if src == "" then return bad("empty source") end
    src = abs_path(src)
    if src:sub(1, 1) ~= "/" and not src:match("^[%w][%w_.-]*$") then
      return bad("a volume name may contain letters, digits, '_', '.', '-'; a host path must be absolute")
    end
  end
  local outs = (src and (src .. ":") or "") .. dst .. (mode and (":" .. mode) or "")
  return outs
end

-- --memory: "512m", "1g", "1.5GiB", "268435456" -> bytes (binary units, like docker)
local MULT = { b = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3, t = 1024 ^ 4, p = 1024 ^ 5 }
function M.size(s)
  local num, unit = tostring(s):lower():match("^%s*(%d+%.?%d*)%s*([kmgtpb]?)i?b?%s*$")
  if not num then return nil, "invalid size " .. string.format("%q", s) end
  local n = tonumber(num) * MULT[unit == "" and "b" or unit]
  return math.floor(n)
end

-- Go-style durations: "300ms", "10s", "1m30s", "2h"; a bare number means seconds.
local DUR = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }
function M.duration(s)
  s = tostring(s)
  if s:match("^%d+%.?%d*$") then return tonumber(s) end
  local total, pos, any = 0, 1, false
  while pos <= #s do
    local num, unit, nxt = s:match("^(%d+%.?%d*)(%a+)()", pos)
    if not num then
      num, unit, nxt = s:match("^(%d+%.?%d*)(µs)()", pos)
    end
    if not num or not DUR[unit] then return nil, "invalid duration " .. string.format("%q", s) end
    total = total + tonumber(num) * DUR[unit]
    pos = nxt
    any = true
  end
  if not any then return nil, "invalid duration " .. string.format("%q", s) end
  return total
end

-- --restart: no | always | unless-stopped | on-failure[:N]
function M.restart(s)
  if s == "no" or s == "always" or s == "unless-stopped" or s == "on-failure" then return s end
  local n = s:match("^on%-failure:(%d+)$")
  if n then return s end
  return nil, "invalid restart policy " .. string.format("%q", s) ..
    ": use no, always, unless-stopped or on-failure[:max-retries]"
end

-- -e: "K=V" as is; "K" takes the value from the client's environment (dropped if unset)
function M.env(list)
  local out = {}
  for _, e in ipairs(list or {}) do
    local k = e:match("^([^=]*)=")
    if k then
      if k == "" then return nil, "invalid environment variable " .. string.format("%q", e) end
      out[#out + 1] = e
    elseif e ~= "" then
      local val = os.getenv(e)
      if val then out[#out + 1] = e .. "=" .. val end
    end
  end
  return out
end

-- --env-file contents: KEY=VALUE lines, "#" comments, bare names from the environment
function M.env_file(text)
  local list = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\r$", ""):gsub("^%s+", "")
    if line ~= "" and line:sub(1, 1) ~= "#" then list[#list + 1] = line end
  end
  return M.env(list)
end

-- -l/--label: "k=v" / "k" -> map
function M.labels(list)
  local out = {}
  for _, l in ipairs(list or {}) do
    local k, val = l:match("^([^=]+)=(.*)$")
    if not k then k, val = l, "" end
    if k == "" then return nil, "invalid label " .. string.format("%q", l) end
    out[k] = val
  end
  return out
end

local SIGNUM = { [1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [6] = "SIGABRT", [9] = "SIGKILL",
  [10] = "SIGUSR1", [12] = "SIGUSR2", [13] = "SIGPIPE", [14] = "SIGALRM", [15] = "SIGTERM",
  [17] = "SIGCHLD", [18] = "SIGCONT", [19] = "SIGSTOP", [20] = "SIGTSTP", [28] = "SIGWINCH" }

-- "9" | "kill" | "SIGKILL" -> "SIGKILL"
function M.signal(s)
  local n = math.tointeger(tonumber(s))
  if n then
    if SIGNUM[n] then return SIGNUM[n] end
    if n >= 1 and n <= 64 then return tostring(n) end
    return nil, "invalid signal " .. string.format("%q", s)
  end
  local name = tostring(s):upper()
  if not name:match("^SIG") then name = "SIG" .. name end
  if not name:match("^SIG[A-Z0-9+-]+$") or #name < 5 then
    return nil, "invalid signal " .. string.format("%q", s)
  end
  return name
end

-- --since/--until: "10m" (ago), RFC 3339, a date, or unix seconds -> unix seconds
function M.since(s, now)
  now = now or (timer and timer.time() or os.time())
  if s:match("^%d+%.?%d*$") then return tonumber(s) end
  local d = M.duration(s)
  if d then return now - d end
  local t = format.parse_time(s)
  if t then return t end
  return nil, "invalid time " .. string.format("%q", s) ..
    ": use a duration like 10m, an RFC 3339 time or unix seconds"
end

return M
