-- `moonbox <command>`: the client CLI. host/cli.c runs the function this file returns as a
-- task with the command line (without argv[0]); its integer result is the exit code.
--
-- Exit codes: 0 ok, 1 daemon/API error, 2 usage error, 125 `run` could not start the
-- container, `run` (attached) and `exec`: the container's / command's exit code.
local args = require("cli.args")
local client = require("cli.client")
local errors = require("cli.errors")
local out = require("cli.out")

-- Command name -> module under cli/commands/ (a module returns one spec or a map of
-- name -> spec). The order here is the order of `moonbox help`.
local COMMANDS = {
  { "Common Commands", {
    { "run", "run" }, { "exec", "exec" }, { "ps", "ps" }, { "logs", "logs" },
    { "images", "images" }, { "pull", "images" }, { "login", "login" },
    { "logout", "login" }, { "version", "system" }, { "info", "system" },
  } },
  { "Management Commands", {
    { "network", "network" }, { "volume", "volume" },
  } },
  { "Commands", {
    { "cp", "cp" }, { "create", "run" }, { "events", "events" }, { "inspect", "inspect" }, { "kill", "lifecycle" },
    { "load", "images" }, { "pause", "lifecycle" }, { "restart", "lifecycle" },
    { "rm", "lifecycle" }, { "rmi", "images" }, { "start", "lifecycle" },
    { "stats", "stats" }, { "stop", "lifecycle" }, { "top", "top" },
    { "unpause", "lifecycle" }, { "update", "lifecycle" }, { "wait", "lifecycle" },
  } },
}

local MODULE = {}
for _, group in ipairs(COMMANDS) do
  for _, c in ipairs(group[2]) do MODULE[c[1]] = c[2] end
end

local GLOBAL = {
  name = "",
  usage = "[OPTIONS] COMMAND",
  summary = "Run OCI images, each in its own QEMU microVM",
  interspersed = false,
  flags = {
    { "H", "host", "string", "Daemon socket to connect to: unix:///path or tcp://host:port " ..
      "(default $MOONBOX_HOST, else the local socket)" },
    { nil, "token", "string", "API token for TCP connections (default $MOONBOX_TOKEN)" },
    { "v", "version", "bool", "Print version information and quit" },
    { "D", "debug", "bool", "Show tracebacks of internal errors" },
  },
}

local M = {}

-- Loads the spec of a command (nil if there is none).
function M.spec(name)
  local mod = MODULE[name]
  if not mod then return nil end
  local m = require("cli.commands." .. mod)
  if m.name then return m end
  return m[name]
end

local function main_help()
  local lines = { "", "Usage:  moonbox [OPTIONS] COMMAND", "", GLOBAL.summary }
  for _, group in ipairs(COMMANDS) do
    lines[#lines + 1] = ""
    lines[#lines + 1] = group[1] .. ":"
    for _, c in ipairs(group[2]) do
      local spec = M.spec(c[1])
      lines[#lines + 1] = "  " .. c[1] .. string.rep(" ", 11 - #c[1]) .. (spec and spec.summary or "")
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global Options:"
  for _, f in ipairs(GLOBAL.flags) do
    local left = (f[1] and ("-" .. f[1] .. ", ") or "    ") .. "--" .. f[2] ..
      (f[3] ~= "bool" and (" " .. f[3]) or "")
    lines[#lines + 1] = "  " .. left .. string.rep(" ", 20 - #left) .. f[4]
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Run 'moonbox COMMAND --help' for more information on a command."
  lines[#lines + 1] = ""
  return table.concat(lines, "\n")
end

-- The context a command's run(ctx, opts, pos) gets.
local function context(gopts)
  local ctx = { global = gopts }
  function ctx.api()
    if not ctx._client then
      ctx._client = client.new { host = gopts.host, token = gopts.token }
    end
    return ctx._client
  end
  return ctx
end

-- Runs spec (a command or a group with subcommands) on argv[i..].
local function dispatch(ctx, spec, argv, i, prefix)
  if spec.subcommands then
    local sub = argv[i]
    if sub == nil or sub == "--help" or sub == "-h" or sub == "help" then
      out.write(args.help(spec))
      return sub == nil and 2 or 0
    end
    for _, s in ipairs(spec.subcommands) do
      local names = { s.name:match("(%S+)$") }
      for _, a in ipairs(s.aliases or {}) do names[#names + 1] = a:match("(%S+)$") end
      for _, nm in ipairs(names) do
        if nm == sub then return dispatch(ctx, s, argv, i + 1) end
      end
    end
    errors.usage(string.format("'%s' is not a moonbox %s command.", sub, spec.name), spec.name)
  end
  local opts, pos = args.parse(spec, argv, i)
  if opts.help then
    out.write(args.help(spec))
    return 0
  end
  args.check_count(spec, pos)
  local rc = spec.run(ctx, opts, pos)
  return math.tointeger(rc) or 0
end

local function report(e, gopts)
  if errors.is(e) then
    if e.kind == "usage" then
      local cmd = e.cmd and e.cmd ~= "" and (" " .. e.cmd) or ""
      out.err("moonbox" .. cmd .. ": " .. e.message)
      out.err("See 'moonbox" .. cmd .. " --help'.")
    elseif e.kind == "exit" then
      if e.message then out.err(e.message) end
    else
      out.err(errors.describe(e))
    end
    return e.exit or 1
  end
  out.err("moonbox: internal error: " .. tostring(e))
  return 1
end

function M.main(argv)
  local gopts, rest
  local ok, perr = pcall(function()
    gopts, rest = args.parse(GLOBAL, argv)
  end)
  if not ok then return report(perr) end
  local debug_on = gopts.debug or (os.getenv("MOONBOX_DEBUG") or "") ~= ""
  if gopts.version then
    out.print(string.format("moonbox version %s, API %s", moonbox.version, moonbox.api_version))
    return 0
  end
  local name = rest[1]
  if name == nil or gopts.help then
    out.write(main_help())
    return 0
  end
  if name == "help" then
    if rest[2] then
      local spec = M.spec(rest[2])
      if not spec then
        out.err(string.format("moonbox: unknown help topic %q", rest[2]))
        out.err("See 'moonbox --help'")
        return 2
      end
      out.write(args.help(spec))
      return 0
    end
    out.write(main_help())
    return 0
  end
  local spec = M.spec(name)
  if not spec then
    out.err(string.format("moonbox: '%s' is not a moonbox command.", name))
    out.err("See 'moonbox --help'")
    return 2
  end
  local ctx = context(gopts)
  -- remaining argv after the command name: rebuild so positions are simple
  local sub = {}
  for j = 2, #rest do sub[#sub + 1] = rest[j] end
  local good, rc = xpcall(dispatch, function(e)
    if errors.is(e) or not debug_on then return e end
    return debug.traceback(tostring(e), 2)
  end, ctx, spec, sub, 1)
  if not good then return report(rc) end
  return rc
end

return M.main
