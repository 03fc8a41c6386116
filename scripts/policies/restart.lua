-- The restart policy: what happens when a container's main process exits by itself
-- (or its VM dies). Replace it by dropping a file named policies/restart.lua into the
-- operator scripts directory (see scripts/README.md for a short example).
--
-- on_exit(c, exit) returns the delay in seconds before the container is started again,
-- or nil (stay stopped) and optionally a reason for giving up.
--   c.config.restart = {name = "no"|"always"|"unless-stopped"|"on-failure", max_retries}
--   exit = {exit_code, signal, oom_killed, error, started_at, finished_at}
-- Backoff doubles from 0.5 s up to 60 s, and resets once a run has lasted 10 s.
local policy = require("policy")

local BASE, MAX, HEALTHY_RUN = 0.5, 60, 10

policy.register("restart", {
  on_exit = function(c, exit)
    local p, rt = c.config.restart or { name = "no" }, c.runtime
    local ran = (exit.finished_at or 0) - (exit.started_at or exit.finished_at or 0)
    if ran >= HEALTHY_RUN then rt.backoff = 0 end
    if p.name == "no" then return nil end
    local failed = exit.error or (exit.exit_code or 0) ~= 0
    if p.name == "on-failure" then
      if not failed then
        rt.failures = 0
        return nil
      end
      rt.failures = (rt.failures or 0) + 1
      if p.max_retries > 0 and rt.failures > p.max_retries then
        return nil, string.format("gave up after %d restarts (on-failure:%d)", p.max_retries, p.max_retries)
      end
    end
    local n = rt.backoff or 0
    rt.backoff = n + 1
    return math.min(BASE * 2 ^ n, MAX)
  end,
})
