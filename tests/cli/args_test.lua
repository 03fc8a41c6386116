-- Unit tests of cli/args.lua (docker-style flag parsing), run by the real binary:
--   moonbox test tests/cli/args_test.lua
local args = require("cli.args")
local errors = require("cli.errors")

local RUN = {
  name = "run", interspersed = false,
  flags = {
    { "d", "detach", "bool", "detach" },
    { "i", "interactive", "bool", "stdin" },
    { "t", "tty", "bool", "tty" },
    { "p", "publish", "list", "ports" },
    { "e", "env", "list", "env" },
    { nil, "name", "string", "name" },
    { nil, "rm", "bool", "remove" },
    { nil, "cpus", "number", "cpus" },
    { nil, "health-retries", "int", "retries" },
    { "h", "hostname", "string", "hostname" },
  },
}

local function has(s, sub) return s:find(sub, 1, true) ~= nil end

local function usage_error(fn)
  local ok, e = pcall(fn)
  ok = not ok and errors.is(e) and e.kind == "usage"
  return ok, e
end

return {
  test_combined_short_flags = function()
    local o, pos = args.parse(RUN, { "-it", "alpine", "sh" })
    eq(o.interactive, true); eq(o.tty, true); eq(o.detach, nil)
    eq(pos, { "alpine", "sh" })
    o = args.parse(RUN, { "-dit", "x" })
    eq({ o.detach, o.interactive, o.tty }, { true, true, true })
  end,

  test_value_forms = function()
    local o = args.parse(RUN, { "-p", "80:80", "-p8080:80", "-p=1:2", "--publish", "3:4",
      "--publish=5:6", "-e", "A=1", "--name=web", "--cpus", "0.5", "--health-retries=3", "img" })
    eq(o.publish, { "80:80", "8080:80", "1:2", "3:4", "5:6" })
    eq(o.env, { "A=1" }); eq(o.name, "web"); eq(o.cpus, 0.5); eq(o.health_retries, 3)
  end,

  test_value_flag_last_in_cluster = function()
    local o, pos = args.parse(RUN, { "-itp", "80:80", "img" })
    eq(o.tty, true); eq(o.publish, { "80:80" }); eq(pos, { "img" })
    o = args.parse(RUN, { "-dp8080:80", "img" })
    eq(o.detach, true); eq(o.publish, { "8080:80" })
  end,

  test_bool_with_value = function()
    local o = args.parse(RUN, { "--rm=false", "-d=true", "img" })
    eq(o.rm, false); eq(o.detach, true)
    ok(usage_error(function() args.parse(RUN, { "--rm=maybe", "img" }) end))
  end,

  test_stops_at_first_positional = function()
    local o, pos = args.parse(RUN, { "-d", "alpine", "ls", "-l", "--name", "x" })
    eq(o.name, nil)
    eq(pos, { "alpine", "ls", "-l", "--name", "x" })
  end,

  test_double_dash = function()
    local _, pos = args.parse({ name = "x", flags = { { "f", "force", "bool", "" } } },
      { "-f", "--", "-a", "b" })
    eq(pos, { "-a", "b" })
  end,

  test_interspersed = function()
    local spec = { name = "rm", flags = { { "f", "force", "bool", "" } } }
    local o, pos = args.parse(spec, { "a", "-f", "b", "-" })
    eq(o.force, true); eq(pos, { "a", "b", "-" })
  end,

  test_errors = function()
    local good, e = usage_error(function() args.parse(RUN, { "--nope", "img" }) end)
    ok(good); ok(has(e.message, "unknown flag: --nope"), e.message)
    good, e = usage_error(function() args.parse(RUN, { "-x", "img" }) end)
    ok(good); ok(has(e.message, "unknown shorthand flag: 'x'"), e.message)
    good, e = usage_error(function() args.parse(RUN, { "--name" }) end)
    ok(good); ok(has(e.message, "needs an argument"), e.message)
    good, e = usage_error(function() args.parse(RUN, { "--cpus", "lots", "img" }) end)
    ok(good); ok(has(e.message, "not a number"), e.message)
    good, e = usage_error(function() args.parse(RUN, { "--health-retries", "1.5", "i" }) end)
    ok(good); ok(has(e.message, "not an integer"), e.message)
  end,

  test_help_flag = function()
    -- run uses -h for --hostname, so only --help asks for help there
    local o = args.parse(RUN, { "-h", "box", "img" })
    eq(o.hostname, "box"); eq(o.help, nil)
    o = args.parse(RUN, { "--help" })
    eq(o.help, true)
    o = args.parse({ name = "ps", flags = {} }, { "-h" })
    eq(o.help, true)
    local text = args.help(RUN)
    ok(text:find("Usage:  moonbox run"), text)
    ok(text:find("%-p, %-%-publish list"), text)
    ok(text:find("    %-%-name string"), text)
  end,

  test_format_flag = function()
    local o = args.parse({ name = "ps", format = true, flags = {} }, { "--format", "json" })
    eq(o.format, "json")
    ok(usage_error(function() args.parse({ name = "x", flags = {} }, { "--format", "json" }) end))
  end,

  test_check_count = function()
    local spec = { name = "stop", min_args = 1 }
    local good, e = usage_error(function() args.check_count(spec, {}) end)
    ok(good); eq(e.message, '"moonbox stop" requires at least 1 argument.')
    args.check_count(spec, { "a", "b" })
    good, e = usage_error(function() args.check_count({ name = "info", max_args = 0 }, { "x" }) end)
    ok(good); eq(e.message, '"moonbox info" accepts no arguments.')
    good, e = usage_error(function() args.check_count({ name = "cp", min_args = 2, max_args = 2 }, { "x" }) end)
    ok(good); eq(e.message, '"moonbox cp" requires exactly 2 arguments.')
  end,
}
