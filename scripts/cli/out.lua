-- Output: stdout and stderr through the term module (unbuffered, in order), and the
-- --format switch shared by every command that prints objects.
local format = require("cli.format")

local M = {}

function M.write(s)
  term.write(s)
end

function M.print(s)
  term.write((s or "") .. "\n")
end

function M.err(s)
  term.ewrite((s or "") .. "\n")
end

function M.json(val)
  term.write(json.encode(val, { pretty = true, sort = true }) .. "\n")
end

-- Prints a list of objects in the requested format:
--   fmt "json": the objects as one JSON array; a template: one line per object;
--   otherwise the table (columns as in format.table), or with quiet one id per line.
-- opts: quiet=fn(row) -> id line, no_header=
function M.list(fmt, rows, columns, opts)
  opts = opts or {}
  if fmt == "json" then
    M.json(json.array(rows))
  elseif format.is_template(fmt) then
    local tpl = fmt:gsub("^table%s+", "")
    local buf = {}
    for _, r in ipairs(rows) do buf[#buf + 1] = format.template(tpl, r) .. "\n" end
    M.write(table.concat(buf))
  elseif opts.quiet then
    local buf = {}
    for _, r in ipairs(rows) do buf[#buf + 1] = opts.quiet(r) .. "\n" end
    M.write(table.concat(buf))
  else
    M.write(format.table(columns, rows, opts))
  end
end

-- One object: JSON (the default for inspect-like output) or a template.
function M.object(fmt, obj)
  if format.is_template(fmt) then
    M.print(format.template(fmt, obj))
  else
    M.json(obj)
  end
end

return M
