-- The connection to the daemon: where it is (-H / MOONBOX_HOST / the default socket),
-- the token for TCP, JSON requests, streams, WebSockets, and the API's errors.
--
--   local c = client.new{host=, token=}       raises errors.usage on a bad -H
--   c:call(method, path [, opts]) ⏳ -> body, resp | nil, err
--       opts: query={k=v | k={v...}}, body=table (sent as JSON) | raw=string,
--             body_file=path, headers=, timeout= (default 0: none), content_type=
--       body: decoded JSON (or the text when not JSON; true for an empty body)
--   c:check(...)  like call, but raises errors.api on failure (main prints it, exit 1)
--   c:stream(method, path [, opts]) ⏳ -> resp (resp:read()) | nil, err
--   c:websocket(path [, query]) ⏳ -> ws | nil, err
--   client.lines(resp) -> iterator over complete lines of a streamed body
-- err = { message=, code=, status=, state=, field=, kind="api"|"connect" }
local errors = require("cli.errors")

local M = {}
local C = {}
C.__index = C

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end
M.urlencode = urlencode

-- {k=v, k2={v1,v2}} -> "k=v&k2=v1&k2=v2" (sorted keys; false/nil dropped; true -> 1)
function M.query(q)
  if not q then return "" end
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local val = q[k]
    local list = type(val) == "table" and val or { val }
    for _, x in ipairs(list) do
      if x ~= nil and x ~= false then
        if x == true then x = 1 end
        parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(x)
      end
    end
  end
  return table.concat(parts, "&")
end

local function with_query(path, q)
  local qs = M.query(q)
  if qs == "" then return path end
  return path .. (path:find("?", 1, true) and "&" or "?") .. qs
end

-- Parses a host spec: unix:///path, /path, tcp://host:port, host:port, http://host:port.
-- -> {kind="unix", path=} | {kind="tcp", host=, port=} ; raises usage errors.
function M.parse_host(h)
  if h:match("^unix://") then
    local p = h:sub(8)
    if p == "" then errors.usage("invalid host " .. h .. ": no socket path") end
    return { kind = "unix", path = p, display = "unix://" .. p }
  end
  if h:sub(1, 1) == "/" then
    return { kind = "unix", path = h, display = "unix://" .. h }
  end
  local rest = h:match("^tcp://(.+)$") or h:match("^http://(.+)$") or h
  rest = rest:gsub("/+$", "")
  local host, port = rest:match("^%[([%x:]+)%]:(%d+)$")
  if not host then host, port = rest:match("^([^:/]+):(%d+)$") end
  if not host then
    host = rest:match("^([^:/]+)$")
    port = host and "8420"
  end
  if not host or host == "" then
    errors.usage("invalid host " .. h .. ": expected unix:///path or tcp://host:port")
  end
  local shown = host:find(":", 1, true) and ("[" .. host .. "]") or host
  return { kind = "tcp", host = host, port = tonumber(port), hostport = shown .. ":" .. port,
           display = "tcp://" .. shown .. ":" .. port }
end

local LOCAL = { ["127.0.0.1"] = true, localhost = true, ["::1"] = true }

-- opts: host=, token= (from flags); falls back to MOONBOX_HOST, MOONBOX_TOKEN, the
-- default socket, and for a local TCP host the state dir's token file if readable.
function M.new(opts)
  opts = opts or {}
  local h = opts.host
  if not h or h == "" then h = os.getenv("MOONBOX_HOST") end
  if not h or h == "" then h = "unix://" .. moonbox.config("socket") end
  local self = setmetatable({ target = M.parse_host(h) }, C)
  local token = opts.token
  if not token or token == "" then token = os.getenv("MOONBOX_TOKEN") end
  if (not token or token == "") and self.target.kind == "tcp" and LOCAL[self.target.host] then
    local dir = os.getenv("MOONBOX_STATE_DIR") or moonbox.config("state_dir")
    local t = fs.read(dir .. "/token", 4096)
    if t then token = t:gsub("%s+$", "") end
  end
  if token and token ~= "" then self.token = token end
  return self
end

function C:url(path)
  if self.target.kind == "unix" then return "http://moonbox" .. path end
  return "http://" .. self.target.hostport .. path
end

function C:headers(extra, content_type)
  local h = {}
  if self.token then h["Authorization"] = "Bearer " .. self.token end
  if content_type then h["Content-Type"] = content_type end
  for k, x in pairs(extra or {}) do h[k] = x end
  return h
end

function C:connect_error(msg, code)
  local where = self.target.display
  local text
  if code == "unreachable" or (msg and (msg:find("onnect") or msg:find("No such file"))) then
    text = "Cannot connect to the moonbox daemon at " .. where .. ". Is the daemon running?"
  else
    text = "error talking to the moonbox daemon at " .. where .. ": " .. tostring(msg)
  end
  return { kind = "connect", message = text, code = code or "unreachable" }
