-- REST v1: volumes (plugins/volume; see plugins/volume/README.md for the Lua module).
--
--   GET    /v1/volumes             -> [volume...]
--   POST   /v1/volumes             {"name"?, "size"?, "labels"?} -> 201 volume
--                                  (no name: an anonymous volume with a random name;
--                                   size: bytes or "512M", "10G"; default 1G)
--   GET    /v1/volumes/{name}      -> volume
--   DELETE /v1/volumes/{name}      -> 204; 409 while attached to a container
--   POST   /v1/volumes/prune       -> {"removed": [names]} (unattached anonymous volumes)
local apiutil = require("apiutil")

local FIELDS = { name = true, size = true, labels = true }
local fail = apiutil.failer(FIELDS)
local function need_volume() return apiutil.plugin("volume") end

api.route("GET", "/v1/volumes", function()
  local volume = need_volume()
  return 200, volume.list()
end)

api.route("POST", "/v1/volumes", function(req)
  local volume = need_volume()
  local body = apiutil.object_body(req, FIELDS)
  if body.name ~= nil and type(body.name) ~= "string" then
    apiutil.bad("name", "must be a string")
  end
  local v, msg, code = volume.create(body)
  if not v then
    fail(msg, code)
  end
  return 201, v
end)

api.route("POST", "/v1/volumes/prune", function()
  local volume = need_volume()
  return 200, { removed = volume.prune() }
end)

api.route("GET", "/v1/volumes/{name}", function(req)
  local volume = need_volume()
  local v, msg, code = volume.inspect(req.params.name)
  if not v then
    fail(msg, code)
  end
  return 200, v
end)

api.route("DELETE", "/v1/volumes/{name}", function(req)
  local volume = need_volume()
  local ok, msg, code = volume.remove(req.params.name)
  if not ok then
    fail(msg, code)
  end
  return 204
end)

-- documentation (served in /v1/openapi.json)
local apidoc = require("apidoc")
local T = { "volumes" }
apidoc.schema("Volume", { type = "object", properties = {
  name = { type = "string" }, size = { type = "integer" }, path = { type = "string" },
  labels = { type = "object" }, owner = { type = "string" }, anonymous = { type = "boolean" } } })
apidoc.add("GET", "/v1/volumes", { summary = "List volumes", tags = T,
  responses = { [200] = { type = "array", items = { ["$ref"] = "#/components/schemas/Volume" } } } })
apidoc.add("POST", "/v1/volumes", { summary = "Create a named volume (a sparse ext4 image)", tags = T,
  body = { type = "object", properties = { name = { type = "string" }, size = { description = "bytes or \"1g\"" },
    labels = { type = "object" } } }, responses = { [201] = "Volume", [400] = true, [409] = true } })
apidoc.add("POST", "/v1/volumes/prune", { summary = "Remove unused anonymous volumes", tags = T })
apidoc.add("GET", "/v1/volumes/{name}", { summary = "Inspect a volume", tags = T,
  responses = { [200] = "Volume", [404] = true } })
apidoc.add("DELETE", "/v1/volumes/{name}", { summary = "Remove a volume (409 while attached)", tags = T,
  responses = { [204] = true, [404] = true, [409] = true } })
