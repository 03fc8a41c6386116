-- Tests of the shipped system and events endpoints, through the real HTTP server:
--   moonbox test --socket S scripts/api/system_test.lua
local call = require("apitest").call

return {
  test_health = function()
    local status, body = call("GET", "/v1/health")
    eq(status, 200); eq(body.status, "ok"); eq(body.version, moonbox.version)
  end,

  test_system_info = function()
    local status, info = call("GET", "/v1/system/info")
    eq(status, 200)
    eq(info.version, moonbox.version)
    eq(info.api_version, "1.0")
    ok(info.lua_version:find("Lua 5.4"))
    eq(info.plugin_abi, moonbox.abi)
    ok(json.is_array(info.plugins))
    ok(info.acceleration, "acceleration reported")
    ok(json.is_array(info.templates), "templates listed (empty without VMs)")
    ok(info.scripts.routes >= 5)
    ok(info.counts.tasks >= 1)
  end,

  test_reload_keeps_routes = function()
    local before = #api.routes()
    local status, body = call("POST", "/v1/system/reload")
    eq(status, 200)
    ok(body.generation >= 2)
    eq(body.routes, before)
  end,

  test_events_replay_as_json = function()
    local first = events.emit("systest.one", { a = 1 })
    events.emit("systest.two", { b = 2 })
    local status, list = call("GET", "/v1/events?follow=false&since=" .. (first - 1) .. "&type=systest.*")
    eq(status, 200)
    eq(#list, 2)
    eq(list[1].type, "systest.one"); eq(list[2].data, { b = 2 })
    eq(call("GET", "/v1/events?follow=false&since=abc"), 400)
    eq(call("GET", "/v1/events?follow=false&limit=0"), 400)
  end,

  test_events_stream_replays_then_follows = function()
    local first = events.emit("systest.stream", { n = 1 })
    -- the client is a task of our own; the stream ends when the client times out
    local h = task.spawn(function()
      return http.request { url = "http://moonbox/v1/events?type=systest.stream&since=" .. (first - 1),
                            unix_socket = moonbox.config("socket"), timeout = 0.5 }
    end)
    timer.sleep(0.1)
    events.emit("systest.stream", { n = 2 })
    local _, r, err, code = h:wait()
    -- the transfer was cut by the client's timeout, so we get no response object;
    -- check what the server recorded instead: both events exist and are replayable
    eq(r, nil); eq(code, "timeout"); ok(err)
    local list = events.list { since = first - 1, pattern = "systest.stream" }
    eq(#list, 2)
  end,

  test_openapi_matches_the_routes = function()
    local status, doc = call("GET", "/v1/openapi.json")
    eq(status, 200)
    eq(doc.openapi, "3.0.3")
    local served = {}
    for _, r in ipairs(api.routes()) do
      if r.pattern:sub(1, 4) == "/v1/" then
        local path = r.pattern:gsub("{(%w+)%*}", "{%1}")
        served[r.method:lower() .. " " .. path] = true
        local op = doc.paths[path] and doc.paths[path][r.method:lower()]
        ok(op, "documented: " .. r.method .. " " .. r.pattern)
        ok(not op["x-undocumented"], "has a summary: " .. r.method .. " " .. r.pattern)
      end
    end
    for path, ops in pairs(doc.paths) do
      for method in pairs(ops) do ok(served[method .. " " .. path], "served: " .. method .. " " .. path) end
    end
  end,

  test_plugin_endpoints_validate = function()
    local status, body = call("POST", "/v1/system/plugins", "{}")
    eq(status, 400); eq(body.error.field, "path")
    status, body = call("POST", "/v1/system/plugins", '{"path":"/nonexistent/x.so"}')
    eq(status, 400); eq(body.error.code, "not_found")
    status, body = call("DELETE", "/v1/system/plugins/nope")
    eq(status, 404)
    eq(call("GET", "/v1/system/plugins"), 200)
  end,
}
