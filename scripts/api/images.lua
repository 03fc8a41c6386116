-- REST v1: images and registry credentials, on top of the registry plugin's Lua module
-- (plugins/registry/README.md). Errors are {"error":{"code","message"[,"field"]}} with
-- the status api.fail() gives the code: invalid 400, unauthorized 401, not_found 404,
-- conflict 409, corrupt 422, unreachable 502, cancelled 503, no_space 507.
--
--   POST   /v1/images/pull           {"reference", "auth"?, "platform"?} (or X-Registry-Auth)
--            -> 200 application/x-ndjson: one progress object per line
--               {"status","reference","id","bytes_done","bytes_total","layers":[...]},
--               then {"status":"done","image":{record}}
--                 or {"status":"error","error":{"code","message","status"}}.
--               The stream starts once the manifest is resolved: a failure before that
--               (bad reference, unknown image, wrong password, registry down) is a plain
--               error response with its own status. ?stream=0: one JSON answer instead.
--   GET    /v1/images                -> [record, ...] newest first
--   GET    /v1/images/{ref*}         -> record (id, short id, reference, name@digest)
--   DELETE /v1/images/{ref*}[?force=1] -> {id, untagged, deleted}; 409 while in use
--   POST   /v1/images/load           body: a docker-save or OCI archive (.tar, .tar.gz)
--                                    -> {"images": [record, ...]}
--   POST   /v1/images/gc             -> {blobs_removed, disks_removed, tmp_removed, bytes_freed}
--   GET    /v1/registries            -> [{registry, username}] (never passwords or tokens)
--   POST   /v1/registries/login      {"registry", "username", "password", "verify"?}
--   DELETE /v1/registries/{registry*} -> logout
--
-- Credentials given to these endpoints go straight to the plugin; they are never logged,
-- emitted as events or echoed back.

-- The module is looked up per call, so these routes load (and answer 503) without the
-- plugin, and work once it is loaded at runtime.
local apiutil = require("apiutil")
local function reg() return apiutil.plugin("registry") end

local function fail(msg, code)
  api.fail(msg or "unknown error", code or "internal")
end

local bad = apiutil.bad

local function flag(v)
  return v == "1" or v == "true" or v == "yes"
end

-- Credentials from the body ({username, password} or {token}) or Docker's X-Registry-Auth
-- header (base64url JSON), handed to the plugin as they are.
local function auth_of(req, body)
  local a = body.auth
  if a ~= nil then
    if type(a) ~= "table" or json.is_array(a) then
      bad("auth", "must be an object {username, password} or {token}")
    end
    for _, k in ipairs({ "username", "password", "token", "identitytoken" }) do
      if a[k] ~= nil and type(a[k]) ~= "string" then
        bad("auth." .. k, "must be a string")
      end
    end
    if not a.token and not a.identitytoken and not (a.username and a.password) then
      bad("auth", "needs username and password, or token")
    end
    return { username = a.username, password = a.password, token = a.token,
      identitytoken = a.identitytoken }
  end
  local h = req.headers["x-registry-auth"]
  if h and h ~= "" then
    return h
  end
  return nil
end

local function error_line(msg, code)
  code = code or "internal"
  return { status = "error",
    error = { code = code, message = msg or "unknown error", status = api.status_for(code) } }
end

api.route("POST", "/v1/images/pull", function(req)
  local registry = reg()
  local body = apiutil.object_body(req)
  if type(body.reference) ~= "string" or body.reference == "" then
    bad("reference", "a non-empty string is required")
  end
  local parsed, perr = registry.parse(body.reference)
  if not parsed then
    bad("reference", perr)
  end
  if body.platform ~= nil and (type(body.platform) ~= "string"
    or not body.platform:match("^[%w_]+/[%w_]+$") and not body.platform:match("^[%w_]+/[%w_]+/[%w_]+$")) then
    bad("platform", "must look like \"linux/amd64\" or \"linux/arm64/v8\"")
  end
  local opts = { auth = auth_of(req, body), platform = body.platform }

  if req.query.stream == "0" or req.query.stream == "false" then
    local img, msg, code = registry.pull(body.reference, opts)
    if not img then
      fail(msg, code)
    end
    return 200, img
  end

  -- The pull runs in its own task; this one relays the progress events of its reference
  -- and learns that the pull is over when the subscription is closed under it.
  local sub = events.subscribe({ pattern = "image.pull.progress" })
  local res
  task.spawn(function()
    res = table.pack(pcall(registry.pull, body.reference, opts))
    sub:close()
  end)
  local s
  local function open()
    s = req:stream(200, { ["content-type"] = "application/x-ndjson" })
  end
  while true do
    local ev = sub:next()
    if not ev then
      break
    end
    local d = ev.data
    if type(d) == "table" and d.reference == parsed.reference then
      if not s and d.status ~= "resolving" then
        open()
      end
      if s and not s:write(json.encode(d) .. "\n") then
        return -- the client is gone; the pull goes on and is recorded
      end
    end
  end
  local ok, img, msg, code = res[1], res[2], res[3], res[4]
  if not ok then
    error(img, 0) -- a bug in the call, not an operational failure
  end
  if not s then
    if not img then
      fail(msg, code) -- nothing streamed yet: a plain error with its own status
    end
    open()
  end
  if img then
    s:write(json.encode({ status = "done", image = img }) .. "\n")
  else
    s:write(json.encode(error_line(msg, code)) .. "\n")
  end
  s:close()
end)

