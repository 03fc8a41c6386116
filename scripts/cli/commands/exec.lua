-- exec [-i] [-t] [-e K=V] [-u USER] [-w DIR] CONTAINER COMMAND [ARG...]
-- Runs over the exec WebSocket (output streams as it comes); returns the command's exit
-- code.
local client = require("cli.client")
local errors = require("cli.errors")
local opts_ = require("cli.opts")
local out = require("cli.out")
local session = require("cli.session")

local M = {}

M.exec = {
  name = "exec",
  usage = "exec [OPTIONS] CONTAINER COMMAND [ARG...]",
  summary = "Execute a command in a running container",
  min_args = 2,
  interspersed = false,
  flags = {
    { "i", "interactive", "bool", "Keep STDIN open even if not attached" },
    { "t", "tty", "bool", "Allocate a pseudo-TTY" },
    { "e", "env", "list", "Set environment variables" },
    { nil, "env-file", "list", "Read in a file of environment variables" },
    { "u", "user", "string", "Username or UID (format: \"<name|uid>[:<group|gid>]\")" },
    { "w", "workdir", "string", "Working directory inside the container" },
  },
  examples = { "moonbox exec web ls /", "moonbox exec -it web sh" },
  run = function(ctx, o, pos)
    local env = {}
    for _, f in ipairs(o.env_file) do
      local text, err = fs.read(f)
      if not text then errors.usage("cannot read the env file: " .. tostring(err), "exec") end
      local list, msg = opts_.env_file(text)
      if not list then errors.usage(msg, "exec") end
      for _, e in ipairs(list) do env[#env + 1] = e end
    end
    local list, msg = opts_.env(o.env)
    if not list then errors.usage(msg, "exec") end
    for _, e in ipairs(list) do env[#env + 1] = e end
    if o.workdir and o.workdir:sub(1, 1) ~= "/" then
      errors.usage("the working directory must be an absolute path", "exec")
    end
    if o.interactive and o.tty and not term.isatty(0) then
      out.err("the input device is not a TTY")
      return 1
    end
    local api = ctx.api()
    -- the daemon adds the container's environment, user and workdir (-e etc. on top)
    local cmd = {}
    for i = 2, #pos do cmd[#cmd + 1] = pos[i] end
    local q = { cmd = cmd, env = env, user = o.user, workdir = o.workdir }
    if o.tty then
      q.tty = 1
      local rows, cols = term.size()
      q.rows, q.cols = rows or 24, cols or 80
    end
    local ws, err = api:websocket("/v1/containers/" .. client.urlencode(pos[1]) .. "/exec/ws", q)
    if not ws then errors.api(err) end
    local res = session.run(ws, { tty = o.tty, stdin = o.interactive, raw = o.tty })
    if res.error then
      out.err(res.error)
      -- the command could not run: docker's 127 (not found) / 126 (cannot execute)
      local code = require("cli.commands.run").start_failure_code(res.error)
      if code ~= 125 then return code end
    end
    if res.exit_code == nil then
      out.err("moonbox: the connection closed before the command's exit code arrived")
      return 1
    end
    return res.exit_code
  end,
}

return M
