-- Pull progress: one line per layer, like docker pull.
--
--   progress.bar(done, total [, width=50]) -> "[=====>      ]"
--   progress.layer_line(layer) -> "a2abf6c4d29d: Downloading [==>   ]  5.24MB/31.4MB"
--   local p = progress.new{tty=bool, write=fn}
--   p:update(event)   an image.pull.progress event {status, layers={{digest,size,done,
--                     status,cached}}}; on a tty the block of lines is redrawn in place,
--                     otherwise a line is printed whenever a layer changes status
--   p:finish()        final redraw
local format = require("cli.format")

local M = {}

function M.bar(done, total, width)
  width = width or 50
  if not total or total <= 0 then return "" end
  local n = math.floor(width * math.min(done or 0, total) / total)
  if n >= width then return "[" .. string.rep("=", width) .. ">]" end
  return "[" .. string.rep("=", n) .. ">" .. string.rep(" ", width - n - 1) .. "]"
end

local STATUS = {
  waiting = "Waiting",
  downloading = "Downloading",
  verifying = "Verifying Checksum",
  downloaded = "Download complete",
  extracting = "Extracting",
  extracted = "Pull complete",
}

local v = format.v

function M.layer_id(l)
  return format.short_id(v(l.digest) or "")
end

-- The status word(s) of a layer.
function M.layer_status(l)
  if v(l.cached) then return "Already exists" end
  local s = v(l.status) or "waiting"
  return STATUS[s] or (s:gsub("^%l", string.upper))
end

function M.layer_line(l, opts)
  opts = opts or {}
  local line = M.layer_id(l) .. ": " .. M.layer_status(l)
  local s = v(l.status)
  if not v(l.cached) and (s == "downloading" or s == "extracting") then
    local size = tonumber(v(l.size)) or 0
    local done = tonumber(v(l.done)) or 0
    if size > 0 then
      local bar = opts.no_bar and "" or (M.bar(done, size, opts.width) .. " ")
      line = line .. " " .. bar .. string.format("%8s/%s", format.size(done), format.size(size))
    end
  end
  return line
end

local P = {}
P.__index = P

function M.new(opts)
  opts = opts or {}
  return setmetatable({
    tty = opts.tty,
    write = opts.write or function(s) term.write(s) end,
    order = {},   -- layer ids in first-seen order
    lines = {},   -- id -> last rendered line
    status = {},  -- id -> last printed status (non-tty)
    drawn = 0,    -- lines currently on screen (tty)
    width = opts.width,
  }, P)
end

function P:update(ev)
  local layers = v(ev.layers) or {}
  for _, l in ipairs(layers) do
    local id = M.layer_id(l)
    if id ~= "" then
      if not self.lines[id] then self.order[#self.order + 1] = id end
      self.lines[id] = M.layer_line(l, { width = self.width })
      if not self.tty then
        local st = M.layer_status(l)
        if self.status[id] ~= st then
          self.status[id] = st
          self.write(id .. ": " .. st .. "\n")
        end
      end
    end
  end
  if self.tty then self:redraw() end
end

function P:redraw()
  local buf = {}
  if self.drawn > 0 then buf[#buf + 1] = "\27[" .. self.drawn .. "A" end
  for _, id in ipairs(self.order) do
    buf[#buf + 1] = "\27[2K\r" .. self.lines[id] .. "\n"
  end
  self.drawn = #self.order
  if #buf > 0 then self.write(table.concat(buf)) end
end

function P:finish()
  if self.tty and #self.order > 0 then self:redraw() end
end

return M
