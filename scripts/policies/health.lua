-- The health policy: runs a container's health check through the guest agent and
-- decides what an unhealthy container means. It is a task per running container that has
-- a health check; replace the file to change either part.
--
-- check(c, ctx): ctx.exec(argv, timeout) runs a command in the container,
-- ctx.record(status, entry) stores the health state ("starting", "healthy", "unhealthy")
-- and ctx.restart(reason) restarts the container (its restart counter increases).
local policy = require("policy")

policy.register("health", {
  check = function(c, ctx)
    local hc = c.config.healthcheck
    local started = timer.now()
    local streak = 0
    while true do
      timer.sleep(hc.interval)
      local t0 = timer.time()
      local r, err = ctx.exec(hc.test, hc.timeout)
      if not r and err == "not running" then return end
      local code = r and (r.exit_code or (r.signal and 128 + r.signal)) or -1
      local output = r and ((r.stdout or "") .. (r.stderr or "")) or tostring(err)
      local entry = { start = t0, ["end"] = timer.time(), exit_code = code, output = output:sub(1, 4096) }
      local in_grace = timer.now() - started < hc.start_period
      if code == 0 then
        streak = 0
        ctx.record("healthy", entry)
      elseif not in_grace then
        streak = streak + 1
        if streak >= hc.retries then
          ctx.record("unhealthy", entry)
          return ctx.restart(string.format("unhealthy: %d failed checks in a row", streak))
        end
        ctx.record(ctx.container().runtime.health.status or "starting", entry)
      end
    end
  end,
})
