-- Phase 2 of vm_test.sh: a new runtime on the state of phase 1 (a daemon restart).
-- The guests a, b, c are still running; reconcile must bring the proxies back, keep the
-- taps and the isolation, and remove the stray tap the wrapper planted.
local G = os.getenv
local E = {
  work = G("MB_WORK"), pids = G("MB_PIDS"), kernel = G("MB_KERNEL"), initrd = G("MB_INITRD"),
  agentctl = G("MB_AGENTCTL"), mkinitramfs = G("MB_MKINITRAMFS"), lower = G("MB_LOWER"),
  khz = G("MB_KHZ"), qemu = G("MB_QEMU"),
}
local V = assert(load(fs.read(G("MB_VMLIB")), "=vmlib.lua", "t", _ENV))(E)
local NS, NETTOOL = G("MB_NS"), G("MB_NETTOOL")
local HP_TCP, HP_UDP = tonumber(G("MB_HP_TCP")), tonumber(G("MB_HP_UDP"))
local OUT_HOST = "10.253.0.1"

local vms = json.decode(fs.read(E.work .. "/vms.json"))
for _, vm in pairs(vms) do
  vm.n = 1000 -- exec ids of phase 1 are taken
end

local function has(s, want)
  return type(s) == "string" and s:find(want, 1, true) ~= nil
end

local function ask(vm, ip, port, ms)
  return (V.sh(vm, string.format("mb-nettool tcp-ask %s %d %d", ip, port, ms or 2000)))
end

local function links()
  local out = V.host({ "ip", "-o", "link", "show" })
  local set = {}
  for name in out:gmatch("%d+: ([%w%-_.]+)[@:]") do
    set[name] = true
  end
  return set
end

return {
  test_01_reconcile = function()
    -- the shipped start-up script already ran reconcile; running it again is a no-op
    local r = ok(net.reconcile())
    eq(r.networks, 2)
    eq(r.endpoints, 3)
    eq(r.ports, 2)
    eq(#r.port_errors, 0, "every published port listens again")
    eq(#r.taps_created, 0, "running guests kept their taps")
    local l = links()
    ok(not l.mbqt999, "the stray tap with our alias is gone")
    ok(l.mbqtforeign, "a tap that is not ours is kept")
    for _, k in ipairs({ "a", "b", "c" }) do
      ok(proc.alive(vms[k].pid), "guest " .. k .. " still runs")
    end
  end,

  test_01b_volume_survives_restart = function()
    local v = ok(volume.inspect("vt-keep"))
    eq(v.path, fs.read(E.work .. "/vt-keep.path"))
    ok(fs.exists(v.path))
    ok(volume.remove("vt-keep"))
  end,

  test_02_ports_after_restart = function()
    local out = V.eventually(function()
      local o = V.host({ "curl", "-s", "-m", "5", "http://127.0.0.1:" .. HP_TCP .. "/" })
      return has(o, "alpha-web") and o
    end, 20)
    ok(has(out, "alpha-web"), "tcp via 127.0.0.1 after restart", out)
    out = V.host({ NETTOOL, "udp-ask", "127.0.0.1", tostring(HP_UDP), "again", "3000" })
    ok(has(out, "echo:again"), "udp via 127.0.0.1 after restart", out)
    out = V.host({ "curl", "-s", "-m", "5", "http://" .. OUT_HOST .. ":" .. HP_TCP .. "/" }, NS)
    ok(has(out, "alpha-web"), "tcp from another host after restart", out)
    out = V.host({ NETTOOL, "udp-ask", OUT_HOST, tostring(HP_UDP), "again-ns", "3000" }, NS)
    ok(has(out, "echo:again-ns"), "udp from another host after restart", out)
  end,

  test_03_isolation_after_restart = function()
    eq(ask(vms.a, vms.b.ip, 1025), "timeout\n", "alpha -> beta's agent")
    eq(ask(vms.a, vms.c.ip, 8080), "timeout\n", "alpha -> gamma")
    local out = V.sh(vms.a, "mb-nettool http " .. vms.b.ip .. " 8080")
    ok(has(out, "beta-web"), "alpha -> beta:8080", out)
    out = V.sh(vms.b, "nslookup alpha 10.251.0.1")
    ok(has(out, vms.a.ip), "DNS after restart", out)
  end,

  test_04_conflicting_publish_after_restart = function()
    local _, msg, code = net.publish("ct-beta", { "0.0.0.0:" .. HP_TCP .. ":80" })
    eq(code, "conflict", msg)
  end,

  test_05_teardown = function()
    for _, k in ipairs({ "a", "b", "c" }) do
      ok(V.stop(vms[k]), "guest " .. k .. " stopped")
    end
    local _, _, code = net.remove_network("isolated")
    eq(code, "conflict", "a network with endpoints cannot be removed")
    for _, o in ipairs({ "ct-alpha", "ct-beta", "ct-gamma" }) do
      ok(net.detach(o))
    end
    eq(#net.published(), 0)
    ok(net.remove_network("isolated"))
    ok(net.teardown())
    local l = links()
    ok(not l.mbq0, "default test bridge removed")
    local n = db.row("SELECT count(*) AS c FROM net_endpoints").c
    eq(n, 0, "IPAM table empty")
  end,
}
