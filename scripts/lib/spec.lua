-- The container create spec: validation and normalisation.
--
--   local cfg, err = spec.validate(body)
--   -- cfg: the normalised spec; err: {field = "cpus", message = "cpus: ..."}
--
-- Every field is checked; an unknown field is an error (it is almost always a typo).
-- Accepted forms follow the docker CLI/API where they are convenient:
--   memory   bytes (integer) or "256m", "1g", "512MiB"
--   ports    "8080:80", "127.0.0.1:8080:80/udp", "80" (a free host port is chosen), or
--            {host_ip=, host_port=, container_port=, proto=}
--   volumes  "name:/path[:ro]", "/host/dir:/path[:ro]", "/path" (anonymous), or
--            {type="volume"|"bind", source=, destination=, read_only=}
--   restart  "no" | "always" | "unless-stopped" | "on-failure[:N]" | {name=, max_retries=}
--   env      {"K=V", ...} or {K = "V"}
local M = {}

M.MIN_MEMORY = 64 * 1024 * 1024
M.MAX_MEMORY = 32 * 1024 * 1024 * 1024
M.DEFAULT_MEMORY = 256 * 1024 * 1024 -- like fly.io's smallest machine; see scripts/README.md
M.DEFAULT_DISK = 10 * 1024 * 1024 * 1024

local FIELDS = {
  image = true, name = true, cmd = true, entrypoint = true, env = true, workdir = true,
  user = true, hostname = true, cpus = true, memory = true, ports = true, volumes = true,
  network = true, restart = true, healthcheck = true, labels = true, auto_remove = true,
  tty = true, stdin = true, auth = true, stop_signal = true, stop_timeout = true,
  disk_size = true,
}

local SIGNALS = {
  SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGILL = 4, SIGTRAP = 5, SIGABRT = 6, SIGBUS = 7,
  SIGFPE = 8, SIGKILL = 9, SIGUSR1 = 10, SIGSEGV = 11, SIGUSR2 = 12, SIGPIPE = 13,
  SIGALRM = 14, SIGTERM = 15, SIGCHLD = 17, SIGCONT = 18, SIGSTOP = 19, SIGTSTP = 20,
  SIGTTIN = 21, SIGTTOU = 22, SIGWINCH = 28,
}
M.SIGNALS = SIGNALS

local function fail(field, fmt, ...)
  error({ field = field, message = field .. ": " .. string.format(fmt, ...) }, 0)
end

local function is_array(t)
  if type(t) ~= "table" then return false end
  if json.is_array(t) then return true end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function string_list(field, v, allow_string)
  if v == nil or v == json.null then return nil end
  if type(v) == "string" and allow_string then return { v } end
  if not is_array(v) then fail(field, "must be an array of strings") end
  local out = {}
  for i, s in ipairs(v) do
    if type(s) ~= "string" then fail(field, "item %d must be a string", i) end
    out[i] = s
  end
  return json.array(out)
end

-- "256m" -> bytes; nil if not a size
function M.parse_size(v)
  if math.type(v) == "integer" then return v end
  if type(v) == "number" and v == math.floor(v) then return math.tointeger(v) end
  if type(v) ~= "string" then return nil end
  local num, unit = v:lower():match("^%s*(%d+%.?%d*)%s*([kmgt]?)i?b?%s*$")
  if not num then return nil end
  local mult = ({ [""] = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3, t = 1024 ^ 4 })[unit]
  return math.floor(tonumber(num) * mult)
end

function M.signal_number(v)
  if math.type(v) == "integer" then return (v >= 1 and v <= 64) and v or nil end
  if type(v) ~= "string" then return nil end
  local s = v:upper()
  if tonumber(s) then return M.signal_number(math.tointeger(tonumber(s))) end
  if not s:find("^SIG") then s = "SIG" .. s end
  return SIGNALS[s]
end

local function valid_ip(s)
  if s == "" or s == "0.0.0.0" or s == "::" then return true end
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    for _, x in ipairs({ a, b, c, d }) do if tonumber(x) > 255 then return false end end
    return true
  end
  return s:find("^[%x:]+$") ~= nil and s:find(":") ~= nil
end

local function port_number(field, v)
  local n = math.tointeger(tonumber(v))
  if not n or n < 1 or n > 65535 then fail(field, "port %s is out of range (1-65535)", tostring(v)) end
  return n
end

