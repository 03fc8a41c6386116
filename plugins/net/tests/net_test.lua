-- The net and volume Lua APIs and REST endpoints against real bridges, taps, nftables
-- and sockets (no VMs). Run by api_test.sh, which sets test-only names:
-- bridge mbr0, prefixes mbrn/mbrt, table moonbox_tapi, subnets 10.254.0.0/16 and
-- 10.250.0.0/16 for the pool.
local TABLE = "moonbox_tapi"
local NETTOOL = os.getenv("MB_NETTOOL")
local PIDS = os.getenv("MB_PIDS")
local SOCK = moonbox.config("socket")

local function sh(cmd)
  local r = assert(proc.run({ "sh", "-c", cmd }, { timeout = 60 }))
  return r.stdout, r.code
end

local function links()
  local set, n = {}, 0
  for name in sh("ip -o link show"):gmatch("%d+: ([%w%-_.]+)[@:]") do
    if name:match("^mbr") then
      set[name] = true
      n = n + 1
    end
  end
  return set, n
end

local function nft_table()
  local out = sh("nft list table inet " .. TABLE .. " 2>/dev/null; nft list table bridge " .. TABLE .. " 2>/dev/null")
  return out
end

local function free_port()
  local l = net._listen("tcp", "127.0.0.1", 0)
  local p = l:stats().port
  l:close()
  return p
end

-- a server in another process; its pid is recorded for the wrapper's trap
local function bg(cmd)
  local pid = tonumber((sh(cmd .. " >/dev/null 2>&1 & echo $!")))
  fs.append(PIDS, pid .. "\n")
  timer.sleep(0.2)
  return pid
end

local function call(method, path, body)
  local r = assert(http.request { method = method, url = "http://moonbox" .. path, unix_socket = SOCK,
    body = body and json.encode(body) or nil, headers = body and { ["content-type"] = "application/json" } or nil })
  local okj, decoded = pcall(json.decode, r.body)
  return r.status, okj and decoded or r.body
end

local function count(sql, ...)
  return db.row("SELECT count(*) AS c FROM " .. sql, ...).c
end

