-- Contributions to GET /v1/system/info: other scripts add a named function that
-- returns a table (for example counts of containers). Errors in one contributor are
-- reported in its slot and do not break the endpoint.
local M = { contributors = {} }

function M.add(name, fn)
  assert(type(name) == "string" and type(fn) == "function", "sysinfo.add(name, fn)")
  M.contributors[name] = fn
end

function M.collect()
  local out = {}
  for name, fn in pairs(M.contributors) do
    local ok, v = pcall(fn)
    out[name] = ok and v or { error = tostring(v) }
  end
  return out
end

return M
