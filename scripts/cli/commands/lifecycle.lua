-- stop, start, restart, pause, unpause, kill, rm, update, wait: each takes several
-- containers, like docker; it prints each name as given once done, reports the
-- failures on stderr and exits 1 if any failed.
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")
local out = require("cli.out")

local M = {}

local function path(name) return "/v1/containers/" .. client.urlencode(name) end

-- Runs fn(api, name) -> body | nil, err for every name; prints results the docker way.
local function each(ctx, o, names, fn)
  local api = ctx.api()
  local results, rc = errors.each(names, function(name)
    local body, err = fn(api, name)
    if body == nil then return nil, err end
    if o.format ~= "json" then out.print(name) end
    return type(body) == "table" and body or { name = name }
  end)
  if results and o.format == "json" then out.json(json.array(results)) end
  return rc
end

local function action(name, summary, verb, flags, query_of)
  return {
    name = name,
    usage = name .. " [OPTIONS] CONTAINER [CONTAINER...]",
    summary = summary,
    min_args = 1,
    flags = flags or {},
    format = true,
    format_help = "\"json\": print the containers' state after the action as JSON",
    run = function(ctx, o, pos)
      local q = query_of and query_of(o) or nil
      return each(ctx, o, pos, function(api, n)
        return api:call("POST", path(n) .. "/" .. verb, { query = q })
      end)
    end,
  }
end

M.start = action("start", "Start one or more stopped containers", "start")
M.stop = action("stop", "Stop one or more running containers", "stop",
  { { "t", "timeout", "int", "Seconds to wait before killing the container" },
    { nil, "time", "int", "Alias of --timeout", hidden = true } },
  function(o) return { timeout = o.timeout or o.time } end)
M.restart = action("restart", "Restart one or more containers", "restart",
  { { "t", "timeout", "int", "Seconds to wait before killing the container" },
    { nil, "time", "int", "Alias of --timeout", hidden = true } },
  function(o) return { timeout = o.timeout or o.time } end)
M.pause = action("pause", "Pause all processes within one or more containers", "pause")
M.unpause = action("unpause", "Unpause all processes within one or more containers", "resume")
M.kill = action("kill", "Kill one or more running containers", "kill",
  { { "s", "signal", "string", "Signal to send to the container", default = "SIGKILL" } },
  function(o)
    local sig, msg = opts_.signal(o.signal)
    if not sig then errors.usage(msg, "kill") end
    return { signal = sig }
  end)

M.rm = {
  name = "rm",
  usage = "rm [OPTIONS] CONTAINER [CONTAINER...]",
  summary = "Remove one or more containers",
  aliases = { "rm", "remove" },
  min_args = 1,
  flags = {
    { "f", "force", "bool", "Force the removal of a running container" },
    { "v", "volumes", "bool", "Remove anonymous volumes associated with the container" },
  },
  run = function(ctx, o, pos)
    return each(ctx, o, pos, function(api, n)
      return api:call("DELETE", path(n), { query = { force = o.force and 1 or nil, volumes = o.volumes and 1 or nil } })
    end)
  end,
}

M.update = {
  name = "update",
  usage = "update [OPTIONS] CONTAINER [CONTAINER...]",
  summary = "Update the configuration of one or more containers (CPUs and memory while stopped)",
  min_args = 1,
  flags = {
    { nil, "cpus", "number", "Number of CPUs" },
    { "m", "memory", "string", "Memory limit (e.g. 512m, 1g)", meta = "bytes" },
    { nil, "restart", "string", "Restart policy to apply when a container exits" },
  },
  run = function(ctx, o, pos)
    local body = {}
    if o.cpus then
      if o.cpus <= 0 then errors.usage("--cpus must be a positive number", "update") end
      body.cpus = o.cpus
    end
    if o.memory then
      body.memory = opts_.size(o.memory) or errors.usage("invalid --memory value " .. string.format("%q", o.memory), "update")
    end
    if o.restart then
      local r, msg = opts_.restart(o.restart)
      if not r then errors.usage(msg, "update") end
      body.restart = r
    end
    if next(body) == nil then errors.usage("you must provide one or more flags when using this command", "update") end
    return each(ctx, o, pos, function(api, n)
      return api:call("PATCH", path(n), { body = body })
    end)
  end,
}

M.wait = {
  name = "wait",
  usage = "wait CONTAINER [CONTAINER...]",
  summary = "Block until one or more containers stop, then print their exit codes",
  min_args = 1,
  run = function(ctx, o, pos)
    local api = ctx.api()
    local failed = 0
    for _, n in ipairs(pos) do
      local res, err = api:call("POST", path(n) .. "/wait", { query = { condition = "not-running" } })
      if not res then
        failed = failed + 1
        out.err(errors.describe(err))
      else
        local code = format.v(res.exit_code)
        out.print(tostring(math.tointeger(code) or code or 0))
      end
    end
    return failed > 0 and 1 or 0
  end,
}

return M