api.route("GET", "/v1/images", function(req)
  return 200, json.array(reg().list())
end)

api.route("GET", "/v1/images/{ref*}", function(req)
  local img, msg, code = reg().inspect(req.params.ref)
  if not img then
    fail(msg, code)
  end
  return 200, img
end)

api.route("DELETE", "/v1/images/{ref*}", function(req)
  local res, msg, code = reg().remove(req.params.ref, { force = flag(req.query.force) })
  if not res then
    fail(msg, code)
  end
  return 200, res
end)

-- The archive is streamed to a temp file by the core (removed after the request).
api.route("POST", "/v1/images/load", function(req)
  if not req.body_path or (req.body_size or 0) == 0 then
    api.error(400, "invalid", "the request body must be an image archive (docker save or OCI, .tar or .tar.gz)")
  end
  local platform = req.query.platform
  if platform ~= nil and not platform:match("^[%w_]+/[%w_]+") then
    bad("platform", "must look like \"linux/amd64\"")
  end
  local images, msg, code = reg().load(req.body_path, { platform = platform })
  if not images then
    fail(msg, code)
  end
  return 200, { images = json.array(images) }
end, { body = "file" })

api.route("POST", "/v1/images/gc", function(req)
  local st, msg, code = reg().gc()
  if not st then
    fail(msg, code)
  end
  return 200, st
end)

api.route("GET", "/v1/registries", function(req)
  return 200, json.array(reg().logins())
end)

api.route("POST", "/v1/registries/login", function(req)
  local registry = reg()
  local body = apiutil.object_body(req)
  for _, field in ipairs({ "registry", "username", "password" }) do
    if type(body[field]) ~= "string" or body[field] == "" then
      bad(field, "a non-empty string is required")
    end
  end
  if body.verify ~= nil and type(body.verify) ~= "boolean" then
    bad("verify", "must be true or false")
  end
  local ok, msg, code = registry.login(body.registry, body.username, body.password,
    { verify = body.verify ~= false })
  if not ok then
    fail(msg, code)
  end
  return 200, { status = "Login Succeeded", registry = body.registry, username = body.username }
end)

api.route("DELETE", "/v1/registries/{registry*}", function(req)
  local ok, msg, code = reg().logout(req.params.registry)
  if not ok then
    fail(msg, code)
  end
  return 200, { status = "Logged out", registry = req.params.registry }
end)

-- documentation (served in /v1/openapi.json)
local apidoc = require("apidoc")
local T = { "images" }
apidoc.schema("Image", { type = "object", description = "An image record (plugins/registry/README.md)",
  properties = { id = { type = "string" }, short_id = { type = "string" },
    references = { type = "array", items = { type = "string" } },
    repo_digests = { type = "array", items = { type = "string" } }, manifest_digest = { type = "string" },
    config = { type = "object" }, layers = { type = "array", items = { type = "object" } },
    size = { type = "integer" }, disk = { type = "string" }, pulled_at = { type = "integer" },
    in_use = { type = "integer" }, holders = { type = "array", items = { type = "string" } } } })
apidoc.add("POST", "/v1/images/pull", { summary = "Pull an image; answers a progress stream (ndjson)",
  tags = T, query = { { name = "stream", type = "boolean", desc = "0: one JSON answer instead of the stream" } },
  body = { type = "object", required = { "reference" }, properties = { reference = { type = "string" },
    auth = { type = "object", description = "{username, password} or {token}; or the X-Registry-Auth header" },
    platform = { type = "string" } } },
  responses = { [200] = "ndjson", [400] = true, [401] = true, [404] = true, [502] = true } })
apidoc.add("GET", "/v1/images", { summary = "List images, newest first", tags = T,
  responses = { [200] = { type = "array", items = { ["$ref"] = "#/components/schemas/Image" } } } })
apidoc.add("GET", "/v1/images/{ref*}", { summary = "Inspect an image (id, short id, reference or name@digest)",
  tags = T, responses = { [200] = "Image", [404] = true } })
apidoc.add("DELETE", "/v1/images/{ref*}", { summary = "Remove an image or one of its names (409 while in use)",
  tags = T, query = { { name = "force", type = "boolean", desc = "untag an id with several names" } },
  responses = { [200] = { type = "object" }, [404] = true, [409] = true } })
apidoc.add("POST", "/v1/images/load", { summary = "Import a docker-save or OCI archive (.tar, .tar.gz)",
  tags = T, body = "binary", query = { { name = "platform", desc = "e.g. linux/amd64" } },
  responses = { [200] = { type = "object" }, [400] = true, [422] = true } })
apidoc.add("POST", "/v1/images/gc", { summary = "Collect unreferenced blobs, disks and temp files", tags = T,
  responses = { [200] = { type = "object" }, [409] = true } })
apidoc.add("GET", "/v1/registries", { summary = "Registries with stored credentials (never the secrets)", tags = T })
apidoc.add("POST", "/v1/registries/login", { summary = "Check and store registry credentials (0600)", tags = T,
  body = { type = "object", required = { "registry", "username", "password" }, properties = {
    registry = { type = "string" }, username = { type = "string" }, password = { type = "string" },
    verify = { type = "boolean" } } },
  responses = { [200] = { type = "object" }, [400] = true, [401] = true, [502] = true } })
apidoc.add("DELETE", "/v1/registries/{registry*}", { summary = "Forget a registry's credentials", tags = T,
  responses = { [200] = { type = "object" }, [404] = true } })
