-- volume create/ls/rm/inspect/prune
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")
local objects = require("cli.objects")
local out = require("cli.out")
local v = format.v

local function path(name) return "/v1/volumes/" .. client.urlencode(name) end

local create = {
  name = "volume create",
  usage = "volume create [OPTIONS] [VOLUME]",
  summary = "Create a volume",
  max_args = 1,
  flags = {
    { nil, "name", "string", "Specify volume name" },
    { "s", "size", "string", "Size of the volume (e.g. 512m, 10g; default 1g)", meta = "bytes" },
    { "l", "label", "list", "Set metadata for a volume (k=v)" },
    { "d", "driver", "string", "Accepted for docker compatibility (\"local\" only)", hidden = true },
    { "o", "opt", "list", "Driver options: size=N", hidden = true },
  },
  run = function(ctx, o, pos)
    if o.name and pos[1] and o.name ~= pos[1] then
      errors.usage("conflicting options: either specify --name or provide positional arg, not both", "volume create")
    end
    local body = { name = o.name or pos[1] }
    local size = o.size
    for _, x in ipairs(o.opt) do
      local k, val = x:match("^([^=]+)=(.*)$")
      if k == "size" then size = val else errors.usage("unknown volume option " .. x, "volume create") end
    end
    if size then
      body.size = opts_.size(size) or errors.usage("invalid size " .. string.format("%q", size), "volume create")
    end
    if #o.label > 0 then
      local labels, msg = opts_.labels(o.label)
      if not labels then errors.usage(msg, "volume create") end
      body.labels = labels
    end
    local res = ctx.api():check("POST", "/v1/volumes", { body = body })
    out.print(type(res) == "table" and v(res.name) or body.name or "")
    return 0
  end,
}

local ls = {
  name = "volume ls",
  usage = "volume ls [OPTIONS]",
  summary = "List volumes",
  aliases = { "volume ls", "volume list" },
  max_args = 0,
  format = true,
  flags = { { "q", "quiet", "bool", "Only display volume names" } },
  run = function(ctx, o)
    local list = ctx.api():check("GET", "/v1/volumes", { timeout = 60 })
    out.list(o.format, list, {
      { "DRIVER", function() return "local" end },
      { "VOLUME NAME", "name" },
      { "SIZE", function(x) return format.bytes(v(x.size)) end },
      { "USED", function(x) return format.bytes(v(x.allocated)) end },
      { "CONTAINERS", function(x) return tostring(#(v(x.attached_to) or {})) end },
    }, { quiet = o.quiet and function(x) return v(x.name) end })
    return 0
  end,
}

local rm = objects.rm("volume", path, {
  flags = { { "f", "force", "bool", "Accepted for docker compatibility", hidden = true } },
})
local inspect = objects.inspect("volume", path)

local prune = {
  name = "volume prune",
  usage = "volume prune [OPTIONS]",
  summary = "Remove unused anonymous volumes",
  max_args = 0,
  flags = { { "f", "force", "bool", "Do not prompt for confirmation (there is no prompt)" } },
  run = function(ctx)
    local res = ctx.api():check("POST", "/v1/volumes/prune")
    local removed = type(res) == "table" and v(res.removed) or {}
    if #removed > 0 then
      out.print("Deleted Volumes:")
      for _, n in ipairs(removed) do out.print(n) end
      out.print("")
    end
    out.print("Total reclaimed volumes: " .. #removed)
    return 0
  end,
}

return {
  name = "volume",
  usage = "volume COMMAND",
  summary = "Manage volumes",
  subcommands = { create, ls, rm, inspect, prune },
}
