-- net.lua — the control plane of plugins/net. Compiled into net.so and run once when the
-- plugin loads, with the module table (holding the C helpers `_listen`, `_lock`,
-- `_sysctl`, `_cap_net_admin`, `_dns_start`) and the MOONBOX_NET_* environment.
--
-- It owns: the SQLite tables net_networks / net_endpoints / net_ports (the truth), the
-- bridges and taps (through `ip -batch -`), the nftables tables `inet <table>` and
-- `bridge <table>` (always rewritten whole, atomically, by one `nft -f -` run), the proxy
-- listeners (which are also the host-port reservations) and one DNS responder per network.
-- Every call that changes something runs under one lock, in its own task, so a caller that
-- goes away never leaves a half-done change behind and the nft table is never rendered
-- from a state that is about to change.
local M, ENV = ...

local unpack = table.unpack

-- ---------------------------------------------------------------------------------------
-- configuration
-- ---------------------------------------------------------------------------------------

local CFG = {
	mode = ENV.mode,                                  -- "bridge" | "user" | nil (detect)
	default_network = ENV.default_network or "bridge",
	default_bridge = ENV.default_bridge or "moonbox0",
	default_subnet = ENV.default_subnet or "10.88.0.0/16",
	pool = ENV.pool or "10.89.0.0/16",                -- /24s for networks created without a subnet
	pool_prefix = tonumber(ENV.pool_prefix) or 24,
	bridge_prefix = ENV.bridge_prefix or "mbn",
	tap_prefix = ENV.tap_prefix or "mbt",
	table = ENV.table or "moonbox",
	agent_port = tonumber(ENV.agent_port) or 1025,
	mtu = tonumber(ENV.mtu) or 1500,
	host_access = ENV.host_access or "none",          -- "none" | "all": guests -> host services
	dns = ENV.dns ~= "0",
	udp_idle_ms = tonumber(ENV.udp_idle_ms) or 60000,
	user_restrict = ENV.user_restrict == "1",          -- rootless: no outbound at all
	-- "auto": enable IPv4 forwarding on the interfaces of the default routes (only those)
	-- when a network with outbound access exists; "off": the operator manages forwarding
	uplink_forwarding = ENV.uplink_forwarding or "auto",
}

local IFNAME_MAX = 15

local function fail(msg, code)
	return nil, msg, code or "invalid"
end

-- ---------------------------------------------------------------------------------------
-- addresses
-- ---------------------------------------------------------------------------------------

local function ip2n(s)
	if type(s) ~= "string" then
		return nil
	end
	local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
	if not a then
		return nil
	end
	local n = 0
	for _, p in ipairs({ a, b, c, d }) do
		if #p > 1 and p:sub(1, 1) == "0" then
			return nil -- leading zeros are octal to some parsers: refuse them
		end
		local v = tonumber(p)
		if v > 255 then
			return nil
		end
		n = n * 256 + v
	end
	return n
end

