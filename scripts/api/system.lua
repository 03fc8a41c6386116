-- System endpoints: health, information about the daemon, reload.
local sysinfo = require("sysinfo")

api.route("GET", "/v1/health", function()
  return { status = "ok", version = moonbox.version }
end)

local function acceleration()
  if vm and vm.acceleration then
    local ok, acc = pcall(vm.acceleration)
    if ok then return acc end
  end
  return { available = json.array(), selected = json.null, reason = "vm plugin not loaded" }
end

-- the vm plugin's saved guests (plugins/vm/README.md "Templates"), empty without it
local function templates()
  if vm and vm.templates then
    local ok, t = pcall(vm.templates)
    if ok then return t end
  end
  return json.array()
end

api.route("GET", "/v1/system/info", function()
  local stats = moonbox.stats()
  local routes = api.routes()
  return {
    version = moonbox.version,
    api_version = moonbox.api_version,
    lua_version = moonbox.lua_version,
    plugin_abi = moonbox.abi,
    hostname = moonbox.hostname(),
    started = moonbox.started,
    uptime = stats.uptime,
    state_dir = moonbox.config("state_dir"),
    plugins = plugins.list(),
    acceleration = acceleration(),
    templates = templates(),
    scripts = { generation = stats.generation, routes = #routes },
    counts = {
      tasks = stats.tasks,
      http_inflight = stats.http_inflight,
      events = events.last_id(),
    },
    runtime = { lua_kb = stats.lua_kb, timers = stats.timers, watches = stats.watches,
                children = stats.children, workers_pending = stats.workers_pending },
    extra = sysinfo.collect(),
  }
end)

api.route("POST", "/v1/system/reload", function()
  local generation, err = moonbox.reload()
  if not generation then
    api.error(422, "script_error", "scripts not reloaded, the previous ones stay active: " .. err)
  end
  events.emit("daemon.reload", { generation = generation })
  return { generation = generation, routes = #api.routes() }
end)

api.route("GET", "/v1/system/routes", function()
  return api.routes()
end)

-- Plugins: list, load at runtime, unload (refused while the plugin owns resources).
api.route("GET", "/v1/system/plugins", function()
  return plugins.list()
end)

api.route("POST", "/v1/system/plugins", function(req)
  local body = req:json()
  if type(body.path) ~= "string" or body.path == "" then
    api.error(400, "invalid", "path: a plugin file path is required", { field = "path" })
  end
  local name, err, code = plugins.load(body.path)
  if not name then
    local status = (code == "not_found" or code == "invalid" or code == "unsupported") and 400
      or api.status_for(code)
    api.error(status == 501 and 400 or status, code, err)
  end
  for _, p in ipairs(plugins.list()) do
    if p.name == name then return 201, p end
  end
  return 201, { name = name }
end)

api.route("DELETE", "/v1/system/plugins/{name}", function(req)
  local good, err, code = plugins.unload(req.params.name)
  if not good then api.fail(err, code) end
  return 204
end)

-- documentation (served in /v1/openapi.json)
local apidoc = require("apidoc")
apidoc.schema("Plugin", { type = "object", properties = {
  name = { type = "string" }, version = { type = "string" }, summary = { type = "string" },
  abi = { type = "string" }, path = { type = "string" }, resources = { type = "integer" },
  info = { type = "object" } } })
apidoc.schema("SystemInfo", { type = "object", properties = {
  version = { type = "string" }, api_version = { type = "string" }, lua_version = { type = "string" },
  plugin_abi = { type = "string" }, hostname = { type = "string" }, uptime = { type = "number" },
  plugins = { type = "array", items = { ["$ref"] = "#/components/schemas/Plugin" } },
  acceleration = { type = "object", properties = { selected = { type = "string" },
    available = { type = "array", items = { type = "string" } }, reason = { type = "string" } } },
  templates = { type = "array", description = "saved guests VM starts restore (one per machine shape)",
    items = { type = "object", properties = { key = { type = "string" }, memory_mib = { type = "integer" },
      vcpus = { type = "integer" }, state = { type = "string", enum = { "building", "ready", "broken" } },
      created = { type = "number" }, error = { type = "string" }, dir = { type = "string" } } } },
  counts = { type = "object" } } })
apidoc.add("GET", "/v1/health", { summary = "Liveness", tags = { "system" } })
apidoc.add("GET", "/v1/system/info", { summary = "Versions, plugins, acceleration, counts", tags = { "system" },
  responses = { [200] = "SystemInfo" } })
apidoc.add("POST", "/v1/system/reload", { summary = "Reload the scripts (the old ones stay if one fails)",
  tags = { "system" }, responses = { [200] = true, [422] = true } })
apidoc.add("GET", "/v1/system/routes", { summary = "The routes the scripts declare", tags = { "system" } })
apidoc.add("GET", "/v1/system/plugins", { summary = "Loaded plugins", tags = { "system" },
  responses = { [200] = { type = "array", items = { ["$ref"] = "#/components/schemas/Plugin" } } } })
apidoc.add("POST", "/v1/system/plugins", { summary = "Load a plugin into the running daemon", tags = { "system" },
  body = { type = "object", properties = { path = { type = "string" } }, required = { "path" } },
  responses = { [201] = "Plugin", [400] = true, [409] = true } })
apidoc.add("DELETE", "/v1/system/plugins/{name}", { summary = "Unload a plugin (refused while it owns resources)",
  tags = { "system" }, responses = { [204] = true, [404] = true, [409] = true } })
