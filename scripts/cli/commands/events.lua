-- events [--since ID] [--filter type=GLOB] [--no-follow] [--format json|TEMPLATE]
-- The daemon's event bus (server-sent events), one line per event.
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local out = require("cli.out")
local v = format.v

local M = {}

-- One event as a line: time, type, the object's id and name, the other fields.
function M.line(ev)
  local d = type(v(ev.data)) == "table" and ev.data or {}
  local parts = { format.rfc3339(tonumber(v(ev.time)) or 0), tostring(v(ev.type) or "?") }
  if v(d.id) then parts[#parts + 1] = format.short_id(tostring(d.id)) end
  local keys = {}
  for k, x in pairs(d) do
    if k ~= "id" and type(x) ~= "table" and x ~= json.null then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local attrs = {}
  for _, k in ipairs(keys) do attrs[#attrs + 1] = k .. "=" .. tostring(d[k]) end
  if #attrs > 0 then parts[#parts + 1] = "(" .. table.concat(attrs, ", ") .. ")" end
  return table.concat(parts, " ")
end

local function show(o, ev)
  if o.format == "json" then
    term.write(json.encode(ev) .. "\n")
  elseif format.is_template(o.format) then
    out.print(format.template(o.format, ev))
  else
    out.print(M.line(ev))
  end
end

M.events = {
  name = "events",
  usage = "events [OPTIONS]",
  summary = "Get real time events from the daemon",
  max_args = 0,
  format = true,
  format_help = "\"json\": one JSON object per line; or a template like '{{.type}} {{.data.name}}'",
  flags = {
    { nil, "since", "int", "Replay the stored events after this event id (0: all of them)" },
    { "f", "filter", "list", "Filter by type: type=container.* (a glob)" },
    { nil, "no-follow", "bool", "Print the stored events and exit" },
  },
  run = function(ctx, o)
    local q = {}
    for _, f in ipairs(o.filter) do
      local k, val = f:match("^([^=]+)=(.*)$")
      if k ~= "type" and k ~= "event" then
        errors.usage("invalid filter " .. string.format("%q", f) .. ": use type=GLOB", "events")
      end
      if q.type then errors.usage("one type filter at most", "events") end
      q.type = val
    end
    if o.since then q.since = o.since end
    local api = ctx.api()
    if o.no_follow then
      q.follow = "false"
      q.since = q.since or 0
      local list = api:check("GET", "/v1/events", { query = q, timeout = 60 })
      for _, ev in ipairs(list) do show(o, ev) end
      return 0
    end
    local resp, err = api:stream("GET", "/v1/events", { query = q, headers = { Accept = "text/event-stream" } })
    if not resp then errors.api(err) end
    local data = {}
    for line in client.lines(resp) do
      if line == "" then
        if #data > 0 then
          local good, ev = pcall(json.decode, table.concat(data, "\n"))
          if good and type(ev) == "table" then show(o, ev) end
        end
        data = {}
      elseif line:sub(1, 5) == "data:" then
        data[#data + 1] = line:sub(6):gsub("^ ", "")
      end
    end
    resp:close()
    return 0
  end,
}

return M