function M.parse_port(field, p)
  local out
  if type(p) == "string" then
    local body, proto = p:match("^(.-)/(%a+)$")
    body = body or p
    proto = (proto or "tcp"):lower()
    local parts = {}
    -- an IPv6 host ip is written in brackets: [::1]:8080:80
    local ip6, rest = body:match("^%[([%x:]+)%]:(.*)$")
    if ip6 then parts = { ip6 }; body = rest end
    for x in body:gmatch("[^:]+") do parts[#parts + 1] = x end
    if body:find("::") or body == "" then fail(field, "cannot parse %q", p) end
    local host_ip, host_port, container_port
    if #parts == 1 then container_port = parts[1]
    elseif #parts == 2 then host_port, container_port = parts[1], parts[2]
    elseif #parts == 3 then host_ip, host_port, container_port = parts[1], parts[2], parts[3]
    else fail(field, "cannot parse %q", p) end
    out = { host_ip = host_ip or "", host_port = host_port, container_port = container_port, proto = proto }
  elseif type(p) == "table" then
    out = { host_ip = p.host_ip or "", host_port = p.host_port, container_port = p.container_port,
            proto = (p.proto or "tcp"):lower() }
  else
    fail(field, "each port must be a string like \"8080:80/tcp\" or an object")
  end
  if type(out.host_ip) ~= "string" or not valid_ip(out.host_ip) then
    fail(field, "invalid host address %q", tostring(out.host_ip))
  end
  if out.proto ~= "tcp" and out.proto ~= "udp" then fail(field, "protocol must be tcp or udp, not %q", out.proto) end
  out.container_port = port_number(field, out.container_port)
  out.host_port = out.host_port and port_number(field, out.host_port) or 0 -- 0: choose a free one
  return out
end

local VOLUME_NAME = "^[%w][%w_.-]*$"

function M.valid_volume_name(n)
  return type(n) == "string" and #n <= 128 and n:find(VOLUME_NAME) ~= nil and not n:find("%.%.")
end

local function clean_path(field, p)
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" then fail(field, "%q must be an absolute path", tostring(p)) end
  for seg in p:gmatch("[^/]+") do
    if seg == ".." then fail(field, "%q must not contain ..", p) end
  end
  local norm = p:gsub("/+", "/"):gsub("(.)/$", "%1")
  return norm
end

function M.parse_volume(field, v)
  local out
  if type(v) == "string" then
    local parts = {}
    for x in v:gmatch("[^:]+") do parts[#parts + 1] = x end
    local mode
    if #parts >= 2 and (parts[#parts] == "ro" or parts[#parts] == "rw") then mode = table.remove(parts) end
    if #parts == 1 then
      out = { type = "volume", source = "", destination = parts[1] }
    elseif #parts == 2 then
      out = { type = parts[1]:sub(1, 1) == "/" and "bind" or "volume", source = parts[1], destination = parts[2] }
    else
      fail(field, "cannot parse %q (use name:/path[:ro] or /host:/path[:ro])", v)
    end
    out.read_only = mode == "ro"
  elseif type(v) == "table" then
    out = { type = v.type, source = v.source or "", destination = v.destination, read_only = v.read_only == true }
    if out.type ~= "volume" and out.type ~= "bind" then fail(field, "type must be \"volume\" or \"bind\"") end
  else
    fail(field, "each volume must be a string or an object")
  end
  out.destination = clean_path(field, out.destination)
  if out.destination == "/" then fail(field, "cannot mount over /") end
  if out.type == "bind" then
    out.source = clean_path(field, out.source)
    local st = fs.stat(out.source)
    if not st then fail(field, "bind source %s does not exist", out.source) end
    if st.type ~= "directory" then fail(field, "bind source %s must be a directory", out.source) end
  elseif out.source ~= "" and not M.valid_volume_name(out.source) then
    fail(field, "invalid volume name %q (letters, digits, _ . -; no / or ..)", out.source)
  end
  return out
end

function M.parse_restart(field, v)
  if v == nil or v == json.null then return { name = "no", max_retries = 0 } end
  local name, max
  if type(v) == "string" then
    name, max = v:match("^([%a-]+):?(%d*)$")
    if not name then fail(field, "cannot parse %q", v) end
    max = tonumber(max)
  elseif type(v) == "table" then
    name, max = v.name, v.max_retries
  else
    fail(field, "must be a string like \"on-failure:3\" or an object")
  end
  if name ~= "no" and name ~= "always" and name ~= "unless-stopped" and name ~= "on-failure" then
    fail(field, "policy must be no, always, unless-stopped or on-failure[:N], not %q", tostring(name))
  end
  if max ~= nil then
    max = math.tointeger(max)
    if not max or max < 0 then fail(field, "max retries must be a non-negative integer") end
    if name ~= "on-failure" and max > 0 then fail(field, "max retries only applies to on-failure") end
  end
  return { name = name, max_retries = max or 0 }
end

local function seconds(field, v, default, min)
  if v == nil or v == json.null then return default end
  if type(v) ~= "number" or v ~= v or v < (min or 0) or v > 86400 then
    fail(field, "must be a number of seconds between %s and 86400", tostring(min or 0))
  end
  return v
end

function M.parse_healthcheck(field, v)
  if v == nil or v == json.null then return nil end
  if type(v) ~= "table" then fail(field, "must be an object") end
  for k in pairs(v) do
    if k ~= "test" and k ~= "interval" and k ~= "timeout" and k ~= "retries" and k ~= "start_period" then
      fail(field, "unknown field %q", tostring(k))
    end
  end
  local test = v.test
  if type(test) == "string" then test = { "CMD-SHELL", test } end
  test = string_list(field .. ".test", test)
  if not test or #test == 0 then fail(field .. ".test", "is required") end
  local kind = test[1]
  local argv
  if kind == "NONE" then return nil
  elseif kind == "CMD" then argv = { table.unpack(test, 2) }
  elseif kind == "CMD-SHELL" then
    if #test ~= 2 then fail(field .. ".test", "CMD-SHELL takes exactly one command string") end
    argv = { "/bin/sh", "-c", test[2] }
  else
    argv = test -- a plain argv
  end
  if #argv == 0 then fail(field .. ".test", "the command is empty") end
  local retries = v.retries == nil and 3 or math.tointeger(v.retries)
  if not retries or retries < 1 or retries > 100 then fail(field .. ".retries", "must be an integer 1..100") end
  return {
    test = json.array(argv),
    interval = seconds(field .. ".interval", v.interval, 30, 0.1),
    timeout = seconds(field .. ".timeout", v.timeout, 30, 0.1),
    retries = retries,
    start_period = seconds(field .. ".start_period", v.start_period, 0, 0),
  }
end

-- Docker's name rule, at most 128 characters.
function M.valid_name(n)
  return type(n) == "string" and #n >= 2 and #n <= 128 and n:find("^[%w][%w_.-]+$") ~= nil
end

local ADJ = { "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid",
              "merry", "nimble", "proud", "quiet", "sharp", "swift", "tender", "vivid", "wise" }
local NOUN = { "galileo", "hopper", "kepler", "lovelace", "noether", "turing", "curie",
               "darwin", "euler", "fermi", "gauss", "hubble", "meitner", "newton", "pascal" }

function M.random_name()
  local r = tonumber(moonbox.random(4), 16)
  return ADJ[r % #ADJ + 1] .. "_" .. NOUN[(r // #ADJ) % #NOUN + 1] .. "_" .. (r % 1000)
end

local function validate(b)
  if type(b) ~= "table" or is_array(b) and next(b) ~= nil then
    fail("body", "must be a JSON object")
  end
  for k in pairs(b) do
    if not FIELDS[k] then fail(tostring(k), "unknown field") end
  end
  local c = {}
  if type(b.image) ~= "string" or b.image == "" or #b.image > 512 then
    fail("image", "an image reference is required")
  end
  c.image = b.image
  if b.name ~= nil and b.name ~= json.null then
    if not M.valid_name(b.name) then
      fail("name", "must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ (2 to 128 characters)")
    end
    c.name = b.name
  end
  c.cmd = string_list("cmd", b.cmd)
  c.entrypoint = string_list("entrypoint", b.entrypoint)
  -- env
  local env = json.array()
  if type(b.env) == "table" and not is_array(b.env) then
    local keys = {}
    for k in pairs(b.env) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = b.env[k]
      if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
        fail("env", "value of %s must be a string", k)
      end
      env[#env + 1] = k .. "=" .. tostring(v)
    end
  elseif b.env ~= nil then
    for _, kv in ipairs(string_list("env", b.env)) do env[#env + 1] = kv end
  end
  for _, kv in ipairs(env) do
    local k = kv:match("^([^=]+)=")
    if not k or k:find("%s") then fail("env", "%q must look like NAME=value", kv) end
  end
  c.env = env
  if b.workdir ~= nil then
    if type(b.workdir) ~= "string" or b.workdir:sub(1, 1) ~= "/" then fail("workdir", "must be an absolute path") end
    c.workdir = b.workdir
  end
  if b.user ~= nil then
    if type(b.user) ~= "string" or not b.user:find("^[%w_.-]+:?[%w_.-]*$") then
      fail("user", "must be name, uid, uid:gid or name:group")
    end
    c.user = b.user
  end
  if b.hostname ~= nil then
    if type(b.hostname) ~= "string" or #b.hostname > 63 or not b.hostname:find("^[%w][%w-]*$") then
      fail("hostname", "must be a valid host name (letters, digits, -; at most 63)")
    end
    c.hostname = b.hostname
  end
  -- resources
  if b.cpus == nil then
    c.cpus = 1
  else
    local v = b.cpus
    if type(v) ~= "number" or v ~= v then fail("cpus", "must be a number") end
    if v < 0.1 - 1e-9 or v > 16 + 1e-9 then fail("cpus", "must be between 0.1 and 16") end
    local tenths = v * 10
    if math.abs(tenths - math.floor(tenths + 0.5)) > 1e-6 then fail("cpus", "must be a multiple of 0.1") end
    c.cpus = math.floor(tenths + 0.5) / 10
  end
  if b.memory == nil then
    c.memory = M.DEFAULT_MEMORY
  else
    local m = M.parse_size(b.memory)
    if not m then fail("memory", "must be a number of bytes or a size like \"256m\"") end
    if m < M.MIN_MEMORY or m > M.MAX_MEMORY then fail("memory", "must be between 64 MiB and 32 GiB") end
    c.memory = m
  end
  if b.disk_size == nil then
    c.disk_size = M.DEFAULT_DISK
  else
    local d = M.parse_size(b.disk_size)
    if not d or d < 64 * 1024 * 1024 or d > 2 * 1024 ^ 4 then fail("disk_size", "must be between 64 MiB and 2 TiB") end
    c.disk_size = d
  end
  -- ports
  c.ports = json.array()
  if b.ports ~= nil then
    if not is_array(b.ports) then fail("ports", "must be an array") end
    local seen = {}
    for i, p in ipairs(b.ports) do
      local pp = M.parse_port("ports", p)
      if pp.host_port ~= 0 then
        local key = (pp.host_ip == "" and "*" or pp.host_ip) .. ":" .. pp.host_port .. "/" .. pp.proto
        local any = "*:" .. pp.host_port .. "/" .. pp.proto
        if seen[key] or (pp.host_ip == "" and seen["ip:" .. pp.host_port .. "/" .. pp.proto]) or seen[any] then
          fail("ports", "host port %d/%s is published twice", pp.host_port, pp.proto)
        end
        seen[key] = true
        if pp.host_ip ~= "" then seen["ip:" .. pp.host_port .. "/" .. pp.proto] = true end
      end
      c.ports[i] = pp
    end
  end
  -- volumes
  c.volumes = json.array()
  if b.volumes ~= nil then
    if not is_array(b.volumes) then fail("volumes", "must be an array") end
    local dests = {}
    for i, v in ipairs(b.volumes) do
      local vv = M.parse_volume("volumes", v)
      if dests[vv.destination] then fail("volumes", "%s is mounted twice", vv.destination) end
      dests[vv.destination] = true
      c.volumes[i] = vv
    end
  end
  if b.network ~= nil then
    if type(b.network) ~= "string" or not b.network:find("^[%w][%w_.-]*$") or #b.network > 64 then
      fail("network", "must be a network name")
    end
    c.network = b.network
  end
  c.restart = M.parse_restart("restart", b.restart)
  c.healthcheck = M.parse_healthcheck("healthcheck", b.healthcheck)
  c.labels = {}
  if b.labels ~= nil then
    if type(b.labels) ~= "table" or (is_array(b.labels) and next(b.labels) ~= nil) then
      fail("labels", "must be an object of strings")
    end
    for k, v in pairs(b.labels) do
      if type(k) ~= "string" or type(v) ~= "string" then fail("labels", "keys and values must be strings") end
      c.labels[k] = v
    end
  end
  for _, f in ipairs({ "auto_remove", "tty", "stdin" }) do
    if b[f] ~= nil and type(b[f]) ~= "boolean" then fail(f, "must be true or false") end
    c[f] = b[f] == true
  end
  if c.auto_remove and c.restart.name ~= "no" then
    fail("auto_remove", "cannot be combined with a restart policy")
  end
  if b.stop_signal ~= nil then
    if not M.signal_number(b.stop_signal) then fail("stop_signal", "unknown signal %q", tostring(b.stop_signal)) end
    c.stop_signal = type(b.stop_signal) == "string" and b.stop_signal:upper() or b.stop_signal
  end
  c.stop_timeout = seconds("stop_timeout", b.stop_timeout, nil, 0)
  if b.auth ~= nil then
    if type(b.auth) ~= "table" then fail("auth", "must be {username, password} or {token}") end
    c.auth = b.auth -- used for the pull only; never stored
  end
  return c
end

function M.validate(body)
  local ok, res = pcall(validate, body)
  if ok then return res end
  if type(res) == "table" and res.field then return nil, res end
  error(res, 0) -- a bug, not bad input
end

return M
