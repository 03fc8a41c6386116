-- The rootless fallback (MOONBOX_NET_MODE=user, as if the daemon lacked CAP_NET_ADMIN):
-- QEMU user networking, published ports through the same proxy and reservations.
local G = os.getenv
local E = {
  work = G("MB_WORK"), pids = G("MB_PIDS"), kernel = G("MB_KERNEL"), initrd = G("MB_INITRD"),
  agentctl = G("MB_AGENTCTL"), mkinitramfs = G("MB_MKINITRAMFS"), lower = G("MB_LOWER"),
  khz = G("MB_KHZ"), qemu = G("MB_QEMU"),
}
local V = assert(load(fs.read(G("MB_VMLIB")), "=vmlib.lua", "t", _ENV))(E)
local NETTOOL = G("MB_NETTOOL")
local HP_TCP, HP_UDP = tonumber(G("MB_HP_TCP")), tonumber(G("MB_HP_UDP"))

local vm

local function has(s, want)
  return type(s) == "string" and s:find(want, 1, true) ~= nil
end

return {
  test_01_user_mode = function()
    eq(net.mode(), "user")
    local ep = ok(net.attach(nil, "ct-user", { name = "user1" }))
    eq(ep.mode, "user")
    eq(ep.address, "10.0.2.15/24")
    eq(ep.nic.type, "user")
    local _, msg, code = net.create_network { name = "x" }
    eq(code, "unsupported", msg)
    -- ports are published before the VM starts: QEMU gets the forwards on its command line
    local pub = ok(net.publish("ct-user", { "127.0.0.1:" .. HP_TCP .. ":8080", HP_UDP .. ":9000/udp" }))
    eq(#pub, 2)
    local nic = ok(net.nic("ct-user"))
    eq(#nic.hostfwd, 3, "agent + two published ports")
    vm = V.ready(V.boot { name = "vm-user", nic = nic, network = ep.boot })
    V.sh(vm, "mkdir -p /www && echo user-web > /www/index.html")
    V.serve(vm, "httpd -f -p 8080 -h /www")
    V.serve(vm, "mb-nettool udp-echo 9000")
  end,

  test_02_user_mode_ports = function()
    local out = V.eventually(function()
      local o = V.host({ "curl", "-s", "-m", "5", "http://127.0.0.1:" .. HP_TCP .. "/" })
      return has(o, "user-web") and o
    end, 50)
    ok(has(out, "user-web"), "tcp through the proxy and slirp", out)
    out = V.eventually(function()
      local o = V.host({ NETTOOL, "udp-ask", "127.0.0.1", tostring(HP_UDP), "u1", "3000" })
      return has(o, "echo:u1") and o
    end, 10)
    ok(has(out, "echo:u1"), "udp through the proxy and slirp", out)
  end,

  test_03_user_mode_conflicts_and_cleanup = function()
    ok(net.attach(nil, "ct-user2"))
    local _, msg, code = net.publish("ct-user2", { "127.0.0.1:" .. HP_TCP .. ":80" })
    eq(code, "conflict", msg)
    ok(V.stop(vm))
    ok(net.detach("ct-user"))
    ok(net.detach("ct-user2"))
    eq(#net.published(), 0)
    local l = ok(net._listen("tcp", "127.0.0.1", HP_TCP), "port released")
    l:close()
  end,
}
