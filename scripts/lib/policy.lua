-- The policy registry. Policies live in scripts/policies/ (an operator replaces one by
-- dropping a file with the same name into the --scripts directory) and register here:
--
--   policy.register("restart", { on_exit = function(c, exit) ... end })
--   policy.register("health",  { on_unhealthy = function(c, health) ... end })
--
-- The registry survives script reloads (policies re-register when scripts load again),
-- so tasks that are already running always see the current policy.
local M = {}

local R = rawget(_G, "__moonbox_policies")
if not R then
  R = {}
  rawset(_G, "__moonbox_policies", R)
end

function M.register(name, impl)
  assert(type(name) == "string", "policy.register: name must be a string")
  assert(type(impl) == "table", "policy.register: the policy must be a table of functions")
  R[name] = impl
end

function M.get(name)
  return R[name]
end

-- Call policy[name][fn](...) if it exists; a failing policy is logged, not fatal.
function M.call(name, fn, ...)
  local p = R[name]
  if not p or type(p[fn]) ~= "function" then return nil end
  local res = table.pack(pcall(p[fn], ...))
  if not res[1] then
    log.error("policy %s.%s failed: %s", name, fn, tostring(res[2]))
    return nil
  end
  return table.unpack(res, 2, res.n)
end

return M
