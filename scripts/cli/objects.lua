-- `rm` and `inspect` for the named objects that have nothing more to them than a path
-- (networks, volumes): docker's shapes, several names at once, each failure reported.
--   objects.rm(kind, path_of [, extra])       kind: "network"; path_of(name) -> API path
--   objects.inspect(kind, path_of)
local errors = require("cli.errors")
local format = require("cli.format")
local out = require("cli.out")

local M = {}

function M.rm(kind, path_of, extra)
  local Kind = kind:upper()
  local spec = {
    name = kind .. " rm",
    usage = kind .. " rm [OPTIONS] " .. Kind .. " [" .. Kind .. "...]",
    summary = "Remove one or more " .. kind .. "s",
    aliases = { kind .. " rm", kind .. " remove" },
    min_args = 1,
    run = function(ctx, o, pos)
      local api = ctx.api()
      local _, rc = errors.each(pos, function(n)
        local res, err = api:call("DELETE", path_of(n))
        if res then out.print(n) end
        return res, err
      end)
      return rc
    end,
  }
  for k, val in pairs(extra or {}) do spec[k] = val end
  return spec
end

function M.inspect(kind, path_of)
  local Kind = kind:upper()
  return {
    name = kind .. " inspect",
    usage = kind .. " inspect [OPTIONS] " .. Kind .. " [" .. Kind .. "...]",
    summary = "Display detailed information on one or more " .. kind .. "s",
    min_args = 1,
    flags = { { "f", "format", "string", "Format the output using a template (default: JSON)" } },
    run = function(ctx, o, pos)
      local api = ctx.api()
      local res, rc = errors.each(pos, function(n) return api:call("GET", path_of(n), { timeout = 60 }) end)
      if not res then return rc end
      if o.format and o.format ~= "json" then
        for _, x in ipairs(res) do out.print(format.template(o.format, x)) end
      else
        out.json(json.array(res))
      end
      return rc
    end,
  }
end

return M
