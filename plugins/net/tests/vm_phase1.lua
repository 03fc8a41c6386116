-- Phase 1 of vm_test.sh (run by `moonbox test`): real guests on real bridges.
-- Tests run in name order and share the guests through upvalues.
local G = os.getenv
local E = {
  work = G("MB_WORK"), pids = G("MB_PIDS"), kernel = G("MB_KERNEL"), initrd = G("MB_INITRD"),
  agentctl = G("MB_AGENTCTL"), mkinitramfs = G("MB_MKINITRAMFS"), lower = G("MB_LOWER"),
  khz = G("MB_KHZ"), qemu = G("MB_QEMU"),
}
local V = assert(load(fs.read(G("MB_VMLIB")), "=vmlib.lua", "t", _ENV))(E)
local NS, NETTOOL = G("MB_NS"), G("MB_NETTOOL")
local HP_TCP, HP_UDP, API = tonumber(G("MB_HP_TCP")), tonumber(G("MB_HP_UDP")), tonumber(G("MB_API_PORT"))
local OUT_HOST, OUT_NS = "10.253.0.1", "10.253.0.2"

local vms, eps = {}, {}

local function has(s, want)
  return type(s) == "string" and s:find(want, 1, true) ~= nil
end

-- a connection attempt from a guest: the printed outcome ("refused", "timeout", data)
local function ask(vm, ip, port, ms)
  return (V.sh(vm, string.format("mb-nettool tcp-ask %s %d %d", ip, port, ms or 2000)))
end

local function proxy_total(owner, proto)
  for _, p in ipairs(net.published(owner)) do
    if p.proto == proto then
      return p.proxy.total
    end
  end
end

