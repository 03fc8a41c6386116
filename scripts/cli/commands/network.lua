-- network create/ls/rm/inspect
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")
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

local rm = {
  name = "network rm",
  usage = "network rm NETWORK [NETWORK...]",
  summary = "Remove one or more networks",
  aliases = { "network rm", "network remove" },
  min_args = 1,
  run = function(ctx, o, pos)
    local api, failed = ctx.api(), 0
    for _, n in ipairs(pos) do
      local res, err = api:call("DELETE", path(n))
      if res then out.print(n) else
        failed = failed + 1
        out.err(errors.describe(err))
        if err.kind == "connect" then return 1 end
      end
    end
    return failed > 0 and 1 or 0
  end,
}

local inspect = {
  name = "network inspect",
  usage = "network inspect [OPTIONS] NETWORK [NETWORK...]",
  summary = "Display detailed information on one or more networks",
  min_args = 1,
  flags = { { "f", "format", "string", "Format the output using a template (default: JSON)" } },
  run = function(ctx, o, pos)
    local api, failed, res = ctx.api(), 0, {}
    for _, n in ipairs(pos) do
      local x, err = api:call("GET", path(n), { timeout = 60 })
      if x then res[#res + 1] = x else
        failed = failed + 1
        out.err(errors.describe(err))
        if err.kind == "connect" then return 1 end
      end
    end
    if o.format and o.format ~= "json" then
      for _, x in ipairs(res) do out.print(format.template(o.format, x)) end
    else
      out.json(json.array(res))
    end
    return failed > 0 and 1 or 0
  end,
}

return {
  name = "network",
  usage = "network COMMAND",
  summary = "Manage networks",
  subcommands = { create, ls, rm, inspect },
}
