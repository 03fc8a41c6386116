-- GET /v1/openapi.json: the OpenAPI 3.0 document of this daemon, built from the live
-- route table and the documentation registered with apidoc (see lib/apidoc.lua).
local apidoc = require("apidoc")

local STATUS_TEXT = {
  [200] = "OK", [201] = "Created", [204] = "No content", [400] = "Invalid input (the field is named)",
  [401] = "Missing or wrong bearer token", [404] = "Not found", [405] = "Method not allowed",
  [409] = "Conflict with the current state", [413] = "Body too large", [422] = "Unprocessable",
  [500] = "Internal error", [501] = "A plugin is not loaded", [502] = "Upstream unreachable",
  [503] = "Unavailable", [504] = "Timeout", [507] = "No space left",
}

local function ref(name) return { ["$ref"] = "#/components/schemas/" .. name } end

local function schema_of(v)
  if type(v) == "string" then
    if v == "binary" then return { type = "string", format = "binary" } end
    if v == "ndjson" or v == "text" or v == "sse" or v == "tar" then return { type = "string" } end
    return ref(v)
  end
  return v
end

local CONTENT = { ndjson = "application/x-ndjson", text = "text/plain", sse = "text/event-stream",
                  tar = "application/x-tar", binary = "application/octet-stream" }

local function build()
  local doc = {
    openapi = "3.0.3",
    info = { title = "moonbox API", version = moonbox.api_version,
             description = "Containers in microVMs. Every error is {\"error\":{\"code\",\"message\"}}." },
    servers = { { url = "/" } },
    components = {
      securitySchemes = { bearer = { type = "http", scheme = "bearer",
        description = "Required on TCP (token file in the state dir); not on the unix socket." } },
      schemas = {
        Error = { type = "object", properties = { error = { type = "object", properties = {
          code = { type = "string" }, message = { type = "string" }, field = { type = "string" },
          state = { type = "string" } }, required = { "code", "message" } } } },
      },
    },
    security = { { bearer = json.array() } },
    paths = {},
    tags = json.array(),
  }
  local reg = apidoc.all()
  for name, s in pairs(reg.schemas) do doc.components.schemas[name] = s end
  local tags = {}
  for _, r in ipairs(api.routes()) do
    if r.pattern:sub(1, 4) == "/v1/" or r.pattern:sub(1, 4) == "/v1." then
      local path = r.pattern:gsub("{(%w+)%*}", "{%1}")
      local d = apidoc.get(r.method, r.pattern) or { summary = "(undocumented)", undocumented = true }
      local op = { summary = d.summary, description = d.desc, tags = d.tags or json.array(),
                   parameters = json.array(), responses = {} }
      if d.undocumented then op["x-undocumented"] = true end
      for _, t in ipairs(d.tags or {}) do tags[t] = true end
      for p in path:gmatch("{(%w+)}") do
        op.parameters[#op.parameters + 1] = { name = p, ["in"] = "path", required = true,
          schema = { type = "string" },
          description = r.pattern:find("{" .. p .. "%*}") and "may contain slashes" or nil }
      end
      for _, q in ipairs(d.query or {}) do
        op.parameters[#op.parameters + 1] = { name = q.name, ["in"] = "query", required = q.required == true,
          description = q.desc, schema = { type = q.type or "string" } }
      end
      if d.body then
        local ctype = CONTENT[d.body] or "application/json"
        op.requestBody = { required = true, content = { [ctype] = { schema = schema_of(d.body) } } }
      end
      for code, what in pairs(d.responses or { [200] = true }) do
        local resp = { description = STATUS_TEXT[code] or tostring(code) }
        if code >= 400 then
          resp.content = { ["application/json"] = { schema = ref("Error") } }
        elseif what ~= true and code ~= 204 then
          local ctype = type(what) == "string" and CONTENT[what] or "application/json"
          resp.content = { [ctype] = { schema = schema_of(what) } }
        end
        op.responses[tostring(code)] = resp
      end
      op.responses["400"] = op.responses["400"] or nil
      doc.paths[path] = doc.paths[path] or {}
      doc.paths[path][r.method:lower()] = op
    end
  end
  local names = {}
  for t in pairs(tags) do names[#names + 1] = t end
  table.sort(names)
  for _, t in ipairs(names) do doc.tags[#doc.tags + 1] = { name = t } end
  return doc
end

api.route("GET", "/v1/openapi.json", function()
  return build()
end)

apidoc.add("GET", "/v1/openapi.json", { summary = "This document (OpenAPI 3.0)", tags = { "system" } })