return {
  test_01_boot_guests = function()
    eq(net.mode(), "bridge")
    ok(net.ensure_default())
    eps.a = ok(net.attach(nil, "ct-alpha", { name = "alpha" }))
    eps.b = ok(net.attach(nil, "ct-beta", { name = "beta" }))
    ok(net.create_network { name = "isolated", internal = false })
    eps.c = ok(net.attach("isolated", "ct-gamma", { name = "gamma" }))
    eq(eps.a.gateway, "10.251.0.1")
    eq(eps.c.address:match("^10%.252%."), "10.252.")
    for _, k in ipairs({ "a", "b", "c" }) do
      vms[k] = V.boot { name = "vm-" .. k, nic = eps[k].nic, network = eps[k].boot }
    end
    for _, k in ipairs({ "a", "b", "c" }) do
      V.ready(vms[k])
    end
    for k, text in pairs({ a = "alpha-web", b = "beta-web", c = "gamma-web" }) do
      V.sh(vms[k], "mkdir -p /www && echo " .. text .. " > /www/index.html")
      V.serve(vms[k], "httpd -f -p 8080 -h /www")
    end
    V.serve(vms.a, "mb-nettool udp-echo 9000")
    local pub = ok(net.publish("ct-alpha", { "0.0.0.0:" .. HP_TCP .. ":8080/tcp", "0.0.0.0:" .. HP_UDP .. ":9000/udp" }))
    eq(#pub, 2)
    eq(pub[1].spec, "0.0.0.0:" .. HP_TCP .. ":8080/tcp")
  end,

  test_02_published_tcp_from_loopback_uses_the_proxy = function()
    local before = proxy_total("ct-alpha", "tcp")
    local out = V.eventually(function()
      local o = V.host({ "curl", "-s", "-m", "5", "http://127.0.0.1:" .. HP_TCP .. "/" })
      return has(o, "alpha-web") and o
    end, 50)
    ok(has(out, "alpha-web"), "curl 127.0.0.1", out)
    ok(proxy_total("ct-alpha", "tcp") > before, "the loopback connection went through the proxy")
  end,

  test_03_published_udp_from_loopback = function()
    local out = V.eventually(function()
      local o = V.host({ NETTOOL, "udp-ask", "127.0.0.1", tostring(HP_UDP), "ping-lo", "3000" })
      return has(o, "echo:ping-lo") and o
    end, 20)
    ok(has(out, "echo:ping-lo"), "udp via 127.0.0.1", out)
  end,

  test_04_published_ports_from_another_host_use_dnat = function()
    local before = proxy_total("ct-alpha", "tcp")
    local out = V.host({ "curl", "-s", "-m", "5", "http://" .. OUT_HOST .. ":" .. HP_TCP .. "/" }, NS)
    ok(has(out, "alpha-web"), "curl from the namespace", out)
    eq(proxy_total("ct-alpha", "tcp"), before, "DNAT served it, not the proxy")
    out = V.host({ NETTOOL, "udp-ask", OUT_HOST, tostring(HP_UDP), "ping-ns", "3000" }, NS)
    ok(has(out, "echo:ping-ns"), "udp from the namespace", out)
  end,

  test_04b_published_ports_from_guests_through_the_host = function()
    -- hairpin: a neighbour on the same network and a guest on another network reach the
    -- published port through a host address (published ports are public)
    for _, k in ipairs({ "b", "c" }) do
      local out = V.sh(vms[k], "mb-nettool http " .. OUT_HOST .. " " .. HP_TCP)
      ok(has(out, "alpha-web"), "guest " .. k .. " -> published port", out)
    end
  end,

  test_05_outbound_nat = function()
    -- the outside host sees the host's address, not the guest's
    for _, k in ipairs({ "a", "b" }) do
      local out = ask(vms[k], OUT_NS, 7000, 5000)
      ok(has(out, "peer=" .. OUT_HOST), "guest " .. k .. " masqueraded", out)
    end
  end,

  test_06_guest_cannot_reach_the_api = function()
    local out = V.host({ "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
      "http://127.0.0.1:" .. API .. "/v1/health" })
    eq(out, "401", "the API listens on all addresses (and wants its token)")
    eq(ask(vms.a, eps.a.gateway, API), "timeout\n", "API through the gateway")
    eq(ask(vms.a, OUT_HOST, API), "timeout\n", "API through another host address")
  end,

  test_07_guest_cannot_reach_another_agent = function()
    eq(ask(vms.a, eps.b.ip, 1025), "timeout\n", "alpha -> beta's agent")
    eq(ask(vms.b, eps.a.ip, 1025), "timeout\n", "beta -> alpha's agent")
  end,

  test_08_same_network_reaches_by_address_and_name = function()
    local out = V.sh(vms.a, "mb-nettool http " .. eps.b.ip .. " 8080")
    ok(has(out, "beta-web"), "alpha -> beta:8080", out)
    out = V.sh(vms.a, "nslookup beta " .. eps.a.gateway)
    ok(has(out, eps.b.ip), "DNS name beta", out)
  end,

  test_09_other_networks_are_unreachable = function()
    eq(ask(vms.a, eps.c.ip, 8080), "timeout\n", "alpha -> gamma")
    eq(ask(vms.c, eps.a.ip, 8080), "timeout\n", "gamma -> alpha")
    local out = V.sh(vms.c, "nslookup beta " .. eps.c.gateway .. " 2>&1")
    ok(not has(out, eps.b.ip), "gamma cannot resolve beta", out)
  end,

  test_10_spoofed_source_is_dropped = function()
    local out, code = V.sh(vms.a, "ping -c 1 -W 3 " .. eps.a.gateway .. " >/dev/null && echo plain-ok")
    ok(has(out, "plain-ok"), "ping the gateway", out)
    out = V.sh(vms.a, "ip addr add 10.251.0.250/16 dev eth0; ping -c 1 -W 3 -I 10.251.0.250 "
      .. eps.a.gateway .. " >/dev/null && echo spoof-ok; ip addr del 10.251.0.250/16 dev eth0")
    ok(not has(out, "spoof-ok"), "a spoofed source address gets nowhere", out)
  end,

  test_11_named_volume_and_binds = function()
    local shared = G("MB_SHARED")
    ok(volume.create { name = "vt-data", size = "64M" })
    local ep = ok(net.attach(nil, "ct-vol1"))
    local ent = ok(volume.vm_entries({ "vt-data:/data", shared .. "/rw:/bind", shared .. "/ro:/robind:ro" },
      { owner = "ct-vol1" }))
    local vm = V.ready(V.boot { name = "vm-vol1", nic = ep.nic, network = ep.boot, disks = ent.disks,
      shares = ent.shares, mounts = ent.mounts })
    local out = V.sh(vm, "echo persisted > /data/hello && cat /bind/host-file && echo from-guest > /bind/guest-file"
      .. " && cat /robind/ro-file; touch /robind/x 2>/dev/null && echo ro-broken || echo ro-enforced")
    ok(has(out, "from-host"), "host -> guest through the bind", out)
    ok(has(out, "read-only"), "ro bind readable", out)
    ok(has(out, "ro-enforced"), "ro bind rejects writes", out)
    eq(fs.read(shared .. "/rw/guest-file"), "from-guest\n", "guest -> host through the bind")
    local _, msg, code = volume.remove("vt-data")
    eq(code, "conflict", "a volume cannot be removed while attached")
    ok(V.stop(vm), "vm-vol1 stopped")
    eq(volume.detach_all("ct-vol1"), { "vt-data" })
    ok(net.detach("ct-vol1"))

    local ep2 = ok(net.attach(nil, "ct-vol2"))
    local ent2 = ok(volume.vm_entries({ "vt-data:/data:ro" }, { owner = "ct-vol2" }))
    local vm2 = V.ready(V.boot { name = "vm-vol2", nic = ep2.nic, network = ep2.boot, disks = ent2.disks,
      mounts = ent2.mounts })
    out = V.sh(vm2, "cat /data/hello; touch /data/y 2>/dev/null && echo rw || echo ro")
    ok(has(out, "persisted"), "the next VM reads what the first wrote", out)
    ok(has(out, "ro"), "mounted read-only", out)
    ok(V.stop(vm2), "vm-vol2 stopped")
    volume.detach_all("ct-vol2")
    ok(net.detach("ct-vol2"))
    ok(volume.remove("vt-data"))
  end,

  -- the guests a, b, c and a named volume stay into phase 2 (a daemon restart)
  test_12_leave_running = function()
    local v = ok(volume.create { name = "vt-keep", size = "16M" })
    fs.write(E.work .. "/vt-keep.path", v.path)
    fs.write(E.work .. "/vms.json", json.encode({
      a = { pid = vms.a.pid, token = vms.a.token, addr = vms.a.addr, dir = vms.a.dir, ip = eps.a.ip },
      b = { pid = vms.b.pid, token = vms.b.token, addr = vms.b.addr, dir = vms.b.dir, ip = eps.b.ip },
      c = { pid = vms.c.pid, token = vms.c.token, addr = vms.c.addr, dir = vms.c.dir, ip = eps.c.ip },
    }))
  end,
}
