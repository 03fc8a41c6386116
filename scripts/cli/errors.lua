-- Errors the CLI raises on purpose. main.lua catches them and turns them into a message
-- on stderr and an exit code; anything else raised is a bug (exit 1, "internal error").
--
--   errors.usage(msg [, cmd])   bad command line            -> exit 2
--   errors.api(err)             the daemon said no, or is unreachable (client.lua's err
--                               table: {message, code, status, state, field, kind}) -> 1
--   errors.exit(code [, msg])   stop with this exit code (msg printed as is, if any)
local M = {}

local Err = {}
Err.__index = Err
Err.__tostring = function(e) return e.message or ("exit " .. tostring(e.exit)) end

local function new(t) return setmetatable(t, Err) end

function M.is(e) return getmetatable(e) == Err end

function M.usage(msg, cmd)
  error(new { kind = "usage", message = msg, cmd = cmd, exit = 2 }, 0)
end

function M.api(err, exit)
  local e = {}
  for k, v in pairs(err) do e[k] = v end
  e.kind = e.kind or "api"
  e.exit = exit or e.exit or 1
  error(new(e), 0)
end

function M.exit(code, msg)
  error(new { kind = "exit", exit = code, message = msg }, 0)
end

-- For the commands that take several objects (rm, inspect, stop, ...), the docker way:
-- fn(name) -> result | nil, err for every name in turn; a failure is reported on stderr
-- and the others still go, but an unreachable daemon ends it at once.
-- -> the results of the successes in order and 0, or 1 if any failed; nil, 1 when the
-- daemon could not be reached.
function M.each(names, fn)
  local out = require("cli.out")
  local results, failed = {}, 0
  for _, name in ipairs(names) do
    local res, err = fn(name)
    if not res then
      failed = failed + 1
      out.err(M.describe(err))
      if err.kind == "connect" then return nil, 1 end
    else
      results[#results + 1] = res
    end
  end
  return results, failed > 0 and 1 or 0
end

-- The text a user sees for an API/connection error (docker's wording where it has one).
function M.describe(e)
  if e.kind == "connect" then
    return e.message
  end
  local msg = e.message or "unknown error"
  if e.state and not msg:find(e.state, 1, true) then
    msg = msg .. " (state: " .. e.state .. ")"
  end
  return "Error response from daemon: " .. msg
end

return M
