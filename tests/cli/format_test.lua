-- Unit tests of cli/format.lua, cli/opts.lua and cli/progress.lua (pure functions).
local format = require("cli.format")
local opts = require("cli.opts")
local progress = require("cli.progress")

return {
  test_sizes = function()
    eq(format.size(0), "0B"); eq(format.size(512), "512B"); eq(format.size(5240), "5.24kB")
    eq(format.size(187000000), "187MB"); eq(format.size(1234567890), "1.23GB")
    eq(format.size(999999), "1MB"); eq(format.size(7800000), "7.8MB")
    eq(format.bytes(1536), "1.5KiB"); eq(format.bytes(256 * 1024 * 1024), "256MiB")
    eq(format.bytes(0), "0B"); eq(format.bytes(1023), "1023B")
  end,

  test_durations = function()
    eq(format.duration(0.5), "Less than a second")
    eq(format.duration(1), "1 second"); eq(format.duration(45), "45 seconds")
    eq(format.duration(61), "About a minute"); eq(format.duration(300), "5 minutes")
    eq(format.duration(3600), "About an hour"); eq(format.duration(5 * 3600), "5 hours")
    eq(format.duration(3 * 86400), "3 days"); eq(format.duration(20 * 86400), "2 weeks")
    eq(format.duration(90 * 86400), "3 months"); eq(format.duration(3 * 365 * 86400), "3 years")
    eq(format.ago(1000, 1120), "2 minutes ago")
  end,

  test_times = function()
    eq(format.parse_time("1970-01-01T00:00:00Z"), 0)
    eq(format.parse_time("2026-11-22T07:29:23Z"), 1795332563)
    eq(format.parse_time("2026-11-22T08:29:23+01:00"), 1795332563)
    eq(format.parse_time("2026-11-22T07:29:23.5Z"), 1795332563.5)
    eq(format.parse_time(12.5), 12.5)
    eq(format.rfc3339(1795332563), "2026-11-22T07:29:23Z")
    eq(format.rfc3339(1795332563.25), "2026-11-22T07:29:23.25Z")
  end,

  test_status = function()
    local now = 10000
    eq(format.status("running", { started_at = now - 300 }, now), "Up 5 minutes")
    eq(format.status("running", { started_at = now - 3, health = { status = "healthy" } }, now),
       "Up 3 seconds (healthy)")
    eq(format.status("paused", { started_at = now - 7200 }, now), "Up 2 hours (Paused)")
    eq(format.status("exited", { exit_code = 137, finished_at = now - 120 }, now),
       "Exited (137) 2 minutes ago")
    eq(format.status("created", {}, now), "Created")
    eq(format.status("restarting", { exit_code = 1, finished_at = now - 5 }, now),
       "Restarting (1) 5 seconds ago")
  end,

  test_table_layout = function()
    local t = format.table({ { "CONTAINER ID", "id" }, { "NAME", "name" }, { "X", function(r) return r.n * 2 end } },
      { { id = "abc", name = "web", n = 1 }, { id = "abcdef012345", name = "a", n = 10 } })
    eq(t, "CONTAINER ID   NAME   X\nabc            web    2\nabcdef012345   a      20\n")
    eq(format.table({ { "A", "a" }, { "B", "b" } }, {}), "A   B\n")
    eq(format.table({ { "A", "a" }, { "B", "b" } }, { { a = "x" } }), "A   B\nx\n")
  end,

  test_ids_ports_commands = function()
    eq(format.short_id("sha256:0123456789abcdef"), "0123456789ab")
    eq(format.truncate("abcdef", 4), "abc…"); eq(format.truncate("abc", 4), "abc")
    eq(format.ports({ { host_ip = "", host_port = 8080, container_port = 80, proto = "tcp" },
      { host_ip = "127.0.0.1", host_port = 5353, container_port = 53, proto = "udp" },
      { container_port = 9000 } }), "0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp, 9000/tcp")
    eq(format.command({ "nginx", "-g", "daemon off;" }), "nginx -g 'daemon off;'")
  end,

  test_templates = function()
    local obj = { name = "web", state_detail = { exit_code = 0 }, config = { cmd = { "a", "b" } },
      labels = { x = "1" } }
    eq(format.template("{{.name}}", obj), "web")
    eq(format.template("{{.Name}}\\t{{.state_detail.exit_code}}", obj), "web\t0")
    eq(format.template("{{.StateDetail.ExitCode}}", obj), "0")
    eq(format.template("{{json .config.cmd}}", obj), '["a","b"]')
    eq(format.template("{{.config.cmd}}", obj), "[a b]")
    eq(format.template("{{.nope}}", obj), "<no value>")
    eq(format.template("{{.labels}}", obj), '{"x":"1"}')
  end,

  test_ports = function()
    eq(opts.ports("8080:80"), { "8080:80" })
    eq(opts.ports("80"), { "80" })
    eq(opts.ports("127.0.0.1:5353:53/udp"), { "127.0.0.1:5353:53/udp" })
    eq(opts.ports("127.0.0.1::80"), { "127.0.0.1::80" })
    eq(opts.ports("[::1]:8080:80/TCP"), { "[::1]:8080:80" })
    eq(opts.ports("8000-8002:80-82"), { "8000:80", "8001:81", "8002:82" })
    ok(not opts.ports("8080:80/icmp"))
    ok(not opts.ports("99999:80"))
    ok(not opts.ports("a:b"))
    ok(not opts.ports("8000-8001:80"))
    ok(not opts.ports("1.2.3:80:80"))
  end,

  test_volumes = function()
    eq(opts.volume("data:/var/lib/x"), "data:/var/lib/x")
    eq(opts.volume("/host:/in:ro"), "/host:/in:ro")
    eq(opts.volume("/anon"), "/anon")
    local cwd = os.getenv("PWD") or "."
    eq(opts.volume("./sub/../d:/in"), opts.clean_path(cwd .. "/d") .. ":/in")
    ok(not opts.volume("data:relative"))
    ok(not opts.volume("bad name:/x"))
    ok(not opts.volume("/a:/b:xx"))
    ok(not opts.volume("a:b:c:d"))
    eq(opts.clean_path("/a/./b/../c/"), "/a/c")
  end,

  test_sizes_durations = function()
    eq(opts.size("268435456"), 268435456); eq(opts.size("512m"), 536870912)
    eq(opts.size("1g"), 1073741824); eq(opts.size("1.5GiB"), 1610612736)
    eq(opts.size("64MB"), 67108864); eq(opts.size("10k"), 10240)
    ok(not opts.size("lots")); ok(not opts.size("-1m"))
    eq(opts.duration("10s"), 10); eq(opts.duration("1m30s"), 90); eq(opts.duration("1h"), 3600)
    eq(opts.duration("500ms"), 0.5); eq(opts.duration("30"), 30)
    ok(not opts.duration("ten")); ok(not opts.duration("10x")); ok(not opts.duration(""))
  end,

  test_restart_env_labels_signals = function()
    eq(opts.restart("on-failure:3"), "on-failure:3"); eq(opts.restart("always"), "always")
    ok(not opts.restart("sometimes")); ok(not opts.restart("on-failure:x"))
    eq(opts.env({ "A=1", "B=", "MOONBOX_SURELY_UNSET_VAR" }), { "A=1", "B=" })
    eq(opts.env({ "HOME" }), { "HOME=" .. os.getenv("HOME") })
    ok(not opts.env({ "=x" }))
    eq(opts.env_file("# c\nA=1\n\n  B=two words\r\n"), { "A=1", "B=two words" })
    eq(opts.labels({ "a=b", "c", "d=e=f" }), { a = "b", c = "", d = "e=f" })
    eq(opts.signal("9"), "SIGKILL"); eq(opts.signal("kill"), "SIGKILL")
    eq(opts.signal("SIGTERM"), "SIGTERM"); eq(opts.signal("hup"), "SIGHUP")
    ok(not opts.signal("99")); ok(not opts.signal("!"))
  end,

  test_since = function()
    eq(opts.since("10m", 1000), 400)
    eq(opts.since("1795332563", 0), 1795332563)
    eq(opts.since("2026-11-22T07:29:23Z", 0), 1795332563)
    ok(not opts.since("yesterday", 0))
  end,

  test_progress_bar = function()
    eq(progress.bar(0, 100, 10), "[>         ]")
    eq(progress.bar(50, 100, 10), "[=====>    ]")
    eq(progress.bar(100, 100, 10), "[==========>]")
    eq(#progress.bar(3, 7), 52)
    eq(progress.layer_line({ digest = "sha256:a2abf6c4d29d43a4bf9fbb769f524d0fb36a2edab49819c1bf3e76f409f953ea",
      status = "downloading", size = 31400000, done = 5240000 }, { width = 10 }),
      "a2abf6c4d29d: Downloading [=>        ]   5.24MB/31.4MB")
    eq(progress.layer_line({ digest = "sha256:0123456789abcdef", status = "extracted", size = 5 }),
      "0123456789ab: Pull complete")
    eq(progress.layer_line({ digest = "sha256:0123456789abcdef", status = "waiting", cached = true }),
      "0123456789ab: Already exists")
  end,

  test_progress_render = function()
    local outb = {}
    local p = progress.new { tty = true, width = 4, write = function(s) outb[#outb + 1] = s end }
    local l1 = { digest = "sha256:111111111111aa", status = "downloading", size = 100, done = 50 }
    local l2 = { digest = "sha256:222222222222bb", status = "waiting", size = 10, done = 0 }
    p:update { layers = { l1, l2 } }
    eq(outb[1], "\27[2K\r111111111111: Downloading [==> ]      50B/100B\n\27[2K\r222222222222: Waiting\n")
    l1.status = "extracted"
    p:update { layers = { l1, l2 } }
    eq(outb[2], "\27[2A\27[2K\r111111111111: Pull complete\n\27[2K\r222222222222: Waiting\n")
    -- not a terminal: one line per status change
    outb = {}
    p = progress.new { tty = false, write = function(s) outb[#outb + 1] = s end }
    l1.status = "downloading"
    p:update { layers = { l1 } }
    l1.done = 60
    p:update { layers = { l1 } }
    l1.status = "extracted"
    p:update { layers = { l1 } }
    eq(outb, { "111111111111: Downloading\n", "111111111111: Pull complete\n" })
  end,
}
