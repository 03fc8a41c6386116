-- volume.lua — the bookkeeping of plugins/volume. Compiled into volume.so and run once
-- when the plugin loads, with the module table (holding the C helper `_usage`).
--
-- A named volume is a sparse ext4 image file <state_dir>/volumes/<name>.ext4, recorded
-- in vol_volumes; an attachment (vol_attachments) says which owner (a container) uses it.
-- At most one owner at a time: ext4 is not a shared-disk file system, two VMs mounting
-- the same image would corrupt it. Host directory binds are 9p shares and need no state.
local M = ...

local MiB = 1024 * 1024
local GiB = 1024 * MiB
local CFG = {
	default_size = GiB,
	min_size = 8 * MiB,
	max_size = 16 * 1024 * GiB,
	max_devices = 3, -- virtio-mmio transports left for volumes and binds (see README)
}

db.migrate("volume", {
	[[CREATE TABLE vol_volumes(
		name TEXT PRIMARY KEY,
		path TEXT NOT NULL,
		size INTEGER NOT NULL,
		fstype TEXT NOT NULL,
		labels TEXT,
		anonymous INTEGER NOT NULL DEFAULT 0,
		state TEXT NOT NULL,
		created_at INTEGER NOT NULL);
	CREATE TABLE vol_attachments(
		name TEXT NOT NULL REFERENCES vol_volumes(name),
		owner TEXT NOT NULL,
		readonly INTEGER NOT NULL DEFAULT 0,
		since INTEGER NOT NULL,
		PRIMARY KEY(name, owner));]],
})

local function fail(msg, code)
	return nil, msg, code or "invalid"
end

local function now()
	return math.floor(timer.time())
end

local function dir()
	return (moonbox.config("state_dir") or "/var/lib/moonbox") .. "/volumes"
end

-- Docker's rule, and nothing that could leave the directory or confuse QEMU's -drive
local function valid_name(n)
	if type(n) ~= "string" or n == "" then
		return false, "a non-empty string is required"
	end
	if #n > 128 then
		return false, "at most 128 characters"
	end
	if n:find("/", 1, true) or n:find("..", 1, true) then
		return false, "must not contain '/' or '..'"
	end
	if not n:match("^[%w][%w_.%-]*$") then
		return false, "only letters, digits, '_', '.', '-', starting with a letter or digit"
	end
	return true
end

local UNITS = { [""] = 1, b = 1, k = 1024, kb = 1024, kib = 1024, m = MiB, mb = MiB, mib = MiB,
	g = GiB, gb = GiB, gib = GiB, t = 1024 * GiB, tb = 1024 * GiB, tib = 1024 * GiB }

local function parse_size(s)
	if s == nil then
		return CFG.default_size
	end
	local n
	if math.type(s) == "integer" then
		n = s
	elseif type(s) == "string" then
		local num, unit = s:lower():match("^%s*(%d+)%s*(%a*)%s*$")
		if not num or not UNITS[unit] then
			return nil, "size: cannot parse " .. string.format("%q", s) .. " (use bytes or 512M, 10G, ...)"
		end
		n = tonumber(num) * UNITS[unit]
	else
		return nil, "size: must be an integer (bytes) or a string like \"10G\""
	end
	if n < CFG.min_size then
		return nil, "size: at least 8M"
	end
	if n > CFG.max_size then
		return nil, "size: at most 16T"
	end
	return n - n % 4096
end

