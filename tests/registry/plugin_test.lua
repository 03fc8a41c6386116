-- The registry plugin's Lua module, run by mbr-fakehost (a stand-in for the core) against
-- the fixture registries. Prints "ok - ..." / "FAIL - ..." lines and a summary.
local REG, BASIC, TOKEN = os.getenv("REG_plain"), os.getenv("REG_basic"), os.getenv("REG_token")
local STATE, FIX = os.getenv("MBR_STATE"), os.getenv("FIXTURE_DIR")
local passed, failed = 0, 0

local function check(name, cond, ...)
	if cond then
		passed = passed + 1
		print("ok   - plugin: " .. name)
	else
		failed = failed + 1
		print("FAIL - plugin: " .. name, ...)
	end
end

local function sh(cmd)
	local f = io.popen(cmd)
	local out = f:read("a")
	f:close()
	return (out:gsub("%s+$", ""))
end

-- parse
local p = registry.parse("nginx")
check("parse normalises nginx", p.reference == "docker.io/library/nginx:latest" and p.familiar == "nginx:latest")
local r, msg, code = registry.parse("Upper")
check("parse rejects bad references", r == nil and code == "invalid", msg)

-- pull, with progress events
local img, err
img, msg, code = registry.pull(REG .. "/test/busybox")
check("pull busybox", img and img.id and img.disk, msg)
check("record fields", img and img.short_id == img.id:sub(8, 19) and #img.layers == 1 and img.size > 0
	and img.config.cmd[1] == "/bin/sh" and img.config.stop_signal == "SIGTERM"
	and img.references[1] == REG .. "/test/busybox:latest" and img.repo_digests[1]:find("@sha256:", 1, true))
