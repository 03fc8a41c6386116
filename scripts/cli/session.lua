-- An interactive session over the exec/attach WebSocket protocol:
--   client -> server: binary frames = stdin bytes; text frames = JSON control messages
--                     {"type":"resize","rows","cols"} and {"type":"eof"}
--   server -> client: binary frames = output (tty: raw; otherwise the first byte is the
--                     stream, 1 stdout / 2 stderr); a last text frame {"type":"exit",
--                     "exit_code"} (and {"type":"error","message"} before it on failure)
--
-- session.run(ws, opts) ⏳ -> {exit_code=, error=, detached=}
--   opts.tty     the remote side has a terminal (output is raw bytes)
--   opts.stdin   forward our stdin (then {"type":"eof"} at its end)
--   opts.raw     put our terminal in raw mode for the session (restored on every path)
--   opts.detach  a key sequence that detaches (attach: "\16\17", ctrl-p ctrl-q)
--   opts.output  false: drop the output frames (it is read another way)
-- Window size changes are forwarded while opts.tty and stdout is a terminal.
local M = {}

-- Scans input for the detach sequence; returns the bytes to forward and whether the
-- sequence completed. state.held keeps a prefix seen at the end of a chunk.
function M.detach_scan(state, keys, data)
  if not keys or keys == "" then return data, false end
  local buf = (state.held or "") .. data
  state.held = nil
  local out = {}
  local i = 1
  while i <= #buf do
    local matched = 0
    while matched < #keys and i + matched <= #buf and buf:byte(i + matched) == keys:byte(matched + 1) do
      matched = matched + 1
    end
    if matched == #keys then
      return table.concat(out), true
    elseif matched > 0 and i + matched > #buf then
      state.held = buf:sub(i) -- a partial sequence at the end: decide with the next chunk
      break
    end
    out[#out + 1] = buf:sub(i, i)
    i = i + 1
  end
  return table.concat(out), false
end

function M.run(ws, opts)
  opts = opts or {}
  local result = {}
  local helpers = {}
  local raw_on = false
  local ok, err = pcall(function()
    if opts.raw and term.isatty(0) then
      local r, e = term.raw(true)
      if not r then error(e, 0) end
      raw_on = true
    end
    if opts.stdin then
      helpers[#helpers + 1] = task.spawn(function()
        local state = {}
        while true do
          local data = term.read(65536)
          if not data then
            if state.held then ws:send(state.held, "binary") end
            ws:send(json.encode({ type = "eof" }))
            return
          end
          local fwd, detached = M.detach_scan(state, opts.detach, data)
          if fwd ~= "" and not ws:send(fwd, "binary") then return end
          if detached then
            result.detached = true
            ws:close(1000, "detached")
            return
          end
        end
      end)
    else
      ws:send(json.encode({ type = "eof" }))
    end
    if opts.tty and term.isatty(1) then
      helpers[#helpers + 1] = task.spawn(function()
        while true do
          local rows, cols = term.resized()
          if not rows then return end
          if not ws:send(json.encode({ type = "resize", rows = rows, cols = cols })) then return end
        end
      end)
    end
    while true do
      local data, kind = ws:recv()
      if not data then break end
      if kind == "binary" then
        if opts.output == false then
          -- output comes another way (run -i reads the log stream)
        elseif opts.tty then
          term.write(data)
        elseif #data > 0 then
          if data:byte(1) == 2 then term.ewrite(data:sub(2)) else term.write(data:sub(2)) end
        end
      else
        local good, m = pcall(json.decode, data)
        if good and type(m) == "table" then
          if m.type == "exit" then
            result.exit_code = math.tointeger(tonumber(m.exit_code)) or 0
          elseif m.type == "error" then
            result.error = tostring(m.message)
          end
        end
      end
    end
  end)
  for _, h in ipairs(helpers) do h:cancel() end
  if raw_on then term.raw(false) end
  if not ws:is_closed() then ws:close() end
  if not ok then error(err, 0) end
  return result
end

return M
