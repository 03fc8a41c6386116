-- Core runtime tests, run inside the real binary:
--   moonbox test --no-shipped --script-budget 400 --socket S tests/lua/core_test.lua
-- Each test is a task, so it may wait.

local SOCK = moonbox.config("socket")

local function get(path, opts)
  opts = opts or {}
  opts.url = "http://moonbox" .. path
  opts.unix_socket = SOCK
  return http.request(opts)
end

local T = {}

-- tasks -----------------------------------------------------------------------

function T.test_spawn_wait_returns_results()
  local h = task.spawn(function(a, b) timer.sleep(0.01); return a + b, "x" end, 2, 3)
  ok(h.id > 0)
  local good, sum, x = h:wait()
  eq({ good, sum, x }, { true, 5, "x" })
  eq(h:status(), "done")
end

function T.test_wait_reports_failure()
  local h = task.spawn(function() error("boom") end)
  local r, err = h:wait()
  eq(r, nil)
  ok(err:find("boom"), "error message", err)
  eq(h:status(), "failed")
end

function T.test_cancel_runs_cleanup()
  local closed = false
  local h = task.spawn(function()
    local guard <close> = setmetatable({}, { __close = function() closed = true end })
    timer.sleep(60)
  end)
  task.yield()
  h:cancel()
  local r, _, code = h:wait()
  eq(r, nil); eq(code, "cancelled")
  ok(closed, "to-be-closed variable closed on cancel")
end

