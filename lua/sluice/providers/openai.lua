-- sluice.providers.openai: OpenAI's REST API and the servers that speak it (Ollama, vLLM,
-- llama.cpp's server). Roles: stt (POST {base}/audio/transcriptions, multipart,
-- response_format=verbose_json with segment timestamps), vlm and llm (POST
-- {base}/chat/completions; images as base64 data URLs; stream=true as Server-Sent Events).
--
-- cfg: base_url ($OPENAI_BASE_URL, default https://api.openai.com/v1), api_key
-- ($OPENAI_API_KEY; optional for local servers), model (per role defaults: whisper-1,
-- gpt-4o-mini), stt_model / vlm_model / llm_model, language, prompt, temperature,
-- max_tokens, detail (image detail), limit (limiter, name or rate spec), retry
-- {attempts=, base=, max=}, timeout, headers (extra request headers).
local P = require "sluice.providers"
local cjson = require "cjson"

local M = { roles = { stt = true, vlm = true, llm = true } }

local DEFAULT_MODEL = { stt = "whisper-1", vlm = "gpt-4o-mini", llm = "gpt-4o-mini" }

local Obj = {}
Obj.__index = Obj
Obj.__name = "sluice.provider.openai"
function Obj:__tostring()
  return string.format("openai %s provider (%s, model %s)", self.role, self.base_url, self.model)
end

function M.new(cfg, role)
  role = role or "llm"
  local base = cfg.base_url or os.getenv("OPENAI_BASE_URL") or "https://api.openai.com/v1"
  base = base:gsub("/+$", "")
  local key = cfg.api_key or os.getenv("OPENAI_API_KEY")
  local self = setmetatable({
    role = role, base_url = base,
    model = cfg[role .. "_model"] or cfg.model or DEFAULT_MODEL[role],
    language = cfg.language, prompt = cfg.prompt, temperature = cfg.temperature,
    max_tokens = cfg.max_tokens, detail = cfg.detail, extra_headers = cfg.headers,
    vlm_prompt = cfg.vlm_prompt, concurrency = cfg.concurrency or 4,
  }, Obj)
  P.remote(self, "openai", cfg, key)
  return P.llm_mixin(self)
end

local function headers(self, json)
  local h = {}
  local key = P.secret(self)
  if key and key ~= "" then h.Authorization = "Bearer " .. key end
  if json then h["Content-Type"] = "application/json" end
  if self.extra_headers then for k, v in pairs(self.extra_headers) do h[k] = v end end
  return h
end

-- ---- stt ------------------------------------------------------------------------------

local function check_transcription(v)
  if type(v) ~= "table" then return nil, "expected a JSON object" end
  if type(v.text) ~= "string" then return nil, "missing 'text'" end
  if type(v.segments) ~= "table" then
    return nil, "missing 'segments' (was response_format=verbose_json honoured?)"
  end
  return P.check_segments(v.segments)
end

function Obj:transcribe(audio, opts)
  opts = opts or {}
  if type(audio) ~= "table" or type(audio.path) ~= "string" then
    error("bad argument #1 to 'transcribe' (table with path expected)", 2)
  end
  local t0 = audio.t0 or 0
  local parts = {
    { name = "file", file = audio.path, filename = P.basename(audio.path),
      type = opts.mime or "audio/wav" },
    { name = "model", data = opts.model or self.model },
    { name = "response_format", data = "verbose_json" },
    { name = "timestamp_granularities[]", data = "segment" },
  }
  if opts.words ~= false then
    parts[#parts + 1] = { name = "timestamp_granularities[]", data = "word" }
  end
  local language = opts.language or self.language
  if language then parts[#parts + 1] = { name = "language", data = language } end
  local prompt = opts.prompt or self.prompt
  if prompt then parts[#parts + 1] = { name = "prompt", data = prompt } end
  local temp = opts.temperature or self.temperature
  if temp then parts[#parts + 1] = { name = "temperature", data = tostring(temp) } end
  local v, err, code, failure = P.call(self, {
    what = "transcription of " .. P.basename(audio.path), url = self.base_url .. "/audio/transcriptions",
    headers = headers(self, false), multipart = parts, tokens = 0, check = check_transcription,
  })
  if not v then return nil, err, code, failure end
  local words = type(v.words) == "table" and v.words or {}
  local segments = {}
  local wi = 1
  for _, s in ipairs(v.segments) do
    local seg = { start = s.start + t0, ["end"] = s["end"] + t0, text = (s.text:gsub("^%s+", "")),
      words = {} }
    while wi <= #words and type(words[wi].start) == "number" and words[wi].start < s["end"] + 1e-6 do
      local w = words[wi]
      if type(w["end"]) == "number" and type(w.word) == "string" then
        seg.words[#seg.words + 1] = { word = w.word, start = w.start + t0, ["end"] = w["end"] + t0 }
      end
      wi = wi + 1
    end
    segments[#segments + 1] = seg
  end
  return { segments = segments, text = v.text, language = v.language, duration = v.duration,
    provider = "openai", model = opts.model or self.model }
end

-- ---- llm ------------------------------------------------------------------------------

local function check_completion(v)
  if type(v) ~= "table" then return nil, "expected a JSON object" end
  if type(v.choices) ~= "table" or type(v.choices[1]) ~= "table" then return nil, "missing 'choices'" end
  local m = v.choices[1].message
  if type(m) ~= "table" then return nil, "choice 1 has no 'message'" end
  if type(m.content) ~= "string" then
    if type(m.refusal) == "string" then return nil, "the model refused: " .. m.refusal end
    return nil, "choice 1 has no text content"
  end
  return true
end

local function usage_of(v)
  if type(v) == "table" and type(v.usage) == "table" then return v.usage.total_tokens end
  return nil
end

-- complete(messages | prompt, opts{stream=fn(token), max_tokens=, temperature=, json=,
-- model=, system=}) -> text, {usage=, finish_reason=, model=}
function Obj:complete(m, opts)
  opts = opts or {}
  local msgs = P.messages(m, opts)
  local body = { model = opts.model or self.model, messages = msgs }
  local max_tokens = opts.max_tokens or self.max_tokens
  if max_tokens then body.max_tokens = max_tokens end
  local temp = opts.temperature or self.temperature
  if temp then body.temperature = temp end
  if opts.json then body.response_format = { type = "json_object" } end
  local req = {
    what = "chat completion", url = self.base_url .. "/chat/completions",
    headers = headers(self, true), json = body, tokens = P.estimate_tokens(msgs, max_tokens),
  }
  if not opts.stream then
    req.check = check_completion
    req.usage = usage_of
    local v, err, code, failure = P.call(self, req)
    if not v then return nil, err, code, failure end
    local c = v.choices[1]
    return c.message.content, { usage = v.usage, finish_reason = c.finish_reason, model = v.model }
  end
  -- streamed: tokens go to opts.stream as they arrive
  body.stream = true
  body.stream_options = { include_usage = true }
  local parts, info, done = {}, {}, false
  local on_token = opts.stream
  req.sse = function(ev)
    if ev.data == "[DONE]" then
      done = true
      return "done"
    end
    local ok, v = pcall(cjson.decode, ev.data)
    if not ok or type(v) ~= "table" then return nil, "event is not JSON: " .. ev.data:sub(1, 80) end
    if type(v.error) == "table" then return nil, "error event: " .. tostring(v.error.message) end
    if type(v.usage) == "table" then info.usage = v.usage end
    if type(v.choices) ~= "table" then return nil, "chunk without 'choices'" end
    local c = v.choices[1]
    if c then
      if c.finish_reason and c.finish_reason ~= cjson.null then info.finish_reason = c.finish_reason end
      local d = c.delta
      if type(d) == "table" and type(d.content) == "string" and d.content ~= "" then
        parts[#parts + 1] = d.content
        req.emitted = true
        on_token(d.content)
      end
    end
    return true
  end
  req.usage = function() return info.usage and info.usage.total_tokens end
  local v, err, code, failure = P.call(self, req)
  if not v then return nil, err, code, failure end
  if not done and not info.finish_reason then
    return nil, "openai: malformed chat completion stream: it ended without [DONE]", "EPROTO"
  end
  return table.concat(parts), info
end

-- ---- vlm ------------------------------------------------------------------------------

-- describe(images{{path=, t=}}, opts{prompt=, detail=}) -> {{t=, text=}, ...}: one
-- request per image, up to cfg.concurrency at once (the limiter has the last word).
function Obj:describe(images, opts)
  opts = opts or {}
  return P.describe_each(self, images, opts, function(mime, b64)
    return { type = "image_url", image_url = { url = "data:" .. mime .. ";base64," .. b64,
      detail = opts.detail or self.detail or "auto" } }
  end, opts.max_tokens or self.max_tokens or 300)
end

return M
