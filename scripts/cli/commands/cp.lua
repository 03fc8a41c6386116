-- cp CONTAINER:SRC DEST | cp SRC CONTAINER:DEST  (files and directories, both ways,
-- through the tar archive endpoints; "-" as DEST writes the tar to stdout, "-" as SRC
-- reads a tar from stdin). The path rules follow docker cp:
--   SRC a file:  DEST missing -> saved as DEST; DEST a dir -> DEST/basename(SRC)
--   SRC a dir:   DEST missing -> created with SRC's contents; DEST a dir -> DEST/basename
--                (SRC ending in "/." copies the contents into DEST instead)
local client = require("cli.client")
local errors = require("cli.errors")
local format = require("cli.format")
local opts_ = require("cli.opts")
local out = require("cli.out")
local tar = require("cli.tar")

local M = {}

-- "name:path" -> container, path; a local path otherwise (pure; unit-tested).
function M.split(arg)
  if arg == "-" or arg:sub(1, 1) == "/" or arg:sub(1, 1) == "." then return nil, arg end
  local c, p = arg:match("^([^:/]+):(.*)$")
  if c then return c, p end
  return nil, arg
end

local function basename(p)
  p = p:gsub("/+$", "")
  if p == "" then return "/" end
  return p:match("([^/]+)$") or p
end

local function dirname(p)
  p = p:gsub("/+$", "")
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

