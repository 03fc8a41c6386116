-- Tests of the volume, network and image routes' input handling, through the real HTTP
-- server and the real plugins (nothing here creates a bridge: the network cases are
-- refused before any is made):
--   moonbox test --socket S scripts/api/resources_test.lua
local call = require("apitest").call

-- a 400 whose error names `field`
local function refused(method, path, body, field)
  local status, b = call(method, path, body)
  eq(status, 400, method .. " " .. path .. " " .. tostring(body))
  eq(b.error.code, "invalid")
  eq(b.error.field, field, b.error.message)
  return b.error.message
end

return {
  test_volume_bodies_are_checked = function()
    refused("POST", "/v1/volumes", '{"bogus": 1}', "bogus")
    refused("POST", "/v1/volumes", '{"name": 5}', "name")
    refused("POST", "/v1/volumes", '{"name": "v1", "size": "lots"}', "size")
    local status, b = call("POST", "/v1/volumes", "[1]")
    eq(status, 400); ok(b.error.message:find("JSON object"), b.error.message)
    eq((call("POST", "/v1/volumes", "{nope")), 400)
    eq(#(select(2, call("GET", "/v1/volumes"))), 0, "nothing was created")
  end,

  test_volume_life = function()
    local status, v = call("POST", "/v1/volumes", '{"name": "rt1", "size": "64m", "labels": {"a": "b"}}')
    eq(status, 201); eq(v.name, "rt1"); eq(v.size, 64 << 20); eq(v.labels.a, "b")
    eq((call("POST", "/v1/volumes", '{"name": "rt1"}')), 409)
    status, v = call("GET", "/v1/volumes/rt1")
    eq(status, 200); eq(v.name, "rt1")
    eq((call("DELETE", "/v1/volumes/rt1")), 204)
    eq((call("GET", "/v1/volumes/rt1")), 404)
    eq((call("DELETE", "/v1/volumes/rt1")), 404)
  end,

  test_network_bodies_are_checked = function()
    refused("POST", "/v1/networks", '{"name": "n1", "nope": true}', "nope")
    refused("POST", "/v1/networks", '{"name": "n1", "subnet": "10.1.2.3"}', "subnet")
    refused("POST", "/v1/networks", '{"name": "n1", "subnet": "10.99.0.0/24", "gateway": "10.98.0.1"}', "gateway")
    eq((call("GET", "/v1/networks/n1")), 404, "nothing was created")
    eq((call("DELETE", "/v1/networks/nosuch")), 404)
  end,

  test_image_bodies_are_checked = function()
    refused("POST", "/v1/images/pull", "{}", "reference")
    refused("POST", "/v1/images/pull", '{"reference": "test/NotLower"}', "reference")
    local status = call("POST", "/v1/images/pull", '"a string"')
    eq(status, 400)
  end,
}
