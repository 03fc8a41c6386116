-- network create/ls/rm/inspect
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")
local objects = require("cli.objects")
local out = require("cli.out")
local v = format.v

local function path(name) return "/v1/networks/" .. client.urlencode(name) end

local create = {
  name = "network create",
  usage = "network create [OPTIONS] NETWORK",
  summary = "Create a network",
  min_args = 1, max_args = 1,
  flags = {
    { nil, "subnet", "list", "Subnet in CIDR format (one)" },
    { nil, "gateway", "list", "Gateway for the subnet (one)" },
    { nil, "internal", "bool", "Restrict external access to the network" },
    { nil, "mtu", "int", "MTU of the network" },
    { nil, "label", "list", "Set metadata on a network (k=v)" },
    { "d", "driver", "string", "Accepted for docker compatibility (\"bridge\" only)", hidden = true },
    { "o", "opt", "list", "Driver options: com.docker.network.driver.mtu=N", hidden = true },
  },
  run = function(ctx, o, pos)
    if o.driver and o.driver ~= "bridge" then
      errors.usage("only the bridge driver is supported", "network create")
    end
    if #o.subnet > 1 or #o.gateway > 1 then errors.usage("one --subnet and one --gateway at most", "network create") end
    local body = { name = pos[1], subnet = o.subnet[1], gateway = o.gateway[1] }
    if o.internal then body.internal = true end
    local mtu = o.mtu
    for _, x in ipairs(o.opt) do
      local k, val = x:match("^([^=]+)=(.*)$")
      if k == "com.docker.network.driver.mtu" or k == "mtu" then mtu = math.tointeger(tonumber(val))
      else errors.usage("unknown network option " .. x, "network create") end
    end
    if mtu then body.mtu = mtu end
    if #o.label > 0 then
      local labels, msg = opts_.labels(o.label)
      if not labels then errors.usage(msg, "network create") end
      body.labels = labels
    end
    local res = ctx.api():check("POST", "/v1/networks", { body = body })
    out.print(tostring(type(res) == "table" and (v(res.id) or v(res.name)) or pos[1]))
    return 0
  end,
}

local ls = {
  name = "network ls",
  usage = "network ls [OPTIONS]",
  summary = "List networks",
  aliases = { "network ls", "network list" },
  max_args = 0,
  format = true,
  flags = { { "q", "quiet", "bool", "Only display network names" } },
  run = function(ctx, o)
    local list = ctx.api():check("GET", "/v1/networks", { timeout = 60 })
    out.list(o.format, list, {
      { "NETWORK ID", function(x) return tostring(v(x.id) or "") end },
      { "NAME", "name" },
      { "DRIVER", function(x) return v(x.mode) or "bridge" end },
      { "SUBNET", "subnet" },
      { "GATEWAY", "gateway" },
      { "CONTAINERS", function(x) return tostring(v(x.endpoint_count) or 0) end },
    }, { quiet = o.quiet and function(x) return tostring(v(x.name)) end })
    return 0
  end,
}

local rm = objects.rm("network", path)
local inspect = objects.inspect("network", path)

return {
  name = "network",
  usage = "network COMMAND",
  summary = "Manage networks",
  subcommands = { create, ls, rm, inspect },
}
