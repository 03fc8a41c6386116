-- Tar archives (POSIX ustar) for copying files into and out of containers.
--
--   tar.header{name=, size=, mode=, type="file"|"dir"|"symlink", link=, mtime=, uid=, gid=}
--     -> the 512-byte header (plus a PAX header first when the name is too long)
--   tar.pad(size)  -> the zero padding after `size` bytes of data
--   tar.finish()   -> the end-of-archive marker
--   tar.entries(data) -> iterator over {name=, type=, size=, mode=, link=, mtime=, data=}
--     reading ustar, GNU long names (L/K) and PAX path/linkpath records.
--   tar.entries(read) -> the same over an archive too large for memory: read(offset, len)
--     returns up to len bytes from that offset of the archive (fewer at its end). Entries
--     carry offset= (where their data starts in the archive) instead of data=; the caller
--     reads the data itself. A truncated archive raises once the iterator reaches it.
-- Names are checked by the caller (tar.safe_name) before anything is written.
local M = {}

local BLOCK = 512

local function octal(n, width)
  local s = string.format("%o", math.max(0, math.floor(n or 0)))
  if #s > width - 1 then s = string.rep("7", width - 1) end
  return string.rep("0", width - 1 - #s) .. s .. "\0"
end

local function field(s, width)
  s = s or ""
  if #s > width then s = s:sub(1, width) end
  return s .. string.rep("\0", width - #s)
end

local TYPES = { file = "0", dir = "5", symlink = "2", hardlink = "1" }

local function raw_header(e, name, typeflag)
  local h = field(name, 100) .. octal(e.mode or (e.type == "dir" and 493 or 420), 8)
    .. octal(e.uid or 0, 8) .. octal(e.gid or 0, 8) .. octal(e.size or 0, 12)
    .. octal(e.mtime or os.time(), 12) .. "        " .. typeflag .. field(e.link, 100)
    .. "ustar\0" .. "00" .. field(e.uname or "", 32) .. field(e.gname or "", 32)
    .. octal(0, 8) .. octal(0, 8) .. field("", 155)
  h = h .. string.rep("\0", BLOCK - #h)
  local sum = 0
  for i = 1, BLOCK do sum = sum + h:byte(i) end
  return h:sub(1, 148) .. string.format("%06o\0 ", sum) .. h:sub(157)
end

local function pax_record(key, value)
  local body = " " .. key .. "=" .. value .. "\n"
  local len = #body
  local n = len + #tostring(len)
  if #tostring(n) ~= #tostring(len) then n = len + #tostring(n) end
  return n .. body
end

function M.pad(size)
  local r = size % BLOCK
  return r == 0 and "" or string.rep("\0", BLOCK - r)
end

function M.header(e)
  local name = e.name
  if e.type == "dir" and name:sub(-1) ~= "/" then name = name .. "/" end
  local out = ""
  if #name > 100 or (e.link and #e.link > 100) then
    local pax = pax_record("path", name) .. (e.link and #e.link > 100 and pax_record("linkpath", e.link) or "")
    out = raw_header({ size = #pax, mode = 420 }, "PaxHeader", "x") .. pax .. M.pad(#pax)
  end
  return out .. raw_header(e, name, TYPES[e.type] or "0")
end

function M.finish()
  return string.rep("\0", BLOCK * 2)
end

local function num(s)
  s = s:gsub("[%z ]", "")
  return s == "" and 0 or (tonumber(s, 8) or 0)
end

local function str(s) return (s:gsub("%z.*", "")) end

local META_MAX = 1 << 20 -- long names and PAX records are read into memory: bounded

-- Iterate over the entries of a tar held in memory (a string) or behind a reader.
function M.entries(src)
  local whole = type(src) == "string"
  local read = src
  if whole then
    read = function(o, n) return src:sub(o + 1, o + n) end
  end
  local pos = 0 -- offset of the next header
  local long_name, long_link
  local zero = string.rep("\0", BLOCK)
  return function()
    while true do
      local h = read(pos, BLOCK)
      if #h < BLOCK or h == zero then return nil end
      local sum = 0
      for i = 1, BLOCK do
        sum = sum + ((i >= 149 and i <= 156) and 32 or h:byte(i))
      end
      if sum ~= num(h:sub(149, 156)) then error("tar: bad header checksum at offset " .. pos, 0) end
      local size = num(h:sub(125, 136))
      local typeflag = h:sub(157, 157)
      local at = pos + BLOCK
      local meta = typeflag == "L" or typeflag == "K" or typeflag == "x" or typeflag == "g"
      local body
      if whole or meta then
        if meta and size > META_MAX then error("tar: a metadata record of " .. size .. " bytes", 0) end
        body = read(at, size)
        if #body < size then error("tar: truncated archive", 0) end
      else
        -- the data stays in the archive; its last byte must be there
        if size > 0 and #read(at + size - 1, 1) < 1 then error("tar: truncated archive", 0) end
      end
      pos = at + size + #M.pad(size)
      if typeflag == "L" then
        long_name = str(body)
      elseif typeflag == "K" then
        long_link = str(body)
      elseif typeflag == "x" or typeflag == "g" then
        for rec in body:gmatch("%d+ ([^\n]*)\n") do
          local k, v = rec:match("^([^=]+)=(.*)$")
          if k == "path" and typeflag == "x" then long_name = v end
          if k == "linkpath" and typeflag == "x" then long_link = v end
        end
      else
        local name = str(h:sub(1, 100))
        local prefix = h:sub(258, 263) == "ustar\0" and str(h:sub(346, 500)) or ""
        if prefix ~= "" then name = prefix .. "/" .. name end
        name = long_name or name
        local e = {
          name = name, size = size, mode = num(h:sub(101, 108)), mtime = num(h:sub(137, 148)),
          uid = num(h:sub(109, 116)), gid = num(h:sub(117, 124)),
          link = long_link or str(h:sub(158, 257)),
          type = (typeflag == "0" or typeflag == "\0" or typeflag == "7") and "file"
            or typeflag == "5" and "dir" or typeflag == "2" and "symlink" or typeflag == "1" and "hardlink"
            or "other",
          data = body, offset = not whole and at or nil,
        }
        long_name, long_link = nil, nil
        return e
      end
    end
  end
end

-- A relative path that stays below its base: no absolute paths, no "..".
function M.safe_name(name)
  if type(name) ~= "string" or name == "" or name:sub(1, 1) == "/" then return nil end
  local parts = {}
  for seg in name:gmatch("[^/]+") do
    if seg == ".." then return nil end
    if seg ~= "." then parts[#parts + 1] = seg end
  end
  if #parts == 0 then return nil end
  return table.concat(parts, "/")
end

return M
