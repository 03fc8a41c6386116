-- Tar archives (POSIX ustar) for copying files into and out of containers.
--
--   tar.header{name=, size=, mode=, type="file"|"dir"|"symlink", link=, mtime=, uid=, gid=}
--     -> the 512-byte header (plus a PAX header first when the name is too long)
--   tar.pad(size)  -> the zero padding after `size` bytes of data
--   tar.finish()   -> the end-of-archive marker
--   tar.entries(data) -> iterator over {name=, type=, size=, mode=, link=, mtime=, data=}
--     reading ustar, GNU long names (L/K) and PAX path/linkpath records.
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

-- Iterate over the entries of a tar held in memory.
function M.entries(data)
  local pos = 1
  local long_name, long_link
  return function()
    while pos + BLOCK - 1 <= #data do
      local h = data:sub(pos, pos + BLOCK - 1)
      if h == string.rep("\0", BLOCK) then return nil end
      local sum = 0
      for i = 1, BLOCK do
        sum = sum + ((i >= 149 and i <= 156) and 32 or h:byte(i))
      end
      if sum ~= num(h:sub(149, 156)) then error("tar: bad header checksum at offset " .. (pos - 1), 0) end
      local size = num(h:sub(125, 136))
      local typeflag = h:sub(157, 157)
      local body = data:sub(pos + BLOCK, pos + BLOCK + size - 1)
      if #body < size then error("tar: truncated archive", 0) end
      pos = pos + BLOCK + size + #M.pad(size)
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
          data = body,
        }
        long_name, long_link = nil, nil
        return e
      end
    end
    return nil
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