function T.test_conditions()
  local c = task.cond()
  local woke = {}
  local hs = {}
  for i = 1, 3 do hs[i] = task.spawn(function() ok(c:wait(5)); woke[#woke + 1] = i end) end
  task.yield()
  eq(c:signal(), 3)
  for i = 1, 3 do hs[i]:wait() end
  eq(#woke, 3)
  local r, _, code = c:wait(0.02)
  eq(r, nil); eq(code, "timeout")
  eq(c:signal(), 0)
  -- a cancelled waiter leaves the condition clean
  local h = task.spawn(function() c:wait() end)
  task.yield(); h:cancel()
  eq(c:signal(), 0)
end

function T.test_wait_timeout()
  local h = task.spawn(function() timer.sleep(5) end)
  local r, _, code = h:wait(0.05)
  eq(r, nil); eq(code, "timeout")
  h:cancel()
end

function T.test_sleeps_interleave_in_deadline_order()
  local order = {}
  local hs = {}
  for _, d in ipairs({ 0.06, 0.02, 0.04 }) do
    hs[#hs + 1] = task.spawn(function() timer.sleep(d); order[#order + 1] = d end)
  end
  for _, h in ipairs(hs) do h:wait() end
  eq(order, { 0.02, 0.04, 0.06 })
end

function T.test_many_tasks_wait_concurrently()
  local t0 = timer.now()
  local hs = {}
  for i = 1, 200 do hs[i] = task.spawn(function() timer.sleep(0.1); return i end) end
  local sum = 0
  for i = 1, 200 do local _, v = hs[i]:wait(); sum = sum + v end
  eq(sum, 200 * 201 // 2)
  -- 200 sleeps of 0.1 s overlapped: the waits did not run one after another
  ok(timer.now() - t0 < 200 * 0.1, "sleeps overlapped")
end

function T.test_load_is_text_only_and_keeps_env()
  local f = assert(load("return 1 + 1", "two"))
  eq(f(), 2)
  eq(assert(load("return tostring(41 + 1)", "=x", "b"))(), "42") -- mode forced to text
  eq(load("return x", "=e", "t", { x = 7 })(), 7)
  local r, err = load(string.dump(function() return 1 end))
  eq(r, nil); ok(err:find("binary"))
end

function T.test_misuse_raises()
  fails(function() timer.sleep("soon") end, "number expected")
  fails(function() timer.sleep(-1) end, ">= 0")
  fails(function() task.spawn(42) end, "function expected")
end

-- coroutines nest under the scheduler --------------------------------------------

function T.test_user_coroutine_can_wait()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do
      timer.sleep(0.005) -- waits on the loop from inside a user coroutine
      coroutine.yield(i)
    end
  end)
  eq({ gen(), gen(), gen() }, { 1, 2, 3 })
end

function T.test_nested_resume_passes_values()
  local co = coroutine.create(function(a)
    local b = coroutine.yield(a * 2)
    timer.sleep(0.001)
    return a + b
  end)
  local ok1, v1 = coroutine.resume(co, 5)
  local ok2, v2 = coroutine.resume(co, 10)
  eq({ ok1, v1, ok2, v2 }, { true, 10, true, 15 })
end

function T.test_cannot_wait_inside_transaction_or_sort()
  fails(function() db.transaction(function() timer.sleep(0.01) end) end, "cannot wait here")
  fails(function()
    table.sort({ 3, 2, 1 }, function(a, b) timer.sleep(0); return a < b end)
  end, "yield")
  -- still usable afterwards
  timer.sleep(0.001)
end

function T.test_runaway_task_is_stopped()
  local h = task.spawn(function() while true do end end)
  local r, err = h:wait()
  eq(r, nil)
  ok(err:find("runaway") or err:find("ran for more than"), "runaway message", err)
  -- a pcall cannot swallow it
  local h2 = task.spawn(function()
    for _ = 1, 100 do pcall(function() while true do end end) end
    return "escaped"
  end)
  local r2 = h2:wait()
  eq(r2, nil)
  -- and the runtime still works
  local h3 = task.spawn(function() return "fine" end)
  local _, v = h3:wait()
  eq(v, "fine")
end

-- json ---------------------------------------------------------------------------

function T.test_json_conventions()
  local v = json.decode('{"a":[],"b":{},"c":null,"d":1,"e":2.0}')
  ok(json.is_array(v.a)); ok(not json.is_array(v.b))
  eq(v.c, json.null)
  eq(math.type(v.d), "integer"); eq(math.type(v.e), "float")
  eq(json.encode(v, { sort = true }), '{"a":[],"b":{},"c":null,"d":1,"e":2.0}')
  eq(json.encode(json.array()), "[]")
  local r, err, code = json.decode("{bad")
  eq(r, nil); eq(code, "invalid"); ok(err:find("invalid JSON"))
  local r2, _, code2 = json.encode("\xff")
  eq(r2, nil); eq(code2, "invalid")
end

-- db -----------------------------------------------------------------------------

function T.test_db_roundtrip()
  ok(db.migrate("core_test", {
    "CREATE TABLE things(id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL, data BLOB)",
  }))
  local n, id = db.run("INSERT INTO things(name, score) VALUES (?, ?)", "a", 1.5)
  eq(n, 1); ok(id > 0)
  db.run("INSERT INTO things(name, score, data) VALUES (:name, :score, :data)",
    { name = "b", score = 2, data = db.blob("\0\1\2") })
  local rows = db.query("SELECT name, score, data FROM things ORDER BY name")
  eq(#rows, 2)
  eq(rows[1], { name = "a", score = 1.5 }) -- NULL columns are absent
  eq(rows[2].data, "\0\1\2")
  eq(db.row("SELECT name FROM things WHERE name = ?", "zzz"), nil)
  -- constraint violation is an operational failure
  local r, err, code = db.run("INSERT INTO things(name) VALUES ('a')")
  eq(r, nil); eq(code, "conflict"); ok(err:find("UNIQUE"))
  -- misuse raises
  fails(function() db.query("SELECT ?", 1, 2) end, "parameter")
  fails(function() db.query("NOT SQL") end, "syntax")
  fails(function() db.run("INSERT INTO things(name, score) VALUES (?, ?)", "z", {}) end, "cannot bind")
end

function T.test_db_transaction_rolls_back_on_error()
  db.migrate("core_tx", { "CREATE TABLE tx(x INTEGER)" })
  fails(function()
    db.transaction(function()
      db.run("INSERT INTO tx VALUES (1)")
      error("abort")
    end)
  end, "abort")
  eq(db.row("SELECT count(*) AS n FROM tx").n, 0)
  local a, b = db.transaction(function(x) db.run("INSERT INTO tx VALUES (?)", x); return x, "ok" end, 7)
  eq({ a, b }, { 7, "ok" })
  eq(db.row("SELECT count(*) AS n FROM tx").n, 1)
end

function T.test_db_prepared_statement()
  db.migrate("core_prep", { "CREATE TABLE p(k TEXT, v INTEGER)" })
  local ins = db.prepare("INSERT INTO p VALUES (?, ?)")
  for i = 1, 5 do ins:run("k" .. i, i) end
  ins:close()
  fails(function() ins:run("x", 1) end, "closed")
  local sel = db.prepare("SELECT sum(v) AS s FROM p WHERE v > ?")
  eq(sel:row(2).s, 12)
end

-- events -------------------------------------------------------------------------

function T.test_events_handlers_and_subscriptions()
  local seen = {}
  local id = events.on("coretest.*", function(ev) seen[#seen + 1] = ev.data.n end)
  local before = events.last_id()
  local sub = events.subscribe { pattern = "coretest.a" }
  local e1 = events.emit("coretest.a", { n = 1 })
  events.emit("coretest.b", { n = 2 })
  ok(e1 > before)
  local ev = sub:next(1)
  eq(ev.type, "coretest.a"); eq(ev.data, { n = 1 }); eq(ev.id, e1)
  local none, _, code = sub:next(0.05)
  eq(none, nil); eq(code, "timeout")
  -- a waiting subscriber wakes on a new event
  local h = task.spawn(function() return sub:next(5) end)
  task.yield()
  events.emit("coretest.a", { n = 3 })
  local _, ev3 = h:wait()
  eq(ev3.data, { n = 3 })
  timer.sleep(0.01) -- handler tasks run
  table.sort(seen)
  eq(seen, { 1, 2, 3 })
  events.off(id)
  -- replay from the store
  local list = events.list { since = before, pattern = "coretest.*" }
  eq(#list, 3)
  local replay = events.subscribe { since = before, pattern = "coretest.b" }
  eq(replay:next(0).data, { n = 2 })
  local r, _, c = events.emit("Bad Type!")
  eq(r, nil); eq(c, "invalid")
end

-- fs and proc --------------------------------------------------------------------

function T.test_fs()
  local d = TEST_DIR .. "/fs"
  ok(fs.mkdir(d .. "/a/b"))
  ok(fs.write(d .. "/a/f.txt", "hello", { mode = 384 }))
  eq(fs.read(d .. "/a/f.txt"), "hello")
  eq(fs.stat(d .. "/a/f.txt").mode, 384)
  ok(fs.append(d .. "/a/f.txt", " world"))
  eq(fs.read(d .. "/a/f.txt"), "hello world")
  eq(fs.read_at(d .. "/a/f.txt", 6, 5), "world")
  eq(fs.read_at(d .. "/a/f.txt", 6, 100), "world") -- short at the end
  eq(fs.read_at(d .. "/a/f.txt", 11, 10), "")
  eq(fs.read_at(d .. "/a/f.txt", 99, 10), "")
  local ra, _, rcode = fs.read_at(d .. "/nope", 0, 1)
  eq(ra, nil); eq(rcode, "not_found")
  fails(function() fs.read_at(d .. "/a/f.txt", -1, 1) end, "offset")
  fails(function() fs.read_at(d .. "/a/f.txt", 0, 17 * 1024 * 1024) end, "len")
  eq(fs.list(d .. "/a"), { "b", "f.txt" })
  ok(fs.truncate(d .. "/sparse", 64 * 1024 * 1024))
  ok(fs.copy(d .. "/sparse", d .. "/sparse2"))
  local st = fs.stat(d .. "/sparse2")
  eq(st.size, 64 * 1024 * 1024)
  ok(st.allocated < 1024 * 1024, "copy kept the holes")
  local r, _, code = fs.read(d .. "/missing")
  eq(r, nil); eq(code, "not_found")
  ok(fs.symlink("a/f.txt", d .. "/ln"))
  eq(fs.stat(d .. "/ln").type, "link")
  eq(fs.readlink(d .. "/ln"), "a/f.txt")
  local r2, _, code2 = fs.symlink("x", d .. "/ln")
  eq(r2, nil); eq(code2, "conflict")
  local r3, m3 = fs.readlink(d .. "/a/f.txt")
  eq(r3, nil); ok(m3:find("readlink", 1, true), m3)
  fails(function() fs.symlink(nil, "x") end)
  fails(function() fs.rmtree("/") end, "refusing")
  ok(fs.rmtree(d))
  ok(not fs.exists(d))
end

function T.test_proc()
  local r = proc.run({ "sh", "-c", "echo out; echo err >&2; exit 3" })
  eq({ r.code, r.stdout, r.stderr }, { 3, "out\n", "err\n" })
  eq(proc.run({ "cat" }, { stdin = "piped" }).stdout, "piped")
  local slow = proc.run({ "sleep", "10" }, { timeout = 0.1 })
  eq(slow.signal, 9); ok(slow.timed_out)
  local none, err, code = proc.run({ "/nonexistent/program" })
  eq(none, nil); eq(code, "not_found"); ok(err:find("nonexistent"))
end

-- HTTP: the server and the client in one loop --------------------------------------

function T.test_routes_and_client()
  api.route("GET", "/v1/coretest/hello/{name}", function(req)
    timer.sleep(0.01)
    return { hello = req.params.name, q = req.query.q }
  end)
  api.route("POST", "/v1/coretest/echo", function(req)
    local body = req:json()
    if type(body.n) ~= "number" then api.error(400, "invalid", "n: a number is required", { field = "n" }) end
    return 201, { n = body.n + 1 }, { ["X-Test"] = "yes" }
  end)
  local r = get("/v1/coretest/hello/moon?q=1")
  eq(r.status, 200)
  eq(json.decode(r.body), { hello = "moon", q = "1" })
  eq(r.headers["content-type"], "application/json")
  local p = get("/v1/coretest/echo", { method = "POST", body = '{"n":41}' })
  eq(p.status, 201); eq(json.decode(p.body), { n = 42 }); eq(p.headers["x-test"], "yes")
  local bad = get("/v1/coretest/echo", { method = "POST", body = '{"n":"x"}' })
  eq(bad.status, 400)
  eq(json.decode(bad.body).error, { code = "invalid", message = "n: a number is required", field = "n" })
  local malformed = get("/v1/coretest/echo", { method = "POST", body = "{" })
  eq(malformed.status, 400); eq(json.decode(malformed.body).error.code, "invalid_json")
  eq(get("/v1/coretest/nothing").status, 404)
  local m = get("/v1/coretest/echo")
  eq(m.status, 405); eq(m.headers["allow"], "POST")
  -- a client error is an operational failure, not a raise
  local r2, err, code = http.request { url = "http://127.0.0.1:1/", timeout = 2 }
  eq(r2, nil); eq(code, "unreachable"); ok(err ~= "")
end

function T.test_streaming_response()
  api.route("GET", "/v1/coretest/stream", function(req)
    local s = req:stream(200, { ["Content-Type"] = "text/plain" })
    for i = 1, 3 do ok(s:write("chunk" .. i .. "\n")); timer.sleep(0.01) end
    s:close()
  end)
  api.route("GET", "/v1/coretest/sse", function(req)
    local s = req:sse()
    s:send { event = "greeting", id = 7, data = { text = "line1\nline2" } }
    s:send { data = "a\nb" }
    s:close()
  end)
  local r = get("/v1/coretest/stream")
  eq(r.status, 200); eq(r.body, "chunk1\nchunk2\nchunk3\n")
  eq(r.headers["transfer-encoding"], "chunked")
  local s = get("/v1/coretest/sse")
  eq(s.headers["content-type"], "text/event-stream")
  eq(s.body, 'event: greeting\nid: 7\ndata: {"text":"line1\\nline2"}\n\ndata: a\ndata: b\n\n')
end

function T.test_streaming_client()
  api.route("GET", "/v1/coretest/slowstream", function(req)
    local s = req:stream(200, { ["Content-Type"] = "text/plain", ["X-Kind"] = "slow" })
    for i = 1, 4 do s:write(string.rep(tostring(i), 1000)); timer.sleep(0.02) end
    s:close()
  end)
  api.route("GET", "/v1/coretest/big", function(req)
    local s = req:stream(200)
    local chunk = string.rep("x", 65536)
    for _ = 1, 64 do if not s:write(chunk) then break end end -- 4 MiB
    s:close()
  end)
  api.route("PUT", "/v1/coretest/upload", function(req)
    return { size = req.body_size, sha = moonbox.sha256(fs.read(req.body_path, 1 << 30)) }
  end, { body = "file" })
  local r = http.stream { url = "http://moonbox/v1/coretest/slowstream", unix_socket = SOCK }
  eq(r.status, 200); eq(r.headers["x-kind"], "slow")
  local got = {}
  while true do
    local chunk, err = r:read(5)
    if not chunk then eq(err, nil); break end
    got[#got + 1] = chunk
  end
  eq(table.concat(got), string.rep("1", 1000) .. string.rep("2", 1000) .. string.rep("3", 1000) .. string.rep("4", 1000))
  -- a slow reader: the transfer pauses instead of buffering everything
  local b = http.stream { url = "http://moonbox/v1/coretest/big", unix_socket = SOCK }
  local total = 0
  timer.sleep(0.2)
  while true do
    local chunk = b:read(5)
    if not chunk then break end
    ok(#chunk <= 2 * 1024 * 1024, "never more than about the pause threshold buffered")
    total = total + #chunk
  end
  eq(total, 4 * 1024 * 1024)
  -- close early, and a read timeout
  local c = http.stream { url = "http://moonbox/v1/coretest/slowstream", unix_socket = SOCK }
  c:read(5)
  local none, _, code = c:read(0)
  eq(none, nil); eq(code, "timeout")
  c:close()
  local r2, _, code2 = c:read()
  eq(r2, nil); eq(code2, "closed")
  -- failures before the headers are operational errors
  local bad, _, bcode = http.stream { url = "http://127.0.0.1:1/", timeout = 2 }
  eq(bad, nil); eq(bcode, "unreachable")
  -- uploads from a file
  fs.write(TEST_DIR .. "/up.bin", string.rep("ab", 100000))
  local up = http.request { method = "PUT", url = "http://moonbox/v1/coretest/upload", unix_socket = SOCK,
                            body_file = TEST_DIR .. "/up.bin" }
  eq(up.status, 200)
  eq(json.decode(up.body), { size = 200000, sha = moonbox.sha256(string.rep("ab", 100000)) })
end

function T.test_websocket_client_and_server()
  api.route("GET", "/v1/coretest/ws", function(req)
    local sock = req:websocket()
    while true do
      local msg, kind = sock:recv()
      if not msg then break end
      if msg == "bye" then sock:close(4001, "done"); break end
      sock:send(kind == "text" and msg:upper() or msg, kind)
    end
  end)
  local c = ws.connect { unix_socket = SOCK, path = "/v1/coretest/ws" }
  ok(c, "connected")
  ok(c:send("hello"))
  eq({ c:recv(5) }, { "HELLO", "text" })
  local blob = string.rep("\0\1\2\255", 50000) -- 200 KB, masked by the client
  ok(c:send(blob, "binary"))
  eq({ c:recv(5) }, { blob, "binary" })
  c:send("bye")
  local none, _, code = c:recv(5)
  eq(none, nil); eq(code, "closed"); eq(c:close_code(), 4001)
  -- a route that does not upgrade, and one that does not exist
  local r, err, code2 = ws.connect { unix_socket = SOCK, path = "/v1/coretest/nothing" }
  eq(r, nil); eq(code2, "not_found"); ok(err:find("404"))
  fails(function() ws.connect { url = "http://x" } end, "ws://")
end

function T.test_handler_errors_become_json()
  api.route("GET", "/v1/coretest/crash", function() local x = nil; return x.y end)
  api.route("GET", "/v1/coretest/gone", function() api.fail("no such widget", "not_found") end)
  local r = get("/v1/coretest/crash")
  eq(r.status, 500)
  local e = json.decode(r.body).error
  eq(e.code, "internal"); ok(e.message:find("attempt to index"))
  local g = get("/v1/coretest/gone")
  eq(g.status, 404); eq(json.decode(g.body).error.message, "no such widget")
end

return T