local function n2ip(n)
	return string.format("%d.%d.%d.%d", (n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255)
end

-- "10.88.0.0/16" -> {net=, len=, first=, last=, text=} | nil, why
local function parse_cidr(s)
	if type(s) ~= "string" then
		return nil, "must be a string like 10.90.0.0/24"
	end
	local a, l = s:match("^([%d%.]+)/(%d+)$")
	local n = ip2n(a)
	l = tonumber(l)
	if not n or not l or l > 32 then
		return nil, "invalid CIDR " .. string.format("%q", s) .. " (want a.b.c.d/len)"
	end
	if l < 8 or l > 30 then
		return nil, "prefix length /" .. l .. " is out of range (8..30)"
	end
	local size = 1 << (32 - l)
	if n % size ~= 0 then
		local base = n - n % size
		return nil, s .. " has host bits set (did you mean " .. n2ip(base) .. "/" .. l .. "?)"
	end
	return { net = n, len = l, first = n, last = n + size - 1, text = n2ip(n) .. "/" .. l }
end

local function overlaps(a, b)
	return a.first <= b.last and b.first <= a.last
end

local function in_subnet(c, n)
	return n > c.first and n < c.last
end

-- 02:6d:<ip>: locally administered, stable for an address (no stale ARP after reuse)
local function mac_for(n)
	return string.format("02:6d:%02x:%02x:%02x:%02x", (n >> 24) & 255, (n >> 16) & 255,
		(n >> 8) & 255, n & 255)
end

local function valid_mac(s)
	return type(s) == "string" and s:lower():match("^%x%x:%x%x:%x%x:%x%x:%x%x:%x%x$") ~= nil
		and tonumber(s:sub(1, 2), 16) % 2 == 0 -- unicast
end

-- ---------------------------------------------------------------------------------------
-- state
-- ---------------------------------------------------------------------------------------

db.migrate("net", {
	[[CREATE TABLE net_networks(
		id INTEGER PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		bridge TEXT NOT NULL UNIQUE,
		subnet TEXT NOT NULL,
		gateway TEXT NOT NULL,
		internal INTEGER NOT NULL DEFAULT 0,
		is_default INTEGER NOT NULL DEFAULT 0,
		mtu INTEGER NOT NULL,
		labels TEXT,
		created_at INTEGER NOT NULL);
	CREATE TABLE net_endpoints(
		id INTEGER PRIMARY KEY,
		network_id INTEGER REFERENCES net_networks(id),
		owner TEXT NOT NULL,
		name TEXT,
		aliases TEXT,
		ip TEXT NOT NULL,
		ip_num INTEGER NOT NULL,
		mac TEXT NOT NULL,
		tap TEXT UNIQUE,
		agent_port INTEGER,
		created_at INTEGER NOT NULL,
		UNIQUE(network_id, ip_num),
		UNIQUE(owner, network_id));
	CREATE TABLE net_ports(
		id INTEGER PRIMARY KEY,
		owner TEXT NOT NULL,
		endpoint_id INTEGER NOT NULL REFERENCES net_endpoints(id),
		proto TEXT NOT NULL,
		host_ip TEXT NOT NULL,
		host_port INTEGER NOT NULL,
		container_port INTEGER NOT NULL,
		user_port INTEGER,
		created_at INTEGER NOT NULL,
		UNIQUE(proto, host_ip, host_port));]],
})

local lock = M._lock()
local proxies = {}     -- net_ports.id -> listener
local dns_servers = {} -- net_networks.id -> dns server
local instance         -- tags our links: alias "moonbox:<instance>:<owner>"

local function get_instance()
	if not instance then
		instance = moonbox.sha256(moonbox.config("state_dir") or "/var/lib/moonbox"):sub(1, 10)
	end
	return instance
end

local function mode()
	if not CFG.mode then
		CFG.mode = M._cap_net_admin() and "bridge" or "user"
	end
	return CFG.mode
end

-- Run fn(...) holding the lock, in a task of its own: a caller that is cancelled stops
-- waiting but the change completes (or rolls back) as one unit.
local function locked(fn, ...)
	local h = task.spawn(function(...)
		lock:acquire()
		local guard <close> = setmetatable({}, { __close = function() lock:release() end })
		return fn(...)
	end, ...)
	local res = table.pack(h:wait())
	if not res[1] then
		error(res[2], 0) -- the body raised: misuse or a bug, re-raise in the caller
	end
	return unpack(res, 2, res.n)
end

-- ---------------------------------------------------------------------------------------
-- commands
-- ---------------------------------------------------------------------------------------

local function run(argv, stdin)
	local r, msg, code = proc.run(argv, { stdin = stdin, timeout = 60 })
	if not r then
		return nil, argv[1] .. ": " .. tostring(msg), code or "io"
	end
	if r.code ~= 0 then
		local e = (r.stderr ~= "" and r.stderr or r.stdout or ""):gsub("%s+$", "")
		return nil, argv[1] .. " failed: " .. e, "io"
	end
	return r
end

local function ip_batch(lines, force)
	if #lines == 0 then
		return true
	end
	local argv = force and { "ip", "-force", "-batch", "-" } or { "ip", "-batch", "-" }
	return run(argv, table.concat(lines, "\n") .. "\n")
end

-- ifname -> {name, kind, master, alias, up}
local function links()
	local r, msg, code = run({ "ip", "-j", "-d", "link", "show" })
	if not r then
		return nil, msg, code
	end
	local ok, list = pcall(json.decode, r.stdout)
	if not ok or type(list) ~= "table" then
		return nil, "ip -j link: unexpected output", "io"
	end
	local out = {}
	for _, l in ipairs(list) do
		local li = type(l.linkinfo) == "table" and l.linkinfo or {}
		out[l.ifname] = {
			name = l.ifname,
			kind = li.info_kind,
			master = l.master,
			alias = type(l.ifalias) == "string" and l.ifalias or nil,
			up = type(l.flags) == "table" and (function()
				for _, f in ipairs(l.flags) do
					if f == "UP" then
						return true
					end
				end
				return false
			end)() or false,
		}
	end
	return out
end

local function alias_for(owner)
	-- ifalias is at most 128 bytes; keep it printable
	return ("moonbox:" .. get_instance() .. ":" .. owner):gsub("[^%w%._:%-]", "_"):sub(1, 120)
end

local function ours(link)
	return link.alias ~= nil and link.alias:sub(1, #("moonbox:" .. get_instance() .. ":"))
		== "moonbox:" .. get_instance() .. ":"
end

local function sysctl_read(rel)
	local s = fs.read("/proc/sys/" .. rel)
	return s and s:gsub("%s+$", "") or nil
end

-- ---------------------------------------------------------------------------------------
-- records
-- ---------------------------------------------------------------------------------------

local function net_rows()
	return db.query("SELECT * FROM net_networks ORDER BY id")
end

local function net_by_name(name)
	return db.row("SELECT * FROM net_networks WHERE name = ?", name)
end

local function dns_for(n)
	if dns_servers[n.id] then
		return { n.gateway }
	end
	local up = {}
	local rc = fs.read("/etc/resolv.conf") or ""
	for a in rc:gmatch("nameserver%s+([%d%.]+)") do
		if not a:match("^127%.") then
			up[#up + 1] = a
		end
	end
	return up
end

local function upstreams()
	local up = {}
	local rc = fs.read("/etc/resolv.conf") or ""
	for a in rc:gmatch("nameserver%s+([%d%.]+)") do
		up[#up + 1] = a
	end
	return up
end

local function network_record(n, with_endpoints)
	local c = parse_cidr(n.subnet)
	local rec = {
		id = n.id,
		name = n.name,
		bridge = n.bridge,
		subnet = n.subnet,
		gateway = n.gateway,
		prefix = c and c.len,
		internal = n.internal == 1,
		default = n.is_default == 1,
		mtu = n.mtu,
		labels = n.labels and json.decode(n.labels) or {},
		created_at = n.created_at,
		dns = json.array(dns_for(n)),
	}
	local cnt = db.row("SELECT count(*) AS n FROM net_endpoints WHERE network_id = ?", n.id)
	rec.endpoint_count = cnt and cnt.n or 0
	if with_endpoints then
		local eps = {}
		for _, e in ipairs(db.query("SELECT * FROM net_endpoints WHERE network_id = ? ORDER BY ip_num", n.id)) do
			eps[#eps + 1] = { owner = e.owner, name = e.name, ip = e.ip, mac = e.mac, tap = e.tap }
		end
		rec.endpoints = json.array(eps)
	end
	return rec
end

local function port_record(p, ep)
	return {
		proto = p.proto,
		host_ip = p.host_ip,
		host_port = p.host_port,
		container_port = p.container_port,
		ip = ep and ep.ip or nil,
		spec = string.format("%s:%d:%d/%s", p.host_ip, p.host_port, p.container_port, p.proto),
	}
end

local function user_hostfwds(ep)
	local fw = { { proto = "tcp", host_ip = "127.0.0.1", host_port = ep.agent_port, guest_port = CFG.agent_port } }
	for _, p in ipairs(db.query("SELECT * FROM net_ports WHERE endpoint_id = ? ORDER BY id", ep.id)) do
		fw[#fw + 1] = { proto = p.proto, host_ip = "127.0.0.1", host_port = p.user_port, guest_port = p.container_port }
	end
	return fw
end

local function endpoint_record(e, n)
	if not n then -- user mode
		local rec = {
			mode = "user",
			network = "user",
			owner = e.owner,
			name = e.name,
			ip = e.ip,
			address = e.ip .. "/24",
			gateway = "10.0.2.2",
			dns = { "10.0.2.3" },
			mac = e.mac,
			mtu = 1500,
			agent = { host = "127.0.0.1", port = e.agent_port },
		}
		rec.nic = { type = "user", mac = e.mac, net = "10.0.2.0/24", restrict = CFG.user_restrict,
			hostfwd = user_hostfwds(e) }
		rec.boot = { mac = e.mac, address = rec.address, gateway = rec.gateway, dns = rec.dns, mtu = 1500 }
		return rec
	end
	local c = parse_cidr(n.subnet)
	local rec = {
		mode = "bridge",
		network = n.name,
		bridge = n.bridge,
		owner = e.owner,
		name = e.name,
		aliases = e.aliases and json.decode(e.aliases) or {},
		tap = e.tap,
		mac = e.mac,
		ip = e.ip,
		address = e.ip .. "/" .. c.len,
		gateway = n.gateway,
		dns = dns_for(n),
		mtu = n.mtu,
		agent = { host = e.ip, port = CFG.agent_port },
	}
	rec.nic = { type = "tap", ifname = e.tap, mac = e.mac }
	rec.boot = { mac = e.mac, address = rec.address, gateway = rec.gateway, dns = rec.dns, mtu = rec.mtu }
	return rec
end

-- ---------------------------------------------------------------------------------------
-- nftables: the whole moonbox table, rendered from the database
-- ---------------------------------------------------------------------------------------

local function q(s)
	return '"' .. s .. '"'
end

local function set_of(list, fmt)
	local t = {}
	for _, v in ipairs(list) do
		t[#t + 1] = fmt and fmt(v) or v
	end
	return "{ " .. table.concat(t, ", ") .. " }"
end

local function api_port()
	local h = moonbox.config("http") or ""
	return tonumber(h:match(":(%d+)$"))
end

-- Interfaces (other than ours and lo) that forward IPv4: DNAT can serve traffic that
-- arrives on them; everything else reaches the proxy listening on the same port.
local function forwarding_ifaces(skip)
	local out = {}
	for _, name in ipairs(fs.list("/proc/sys/net/ipv4/conf") or {}) do
		if name ~= "all" and name ~= "default" and name ~= "lo" and not skip[name]
			and sysctl_read("net/ipv4/conf/" .. name .. "/forwarding") == "1" then
			out[#out + 1] = name
		end
	end
	table.sort(out)
	return out
end

local function render()
	local nets = net_rows()
	local T = CFG.table
	local bridges, mine, subnets = {}, {}, {}
	for _, n in ipairs(nets) do
		bridges[#bridges + 1] = n.bridge
		mine[n.bridge] = true
		subnets[#subnets + 1] = n.subnet
	end
	local eps = db.query([[SELECT e.*, n.bridge FROM net_endpoints e
		JOIN net_networks n ON n.id = e.network_id WHERE e.tap IS NOT NULL ORDER BY e.id]])
	local taps = {}
	for _, e in ipairs(eps) do
		taps[#taps + 1] = e.tap
		mine[e.tap] = true
	end
	local ports = db.query([[SELECT p.*, e.ip FROM net_ports p JOIN net_endpoints e ON e.id = p.endpoint_id
		WHERE e.network_id IS NOT NULL ORDER BY p.id]])
	local dnat_ifs = forwarding_ifaces(mine)
	for _, b in ipairs(bridges) do
		dnat_ifs[#dnat_ifs + 1] = b -- guests reach published ports through the host (hairpin)
	end

	local o = {}
	local function w(s)
		o[#o + 1] = s
	end
	-- create-then-delete makes the delete valid when the table does not exist yet; the
	-- whole file is one transaction, so the table is replaced atomically
	w("table inet " .. T)
	w("delete table inet " .. T)
	w("table bridge " .. T)
	w("delete table bridge " .. T)
	w("table inet " .. T .. " {")
	if #bridges > 0 then
		w("\tset bridges { type ifname; elements = " .. set_of(bridges, q) .. " }")
		w("\tset subnets { type ipv4_addr; flags interval; elements = " .. set_of(subnets) .. " }")
	else
		w("\tset bridges { type ifname; }")
		w("\tset subnets { type ipv4_addr; flags interval; }")
	end
	if #dnat_ifs > 0 then
		w("\tset dnat_ifs { type ifname; elements = " .. set_of(dnat_ifs, q) .. " }")
	else
		w("\tset dnat_ifs { type ifname; }")
	end
	-- published ports: DNAT for traffic arriving on forwarding interfaces
	w("\tchain prerouting {")
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	for _, p in ipairs(ports) do
		local to = string.format("%s dport %d dnat ip to %s:%d", p.proto, p.host_port, p.ip, p.container_port)
		if p.host_ip == "0.0.0.0" then
			w("\t\tiifname @dnat_ifs fib daddr type local ip daddr != 127.0.0.0/8 " .. to)
		elseif not p.host_ip:match("^127%.") then
			w("\t\tiifname @dnat_ifs ip daddr " .. p.host_ip .. " " .. to)
		end
	end
	w("\t}")
	w("\tchain postrouting {")
	w("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	if #bridges > 0 then
		-- a guest reaching a published port (its own or a neighbour's) through the host
		w("\t\tct status dnat ip saddr @subnets oifname @bridges masquerade")
	end
	for _, n in ipairs(nets) do
		if n.internal == 0 then
			w(string.format("\t\tip saddr %s oifname != %s oifname != @bridges masquerade", n.subnet, q(n.bridge)))
		end
	end
	w("\t}")
	w("\tchain forward {")
	w("\t\ttype filter hook forward priority filter; policy accept;")
	w("\t\tct state established,related accept")
	w("\t\tct state invalid iifname @bridges drop")
	w("\t\tct state invalid oifname @bridges drop")
	w("\t\tct status dnat oifname @bridges accept")
	for _, n in ipairs(nets) do
		w(string.format("\t\tiifname %s oifname %s accept", q(n.bridge), q(n.bridge)))
	end
	w("\t\tiifname @bridges oifname @bridges drop")
	for _, n in ipairs(nets) do
		if n.internal == 1 then
			w(string.format("\t\tiifname %s drop", q(n.bridge)))
		end
	end
	w("\t\toifname @bridges drop")
	w("\t}")
	-- guests and the host: only DNS on the gateway and ping, unless host_access = "all";
	-- the daemon's API port is refused in every case
	w("\tchain input {")
	w("\t\ttype filter hook input priority filter; policy accept;")
	w("\t\tiifname != @bridges accept")
	w("\t\tct state established,related accept")
	local ap = api_port()
	if ap then
		w(string.format("\t\ttcp dport %d drop", ap))
	end
	if CFG.dns then
		w("\t\tudp dport 53 fib daddr . iif type local accept")
	end
	w("\t\ticmp type echo-request accept")
	if CFG.host_access ~= "all" then
		w("\t\tdrop")
	end
	w("\t}")
	w("}")

	-- layer 2: what a guest may send into its bridge, and no guest-to-guest agent traffic
	w("table bridge " .. T .. " {")
	if #taps > 0 then
		w("\tset taps { type ifname; elements = " .. set_of(taps, q) .. " }")
	else
		w("\tset taps { type ifname; }")
	end
	w("\tchain prerouting {")
	w("\t\ttype filter hook prerouting priority filter; policy accept;")
	for _, e in ipairs(eps) do
		local t = q(e.tap)
		w(string.format("\t\tiifname %s ether saddr != %s drop", t, e.mac))
		w(string.format("\t\tiifname %s ether type ip ip saddr != %s drop", t, e.ip))
		w(string.format("\t\tiifname %s ether type arp arp saddr ip != %s drop", t, e.ip))
		w(string.format("\t\tiifname %s ether type ip6 drop", t))
	end
	w("\t}")
	w("\tchain forward {")
	w("\t\ttype filter hook forward priority filter; policy accept;")
	w(string.format("\t\tiifname @taps oifname @taps tcp dport %d drop", CFG.agent_port))
	w("\t}")
	w("}")
	return table.concat(o, "\n") .. "\n"
end

local function delete_nft()
	local T = CFG.table
	return run({ "nft", "-f", "-" }, table.concat({ "table inet " .. T, "delete table inet " .. T,
		"table bridge " .. T, "delete table bridge " .. T }, "\n") .. "\n")
end

-- Rewrite the table from the database. With no network left the table is deleted; a
-- daemon that never had a network never touches nftables at all.
local nft_written = false
local function apply_nft()
	if mode() ~= "bridge" then
		return true
	end
	if not db.row("SELECT 1 AS x FROM net_networks LIMIT 1") then
		if nft_written then
			nft_written = false
			return delete_nft()
		end
		return true
	end
	nft_written = true
	return run({ "nft", "-f", "-" }, render())
end

-- ---------------------------------------------------------------------------------------
-- bridges, taps, DNS
-- ---------------------------------------------------------------------------------------

-- Outbound NAT needs forwarding on the bridge (set per bridge) and on the interface the
-- replies come back through: the uplink. Never the global switch, never other interfaces.
local function ensure_uplink_forwarding()
	if CFG.uplink_forwarding ~= "auto" then
		return
	end
	if not db.row("SELECT 1 AS x FROM net_networks WHERE internal = 0 LIMIT 1") then
		return
	end
	local r = run({ "ip", "-j", "-4", "route", "show", "default" })
	local ok, routes = pcall(json.decode, r and r.stdout or "[]")
	for _, rt in ipairs(ok and type(routes) == "table" and routes or {}) do
		local dev = rt.dev
		if type(dev) == "string" and dev:match("^[%w%.%-_]+$")
			and sysctl_read("net/ipv4/conf/" .. dev .. "/forwarding") == "0" then
			local done, msg = M._sysctl("net/ipv4/conf/" .. dev .. "/forwarding", "1")
			if done then
				log.warn("net: enabled IPv4 forwarding on the uplink %s (outbound NAT and published ports "
					.. "need it; MOONBOX_NET_UPLINK_FORWARDING=off leaves it to you)", dev)
			else
				log.warn("net: cannot enable forwarding on %s: %s", dev, tostring(msg))
			end
		end
	end
end

local function bridge_mac(id)
	return string.format("02:6d:ff:%02x:%02x:%02x", (id >> 16) & 255, (id >> 8) & 255, id & 255)
end

local function ensure_bridge(n, existing)
	local c = parse_cidr(n.subnet)
	local cmds = {}
	if not existing then
		cmds[#cmds + 1] = string.format("link add %s address %s mtu %d type bridge stp_state 0 forward_delay 0",
			n.bridge, bridge_mac(n.id), n.mtu)
	end
	cmds[#cmds + 1] = string.format("link set dev %s alias %s", n.bridge, alias_for("network:" .. n.name))
	cmds[#cmds + 1] = string.format("addr replace %s/%d dev %s", n.gateway, c.len, n.bridge)
	cmds[#cmds + 1] = string.format("link set dev %s up", n.bridge)
	local ok, msg, code = ip_batch(cmds)
	if not ok then
		return nil, msg, code
	end
	-- per-interface settings only: forward what the guests send, no IPv6 on the bridge
	M._sysctl("net/ipv4/conf/" .. n.bridge .. "/forwarding", "1")
	M._sysctl("net/ipv6/conf/" .. n.bridge .. "/disable_ipv6", "1")
	ensure_uplink_forwarding()
	return true
end

local function make_tap(e, bridge, mtu)
	return ip_batch({
		string.format("tuntap add dev %s mode tap", e.tap),
		string.format("link set dev %s alias %s", e.tap, alias_for(e.owner)),
		string.format("link set dev %s mtu %d master %s up", e.tap, mtu, bridge),
	})
end

local function delete_links(names)
	local cmds = {}
	for _, nm in ipairs(names) do
		cmds[#cmds + 1] = "link del dev " .. nm
	end
	return ip_batch(cmds, true)
end

local function dns_refresh(n)
	local srv = dns_servers[n.id]
	if not srv then
		return
	end
	local names = {}
	for _, e in ipairs(db.query("SELECT * FROM net_endpoints WHERE network_id = ?", n.id)) do
		if e.name and e.name ~= "" then
			names[e.name:lower()] = e.ip
		end
		for _, a in ipairs(e.aliases and json.decode(e.aliases) or {}) do
			names[a:lower()] = e.ip
		end
	end
	srv:set(names)
end

local function dns_start(n)
	if not CFG.dns or dns_servers[n.id] then
		return
	end
	local srv, msg = M._dns_start(n.gateway, 53)
	if not srv then
		log.warn("net: no DNS responder on %s (%s): guests get the host's resolvers", n.gateway, msg)
		return
	end
	srv:upstreams(upstreams())
	dns_servers[n.id] = srv
	dns_refresh(n)
end

local function dns_stop(id)
	if dns_servers[id] then
		dns_servers[id]:close()
		dns_servers[id] = nil
	end
end

-- ---------------------------------------------------------------------------------------
-- networks
-- ---------------------------------------------------------------------------------------

local NAME_RE = "^[%w][%w_.%-]*$"

local function host_routes()
	local r = run({ "ip", "-j", "-4", "route", "show" })
	if not r then
		return {}
	end
	local ok, list = pcall(json.decode, r.stdout)
	return ok and type(list) == "table" and list or {}
end

-- subnet conflicts with networks we own or routes of the host that are not ours
local function subnet_conflict(c, skip_bridge)
	for _, n in ipairs(net_rows()) do
		local o = parse_cidr(n.subnet)
		if o and overlaps(c, o) then
			return string.format("subnet %s overlaps network %s (%s)", c.text, n.name, n.subnet)
		end
	end
	local mine = {}
	for _, n in ipairs(net_rows()) do
		mine[n.bridge] = true
	end
	for _, r in ipairs(host_routes()) do
		if type(r.dst) == "string" and r.dst ~= "default" and not mine[r.dev] and r.dev ~= skip_bridge then
			local d = r.dst:find("/") and r.dst or (r.dst .. "/32")
			local a, l = d:match("^([%d%.]+)/(%d+)$")
			local n = ip2n(a)
			if n then
				l = tonumber(l)
				local size = 1 << (32 - l)
				local o = { first = n - n % size, last = n - n % size + size - 1 }
				if overlaps(c, o) then
					return string.format("subnet %s overlaps the host route %s dev %s", c.text, r.dst, tostring(r.dev))
				end
			end
		end
	end
end

local function pick_subnet()
	local pool = parse_cidr(CFG.pool)
	if not pool then
		return nil, "invalid MOONBOX_NET_POOL " .. tostring(CFG.pool)
	end
	local size = 1 << (32 - CFG.pool_prefix)
	for base = pool.first, pool.last, size do
		local c = { net = base, len = CFG.pool_prefix, first = base, last = base + size - 1,
			text = n2ip(base) .. "/" .. CFG.pool_prefix }
		if not subnet_conflict(c) then
			return c
		end
	end
	return nil, "no free subnet left in the pool " .. CFG.pool
end

local function insert_network(spec)
	return db.transaction(function()
		local now = timer.time and math.floor(timer.time()) or os.time()
		local _, id = db.run([[INSERT INTO net_networks(name, bridge, subnet, gateway, internal, is_default, mtu, labels, created_at)
			VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)]], spec.name, spec.bridge or ("tmp-" .. spec.name), spec.subnet,
			spec.gateway, spec.internal and 1 or 0, spec.is_default and 1 or 0, spec.mtu,
			json.encode(spec.labels or {}), now)
		if not spec.bridge then
			local b = string.format("%s%x", CFG.bridge_prefix, id)
			db.run("UPDATE net_networks SET bridge = ? WHERE id = ?", b, id)
		end
		return id
	end)
end

local function create_network_locked(spec)
	if net_by_name(spec.name) then
		return fail("network " .. spec.name .. " already exists", "conflict")
	end
	local c
	if spec.subnet then
		local err
		c, err = parse_cidr(spec.subnet)
		if not c then
			return fail("subnet: " .. err)
		end
		local why = subnet_conflict(c, spec.bridge)
		if why then
			return fail(why, "conflict")
		end
	else
		local err
		c, err = pick_subnet()
		if not c then
			return fail(err, "no_space")
		end
	end
	local gw = c.first + 1
	if spec.gateway then
		gw = ip2n(spec.gateway)
		if not gw then
			return fail("gateway: not an IPv4 address: " .. tostring(spec.gateway))
		end
		if not in_subnet(c, gw) then
			return fail("gateway: " .. spec.gateway .. " is not a host address of " .. c.text)
		end
	end
	local id = insert_network({ name = spec.name, bridge = spec.bridge, subnet = c.text, gateway = n2ip(gw),
		internal = spec.internal, is_default = spec.is_default, mtu = spec.mtu or CFG.mtu, labels = spec.labels })
	local n = db.row("SELECT * FROM net_networks WHERE id = ?", id)
	if mode() == "bridge" then
		local ls = links() or {}
		local existing = ls[n.bridge]
		if existing and not ours(existing) then
			db.run("DELETE FROM net_networks WHERE id = ?", id)
			return fail("interface " .. n.bridge .. " exists and is not moonbox's", "conflict")
		end
		local ok, msg, code = ensure_bridge(n, existing)
		if ok then
			ok, msg, code = apply_nft()
		end
		if not ok then
			db.run("DELETE FROM net_networks WHERE id = ?", id)
			if not existing then
				delete_links({ n.bridge })
			end
			apply_nft()
			return nil, msg, code
		end
		dns_start(n)
	end
	events.emit("network.create", { name = n.name, subnet = n.subnet, bridge = n.bridge })
	return network_record(n)
end

local function validate_network_spec(spec)
	if type(spec) ~= "table" then
		error("net.create_network: expected a table", 3)
	end
	if type(spec.name) ~= "string" or spec.name == "" then
		return fail("name: a non-empty string is required")
	end
	if #spec.name > 64 or not spec.name:match(NAME_RE) then
		return fail("name: only letters, digits, '_', '.', '-' (64 at most), starting with a letter or digit")
	end
	if spec.subnet ~= nil and type(spec.subnet) ~= "string" then
		return fail("subnet: must be a string like 10.90.0.0/24")
	end
	if spec.gateway ~= nil and type(spec.gateway) ~= "string" then
		return fail("gateway: must be an IPv4 address")
	end
	if spec.gateway and not spec.subnet then
		return fail("gateway: needs a subnet")
	end
	if spec.internal ~= nil and type(spec.internal) ~= "boolean" then
		return fail("internal: must be a boolean")
	end
	if spec.mtu ~= nil and (math.type(spec.mtu) ~= "integer" or spec.mtu < 576 or spec.mtu > 9000) then
		return fail("mtu: an integer between 576 and 9000")
	end
	if spec.labels ~= nil and type(spec.labels) ~= "table" then
		return fail("labels: must be an object")
	end
	return true
end

function M.create_network(spec)
	local ok, msg, code = validate_network_spec(spec)
	if not ok then
		return nil, msg, code
	end
	if spec.name == CFG.default_network then
		return fail("network " .. spec.name .. " already exists", "conflict")
	end
	if mode() ~= "bridge" then
		return fail("user networks need CAP_NET_ADMIN (running in rootless user mode)", "unsupported")
	end
	return locked(create_network_locked, {
		name = spec.name, subnet = spec.subnet, gateway = spec.gateway,
		internal = spec.internal, mtu = spec.mtu, labels = spec.labels,
	})
end

local function ensure_default_locked()
	local n = db.row("SELECT * FROM net_networks WHERE is_default = 1")
	if n then
		if mode() == "bridge" then
			local ls, msg, code = links()
			if not ls then
				return nil, msg, code
			end
			local ok
			ok, msg, code = ensure_bridge(n, ls[n.bridge])
			if not ok then
				return nil, msg, code
			end
			dns_start(n)
		end
		return network_record(n)
	end
	return create_network_locked({ name = CFG.default_network, bridge = CFG.default_bridge,
		subnet = CFG.default_subnet, is_default = true })
end

function M.ensure_default()
	if mode() ~= "bridge" then
		return { name = "user", mode = "user", subnet = "10.0.2.0/24", gateway = "10.0.2.2", default = true }
	end
	return locked(ensure_default_locked)
end

function M.networks()
	local out = {}
	for _, n in ipairs(net_rows()) do
		out[#out + 1] = network_record(n)
	end
	return json.array(out)
end

function M.inspect(name)
	if type(name) ~= "string" then
		error("net.inspect: name must be a string", 2)
	end
	local n = net_by_name(name)
	if not n then
		return fail("no network " .. name, "not_found")
	end
	return network_record(n, true)
end

function M.remove_network(name)
	if type(name) ~= "string" then
		error("net.remove_network: name must be a string", 2)
	end
	return locked(function()
		local n = net_by_name(name)
		if not n then
			return fail("no network " .. name, "not_found")
		end
		local cnt = db.row("SELECT count(*) AS c FROM net_endpoints WHERE network_id = ?", n.id).c
		if cnt > 0 then
			return fail(string.format("network %s is in use by %d endpoint(s)", name, cnt), "conflict")
		end
		dns_stop(n.id)
		db.run("DELETE FROM net_networks WHERE id = ?", n.id)
		if mode() == "bridge" then
			local ok, msg, code = apply_nft()
			if not ok then
				log.warn("net: nft after removing %s: %s", name, msg)
			end
			ok, msg, code = delete_links({ n.bridge })
			if not ok then
				return nil, msg, code
			end
		end
		events.emit("network.remove", { name = name })
		return true
	end)
end

-- ---------------------------------------------------------------------------------------
-- endpoints
-- ---------------------------------------------------------------------------------------

local function allocate(n, want)
	local c = parse_cidr(n.subnet)
	local gw = ip2n(n.gateway)
	if want then
		local w = ip2n(want)
		if not w then
			return fail("ip: not an IPv4 address: " .. tostring(want))
		end
		if not in_subnet(c, w) then
			return fail("ip: " .. want .. " is not a host address of " .. n.subnet)
		end
		if w == gw then
			return fail("ip: " .. want .. " is the gateway", "conflict")
		end
		if db.row("SELECT 1 AS x FROM net_endpoints WHERE network_id = ? AND ip_num = ?", n.id, w) then
			return fail("ip: " .. want .. " is already in use", "conflict")
		end
		return w
	end
	-- lowest free host address (not the network, broadcast or gateway address)
	local cand = c.first + 1
	for _, r in ipairs(db.query("SELECT ip_num FROM net_endpoints WHERE network_id = ? ORDER BY ip_num", n.id)) do
		if cand == gw then
			cand = cand + 1
		end
		if r.ip_num > cand then
			break
		end
		if r.ip_num == cand then
			cand = cand + 1
		end
	end
	if cand == gw then
		cand = cand + 1
	end
	if cand >= c.last then
		return fail("network " .. n.name .. " has no free address", "no_space")
	end
	return cand
end

local function ep_row(owner, network_id)
	if network_id then
		return db.row("SELECT * FROM net_endpoints WHERE owner = ? AND network_id = ?", owner, network_id)
	end
	return db.row("SELECT * FROM net_endpoints WHERE owner = ? ORDER BY id LIMIT 1", owner)
end

local function free_port(proto)
	local l = M._listen(proto or "tcp", "127.0.0.1", 0)
	if not l then
		return nil
	end
	local p = l:stats().port
	l:close()
	return p
end

local function attach_user(owner, opts)
	local e = db.row("SELECT * FROM net_endpoints WHERE owner = ? AND network_id IS NULL", owner)
	if not e then
		local agent = free_port("tcp")
		if not agent then
			return fail("no free local port for the agent forward", "no_space")
		end
		local _, id = db.run([[INSERT INTO net_endpoints(network_id, owner, name, aliases, ip, ip_num, mac, tap, agent_port, created_at)
			VALUES(NULL, ?, ?, ?, '10.0.2.15', ?, ?, NULL, ?, ?)]], owner, opts.name, json.encode(opts.aliases or {}),
			ip2n("10.0.2.15"), opts.mac or mac_for(ip2n("10.0.2.15")), agent, math.floor(timer.time()))
		e = db.row("SELECT * FROM net_endpoints WHERE id = ?", id)
	end
	return endpoint_record(e, nil)
end

local function attach_locked(network, owner, opts)
	if mode() ~= "bridge" then
		return attach_user(owner, opts)
	end
	local n
	if network == nil or network == CFG.default_network then
		local d, msg, code = ensure_default_locked()
		if not d then
			return nil, msg, code
		end
		n = net_by_name(d.name)
	else
		n = net_by_name(network)
	end
	if not n then
		return fail("no network " .. tostring(network), "not_found")
	end
	local e = ep_row(owner, n.id)
	if e then -- idempotent: the same owner on the same network gets its endpoint back
		local ls = links() or {}
		if not ls[e.tap] then
			local ok, msg, code = make_tap(e, n.bridge, n.mtu)
			if not ok then
				return nil, msg, code
			end
		end
		return endpoint_record(e, n)
	end
	local ipn, msg, code = allocate(n, opts.ip)
	if not ipn then
		return nil, msg, code
	end
	if opts.mac and not valid_mac(opts.mac) then
		return fail("mac: not a unicast MAC address: " .. tostring(opts.mac))
	end
	if opts.name and db.row("SELECT 1 AS x FROM net_endpoints WHERE network_id = ? AND lower(name) = lower(?)", n.id, opts.name) then
		return fail("name " .. opts.name .. " is already used on network " .. n.name, "conflict")
	end
	local id = db.transaction(function()
		local _, rid = db.run([[INSERT INTO net_endpoints(network_id, owner, name, aliases, ip, ip_num, mac, tap, created_at)
			VALUES(?, ?, ?, ?, ?, ?, ?, NULL, ?)]], n.id, owner, opts.name, json.encode(opts.aliases or {}), n2ip(ipn), ipn,
			(opts.mac or mac_for(ipn)):lower(), math.floor(timer.time()))
		db.run("UPDATE net_endpoints SET tap = ? WHERE id = ?", string.format("%s%x", CFG.tap_prefix, rid), rid)
		return rid
	end)
	e = db.row("SELECT * FROM net_endpoints WHERE id = ?", id)
	local ok
	ok, msg, code = make_tap(e, n.bridge, n.mtu)
	if ok then
		ok, msg, code = apply_nft()
	end
	if not ok then
		db.run("DELETE FROM net_endpoints WHERE id = ?", id)
		delete_links({ e.tap })
		apply_nft()
		return nil, msg, code
	end
	dns_refresh(n)
	events.emit("network.attach", { network = n.name, owner = owner, ip = e.ip, tap = e.tap })
	return endpoint_record(e, n)
end

function M.attach(network, owner, opts)
	if network ~= nil and type(network) ~= "string" then
		error("net.attach: network must be a string or nil", 2)
	end
	if type(owner) ~= "string" or owner == "" then
		error("net.attach: owner must be a non-empty string", 2)
	end
	opts = opts or {}
	if type(opts) ~= "table" then
		error("net.attach: opts must be a table", 2)
	end
	if opts.ip ~= nil and type(opts.ip) ~= "string" then
		return fail("ip: must be a string")
	end
	if opts.name ~= nil and (type(opts.name) ~= "string" or not opts.name:match(NAME_RE) or #opts.name > 63) then
		return fail("name: letters, digits, '_', '.', '-' only")
	end
	if opts.aliases ~= nil then
		if type(opts.aliases) ~= "table" then
			return fail("aliases: must be a list of names")
		end
		for _, a in ipairs(opts.aliases) do
			if type(a) ~= "string" or not a:match(NAME_RE) then
				return fail("aliases: invalid name " .. tostring(a))
			end
		end
	end
	return locked(attach_locked, network, owner, opts)
end

-- the endpoint(s) of an owner, as attach returned them
function M.endpoints(owner)
	local out = {}
	for _, e in ipairs(db.query("SELECT * FROM net_endpoints WHERE owner = ? ORDER BY id", owner)) do
		local n = e.network_id and db.row("SELECT * FROM net_networks WHERE id = ?", e.network_id)
		out[#out + 1] = endpoint_record(e, n)
	end
	return json.array(out)
end

-- the vm plugin's `nics` entry for an owner (user mode: includes the current hostfwds)
function M.nic(owner)
	local e = ep_row(owner)
	if not e then
		return fail("no endpoint for " .. tostring(owner), "not_found")
	end
	local n = e.network_id and db.row("SELECT * FROM net_networks WHERE id = ?", e.network_id)
	return endpoint_record(e, n).nic
end

local function close_ports(rows)
	for _, p in ipairs(rows) do
		if proxies[p.id] then
			proxies[p.id]:close()
			proxies[p.id] = nil
		end
	end
end

function M.detach(owner, network)
	if type(owner) ~= "string" then
		error("net.detach: owner must be a string", 2)
	end
	return locked(function()
		local eps
		if network then
			local n = net_by_name(network)
			eps = n and db.query("SELECT * FROM net_endpoints WHERE owner = ? AND network_id = ?", owner, n.id) or {}
		else
			eps = db.query("SELECT * FROM net_endpoints WHERE owner = ?", owner)
		end
		if #eps == 0 then
			return fail("no endpoint for " .. owner, "not_found")
		end
		local taps, nets = {}, {}
		for _, e in ipairs(eps) do
			close_ports(db.query("SELECT id FROM net_ports WHERE endpoint_id = ?", e.id))
			if e.tap then
				taps[#taps + 1] = e.tap
			end
			if e.network_id then
				nets[e.network_id] = true
			end
		end
		db.transaction(function()
			for _, e in ipairs(eps) do
				db.run("DELETE FROM net_ports WHERE endpoint_id = ?", e.id)
				db.run("DELETE FROM net_endpoints WHERE id = ?", e.id)
			end
		end)
		local ok, msg, code = apply_nft()
		if not ok then
			log.warn("net: nft after detaching %s: %s", owner, msg)
		end
		if mode() == "bridge" then
			delete_links(taps)
			local ls = links() or {}
			for _, t in ipairs(taps) do
				if ls[t] then
					return fail("tap " .. t .. " could not be removed", "io")
				end
			end
		end
		for id in pairs(nets) do
			local n = db.row("SELECT * FROM net_networks WHERE id = ?", id)
			if n then
				dns_refresh(n)
			end
		end
		events.emit("network.detach", { owner = owner })
		return true
	end)
end

-- ---------------------------------------------------------------------------------------
-- published ports
-- ---------------------------------------------------------------------------------------

local function parse_port(s, what)
	if s == nil or s == "" then
		return nil
	end
	if not tostring(s):match("^%d+$") then
		return false, what .. ": not a port number: " .. tostring(s)
	end
	local v = tonumber(s)
	if v < 1 or v > 65535 then
		return false, what .. ": " .. s .. " is out of range (1..65535)"
	end
	return v
end

-- "[host_ip:][host_port:]container_port[/proto]" or {host_ip=, host_port=, container_port=, proto=}
local function parse_mapping(p)
	local host_ip, hp, cp, proto
	if type(p) == "string" then
		local body, pr = p:match("^(.-)/(%a+)$")
		if body then
			p, proto = body, pr:lower()
		end
		local parts = {}
		for f in (p .. ":"):gmatch("([^:]*):") do
			parts[#parts + 1] = f
		end
		if #parts == 1 then
			cp = parts[1]
		elseif #parts == 2 then
			hp, cp = parts[1], parts[2]
		elseif #parts == 3 then
			host_ip, hp, cp = parts[1], parts[2], parts[3]
		else
			return fail("ports: cannot parse " .. string.format("%q", p) .. " (want [host_ip:][host_port:]port[/tcp|udp])")
		end
		if tostring(hp or ""):find("-") or tostring(cp):find("-") then
			return fail("ports: port ranges are not supported: " .. p)
		end
	elseif type(p) == "table" then
		host_ip, hp, cp, proto = p.host_ip, p.host_port, p.container_port, p.proto
		if hp ~= nil then
			hp = tostring(math.tointeger(hp) or hp)
		end
		cp = cp ~= nil and tostring(math.tointeger(cp) or cp) or nil
	else
		return fail("ports: each entry must be a string or an object")
	end
	proto = proto or "tcp"
	if proto ~= "tcp" and proto ~= "udp" then
		return fail("ports: protocol must be tcp or udp, not " .. tostring(proto))
	end
	if host_ip == nil or host_ip == "" then
		host_ip = "0.0.0.0"
	end
	if not ip2n(host_ip) then
		return fail("ports: host_ip " .. tostring(host_ip) .. " is not an IPv4 address")
	end
	local c, err = parse_port(cp, "container port")
	if not c then
		return fail("ports: " .. (err or "a container port is required"))
	end
	local h
	h, err = parse_port(hp, "host port")
	if h == false then
		return fail("ports: " .. err)
	end
	return { host_ip = host_ip, host_port = h or 0, container_port = c, proto = proto }
end

local function publish_locked(owner, maps, opts)
	local e = ep_row(owner, nil)
	if opts.network then
		local n = net_by_name(opts.network)
		e = n and ep_row(owner, n.id)
	end
	if not e then
		return fail("no endpoint for " .. owner .. " (attach it first)", "not_found")
	end
	local user = e.network_id == nil
	-- reserve every host port first; any failure releases what was taken
	local ls = {}
	local function undo()
		for _, l in ipairs(ls) do
			l:close()
		end
	end
	for i, m in ipairs(maps) do
		local l, msg, code = M._listen(m.proto, m.host_ip, m.host_port)
		if not l then
			undo()
			if code == "conflict" or msg:find("in use") then
				return fail(string.format("ports: %s:%d/%s is already in use", m.host_ip, m.host_port, m.proto), "conflict")
			end
			if msg:find("not an address", 1, true) or code == "not_found" then
				code = "invalid"
			end
			return fail("ports: " .. m.host_ip .. ": " .. msg, code)
		end
		ls[i] = l
		m.host_port = l:stats().port
		if user then
			m.user_port = free_port(m.proto)
			if not m.user_port then
				undo()
				return fail("no free local port for a user-mode forward", "no_space")
			end
		end
	end
	local ok, ids = pcall(db.transaction, function()
		local out = {}
		for i, m in ipairs(maps) do
			local _, id = db.run([[INSERT INTO net_ports(owner, endpoint_id, proto, host_ip, host_port, container_port, user_port, created_at)
				VALUES(?, ?, ?, ?, ?, ?, ?, ?)]], owner, e.id, m.proto, m.host_ip, m.host_port, m.container_port,
				m.user_port, math.floor(timer.time()))
			out[i] = id
		end
		return out
	end)
	if not ok then
		undo()
		return fail("ports: already published: " .. tostring(ids), "conflict")
	end
	local nok, msg, code = apply_nft()
	if not nok then
		db.transaction(function()
			for _, id in ipairs(ids) do
				db.run("DELETE FROM net_ports WHERE id = ?", id)
			end
		end)
		undo()
		return nil, msg, code
	end
	local out = {}
	for i, m in ipairs(maps) do
		if user then
			ls[i]:forward("127.0.0.1", m.user_port, CFG.udp_idle_ms)
		else
			ls[i]:forward(e.ip, m.container_port, CFG.udp_idle_ms)
		end
		proxies[ids[i]] = ls[i]
		out[i] = port_record(m, e)
	end
	events.emit("network.publish", { owner = owner, ports = out })
	return json.array(out)
end

function M.publish(owner, ports, opts)
	if type(owner) ~= "string" then
		error("net.publish: owner must be a string", 2)
	end
	if type(ports) ~= "table" then
		return fail("ports: must be a list")
	end
	local maps = {}
	for i, p in ipairs(ports) do
		local m, msg, code = parse_mapping(p)
		if not m then
			return nil, msg, code
		end
		for j = 1, i - 1 do
			local o = maps[j]
			if o.proto == m.proto and o.host_port ~= 0 and o.host_port == m.host_port and
				(o.host_ip == m.host_ip or o.host_ip == "0.0.0.0" or m.host_ip == "0.0.0.0") then
				return fail(string.format("ports: host port %d/%s is given twice", m.host_port, m.proto))
			end
		end
		maps[i] = m
	end
	if #maps == 0 then
		return json.array({})
	end
	return locked(publish_locked, owner, maps, opts or {})
end

function M.unpublish(owner)
	if type(owner) ~= "string" then
		error("net.unpublish: owner must be a string", 2)
	end
	return locked(function()
		local rows = db.query("SELECT id FROM net_ports WHERE owner = ?", owner)
		close_ports(rows)
		db.run("DELETE FROM net_ports WHERE owner = ?", owner)
		local ok, msg, code = apply_nft()
		if not ok then
			return nil, msg, code
		end
		return #rows
	end)
end

function M.published(owner)
	local out = {}
	local sql = [[SELECT p.*, e.ip FROM net_ports p JOIN net_endpoints e ON e.id = p.endpoint_id]]
	local rows = owner and db.query(sql .. " WHERE p.owner = ? ORDER BY p.id", owner) or db.query(sql .. " ORDER BY p.id")
	for _, p in ipairs(rows) do
		local r = port_record(p, p)
		r.owner = p.owner
		local l = proxies[p.id]
		r.proxy = l and l:stats() or nil
		out[#out + 1] = r
	end
	return json.array(out)
end

-- ---------------------------------------------------------------------------------------
-- reconcile, teardown, configuration
-- ---------------------------------------------------------------------------------------

local function reconcile_locked()
	local report = { networks = 0, endpoints = 0, ports = 0, taps_created = {}, links_removed = {}, port_errors = {} }
	if mode() == "bridge" then
		local ls, msg, code = links()
		if not ls then
			return nil, msg, code
		end
		local want = {}
		for _, n in ipairs(net_rows()) do
			want[n.bridge] = true
			local ok
			ok, msg, code = ensure_bridge(n, ls[n.bridge])
			if not ok then
				return nil, msg, code
			end
			report.networks = report.networks + 1
			for _, e in ipairs(db.query("SELECT * FROM net_endpoints WHERE network_id = ?", n.id)) do
				want[e.tap] = true
				report.endpoints = report.endpoints + 1
				local l = ls[e.tap]
				if not l then
					ok, msg = make_tap(e, n.bridge, n.mtu)
					if ok then
						report.taps_created[#report.taps_created + 1] = e.tap
					else
						log.warn("net: reconcile: cannot recreate %s: %s", e.tap, msg)
					end
				elseif l.master ~= n.bridge or not l.up then
					ip_batch({ string.format("link set dev %s master %s up", e.tap, n.bridge) })
				end
			end
		end
		-- links that carry our instance's alias but that no row owns: left by a crash
		local stray = {}
		for name, l in pairs(ls) do
			if ours(l) and not want[name] then
				stray[#stray + 1] = name
			end
		end
		table.sort(stray)
		if #stray > 0 then
			delete_links(stray)
			report.links_removed = stray
		end
		local ok
		ok, msg, code = apply_nft()
		if not ok then
			return nil, msg, code
		end
		for _, n in ipairs(net_rows()) do
			dns_start(n)
			dns_refresh(n)
		end
	end
	-- proxies: rebind every published port that has no live listener
	for _, p in ipairs(db.query([[SELECT p.*, e.ip, e.network_id FROM net_ports p
		JOIN net_endpoints e ON e.id = p.endpoint_id ORDER BY p.id]])) do
		report.ports = report.ports + 1
		if not proxies[p.id] then
			local l, msg = M._listen(p.proto, p.host_ip, p.host_port)
			if l then
				if p.network_id then
					l:forward(p.ip, p.container_port, CFG.udp_idle_ms)
				else
					l:forward("127.0.0.1", p.user_port, CFG.udp_idle_ms)
				end
				proxies[p.id] = l
			else
				local s = string.format("%s:%d/%s: %s", p.host_ip, p.host_port, p.proto, msg)
				report.port_errors[#report.port_errors + 1] = s
				log.warn("net: reconcile: cannot listen on %s", s)
			end
		end
	end
	report.taps_created = json.array(report.taps_created)
	report.links_removed = json.array(report.links_removed)
	report.port_errors = json.array(report.port_errors)
	return report
end

function M.reconcile()
	return locked(reconcile_locked)
end

-- Remove everything this instance made: endpoints (only with force), networks, bridges,
-- the nft tables, proxies and DNS responders.
function M.teardown(opts)
	opts = opts or {}
	return locked(function()
		local cnt = db.row("SELECT count(*) AS c FROM net_endpoints").c
		if cnt > 0 and not opts.force then
			return fail(cnt .. " endpoint(s) still attached", "conflict")
		end
		for id, l in pairs(proxies) do
			l:close()
			proxies[id] = nil
		end
		for id in pairs(dns_servers) do
			dns_stop(id)
		end
		local names = {}
		for _, e in ipairs(db.query("SELECT tap FROM net_endpoints WHERE tap IS NOT NULL")) do
			names[#names + 1] = e.tap
		end
		for _, n in ipairs(net_rows()) do
			names[#names + 1] = n.bridge
		end
		db.transaction(function()
			db.run("DELETE FROM net_ports")
			db.run("DELETE FROM net_endpoints")
			db.run("DELETE FROM net_networks")
		end)
		if mode() == "bridge" then
			local ls = links() or {}
			for name, l in pairs(ls) do
				if ours(l) then
					names[#names + 1] = name
				end
			end
			delete_links(names)
			if nft_written or #names > 0 then
				delete_nft()
				nft_written = false
			end
		end
		return true
	end)
end

function M.mode()
	return mode()
end

-- operator settings (before the first network is made); returns the effective settings
function M.configure(t)
	if t ~= nil then
		if type(t) ~= "table" then
			error("net.configure: expected a table", 2)
		end
		for k, v in pairs(t) do
			if CFG[k] == nil and k ~= "mode" then
				error("net.configure: unknown setting " .. tostring(k), 2)
			end
			if k == "mode" and v ~= "bridge" and v ~= "user" and v ~= "auto" then
				error("net.configure: mode must be bridge, user or auto", 2)
			end
			if k == "mode" and v == "auto" then
				v = nil
			end
			CFG[k] = v
		end
		for _, k in ipairs({ "bridge_prefix", "tap_prefix" }) do
			if #CFG[k] > 6 then
				error("net.configure: " .. k .. " is longer than 6 characters", 2)
			end
		end
		if #CFG.default_bridge > IFNAME_MAX then
			error("net.configure: default_bridge is longer than 15 characters", 2)
		end
	end
	local c = {}
	for k, v in pairs(CFG) do
		c[k] = v
	end
	c.mode = mode()
	return c
end

-- exposed for tests and tools
M.render = render
M.parse_cidr = parse_cidr
M.parse_port = parse_mapping
