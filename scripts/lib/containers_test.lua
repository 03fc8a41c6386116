-- containers.lua's pure parts, run by the real binary (moonbox test).
local containers = require("containers")

return {
  test_human_durations_like_docker = function()
    local h = containers.human
    eq(h(0.4), "Less than a second")
    eq(h(1.7), "1 second")
    eq(h(59), "59 seconds")
    eq(h(60), "About a minute")
    eq(h(119), "About a minute")
    eq(h(120), "2 minutes")
    eq(h(3599), "59 minutes")
    eq(h(3600), "About an hour")
    eq(h(5 * 3600), "5 hours")
    eq(h(3 * 86400), "3 days")
    eq(h(20 * 86400), "2 weeks")
    eq(h(90 * 86400), "3 months")
    eq(h(800 * 86400), "2 years")
    eq(h(-5), "Less than a second")
  end,

  test_short_id = function()
    eq(containers.short(string.rep("ab", 32)), "abababababab")
  end,
}
