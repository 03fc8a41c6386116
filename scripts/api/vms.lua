-- REST v1: microVMs (the `vm` module of plugins/vm).
--
--   POST   /v1/vms                       spec (+ "start": true) -> 201 record
--   GET    /v1/vms                       -> [record...]
--   GET    /v1/vms/{id}                  -> record ({id}: id or name)
--   POST   /v1/vms/{id}/start            {"timeout": s}? -> record (agent connected)
--   POST   /v1/vms/{id}/stop             {"timeout": s}? (or ?timeout=) -> record
--   POST   /v1/vms/{id}/kill|pause|resume -> record
--   DELETE /v1/vms/{id}[?force=1]        -> 204
--   GET    /v1/vms/{id}/console[?tail=bytes] -> text/plain
--   POST   /v1/vms/{id}/run              {"cmd": [...], "id"?, "env"?, "user"?, "cwd"?} -> 201 {id, pid}
--   POST   /v1/vms/{id}/exec             {"cmd": [...], "timeout", "stdin", "env", "user", "cwd"}
--                                        -> {exit_code, signal, stdout, stderr}
--   GET    /v1/vms/{id}/stats            -> agent + host statistics
--
-- Errors: {"error": {"code", "message", ...}}: 400 names the field ("field"), 404, 409 carries
-- the VM's current "state".
local sysinfo = require("sysinfo")

local function V()
	local m = rawget(_G, "vm")
	if not m then
		api.error(503, "unavailable", "the vm plugin is not loaded")
	end
	return m
end

-- nil, msg, code[, field] from the vm module -> an HTTP error
local function fail(id, msg, code, field)
	local extra = {}
	if field then
		extra.field = field
	end
	if code == "conflict" and id then
		local rec = V().get(id)
		if rec then
			extra.state = rec.state
		end
	end
	local status = api.status_for(code or "io")
	if code == "io" or code == "closed" then
		status = 500
	end
	api.error(status, code or "io", msg or "failed", extra)
end

local function check(id, v, msg, code, field)
	if v == nil then
		fail(id, msg, code, field)
	end
	return v
end

-- the body as a table; an empty body is an empty object
local function body_of(req)
	if not req.body or req.body == "" then
		return {}
	end
	local b = req:json()
	if type(b) ~= "table" or json.is_array(b) then
		api.error(400, "invalid", "the body must be a JSON object")
	end
	return b
end

