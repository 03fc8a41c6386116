-- REST v1: networks (plugins/net; see plugins/net/README.md for the Lua module).
--
--   GET    /v1/networks            -> [network...]
--   POST   /v1/networks            {"name", "subnet"?, "gateway"?, "internal"?, "mtu"?, "labels"?}
--                                  -> 201 network; 400 naming the field, 409 name taken or
--                                     subnet overlapping another network or a host route
--   GET    /v1/networks/{name}     -> network with its endpoints
--   DELETE /v1/networks/{name}     -> 204; 409 while endpoints are attached
--   GET    /v1/networks/{name}/ports -> published ports of the endpoints on that network
local apiutil = require("apiutil")

local FIELDS = { name = true, subnet = true, gateway = true, internal = true, mtu = true, labels = true }
-- "field: message" from the plugin becomes {"error": {..., "field": "field"}}
local fail = apiutil.failer(FIELDS)
local function need_net() return apiutil.plugin("net") end

api.route("GET", "/v1/networks", function()
  local net = need_net()
  return 200, net.networks()
end)

api.route("POST", "/v1/networks", function(req)
  local net = need_net()
  local body = apiutil.object_body(req, FIELDS)
  if body.internal == json.null then body.internal = nil end
  local n, msg, code = net.create_network(body)
  if not n then
    fail(msg, code)
  end
  return 201, n
end)

api.route("GET", "/v1/networks/{name}", function(req)
  local net = need_net()
  local n, msg, code = net.inspect(req.params.name)
  if not n then
    fail(msg, code)
  end
  return 200, n
end)

api.route("DELETE", "/v1/networks/{name}", function(req)
  local net = need_net()
  local ok, msg, code = net.remove_network(req.params.name)
  if not ok then
    fail(msg, code)
  end
  return 204
end)

api.route("GET", "/v1/networks/{name}/ports", function(req)
  local net = need_net()
  local n, msg, code = net.inspect(req.params.name)
  if not n then
    fail(msg, code)
  end
  local out = {}
  for _, e in ipairs(n.endpoints) do
    for _, p in ipairs(net.published(e.owner)) do
      out[#out + 1] = p
    end
  end
  return 200, json.array(out)
end)

-- documentation (served in /v1/openapi.json)
local apidoc = require("apidoc")
local T = { "networks" }
apidoc.schema("Network", { type = "object", properties = {
  name = { type = "string" }, bridge = { type = "string" }, subnet = { type = "string" },
  gateway = { type = "string" }, internal = { type = "boolean" }, default = { type = "boolean" },
  mtu = { type = "integer" }, labels = { type = "object" }, endpoint_count = { type = "integer" } } })
apidoc.add("GET", "/v1/networks", { summary = "List networks", tags = T,
  responses = { [200] = { type = "array", items = { ["$ref"] = "#/components/schemas/Network" } } } })
apidoc.add("POST", "/v1/networks", { summary = "Create a network (a bridge with its own subnet)", tags = T,
  body = { type = "object", required = { "name" }, properties = { name = { type = "string" },
    subnet = { type = "string" }, gateway = { type = "string" }, internal = { type = "boolean" },
    mtu = { type = "integer" }, labels = { type = "object" } } },
  responses = { [201] = "Network", [400] = true, [409] = true } })
apidoc.add("GET", "/v1/networks/{name}", { summary = "Inspect a network and its endpoints", tags = T,
  responses = { [200] = "Network", [404] = true } })
apidoc.add("DELETE", "/v1/networks/{name}", { summary = "Remove a network (409 while in use)", tags = T,
  responses = { [204] = true, [404] = true, [409] = true } })
apidoc.add("GET", "/v1/networks/{name}/ports", { summary = "Ports published on a network, with proxy counters",
  tags = T, responses = { [200] = true, [404] = true } })