check("disk file exists", img and sh("test -s '" .. img.disk .. "' && echo yes") == "yes")
local prog = events("image.pull.progress")
check("progress events carry per-layer bytes", #prog > 0 and prog[#prog].layers ~= nil and prog[#prog].bytes_total > 0)
check("pull.done event", #events("image.pull.done") == 1)

-- concurrent pulls of the same reference share one job
local results = {}
for i = 1, 3 do
	spawn(function() results[i] = registry.pull(REG .. "/test/multi") end)
end
local multi = registry.pull(REG .. "/test/multi")
check("four concurrent pulls of one reference", multi and results[1] and results[2] and results[3]
	and results[1].id == multi.id)
check("one pull job for them", #events("image.pull.done") == 2)

-- inspect by reference, id, short id, repo digest; list
check("inspect by familiar reference", registry.inspect(REG .. "/test/busybox").id == img.id)
check("inspect by id", registry.inspect(img.id).id == img.id)
check("inspect by short id", registry.inspect(img.short_id).id == img.id)
check("inspect by repo digest", registry.inspect(img.repo_digests[1]).id == img.id)
r, msg, code = registry.inspect("nothing/here:1")
check("inspect unknown is not_found", r == nil and code == "not_found", msg)
check("list has both images", #registry.list() == 2)

-- errors with codes
r, msg, code = registry.pull(REG .. "/test/nope")
check("unknown image: not_found with the registry's message", r == nil and code == "not_found" and msg:find("manifest unknown"), msg)
r, msg, code = registry.pull(REG .. "/test/corrupt")
check("corrupt blob: corrupt", r == nil and code == "corrupt", msg)
r, msg, code = registry.pull("Bad Reference")
check("bad reference: invalid", r == nil and code == "invalid", msg)
r, msg, code = registry.pull(BASIC .. "/test/busybox")
check("basic registry without credentials: unauthorized", r == nil and code == "unauthorized", msg)
r, msg, code = registry.pull(BASIC .. "/test/busybox", { auth = { username = "testuser", password = "nope" } })
check("wrong password: unauthorized, clear message", r == nil and code == "unauthorized" and msg:find("incorrect username or password"), msg)
r, msg, code = registry.pull(TOKEN .. "/private/busybox")
check("token registry, private repo anonymously: unauthorized", r == nil and code == "unauthorized", msg)
check("failed pulls emit image.pull.failed", #events("image.pull.failed") >= 5)

-- credentials: X-Registry-Auth, login store
local xra = sh([[printf '{"username":"testuser","password":"testpass"}' | base64 -w0 | tr '+/' '-_']])
r, msg, code = registry.pull(TOKEN .. "/private/busybox", { auth = xra })
check("X-Registry-Auth header credentials (token auth)", r and r.id, msg)
r, msg, code = registry.login(BASIC, "testuser", "wrong")
check("login with a wrong password: unauthorized", r == nil and code == "unauthorized", msg)
r, msg, code = registry.login(BASIC, "testuser", "testpass")
check("login", r == true, msg)
r, msg, code = registry.pull(BASIC .. "/test/busybox")
check("pull with stored login", r and r.id, msg)
local logins = registry.logins()
check("logins() names the user, never the password", #logins == 1 and logins[1].username == "testuser" and logins[1].password == nil)
local authfile = STATE .. "/registry/auth.json"
check("credentials file is 0600", sh("stat -c %a '" .. authfile .. "'") == "600")
local function has_secret(v)
	if type(v) == "string" then return v:find("testpass", 1, true) ~= nil end
	if type(v) == "table" then
		for k, x in pairs(v) do
			if has_secret(k) or has_secret(x) then return true end
		end
	end
	return false
end
local leaked = false
for _, t in ipairs({ "image.pull.progress", "image.pull.done", "image.pull.failed", "registry.login" }) do
	leaked = leaked or has_secret(events(t))
end
check("no password in any event", not leaked and #events("registry.login") == 1)
check("no password in any record", not has_secret(registry.list()) and not has_secret(registry.logins()))
check("logout", registry.logout(BASIC) == true and #registry.logins() == 0)
r, msg, code = registry.login(TOKEN, "testuser", "bad")
check("login to a token registry with a wrong password: unauthorized", r == nil and code == "unauthorized", msg)
r, msg, code = registry.login(TOKEN, "testuser", "testpass")
check("login to a token registry", r == true, msg)
r, msg, code = registry.pull(TOKEN .. "/private/busybox")
check("private pull with the stored token-registry login", r and r.id, msg)
registry.logout(TOKEN)
local alias = os.getenv("REG_basic_alias")
if alias then
	r, msg, code = registry.pull(alias .. "/test/busybox")
	check("credentials from ~/.docker/config.json", r and r.id, msg)
end

-- use / remove / release / gc
local id = registry.use(REG .. "/test/busybox", "container-1")
check("use by reference returns the id", id == img.id)
local info = registry.inspect(img.id)
check("in_use counts holders", info.in_use == 1 and info.holders[1] == "container-1")
r, msg, code = registry.remove(img.id, { force = true })
check("remove while in use: conflict", r == nil and code == "conflict", msg)
check("release", registry.release(img.id, "container-1") == true)
r, msg, code = registry.remove(img.id)
check("remove an image with several names needs force", r == nil and code == "conflict", msg)
r, msg, code = registry.remove(REG .. "/test/busybox")
check("remove by reference untags", r and r.deleted == false and r.untagged[1] == REG .. "/test/busybox:latest", msg)
r, msg, code = registry.remove(img.id, { force = true })
check("remove with force deletes", r and r.deleted == true, msg)
check("removed image is gone", registry.inspect(img.id) == nil)
check("image.remove events", #events("image.remove") == 2)
local g = registry.gc()
check("gc runs", g and g.blobs_removed >= 0, g)
check("disk of the removed image is gone", sh("test -e '" .. img.disk .. "' && echo yes || echo no") == "no")
check("disk of the kept image stays", sh("test -s '" .. multi.disk .. "' && echo yes") == "yes")

-- load archives
if FIX and sh("test -f '" .. FIX .. "/busybox-docker.tar' && echo y") == "y" then
	local loaded
	loaded, msg, code = registry.load(FIX .. "/busybox-docker.tar")
	check("load docker archive", loaded and #loaded == 1 and loaded[1].references[1] == "docker.io/test/busybox:latest", msg)
	loaded, msg, code = registry.load(FIX .. "/multi-oci.tar")
	check("load OCI archive", loaded and loaded[1].id == multi.id, msg)
	loaded, msg, code = registry.load("/etc/hostname")
	check("load of a non-archive: invalid", loaded == nil and code == "invalid", msg)
end

-- misuse raises
local ok = pcall(registry.pull, {})
check("misuse raises", not ok)

print(string.format("plugin: %d passed, %d failed", passed, failed))
if failed > 0 then error("plugin tests failed") end
