-- logs [-f] [--tail N] [--since T] [--until T] [-t] CONTAINER
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")

local M = {}

-- Opens a container's log stream (NDJSON from the API). query: follow, tail, since,
-- until. -> resp | nil, err. The stream is subscribed once this returns.
function M.open(api, id, query)
  query = query or {}
  query.format = "json"
  return api:stream("GET", "/v1/containers/" .. client.urlencode(id) .. "/logs", { query = query })
end

-- Copies an open log stream to stdout/stderr by stream. -> true | nil, err
function M.pump(resp, timestamps)
  local ok, e = pcall(function()
    for line in client.lines(resp) do
      if line ~= "" then
        local good, entry = pcall(json.decode, line)
        if good and type(entry) == "table" then
          local text = tostring(format.v(entry.line) or "")
          if timestamps then text = format.rfc3339(tonumber(format.v(entry.time)) or 0) .. " " .. text end
          if text:sub(-1) ~= "\n" then text = text .. "\n" end
          if entry.stream == "stderr" then term.ewrite(text) else term.write(text) end
        else
          term.write(line .. "\n")
        end
      end
    end
  end)
  resp:close()
  if not ok then
    if errors.is(e) then return nil, e end
    error(e, 0)
  end
  return true
end

function M.stream(api, id, query, timestamps)
  local resp, err = M.open(api, id, query)
  if not resp then return nil, err end
  return M.pump(resp, timestamps)
end

M.logs = {
  name = "logs",
  usage = "logs [OPTIONS] CONTAINER",
  summary = "Fetch the logs of a container",
  min_args = 1, max_args = 1,
  flags = {
    { "f", "follow", "bool", "Follow log output" },
    { "n", "tail", "string", "Number of lines to show from the end of the logs (or \"all\")", default = "all" },
    { nil, "since", "string", "Show logs since a time (e.g. 2026-01-02T13:23:37Z, unix seconds) or relative (e.g. 42m)" },
    { nil, "until", "string", "Show logs before a time or relative (e.g. 42m)" },
    { "t", "timestamps", "bool", "Show timestamps" },
  },
  run = function(ctx, o, pos)
    local q = { follow = o.follow and 1 or nil }
    if o.tail ~= "all" then
      local n = math.tointeger(tonumber(o.tail))
      if not n or n < 0 then errors.usage("invalid --tail value " .. string.format("%q", o.tail), "logs") end
      q.tail = n
    end
    for _, k in ipairs({ "since", "until" }) do
      if o[k] then
        local t, msg = opts_.since(o[k])
        if not t then errors.usage(msg, "logs") end
        q[k] = string.format("%.3f", t)
      end
    end
    local ok, err = M.stream(ctx.api(), pos[1], q, o.timestamps)
    if not ok then errors.api(err) end
    return 0
  end,
}

return M
