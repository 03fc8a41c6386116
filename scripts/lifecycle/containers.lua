-- Container lifecycle glue: on daemon start, re-adopt running containers (live restore)
-- and let restart policies act on what happened while the daemon was down.
local runtime = require("runtime")

events.on("daemon.start", function()
  runtime.reconcile()
end)
