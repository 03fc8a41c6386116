-- images, pull, load, rmi
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local images = require("cli.images")
local out = require("cli.out")
local v = format.v

local M = {}

-- One row per name (REPOSITORY/TAG), or a <none> row for an image without names.
function M.rows(list, filter)
  local rows = {}
  local want = filter and images.normalize(filter)
  local want_repo = filter and not filter:find(":[^/]*$") and want:gsub(":latest$", "")
  for _, img in ipairs(list) do
    local refs = v(img.references) or {}
    local digests = v(img.repo_digests) or {}
    local function add(ref)
      local repo, tag = "<none>", "<none>"
      if ref then repo, tag = images.familiar(ref) end
      local digest = "<none>"
      for _, d in ipairs(digests) do
        local dn = images.familiar(d)
        if dn == repo or not ref then digest = d:match("@(.+)$") or digest end
      end
      rows[#rows + 1] = setmetatable({ repository = repo, tag = tag, digest = digest, ref = ref }, { __index = img })
    end
    if #refs == 0 then
      if not filter then add(nil) end
    else
      for _, r in ipairs(refs) do
        local keep = not filter or r == want or (want_repo and r:gsub(":[^:/]+$", "") == want_repo)
        if keep then add(r) end
      end
    end
  end
  return rows
end

M.images = {
  name = "images",
  usage = "images [OPTIONS] [REPOSITORY[:TAG]]",
  summary = "List images",
  max_args = 1,
  format = true,
  flags = {
    { "a", "all", "bool", "Show all images (accepted; there are no intermediate images)" },
    { "q", "quiet", "bool", "Only show image IDs" },
    { nil, "digests", "bool", "Show digests" },
    { nil, "no-trunc", "bool", "Don't truncate output" },
  },
  run = function(ctx, o, pos)
    local list, err = images.list(ctx.api())
    if not list then errors.api(err) end
    if o.format == "json" then
      out.json(json.array(list))
      return 0
    end
    local rows = M.rows(list, pos[1])
    local trunc = not o.no_trunc
    local function id_of(r)
      local id = v(r.id) or ""
      return trunc and format.short_id(id) or id
    end
    if o.quiet then
      local seen, lines = {}, {}
      for _, r in ipairs(rows) do
        local id = id_of(r)
        if not seen[id] then seen[id] = true; lines[#lines + 1] = id .. "\n" end
      end
      out.write(table.concat(lines))
      return 0
    end
    local columns = { { "REPOSITORY", "repository" }, { "TAG", "tag" } }
    if o.digests then columns[#columns + 1] = { "DIGEST", "digest" } end
    columns[#columns + 1] = { "IMAGE ID", id_of }
    columns[#columns + 1] = { "CREATED", function(r) return format.ago(v(r.created)) end }
    columns[#columns + 1] = { "SIZE", function(r) return format.size(v(r.size)) end }
    if format.is_template(o.format) then
      local plain = {}
      for i, r in ipairs(rows) do
        local t = {}
        for k, x in pairs(getmetatable(r).__index) do t[k] = x end
        t.repository, t.tag, t.digest = r.repository, r.tag, r.digest
        plain[i] = t
      end
      rows = plain
    end
    out.list(o.format, rows, columns)
    return 0
  end,
}

M.pull = {
  name = "pull",
  usage = "pull [OPTIONS] NAME[:TAG|@DIGEST]",
  summary = "Download an image from a registry",
  min_args = 1, max_args = 1,
  flags = {
    { "q", "quiet", "bool", "Suppress verbose output" },
    { nil, "platform", "string", "Set platform if server is multi-platform capable (e.g. linux/amd64)" },
  },
  run = function(ctx, o, pos)
    local ref = pos[1]
    local rec, err = images.pull(ctx.api(), ref, { quiet = o.quiet, platform = o.platform, tty = term.isatty(1) })
    if not rec then errors.api(err) end
    out.print(images.normalize(ref))
    return 0
  end,
}

local function loaded(res)
  local list = v(res.images) or (v(res.id) and { res }) or {}
  for _, img in ipairs(list) do
    local refs = v(img.references) or {}
    if #refs == 0 then
      out.print("Loaded image ID: " .. tostring(v(img.id)))
    end
    for _, r in ipairs(refs) do
      local repo, tag = images.familiar(r)
      out.print("Loaded image: " .. repo .. ":" .. tag)
    end
  end
end

M.load = {
  name = "load",
  usage = "load [OPTIONS]",
  summary = "Load an image from a tar archive or STDIN",
  max_args = 0,
  flags = {
    { "i", "input", "string", "Read from tar archive file, instead of STDIN" },
    { "q", "quiet", "bool", "Suppress the load output" },
  },
  run = function(ctx, o)
    local file = o.input
    local tmp
    if not file then
      if term.isatty(0) then
        out.err("requested load from stdin, but stdin is empty")
        return 1
      end
      local dir = os.getenv("TMPDIR")
      if not dir or dir == "" then dir = "/tmp" end
      tmp = dir .. "/moonbox-load-" .. moonbox.random(8) .. ".tar"
      local ok, err = fs.write(tmp, "", { mode = 384 })
      if not ok then out.err("Error: " .. tostring(err)); return 1 end
      while true do
        local chunk = term.read(1 << 20)
        if not chunk then break end
        local good, aerr = fs.append(tmp, chunk)
        if not good then fs.remove(tmp); out.err("Error: " .. tostring(aerr)); return 1 end
      end
      file = tmp
    elseif not fs.exists(file) then
      out.err("Error: open " .. file .. ": no such file or directory")
      return 1
    end
    local res, err = ctx.api():call("POST", "/v1/images/load", { body_file = file, content_type = "application/x-tar" })
    if tmp then fs.remove(tmp) end
    if not res then errors.api(err) end
    if not o.quiet and type(res) == "table" then loaded(res) end
    return 0
  end,
}

-- DELETE by name when the API can address it, else by id (see the report on
-- references with "/" in path segments).
local function remove(api, name, force)
  local q = { force = force and 1 or nil }
  local res, err = api:call("DELETE", "/v1/images/" .. client.urlencode(name), { query = q })
  if res or not err.unsupported then return res, err end
  local rec, ferr = images.find(api, name)
  if not rec then return nil, ferr end
  local refs = v(rec.references) or {}
  local by_id = name:gsub("^sha256:", ""):match("^%x+$") and (v(rec.id) or ""):find(name:gsub("^sha256:", ""), 1, true)
  if #refs > 1 and not by_id and not force then
    return nil, { kind = "api", code = "conflict", message = "cannot untag " .. name ..
      " alone: the image has " .. #refs .. " names and this daemon's API cannot address a name " ..
      "with '/' (use -f to remove the image and all its names)" }
  end
  return api:call("DELETE", "/v1/images/" .. client.urlencode(v(rec.id)), { query = q })
end

M.rmi = {
  name = "rmi",
  usage = "rmi [OPTIONS] IMAGE [IMAGE...]",
  summary = "Remove one or more images",
  min_args = 1,
  flags = { { "f", "force", "bool", "Force removal of the image" } },
  run = function(ctx, o, pos)
    local api = ctx.api()
    local _, rc = errors.each(pos, function(name)
      local res, err = remove(api, name, o.force)
      if type(res) == "table" then
        for _, u in ipairs(v(res.untagged) or {}) do
          local repo, tag = images.familiar(u)
          out.print("Untagged: " .. repo .. ":" .. tag)
        end
        if v(res.deleted) then out.print("Deleted: " .. tostring(v(res.id))) end
      end
      return res, err
    end)
    return rc
  end,
}

return M