local function number_field(b, name, lo, hi)
	local v = b[name]
	if v == nil or v == json.null then
		return nil
	end
	if type(v) ~= "number" or v < lo or v > hi then
		api.error(400, "invalid", string.format("%s: must be a number in %g..%g", name, lo, hi),
			{ field = name })
	end
	return v
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
	local out = {}
	for i = 1, #s, 3 do
		local a, b, c = s:byte(i, i + 2)
		local n = (a << 16) | ((b or 0) << 8) | (c or 0)
		out[#out + 1] = B64:sub((n >> 18) + 1, (n >> 18) + 1)
			.. B64:sub(((n >> 12) & 63) + 1, ((n >> 12) & 63) + 1)
			.. (b and B64:sub(((n >> 6) & 63) + 1, ((n >> 6) & 63) + 1) or "=")
			.. (c and B64:sub((n & 63) + 1, (n & 63) + 1) or "=")
	end
	return table.concat(out)
end

-- JSON strings must be UTF-8: binary output goes out as base64
local function text_or_b64(res, name, s)
	if utf8.len(s) then
		res[name] = s
	else
		res[name] = base64(s)
		res[name .. "_encoding"] = "base64"
	end
end

api.route("POST", "/v1/vms", function(req)
	local spec = body_of(req)
	local start = spec.start
	spec.start = nil
	if start ~= nil and type(start) ~= "boolean" then
		api.error(400, "invalid", "start: must be a boolean", { field = "start" })
	end
	local rec, msg, code, field = V().create(spec)
	check(nil, rec, msg, code, field)
	if start then
		local r2, m2, c2 = V().start(rec.id)
		if not r2 then
			fail(rec.id, "created, but the start failed: " .. tostring(m2), c2)
		end
		rec = r2
	end
	return 201, rec
end)

api.route("GET", "/v1/vms", function()
	local list = V().list()
	return 200, #list > 0 and list or json.array()
end)

api.route("GET", "/v1/vms/{id}", function(req)
	return 200, check(nil, V().get(req.params.id))
end)

api.route("POST", "/v1/vms/{id}/start", function(req)
	local b = body_of(req)
	local t = number_field(b, "timeout", 1, 3600)
	local id = req.params.id
	return 200, check(id, V().start(id, { timeout = t }))
end)

api.route("POST", "/v1/vms/{id}/stop", function(req)
	local b = body_of(req)
	if b.timeout == nil and req.query.timeout then
		b.timeout = tonumber(req.query.timeout)
		if not b.timeout then
			api.error(400, "invalid", "timeout: must be a number of seconds", { field = "timeout" })
		end
	end
	local t = number_field(b, "timeout", 0, 3600)
	local id = req.params.id
	return 200, check(id, V().stop(id, { timeout = t }))
end)

for _, action in ipairs({ "kill", "pause", "resume" }) do
	api.route("POST", "/v1/vms/{id}/" .. action, function(req)
		local id = req.params.id
		return 200, check(id, V()[action](id))
	end)
end

api.route("DELETE", "/v1/vms/{id}", function(req)
	local force = req.query.force == "1" or req.query.force == "true"
	local id = req.params.id
	check(id, V().remove(id, { force = force }))
	return 204
end)

api.route("GET", "/v1/vms/{id}/console", function(req)
	local tail = 65536
	if req.query.tail then
		tail = tonumber(req.query.tail)
		if not tail or tail < 0 then
			api.error(400, "invalid", "tail: must be a number of bytes", { field = "tail" })
		end
	end
	local text = check(nil, V().console(req.params.id, { tail = math.floor(tail) }))
	return 200, text, { ["content-type"] = "text/plain; charset=utf-8" }
end)

-- the container's main process (what the container lifecycle scripts start)
api.route("POST", "/v1/vms/{id}/run", function(req)
	local b = body_of(req)
	if type(b.cmd) ~= "table" or #b.cmd == 0 then
		api.error(400, "invalid", "cmd: a non-empty list of strings is required", { field = "cmd" })
	end
	local proc = { id = b.id or "main", argv = b.cmd, env = b.env, user = b.user, cwd = b.cwd,
		tty = b.tty, stdin = b.stdin }
	local id = req.params.id
	local r, msg, code = V().run(id, proc)
	if not r and code == "invalid" then
		api.error(400, "invalid", msg)
	end
	return 201, check(id, r, msg, code)
end)

api.route("POST", "/v1/vms/{id}/exec", function(req)
	local b = body_of(req)
	local cmd = b.cmd
	if type(cmd) ~= "table" or #cmd == 0 then
		api.error(400, "invalid", "cmd: a non-empty list of strings is required", { field = "cmd" })
	end
	for i, a in ipairs(cmd) do
		if type(a) ~= "string" then
			api.error(400, "invalid", string.format("cmd[%d]: must be a string", i - 1),
				{ field = "cmd" })
		end
	end
	if b.stdin ~= nil and type(b.stdin) ~= "string" then
		api.error(400, "invalid", "stdin: must be a string", { field = "stdin" })
	end
	if b.user ~= nil and type(b.user) ~= "string" then
		api.error(400, "invalid", "user: must be a string", { field = "user" })
	end
	if b.cwd ~= nil and type(b.cwd) ~= "string" then
		api.error(400, "invalid", "cwd: must be a string", { field = "cwd" })
	end
	if b.env ~= nil and type(b.env) ~= "table" then
		api.error(400, "invalid", "env: must be a list of \"K=V\" or an object", { field = "env" })
	end
	local t = number_field(b, "timeout", 0.001, 86400)
	local id = req.params.id
	local r, msg, code = V().command(id, cmd,
		{ timeout = t, stdin = b.stdin, env = b.env, user = b.user, cwd = b.cwd })
	if not r and code == "invalid" then
		api.error(400, "invalid", msg)
	end
	check(id, r, msg, code)
	local res = { exit_code = r.exit_code, signal = r.signal, oom_killed = r.oom_killed,
		truncated = r.truncated }
	text_or_b64(res, "stdout", r.stdout)
	text_or_b64(res, "stderr", r.stderr)
	return 200, res
end)

api.route("GET", "/v1/vms/{id}/stats", function(req)
	local id = req.params.id
	return 200, check(id, V().stats(id))
end)

-- GET /v1/system/info: the acceleration in use (extra.acceleration)
sysinfo.add("acceleration", function()
	local m = rawget(_G, "vm")
	return m and m.acceleration() or { selected = json.null, reason = "vm plugin not loaded" }
end)
