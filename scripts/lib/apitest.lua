-- For tests of routes through the real HTTP server (`moonbox test --socket S file_test.lua`):
--   local call = require("apitest").call
--   local status, body = call("POST", "/v1/volumes", '{"name": "x"}')
-- body is the decoded JSON, or the raw text when it is not JSON.
local M = {}

function M.call(method, path, body)
  local r, err = http.request { method = method, url = "http://moonbox" .. path,
                                unix_socket = moonbox.config("socket"), body = body }
  assert(r, err)
  local ok_, decoded = pcall(json.decode, r.body)
  return r.status, ok_ and decoded or r.body, r
end

return M
