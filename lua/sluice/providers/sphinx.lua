-- sluice.providers.sphinx: offline speech-to-text with CMU PocketSphinx (Debian's
-- libpocketsphinx3 and the pocketsphinx-en-us model), decoded in C on the engine's pool.
--
--   local stt = require("sluice.providers.sphinx").new{ workers = 2 }
--   local r = stt:transcribe{ path = "chunk.wav", t0 = 30, t1 = 60 }
--   -- r.segments[i] = { start=, ["end"]=, text=, words = {{word=,start=,["end"]=,conf=}...} }
--
-- Configuration: workers (decoders, default 1; each holds its own copy of the model, about
-- 40 MB), model (directory, default /usr/share/pocketsphinx/model/en-us), or hmm, lm and dict
-- separately. Audio is a WAV file of 16 kHz mono 16-bit PCM (`path`), or a blob of such
-- samples (`blob`, with `rate = 16000`). Times are media seconds: the chunk's t0 is added.
local csphinx = require "sluice.core.sphinx"
local engines = require "sluice.providers.engines"

local M = { roles = { stt = true }, name = "sphinx" }

local DEFAULT_MODEL = "/usr/share/pocketsphinx/model/en-us"
local RATE = 16000

local Sphinx = { name = "sphinx" }
Sphinx.__index = Sphinx

function M.new(cfg)
  cfg = cfg or {}
  local model = cfg.model or DEFAULT_MODEL
  local paths = {
    hmm = cfg.hmm or (model .. "/en-us"),
    lm = cfg.lm or (model .. "/en-us.lm.bin"),
    dict = cfg.dict or (model .. "/cmudict-en-us.dict"),
  }
  local self = setmetatable({ cfg = cfg, paths = paths }, Sphinx)
  self.pool = engines.new {
    name = "sphinx", size = tonumber(cfg.workers) and math.tointeger(tonumber(cfg.workers)) or 1,
    load = function(done) return csphinx.load(paths, done) end,
  }
  return self
end

-- Loads every decoder now (otherwise the first transcriptions load them).
function Sphinx:warm() return self.pool:warm() end

function Sphinx:close() self.pool:close() end

-- workers() -> how many decoders may run at once; set_workers(n): that many from now on (a
-- stage that runs n workers on this provider sets n, so the decoders never cap it unseen).
function Sphinx:workers() return self.pool.size end
function Sphinx:set_workers(n) self.pool:resize(n) end

-- transcribe(audio, opts) -> {segments=, text=, provider="sphinx", duration=} or nil, msg, code
function Sphinx:transcribe(audio, opts)
  if type(audio) ~= "table" then
    error("bad argument #1 to 'transcribe' (table {path=|blob=, t0=, t1=} expected)", 2)
  end
  local input = audio.path or audio.blob
  if input == nil then error("bad argument #1 to 'transcribe' (path or blob required)", 2) end
  if audio.blob ~= nil and audio.path == nil and (audio.rate or RATE) ~= RATE then
    return nil, string.format("sphinx: audio is %s Hz; sphinx needs %d Hz mono 16-bit PCM",
      tostring(audio.rate), RATE), "EINVAL"
  end
  local t0 = audio.t0 or 0
  local r, msg, code = self.pool:run("sphinx.transcribe", function(decoder, done)
    return decoder:transcribe(input, done)
  end)
  if not r then return nil, msg, code end
  local t1 = audio.t1 or (t0 + r.duration)
  local segments, texts = {}, {}
  local last = t0
  for _, u in ipairs(r.utterances) do
    local words = {}
    for _, w in ipairs(u.words) do
      -- Word times come from frame counts: clamp them into the chunk and keep them
      -- monotonic (a word never starts before the previous one ended).
      local s = math.min(math.max(t0 + w.start, last), t1)
      local e = math.min(math.max(t0 + w["end"], s), t1)
      last = e
      words[#words + 1] = { word = w.word, start = s, ["end"] = e, conf = w.conf }
    end
    if #words > 0 then
      segments[#segments + 1] = {
        start = words[1].start, ["end"] = words[#words]["end"], text = u.text, words = words,
      }
      texts[#texts + 1] = u.text
    end
  end
  return {
    segments = segments, text = table.concat(texts, " "), provider = "sphinx",
    duration = r.duration, language = "en",
  }
end

return M