local function attachments(name)
	local out = {}
	for _, a in ipairs(db.query("SELECT owner, readonly FROM vol_attachments WHERE name = ? ORDER BY since", name)) do
		out[#out + 1] = a.owner
	end
	return out
end

local function record(v)
	local used = M._usage(v.path)
	return {
		name = v.name,
		path = v.path,
		size = v.size,
		allocated = used,
		fstype = v.fstype,
		labels = v.labels and json.decode(v.labels) or {},
		anonymous = v.anonymous == 1,
		created_at = v.created_at,
		attached_to = json.array(attachments(v.name)),
	}
end

local function row(name)
	return db.row("SELECT * FROM vol_volumes WHERE name = ? AND state = 'ready'", name)
end

local function random_name()
	return moonbox.sha256(moonbox.random(32))
end

local function mkfs(path, size, label)
	local ok, msg, code = fs.truncate(path, size)
	if not ok then
		return nil, msg, code
	end
	local r
	r, msg, code = proc.run({ "mkfs.ext4", "-q", "-F", "-m", "0", "-L", label:sub(1, 16),
		"-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", path }, { timeout = 300 })
	if not r then
		return nil, "mkfs.ext4: " .. tostring(msg), code
	end
	if r.code ~= 0 then
		return nil, "mkfs.ext4 failed: " .. (r.stderr or ""):gsub("%s+$", ""), "io"
	end
	return true
end

function M.create(spec)
	spec = spec or {}
	if type(spec) ~= "table" then
		error("volume.create: expected a table", 2)
	end
	local name = spec.name
	if name == nil or name == "" then
		name = random_name()
		spec.anonymous = spec.anonymous ~= false
	end
	local ok, why = valid_name(name)
	if not ok then
		return fail("name: " .. why)
	end
	local size, serr = parse_size(spec.size)
	if not size then
		return fail(serr)
	end
	if spec.labels ~= nil and type(spec.labels) ~= "table" then
		return fail("labels: must be an object")
	end
	if db.row("SELECT 1 AS x FROM vol_volumes WHERE name = ?", name) then
		return fail("volume " .. name .. " already exists", "conflict")
	end
	fs.mkdir(dir(), 448) -- 0700
	local path = dir() .. "/" .. name .. ".ext4"
	if fs.exists(path) then
		return fail("volume file " .. path .. " exists but is not recorded; remove it first", "conflict")
	end
	-- intent first: a crash leaves a 'creating' row that reconcile() cleans up
	db.run([[INSERT INTO vol_volumes(name, path, size, fstype, labels, anonymous, state, created_at)
		VALUES(?, ?, ?, 'ext4', ?, ?, 'creating', ?)]], name, path, size, json.encode(spec.labels or {}),
		spec.anonymous and 1 or 0, now())
	local mok, msg, code = mkfs(path, size, name)
	if not mok then
		fs.remove(path)
		db.run("DELETE FROM vol_volumes WHERE name = ?", name)
		return nil, msg, code
	end
	db.run("UPDATE vol_volumes SET state = 'ready' WHERE name = ?", name)
	events.emit("volume.create", { name = name, size = size })
	return record(row(name))
end

function M.list()
	local out = {}
	for _, v in ipairs(db.query("SELECT * FROM vol_volumes WHERE state = 'ready' ORDER BY created_at, name")) do
		out[#out + 1] = record(v)
	end
	return json.array(out)
end

function M.inspect(name)
	if type(name) ~= "string" then
		error("volume.inspect: name must be a string", 2)
	end
	local v = row(name)
	if not v then
		return fail("no volume " .. name, "not_found")
	end
	return record(v)
end

function M.path(name)
	local v = type(name) == "string" and row(name)
	if not v then
		return fail("no volume " .. tostring(name), "not_found")
	end
	return v.path
end

function M.remove(name)
	if type(name) ~= "string" then
		error("volume.remove: name must be a string", 2)
	end
	local v = row(name)
	if not v then
		return fail("no volume " .. name, "not_found")
	end
	local users = attachments(name)
	if #users > 0 then
		return fail("volume " .. name .. " is in use by " .. table.concat(users, ", "), "conflict")
	end
	db.run("UPDATE vol_volumes SET state = 'removing' WHERE name = ?", name)
	local ok, msg = fs.remove(v.path)
	if not ok and fs.exists(v.path) then
		db.run("UPDATE vol_volumes SET state = 'ready' WHERE name = ?", name)
		return nil, msg, "io"
	end
	db.run("DELETE FROM vol_volumes WHERE name = ?", name)
	events.emit("volume.remove", { name = name })
	return true
end

function M.attach(name, owner, readonly)
	if type(name) ~= "string" or type(owner) ~= "string" then
		error("volume.attach: name and owner must be strings", 2)
	end
	local v = row(name)
	if not v then
		return fail("no volume " .. name, "not_found")
	end
	local users = attachments(name)
	for _, u in ipairs(users) do
		if u == owner then
			return record(v)
		end
	end
	if #users > 0 then
		return fail("volume " .. name .. " is attached to " .. users[1] ..
			" (an ext4 volume is used by one container at a time)", "conflict")
	end
	db.run("INSERT INTO vol_attachments(name, owner, readonly, since) VALUES(?, ?, ?, ?)", name, owner,
		readonly and 1 or 0, now())
	return record(v)
end

function M.detach(name, owner)
	if type(name) ~= "string" or type(owner) ~= "string" then
		error("volume.detach: name and owner must be strings", 2)
	end
	local n = db.run("DELETE FROM vol_attachments WHERE name = ? AND owner = ?", name, owner)
	return n > 0
end

-- Release everything owner holds; with {remove_anonymous=true} also delete the anonymous
-- volumes it held (docker rm -v). Returns the names released.
function M.detach_all(owner, opts)
	if type(owner) ~= "string" then
		error("volume.detach_all: owner must be a string", 2)
	end
	local names = {}
	for _, a in ipairs(db.query("SELECT name FROM vol_attachments WHERE owner = ?", owner)) do
		names[#names + 1] = a.name
	end
	db.run("DELETE FROM vol_attachments WHERE owner = ?", owner)
	if opts and opts.remove_anonymous then
		for _, n in ipairs(names) do
			local v = row(n)
			if v and v.anonymous == 1 then
				M.remove(n)
			end
		end
	end
	return json.array(names)
end

-- Remove anonymous volumes nobody holds. Returns their names.
function M.prune()
	local out = {}
	for _, v in ipairs(db.query([[SELECT name FROM vol_volumes WHERE anonymous = 1 AND state = 'ready'
		AND name NOT IN (SELECT name FROM vol_attachments)]])) do
		if M.remove(v.name) then
			out[#out + 1] = v.name
		end
	end
	return json.array(out)
end

-- ---------------------------------------------------------------------------------------
-- specs: "name:/dst[:ro]", "/host/dir:/dst[:ro]", "/dst" (anonymous), or a table
-- ---------------------------------------------------------------------------------------

local function clean_target(t)
	if type(t) ~= "string" or t:sub(1, 1) ~= "/" then
		return nil, "target must be an absolute path inside the container"
	end
	local parts = {}
	for p in t:gmatch("[^/]+") do
		if p == ".." then
			return nil, "target must not contain '..'"
		end
		if p ~= "." then
			parts[#parts + 1] = p
		end
	end
	if #parts == 0 then
		return nil, "target must not be /"
	end
	return "/" .. table.concat(parts, "/")
end

function M.parse_spec(s)
	local src, dst, mode
	if type(s) == "table" then
		src, dst = s.source, s.target
		mode = s.readonly and "ro" or "rw"
		if s.type == "volume" and (src == nil or src == "") then
			src = nil
		end
	elseif type(s) == "string" then
		local parts = {}
		for f in (s .. ":"):gmatch("([^:]*):") do
			parts[#parts + 1] = f
		end
		if #parts == 1 then
			dst = parts[1]
		elseif #parts == 2 then
			if parts[2] == "ro" or parts[2] == "rw" then
				dst, mode = parts[1], parts[2]
			else
				src, dst = parts[1], parts[2]
			end
		elseif #parts == 3 then
			src, dst, mode = parts[1], parts[2], parts[3]
		else
			return fail("volume spec " .. string.format("%q", s) .. ": want source:/target[:ro]")
		end
	else
		return fail("volume spec: must be a string or an object")
	end
	mode = mode or "rw"
	if mode ~= "ro" and mode ~= "rw" then
		return fail("volume spec " .. tostring(s) .. ": unknown option " .. string.format("%q", mode) .. " (ro or rw)")
	end
	local target, terr = clean_target(dst)
	if not target then
		return fail("volume spec " .. tostring(type(s) == "string" and s or dst) .. ": " .. terr)
	end
	local out = { target = target, readonly = mode == "ro" }
	if src == nil or src == "" then
		out.kind = "volume"
		out.anonymous = true
	elseif src:sub(1, 1) == "/" then
		out.kind = "bind"
		local st = fs.stat(src)
		if not st then
			return fail("bind source " .. src .. " does not exist")
		end
		if st.type ~= "directory" then
			return fail("bind source " .. src .. " is not a directory (9p binds share directories)")
		end
		out.source = src
	else
		local ok, why = valid_name(src)
		if not ok then
			return fail("volume name " .. string.format("%q", src) .. ": " .. why)
		end
		out.kind = "volume"
		out.source = src
	end
	return out
end

-- Build the vm plugin's disks/shares and the boot config's mounts for a container.
--   specs: list of spec strings/tables; opts: {owner=, image_volumes={"/data"...},
--          max_devices=}
-- Named volumes that do not exist are created (default size); image volumes not covered
-- by a spec get anonymous volumes. Everything is attached to owner. On failure nothing
-- stays attached or created.
function M.vm_entries(specs, opts)
	opts = opts or {}
	if type(specs) ~= "table" then
		return fail("volumes: must be a list")
	end
	if type(opts.owner) ~= "string" then
		error("volume.vm_entries: opts.owner must be a string", 2)
	end
	local parsed, targets = {}, {}
	for _, s in ipairs(specs) do
		local p, msg, code = M.parse_spec(s)
		if not p then
			return nil, msg, code
		end
		if targets[p.target] then
			return fail("volumes: " .. p.target .. " is mounted twice")
		end
		targets[p.target] = true
		parsed[#parsed + 1] = p
	end
	for _, t in ipairs(opts.image_volumes or {}) do
		local tt = clean_target(t)
		if tt and not targets[tt] then
			targets[tt] = true
			parsed[#parsed + 1] = { kind = "volume", anonymous = true, target = tt, readonly = false }
		end
	end
	local maxd = opts.max_devices or CFG.max_devices
	if #parsed > maxd then
		return fail(string.format("volumes: %d volumes and binds, at most %d per container", #parsed, maxd))
	end
	local out = { disks = {}, shares = {}, mounts = {}, volumes = {} }
	local created, attached = {}, {}
	local function undo()
		for _, n in ipairs(attached) do
			M.detach(n, opts.owner)
		end
		for _, n in ipairs(created) do
			M.remove(n)
		end
	end
	local nd, ns = 0, 0
	for _, p in ipairs(parsed) do
		if p.kind == "bind" then
			local tag = "bind" .. ns
			ns = ns + 1
			out.shares[#out.shares + 1] = { path = p.source, tag = tag, readonly = p.readonly }
			out.mounts[#out.mounts + 1] = { type = "9p", tag = tag, target = p.target, ro = p.readonly }
		else
			local name = p.source
			if not name or not row(name) then
				local v, msg, code = M.create({ name = name, anonymous = name == nil })
				if not v then
					undo()
					return nil, msg, code
				end
				name = v.name
				created[#created + 1] = name
			end
			local v, msg, code = M.attach(name, opts.owner, p.readonly)
			if not v then
				undo()
				return nil, msg, code
			end
			attached[#attached + 1] = name
			local serial = "vol" .. nd
			nd = nd + 1
			out.disks[#out.disks + 1] = { path = v.path, readonly = p.readonly, serial = serial }
			out.mounts[#out.mounts + 1] = { type = "block", serial = serial, fstype = "ext4", target = p.target, ro = p.readonly }
			out.volumes[#out.volumes + 1] = { name = name, target = p.target, readonly = p.readonly, anonymous = v.anonymous }
		end
	end
	out.disks = json.array(out.disks)
	out.shares = json.array(out.shares)
	out.mounts = json.array(out.mounts)
	out.volumes = json.array(out.volumes)
	return out
end

-- At start: forget volumes whose creation or removal a crash interrupted.
function M.reconcile()
	local cleaned = {}
	for _, v in ipairs(db.query("SELECT * FROM vol_volumes WHERE state != 'ready'")) do
		fs.remove(v.path)
		db.run("DELETE FROM vol_attachments WHERE name = ?", v.name)
		db.run("DELETE FROM vol_volumes WHERE name = ?", v.name)
		cleaned[#cleaned + 1] = v.name
	end
	return json.array(cleaned)
end

function M.configure(t)
	if t ~= nil then
		for k, v in pairs(t) do
			if CFG[k] == nil then
				error("volume.configure: unknown setting " .. tostring(k), 2)
			end
			if k == "default_size" then
				local n, e = parse_size(v)
				if not n then
					error("volume.configure: " .. e, 2)
				end
				v = n
			end
			CFG[k] = v
		end
	end
	local c = {}
	for k, v in pairs(CFG) do
		c[k] = v
	end
	return c
end
