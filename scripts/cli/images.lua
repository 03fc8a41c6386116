-- Image helpers shared by images/pull/rmi/run: reference normalisation, finding an image
-- in the daemon's list, and a pull with a progress bar per layer.
--
--   images.normalize("nginx") -> "docker.io/library/nginx:latest"
--   images.familiar("docker.io/library/nginx:latest") -> "nginx", "latest"
--   images.find(api, ref) ⏳ -> record | nil, err   (err.code "not_found"; "unsupported"
--                                               when the daemon has no images API)
--   images.pull(api, ref, {quiet=, auth=, platform=, write=, tty=}) ⏳ -> record | nil, err
local format = require("cli.format")
local progress = require("cli.progress")
local v = format.v

local M = {}

function M.normalize(ref)
  local name, digest = ref:match("^([^@]+)@(.+)$")
  name = name or ref
  local tag
  local last = name:match("([^/]*)$")
  local t = last:match(":([^:]+)$")
  if t then
    tag = t
    name = name:sub(1, #name - #t - 1)
  end
  local first, rest = name:match("^([^/]+)/(.+)$")
  local domain
  if first and (first:find("[.:]") or first == "localhost") then
    domain, name = first, rest
  else
    domain = "docker.io"
    if not name:find("/", 1, true) then name = "library/" .. name end
  end
  if domain == "index.docker.io" then domain = "docker.io" end
  local out = domain .. "/" .. name
  if tag then out = out .. ":" .. tag end
  if digest then out = out .. "@" .. digest
  elseif not tag then out = out .. ":latest" end
  return out
end

-- "docker.io/library/nginx:latest" -> "nginx", "latest"; other registries keep their host.
function M.familiar(ref)
  local name, tag = ref:match("^(.-):([^:/]+)$")
  if not name then name, tag = ref, "<none>" end
  local digest_name = name:match("^(.-)@")
  if digest_name then name = digest_name end
  name = name:gsub("^docker%.io/library/", ""):gsub("^docker%.io/", "")
  return name, tag
end

-- The record whose references, id or id prefix match ref.
function M.match(records, ref)
  local want = M.normalize(ref)
  local hex = ref:gsub("^sha256:", "")
  for _, r in ipairs(records) do
    for _, x in ipairs(v(r.references) or {}) do
      if x == want or x == ref then return r end
    end
    for _, x in ipairs(v(r.repo_digests) or {}) do
      if x == want or x == ref then return r end
    end
  end
  if hex:match("^%x+$") and #hex >= 4 then
    local found
    for _, r in ipairs(records) do
      local id = (v(r.id) or ""):gsub("^sha256:", "")
      if id:sub(1, #hex) == hex then
        if found and found ~= r then return nil, "ambiguous" end
        found = r
      end
    end
    if found then return found end
  end
  return nil
end

function M.list(api)
  local list, err = api:call("GET", "/v1/images", { timeout = 60 })
  if not list then
    if err.unsupported then
      err.code = "unsupported"
      err.message = "this daemon has no images API"
    end
    return nil, err
  end
  if type(list) ~= "table" then return {} end
  return list
end

function M.find(api, ref)
  local list, err = M.list(api)
  if not list then return nil, err end
  local r, why = M.match(list, ref)
  if r then return r end
  if why == "ambiguous" then
    return nil, { kind = "api", code = "conflict", message = "the image id prefix " .. ref .. " is ambiguous" }
  end
  return nil, { kind = "api", code = "not_found", status = 404, message = "No such image: " .. ref }
end

-- Pull with docker-like output. Progress goes to opts.write (stdout for `pull`, stderr
-- for `run`), redrawn in place when that is a terminal.
function M.pull(api, ref, opts)
  opts = opts or {}
  local write = opts.write or function(s) term.write(s) end
  local body = { reference = ref }
  if opts.auth then body.auth = opts.auth end
  if opts.platform then body.platform = opts.platform end
  local resp, err = api:stream("POST", "/v1/images/pull", { body = body })
  if not resp then return nil, err end
  local normalized = M.normalize(ref)
  local name, tag = M.familiar(normalized)
  if not opts.quiet then
    if not ref:find(":", (ref:find("/[^/]*$") or 1), true) and not ref:find("@", 1, true) then
      write("Using default tag: latest\n")
    end
    write(tag .. ": Pulling from " .. (name:find("/", 1, true) and name or ("library/" .. name)) .. "\n")
  end
  local p = progress.new { tty = opts.tty, write = write }
  local record, failure
  local downloaded, saw_progress = false, false
  local lines = require("cli.client").lines(resp)
  for line in lines do
    if line ~= "" then
      local good, msg = pcall(json.decode, line)
      if good and type(msg) == "table" then
        if type(v(msg.error)) == "table" then
          failure = { kind = "api", code = v(msg.error.code) or "error",
                      message = v(msg.error.message) or "pull failed" }
        elseif type(v(msg.image)) == "table" then
          record = msg.image
        elseif type(v(msg.progress)) == "table" or type(v(msg.layers)) == "table" then
          -- a progress line: {status, layers=[...]} (or nested under "progress")
          local ev = type(v(msg.progress)) == "table" and msg.progress or msg
          for _, l in ipairs(v(ev.layers) or {}) do
            if not v(l.cached) then downloaded = true end
          end
          saw_progress = true
          if not opts.quiet then p:update(ev) end
        elseif v(msg.id) and v(msg.references) then
          record = msg -- a plain record (stream=0 style answer)
        end
      end
    end
  end
  resp:close()
  if not opts.quiet then p:finish() end
  if failure then return nil, failure end
  if not record then
    return nil, { kind = "api", code = "error", message = "the pull ended without a result" }
  end
  if not opts.quiet then
    if v(record.manifest_digest) then write("Digest: " .. record.manifest_digest .. "\n") end
    if downloaded then
      write("Status: Downloaded newer image for " .. (name .. ":" .. tag) .. "\n")
    else
      write("Status: Image is up to date for " .. (name .. ":" .. tag) .. "\n")
    end
  end
  return record
end

return M
