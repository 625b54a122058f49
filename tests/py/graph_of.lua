-- Prints the stage graphs of the pipeline scripts given as arguments, as JSON:
-- [{script=, name=, nodes = {{name=, from = {...}}, ...}}, ...] (tests/py/test_dashboard_content.py).
local sl = require "sluice"
local cjson = require "cjson"

local out = {}
for _, path in ipairs(arg) do
  local p = sl.load(path)
  local nodes = {}
  for _, n in ipairs(p.order) do
    local s = p.stages[n]
    nodes[#nodes + 1] = { name = n, from = s and s.from or {} }
  end
  out[#out + 1] = { script = path, name = p.name, nodes = nodes }
end
print(cjson.encode(out))
