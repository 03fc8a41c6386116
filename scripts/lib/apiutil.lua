-- What the REST routes under scripts/api/ share: a plugin looked up per call (so routes
-- load without it and work once it is loaded at runtime), a JSON object body with only
-- known fields, and a plugin's `nil, "field: message", code` turned into an HTTP error
-- that names the field.
local M = {}

-- The plugin's Lua module `name`, or a 503 "unavailable" error.
function M.plugin(name)
  local m = rawget(_G, name) or package.loaded[name]
  if type(m) ~= "table" then
    api.error(503, "unavailable", "the " .. name .. " plugin is not loaded")
  end
  return m
end

-- req's JSON body, which must be an object; with `fields` (a set of names), a key that is
-- not one of them is a 400 naming it.
function M.object_body(req, fields)
  local body = req:json()
  if type(body) ~= "table" or json.is_array(body) then
    api.error(400, "invalid", "the body must be a JSON object")
  end
  if fields then
    for k in pairs(body) do
      if not fields[k] then
        api.error(400, "invalid", "unknown field " .. tostring(k), { field = tostring(k) })
      end
    end
  end
  return body
end

-- A 400 about one field.
function M.bad(field, msg)
  api.error(400, "invalid", field .. ": " .. msg, { field = field })
end

-- -> fail(msg, code): raises the HTTP error that fits code (default "invalid"); a message
-- "name: ..." whose name is one of `fields` also names the field in the error.
function M.failer(fields)
  return function(msg, code)
    local field = type(msg) == "string" and msg:match("^([%w_]+):") or nil
    api.error(api.status_for(code or "invalid"), code or "invalid", msg or "unknown error",
              field and fields and fields[field] and { field = field } or nil)
  end
end

return M