return {
  test_01_default_network = function()
    eq(net.mode(), "bridge")
    local d = ok(net.ensure_default())
    eq(d.bridge, "mbr0")
    eq(d.subnet, "10.254.0.0/16")
    eq(d.gateway, "10.254.0.1")
    local again = ok(net.ensure_default())
    eq(again.id, d.id, "ensure_default is idempotent")
    ok(links().mbr0)
    eq(sh("cat /proc/sys/net/ipv4/conf/mbr0/forwarding"), "1\n", "forwarding on the bridge only")
    ok(nft_table():find("table inet " .. TABLE, 1, true), "nft table written")
  end,

  test_02_bad_networks_leave_nothing = function()
    local before_links = select(2, links())
    local before_nft = nft_table()
    local before_rows = count("net_networks")
    local cases = {
      { { name = "n1", subnet = "10.0.0.0/33" }, "invalid", "subnet" },
      { { name = "n1", subnet = "banana" }, "invalid", "subnet" },
      { { name = "n1", subnet = "10.60.0.5/24" }, "invalid", "host bits" },
      { { name = "n1", subnet = "10.254.8.0/24" }, "conflict", "overlaps network" },
      { { name = "n1", subnet = "10.0.0.0/8" }, "conflict", "overlaps network" },
      { { name = "n1", subnet = "10.61.0.0/24", gateway = "10.62.0.1" }, "invalid", "gateway" },
      { { name = "n1", subnet = "10.61.0.0/24", gateway = "10.61.0.0" }, "invalid", "gateway" },
      { { name = "bad/name" }, "invalid", "name" },
      { { name = "" }, "invalid", "name" },
      { { name = "bridge" }, "conflict", "exists" },
      { { name = "n1", mtu = 10 }, "invalid", "mtu" },
    }
    -- a route of the host that is not ours (eth0's subnet here)
    for line in sh("ip -4 route show"):gmatch("[^\n]+") do
      local dst, dev = line:match("^([%d%.]+/%d+) dev (%S+)")
      if dst and not dev:match("^mbr") then
        cases[#cases + 1] = { { name = "n1", subnet = dst }, "conflict", "host route" }
        break
      end
    end
    for _, c in ipairs(cases) do
      local n, msg, code = net.create_network(c[1])
      eq(n, nil, json.encode(c[1]))
      eq(code, c[2], json.encode(c[1]) .. " " .. tostring(msg))
      ok(msg:find(c[3], 1, true), "message names the problem: " .. msg)
    end
    eq(select(2, links()), before_links, "no bridge left behind")
    eq(nft_table(), before_nft, "nft table unchanged")
    eq(count("net_networks"), before_rows, "no row left behind")
  end,

  test_03_user_network_from_the_pool = function()
    local n = ok(net.create_network { name = "api-n1", labels = { team = "a" } })
    eq(n.subnet, "10.250.0.0/24")
    eq(n.gateway, "10.250.0.1")
    ok(links()[n.bridge])
    local n2 = ok(net.create_network { name = "api-n2", subnet = "10.249.7.0/24", gateway = "10.249.7.254", internal = true })
    eq(n2.gateway, "10.249.7.254")
    eq(n2.internal, true)
    local tbl = nft_table()
    ok(tbl:find('iifname "' .. n2.bridge .. '" drop', 1, true), "internal network has no way out")
    eq(#net.networks(), 3)
    eq(net.inspect("api-n1").labels, { team = "a" })
    local _, _, code = net.inspect("nope")
    eq(code, "not_found")
    ok(net.remove_network("api-n2"))
    ok(not links()[n2.bridge], "bridge removed with its network")
  end,

  test_04_ipam = function()
    local a = ok(net.attach(nil, "own-a", { name = "a" }))
    eq(a.ip, "10.254.0.2", "the gateway .1 is reserved")
    eq(a.address, "10.254.0.2/16")
    eq(a.dns, { "10.254.0.1" })
    eq(a.nic.type, "tap")
    ok(links()[a.tap], "tap created")
    ok(sh("ip -d link show " .. a.tap):find("master mbr0", 1, true), "tap on the bridge")
    local a2 = ok(net.attach(nil, "own-a"))
    eq(a2.ip, a.ip, "attach is idempotent per owner and network")
    local _, msg, code = net.attach(nil, "own-b", { ip = "10.254.0.2" })
    eq(code, "conflict", msg)
    _, msg, code = net.attach(nil, "own-b", { ip = "10.254.0.1" })
    eq(code, "conflict", msg)
    _, msg, code = net.attach(nil, "own-b", { ip = "10.99.0.1" })
    eq(code, "invalid", msg)
    _, msg, code = net.attach(nil, "own-b", { name = "a" })
    eq(code, "conflict", "names are unique per network: " .. tostring(msg))
    _, msg, code = net.attach("nope", "own-b")
    eq(code, "not_found", msg)
    local b = ok(net.attach(nil, "own-b", { ip = "10.254.0.9", mac = "02:00:00:00:00:09" }))
    eq(b.mac, "02:00:00:00:00:09")
    local c = ok(net.attach(nil, "own-c"))
    eq(c.ip, "10.254.0.3", "lowest free address")
    -- a /30 has one address besides the gateway
    ok(net.create_network { name = "tiny", subnet = "10.248.0.0/30" })
    ok(net.attach("tiny", "own-t1"))
    _, msg, code = net.attach("tiny", "own-t2")
    eq(code, "no_space", msg)
    for _, o in ipairs({ "own-a", "own-b", "own-c", "own-t1" }) do
      ok(net.detach(o))
    end
    ok(net.remove_network("tiny"))
    eq(count("net_endpoints"), 0)
  end,

  test_05_concurrent_attach = function()
    local hs = {}
    for i = 1, 10 do
      hs[i] = task.spawn(function()
        return net.attach(nil, "par-" .. i)
      end)
    end
    local seen = {}
    for i = 1, 10 do
      local done, ep = hs[i]:wait()
      ok(done and ep, "attach " .. i)
      ok(not seen[ep.ip], "distinct address " .. ep.ip)
      seen[ep.ip] = true
    end
    for i = 1, 10 do
      ok(net.detach("par-" .. i))
    end
  end,

  test_06_bad_ports_leave_nothing = function()
    ok(net.attach(nil, "own-p"))
    local taken_tcp, taken_udp = free_port(), free_port()
    local tpid = bg(NETTOOL .. " peer " .. taken_tcp)
    local upid = bg(NETTOOL .. " udp-echo " .. taken_udp)
    local p1, p2 = free_port(), free_port()
    local before = nft_table()
    local cases = {
      { { "0:80" }, "invalid", "out of range" },
      { { "65536:80" }, "invalid", "out of range" },
      { { "8080:0" }, "invalid", "out of range" },
      { { "8080:99999" }, "invalid", "out of range" },
      { { "abc:80" }, "invalid", "not a port" },
      { { "8080:80/sctp" }, "invalid", "tcp or udp" },
      { { "1.2.3:8080:80" }, "invalid", "host_ip" },
      { { "8000-8010:80" }, "invalid", "ranges" },
      { { p1 .. ":80", p1 .. ":81" }, "invalid", "twice" },
      { { "127.0.0.1:" .. p1 .. ":80", p1 .. ":81" }, "invalid", "twice" },
      { { p1 .. ":80", taken_tcp .. ":81" }, "conflict", "in use" },
      { { p2 .. ":53/udp", taken_udp .. ":53/udp" }, "conflict", "in use" },
      { { "192.0.2.123:" .. p1 .. ":80" }, "invalid", "not an address of this host" },
    }
    for _, c in ipairs(cases) do
      local r, msg, code = net.publish("own-p", c[1])
      eq(r, nil, json.encode(c[1]))
      eq(code, c[2], json.encode(c[1]) .. " " .. tostring(msg))
      ok(msg:find(c[3], 1, true), "message: " .. tostring(msg))
    end
    eq(#net.published("own-p"), 0, "nothing published")
    eq(nft_table(), before, "nft table unchanged")
    -- the ports of the failed requests were released: we can take them now
    for _, p in ipairs({ p1, p2 }) do
      local l = ok(net._listen("tcp", "0.0.0.0", p))
      l:close()
      l = ok(net._listen("udp", "0.0.0.0", p))
      l:close()
    end
    local _, _, code = net.publish("nobody", { "80" })
    eq(code, "not_found")
    proc.kill(tpid, 15)
    proc.kill(upid, 15)
  end,

  test_07_publish_reserves_and_renders = function()
    local hp = free_port()
    local pub = ok(net.publish("own-p", { hp .. ":80", "127.0.0.1::81", { container_port = 53, proto = "udp" } }))
    eq(pub[1].host_port, hp)
    eq(pub[1].host_ip, "0.0.0.0")
    ok(pub[2].host_port > 0, "a free port was chosen")
    eq(pub[2].host_ip, "127.0.0.1")
    eq(pub[3].proto, "udp")
    local tbl = nft_table()
    ok(tbl:find("tcp dport " .. hp .. " dnat ip to 10.254.0.2:80", 1, true), "DNAT rule")
    ok(not tbl:find("dport " .. pub[2].host_port, 1, true), "no DNAT for a loopback-only port")
    ok(tbl:find("udp dport " .. pub[3].host_port .. " dnat ip to 10.254.0.2:53", 1, true), "UDP DNAT rule")
    -- the reservation is a real bound socket: another process cannot take the port
    local _, code = sh("python3 -c 'import socket; s=socket.socket(); s.bind((\"0.0.0.0\", " .. hp .. "))' 2>/dev/null")
    ok(code ~= 0, "the host port is held")
    -- and moonbox itself refuses it for another container
    ok(net.attach(nil, "own-q"))
    local _, msg, code2 = net.publish("own-q", { hp .. ":80" })
    eq(code2, "conflict", msg)
    eq(#net.published("own-p"), 3)
    eq(net.unpublish("own-p"), 3)
    eq(#net.published("own-p"), 0)
    ok(not nft_table():find("dport " .. hp, 1, true), "DNAT rule gone")
    local l = ok(net._listen("tcp", "0.0.0.0", hp), "port released")
    l:close()
    ok(net.detach("own-q"))
  end,

  test_08_proxy_tcp_bytes_and_backpressure = function()
    -- the proxy on its own, towards a sink on the host: every byte arrives, in order
    local sinkp, hp = free_port(), free_port()
    local spid = bg(NETTOOL .. " sink " .. sinkp)
    local l = ok(net._listen("tcp", "127.0.0.1", hp))
    ok(l:forward("127.0.0.1", sinkp))
    local hs = {}
    for i = 1, 4 do
      hs[i] = task.spawn(function()
        return proc.run({ NETTOOL, "send", "127.0.0.1", tostring(hp), tostring(32 * 1024 * 1024) }, { timeout = 120 })
      end)
    end
    for i = 1, 4 do
      local _, r = hs[i]:wait()
      eq(r.code, 0, "sender " .. i .. ": " .. tostring(r.stderr))
      ok(r.stdout:find("bytes=33554432", 1, true), r.stdout)
    end
    local st = l:stats()
    eq(st.total, 4)
    eq(st.bytes_in, 4 * 32 * 1024 * 1024)
    timer.sleep(0.2)
    eq(l:stats().active, 0, "connections closed after EOF both ways")
    -- a target that refuses: the client is closed, the listener stays
    proc.kill(spid, 15)
    timer.sleep(0.2)
    local r = assert(proc.run({ NETTOOL, "tcp-ask", "127.0.0.1", tostring(hp), "2000" }))
    ok(l:stats().failed >= 1, "refused connect counted")
    ok(r.stdout ~= "timeout\n", "client not left hanging: " .. r.stdout)
    l:close()
  end,

  test_09_proxy_udp_sessions_and_idle_timeout = function()
    local echo, hp = free_port(), free_port()
    local pid = bg(NETTOOL .. " udp-echo " .. echo)
    local l = ok(net._listen("udp", "127.0.0.1", hp))
    ok(l:forward("127.0.0.1", echo, 300))
    for i = 1, 3 do
      local r = assert(proc.run({ NETTOOL, "udp-ask", "127.0.0.1", tostring(hp), "m" .. i, "3000" }))
      eq(r.stdout, "echo:m" .. i .. "\n")
    end
    eq(l:stats().total, 3, "one session per client address")
    ok(l:stats().active >= 1)
    local gone = false
    for _ = 1, 50 do
      if l:stats().active == 0 then
        gone = true
        break
      end
      timer.sleep(0.1)
    end
    ok(gone, "idle sessions expire")
    l:close()
    proc.kill(pid, 15)
  end,

  test_10_fifty_cycles_leave_nothing = function()
    local _, before = links()
    for i = 1, 50 do
      local ep = ok(net.attach(nil, "cycle-" .. i, { name = "cyc" }))
      eq(ep.ip, "10.254.0.3", "cycle " .. i .. " reuses the lowest free address")
      ok(net.publish("cycle-" .. i, { "127.0.0.1::80", "0.0.0.0::81/udp" }))
      ok(net.detach("cycle-" .. i))
    end
    local _, after = links()
    eq(after, before, "no tap left (ip link)")
    eq(count("net_endpoints WHERE owner LIKE 'cycle-%'"), 0, "IPAM table clean")
    eq(count("net_ports WHERE owner LIKE 'cycle-%'"), 0, "no published port left")
    ok(not nft_table():find("10.254.0.3", 1, true), "no rule for the released address")
  end,

  test_11_reconcile_recreates_and_removes = function()
    local ep = ok(net.detach("own-p"))
    local a = ok(net.attach(nil, "own-r"))
    sh("ip link del " .. a.tap)
    local inst = moonbox.sha256(moonbox.config("state_dir")):sub(1, 10)
    sh("ip tuntap add dev mbrt999 mode tap && ip link set dev mbrt999 alias moonbox:" .. inst .. ":ghost")
    sh("ip tuntap add dev mbrtother mode tap")
    local r = ok(net.reconcile())
    eq(r.taps_created, { a.tap })
    eq(r.links_removed, { "mbrt999" })
    local l = links()
    ok(l[a.tap] and not l.mbrt999 and l.mbrtother, "recreated ours, removed the stray, kept the foreign one")
    sh("ip link del mbrtother")
    ok(net.detach("own-r"))
  end,

  test_12_rest_networks = function()
    local st, body = call("POST", "/v1/networks", { name = "rest-n", subnet = "10.247.0.0/24" })
    eq(st, 201, json.encode(body))
    eq(body.subnet, "10.247.0.0/24")
    st, body = call("POST", "/v1/networks", { name = "rest-x", subnet = "10.247.0.0/25" })
    eq(st, 409)
    eq(body.error.code, "conflict")
    st, body = call("POST", "/v1/networks", { name = "rest-x", subnet = "10.247.300.0/24" })
    eq(st, 400)
    eq(body.error.field, "subnet")
    st, body = call("POST", "/v1/networks", { name = "rest-x", color = "red" })
    eq(st, 400)
    eq(body.error.field, "color")
    st, body = call("GET", "/v1/networks")
    eq(st, 200)
    ok(#body >= 3)
    ok(net.attach("rest-n", "rest-owner"))
    st, body = call("GET", "/v1/networks/rest-n")
    eq(st, 200)
    eq(body.endpoints[1].owner, "rest-owner")
    st, body = call("DELETE", "/v1/networks/rest-n")
    eq(st, 409, "in use")
    ok(body.error.message:find("in use", 1, true))
    ok(net.detach("rest-owner"))
    st = call("DELETE", "/v1/networks/rest-n")
    eq(st, 204)
    st, body = call("GET", "/v1/networks/rest-n")
    eq(st, 404)
    eq(body.error.code, "not_found")
  end,

  test_13_volumes = function()
    local dir = moonbox.config("state_dir") .. "/volumes"
    local v = ok(volume.create { name = "data-1", size = "256M", labels = { app = "db" } })
    eq(v.size, 256 * 1024 * 1024)
    eq(v.path, dir .. "/data-1.ext4")
    ok(v.allocated < v.size / 4, "sparse: " .. v.allocated .. " bytes allocated")
    local r = assert(proc.run({ "dumpe2fs", "-h", v.path }))
    ok(r.stdout:find("Filesystem volume name:%s+data%-1"), "an ext4 file system")
    eq(#volume.list(), 1)
    eq(volume.inspect("data-1").labels, { app = "db" })
    local bad = {
      { { name = "a/b" }, "name" }, { { name = ".." }, "name" }, { { name = "../x" }, "name" },
      { { name = "x..y" }, "name" }, { { name = "-x" }, "name" },
      { { name = "s1", size = 0 }, "size" }, { { name = "s1", size = "1k" }, "size" },
      { { name = "s1", size = "lots" }, "size" },
    }
    for _, c in ipairs(bad) do
      local res, msg, code = volume.create(c[1])
      eq(res, nil)
      eq(code, "invalid", msg)
      ok(msg:find("^" .. c[2]), msg)
    end
    eq(fs.list(dir), { "data-1.ext4" }, "no file made by bad requests")
    local _, msg, code = volume.create { name = "data-1" }
    eq(code, "conflict", msg)
    ok(volume.attach("data-1", "ctr-1"))
    _, msg, code = volume.attach("data-1", "ctr-2")
    eq(code, "conflict", "one container at a time: " .. tostring(msg))
    _, msg, code = volume.remove("data-1")
    eq(code, "conflict", msg)
    eq(volume.inspect("data-1").attached_to, { "ctr-1" })
    ok(volume.detach("data-1", "ctr-1"))
    ok(volume.remove("data-1"))
    eq(fs.list(dir), {}, "file removed")
    _, _, code = volume.remove("data-1")
    eq(code, "not_found")
  end,

  test_14_volume_specs = function()
    local P = volume.parse_spec
    eq(P("data:/srv"), { kind = "volume", source = "data", target = "/srv", readonly = false })
    eq(P("data:/srv:ro"), { kind = "volume", source = "data", target = "/srv", readonly = true })
    eq(P("/tmp:/host/tmp:ro"), { kind = "bind", source = "/tmp", target = "/host/tmp", readonly = true })
    eq(P("/cache"), { kind = "volume", anonymous = true, target = "/cache", readonly = false })
    eq(P("/srv//a/./b/"), { kind = "volume", anonymous = true, target = "/srv/a/b", readonly = false })
    for _, s in ipairs({ "data:relative", "data:/srv:rx", "/does/not/exist:/x", "a/b:/x", "..:/x",
      "data:/", "data:/a/../b", "/etc/passwd:/x", "a:b:c:d" }) do
      local r, msg, code = P(s)
      eq(r, nil, s)
      eq(code, "invalid", s .. ": " .. tostring(msg))
    end
    -- vm entries: all or nothing
    local dir = moonbox.config("state_dir") .. "/volumes"
    local _, msg, code = volume.vm_entries({ "auto-vol:/a", "/does/not/exist:/b" }, { owner = "ctr-x" })
    eq(code, "invalid", msg)
    _, msg, code = volume.vm_entries({ "auto-vol:/a", "/tmp:/b", "/c", "/d" }, { owner = "ctr-x" })
    eq(code, "invalid", "too many devices: " .. tostring(msg))
    _, msg, code = volume.vm_entries({ "auto-vol:/a", "other:/a" }, { owner = "ctr-x" })
    eq(code, "invalid", "same target twice: " .. tostring(msg))
    eq(#volume.list(), 0, "nothing created")
    ok(volume.create { name = "busy" })
    ok(volume.attach("busy", "ctr-other"))
    _, msg, code = volume.vm_entries({ "auto-vol:/a", "busy:/b" }, { owner = "ctr-x" })
    eq(code, "conflict", msg)
    eq(#volume.list(), 1, "the auto-created volume was removed again")
    volume.detach("busy", "ctr-other")
    local e = ok(volume.vm_entries({ "busy:/b:ro", "/tmp:/t" }, { owner = "ctr-x", image_volumes = { "/var/lib/data", "/t" } }))
    eq(#e.disks, 2, "named + anonymous for the image's /var/lib/data")
    eq(e.disks[1].serial, "vol0")
    eq(e.disks[1].readonly, true)
    eq(e.shares, { { path = "/tmp", tag = "bind0", readonly = false } })
    eq(e.mounts[1], { type = "block", serial = "vol0", fstype = "ext4", target = "/b", ro = true })
    eq(e.mounts[2], { type = "9p", tag = "bind0", target = "/t", ro = false })
    eq(e.volumes[2].anonymous, true)
    eq(#fs.list(dir), 2)
    eq(#volume.detach_all("ctr-x", { remove_anonymous = true }), 2)
    eq(#volume.list(), 1, "the anonymous volume went with its container, the named one stays")
    ok(volume.remove("busy"))
  end,

  test_15_rest_volumes = function()
    local st, body = call("POST", "/v1/volumes", { name = "rv", size = "16M" })
    eq(st, 201, json.encode(body))
    st, body = call("POST", "/v1/volumes", { name = "a/b" })
    eq(st, 400)
    eq(body.error.field, "name")
    st, body = call("POST", "/v1/volumes", { name = "rv" })
    eq(st, 409)
    st, body = call("GET", "/v1/volumes/rv")
    eq(st, 200)
    eq(body.size, 16 * 1024 * 1024)
    volume.attach("rv", "c9")
    st, body = call("DELETE", "/v1/volumes/rv")
    eq(st, 409)
    volume.detach("rv", "c9")
    st = call("DELETE", "/v1/volumes/rv")
    eq(st, 204)
    st, body = call("POST", "/v1/volumes", {})
    eq(st, 201)
    eq(body.anonymous, true)
    st, body = call("POST", "/v1/volumes/prune")
    eq(#body.removed, 1)
  end,

  test_99_teardown = function()
    ok(net.teardown())
    eq(select(2, links()), 0, "no bridge or tap left")
    eq(nft_table(), "", "nft tables gone")
    eq(count("net_networks"), 0)
  end,
}
