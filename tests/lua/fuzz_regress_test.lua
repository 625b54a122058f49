-- The fuzz targets' inputs replayed in the normal and the sanitizer builds: every seed of
-- tests/fuzz/corpus/<target>/ and every input a fuzzer found a fault with
-- (tests/fuzz/regress/<target>/) goes through the same checks as under libFuzzer
-- (tests/fuzz/targets.lua: the Lua parsers) or the same entry points (media and HLS files
-- through sluice.core.media, as the engine probes and decodes them). docs/fuzz.md.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/fuzz/?.lua;" .. package.path
local targets = require "targets"
local P = require "sluice.providers"
local media = require "sluice.core.media"

local function files(dir)
  local out = {}
  local p = io.popen('ls -1 "' .. dir .. '" 2>/dev/null')
  for name in p:lines() do out[#out + 1] = dir .. "/" .. name end
  p:close()
  return out
end

local function inputs(target)
  local out = files(SRC .. "/tests/fuzz/corpus/" .. target)
  for _, f in ipairs(files(SRC .. "/tests/fuzz/regress/" .. target)) do out[#out + 1] = f end
  return out
end

for _, target in ipairs { "sse", "json", "jsonl", "feed" } do
  T.case(target .. ": every seed and every regression input passes the fuzz target's checks", function()
    local list = inputs(target)
    T.ok(#list >= 3, "inputs for " .. target)
    for _, path in ipairs(list) do
      local ok, err = pcall(targets[target], T.slurp(path))
      T.ok(ok, path .. ": " .. tostring(err))
    end
  end)
end

-- found by fuzz_json (tests/fuzz/regress/json/nan_roundtrip.json): lua-cjson read NaN and
-- Infinity, which a model may write, and then refused to write them again
T.case("json: NaN and Infinity are not JSON: refused on reading, so a judge's NaN score is an error", function()
  T.ok(not pcall(cjson.decode, '{"score": NaN}'))
  T.ok(not pcall(cjson.decode, '[Infinity]'))
  T.ok(not pcall(cjson.decode, '[0x10]'))
  local v, why = P.parse_json_reply('```json\n{"score": NaN, "reasons": []}\n```')
  T.eq(v, nil)
  T.eq(why, "no JSON object in the reply")
  T.eq(cjson.decode('[1e308, -0.5]')[2], -0.5, "finite numbers still read")
end)

local function probe(path)
  return sl.await("media.probe", function(done) return media.probe(path, done) end)
end

T.case("media and HLS seeds and regression inputs: probed as the engine does, an answer or one line naming the input", function()
  local list = inputs("media")
  for _, f in ipairs(files(SRC .. "/tests/fuzz/regress/hls")) do list[#list + 1] = f end
  for _, path in ipairs(list) do
    local info, err = probe(path)
    T.ok(info or (type(err) == "string" and not err:find("\n") and err:find(path, 1, true)),
      path .. ": " .. tostring(err))
  end
end)

return T.run()
