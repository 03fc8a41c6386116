-- run, create
--
-- run: create the container (pulling the image first, with progress, when it is not
-- there), start it, and then either print its id (-d) or stay attached: output (and
-- with -i our stdin) until it exits, returning its exit code. 125 when the container
-- could not be created or started.
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local images = require("cli.images")
local logs = require("cli.commands.logs")
local opts_ = require("cli.opts")
local out = require("cli.out")
local session = require("cli.session")

local M = {}

local FLAGS = {
  { "d", "detach", "bool", "Run container in background and print container ID" },
  { "i", "interactive", "bool", "Keep STDIN open even if not attached" },
  { "t", "tty", "bool", "Allocate a pseudo-TTY" },
  { nil, "name", "string", "Assign a name to the container" },
  { "p", "publish", "list", "Publish a container's port(s) to the host ([ip:]host:container[/proto])" },
  { "e", "env", "list", "Set environment variables (K=V, or K to take it from here)" },
  { nil, "env-file", "list", "Read in a file of environment variables" },
  { "v", "volume", "list", "Bind mount a volume (name:/path[:ro], /host:/path[:ro], /path)" },
  { "l", "label", "list", "Set meta data on a container (k=v)" },
  { nil, "restart", "string", "Restart policy: no, always, unless-stopped, on-failure[:N]" },
  { nil, "cpus", "number", "Number of CPUs" },
  { "m", "memory", "string", "Memory limit (e.g. 512m, 1g)", meta = "bytes" },
  { nil, "rm", "bool", "Automatically remove the container when it exits" },
  { nil, "sig-proxy", "bool", "Proxy received signals to the process (non-TTY mode only)", default = true },
  { nil, "entrypoint", "string", "Overwrite the default ENTRYPOINT of the image" },
  { "w", "workdir", "string", "Working directory inside the container" },
  { "u", "user", "string", "Username or UID (format: <name|uid>[:<group|gid>])" },
  { "h", "hostname", "string", "Container host name" },
  { nil, "network", "string", "Connect a container to a network" },
  { nil, "net", "string", "Alias of --network", hidden = true },
  { nil, "health-cmd", "string", "Command to run to check health" },
  { nil, "health-interval", "string", "Time between running the check (ms|s|m|h)", meta = "duration" },
  { nil, "health-retries", "int", "Consecutive failures needed to report unhealthy" },
  { nil, "health-timeout", "string", "Maximum time to allow one check to run (ms|s|m|h)", meta = "duration" },
  { nil, "health-start-period", "string", "Start period for the container to initialize (ms|s|m|h)", meta = "duration" },
  { nil, "no-healthcheck", "bool", "Disable any container-specified HEALTHCHECK" },
  { nil, "stop-signal", "string", "Signal to stop the container" },
  { nil, "stop-timeout", "int", "Timeout (in seconds) to stop a container" },
  { nil, "pull", "string", "Pull image before running (\"always\", \"missing\", \"never\")", default = "missing" },
  { "q", "quiet", "bool", "Suppress the pull output" },
}

local function usage(msg, cmd) errors.usage(msg, cmd or "run") end

local function must(cmd, v, msg)
  if v == nil then usage(msg, cmd) end
  return v
end

