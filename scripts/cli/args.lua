-- Docker-style command-line parsing.
--
-- A flag is declared as { short, long, type, help [, meta=, key=, default=, hidden=] }:
--   short   one letter or nil; long: the --name (both may be given on the command line)
--   type    "bool" | "string" | "list" (repeatable, collected in order) | "int" | "number"
--   key     where the value goes in opts (default: long with "-" turned into "_")
-- Accepted forms: -d, -it (combined booleans), -p 80, -p80, -p=80, -itp 80 (a value flag
-- last in a cluster), --name web, --name=web, --rm=false, "--" ends the flags, "-" alone
-- is a positional. With interspersed=false (run, exec) the first positional ends the
-- flags, so `run alpine ls -l` keeps "-l" for the container.
--
-- M.parse(spec, argv [, first]) -> opts, positionals; raises errors.usage on bad input.
-- M.help(spec, prog) -> the text of `moonbox CMD --help`.
local errors = require("cli.errors")

local M = {}

local function key_of(f)
  return f.key or (f[2] and f[2]:gsub("-", "_")) or f[1]
end

-- The flags of a spec plus --help (-h too, unless the command uses -h itself).
function M.flags_of(spec)
  if spec._all then return spec._all end
  local all, has_h = {}, false
  for _, f in ipairs(spec.flags or {}) do
    all[#all + 1] = f
    if f[1] == "h" then has_h = true end
  end
  if spec.format ~= false and spec.format ~= nil then
    all[#all + 1] = { nil, "format", "string", spec.format_help or
      "Output format: \"table\" (default), \"json\", or a template like '{{.name}}'" }
  end
  all[#all + 1] = { has_h and nil or "h", "help", "bool", "Print usage", hidden = true }
  spec._all = all
  return all
end

local function find(spec, short, long)
  for _, f in ipairs(M.flags_of(spec)) do
    if (short and f[1] == short) or (long and f[2] == long) then return f end
  end
end

local function usage_err(spec, fmt, ...)
  errors.usage(string.format(fmt, ...), spec and spec.name)
end

local BOOL = { ["true"] = true, ["1"] = true, ["false"] = false, ["0"] = false }

local function set(spec, opts, f, value, shown)
  local k, t = key_of(f), f[3]
  if t == "bool" then
    if value == nil then
      opts[k] = true
    else
      local b = BOOL[value:lower()]
      if b == nil then
        usage_err(spec, "invalid argument %q for %q flag: expected true or false", value, shown)
      end
      opts[k] = b
    end
  elseif t == "list" then
    local l = opts[k]
    if type(l) ~= "table" then l = {}; opts[k] = l end
    l[#l + 1] = value
  elseif t == "int" then
    local n = math.tointeger(tonumber(value))
    if not n then usage_err(spec, "invalid argument %q for %q flag: not an integer", value, shown) end
    opts[k] = n
  elseif t == "number" then
    local n = tonumber(value)
    if not n or n ~= n then
      usage_err(spec, "invalid argument %q for %q flag: not a number", value, shown)
    end
    opts[k] = n
  else
    opts[k] = value
  end
end

function M.parse(spec, argv, first)
  local opts, pos = {}, {}
  for _, f in ipairs(M.flags_of(spec)) do
    if f.default ~= nil then opts[key_of(f)] = f.default end
    if f[3] == "list" then opts[key_of(f)] = {} end
  end
  local i = first or 1
  local n = #argv
  while i <= n do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, n do pos[#pos + 1] = argv[j] end
      break
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local f = find(spec, nil, name)
      if not f then usage_err(spec, "unknown flag: --%s", name) end
      if f[3] ~= "bool" and value == nil then
        i = i + 1
        value = argv[i]
        if value == nil then usage_err(spec, "flag needs an argument: --%s", name) end
      end
      set(spec, opts, f, value, "--" .. name)
    elseif a:sub(1, 1) == "-" and #a > 1 then
      local j = 2
      while j <= #a do
        local c = a:sub(j, j)
        local f = find(spec, c, nil)
        if not f then
          if #a > 2 then
            usage_err(spec, "unknown shorthand flag: '%s' in %s", c, a)
          end
          usage_err(spec, "unknown shorthand flag: '%s' in -%s", c, c)
        end
        if f[3] == "bool" then
          if a:sub(j + 1, j + 1) == "=" then
            set(spec, opts, f, a:sub(j + 2), "-" .. c)
            break
          end
          set(spec, opts, f, nil, "-" .. c)
          j = j + 1
        else
          local value = a:sub(j + 1)
          if value:sub(1, 1) == "=" then value = value:sub(2) end
          if value == "" then
            i = i + 1
            value = argv[i]
            if value == nil then usage_err(spec, "flag needs an argument: '%s' in -%s", c, c) end
          end
          set(spec, opts, f, value, "-" .. c)
          break
        end
      end
    else
      pos[#pos + 1] = a
      if spec.interspersed == false then
        for j = i + 1, n do pos[#pos + 1] = argv[j] end
        break
      end
    end
    i = i + 1
  end
  return opts, pos
end

-- Checks the number of positionals against spec.min_args / spec.max_args.
function M.check_count(spec, pos)
  local min, max = spec.min_args or 0, spec.max_args
  local function plural(k) return k == 1 and "argument" or "arguments" end
  if max == 0 and #pos > 0 then
    usage_err(spec, "%q accepts no arguments.", "moonbox " .. spec.name)
  elseif max and min == max and #pos ~= min then
    usage_err(spec, "%q requires exactly %d %s.", "moonbox " .. spec.name, min, plural(min))
  elseif #pos < min then
    usage_err(spec, "%q requires at least %d %s.", "moonbox " .. spec.name, min, plural(min))
  elseif max and #pos > max then
    usage_err(spec, "%q requires at most %d %s.", "moonbox " .. spec.name, max, plural(max))
  end
end

local TYPE_META = { string = "string", list = "list", int = "int", number = "decimal" }

function M.help(spec, prog)
  prog = prog or "moonbox"
  local out = { "", "Usage:  " .. prog .. " " .. (spec.usage or spec.name), "" }
  if spec.summary then out[#out + 1] = spec.summary end
  if spec.description then out[#out + 1] = ""; out[#out + 1] = spec.description end
  if spec.aliases and #spec.aliases > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Aliases:"
    out[#out + 1] = "  " .. table.concat(spec.aliases, ", ")
  end
  local rows, width = {}, 0
  for _, f in ipairs(M.flags_of(spec)) do
    if not f.hidden then
      local left = (f[1] and ("-" .. f[1] .. ", ") or "    ") .. "--" .. f[2]
      if f[3] ~= "bool" then left = left .. " " .. (f.meta or TYPE_META[f[3]] or f[3]) end
      local help = f[4] or ""
      if f.default ~= nil and f[3] ~= "bool" and f[3] ~= "list" then
        help = help .. " (default " .. tostring(f.default) .. ")"
      end
      rows[#rows + 1] = { left, help }
      if #left > width then width = #left end
    end
  end
  if #rows > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "Options:"
    for _, r in ipairs(rows) do
      out[#out + 1] = "  " .. r[1] .. string.rep(" ", width - #r[1] + 3) .. r[2]
    end
  end
  if spec.subcommands then
    out[#out + 1] = ""
    out[#out + 1] = "Commands:"
    local w = 0
    local function short(s) return s.name:match("(%S+)$") end
    for _, s in ipairs(spec.subcommands) do if #short(s) > w then w = #short(s) end end
    for _, s in ipairs(spec.subcommands) do
      out[#out + 1] = "  " .. short(s) .. string.rep(" ", w - #short(s) + 3) .. (s.summary or "")
    end
    out[#out + 1] = ""
    out[#out + 1] = "Run '" .. prog .. " " .. spec.name .. " COMMAND --help' for more information on a command."
  end
  if spec.examples then
    out[#out + 1] = ""
    out[#out + 1] = "Examples:"
    for _, e in ipairs(spec.examples) do out[#out + 1] = "  " .. e end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

return M
