-- A small tar (ustar + PAX) writer and a streaming reader, for `moonbox cp`.
--
-- Writer:
--   tar.header{name=, type="file"|"dir"|"symlink"|"hardlink", size=, mode=, mtime=,
--              linkname=, uid=, gid=, uname=, gname=} -> the header block(s) (a PAX
--              record first when a name does not fit ustar's 100+155 bytes)
--   tar.padding(size) -> the zeros that complete the last 512-byte block of the data
--   tar.entry(h, data) -> header .. data .. padding (h.size taken from data)
--   tar.finish() -> the two zero blocks that end an archive
-- Reader (push parser; the archive can arrive in chunks of any size):
--   local r = tar.reader(function(h) return sink_or_nil end)
--     h = {name, type, size, mode, mtime, linkname, uid, gid, uname, gname}
--     sink(chunk) gets the entry's data; sink(nil) once at its end
--   r:feed(chunk) -> true | nil, err;  r:close() -> true | nil, err (truncated archive)
--   tar.list(data) -> { {h, data}... } | nil, err   (a whole archive in memory)
local M = {}

local BLOCK = 512
local ZERO = string.rep("\0", BLOCK)

local TYPES = { file = "0", dir = "5", symlink = "2", hardlink = "1", char = "3", block = "4",
  fifo = "6" }
local NAMES = { ["0"] = "file", ["\0"] = "file", ["7"] = "file", ["5"] = "dir",
  ["2"] = "symlink", ["1"] = "hardlink", ["3"] = "char", ["4"] = "block", ["6"] = "fifo" }

local function octal(n, width)
  local s = string.format("%o", math.floor(n))
  if #s > width - 1 then return nil end
  return string.rep("0", width - 1 - #s) .. s .. "\0"
end

-- Numbers too large for octal: GNU base-256 (first byte 0x80).
local function number(n, width)
  local s = octal(n, width)
  if s then return s end
  local bytes = {}
  for i = width, 2, -1 do
    bytes[i] = string.char(n % 256)
    n = n // 256
  end
  bytes[1] = "\128"
  return table.concat(bytes)
end

local function field(s, width)
  s = s or ""
  if #s > width then s = s:sub(1, width) end
  return s .. string.rep("\0", width - #s)
end

local function checksum(block)
  local sum = 0
  for i = 1, BLOCK do
    if i >= 149 and i <= 156 then sum = sum + 32 else sum = sum + block:byte(i) end
  end
  return sum
end

local function raw_header(h, name, prefix, typeflag, linkname)
  local parts = {
    field(name, 100),
    octal(h.mode or (typeflag == "5" and 493 or typeflag == "2" and 511 or 420), 8),
    number(h.uid or 0, 8),
    number(h.gid or 0, 8),
    number(h.size or 0, 12),
    number(math.floor(h.mtime or 0), 12),
    "        ", -- checksum placeholder
    typeflag,
    field(linkname, 100),
    "ustar\0", "00",
    field(h.uname or "", 32),
    field(h.gname or "", 32),
    octal(0, 8), octal(0, 8),
    field(prefix, 155),
    string.rep("\0", 12),
  }
  local block = table.concat(parts)
  assert(#block == BLOCK)
  local sum = string.format("%06o\0 ", checksum(block))
  return block:sub(1, 148) .. sum .. block:sub(157)
end

-- Splits a path into ustar (prefix, name), or nil when it does not fit.
local function split(path)
  if #path <= 100 then return "", path end
  for i = #path, 1, -1 do
    if path:sub(i, i) == "/" then
      local prefix, name = path:sub(1, i - 1), path:sub(i + 1)
      if #prefix <= 155 and #name <= 100 and #name > 0 then return prefix, name end
      if #prefix < #path - 101 then break end
    end
  end
  return nil
end

local function pax_record(key, value)
  local body = " " .. key .. "=" .. value .. "\n"
  local len = #body
  local total = len + #tostring(len)
  if #tostring(total) ~= #tostring(len) then total = len + #tostring(total) end
  return tostring(total) .. body
end

function M.padding(size)
  local r = size % BLOCK
  if r == 0 then return "" end
  return string.rep("\0", BLOCK - r)
end

function M.header(h)
  local typeflag = TYPES[h.type or "file"]
  if not typeflag then error("tar.header: unknown type " .. tostring(h.type), 2) end
  local name = h.name
  if h.type == "dir" and name:sub(-1) ~= "/" then name = name .. "/" end
  local out = {}
  local pax = {}
  local prefix, short = split(name)
  if not prefix then
    pax[#pax + 1] = pax_record("path", name)
    prefix, short = "", name:sub(1, 100)
  end
  local link = h.linkname or ""
  if #link > 100 then
    pax[#pax + 1] = pax_record("linkpath", link)
    link = link:sub(1, 100)
  end
  if (h.size or 0) > 8589934591 then pax[#pax + 1] = pax_record("size", tostring(h.size)) end
  if #pax > 0 then
    local data = table.concat(pax)
    local ph = { size = #data, mode = 420, mtime = h.mtime }
    out[#out + 1] = raw_header(ph, ("PaxHeaders/" .. short):sub(1, 100), "", "x", "")
    out[#out + 1] = data .. M.padding(#data)
  end
  out[#out + 1] = raw_header(h, short, prefix, typeflag, link)
  return table.concat(out)
end

function M.entry(h, data)
  data = data or ""
  local copy = {}
  for k, v in pairs(h) do copy[k] = v end
  copy.size = (h.type == nil or h.type == "file") and #data or 0
  return M.header(copy) .. data .. M.padding(copy.size)
end

function M.finish()
  return ZERO .. ZERO
end

-- --- reader ---

local function cstr(s)
  local z = s:find("\0", 1, true)
  if z then s = s:sub(1, z - 1) end
  return s
end

local function parse_num(s)
  if s:byte(1) and s:byte(1) >= 128 then -- base-256
    local n = s:byte(1) - 128
    for i = 2, #s do n = n * 256 + s:byte(i) end
    return n
  end
  s = cstr(s):gsub("^%s+", ""):gsub("[%s%z]+$", "")
  if s == "" then return 0 end
  return tonumber(s, 8)
end

local function parse_pax(data)
  local t = {}
  local pos = 1
  while pos <= #data do
    local len = data:match("^(%d+) ", pos)
    if not len then break end
    local rec = data:sub(pos, pos + tonumber(len) - 1)
    local k, v = rec:match("^%d+ ([^=]+)=(.*)\n$")
    if k then t[k] = v end
    pos = pos + tonumber(len)
  end
  return t
end

local R = {}
R.__index = R

function M.reader(on_entry)
  return setmetatable({ on_entry = on_entry, buf = "", state = "header", left = 0, pad = 0,
                        pending = {}, ended = false }, R)
end

function R:_header(block)
  if block == ZERO then
    self.ended = true
    return true
  end
  local stored = parse_num(block:sub(149, 156))
  local sum = checksum(block)
  if stored ~= sum then
    -- some writers use signed bytes
    local ssum = 0
    for i = 1, BLOCK do
      local b = (i >= 149 and i <= 156) and 32 or block:byte(i)
      ssum = ssum + (b >= 128 and b - 256 or b)
    end
    if stored ~= ssum then return nil, "tar: bad header checksum" end
  end
  local flag = block:sub(157, 157)
  local h = {
    name = cstr(block:sub(1, 100)),
    mode = parse_num(block:sub(101, 108)),
    uid = parse_num(block:sub(109, 116)),
    gid = parse_num(block:sub(117, 124)),
    size = parse_num(block:sub(125, 136)),
    mtime = parse_num(block:sub(137, 148)),
    linkname = cstr(block:sub(158, 257)),
    uname = cstr(block:sub(266, 297)),
    gname = cstr(block:sub(298, 329)),
  }
  if block:sub(258, 262) == "ustar" then
    local prefix = cstr(block:sub(346, 500))
    if prefix ~= "" then h.name = prefix .. "/" .. h.name end
  end
  if not h.size or not h.mode then return nil, "tar: bad header" end
  self.pad = (BLOCK - h.size % BLOCK) % BLOCK
  self.left = h.size
  if flag == "x" or flag == "g" or flag == "L" or flag == "K" then
    -- metadata for the next entry: collect its data
    local parts = {}
    self.sink = function(chunk)
      if chunk then parts[#parts + 1] = chunk; return end
      local data = table.concat(parts)
      if flag == "x" then
        for k, v in pairs(parse_pax(data)) do self.pending[k] = v end
      elseif flag == "L" then
        self.pending.path = cstr(data)
      elseif flag == "K" then
        self.pending.linkpath = cstr(data)
      end
    end
  else
    local p = self.pending
    self.pending = {}
    if p.path then h.name = p.path end
    if p.linkpath then h.linkname = p.linkpath end
    if p.size then h.size = tonumber(p.size); self.left = h.size; self.pad = (BLOCK - h.size % BLOCK) % BLOCK end
    if p.mtime then h.mtime = tonumber(p.mtime) or h.mtime end
    if p.uid then h.uid = tonumber(p.uid) or h.uid end
    if p.gid then h.gid = tonumber(p.gid) or h.gid end
    if p.uname then h.uname = p.uname end
    if p.gname then h.gname = p.gname end
    h.type = NAMES[flag] or "other"
    h.typeflag = flag
    if h.type == "dir" then h.name = h.name:gsub("/+$", "") end
    if h.type ~= "file" then
      -- only regular files carry data (hard links and others: size is metadata)
      if h.type ~= "other" then self.left, self.pad = 0, 0 end
    end
    self.sink = self.on_entry(h)
  end
  self.state = "data"
  if self.left == 0 then return self:_end_entry() end
  return true
end

function R:_end_entry()
  if self.sink then self.sink(nil) end
  self.sink = nil
  self.state = self.pad > 0 and "pad" or "header"
  return true
end

function R:feed(chunk)
  if self.ended then return true end
  self.buf = self.buf .. chunk
  local pos = 1
  local buf = self.buf
  while not self.ended do
    local avail = #buf - pos + 1
    if self.state == "header" then
      if avail < BLOCK then break end
      local ok, err = self:_header(buf:sub(pos, pos + BLOCK - 1))
      pos = pos + BLOCK
      if not ok then self.buf = ""; return nil, err end
    elseif self.state == "data" then
      if avail == 0 then break end
      local n = math.min(avail, self.left)
      if self.sink then self.sink(buf:sub(pos, pos + n - 1)) end
      pos = pos + n
      self.left = self.left - n
      if self.left == 0 then self:_end_entry() end
    elseif self.state == "pad" then
      if avail < self.pad then
        self.pad = self.pad - avail
        pos = pos + avail
        break
      end
      pos = pos + self.pad
      self.pad = 0
      self.state = "header"
    end
  end
  self.buf = buf:sub(pos)
  return true
end

function R:close()
  if self.ended then return true end
  if self.state == "header" and self.buf == "" then return true end -- no end blocks: accept
  return nil, "tar: the archive is truncated"
end

function M.list(data)
  local entries = {}
  local r = M.reader(function(h)
    local parts = {}
    local e = { h, "" }
    entries[#entries + 1] = e
    return function(chunk)
      if chunk then parts[#parts + 1] = chunk else e[2] = table.concat(parts) end
    end
  end)
  local ok, err = r:feed(data)
  if not ok then return nil, err end
  ok, err = r:close()
  if not ok then return nil, err end
  return entries
end

return M
