-- sluice.providers.clova: NAVER CLOVA Speech long-form recognition (stt).
-- POST {invoke_url}/recognizer/upload, multipart/form-data with the audio file in `media`
-- and a JSON `params` field ({language, completion="sync", wordAlignment, fullText,
-- diarization}); header X-CLOVASPEECH-API-KEY. The reply has result="COMPLETED" and
-- segments whose start/end (and word timings [start, end, word]) are in milliseconds.
--
-- cfg: invoke_url ($CLOVA_SPEECH_INVOKE_URL), secret ($CLOVA_SPEECH_SECRET), language
-- (default ko-KR; en-US, enko, ja, zh-cn, zh-tw), diarization (bool), boostings (list of
-- {words=}), limit, retry, timeout.
local P = require "sluice.providers"
local cjson = require "cjson"

local M = { roles = { stt = true } }

local Obj = {}
Obj.__index = Obj
Obj.__name = "sluice.provider.clova"
function Obj:__tostring() return "clova stt provider (" .. tostring(self.invoke_url) .. ")" end

local function endpoint(cfg)
  local url = P.setting(cfg, "clova", "invoke_url", "CLOVA_SPEECH_INVOKE_URL")
  local secret = P.setting(cfg, "clova", "secret", "CLOVA_SPEECH_SECRET")
  return url and url:gsub("/+$", ""), secret
end

-- needs(cfg) -> what a request cannot go without: the invoke URL and the secret.
function M.needs(cfg)
  local url, secret = endpoint(cfg)
  local out = {}
  if not url then out[#out + 1] = { what = "an invoke URL", env = "CLOVA_SPEECH_INVOKE_URL", setting = "invoke_url" } end
  if not secret then out[#out + 1] = { what = "a secret", env = "CLOVA_SPEECH_SECRET", setting = "secret" } end
  return out
end

function M.new(cfg, role)
  local url, secret = endpoint(cfg)
  local self = setmetatable({
    role = role or "stt", invoke_url = url,
    language = cfg.language or "ko-KR", diarization = cfg.diarization, boostings = cfg.boostings,
  }, Obj)
  P.remote(self, "clova", cfg, secret)
  return self
end

local function check(v)
  if type(v) ~= "table" then return nil, "expected a JSON object" end
  if v.result ~= "COMPLETED" then
    return nil, string.format("recognition %s: %s", tostring(v.result), tostring(v.message))
  end
  return P.check_segments(v.segments)
end

function Obj:transcribe(audio, opts)
  opts = opts or {}
  if type(audio) ~= "table" or type(audio.path) ~= "string" then
    error("bad argument #1 to 'transcribe' (table with path expected)", 2)
  end
  local secret = P.secret(self)
  local need = M.needs({ invoke_url = self.invoke_url or "", secret = secret or "" })[1]
  if need then
    return nil, string.format("clova: no %s (set %s or %s)", need.what:gsub("^an? ", ""), need.env,
      need.setting), "EINVAL"
  end
  local params = {
    language = opts.language or self.language, completion = "sync", wordAlignment = true,
    fullText = true, diarization = { enable = (opts.diarization or self.diarization) and true or false },
  }
  if self.boostings then params.boostings = self.boostings end
  local t0 = audio.t0 or 0
  local v, err, code, failure = P.call(self, {
    what = "recognition of " .. P.basename(audio.path), url = self.invoke_url .. "/recognizer/upload",
    headers = { ["X-CLOVASPEECH-API-KEY"] = secret, Accept = "application/json" },
    multipart = {
      { name = "media", file = audio.path, filename = P.basename(audio.path), type = opts.mime or "audio/wav" },
      { name = "params", data = cjson.encode(params), type = "application/json" },
    },
    check = check,
  })
  if not v then return nil, err, code, failure end
  local segments = {}
  for _, s in ipairs(v.segments) do
    local seg = { start = s.start / 1000 + t0, ["end"] = s["end"] / 1000 + t0, text = s.text, words = {},
      speaker = type(s.speaker) == "table" and s.speaker.label or nil, confidence = s.confidence }
    if type(s.words) == "table" then
      for _, w in ipairs(s.words) do
        if type(w) == "table" and type(w[1]) == "number" and type(w[3]) == "string" then
          seg.words[#seg.words + 1] = { word = w[3], start = w[1] / 1000 + t0, ["end"] = w[2] / 1000 + t0 }
        end
      end
    end
    segments[#segments + 1] = seg
  end
  return { segments = segments, text = v.text, provider = "clova", language = params.language }
end

return M
