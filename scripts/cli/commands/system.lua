-- version, info
local format = require("cli.format")
local out = require("cli.out")
local v = format.v

local M = {}

local function kv(lines, indent, key, val, width)
  if val == nil or val == "" then return end
  lines[#lines + 1] = indent .. key .. ":" .. string.rep(" ", math.max(1, (width or 0) - #key)) ..
    tostring(val)
end

local function client_info(ctx)
  return {
    version = moonbox.version,
    api_version = moonbox.api_version,
    lua_version = moonbox.lua_version,
    plugin_abi = moonbox.abi,
    host = ctx.api().target.display,
  }
end

local function plugin_names(plugins)
  local names = {}
  for _, p in ipairs(v(plugins) or {}) do
    names[#names + 1] = tostring(p.name) .. (v(p.version) and (" " .. p.version) or "")
  end
  return table.concat(names, ", ")
end

local function accel(a)
  a = v(a)
  if type(a) ~= "table" then return nil end
  local sel = v(a.selected)
  if type(sel) == "table" then sel = v(sel.name) or json.encode(sel) end
  if sel then return tostring(sel) end
  return "none" .. (v(a.reason) and (" (" .. a.reason .. ")") or "")
end

M.version = {
  name = "version",
  usage = "version [OPTIONS]",
  summary = "Show the moonbox version information",
  max_args = 0,
  format = true,
  run = function(ctx, opts)
    local c = client_info(ctx)
    local server, err = ctx.api():call("GET", "/v1/system/info", { timeout = 30 })
    if opts.format == "json" or require("cli.format").is_template(opts.format) then
      out.object(opts.format, { client = c, server = server or json.null })
      if not server then out.err(require("cli.errors").describe(err)); return 1 end
      return 0
    end
    local lines = { "Client:" }
    kv(lines, " ", "Version", c.version, 18)
    kv(lines, " ", "API version", c.api_version, 18)
    kv(lines, " ", "Lua version", c.lua_version, 18)
    kv(lines, " ", "Plugin ABI", c.plugin_abi, 18)
    kv(lines, " ", "Host", c.host, 18)
    out.write(table.concat(lines, "\n") .. "\n")
    if not server then
      out.print("")
      out.err(require("cli.errors").describe(err))
      return 1
    end
    lines = { "", "Server:" }
    kv(lines, " ", "Version", v(server.version), 18)
    kv(lines, " ", "API version", v(server.api_version), 18)
    kv(lines, " ", "Lua version", v(server.lua_version), 18)
    kv(lines, " ", "Plugin ABI", v(server.plugin_abi), 18)
    kv(lines, " ", "Plugins", plugin_names(server.plugins), 18)
    kv(lines, " ", "Acceleration", accel(server.acceleration), 18)
    kv(lines, " ", "Hostname", v(server.hostname), 18)
    kv(lines, " ", "Uptime", v(server.uptime) and format.duration(server.uptime), 18)
    out.write(table.concat(lines, "\n") .. "\n")
    return 0
  end,
}

-- Generic rendering of the extra sections contributed by daemon scripts.
local function render(lines, indent, key, val)
  val = v(val)
  if type(val) == "table" then
    lines[#lines + 1] = indent .. key .. ":"
    if json.is_array(val) then
      for _, x in ipairs(val) do
        lines[#lines + 1] = indent .. " " .. (type(x) == "table" and json.encode(x) or tostring(x))
      end
    else
      local keys = {}
      for k in pairs(val) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do render(lines, indent .. " ", k, val[k]) end
    end
  elseif val ~= nil then
    lines[#lines + 1] = indent .. key .. ": " .. tostring(val)
  end
end

M.info = {
  name = "info",
  usage = "info [OPTIONS]",
  summary = "Display system-wide information",
  max_args = 0,
  format = true,
  run = function(ctx, opts)
    local api = ctx.api()
    local info = api:check("GET", "/v1/system/info", { timeout = 30 })
    -- counts from the lists, when those endpoints exist on this daemon
    local containers = api:call("GET", "/v1/containers", { query = { all = 1 }, timeout = 30 })
    local images = api:call("GET", "/v1/images", { timeout = 30 })
    local counts
    if type(containers) == "table" then
      counts = { total = #containers, running = 0, paused = 0, stopped = 0 }
      for _, c in ipairs(containers) do
        local s = v(c.state)
        if s == "running" or s == "restarting" then counts.running = counts.running + 1
        elseif s == "paused" then counts.paused = counts.paused + 1
        else counts.stopped = counts.stopped + 1 end
      end
    end
    if opts.format == "json" or format.is_template(opts.format) then
      info.client = client_info(ctx)
      info.containers = counts or json.null
      info.images = type(images) == "table" and #images or json.null
      out.object(opts.format, info)
      return 0
    end
    local lines = { "Client:" }
    kv(lines, " ", "Version", moonbox.version)
    kv(lines, " ", "Host", api.target.display)
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Server:"
    if counts then
      kv(lines, " ", "Containers", counts.total)
      kv(lines, "  ", "Running", counts.running)
      kv(lines, "  ", "Paused", counts.paused)
      kv(lines, "  ", "Stopped", counts.stopped)
    end
    if type(images) == "table" then kv(lines, " ", "Images", #images) end
    kv(lines, " ", "Server Version", v(info.version))
    kv(lines, " ", "API Version", v(info.api_version))
    kv(lines, " ", "Lua Version", v(info.lua_version))
    kv(lines, " ", "Plugin ABI", v(info.plugin_abi))
    local plugins = v(info.plugins) or {}
    if #plugins > 0 then
      lines[#lines + 1] = " Plugins:"
      for _, p in ipairs(plugins) do
        lines[#lines + 1] = "  " .. tostring(v(p.name)) .. " " .. tostring(v(p.version) or "") ..
          (v(p.summary) and (": " .. p.summary) or "")
      end
    end
    kv(lines, " ", "Acceleration", accel(info.acceleration))
    local acc = v(info.acceleration)
    if type(acc) == "table" and type(v(acc.available)) == "table" and #acc.available > 0 then
      local names = {}
      for _, a in ipairs(acc.available) do
        names[#names + 1] = type(a) == "table" and tostring(v(a.name) or json.encode(a)) or tostring(a)
      end
      kv(lines, "  ", "Available", table.concat(names, ", "))
    end
    kv(lines, " ", "Name", v(info.hostname))
    kv(lines, " ", "Root Dir", v(info.state_dir))
    kv(lines, " ", "Uptime", v(info.uptime) and format.duration(info.uptime))
    local sc = v(info.scripts)
    if type(sc) == "table" then
      kv(lines, " ", "Scripts", string.format("generation %s, %s routes",
        tostring(v(sc.generation)), tostring(v(sc.routes))))
    end
    local extra = v(info.extra)
    if type(extra) == "table" then
      local keys = {}
      for k in pairs(extra) do
        if v(info[k]) == nil then keys[#keys + 1] = k end -- (shown above already)
      end
      table.sort(keys)
      for _, k in ipairs(keys) do render(lines, " ", k, extra[k]) end
    end
    out.write(table.concat(lines, "\n") .. "\n")
    return 0
  end,
}

return M
