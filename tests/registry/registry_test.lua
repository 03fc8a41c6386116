-- The registry plugin's Lua module inside the real binary, against the fixture registries:
--   moonbox test --state-dir DIR tests/registry/registry_test.lua
-- run by tests/registry/fixtures.sh, which starts the registries and passes them in the
-- environment (REG_plain, REG_basic, REG_token, REG_redirect, ...). Tests run in name
-- order and build on each other (one store for the whole file).
local REG, BASIC, TOKEN = os.getenv("REG_plain"), os.getenv("REG_basic"), os.getenv("REG_token")
local FRONT = os.getenv("REG_redirect") -- 503 twice, then 307 to REG_plain; logs Range
local FIX, STATE = os.getenv("FIXTURE_DIR"), os.getenv("MBR_STATE")
local IMAGES = STATE and (STATE .. "/images")
local ESCAPE = "/tmp/moonbox-fixture-escape"
local RAM_TINY = os.getenv("RAM_TINY") -- a tmpfs with room for bytes but only 8 inodes
-- unpacked trees go to RAM when /dev/shm is a tmpfs and they fit (plugins/registry/README.md)
local RAM = STATE and ("/dev/shm/moonbox-" .. moonbox.sha256(STATE .. "/images"):sub(1, 16))

if not (REG and BASIC and TOKEN and FRONT and FIX and STATE) then
  return {
    t00_fixtures = function()
      skip("run through tests/registry/fixtures.sh (needs REG_plain, REG_basic, ...)")
    end,
  }
end

local plain = json.decode(fs.read(FIX .. "/plain.json"))
local img, multi -- records shared by later tests

local function since()
  return events.last_id()
