-- REST v1: images and registry credentials (draft, written against the core's route API
-- described in the registry brief; see plugins/registry/README.md for the Lua module).
--
--   POST   /v1/images/pull             {"reference", "auth"?, "platform"?}
--                                      -> application/x-ndjson progress lines, then the image
--                                         record or an error line (?stream=0: one JSON answer)
--   GET    /v1/images                  -> [record...]
--   GET    /v1/images/{id}             -> record ({id}: id, short id, or URL-encoded reference)
--   DELETE /v1/images/{id}[?force=1]   -> {id, untagged, deleted}; 409 while in use
--   POST   /v1/images/load             archive as the body (or ?path= a file on the host)
--   GET    /v1/registries              -> [{registry, username}] (never passwords)
--   POST   /v1/registries/login        {"registry", "username", "password", "verify"?}
--   DELETE /v1/registries/{registry}   -> logout

local registry = require("registry")

-- registry error codes -> HTTP status
local STATUS = {
	invalid = 400,
	unauthorized = 401,
	not_found = 404,
	conflict = 409,
	unreachable = 502,
	corrupt = 502, -- the registry served bad content
	no_space = 507,
	cancelled = 503,
}

local function fail(msg, code)
	api.error(STATUS[code] or 500, code or "error", msg or "unknown error")
end

-- Credentials from the body ({username,password} or {token}) or Docker's X-Registry-Auth
-- header (base64url JSON), passed through to the plugin; never logged or echoed.
local function auth_of(req, body)
	if type(body) == "table" and body.auth ~= nil then
		if type(body.auth) ~= "table" then
			api.error(400, "invalid", "auth: must be an object {username, password} or {token}")
		end
		return body.auth
	end
	local h = req.headers["x-registry-auth"]
	if h and h ~= "" then
		return h
	end
	return nil
end

local function unsubscribe(sub)
	if type(sub) == "table" and sub.cancel then
		sub:cancel()
	elseif type(sub) == "function" then
		sub()
	end
end

api.route("POST", "/v1/images/pull", function(req)
	local body = req:json() or {}
	if type(body.reference) ~= "string" or body.reference == "" then
		api.error(400, "invalid", "reference: a non-empty string is required")
	end
	if body.platform ~= nil and type(body.platform) ~= "string" then
		api.error(400, "invalid", "platform: must be a string like \"linux/amd64\"")
	end
	local parsed, perr = registry.parse(body.reference)
	if not parsed then
		api.error(400, "invalid", "reference: " .. perr)
	end
	-- plain HTTP is the operator's decision (registry.configure{insecure=...}), not the client's
	local opts = { auth = auth_of(req, body), platform = body.platform }

	if req.query.stream == "0" or req.query.stream == "false" then
		local img, msg, code = registry.pull(body.reference, opts)
		if not img then
			fail(msg, code)
		end
		return 200, img
	end

	local s = req:stream(200, { ["content-type"] = "application/x-ndjson" })
	local want = parsed.reference
	local sub = events.on("image.pull.progress", function(ev)
		if ev.reference == want then
			s:write(json.encode({ status = ev.status, progress = ev }) .. "\n")
		end
	end)
	local img, msg, code = registry.pull(body.reference, opts)
	unsubscribe(sub)
	if img then
		s:write(json.encode({ status = "done", image = img }) .. "\n")
	else
		s:write(json.encode({ error = { code = code or "error", message = msg } }) .. "\n")
	end
	s:close()
end)

api.route("GET", "/v1/images", function(req)
	return 200, registry.list()
end)

api.route("GET", "/v1/images/{id}", function(req)
	local img, msg, code = registry.inspect(req.params.id)
	if not img then
		fail(msg, code)
	end
	return 200, img
end)

api.route("DELETE", "/v1/images/{id}", function(req)
	local force = req.query.force == "1" or req.query.force == "true"
	local res, msg, code = registry.remove(req.params.id, { force = force })
	if not res then
		fail(msg, code)
	end
	return 200, res
end)

api.route("POST", "/v1/images/load", function(req)
	-- The archive must not sit in Lua memory: the core is expected to spool large request
	-- bodies to a file and expose its path (req.body_path). ?path= loads a file that is
	-- already on the host (operator use).
	local path = req.query.path or req.body_path
	if not path then
		api.error(501, "not_implemented",
			"upload spooling is not available; use ?path= with an archive on the host")
	end
	local images, msg, code = registry.load(path, { platform = req.query.platform })
	if not images then
		fail(msg, code)
	end
	return 200, { images = images }
end)

api.route("GET", "/v1/registries", function(req)
	return 200, registry.logins()
end)

api.route("POST", "/v1/registries/login", function(req)
	local body = req:json() or {}
	for _, field in ipairs({ "registry", "username", "password" }) do
		if type(body[field]) ~= "string" or body[field] == "" then
			api.error(400, "invalid", field .. ": a non-empty string is required")
		end
	end
	local ok, msg, code = registry.login(body.registry, body.username, body.password,
		{ verify = body.verify ~= false })
	if not ok then
		fail(msg, code)
	end
	return 200, { status = "Login Succeeded", registry = body.registry }
end)

api.route("DELETE", "/v1/registries/{registry}", function(req)
	local ok, msg, code = registry.logout(req.params.registry)
	if not ok then
		fail(msg, code)
	end
	return 200, { status = "Logged out", registry = req.params.registry }
end)

-- documentation (served in /v1/openapi.json)
local apidoc = require("apidoc")
local T = { "images" }
apidoc.add("POST", "/v1/images/pull", { summary = "Pull an image; answers a progress stream", tags = T,
  body = { type = "object", required = { "reference" }, properties = { reference = { type = "string" },
    auth = { type = "object" } } }, responses = { [200] = "ndjson", [400] = true } })
apidoc.add("GET", "/v1/images", { summary = "List images", tags = T })
apidoc.add("GET", "/v1/images/{id}", { summary = "Inspect an image", tags = T, responses = { [200] = true, [404] = true } })
apidoc.add("DELETE", "/v1/images/{id}", { summary = "Remove an image (409 while in use)", tags = T,
  responses = { [204] = true, [404] = true, [409] = true } })
apidoc.add("POST", "/v1/images/load", { summary = "Import a docker-save or OCI archive", tags = T, body = "binary" })
apidoc.add("GET", "/v1/registries", { summary = "Registries with stored credentials (never the secrets)", tags = T })
apidoc.add("POST", "/v1/registries/login", { summary = "Store registry credentials (0600)", tags = T })
apidoc.add("DELETE", "/v1/registries/{registry}", { summary = "Forget a registry's credentials", tags = T,
  responses = { [204] = true, [404] = true } })
