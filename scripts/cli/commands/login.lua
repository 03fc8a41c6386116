-- login, logout: registry credentials kept by the daemon (it pulls, so it needs them)
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local out = require("cli.out")

local M = {}

local DEFAULT = "docker.io"

local function server_of(arg)
  if not arg or arg == "" then return DEFAULT end
  local s = arg:gsub("^https?://", ""):gsub("/.*$", "")
  if s == "index.docker.io" or s == "registry-1.docker.io" then s = DEFAULT end
  return s
end
M.server_of = server_of

-- One line from stdin; with hide, the terminal does not echo it.
local function read_line(prompt, hide)
  -- echo off before the prompt shows: whoever answers it must not be echoed, and
  -- switching modes later would discard what was already typed
  local raw = hide and term.isatty(0)
  if raw then term.raw(true) end
  term.ewrite(prompt)
  local buf = {}
  local ok, err = pcall(function()
    while true do
      local chunk = term.read(1024)
      if not chunk then return end
      for i = 1, #chunk do
        local c = chunk:sub(i, i)
        if c == "\r" or c == "\n" then return end
        if c == "\3" then error({ interrupted = true }, 0) end
        if c == "\127" or c == "\8" then buf[#buf] = nil else buf[#buf + 1] = c end
      end
    end
  end)
  if raw then term.raw(false); term.ewrite("\n") end
  if not ok then
    if type(err) == "table" and err.interrupted then errors.exit(130) end
    error(err, 0)
  end
  return table.concat(buf)
end

M.login = {
  name = "login",
  usage = "login [OPTIONS] [SERVER]",
  summary = "Log in to a registry",
  max_args = 1,
  flags = {
    { "u", "username", "string", "Username" },
    { "p", "password", "string", "Password" },
    { nil, "password-stdin", "bool", "Take the password from stdin" },
  },
  run = function(ctx, o, pos)
    local server = server_of(pos[1])
    local user, pass = o.username, o.password
    if o.password_stdin then
      if pass then errors.usage("--password and --password-stdin are mutually exclusive", "login") end
      if not user then errors.usage("must provide --username with --password-stdin", "login") end
      local parts = {}
      while true do
        local chunk = term.read(65536)
        if not chunk then break end
        parts[#parts + 1] = chunk
      end
      pass = table.concat(parts):gsub("[\r\n]+$", "")
    elseif pass then
      out.err("WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
    end
    if not user then
      if not term.isatty(0) then errors.usage("cannot prompt for a username: stdin is not a terminal (use -u)", "login") end
      user = read_line("Username: ")
    end
    if not pass then
      if not term.isatty(0) then errors.usage("cannot prompt for a password: stdin is not a terminal (use --password-stdin)", "login") end
      pass = read_line("Password: ", true)
    end
    if user == "" then errors.usage("username is required", "login") end
    if pass == "" then errors.usage("password is required", "login") end
    local res = ctx.api():check("POST", "/v1/registries/login",
      { body = { registry = server, username = user, password = pass } })
    out.print(type(res) == "table" and format.v(res.status) or "Login Succeeded")
    return 0
  end,
}

M.logout = {
  name = "logout",
  usage = "logout [SERVER]",
  summary = "Log out from a registry",
  max_args = 1,
  run = function(ctx, o, pos)
    local server = server_of(pos[1])
    local res, err = ctx.api():call("DELETE", "/v1/registries/" .. client.urlencode(server))
    if res then
      out.print("Removing login credentials for " .. server)
    elseif err.status == 404 and not err.unsupported then
      out.print("Not logged in to " .. server) -- like docker: nothing to do is fine
    else
      errors.api(err)
    end
    return 0
  end,
}

return M
