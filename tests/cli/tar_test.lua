-- Unit tests of cli/tar.lua: round trips, long names, chunked input, and archives made
-- by GNU tar (when /usr/bin/tar is there; proc is not in the client runtime, but the
-- test runner has it).
local tar = require("cli.tar")

local function archive(entries)
  local parts = {}
  for _, e in ipairs(entries) do parts[#parts + 1] = tar.entry(e[1], e[2]) end
  parts[#parts + 1] = tar.finish()
  return table.concat(parts)
end

local function strip(entries)
  local out = {}
  for _, e in ipairs(entries) do
    local h = e[1]
    out[#out + 1] = { h.name, h.type, h.mode, e[2], h.linkname }
  end
  return out
end

return {
  test_round_trip = function()
    local big = string.rep("0123456789", 130) -- 1300 bytes: not a multiple of 512
    local data = archive {
      { { name = "dir", type = "dir", mode = 493, mtime = 1700000000 } },
      { { name = "dir/a.txt", mode = 420, mtime = 1700000000 }, "hello\n" },
      { { name = "dir/big", mode = 384 }, big },
      { { name = "dir/empty" }, "" },
      { { name = "dir/link", type = "symlink", linkname = "a.txt" } },
    }
    eq(#data % 512, 0)
    local entries = ok(tar.list(data))
    eq(strip(entries), {
      { "dir", "dir", 493, "", "" },
      { "dir/a.txt", "file", 420, "hello\n", "" },
      { "dir/big", "file", 384, big, "" },
      { "dir/empty", "file", 420, "", "" },
      { "dir/link", "symlink", 511, "", "a.txt" },
    })
    eq(entries[2][1].mtime, 1700000000)
  end,

  test_long_names = function()
    local mid = string.rep("d", 90) .. "/" .. string.rep("e", 60) .. "/" .. string.rep("f", 99)
    local huge = string.rep("x/", 150) .. "file"
    local longlink = string.rep("l", 150)
    local data = archive {
      { { name = mid }, "ustar prefix" },
      { { name = huge }, "pax path" },
      { { name = "s", type = "symlink", linkname = longlink } },
    }
    local entries = ok(tar.list(data))
    eq(#entries, 3)
    eq(entries[1][1].name, mid); eq(entries[1][2], "ustar prefix")
    eq(entries[2][1].name, huge); eq(entries[2][2], "pax path")
    eq(entries[3][1].linkname, longlink)
  end,

  test_chunked_feed = function()
    local payload = string.rep("abc", 700)
    local data = archive {
      { { name = "x" }, payload }, { { name = "y" }, "z" },
      { { name = string.rep("n", 200) }, "long" },
    }
    for _, size in ipairs({ 1, 7, 511, 512, 513, 4096 }) do
      local got = {}
      local r = tar.reader(function(h)
        local parts = {}
        return function(c)
          if c then parts[#parts + 1] = c else got[#got + 1] = { h.name, table.concat(parts) } end
        end
      end)
      for i = 1, #data, size do ok(r:feed(data:sub(i, i + size - 1))) end
      ok(r:close())
      eq(got, { { "x", payload }, { "y", "z" }, { string.rep("n", 200), "long" } }, "chunk " .. size)
    end
  end,

  test_errors = function()
    local data = archive { { { name = "x" }, "data" } }
    local bad = data:sub(1, 10) .. "Z" .. data:sub(12)
    local _, err = tar.list(bad)
    ok(err and err:find("checksum"), err)
    _, err = tar.list(data:sub(1, 700))
    ok(err and err:find("truncated"), err)
  end,

  test_gnu_tar_archives = function()
    if not (proc and fs.exists("/usr/bin/tar")) then skip("no GNU tar here") end
    local dir = TEST_DIR .. "/src"
    fs.mkdir(dir .. "/sub/" .. string.rep("q", 120), 493)
    fs.write(dir .. "/sub/a", "A\n", { mode = 416 })
    fs.write(dir .. "/sub/" .. string.rep("q", 120) .. "/" .. string.rep("w", 110), "deep")
    for _, fmt in ipairs({ "gnu", "pax", "ustar" }) do
      local r = proc.run({ "/usr/bin/tar", "--format=" .. fmt, "-C", dir, "-cf", "-", "sub" })
      if fmt == "ustar" then
        -- ustar cannot hold the long name: GNU tar refuses it, which is fine
        goto continue
      end
      eq(r.code, 0, fmt .. ": " .. tostring(r.stderr))
      local entries = ok(tar.list(r.stdout))
      local byname = {}
      for _, e in ipairs(entries) do byname[e[1].name] = e end
      ok(byname["sub"] and byname["sub"][1].type == "dir", fmt)
      eq(byname["sub/a"][2], "A\n"); eq(byname["sub/a"][1].mode, 416)
      eq(byname["sub/" .. string.rep("q", 120) .. "/" .. string.rep("w", 110)][2], "deep", fmt)
      ::continue::
    end
    -- and GNU tar reads what we write
    local data = archive {
      { { name = "out", type = "dir" } },
      { { name = "out/" .. string.rep("z", 180) }, "zz" },
      { { name = "out/f", mode = 448 }, "file" },
    }
    fs.write(TEST_DIR .. "/ours.tar", data)
    local r = proc.run({ "/usr/bin/tar", "-tvf", TEST_DIR .. "/ours.tar" })
    eq(r.code, 0, r.stderr)
    ok(r.stdout:find(string.rep("z", 180), 1, true), r.stdout)
    ok(r.stdout:find("-rwx------", 1, true), r.stdout)
  end,
}