end

-- The API's {"error": {...}} (or whatever the body says) as an err table.
function M.api_error(status, body, method, path)
  local err = { kind = "api", status = status }
  local ok, decoded = pcall(json.decode, body or "")
  if ok and type(decoded) == "table" and type(decoded.error) == "table" then
    local e = decoded.error
    for k, x in pairs(e) do if x ~= json.null then err[k] = x end end
    err.message = type(e.message) == "string" and e.message or ("HTTP " .. status)
  elseif ok and type(decoded) == "table" and type(decoded.message) == "string" then
    err.message = decoded.message
  else
    local text = tostring(body or ""):gsub("%s+$", "")
    err.message = text ~= "" and text or ("HTTP " .. tostring(status))
  end
  if status == 404 and err.message == "no such endpoint" and path then
    -- the daemon predates (or was built without) this part of the API
    err.unsupported = true
    err.message = "no such endpoint: " .. method .. " " .. path:gsub("%?.*$", "") ..
      " (this daemon does not support it)"
  end
  err.code = err.code or (status == 404 and "not_found" or status == 409 and "conflict" or
    status == 400 and "invalid" or status == 401 and "unauthorized" or "error")
  return err
end

local function request_opts(self, method, path, opts)
  opts = opts or {}
  local r = {
    method = method,
    url = self:url(with_query(path, opts.query)),
    timeout = opts.timeout or 0,
    unix_socket = self.target.kind == "unix" and self.target.path or nil,
    max_body = opts.max_body or (512 << 20),
  }
  local ctype = opts.content_type
  if opts.body ~= nil then
    r.body = json.encode(opts.body)
    ctype = ctype or "application/json"
  elseif opts.raw ~= nil then
    r.body = opts.raw
  elseif opts.body_file then
    r.body_file = opts.body_file
  end
  r.headers = self:headers(opts.headers, ctype)
  return r
end

local function decode(body)
  if body == nil or body == "" then return true end
  local ok, val = pcall(json.decode, body)
  if ok then return val end
  return body
end

local DEBUG = (os.getenv("MOONBOX_DEBUG") or "") ~= ""

local function trace(fmt, ...)
  if DEBUG then term.ewrite(string.format("[moonbox] " .. fmt .. "\n", ...)) end
end

function C:call(method, path, opts)
  local ro = request_opts(self, method, path, opts)
  trace("%s %s %s", method, ro.url, ro.body or (ro.body_file and ("<" .. ro.body_file)) or "")
  local resp, msg, code = http.request(ro)
  trace("-> %s %s", resp and resp.status or code, resp and resp.body:sub(1, 300) or msg)
  if not resp then return nil, self:connect_error(msg, code) end
  if resp.status >= 400 then return nil, M.api_error(resp.status, resp.body, method, path) end
  return decode(resp.body), resp
end

function C:check(method, path, opts)
  local body, err = self:call(method, path, opts)
  if body == nil then errors.api(err) end
  return body, err
end

function C:stream(method, path, opts)
  local resp, msg, code = http.stream(request_opts(self, method, path, opts))
  if not resp then return nil, self:connect_error(msg, code) end
  if resp.status >= 400 then
    local parts = {}
    while true do
      local chunk = resp:read(10)
      if not chunk then break end
      parts[#parts + 1] = chunk
    end
    resp:close()
    return nil, M.api_error(resp.status, table.concat(parts), method, path)
  end
  return resp
end

function C:websocket(path, query)
  local opts = { headers = self:headers(), timeout = 30 }
  local p = with_query(path, query)
  if self.target.kind == "unix" then
    opts.unix_socket = self.target.path
    opts.path = p
  else
    opts.url = "ws://" .. self.target.hostport .. p
  end
  local w, msg, code = ws.connect(opts)
  if w then return w end
  local status, body = tostring(msg):match("^HTTP (%d+) (.*)$")
  if status then return nil, M.api_error(tonumber(status), body) end
  return nil, self:connect_error(msg, code)
end

-- Complete lines from a streamed response (the last one even without a newline).
function M.lines(resp, timeout)
  local buf = ""
  local done = false
  return function()
    while true do
      local nl = buf:find("\n", 1, true)
      if nl then
        local line = buf:sub(1, nl - 1)
        buf = buf:sub(nl + 1)
        return (line:gsub("\r$", ""))
      end
      if done then
        if buf ~= "" then
          local line = buf
          buf = ""
          return line
        end
        return nil
      end
      local chunk, msg, code = resp:read(timeout)
      if chunk then
        buf = buf .. chunk
      elseif msg then
        errors.api({ kind = "connect", code = code,
                     message = "lost the connection to the daemon: " .. tostring(msg) })
      else
        done = true
      end
    end
  end
end

return M
