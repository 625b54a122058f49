-- sluice.runtime.json: one rule for every JSON output: an empty table is [], a map made with
-- json.object() is {}; everything else is lua-cjson's.
local T = require "sluice.app.test"
local json = require "sluice.runtime.json"
local cjson = require "cjson"

T.case("empty tables are lists at any depth; json.object() maps stay objects", function()
  T.eq(json.encode {}, "[]")
  T.eq(json.encode { a = {} }, '{"a":[]}')
  T.eq(json.encode { { x = { {}, { y = {} } } } }, '[{"x":[[],{"y":[]}]}]')
  T.eq(json.encode { counts = json.object() }, '{"counts":{}}')
  T.eq(json.encode(json.object()), "{}")
  local m = json.object { person = 0.9 }
  T.eq(json.encode { m }, '[{"person":0.9}]')
end)

T.case("values without empty tables are exactly cjson's; the input is not changed", function()
  local v = { a = 1, b = "x\0y", c = { 1, 2, { d = true } }, e = cjson.null }
  T.eq(json.encode(v), cjson.encode(v))
  local w = { list = {}, s = "[]" }
  local s = json.encode(w)
  T.eq(cjson.decode(s).s, "[]")
  T.eq(type(w.list), "table")
  T.eq(next(w.list), nil)
  T.eq(json.encode("a"), '"a"')
  T.raises(function() json.encode { f = print } end, "Cannot serialise")
end)

T.case("events and pipeline files use the rule", function()
  local events = require "sluice.runtime.events"
  T.eq(events.encode { event = "x", list = {} }:match('"list":(%[%])'), "[]")
  T.eq(events.encode { f = print, list = {} }:match('"list":(%[%])'), "[]")
  local stages = require "sluice.blocks.stages"
  local p = os.tmpname()
  stages.write_json(p, { frames = {}, classes = json.object() })
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  T.eq(cjson.decode(s).frames and s:match('"frames":(%[%])'), "[]")
  T.eq(s:match('"classes":({})'), "{}")
end)

return T.run()
