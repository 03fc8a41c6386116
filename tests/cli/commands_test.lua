-- Unit tests of the pure parts of the commands: run's create body, ps filters, cp path
-- handling, image references, the detach-key scanner, host parsing and API errors.
local run = require("cli.commands.run")
local ps = require("cli.commands.ps")
local cp = require("cli.commands.cp")
local images = require("cli.images")
local session = require("cli.session")
local client = require("cli.client")
local args = require("cli.args")
local errors = require("cli.errors")

local function parse_run(argv)
  local o, pos = args.parse(run.run, argv)
  return run.body(o, pos)
end

local function usage_error(fn)
  local ok, e = pcall(fn)
  return not ok and errors.is(e) and e.kind == "usage", e
end

return {
  test_run_body_full = function()
    local b = parse_run({ "-d", "--name", "web", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp",
      "-e", "A=1", "-v", "data:/var/lib/x", "-v", "/host:/in:ro", "--restart", "on-failure:3",
      "--cpus", "0.5", "-m", "256m", "--entrypoint", "/bin/sh", "-w", "/srv", "-u", "1000:1000",
      "-l", "tier=web", "--network", "front", "--hostname", "box",
      "--health-cmd", "wget -q -O- http://localhost/", "--health-interval", "10s",
      "--health-retries", "3", "--health-timeout", "5s", "--health-start-period", "1m",
      "--stop-signal", "int", "--stop-timeout", "20", "nginx", "-c", "echo hi" })
    eq(b.image, "nginx"); eq(b.name, "web"); eq(b.cmd, { "-c", "echo hi" })
    eq(b.entrypoint, { "/bin/sh" }); eq(b.env, { "A=1" }); eq(b.workdir, "/srv")
    eq(b.user, "1000:1000"); eq(b.hostname, "box"); eq(b.cpus, 0.5); eq(b.memory, 268435456)
    eq(b.ports, { "8080:80", "127.0.0.1:5353:53/udp" })
    eq(b.volumes, { "data:/var/lib/x", "/host:/in:ro" })
    eq(b.network, "front"); eq(b.restart, "on-failure:3"); eq(b.labels, { tier = "web" })
    eq(b.healthcheck, { test = { "CMD-SHELL", "wget -q -O- http://localhost/" }, interval = 10,
      retries = 3, timeout = 5, start_period = 60 })
    eq(b.stop_signal, "SIGINT"); eq(b.stop_timeout, 20)
    eq(b.tty, false); eq(b.stdin, false); eq(b.auto_remove, nil)
    ok(json.encode(b):find('"cmd":["-c","echo hi"]', 1, true))
  end,

  test_run_body_flags = function()
    local b = parse_run({ "-it", "--rm", "alpine" })
    eq({ b.tty, b.stdin, b.auto_remove, b.cmd }, { true, true, true, nil })
    b = parse_run({ "--entrypoint", "", "alpine" })
    eq(json.encode(b.entrypoint), "[]")
    b = parse_run({ "--no-healthcheck", "alpine" })
    eq(b.healthcheck, { test = { "NONE" } })
    b = parse_run({ "-p", "8000-8001:80-81", "alpine" })
    eq(b.ports, { "8000:80", "8001:81" })
  end,

  test_run_body_errors = function()
    for _, argv in ipairs({
      { "-p", "nope", "alpine" }, { "-v", "rel:path", "alpine" }, { "-m", "lots", "alpine" },
      { "--restart", "maybe", "alpine" }, { "--cpus", "0", "alpine" }, { "-w", "rel", "alpine" },
      { "--health-interval", "10s", "alpine" }, { "--health-cmd", "x", "--health-timeout", "zz", "alpine" },
      { "--stop-signal", "!!", "alpine" }, { "-e", "=x", "alpine" },
    }) do
      local good, e = usage_error(function() parse_run(argv) end)
      ok(good, table.concat(argv, " "), e)
    end
  end,

  test_start_failure_codes = function()
    eq(run.start_failure_code('exec: "nothere": executable file not found in $PATH'), 127)
    eq(run.start_failure_code('exec: "/x": stat /x: no such file or directory'), 127)
    eq(run.start_failure_code('exec: "/etc/passwd": permission denied'), 126)
    eq(run.start_failure_code("the vm plugin is not loaded"), 125)
    eq(run.start_failure_code("the image is gone: not found"), 125)
  end,

  test_ps_filters = function()
    local q, l = ps.filters({ "status=exited", "label=a=b", "name=web", "id=abc", "ancestor=nginx" })
    eq(q.state, "stopped"); eq(q.label, { "a=b" })
    eq(l.names, { "web" }); eq(l.ids, { "abc" }); eq(l.ancestors, { "nginx" })
    ok(ps.keep({ name = "myweb", id = "abcdef", image = "nginx" }, l))
    ok(not ps.keep({ name = "db", id = "abcdef", image = "nginx" }, l))
    ok(not ps.keep({ name = "web", id = "ffff", image = "nginx" }, l))
    ok(not ps.keep({ name = "web", id = "abc", image = "redis" }, l))
    ok(ps.keep({ name = "web", id = "abc", image = "docker.io/library/nginx:latest" }, l))
    ok((usage_error(function() ps.filters({ "status=sleepy" }) end)))
    ok((usage_error(function() ps.filters({ "color=red" }) end)))
    ok((usage_error(function() ps.filters({ "novalue" }) end)))
  end,

  test_cp_paths = function()
    eq({ cp.split("box:/etc/hostname") }, { "box", "/etc/hostname" })
    eq({ cp.split("box:rel") }, { "box", "rel" })
    eq({ cp.split("/abs:path") }, { nil, "/abs:path" })
    eq({ cp.split("./x:y") }, { nil, "./x:y" })
    eq({ cp.split("plain") }, { nil, "plain" })
    eq({ cp.split("-") }, { nil, "-" })
    eq(cp.relative("etc", "etc"), ""); eq(cp.relative("etc/passwd", "etc"), "/passwd")
    eq(cp.relative("./etc/a/", "etc"), "/a")
    eq(cp.relative("etc/../x", "etc"), nil); eq(cp.relative("/etc/x", "etc"), nil)
    eq(cp.relative("other/x", "etc"), nil); eq(cp.relative("etcx", "etc"), nil)
  end,

  test_image_refs = function()
    eq(images.normalize("nginx"), "docker.io/library/nginx:latest")
    eq(images.normalize("nginx:1.25"), "docker.io/library/nginx:1.25")
    eq(images.normalize("user/app"), "docker.io/user/app:latest")
    eq(images.normalize("127.0.0.1:5000/test/busybox"), "127.0.0.1:5000/test/busybox:latest")
    eq(images.normalize("localhost/x:y"), "localhost/x:y")
    eq(images.normalize("ghcr.io/o/r@sha256:abc"), "ghcr.io/o/r@sha256:abc")
    eq({ images.familiar("docker.io/library/nginx:latest") }, { "nginx", "latest" })
    eq({ images.familiar("docker.io/user/app:v1") }, { "user/app", "v1" })
    eq({ images.familiar("127.0.0.1:5000/test/busybox:latest") }, { "127.0.0.1:5000/test/busybox", "latest" })
    local recs = { { id = "sha256:aaaa1111", references = { "docker.io/library/nginx:latest" } },
                   { id = "sha256:aaaa2222", references = {} } }
    eq(images.match(recs, "nginx"), recs[1]); eq(images.match(recs, "aaaa2"), recs[2])
    eq(select(2, images.match(recs, "aaaa")), "ambiguous"); eq(images.match(recs, "redis"), nil)
  end,

  test_pull_stream = function()
    -- a fake API whose pull stream is the given NDJSON lines, in odd-sized chunks
    local function fake(lines)
      local data = table.concat(lines, "\n") .. "\n"
      local pos = 1
      return { stream = function(_, method, path, o)
        eq({ method, path, o.body.reference }, { "POST", "/v1/images/pull", "busybox" })
        return { read = function()
          if pos > #data then return nil end
          local c = data:sub(pos, pos + 6); pos = pos + 7; return c
        end, close = function() end }
      end }
    end
    local layer = '{"digest":"sha256:0123456789abcdef","size":100,"done":%d,"status":"%s","cached":%s}'
    local rec = '{"id":"sha256:ff","references":["docker.io/library/busybox:latest"],"manifest_digest":"sha256:aa"}'
    for _, nested in ipairs({ false, true }) do
      local function progress(done, st, cached)
        local body = '{"status":"downloading","layers":[' .. string.format(layer, done, st, cached) .. ']}'
        return nested and ('{"status":"downloading","progress":' .. body .. '}') or body
      end
      local out = {}
      local r = ok(images.pull(fake({ progress(0, "waiting", "false"), progress(50, "downloading", "false"),
        progress(100, "extracted", "false"), '{"status":"done","image":' .. rec .. '}' }), "busybox",
        { tty = false, write = function(x) out[#out + 1] = x end }))
      eq(r.id, "sha256:ff")
      eq(table.concat(out), "Using default tag: latest\nlatest: Pulling from library/busybox\n" ..
        "0123456789ab: Waiting\n0123456789ab: Downloading\n0123456789ab: Pull complete\n" ..
        "Digest: sha256:aa\nStatus: Downloaded newer image for busybox:latest\n")
    end
    local out = {}
    ok(images.pull(fake({ string.format('{"status":"storing","layers":[' .. layer .. ']}', 100, "extracted", "true"),
      '{"status":"done","image":' .. rec .. '}' }), "busybox", { write = function(x) out[#out + 1] = x end }))
    ok(table.concat(out):find("Status: Image is up to date for busybox:latest", 1, true), table.concat(out))
    local r, err = images.pull(fake({ '{"status":"error","error":{"code":"not_found","message":"manifest unknown"}}' }),
      "busybox", { quiet = true })
    eq(r, nil); eq({ err.code, err.message }, { "not_found", "manifest unknown" })
  end,

  test_cp_never_writes_through_links = function()
    local cp = require("cli.commands.cp")
    local d = TEST_DIR .. "/cpl"
    ok(fs.mkdir(d .. "/real/sub"))
    ok(fs.symlink("/etc", d .. "/esc"))
    eq(cp.through_link(d, "/real/sub/file"), nil)
    eq(cp.through_link(d, "/esc/passwd"), d .. "/esc")
    eq(cp.through_link(d .. "/", "/esc/x/y"), d .. "/esc")
    eq(cp.through_link(d, "/esc"), nil) -- the last part itself is replaced, not followed
    eq(cp.through_link(d, ""), nil)
  end,

  test_event_line = function()
    local ev = require("cli.commands.events")
    eq(ev.line({ time = 1795332563.5, type = "container.stopped",
      data = { id = "0123456789abcdef", name = "web", exit_code = 0, extra = { 1 } } }),
      "2026-11-22T07:29:23.5Z container.stopped 0123456789ab (exit_code=0, name=web)")
    eq(ev.line({ time = 0, type = "daemon.start", data = {} }), "1970-01-01T00:00:00Z daemon.start")
  end,

  test_images_rows = function()
    local cmd = require("cli.commands.images")
    local rows = cmd.rows({ { id = "sha256:1", references = { "docker.io/library/nginx:latest", "docker.io/library/nginx:1" } },
                            { id = "sha256:2", references = {} } })
    eq(#rows, 3)
    eq({ rows[1].repository, rows[1].tag, rows[2].tag, rows[3].repository }, { "nginx", "latest", "1", "<none>" })
    eq(rows[1].id, "sha256:1")
    eq(#cmd.rows({ { id = "x", references = { "docker.io/library/nginx:latest", "docker.io/library/redis:7" } } }, "nginx"), 1)
  end,

  test_detach_scan = function()
    local keys = "\16\17"
    local st = {}
    eq({ session.detach_scan(st, keys, "abc") }, { "abc", false })
    eq({ session.detach_scan(st, keys, "ab\16") }, { "ab", false })
    eq({ session.detach_scan(st, keys, "\17rest") }, { "", true })
    st = {}
    eq({ session.detach_scan(st, keys, "x\16y") }, { "x\16y", false })
    eq({ session.detach_scan(st, nil, "\16\17") }, { "\16\17", false })
  end,

  test_hosts_and_errors = function()
    eq(client.parse_host("unix:///run/x.sock").path, "/run/x.sock")
    eq(client.parse_host("/run/x.sock").kind, "unix")
    local t = client.parse_host("tcp://127.0.0.1:8420")
    eq({ t.kind, t.host, t.port }, { "tcp", "127.0.0.1", 8420 })
    eq(client.parse_host("tcp://[::1]:9000").hostport, "[::1]:9000")
    eq(client.parse_host("example.org").port, 8420)
    ok((usage_error(function() client.parse_host("unix://") end)))
    eq(client.query({ b = 1, a = { "x y", "z" }, c = false, d = true }), "a=x%20y&a=z&b=1&d=1")
    local e = client.api_error(409, '{"error":{"code":"conflict","message":"it is running","state":"running"}}')
    eq({ e.code, e.message, e.state, e.status }, { "conflict", "it is running", "running", 409 })
    eq(errors.describe(e), "Error response from daemon: it is running")
    e = client.api_error(400, '{"error":{"code":"invalid","message":"cpus: bad","field":"cpus"}}')
    eq(e.field, "cpus")
    e = client.api_error(502, "<html>bad gateway</html>")
    eq(e.message, "<html>bad gateway</html>")
    e = client.api_error(404, '{"error":{"code":"not_found","message":"no such endpoint"}}', "GET", "/v1/x?y=1")
    ok(e.unsupported); eq(e.message, "no such endpoint: GET /v1/x (this daemon does not support it)")
  end,
}
