-- Unit tests of the server-side tar reader and writer (moonbox test scripts/lib/tar_test.lua).
local tar = require("tar")

local function archive(entries)
  local parts = {}
  for _, e in ipairs(entries) do
    local data = e.data or ""
    e.size = #data
    parts[#parts + 1] = tar.header(e) .. data .. tar.pad(#data)
  end
  parts[#parts + 1] = tar.finish()
  return table.concat(parts)
end

local LONG = string.rep("d", 60) .. "/" .. string.rep("f", 80) -- > 100 bytes: a PAX record
local BIG = string.rep("0123456789abcdef", 70000)               -- 1.1 MB

local function sample()
  return archive {
    { name = "dir", type = "dir", mode = 493 },
    { name = "dir/small.txt", type = "file", data = "hello\n", mode = 384 },
    { name = LONG, type = "file", data = "long name" },
    { name = "big.bin", type = "file", data = BIG },
    { name = "ln", type = "symlink", link = "dir/small.txt" },
  }
end

local function collect(src)
  local out = {}
  for e in tar.entries(src) do out[#out + 1] = e end
  return out
end

return {
  test_entries_in_memory = function()
    local es = collect(sample())
    eq(#es, 5)
    eq(es[1].type, "dir"); eq(es[1].name, "dir/")
    eq(es[2].name, "dir/small.txt"); eq(es[2].data, "hello\n"); eq(es[2].mode, 384)
    eq(es[3].name, LONG); eq(es[3].data, "long name")
    eq(es[4].size, #BIG); ok(es[4].data == BIG, "big data")
    eq(es[5].type, "symlink"); eq(es[5].link, "dir/small.txt")
  end,

  -- the same archive through a reader: entries carry offsets, the data stays put
  test_entries_from_a_reader = function()
    local data = sample()
    local path = TEST_DIR .. "/sample.tar"
    ok(fs.write(path, data))
    local reads, largest = 0, 0
    local es = collect(function(o, n)
      reads = reads + 1
      largest = math.max(largest, n)
      return fs.read_at(path, o, n)
    end)
    eq(#es, 5)
    eq(es[2].data, nil)
    eq(fs.read_at(path, es[2].offset, es[2].size), "hello\n")
    eq(es[3].name, LONG)
    eq(fs.read_at(path, es[3].offset, es[3].size), "long name")
    ok(fs.read_at(path, es[4].offset, es[4].size) == BIG, "big data at its offset")
    ok(largest < 4096, "the reader never asked for the file data (largest read " .. largest .. ")")
  end,

  test_truncated_and_corrupt = function()
    local data = sample()
    local cut = data:sub(1, #data - 2048 - 600000) -- inside big.bin's data
    fails(function() collect(cut) end, "truncated")
    fails(function() collect(function(o, n) return cut:sub(o + 1, o + n) end) end, "truncated")
    local bad = data:sub(1, 10) .. "X" .. data:sub(12)
    fails(function() collect(bad) end, "checksum")
    eq(#collect(""), 0)
  end,

  test_safe_name = function()
    eq(tar.safe_name("a/./b/"), "a/b")
    eq(tar.safe_name("../x"), nil)
    eq(tar.safe_name("/etc/passwd"), nil)
    eq(tar.safe_name("a/../../b"), nil)
    eq(tar.safe_name("."), nil)
  end,
}
