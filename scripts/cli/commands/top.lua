-- top CONTAINER: the processes running in a container
local client = require("cli.client")
local format = require("cli.format")
local out = require("cli.out")

return {
  name = "top",
  usage = "top CONTAINER",
  summary = "Display the running processes of a container",
  min_args = 1, max_args = 1,
  format = true,
  run = function(ctx, o, pos)
    local res = ctx.api():check("GET", "/v1/containers/" .. client.urlencode(pos[1]) .. "/top", { timeout = 60 })
    if o.format == "json" then out.json(res); return 0 end
    local titles = format.v(res.titles) or {}
    local columns = {}
    for i, t in ipairs(titles) do columns[i] = { t, i } end
    local rows = {}
    for _, p in ipairs(format.v(res.processes) or {}) do
      local r = {}
      for i = 1, #titles do r[i] = p[i] ~= nil and tostring(format.v(p[i]) or "") or "" end
      rows[#rows + 1] = r
    end
    if format.is_template(o.format) then
      for _, r in ipairs(rows) do
        local obj = {}
        for i, t in ipairs(titles) do obj[t] = r[i]; obj[t:lower()] = r[i] end
        out.print(format.template(o.format, obj))
      end
      return 0
    end
    out.write(format.table(columns, rows))
    return 0
  end,
}
