-- Unit tests of the create-spec validator (moonbox test scripts/lib/spec_test.lua).
local spec = require("spec")

local function field_of(body)
  local c, err = spec.validate(body)
  return c and "ok" or err.field, err and err.message
end

return {
  test_defaults_and_normalisation = function()
    local c = assert(spec.validate { image = "busybox" })
    eq(c.cpus, 1); eq(c.memory, spec.DEFAULT_MEMORY); eq(c.restart, { name = "no", max_retries = 0 })
    eq(#c.ports, 0); eq(#c.env, 0); eq(c.tty, false)
    c = assert(spec.validate { image = "x", memory = "256m", cpus = 0.5, env = { B = "2", A = 1 },
                               restart = "on-failure:3" })
    eq(c.memory, 256 * 1024 * 1024); eq(c.cpus, 0.5); eq(c.env, { "A=1", "B=2" })
    eq(c.restart, { name = "on-failure", max_retries = 3 })
  end,

  test_ports = function()
    local c = assert(spec.validate { image = "x", ports = { "8080:80", "127.0.0.1:5353:53/udp", "9000",
      { host_port = 81, container_port = 81 }, "[::1]:8443:443" } })
    eq(c.ports[1], { host_ip = "", host_port = 8080, container_port = 80, proto = "tcp" })
    eq(c.ports[2], { host_ip = "127.0.0.1", host_port = 5353, container_port = 53, proto = "udp" })
    eq(c.ports[3].host_port, 0) -- a free one is chosen at start
    eq(c.ports[5].host_ip, "::1")
    eq(field_of { image = "x", ports = { "0:80" } }, "ports")
    eq(field_of { image = "x", ports = { "8080:70000" } }, "ports")
    eq(field_of { image = "x", ports = { "8080:80/sctp" } }, "ports")
    eq(field_of { image = "x", ports = { "8080:80", "8080:81" } }, "ports")
    eq(field_of { image = "x", ports = { "8080:80/tcp", "8080:80/udp" } }, "ok")
    eq(field_of { image = "x", ports = { "300.1.1.1:80:80" } }, "ports")
  end,

  test_volumes = function()
    local c = assert(spec.validate { image = "x", volumes = { "data:/var/lib/x", TEST_DIR .. ":/src:ro", "/anon" } })
    eq(c.volumes[1], { type = "volume", source = "data", destination = "/var/lib/x", read_only = false })
    eq(c.volumes[2].type, "bind"); eq(c.volumes[2].read_only, true)
    eq(c.volumes[3], { type = "volume", source = "", destination = "/anon", read_only = false })
    eq(field_of { image = "x", volumes = { "a/b:/x" } }, "volumes")
    eq(field_of { image = "x", volumes = { "..:/x" } }, "volumes")
    eq(field_of { image = "x", volumes = { "/nonexistent-dir-xyz:/x" } }, "volumes")
    eq(field_of { image = "x", volumes = { "data:relative" } }, "volumes")
    eq(field_of { image = "x", volumes = { "data:/" } }, "volumes")
    eq(field_of { image = "x", volumes = { "a:/x", "b:/x" } }, "volumes")
  end,

  test_ranges_and_types = function()
    eq(field_of { image = "x", cpus = 0 }, "cpus")
    eq(field_of { image = "x", cpus = 17 }, "cpus")
    eq(field_of { image = "x", cpus = 0.15 }, "cpus")
    eq(field_of { image = "x", cpus = "2" }, "cpus")
    eq(field_of { image = "x", cpus = 16 }, "ok")
    eq(field_of { image = "x", memory = 10 * 1024 * 1024 }, "memory")
    eq(field_of { image = "x", memory = "33g" }, "memory")
    eq(field_of { image = "x", memory = "lots" }, "memory")
    eq(field_of {}, "image")
    eq(field_of { image = "" }, "image")
    eq(field_of { image = "x", name = "a" }, "name")
    eq(field_of { image = "x", name = "bad name" }, "name")
    eq(field_of { image = "x", name = "good-name_1.x" }, "ok")
    eq(field_of { image = "x", cmd = "ls" }, "cmd")
    eq(field_of { image = "x", cmd = { "ls", 1 } }, "cmd")
    eq(field_of { image = "x", env = { "NOEQUALS" } }, "env")
    eq(field_of { image = "x", workdir = "rel" }, "workdir")
    eq(field_of { image = "x", tty = "yes" }, "tty")
    eq(field_of { image = "x", labels = { a = 1 } }, "labels")
    eq(field_of { image = "x", restart = "sometimes" }, "restart")
    eq(field_of { image = "x", restart = "always:3" }, "restart")
    eq(field_of { image = "x", auto_remove = true, restart = "always" }, "auto_remove")
    eq(field_of { image = "x", stop_signal = "SIGNOPE" }, "stop_signal")
    eq(field_of { image = "x", unknown = true }, "unknown")
    eq(field_of { 1, 2, 3 }, "body")
  end,

  test_healthcheck = function()
    local c = assert(spec.validate { image = "x", healthcheck = { test = { "CMD", "true" }, interval = 2 } })
    eq(c.healthcheck, { test = { "true" }, interval = 2, timeout = 30, retries = 3, start_period = 0 })
    c = assert(spec.validate { image = "x", healthcheck = { test = "wget -q -O- localhost" } })
    eq(c.healthcheck.test, { "/bin/sh", "-c", "wget -q -O- localhost" })
    eq(spec.validate { image = "x", healthcheck = { test = { "NONE" } } }.healthcheck, nil)
    eq(field_of { image = "x", healthcheck = { test = {} } }, "healthcheck.test")
    eq(field_of { image = "x", healthcheck = { test = { "CMD", "x" }, retries = 0 } }, "healthcheck.retries")
    eq(field_of { image = "x", healthcheck = { test = { "CMD", "x" }, interval = -1 } }, "healthcheck.interval")
    eq(field_of { image = "x", healthcheck = { test = { "CMD", "x" }, bogus = 1 } }, "healthcheck")
  end,

  test_helpers = function()
    eq(spec.parse_size("1g"), 1024 ^ 3 // 1)
    eq(spec.parse_size("512MiB"), 512 * 1024 * 1024)
    eq(spec.signal_number("TERM"), 15); eq(spec.signal_number("SIGKILL"), 9); eq(spec.signal_number(2), 2)
    eq(spec.signal_number("NOPE"), nil)
    ok(spec.valid_name(spec.random_name()))
  end,
}