-- The first directory strictly between target and target..rel that is a symbolic link
-- (on this host), or nil.
local function through_link(target, rel)
  local parts = {}
  for seg in rel:gmatch("[^/]+") do parts[#parts + 1] = seg end
  local p = target:gsub("/+$", "")
  for i = 1, #parts - 1 do
    p = p .. "/" .. parts[i]
    local st = fs.stat(p)
    if st and st.type == "link" then return p end
  end
  return nil
end
M.through_link = through_link

-- Entry names from the archive: no absolute names, no "..", and below the root entry.
local function relative(name, root)
  name = name:gsub("^%./", ""):gsub("/+$", "")
  if name:sub(1, 1) == "/" then return nil end
  for seg in name:gmatch("[^/]+") do if seg == ".." then return nil end end
  if name == root then return "" end
  if name:sub(1, #root + 1) == root .. "/" then return name:sub(#root + 1) end
  return nil
end
M.relative = relative

local function archive_path(id) return "/v1/containers/" .. client.urlencode(id) .. "/archive" end

local function container_path(p)
  if p == "" then return "/" end
  if p:sub(1, 1) ~= "/" then p = "/" .. p end
  return p
end

-- What is at path in the container: "dir" | "file" | "symlink" | ... | nil (missing)
-- read from the first header of its archive.
local function probe(api, id, path)
  local resp, err = api:stream("GET", archive_path(id), { query = { path = path } })
  if not resp then
    local m = tostring(err.message):lower()
    if err.status == 404 and not err.unsupported and not m:find("no such container", 1, true) then
      return nil
    end
    return nil, err
  end
  local kind
  local r = tar.reader(function(h) kind = kind or h.type end)
  while not kind do
    local chunk = resp:read(30)
    if not chunk then break end
    local ok, terr = r:feed(chunk)
    if not ok then resp:close(); return nil, { kind = "api", message = terr } end
  end
  resp:close()
  return kind or "missing"
end

local function copy_from(api, o, id, src, dst)
  src = container_path(src)
  local contents_only = src:match("/%.$") ~= nil
  local resp, err = api:stream("GET", archive_path(id), { query = { path = contents_only and src:sub(1, -3) or src } })
  if not resp then errors.api(err) end
  local total = 0
  if dst == "-" then
    while true do
      local chunk, rerr = resp:read()
      if not chunk then
        if rerr then errors.api({ kind = "connect", message = "lost the connection to the daemon: " .. rerr }) end
        break
      end
      term.write(chunk)
    end
    resp:close()
    return 0
  end
  local dst_st = fs.stat(dst)
  local dst_kind = dst_st and dst_st.type or nil
  local root, target
  local fail
  local warned = {}
  local function warn(msg)
    if not warned[msg] then warned[msg] = true; out.err("moonbox cp: " .. msg) end
  end
  local r = tar.reader(function(h)
    if fail then return nil end
    if not root then
      root = h.name:gsub("^%./", ""):gsub("/+$", "")
      if h.type == "dir" then
        if dst_kind == nil then
          local parent = dirname(dst)
          if parent ~= "." and not fs.exists(parent) then
            fail = "the destination directory " .. parent .. " does not exist"; return nil
          end
          target = dst
        elseif dst_kind == "directory" then
          target = contents_only and dst or (dst:gsub("/+$", "") .. "/" .. basename(root))
        else
          fail = "cannot copy a directory to a file: " .. dst; return nil
        end
      else
        if dst_kind == "directory" then
          target = dst:gsub("/+$", "") .. "/" .. basename(root)
        elseif dst:sub(-1) == "/" then
          fail = "the destination directory " .. dst .. " does not exist"; return nil
        else
          local parent = dirname(dst)
          if parent ~= "." and not fs.exists(parent) then
            fail = "the destination directory " .. parent .. " does not exist"; return nil
          end
          target = dst
        end
      end
    end
    local rel = relative(h.name, root)
    if not rel then warn("skipping unsafe name in the archive: " .. h.name); return nil end
    local path = target .. rel
    -- never write through a symbolic link the archive made (or found) below the target
    local via = through_link(target, rel)
    if via then warn("skipping " .. path .. ": " .. via .. " is a symbolic link"); return nil end
    if h.type == "dir" then
      local ok, merr = fs.mkdir(path, (h.mode ~= 0 and h.mode or 493) | 448)
      if not ok then fail = merr end
      return nil
    elseif h.type == "file" then
      local parent = dirname(path)
      if parent ~= "." and not fs.exists(parent) then fs.mkdir(parent) end
      local st = fs.stat(path)
      if st and st.type == "directory" then fail = "cannot overwrite directory " .. path .. " with a file"; return nil end
      local ok, werr = fs.write(path, "", { mode = h.mode ~= 0 and h.mode or 420 })
      if not ok then fail = werr; return nil end
      return function(chunk)
        if chunk and not fail then
          local good, aerr = fs.append(path, chunk)
          if not good then fail = aerr end
          total = total + #chunk
        end
      end
    elseif h.type == "symlink" then
      local st = fs.stat(path)
      if st and st.type == "directory" then fail = "cannot overwrite directory " .. path .. " with a link"; return nil end
      if st then fs.remove(path) end
      local ok, lerr = fs.symlink(h.linkname, path)
      if not ok then fail = lerr end
    else
      warn("skipping " .. h.type .. " " .. path)
    end
    return nil
  end)
  while not fail do
    local chunk, rerr = resp:read()
    if not chunk then
      if rerr then fail = "lost the connection to the daemon: " .. rerr end
      break
    end
    local ok, terr = r:feed(chunk)
    if not ok then fail = terr end
  end
  resp:close()
  if not fail then
    local ok, cerr = r:close()
    if not ok then fail = cerr end
  end
  if fail then
    out.err("Error: " .. tostring(fail))
    return 1
  end
  if not root then
    out.err("Error: the container sent an empty archive")
    return 1
  end
  if not o.quiet then out.err("Successfully copied " .. format.size(total) .. " to " .. dst) end
  return 0
end

-- Writes src (a local file or directory) into the tar file at tmp under the name `name`.
local function add_local(tmp, src, name, o, stats)
  local st, err = fs.stat(src)
  if not st then return nil, err end
  if st.type == "link" then
    if o.follow_link and stats.depth == 0 then
      local data = fs.read(src, 1 << 40)
      if data then
        stats.bytes = stats.bytes + #data
        fs.append(tmp, tar.header { name = name, size = #data, mode = 420, mtime = st.mtime })
        fs.append(tmp, data); fs.append(tmp, tar.padding(#data))
        return true
      end
      return nil, "cannot follow the link " .. src .. " (a link to a directory?)"
    end
    local link, lerr = fs.readlink(src)
    if not link then return nil, lerr end
    fs.append(tmp, tar.header { name = name, type = "symlink", linkname = link, mtime = st.mtime })
    return true
  elseif st.type == "directory" then
    fs.append(tmp, tar.header { name = name, type = "dir", mode = st.mode, mtime = st.mtime })
    local names, lerr = fs.list(src)
    if not names then return nil, lerr end
    stats.depth = stats.depth + 1
    for _, n in ipairs(names) do
      local ok, e = add_local(tmp, src .. "/" .. n, name .. "/" .. n, o, stats)
      if not ok then return nil, e end
    end
    stats.depth = stats.depth - 1
    return true
  elseif st.type == "file" then
    local data, rerr = fs.read(src, st.size + 1)
    if not data then return nil, rerr end
    stats.bytes = stats.bytes + #data
    fs.append(tmp, tar.header { name = name, size = #data, mode = st.mode, mtime = st.mtime })
    fs.append(tmp, data)
    fs.append(tmp, tar.padding(#data))
    return true
  end
  out.err("moonbox cp: skipping " .. st.type .. " " .. src)
  return true
end

local function temp_file()
  local dir = os.getenv("TMPDIR")
  if not dir or dir == "" then dir = "/tmp" end
  return dir .. "/moonbox-cp-" .. moonbox.random(8) .. ".tar"
end

local function upload(api, id, dir, file)
  return api:call("PUT", archive_path(id), { query = { path = dir }, body_file = file,
                                             content_type = "application/x-tar" })
end

local function copy_to(api, o, src, id, dst)
  dst = container_path(dst)
  if src == "-" then
    -- a tar from stdin, extracted into the directory dst
    local tmp = temp_file()
    local ok, err = fs.write(tmp, "", { mode = 384 })
    if not ok then errors.api({ kind = "connect", message = err }) end
    while true do
      local chunk = term.read(1 << 20)
      if not chunk then break end
      fs.append(tmp, chunk)
    end
    local res, uerr = upload(api, id, dst, tmp)
    fs.remove(tmp)
    if not res then errors.api(uerr) end
    return 0
  end
  local contents_only = src:match("/%.$") ~= nil
  if contents_only then src = src:sub(1, -3) end
  local st, serr = fs.stat(src)
  if not st then
    out.err("Error: no such file or directory: " .. src)
    return 1
  end
  local src_dir = st.type == "directory"
  local kind, perr = probe(api, id, dst)
  if perr then errors.api(perr) end
  local extract_dir, name
  if kind == "dir" then
    extract_dir = dst
    name = basename(src)
  elseif kind == nil or kind == "missing" then
    if dst:sub(-1) == "/" and not src_dir then
      out.err("Error: the destination directory " .. dst .. " does not exist")
      return 1
    end
    extract_dir = dirname(dst)
    name = basename(dst)
  else
    if src_dir then
      out.err("Error: cannot copy a directory to a file: " .. dst)
      return 1
    end
    extract_dir = dirname(dst)
    name = basename(dst)
  end
  local tmp = temp_file()
  local ok, err = fs.write(tmp, "", { mode = 384 })
  if not ok then out.err("Error: " .. tostring(err)); return 1 end
  local stats = { bytes = 0, depth = 0 }
  local good, aerr
  if contents_only and src_dir and kind == "dir" then
    -- the contents go straight into dst
    local names = fs.list(src) or {}
    good = true
    for _, n in ipairs(names) do
      good, aerr = add_local(tmp, src .. "/" .. n, n, o, stats)
      if not good then break end
    end
  else
    good, aerr = add_local(tmp, src, name, o, stats)
  end
  if good then fs.append(tmp, tar.finish()) end
  if not good then
    fs.remove(tmp)
    out.err("Error: " .. tostring(aerr))
    return 1
  end
  local res, uerr = upload(api, id, extract_dir, tmp)
  fs.remove(tmp)
  if not res then errors.api(uerr) end
  if not o.quiet then
    out.err("Successfully copied " .. format.size(stats.bytes) .. " to " .. id .. ":" .. dst)
  end
  return 0
end

M.cp = {
  name = "cp",
  usage = "cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n        moonbox cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH",
  summary = "Copy files/folders between a container and the local filesystem",
  min_args = 2, max_args = 2,
  flags = {
    { "a", "archive", "bool", "Archive mode (accepted; ownership is not copied)" },
    { "L", "follow-link", "bool", "Always follow symbol link in SRC_PATH" },
    { "q", "quiet", "bool", "Suppress the summary line" },
  },
  run = function(ctx, o, pos)
    local sc, sp = M.split(pos[1])
    local dc, dp = M.split(pos[2])
    if sc and dc then errors.usage("copying between containers is not supported", "cp") end
    if not sc and not dc then errors.usage("must specify at least one container source", "cp") end
    if sc then
      if dp ~= "-" then dp = opts_.clean_path(dp) .. (dp:sub(-1) == "/" and "/" or "") end
      return copy_from(ctx.api(), o, sc, sp, dp)
    end
    return copy_to(ctx.api(), o, sp, dc, dp)
  end,
}

return M