-- The create body from the parsed flags and positionals (pure; unit-tested).
function M.body(o, pos, cmd)
  cmd = cmd or "run"
  local b = { image = pos[1] }
  if pos[1] == "" then usage("the image name must not be empty", cmd) end
  if #pos > 1 then
    local c = json.array()
    for i = 2, #pos do c[#c + 1] = pos[i] end
    b.cmd = c
  end
  if o.name then b.name = o.name end
  if o.entrypoint then
    b.entrypoint = o.entrypoint == "" and json.array() or json.array({ o.entrypoint })
  end
  local env = json.array()
  for _, f in ipairs(o.env_file or {}) do
    local text, err = fs.read(f)
    if not text then usage("cannot read the env file: " .. tostring(err), cmd) end
    local list, msg = opts_.env_file(text)
    if not list then usage(msg, cmd) end
    for _, e in ipairs(list) do env[#env + 1] = e end
  end
  local list, msg = opts_.env(o.env)
  if not list then usage(msg, cmd) end
  for _, e in ipairs(list) do env[#env + 1] = e end
  if #env > 0 then b.env = env end
  if o.workdir then
    if o.workdir:sub(1, 1) ~= "/" then usage("the working directory '" .. o.workdir .. "' is invalid, it needs to be an absolute path", cmd) end
    b.workdir = o.workdir
  end
  if o.user then b.user = o.user end
  if o.hostname then b.hostname = o.hostname end
  if o.cpus then
    if o.cpus <= 0 then usage("--cpus must be a positive number", cmd) end
    b.cpus = o.cpus
  end
  if o.memory then b.memory = must(cmd, opts_.size(o.memory), "invalid --memory value " .. string.format("%q", o.memory)) end
  if #(o.publish or {}) > 0 then
    local ports = json.array()
    for _, p in ipairs(o.publish) do
      local specs, perr = opts_.ports(p)
      if not specs then usage(perr, cmd) end
      for _, s in ipairs(specs) do ports[#ports + 1] = s end
    end
    b.ports = ports
  end
  if #(o.volume or {}) > 0 then
    local vols = json.array()
    for _, s in ipairs(o.volume) do
      local vol, verr = opts_.volume(s)
      if not vol then usage(verr, cmd) end
      vols[#vols + 1] = vol
    end
    b.volumes = vols
  end
  local network = o.network or o.net
  if network then b.network = network end
  if o.restart then
    local r, rerr = opts_.restart(o.restart)
    if not r then usage(rerr, cmd) end
    b.restart = r
  end
  if #(o.label or {}) > 0 then
    local labels, lerr = opts_.labels(o.label)
    if not labels then usage(lerr, cmd) end
    b.labels = labels
  end
  if o.no_healthcheck then
    if o.health_cmd then usage("--no-healthcheck conflicts with --health-* options", cmd) end
    b.healthcheck = { test = json.array({ "NONE" }) }
  elseif o.health_cmd or o.health_interval or o.health_retries or o.health_timeout or o.health_start_period then
    local hc = {}
    if o.health_cmd then hc.test = json.array({ "CMD-SHELL", o.health_cmd }) end
    for _, k in ipairs({ "interval", "timeout", "start_period" }) do
      local val = o["health_" .. k]
      if val then
        local d, derr = opts_.duration(val)
        if not d then usage("--health-" .. k:gsub("_", "-") .. ": " .. derr, cmd) end
        if d < 0 then usage("--health-" .. k:gsub("_", "-") .. " cannot be negative", cmd) end
        hc[k] = d
      end
    end
    if o.health_retries then
      if o.health_retries < 0 then usage("--health-retries cannot be negative", cmd) end
      if o.health_retries > 0 then hc.retries = o.health_retries end -- 0: the default
    end
    if not hc.test then usage("--health-* options need --health-cmd", cmd) end
    b.healthcheck = hc
  end
  if o.stop_signal then
    b.stop_signal = must(cmd, (opts_.signal(o.stop_signal)), "invalid --stop-signal " .. string.format("%q", o.stop_signal))
  end
  if o.stop_timeout then b.stop_timeout = o.stop_timeout end
  if o.rm then b.auto_remove = true end
  b.tty = o.tty == true
  b.stdin = o.interactive == true
  return b
end

local function warn_all(created)
  for _, w in ipairs(format.v(created.warnings) or {}) do out.err("WARNING: " .. tostring(w)) end
end

-- Pulls when needed (--pull), reporting on stderr like docker run. Returns true, or
-- nil, err (the command then exits 125).
local function ensure_image(api, image, o)
  local policy = o.pull or "missing"
  if policy ~= "missing" and policy ~= "always" and policy ~= "never" then
    usage("invalid --pull value " .. string.format("%q", policy) .. ": use always, missing or never")
  end
  local have, err
  if policy ~= "always" then
    have, err = images.find(api, image)
    if not have and err.code == "unsupported" then return true end -- the daemon pulls on create
    if not have and err.code ~= "not_found" then return nil, err end
  end
  if have then return true end
  if policy == "never" then
    return nil, { kind = "api", code = "not_found", message = "No such image: " .. image }
  end
  if policy == "missing" and not o.quiet then
    local shown = image
    if not image:find("@", 1, true) and not (image:match("([^/]*)$") or ""):find(":", 1, true) then
      shown = image .. ":latest"
    end
    out.err("Unable to find image '" .. shown .. "' locally")
  end
  local rec, perr = images.pull(api, image, {
    quiet = o.quiet, tty = term.isatty(2), write = function(s) term.ewrite(s) end,
  })
  if not rec then
    if perr.unsupported then return true end
    return nil, perr
  end
  return true
end

-- docker's codes when the command itself cannot run: 127 not found, 126 not executable
function M.start_failure_code(msg)
  msg = tostring(msg or ""):lower()
  if not msg:find("exec", 1, true) and not msg:find("^sh: ") then return 125 end
  if msg:find("not found", 1, true) or msg:find("no such file", 1, true) then return 127 end
  if msg:find("permission denied", 1, true) or msg:find("not executable", 1, true) then return 126 end
  return 125
end

local function remove_quietly(api, id)
  api:call("DELETE", "/v1/containers/" .. client.urlencode(id), { query = { force = 1 } })
end

-- The exit code of a container that auto-removed itself, from the event log.
local function exit_from_events(api, id, since)
  local evs = api:call("GET", "/v1/events", {
    query = { follow = "false", type = "container.*", since = since, limit = 10000 }, timeout = 30 })
  if type(evs) ~= "table" then return nil end
  local code
  for _, e in ipairs(evs) do
    local d = format.v(e.data)
    if type(d) == "table" and d.id == id and format.v(d.exit_code) ~= nil then
      code = math.tointeger(d.exit_code) or code
    end
  end
  return code
end

local function create(ctx, o, pos, cmdname)
  local body = M.body(o, pos, cmdname)
  local api = ctx.api()
  local ok, err = ensure_image(api, body.image, o)
  if not ok then
    out.err(errors.describe(err))
    return nil, 125
  end
  local created
  created, err = api:call("POST", "/v1/containers", { body = body })
  if not created then
    out.err(errors.describe(err))
    return nil, 125
  end
  warn_all(created)
  return created, body
end

M.create = {
  name = "create",
  usage = "create [OPTIONS] IMAGE [COMMAND] [ARG...]",
  summary = "Create a new container",
  min_args = 1,
  interspersed = false,
  flags = FLAGS,
  hidden = true,
  run = function(ctx, o, pos)
    local created, code = create(ctx, o, pos, "create")
    if not created then return code end
    out.print(created.id)
    return 0
  end,
}

M.run = {
  name = "run",
  usage = "run [OPTIONS] IMAGE [COMMAND] [ARG...]",
  summary = "Create and run a new container from an image",
  min_args = 1,
  interspersed = false,
  flags = FLAGS,
  examples = {
    "moonbox run --rm alpine echo hello",
    "moonbox run -d --name web -p 8080:80 nginx",
    "moonbox run -it --rm alpine sh",
  },
  run = function(ctx, o, pos)
    if o.interactive and o.tty and not o.detach and not term.isatty(0) then
      out.err("the input device is not a TTY")
      return 1
    end
    local api = ctx.api()
    local created, code = create(ctx, o, pos, "run")
    if not created then return code end
    local id = created.id
    local path = "/v1/containers/" .. client.urlencode(id)

    if o.detach then
      local _, err = api:call("POST", path .. "/start")
      if not _ then
        out.err(errors.describe(err))
        if o.rm then remove_quietly(api, id) end
        return err.kind == "api" and M.start_failure_code(err.message) or 125
      end
      out.print(id)
      return 0
    end

    -- attached: wait for the exit from before the start, so it cannot be missed
    local since
    if o.rm then
      local info = api:call("GET", "/v1/system/info", { timeout = 30 })
      since = type(info) == "table" and type(info.counts) == "table" and format.v(info.counts.events) or nil
    end
    local waiter = task.spawn(function()
      return api:call("POST", path .. "/wait", { query = { condition = "next-exit" } })
    end)
    -- Without a tty the output comes from the log stream, opened before the start so
    -- that nothing is missed (and nothing is lost to --rm); with a tty it comes raw
    -- through the attach WebSocket.
    local log_resp
    if not o.tty then
      local lerr
      log_resp, lerr = logs.open(api, id, { follow = 1 })
      if not log_resp then
        waiter:cancel()
        out.err(errors.describe(lerr))
        if o.rm then remove_quietly(api, id) end
        return 125
      end
    end
    -- attach before the start, like docker: the terminal has its size from the first
    -- instruction of the process, and early input is delivered once it runs
    local ws, werr
    if o.interactive or o.tty then
      local q
      if o.tty then
        local rows, cols = term.size()
        if rows then q = { rows = rows, cols = cols } end
      end
      ws, werr = api:websocket(path .. "/attach/ws", q)
    end
    local started, err = api:call("POST", path .. "/start")
    if not started then
      waiter:cancel()
      if ws then ws:close() end
      if log_resp then log_resp:close() end
      out.err(errors.describe(err))
      if o.rm then remove_quietly(api, id) end
      return err.kind == "api" and M.start_failure_code(err.message) or 125
    end

    -- like docker's --sig-proxy (on by default): Ctrl-C, SIGTERM, SIGHUP and SIGQUIT go to
    -- the container's process instead of ending the client (with a tty they are keys)
    local proxy
    if o.sig_proxy and not o.tty then
      proxy = task.spawn(function()
        while true do
          local sig = term.signal()
          if not sig then return end
          api:call("POST", path .. "/kill", { query = { signal = sig }, timeout = 30 })
        end
      end)
    end
    local function done(code)
      if proxy then proxy:cancel() end
      return code
    end

    local session_code
    local printer = log_resp and task.spawn(logs.pump, log_resp)
    if o.interactive or o.tty then
      if ws then
        local res = session.run(ws, { tty = o.tty, stdin = o.interactive, raw = o.tty,
                                      output = o.tty and true or false,
                                      detach = o.tty and "\16\17" or nil })
        if res.detached then
          waiter:cancel()
          out.err("")
          out.err("read escape sequence")
          return done(0)
        end
        if res.error then out.err(res.error) end
        session_code = res.exit_code
      elseif (werr.status == 409 or werr.status == 404) and o.tty then
        logs.stream(api, id, {}) -- it is already over: show what it printed
      elseif werr.status ~= 409 and werr.status ~= 404 then
        -- (409/404: it is already over; the log stream has its output)
        waiter:cancel()
        if printer then printer:cancel() end
        out.err(errors.describe(werr))
        return done(1)
      end
    end
    local good, res, werr = waiter:wait()
    if printer then
      -- the log stream ends by itself once the container stopped (or went away); with a
      -- restart policy it would go on: give it a moment to drain, then stop reading
      local cur = api:call("GET", path, { timeout = 30 })
      local st = type(cur) == "table" and format.v(cur.state)
      if st == "restarting" or st == "running" or st == "booting" or st == "initializing" then
        printer:wait(1)
        printer:cancel()
      else
        printer:wait()
      end
    end
    if good and type(res) == "table" then
      if format.v(res.error) then out.err("moonbox: " .. tostring(res.error)) end
      local c = math.tointeger(format.v(res.exit_code))
      if c then return done(c) end
      if format.v(res.signal) then return done(128 + (math.tointeger(res.signal) or 0)) end
      return done(session_code or 0)
    end
    if session_code then return done(session_code) end
    if o.rm then
      local c = exit_from_events(api, id, since)
      if c then return done(c) end
    end
    if good and werr then out.err(errors.describe(werr)) end
    return done(125)
  end,
}

return M
