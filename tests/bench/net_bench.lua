-- Run by tests/bench/net: TCP throughput host -> guest, straight to the guest's address
-- over the bridge and through a published port on 127.0.0.1 (the userspace proxy), in
-- interleaved rounds in one run. Writes "direct MIB_S" / "proxy MIB_S" lines to $MB_RESULTS.
local G = os.getenv
local E = {
  work = G("MB_WORK"), pids = G("MB_PIDS"), kernel = G("MB_KERNEL"), initrd = G("MB_INITRD"),
  agentctl = G("MB_AGENTCTL"), mkinitramfs = G("MB_MKINITRAMFS"), lower = G("MB_LOWER"),
  khz = G("MB_KHZ"), qemu = G("MB_QEMU"),
}
local V = assert(load(fs.read(G("MB_VMLIB")), "=vmlib.lua", "t", _ENV))(E)
local NETTOOL, OUT = G("MB_NETTOOL"), G("MB_RESULTS")
local BYTES, ROUNDS = G("MB_BYTES") or tostring(512 * 1024 * 1024), tonumber(G("MB_ROUNDS") or "5")

local function send(ip, port)
  local r = assert(proc.run({ NETTOOL, "send", ip, tostring(port), BYTES }, { timeout = 600 }))
  assert(r.code == 0, r.stderr)
  return tonumber(r.stdout:match("mib_s=([%d%.]+)"))
end

return {
  test_bench = function()
    ok(net.ensure_default())
    local ep = ok(net.attach(nil, "bench"))
    local vm = V.ready(V.boot { name = "bench", nic = ep.nic, network = ep.boot })
    V.serve(vm, "mb-nettool sink 5001")
    local hp = ok(net.publish("bench", { "127.0.0.1::5001" }))[1].host_port
    timer.sleep(1)
    send(ep.ip, 5001) -- warm up both paths (TCG translates the guest's code once)
    send("127.0.0.1", hp)
    for i = 1, ROUNDS do
      local order = i % 2 == 1 and { "direct", "proxy" } or { "proxy", "direct" }
      for _, which in ipairs(order) do
        local v = which == "direct" and send(ep.ip, 5001) or send("127.0.0.1", hp)
        fs.append(OUT, which .. " " .. v .. "\n")
      end
    end
    V.stop(vm)
    ok(net.detach("bench"))
    ok(net.teardown())
  end,
}
