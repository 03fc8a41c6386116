-- API documentation, registered next to the routes it describes and turned into the
-- OpenAPI document served at /v1/openapi.json (scripts/api/openapi.lua). The document's
-- paths come from the live route table, so it always matches what the daemon serves;
-- tests/lua checks that every route is documented.
--
--   apidoc.add("GET", "/v1/containers/{id}", {
--     summary = "Inspect a container", tags = {"containers"},
--     query = { {name="all", type="boolean", desc="..."} },
--     body = "CreateSpec" | {schema...} | "binary",
--     responses = { [200] = "Container", [404] = true },
--   })
--   apidoc.schema("Container", { type = "object", properties = {...} })
local M = {}

local R = rawget(_G, "__moonbox_apidoc")
if not R then
  R = { ops = {}, schemas = {} }
  rawset(_G, "__moonbox_apidoc", R)
end

function M.add(method, pattern, doc)
  assert(type(doc) == "table" and doc.summary, "apidoc.add: a summary is required")
  R.ops[method .. " " .. pattern] = doc
end

function M.schema(name, s)
  R.schemas[name] = s
end

function M.get(method, pattern)
  return R.ops[method .. " " .. pattern]
end

function M.all() return R end

return M