end
local function evs(pattern, from)
  local out = {}
  for _, e in ipairs(events.list({ since = from or 0, pattern = pattern, limit = 100000 })) do
    out[#out + 1] = e.data
  end
  return out
end
local function hex(digest)
  return digest:sub(8)
end
local function sh(argv, opts)
  local r, msg = proc.run(argv, opts)
  ok(r, "run " .. argv[1], msg)
  return r.code == 0, (r.stdout:gsub("%s+$", "")), r.stderr
end
local function expect_fail(code, part, r, msg, c)
  ok(r == nil, "expected a failure, got a result")
  eq(c, code, "code (" .. tostring(msg) .. ")")
  if part then
    ok(msg:find(part, 1, true), "message has '" .. part .. "'", msg)
  end
end
local function tmp_entries()
  local out = {}
  for _, n in ipairs(fs.list(IMAGES .. "/tmp") or {}) do
    out[#out + 1] = n
  end
  for _, n in ipairs(fs.list(RAM) or {}) do
    out[#out + 1] = "(ram) " .. n
  end
  return out
end
-- Scratch trees of finished pulls are removed in the background: wait (bounded) until
-- images/tmp holds nothing but what `keep` allows.
local function settled(keep)
  local left
  for _ = 1, 200 do
    left = {}
    for _, n in ipairs(tmp_entries()) do
      if not (keep and n:match(keep)) then
        left[#left + 1] = n
      end
    end
    if #left == 0 then
      return true
    end
    timer.sleep(0.05)
  end
  error("images/tmp still holds " .. table.concat(left, ", "), 2)
end
local function count_lines(path, needle)
  local text = fs.read(path) or ""
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:find(needle, 1, true) then
      n = n + 1
    end
  end
  return n
end
local function base64url(s)
  local good, out = sh({ "base64", "-w0" }, { stdin = s })
  ok(good, "base64")
  return (out:gsub("%+", "-"):gsub("/", "_"))
end
-- erofs image -> a directory with its tree (loop mount, or fsck.erofs --extract)
local function open_disk(disk)
  local dir = TEST_DIR .. "/tree-" .. hex(img and img.id or "x"):sub(1, 6) .. "-" .. moonbox.random(4)
  fs.mkdir(dir)
  local mounted = sh({ "mount", "-t", "erofs", "-o", "loop,ro", disk, dir })
  if not mounted then
    ok(sh({ "fsck.erofs", "--extract=" .. dir, disk }), "fsck.erofs --extract")
  end
  return dir, function()
    if mounted then
      sh({ "umount", dir })
    end
  end
end

return {
  t01_parse = function()
    local p = registry.parse("nginx")
    eq(p.reference, "docker.io/library/nginx:latest")
    eq(p.familiar, "nginx:latest")
    eq(registry.parse("docker.io/nginx").reference, "docker.io/library/nginx:latest")
    eq(registry.parse("index.docker.io/library/nginx:1").reference, "docker.io/library/nginx:1")
    eq(registry.parse("localhost:5000/a/b").registry, "localhost:5000")
    local r, msg, code = registry.parse("Upper")
    expect_fail("invalid", nil, r, msg, code)
    fails(function() registry.parse({}) end)
  end,

  -- a partial download left behind is resumed with Range; the front answers 503 twice
  -- (retried with backoff), then redirects every request to the real registry
  t02_resume_through_redirects_and_503s = function()
    local m = http.request({ url = "http://" .. REG .. "/v2/test/busybox/manifests/latest",
      headers = { accept = "application/vnd.docker.distribution.manifest.v2+json" } })
    local layer = json.decode(m.body).layers[1].digest
    local blob = http.get("http://" .. REG .. "/v2/test/busybox/blobs/" .. layer)
    ok(#blob.body > 300000, "busybox layer is big enough")
    fs.mkdir(IMAGES .. "/tmp")
    fs.write(IMAGES .. "/tmp/" .. hex(layer) .. ".partial", blob.body:sub(1, 300000))
    local r, msg = registry.pull(FRONT .. "/test/busybox")
    ok(r, "pull through the front", msg)
    local log = os.getenv("REDIRECT_LOG")
    ok(count_lines(log, '" 503 ') >= 2, "the front answered 503")
    ok(count_lines(log, '" 307 ') >= 3, "the front redirected")
    ok(count_lines(log, "range=bytes=300000-") == 1, "the blob was resumed from byte 300000")
    ok(fs.exists(IMAGES .. "/blobs/sha256/" .. hex(layer)), "the layer is in the store")
    settled()
  end,

  t03_bad_partial_is_dropped = function()
    local r0 = registry.inspect(FRONT .. "/test/busybox")
    ok(registry.remove(r0.id, { force = true }))
    ok(registry.gc())
    local layer = r0.layers[1].digest
    ok(not fs.exists(IMAGES .. "/blobs/sha256/" .. hex(layer)), "gc removed the layer")
    fs.write(IMAGES .. "/tmp/" .. hex(layer) .. ".partial", string.rep("\0", 300000))
    local r, msg, code = registry.pull(REG .. "/test/busybox")
    expect_fail("corrupt", "digest mismatch", r, msg, code)
    ok(not fs.exists(IMAGES .. "/tmp/" .. hex(layer) .. ".partial"), "the bad partial is gone")
    ok(not fs.exists(IMAGES .. "/blobs/sha256/" .. hex(layer)), "nothing was stored")
  end,

  t04_pull_busybox_with_progress = function()
    local from = since()
    local msg
    img, msg = registry.pull(REG .. "/test/busybox")
    ok(img, "pull busybox", msg)
    eq(img.id, plain.busybox.config)
    eq(img.short_id, img.id:sub(8, 19))
    eq(#img.layers, 1)
    ok(img.size > 0 and img.layers[1].size > 0)
    eq(img.config.cmd[1], "/bin/sh")
    eq(img.config.stop_signal, "SIGTERM")
    eq(img.references[1], REG .. "/test/busybox:latest")
    eq(img.repo_digests[1], REG .. "/test/busybox@" .. plain.busybox.manifest)
    eq(img.disk, IMAGES .. "/disks/sha256-" .. hex(img.id) .. ".erofs")
    ok(fs.stat(img.disk).size > 0, "the disk exists")
    local prog = evs("image.pull.progress", from)
    ok(#prog >= 3, "progress events", #prog)
    local statuses = {}
    for _, p in ipairs(prog) do
      statuses[p.status] = true
    end
    ok(statuses.resolving and statuses.downloading and statuses["building disk"], "pull states", statuses)
    local last = prog[#prog]
    eq(last.reference, REG .. "/test/busybox:latest")
    eq(last.bytes_total, img.layers[1].size)
    eq(last.layers[1].digest, img.layers[1].digest)
    local done = evs("image.pull.done", from)
    eq(#done, 1)
    eq(done[1].cached, false)
    eq(done[1].id, img.id)
    local _, fstype = sh({ "stat", "-f", "-c", "%T", "/dev/shm" })
    eq(done[1].scratch, fstype == "tmpfs" and "ram" or "disk", "where the tree was unpacked")
    settled()
  end,

  t05_pull_again_is_cached = function()
    local from = since()
    local r = ok(registry.pull(REG .. "/test/busybox"))
    eq(r.id, img.id)
    eq(evs("image.pull.done", from)[1].cached, true)
  end,

  t06_concurrent_pulls_share_one_job = function()
    local from = since()
    local hs = {}
    for i = 1, 3 do
      hs[i] = task.spawn(function() return registry.pull(REG .. "/test/multi") end)
    end
    local msg
    multi, msg = registry.pull(REG .. "/test/multi")
    ok(multi, "pull multi", msg)
    for i = 1, 3 do
      local good, r = hs[i]:wait()
      ok(good and r and r.id == multi.id, "spawned pull " .. i)
    end
    eq(#evs("image.pull.done", from), 1, "one job")
    eq(multi.id, plain.multi.config)
    eq(#multi.layers, 5)
  end,

  t07_multi_tree = function()
    local t, close = open_disk(multi.disk)
    local good, err = pcall(function()
      ok(fs.exists(t .. "/data/keep"))
      ok(not fs.exists(t .. "/data/remove-me"), "whiteout removed a file")
      ok(not fs.exists(t .. "/data/olddir"), "whiteout removed a directory")
      eq(fs.list(t .. "/opaque"), { "upper" }, "opaque dir keeps only the upper layer")
      local _, found = sh({ "find", t, "-name", ".wh.*" })
      eq(found, "", "no whiteout files")
      local _, i1 = sh({ "stat", "-c", "%i %a", t .. "/usr-bin-tool" })
      local _, i2 = sh({ "stat", "-c", "%i %a", t .. "/tool-hardlink" })
      eq(i1, i2, "hard link shares the inode")
      ok(i1:match(" 4755$"), "setuid kept", i1)
      local _, own = sh({ "stat", "-c", "%u:%g:%a", t .. "/home/user" })
      eq(own, "1000:1000:750")
      local _, l1 = sh({ "readlink", t .. "/abs-link" })
      local _, l2 = sh({ "readlink", t .. "/rel-link" })
      eq(l1, "/etc/os-release")
      eq(l2, "etc/os-release")
      eq(fs.read(t .. "/" .. plain.multi.longdir .. "/deep-file"), "deep")
      ok(fs.exists(t .. "/zstd/hello") and fs.exists(t .. "/plain/hello"), "zstd and plain layers")
    end)
    close()
    ok(good, err)
  end,

  -- the RAM scratch runs out of inodes (ENOSPC) halfway: the pull starts its unpacking
  -- over on disk and succeeds
  t07_ram_full_falls_back_to_disk = function()
    if not RAM_TINY then
      skip("no small tmpfs (RAM_TINY)")
    end
    local from = since()
    registry.configure({ scratch = RAM_TINY })
    local r, msg = registry.pull(REG .. "/test/zstd")
    registry.configure({ scratch = "auto" })
    ok(r, "pull with a RAM scratch that fills up", msg)
    local done = evs("image.pull.done", from)
    eq(done[#done].scratch, "disk")
    -- nothing left in the small tmpfs: at most the store's own (empty) directory, which
    -- may not exist at all when the tmpfs was already out of inodes for it
    local tiny = fs.list(RAM_TINY) or {}
    ok(#tiny <= 1, "at most the per-store directory is left in the small tmpfs: " .. table.concat(tiny, " "))
    if tiny[1] then eq(fs.list(RAM_TINY .. "/" .. tiny[1]), {}, "and it is empty") end
    local t, close = open_disk(r.disk)
    local good, err = pcall(function()
      ok(fs.exists(t .. "/bin/busybox") or fs.exists(t .. "/bin/sh"), "the tree is complete")
      ok(fs.exists(t .. "/zstd/hello") or #fs.list(t) > 3, "with every layer")
    end)
    close()
    ok(good, err)
    settled()
  end,

  t08_more_formats = function()
    for _, name in ipairs({ "busybox-oci", "zstd", "plain" }) do
      local r, msg = registry.pull(REG .. "/test/" .. name)
      ok(r, name, msg)
      eq(r.id, plain[name].config, name)
    end
    local r = ok(registry.pull(REG .. "/test/busybox@" .. plain.busybox.manifest))
    eq(r.id, img.id, "by digest")
    r = ok(registry.pull(REG .. "/test/index"))
    eq(r.id, plain.index.config, "index resolves to linux/amd64")
    eq(r.config.cmd[2], "amd64")
    r = ok(registry.pull(REG .. "/test/index", { platform = "linux/arm64" }))
    eq(r.id, plain.index.arm64_config, "index with platform linux/arm64")
    expect_fail("not_found", "no manifest for linux/s390x",
      registry.pull(REG .. "/test/index", { platform = "linux/s390x" }))
    r = ok(registry.pull(REG .. "/test/dockerlist"))
    eq(r.id, plain.dockerlist.config, "docker manifest list")
    expect_fail("not_found", "manifest", registry.pull(REG .. "/test/busybox@sha256:" .. string.rep("0", 64)))
    expect_fail("invalid", "platform", registry.pull(REG .. "/test/index", { platform = "a/b/c/d" }))
  end,

  t09_inspect_and_list = function()
    eq(registry.inspect(REG .. "/test/busybox").id, img.id)
    eq(registry.inspect(REG .. "/test/busybox:latest").id, img.id)
    eq(registry.inspect(img.id).id, img.id)
    eq(registry.inspect(img.short_id).id, img.id)
    eq(registry.inspect(img.repo_digests[1]).id, img.id)
    expect_fail("not_found", nil, registry.inspect("nothing/here:1"))
    expect_fail("invalid", nil, registry.inspect("Not A Ref"))
    local ids = {}
    for _, r in ipairs(registry.list()) do
      ids[#ids + 1] = r.id
    end
    table.sort(ids)
    -- busybox-oci, zstd, plain and the docker list hold the same config: one image
    local want = { img.id, multi.id, plain.zstd.config, plain.index.config, plain.index.arm64_config }
    table.sort(want)
    eq(ids, want, "list")
  end,

  t10_errors_with_codes = function()
    local from = since()
    expect_fail("not_found", "manifest unknown", registry.pull(REG .. "/test/nope"))
    expect_fail("corrupt", "digest mismatch", registry.pull(REG .. "/test/corrupt"))
    expect_fail("corrupt", "truncated", registry.pull(REG .. "/test/truncated"))
    for _, k in ipairs({ "corrupt", "truncated" }) do
      ok(not fs.exists(IMAGES .. "/blobs/sha256/" .. hex(plain[k].bad_blob)), k .. " blob not stored")
      ok(not fs.exists(IMAGES .. "/tmp/" .. hex(plain[k].bad_blob) .. ".partial"), k .. " partial removed")
    end
    settled()
    expect_fail("invalid", nil, registry.pull("Bad Reference"))
    expect_fail("invalid", "lowercase", registry.pull(REG .. "/Test/Busybox"))
    eq(#evs("image.pull.failed", from), 3, "image.pull.failed events (bad references fail before a pull starts)")
    fails(function() registry.pull({}) end)
    fails(function() registry.pull(REG .. "/x", { auth = 5 }) end)
    fails(function() registry.pull(REG .. "/x", { auth = { username = 1 } }) end)
    fails(function() registry.pull(REG .. "/x", { auth = { username = "u", password = 5 } }) end)
  end,

  t11_registry_down = function()
    local port = os.getenv("DEAD_PORT")
    registry.configure({ retries = 2 })
    local r, msg, code = registry.pull("127.0.0.1:" .. port .. "/test/busybox")
    registry.configure({ retries = 4 })
    expect_fail("unreachable", "gave up after 3 attempts", r, msg, code)
  end,

  t12_malicious_layers = function()
    for _, evil in ipairs({ "dotdot", "hardlink", "whiteout-dotdot", "longname", "symlink", "symlink-rel" }) do
      expect_fail("invalid", "layer", registry.pull(REG .. "/test/evil-" .. evil))
    end
    ok(registry.pull(REG .. "/test/evil-absolute"), "absolute paths land inside the root")
    ok(registry.pull(REG .. "/test/evil-device"), "device nodes are skipped")
    ok(not fs.exists(ESCAPE), "nothing escaped to " .. ESCAPE)
    settled()
  end,

  t13_basic_auth = function()
    expect_fail("unauthorized", "authentication required", registry.pull(BASIC .. "/test/busybox"))
    expect_fail("unauthorized", "incorrect username or password",
      registry.pull(BASIC .. "/test/busybox", { auth = { username = "testuser", password = "nope" } }))
    ok(registry.pull(BASIC .. "/test/busybox", { auth = { username = "testuser", password = "testpass" } }))
  end,

  t14_token_auth_and_token_cache = function()
    local log = os.getenv("TOKEN_LOG")
    local scope_busybox = "scope=repository%3Atest%2Fbusybox%3Apull"
    local n0 = count_lines(log, scope_busybox)
    ok(registry.pull(TOKEN .. "/test/busybox"), "anonymous pull")
    local n1 = count_lines(log, scope_busybox)
    ok(n1 > n0, "a token was fetched")
    ok(registry.pull(TOKEN .. "/test/busybox"), "again")
    eq(count_lines(log, scope_busybox), n1, "the cached token for the scope was reused")
    local scope_nope = "scope=repository%3Atest%2Fnope%3Apull"
    local m0 = count_lines(log, scope_nope)
    expect_fail("not_found", "manifest unknown", registry.pull(TOKEN .. "/test/nope"))
    eq(count_lines(log, scope_nope), m0 + 1, "another scope, another token")
    expect_fail("unauthorized", "pull access denied", registry.pull(TOKEN .. "/private/busybox"))
    expect_fail("unauthorized", "incorrect username or password",
      registry.pull(TOKEN .. "/private/busybox", { auth = { username = "testuser", password = "wrong" } }))
    ok(registry.pull(TOKEN .. "/private/busybox", { auth = { username = "testuser", password = "testpass" } }))
  end,

  t15_x_registry_auth = function()
    local xra = base64url('{"username":"testuser","password":"testpass"}')
    ok(registry.pull(BASIC .. "/test/busybox", { auth = xra }), "X-Registry-Auth (basic)")
    ok(registry.pull(TOKEN .. "/private/busybox", { auth = xra }), "X-Registry-Auth (token)")
    expect_fail("invalid", "X-Registry-Auth", registry.pull(TOKEN .. "/private/busybox", { auth = "!!" }))
  end,

  t16_login_store = function()
    local from = since()
    expect_fail("unauthorized", nil, registry.login(BASIC, "testuser", "wrong"))
    ok(registry.login(BASIC, "testuser", "testpass"))
    ok(registry.pull(BASIC .. "/test/busybox"), "pull with the stored login")
    local logins = registry.logins()
    eq(#logins, 1)
    eq(logins[1].username, "testuser")
    eq(logins[1].password, nil)
    local st = fs.stat(STATE .. "/registry/auth.json")
    eq(st.mode & 511, 384, "auth.json is 0600")
    expect_fail("unauthorized", nil, registry.login(TOKEN, "testuser", "bad"))
    ok(registry.login(TOKEN, "testuser", "testpass"))
    ok(registry.pull(TOKEN .. "/private/busybox"), "private pull with the stored token-registry login")
    eq(#registry.logins(), 2)
    eq(#evs("registry.login", from), 2)
  end,

  t17_no_secret_anywhere = function()
    local function has_secret(v)
      if type(v) == "string" then
        return v:find("testpass", 1, true) ~= nil or v:find("dGVzdHVzZXI6dGVzdHBhc3M", 1, true) ~= nil
      end
      if type(v) == "table" then
        for k, x in pairs(v) do
          if has_secret(k) or has_secret(x) then
            return true
          end
        end
      end
      return false
    end
    local all = events.list({ since = 0, limit = 100000 })
    ok(#all > 10)
    ok(not has_secret(all), "no password in any event")
    ok(not has_secret(registry.list()), "no password in any record")
    ok(not has_secret(registry.logins()), "no password in logins()")
    ok(not has_secret(db.query("SELECT * FROM registry_images")), "nor in the image table")
  end,

  t18_logout = function()
    ok(registry.logout(BASIC))
    ok(registry.logout(TOKEN))
    eq(#registry.logins(), 0)
    expect_fail("not_found", nil, registry.logout(BASIC))
    expect_fail("unauthorized", nil, registry.pull(BASIC .. "/test/busybox"))
  end,

  t19_docker_config_json = function()
    local alias = os.getenv("REG_basic_alias")
    ok(registry.pull(alias .. "/test/busybox"), "credentials from ~/.docker/config.json")
  end,

  t20_use_remove_release_gc = function()
    eq(registry.use(REG .. "/test/busybox", "container-1"), img.id)
    local info = registry.inspect(img.id)
    eq(info.in_use, 1)
    eq(info.holders[1], "container-1")
    expect_fail("conflict", "in use", registry.remove(img.id, { force = true }))
    eq(registry.release(img.id, "container-1"), true)
    -- busybox has several names by now (plain, by digest, the alias...)
    expect_fail("conflict", "names", registry.remove(img.id))
    local r = ok(registry.remove(REG .. "/test/busybox"))
    eq(r.deleted, false)
    eq(r.untagged, { REG .. "/test/busybox:latest" })
    r = ok(registry.remove(img.id, { force = true }))
    eq(r.deleted, true)
    expect_fail("not_found", nil, registry.inspect(img.id))
    local g = registry.gc()
    ok(g and g.blobs_removed >= 0, "gc", g)
    ok(not fs.exists(img.disk), "the removed image's disk is gone")
    ok(not fs.exists(IMAGES .. "/blobs/sha256/" .. hex(img.id)), "its config blob is gone")
    ok(fs.stat(multi.disk).size > 0, "the kept image's disk stays")
    ok(fs.exists(IMAGES .. "/blobs/sha256/" .. hex(multi.layers[1].digest)), "and its layers")
  end,

  t21_load_archives = function()
    local loaded, msg = registry.load(FIX .. "/busybox-docker.tar")
    ok(loaded, "docker archive", msg)
    eq(#loaded, 1)
    eq(loaded[1].id, plain.busybox.config, "the same id as the pulled image")
    eq(loaded[1].references, { "docker.io/test/busybox:latest" })
    ok(fs.stat(loaded[1].disk).size > 0)
    loaded, msg = registry.load(FIX .. "/busybox-docker.tar.gz")
    ok(loaded and loaded[1].id == plain.busybox.config, "docker archive .tar.gz", msg)
    loaded, msg = registry.load(FIX .. "/multi-oci.tar")
    ok(loaded, "OCI archive", msg)
    eq(loaded[1].id, multi.id)
    eq(#loaded[1].layers, 5)
    expect_fail("invalid", nil, registry.load("/etc/hostname"))
    expect_fail("not_found", nil, registry.load(FIX .. "/no-such.tar"))
  end,

  t22_misuse_raises = function()
    fails(function() registry.inspect() end)
    fails(function() registry.use("x") end)
    fails(function() registry.configure("x") end)
    -- waiting calls outside a task raise (db.transaction runs its function unyieldably)
    fails(function() db.transaction(function() registry.pull(REG .. "/test/busybox") end) end)
    fails(function() db.transaction(function() registry.gc() end) end)
  end,
}
