-- Runs inside the real binary: moonbox test --plugins DIR plugins/example/example_test.lua
return {
  test_module_is_there = function()
    ok(example, "the example module is registered")
    eq(example.greet("moon"), "hello, moon")
    eq(example.add(2, 40), 42)
  end,
  test_misuse_raises = function()
    fails(function() example.add("x", 1) end, "number expected")
  end,
  test_later_yields = function()
    local t0 = timer.now()
    local h = task.spawn(function() return example.later(0.05, "b") end)
    local v = example.later(0.1, { a = 1 })
    eq(v, { a = 1 })
    local good, r = h:wait()
    ok(good); eq(r, "b")
    ok(timer.now() - t0 >= 0.1, "waited")
  end,
  test_cancel_releases = function()
    local h = task.spawn(function() return example.later(30, "never") end)
    task.yield()
    h:cancel()
    eq(h:status(), "cancelled")
  end,
  test_unload_refused_while_held = function()
    example.hold()
    local good, err, code = plugins.unload("example")
    eq(good, nil); eq(code, "conflict"); ok(err:find("live resource"))
    example.release()
    local r, e2, c2 = example.release()
    eq(r, nil); eq(c2, "invalid")
  end,
}
