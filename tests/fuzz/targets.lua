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

-- Equal values; numbers to the 14 significant digits lua-cjson writes, and a number JSON
-- cannot hold (read as infinity from 1e999) written as null.
local function same(a, b, depth)
  depth = depth or 0
  if type(a) == "number" and (a ~= a or a == math.huge or a == -math.huge) then return b == cjson.null end
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
    -- (found by this target: lua-cjson read NaN and Infinity, then refused to write them; and
    -- 1e308345678901234567890, infinity, which it now writes as null)
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

-- Provider replies (sluice.providers.openai, .gemini, .clova over providers.call): the
-- fuzzer's bytes are the body of the one HTTP answer a call gets (http.request is replaced
-- for the call; a stream's body goes through the real SSE parser), with a status the second
-- byte chooses. The first byte chooses the call: OpenAI chat completion (plain, streamed, as
-- a judge), OpenAI transcription (verbose_json), Gemini generateContent (plain, streamed, as
-- a judge) or CLOVA Speech recognition. Every call returns a result of its shape or nil and a
-- string message; none raises.
local http = require "sluice.runtime.http"
local REPLY_STATUS = { 200, 200, 200, 200, 400, 429, 500, 503 }
local reply_providers
local function reply_call(kind, p)
  if kind == 0 then return p.openai_llm:complete("hi") end
  if kind == 1 then return p.openai_llm:complete("hi", { stream = function(piece)
    check(type(piece) == "string", "a streamed piece of type %s", type(piece)) end }) end
  if kind == 2 then return p.openai_llm:judge("a summary", { "a source" }) end
  if kind == 3 then return p.openai_stt:transcribe { path = "/nonexistent/chunk.wav", t0 = 10 } end
  if kind == 4 then return p.gemini_llm:complete("hi") end
  if kind == 5 then return p.gemini_llm:complete("hi", { stream = function(piece)
    check(type(piece) == "string", "a streamed piece of type %s", type(piece)) end }) end
  if kind == 6 then return p.gemini_llm:judge("a summary", { "a source" }) end
  return p.clova:transcribe { path = "/nonexistent/chunk.wav", t0 = 10 }
end
function T.reply(data)
  if not reply_providers then
    local common = { api_key = "k", retry = { attempts = 1 }, timeout = 5 }
    local function cfg(extra)
      local c = {}
      for k, v in pairs(common) do c[k] = v end
      for k, v in pairs(extra) do c[k] = v end
      return c
    end
    reply_providers = {
      openai_llm = P.get("llm", "openai", cfg { base_url = "http://127.0.0.1:9/v1", model = "gpt-4.1-mini" }),
      openai_stt = P.get("stt", "openai", cfg { base_url = "http://127.0.0.1:9/v1", model = "whisper-1" }),
      gemini_llm = P.get("llm", "gemini", cfg { base_url = "http://127.0.0.1:9/v1beta", model = "gemini-2.5-flash" }),
      clova = P.get("stt", "clova", cfg { invoke_url = "http://127.0.0.1:9/clova", secret = "s" }),
    }
  end
  local kind = (data:byte(1) or 0) % 8
  local status = REPLY_STATUS[(data:byte(2) or 0) % #REPLY_STATUS + 1]
  local body = data:sub(3)
  local real = http.request
  http.request = function(o)
    if o.stream then
      for _, c in ipairs(chunks(body)) do o.stream(c) end
      return { status = status, headers = { ["content-type"] = "text/event-stream" }, body = "" }
    end
    return { status = status, headers = { ["content-type"] = "application/json" }, body = body }
  end
  local r = table.pack(pcall(reply_call, kind, reply_providers))
  http.request = real
  if not r[1] then error(r[2], 0) end
  local v, err = r[2], r[3]
  if v == nil then
    check(type(err) == "string", "call %d failed without a string message: %s", kind, type(err))
  elseif kind == 0 or kind == 1 or kind == 4 or kind == 5 then
    check(type(v) == "string", "call %d gave a %s, not text", kind, type(v))
  elseif kind == 2 or kind == 6 then
    check(type(v) == "table" and type(v.score) == "number" and type(v.reasons) == "table", "a judge verdict of the wrong shape")
  else
    check(type(v) == "table" and type(v.segments) == "table", "a transcription without segments")
    for _, seg in ipairs(v.segments) do
      check(type(seg.start) == "number" and type(seg["end"]) == "number", "a segment without numeric times")
      check(type(seg.text) == "string", "a segment without text")
    end
  end
  return v, err
end

-- Configuration (sluice.app.config, what `sluice run` does with --config FILE.json and --set
-- k=v): the first byte chooses a JSON config file (the rest of the bytes, read by
-- config.load_file) or --set arguments (one a line); each is resolved over the podcast's
-- defaults with an environment, checked against its schema and printed as --show-config
-- prints it. A file is a table or nil and a message naming it; resolve gives a table or nil
-- and a message; check gives lines; none raises.
local config_state
function T.config(data)
  local config = require "sluice.app.config"
  if not config_state then
    local sl = require "sluice"
    local pipe = sl.load(require("sluice.core.core").share_dir .. "/pipelines/podcast.lua")
    local tmp = os.tmpname()
    os.remove(tmp)
    config_state = { schema = config.schema(pipe), defaults = pipe.defaults, file = tmp .. ".json" }
  end
  local st = config_state
  local file, sets
  if (data:byte(1) or 0) % 2 == 0 then
    local f = assert(io.open(st.file, "wb"))
    f:write(data:sub(2))
    f:close()
    local v, err = config.load_file(st.file)
    if v == nil then
      check(type(err) == "string" and err:find(st.file, 1, true), "a config file refused without naming it: %s",
        tostring(err))
      return
    end
    check(type(v) == "table", "a config file read as a %s", type(v))
    file = v
  else
    sets = {}
    for line in (data:sub(2) .. "\n"):gmatch("([^\n]*)\n") do sets[#sets + 1] = line end
  end
  local cfg, err = config.resolve { defaults = st.defaults, file = file, sets = sets,
    env = { SLUICE_KEYWORDS = "12", SLUICE_PROVIDERS_STT = "sphinx", SLUICE_FEED_MAX_ITEMS = "[1,2]" } }
  if cfg == nil then
    check(type(err) == "string", "resolve failed without a message")
    return
  end
  check(type(cfg) == "table", "resolve gave a %s", type(cfg))
  local problems = config.check(st.schema, { file = file, file_name = st.file, sets = sets })
  for _, line in ipairs(problems) do check(type(line) == "string", "a problem of type %s", type(line)) end
  check(type(config.format(cfg)) == "string", "format gave no text")
  return cfg, problems
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
