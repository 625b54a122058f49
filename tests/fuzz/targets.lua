-- tests/fuzz/targets.lua: the Lua side of the libFuzzer targets (tests/fuzz/harness.h). Each
-- T.<name>(data) hands the fuzzer's bytes to one of sluice's parsers the way the engine does
-- and raises when the parser misbehaves: a raise where the API promises `nil, message`, a
-- result of the wrong shape, or an answer that depends on how the bytes were cut into chunks.
-- The APIs that raise on bad input by design (cjson.decode) are called under pcall here.
local cjson = require "cjson"
local json = require "sluice.runtime.json"
local sse = require "sluice.runtime.sse"
local feed = require "sluice.blocks.feed"
local worker = require "sluice.runtime.worker"
local P = require "sluice.providers"

local T = {}

local function check(cond, fmt, ...)
  if not cond then error(string.format(fmt, ...), 2) end
end

-- Cut points from the data itself (so an input always cuts the same way): chunk sizes 1..16
-- from the bytes' values.
local function chunks(data)
  local out, pos, k = {}, 1, 1
  while pos <= #data do
    local n = (data:byte(k) or 7) % 16 + 1
    out[#out + 1] = data:sub(pos, pos + n - 1)
    pos, k = pos + n, k % #data + 1
  end
  return out
end

-- SSE (sluice.runtime.sse, what streamed OpenAI and Gemini replies go through): the events
-- must be the same however the stream is cut into chunks (whole, byte by byte, or in the
-- data-chosen pieces), and every event has string data.
function T.sse(data)
  local function run(parts)
    local evs = {}
    local p = sse.parser(function(ev)
      check(type(ev.data) == "string" and type(ev.event) == "string", "event without string data/event")
      evs[#evs + 1] = ev.event .. "\0" .. ev.data .. "\0" .. tostring(ev.id)
    end)
    for _, c in ipairs(parts) do p:feed(c) end
    p:finish()
    return table.concat(evs, "\1")
  end
  local whole = run({ data })
  local bytes = {}
  for i = 1, math.min(#data, 4096) do bytes[i] = data:sub(i, i) end
  if #data <= 4096 then
    check(run(bytes) == whole, "byte-by-byte feeding gave other events than the whole stream")
  end
  check(run(chunks(data)) == whole, "chunked feeding gave other events than the whole stream")
end

-- Equal values; numbers to the 14 significant digits lua-cjson writes.
local function same(a, b, depth)
  depth = depth or 0
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    return a == b or math.abs(a - b) <= 1e-13 * math.max(math.abs(a), math.abs(b))
  end
  if type(a) ~= "table" or depth > 1100 then return a == b end
  for k, x in pairs(a) do
    if not same(x, b[k], depth + 1) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- JSON (lua-cjson, the decoder of every provider reply, worker line and stored row, and
-- sluice.runtime.json, the encoder of every event and output file): decode raises on bad text
-- by design; what it accepts must encode again and decode to the same text; the judge's
-- reply extraction never raises.
function T.json(data)
  local ok, v = pcall(cjson.decode, data)
  if ok then
    local eok, text = pcall(json.encode, v)
    -- (found by this target: lua-cjson read NaN and Infinity, then refused to write them)
    check(eok, "encode of a decoded value raised: %s", tostring(text))
    do
      local ok2, v2 = pcall(cjson.decode, text)
      check(ok2, "what json.encode wrote does not decode: %s", tostring(v2))
      check(same(v, v2), "decode(encode(v)) is not v")
    end
  end
  local r, why = P.parse_json_reply(data)
  check(type(r) == "table" or (r == nil and type(why) == "string"), "parse_json_reply gave %s", type(r))
end

-- The worker JSON Lines protocol (sluice.runtime.worker): each line from a worker's stdout
-- is a reply, a notice or junk; none may raise, each reply settles its request once.
function T.jsonl(data)
  local settled = {}
  local function req(id)
    return { method = "m", done = function(...)
      check(not settled[id], "request %s settled twice", tostring(id))
      settled[id] = table.pack(...)
    end }
  end
  local w = setmetatable({ name = "fuzz", pending = { [1] = req(1), [2] = req(2), a = req("a") }, npending = 3,
    deaths_in_row = 0, stats = { replies = 0 }, log = function(line)
      check(type(line) == "string", "log of a %s", type(line))
    end }, worker.Worker)
  for line in (data .. "\n"):gmatch("([^\n]*)\n") do w:_on_line(line) end
  for id, r in pairs(settled) do
    check(r[1] == true or (r[1] == nil and type(r[2]) == "string"), "request %s settled with %s", tostring(id),
      tostring(r[1]))
  end
end

-- RSS/Atom (sluice.blocks.feed): a feed table or nil, message; never a raise.
function T.feed(data)
  local f, err = feed.parse(data)
  if f == nil then
    check(type(err) == "string" and err:match("^feed: "), "nil without a 'feed: ' message: %s", tostring(err))
    return
  end
  check(type(f.items) == "table" and (f.kind == "rss" or f.kind == "atom"), "feed of the wrong shape")
  for _, it in ipairs(f.items) do
    check(it.url == nil or type(it.url) == "string", "item url of type %s", type(it.url))
    check(it.time == nil or math.type(it.time) or type(it.time) == "number", "item time of type %s", type(it.time))
    check(it.duration == nil or type(it.duration) == "number", "duration of type %s", type(it.duration))
  end
end

-- The dashboard (sluice.app.dashboard over sluice.core.httpd): fuzz_httpd.c sends raw bytes
-- over TCP to this server; the C side judges (a crash, a hang, a sanitizer report).
function T.httpd_start(files_dir)
  local dashboard = require "sluice.app.dashboard"
  local dash = assert(dashboard.start { addr = "127.0.0.1:0", quiet = true, files_dir = files_dir,
    web_dir = require("sluice.core.core").share_dir .. "/web" })
  T.dash = dash
  return dash.port
end

return T
