-- inspect [--type container|image|network|volume] [-f TEMPLATE] NAME...
-- Without --type, a name is looked up as a container, then an image, a network, a
-- volume (only "not found" moves on to the next kind), like docker.
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local images = require("cli.images")
local out = require("cli.out")

local M = {}

local KINDS = { "container", "image", "network", "volume" }

local function get(api, kind, name)
  local enc = client.urlencode(name)
  if kind == "container" then return api:call("GET", "/v1/containers/" .. enc, { timeout = 60 }) end
  if kind == "network" then return api:call("GET", "/v1/networks/" .. enc, { timeout = 60 }) end
  if kind == "volume" then return api:call("GET", "/v1/volumes/" .. enc, { timeout = 60 }) end
  -- images: by name through the list (references hold "/", which a path segment cannot)
  local rec, err = images.find(api, name)
  if rec then
    local full = api:call("GET", "/v1/images/" .. client.urlencode(rec.id), { timeout = 60 })
    return type(full) == "table" and full or rec
  end
  return nil, err
end

-- Is this error "there is no such object" (or no such kind of object on this daemon)?
local function missing(err)
  return err and err.kind ~= "connect" and (err.status == 404 or err.code == "not_found" or
    err.code == "unsupported" or err.status == 501)
end

M.inspect = {
  name = "inspect",
  usage = "inspect [OPTIONS] NAME|ID [NAME|ID...]",
  summary = "Return low-level information on moonbox objects",
  min_args = 1,
  flags = {
    { "f", "format", "string", "Format the output using a template like '{{.state}}' (default: JSON)" },
    { nil, "type", "string", "Only inspect objects of the given type (container, image, network, volume)" },
    { "s", "size", "bool", "Accepted for docker compatibility", hidden = true },
  },
  run = function(ctx, o, pos)
    local kinds = KINDS
    if o.type then
      local ok = false
      for _, k in ipairs(KINDS) do if k == o.type then ok = true end end
      if not ok then errors.usage("unknown type " .. string.format("%q", o.type) .. ": use container, image, network or volume", "inspect") end
      kinds = { o.type }
    end
    local api = ctx.api()
    local results, failed = {}, 0
    for _, name in ipairs(pos) do
      local found, last_err
      for _, kind in ipairs(kinds) do
        local obj, err = get(api, kind, name)
        if obj then found = obj; break end
        last_err = err
        if not missing(err) then break end
      end
      if found then
        results[#results + 1] = found
      else
        failed = failed + 1
        if missing(last_err) then
          out.err("Error: No such object: " .. name)
        else
          out.err(errors.describe(last_err))
          if last_err.kind == "connect" then return 1 end
        end
      end
    end
    if o.format and o.format ~= "json" then
      for _, r in ipairs(results) do out.print(format.template(o.format, r)) end
    else
      out.json(json.array(results))
    end
    return failed > 0 and 1 or 0
  end,
}

return M
