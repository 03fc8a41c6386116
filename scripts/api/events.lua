-- GET /v1/events: the event bus as server-sent events, with replay.
--   ?since=ID     replay stored events after ID first (EventSource's Last-Event-ID too)
--   ?type=GLOB    only matching types (e.g. container.*)
--   ?follow=false return the stored events as a JSON array instead of a stream
--   ?limit=N      with follow=false, at most N events (default 1000)

local HEARTBEAT = 15 -- seconds between keep-alive comments (lets us notice gone clients)

api.route("GET", "/v1/events", function(req)
  local q = req.query
  local since = tonumber(q.since or req.headers["last-event-id"] or "")
  if (q.since or "") ~= "" and not since then
    api.error(400, "invalid", "since: must be an event id (integer)", { field = "since" })
  end
  local pattern = q.type or "*"
  if q.follow == "false" or q.follow == "0" then
    local limit = tonumber(q.limit or "1000")
    if not limit or limit < 1 or limit > 10000 then
      api.error(400, "invalid", "limit: must be 1..10000", { field = "limit" })
    end
    return events.list { since = since or 0, pattern = pattern, limit = math.floor(limit) }
  end
  local sub = events.subscribe { since = since, pattern = pattern }
  local stream = req:sse()
  local ok = stream:comment("moonbox events")
  while ok do
    local ev, err = sub:next(HEARTBEAT)
    if ev then
      ok = stream:send { id = ev.id, event = ev.type, data = ev }
    elseif err == "timeout" then
      ok = stream:comment("keep-alive")
    else
      break
    end
  end
  sub:close()
  stream:close()
end)

require("apidoc").add("GET", "/v1/events", {
  summary = "The event bus: server-sent events with replay, or a JSON array with follow=false",
  tags = { "events" },
  query = {
    { name = "since", type = "integer", desc = "replay stored events after this id (Last-Event-ID works too)" },
    { name = "type", desc = "glob on the event type, e.g. container.*" },
    { name = "follow", type = "boolean", desc = "false: return stored events as JSON and stop" },
    { name = "limit", type = "integer", desc = "with follow=false, at most this many (1..10000)" },
  },
  responses = { [200] = "sse", [400] = true },
})
