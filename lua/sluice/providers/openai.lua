-- sluice.providers.openai: OpenAI's REST API and the servers that speak it (Ollama, vLLM,
-- llama.cpp's server). Roles: stt (POST {base}/audio/transcriptions, multipart), vlm and llm
-- (POST {base}/chat/completions; images as base64 data URLs; stream=true as Server-Sent
-- Events); the model list is GET {base}/models.
--
-- What a request carries depends on the model's family in sluice.providers.models: the
-- token limit as max_completion_tokens (max_tokens is deprecated and never sent), a
-- temperature only where the model takes one, reasoning_effort per role; transcription as
-- verbose_json (segment and, where the model has them, word times), diarized_json (speaker
-- segments) or, for json-only models, per short chunk cut at a silence (each chunk's text
-- spread over its time, marked timing = "chunk"). A 400 that names an unsupported parameter
-- or value is learned: the request is sent again without it, and so are later ones.
--
-- cfg: base_url ($OPENAI_BASE_URL, default https://api.openai.com/v1), api_key
-- ($OPENAI_API_KEY; optional for local servers), model, stt_model / vlm_model / llm_model
-- (defaults in sluice.providers.models), language, prompt, temperature, max_tokens,
-- reasoning_effort, detail (image detail), chunk_seconds (json-only transcription, 5),
-- limit (limiter, name or rate spec), retry {attempts=, base=, max=}, timeout, headers.
local P = require "sluice.providers"
local catalog = require "sluice.providers.catalog"
local cjson = require "cjson"

local M = { roles = { stt = true, vlm = true, llm = true } }

local Obj = {}
Obj.__index = Obj
Obj.__name = "sluice.provider.openai"
function Obj:__tostring()
  return string.format("openai %s provider (%s, model %s)", self.role, self.base_url, self.model)
end

local ENDPOINT = { name = "openai", base_env = "OPENAI_BASE_URL", base = "https://api.openai.com/v1",
  key_env = "OPENAI_API_KEY", host = "api%.openai%.com" }

-- needs(cfg) -> what a request cannot go without: a key for OpenAI's own API (a local server
-- at another base URL may take none).
function M.needs(cfg) return select(3, P.endpoint(cfg, ENDPOINT)) end

function M.new(cfg, role)
  role = role or "llm"
  local base, key = P.endpoint(cfg, ENDPOINT)
  local self = setmetatable({
    role = role, base_url = base,
    model = cfg[role .. "_model"] or cfg.model or catalog.default_model("openai", role),
    language = cfg.language, prompt = cfg.prompt, temperature = cfg.temperature,
    max_tokens = cfg.max_tokens, reasoning_effort = cfg.reasoning_effort, detail = cfg.detail,
    extra_headers = cfg.headers, vlm_prompt = cfg.vlm_prompt, concurrency = cfg.concurrency or 4,
    chunk_seconds = cfg.chunk_seconds or 5,
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

-- ---- the model list -------------------------------------------------------------------

-- list_models(p) -> {{id=, owned_by=, shutdown_date=}, ...} from GET {base}/models.
function M.list_models(p)
  local v, err = P.call(p, { what = "model list", method = "GET", url = p.base_url .. "/models",
    headers = headers(p, false), timeout = 10, attempts = 2, check = function(v)
      if type(v) ~= "table" or type(v.data) ~= "table" then return nil, "missing 'data'" end
      return true
    end })
  if not v then return nil, err end
  local out = {}
  for _, m in ipairs(v.data) do
    if type(m) == "table" and type(m.id) == "string" then
      out[#out + 1] = { id = m.id, owned_by = m.owned_by,
        shutdown_date = type(m.shutdown_date) == "string" and m.shutdown_date or nil }
    end
  end
  return out
end

-- serves(entry, role) -> true, or false and why: judged by the model's family (OpenAI's
-- list says nothing about what a model does); a model of no known family may do anything.
function M.serves(entry, role)
  local f = catalog.caps("openai", entry.id)
  if not f or not f.kind or f.kind == catalog.ROLE_KIND[role] then return true end
  return false, string.format("it is a%s %s model", f.kind:match("^[aeiou]") and "n" or "", f.kind)
end

-- ---- stt ------------------------------------------------------------------------------

-- How to ask a model for a transcription: {format=, words=, drop={param=true}}, from its
-- family and what it refused before.
local function stt_plan(self, model)
  local f = catalog.caps("openai", model) or {}
  local l = catalog.learned(self, model)
  local plan = { format = l.format or f.format or "verbose_json", words = f.words ~= false, drop = l.drop or {} }
  if l.words == false then plan.words = false end
  return plan, l
end

local function check_transcription(format)
  return function(v)
    if type(v) ~= "table" then return nil, "expected a JSON object" end
    if type(v.text) ~= "string" then return nil, "missing 'text'" end
    if format == "json" then return true end
    if type(v.segments) ~= "table" then
      return nil, "missing 'segments' (was response_format=" .. format .. " honoured?)"
    end
    return P.check_segments(v.segments)
  end
end

-- A transcription's usage: {type="tokens", input_tokens=, output_tokens=, total_tokens=} or
-- {type="duration", seconds=} (CreateTranscriptionResponse*'s usage).
local function transcription_usage(v)
  local u = type(v) == "table" and v.usage
  if type(u) ~= "table" then return nil end
  if u.type == "duration" then return nil, nil, nil, tonumber(u.seconds) end
  return u.total_tokens, u.input_tokens, u.output_tokens
end

-- One transcription request for a file; returns the decoded reply.
local function transcription(self, path, opts, plan, learned)
  local model = opts.model or self.model
  local function parts()
    local out = {
      { name = "file", file = path, filename = P.basename(path), type = opts.mime or "audio/wav" },
      { name = "model", data = model },
      { name = "response_format", data = plan.format },
    }
    local function add(name, value)
      if value ~= nil and not plan.drop[name] then out[#out + 1] = { name = name, data = tostring(value) } end
    end
    if plan.format == "verbose_json" then
      add("timestamp_granularities[]", "segment")
      if plan.words and opts.words ~= false then add("timestamp_granularities[]", "word") end
    elseif plan.format == "diarized_json" then
      add("chunking_strategy", "auto") -- required over 30 s
    end
    add("language", opts.language or self.language)
    if plan.format ~= "diarized_json" then add("prompt", opts.prompt or self.prompt) end
    add("temperature", opts.temperature or self.temperature)
    return out
  end
  local req = {
    what = "transcription of " .. P.basename(path), url = self.base_url .. "/audio/transcriptions",
    headers = headers(self, false), multipart = parts(), tokens = 0, check = check_transcription(plan.format),
    usage = transcription_usage,
  }
  return P.call_adapting(self, req, function(param, e)
    if param == "timestamp_granularities" and plan.format == "verbose_json" and plan.words then
      plan.words, learned.words = false, false
    elseif param == "response_format" and plan.format ~= "json" then
      plan.format, learned.format = "json", "json"
      return false -- the caller transcribes in timed chunks instead
    elseif param == "language" or param == "prompt" or param == "temperature" or param == "chunking_strategy" then
      plan.drop[param] = true
      learned.drop = plan.drop
    else
      return false
    end
    req.multipart, req.check = parts(), check_transcription(plan.format)
    return true
  end)
end

-- json-only models: the file is cut into chunks of about chunk_seconds at silences (the
-- quietest 20 ms near each boundary), each chunk transcribed on its own; its text is spread
-- evenly over its time.
local function transcribe_chunks(self, audio, opts, plan, learned)
  local sl = require "sluice"
  local media = require "sluice.media"
  local secs = opts.chunk_seconds or self.chunk_seconds
  local t0 = audio.t0 or 0
  local results, first_err, first_code, first_failure = {}, nil, nil, nil
  local sem = sl.semaphore(math.max(1, self.concurrency))
  local g = sl.group()
  local dir
  local ok, e = pcall(function()
    for c in media.audio_chunks(audio.path, { seconds = secs, split = "silence", window = math.min(2, secs / 2) }) do
      dir = dir or c.path:match("^(.*)/[^/]*$")
      sem:acquire()
      g:spawn(function()
        local okc, ec = pcall(function()
          local v, err, code, failure = transcription(self, c.path, opts, plan, learned)
          if not v then
            first_err, first_code, first_failure = first_err or err, first_code or code, first_failure or failure
          else
            results[c.seq] = { c = c, text = v.text }
          end
        end)
        os.remove(c.path)
        sem:release()
        if not okc then error(ec, 0) end
      end)
    end
    g:wait()
  end)
  if not ok then
    g:cancel()
    pcall(g.wait, g)
  end
  if dir then os.remove(dir) end
  if not ok then
    if sl.is_cancelled(e) then error(e, 0) end
    return nil, "openai: cannot cut " .. P.basename(audio.path) .. " into chunks: " .. tostring(e), "EINVAL"
  end
  if first_err then return nil, first_err, first_code, first_failure end
  local segments, texts = {}, {}
  for seq = 1, #results do
    local r = results[seq]
    local txt = r.text:gsub("^%s+", ""):gsub("%s+$", "")
    if txt ~= "" then
      local a, b = t0 + r.c.t0, t0 + r.c.t1
      local words = {}
      for w in txt:gmatch("%S+") do words[#words + 1] = w end
      local step = (b - a) / #words
      for i, w in ipairs(words) do
        words[i] = { word = w, start = a + (i - 1) * step, ["end"] = a + i * step }
      end
      segments[#segments + 1] = { start = a, ["end"] = b, text = txt, words = words, timing = "chunk" }
      texts[#texts + 1] = txt
    end
  end
  return { segments = segments, text = table.concat(texts, " "), provider = "openai",
    model = opts.model or self.model, timing = "chunk" }
end

function Obj:transcribe(audio, opts)
  opts = opts or {}
  if type(audio) ~= "table" or type(audio.path) ~= "string" then
    error("bad argument #1 to 'transcribe' (table with path expected)", 2)
  end
  local model = opts.model or self.model
  local plan, learned = stt_plan(self, model)
  if plan.format == "json" then return transcribe_chunks(self, audio, opts, plan, learned) end
  local t0 = audio.t0 or 0
  local v, err, code, failure = transcription(self, audio.path, opts, plan, learned)
  if not v then
    if plan.format == "json" then -- learned just now: the model gives no times
      return transcribe_chunks(self, audio, opts, plan, learned)
    end
    return nil, err, code, failure
  end
  local segments = {}
  for _, s in ipairs(v.segments) do
    local seg = { start = s.start + t0, ["end"] = s["end"] + t0, text = (s.text:gsub("^%s+", "")),
      words = {} }
    if type(s.speaker) == "string" and s.speaker ~= "" then seg.speaker = s.speaker end
    segments[#segments + 1] = seg
  end
  -- verbose_json gives the words in one list beside the segments: each goes to the segment
  -- that holds its middle (a word starting where a segment ends belongs to the next one),
  -- or, between segments, to the nearer one.
  local si = 1
  for _, w in ipairs(type(v.words) == "table" and v.words or {}) do
    if type(w.start) == "number" and type(w["end"]) == "number" and type(w.word) == "string" and #segments > 0 then
      local m = (w.start + w["end"]) / 2 + t0
      while si < #segments and m >= segments[si + 1].start and m >= segments[si]["end"] do si = si + 1 end
      if si < #segments and m >= segments[si]["end"] and segments[si + 1].start - m < m - segments[si]["end"] then
        si = si + 1
      end
      local seg = segments[si]
      seg.words[#seg.words + 1] = { word = w.word, start = w.start + t0, ["end"] = w["end"] + t0 }
    end
  end
  return { segments = segments, text = v.text, language = v.language, duration = v.duration,
    provider = "openai", model = model }
end

-- ---- llm ------------------------------------------------------------------------------

local function check_completion(v)
  if type(v) ~= "table" then return nil, "expected a JSON object" end
  if type(v.choices) ~= "table" or type(v.choices[1]) ~= "table" then return nil, "missing 'choices'" end
  local m = v.choices[1].message
  if type(m) ~= "table" then return nil, "choice 1 has no 'message'" end
  if type(m.content) ~= "string" then
    if type(m.refusal) == "string" then return nil, "the model refused: " .. m.refusal end
    if v.choices[1].finish_reason == "length" then return true end -- reported by complete()
    return nil, "choice 1 has no text content"
  end
  return true
end

-- A chat reply's usage: total, prompt (input) and completion (output) tokens.
local function chat_usage(u)
  if type(u) ~= "table" then return nil end
  return u.total_tokens, u.prompt_tokens, u.completion_tokens
end

local function usage_of(v)
  if type(v) == "table" then return chat_usage(v.usage) end
  return nil
end

-- The request body for a chat completion: the model's family decides which fields it gets.
local function chat_body(self, msgs, opts)
  local model = opts.model or self.model
  local f = catalog.caps("openai", model) or {}
  local learned = catalog.learned(self, model)
  local role = opts.role or self.role
  local body = { model = model, messages = msgs }
  local budget = opts.max_tokens or self.max_tokens or catalog.per_role(f.max_tokens, role)
  if budget then body[f.token_field or "max_completion_tokens"] = budget end
  local temp = opts.temperature or self.temperature
  if temp ~= nil and f.temperature ~= false then body.temperature = temp end
  local effort = opts.reasoning_effort or self.reasoning_effort or catalog.per_role(f.reasoning_effort, role)
  if effort then body.reasoning_effort = effort end
  if opts.json then body.response_format = { type = "json_object" } end
  for k in pairs(learned.drop or {}) do body[k] = nil end
  return body, learned
end

-- When the model refuses a parameter (400 unsupported_parameter / unsupported_value naming
-- it), it is dropped from this request and from every later one for the model.
local function dropper(body, learned)
  return function(param)
    if body[param] == nil or param == "model" or param == "messages" then return false end
    body[param] = nil
    learned.drop = learned.drop or {}
    learned.drop[param] = true
    return true
  end
end

-- An answer cut off before any text (a reasoning model spent the budget thinking).
local function cut_off(self, body, info)
  local d = type(info.usage) == "table" and type(info.usage.completion_tokens_details) == "table"
    and info.usage.completion_tokens_details or {}
  local field = body.max_completion_tokens and "max_completion_tokens" or "max_tokens"
  return nil, string.format("openai: chat completion cut off before any text: finish_reason=length with " ..
    "%s=%s%s%s; raise openai.max_tokens or lower openai.reasoning_effort", field,
    tostring(body[field] or "unset"),
    type(d.reasoning_tokens) == "number" and string.format(", %d of them reasoning tokens", d.reasoning_tokens) or "",
    body.reasoning_effort and (" (reasoning_effort=" .. body.reasoning_effort .. ")") or ""), "EBUDGET",
    { finish_reason = "length" }
end

-- complete(messages | prompt, opts{stream=fn(token), max_tokens=, temperature=, json=,
-- model=, system=, reasoning_effort=, role=}) -> text, {usage=, finish_reason=, model=}
function Obj:complete(m, opts)
  opts = opts or {}
  local msgs = P.messages(m, opts)
  local body, learned = chat_body(self, msgs, opts)
  local req = {
    what = "chat completion", url = self.base_url .. "/chat/completions",
    headers = headers(self, true), json = body,
    tokens = P.estimate_tokens(msgs, body.max_completion_tokens or body.max_tokens),
  }
  if not opts.stream then
    req.check = check_completion
    req.usage = usage_of
    local v, err, code, failure = P.call_adapting(self, req, dropper(body, learned))
    if not v then return nil, err, code, failure end
    local c = v.choices[1]
    local info = { usage = v.usage, finish_reason = c.finish_reason, model = v.model }
    local text = c.message.content
    if c.finish_reason == "length" and (type(text) ~= "string" or not text:find("%S")) then
      return cut_off(self, body, info)
    end
    return text, info
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
  req.usage = function() return chat_usage(info.usage) end
  local v, err, code, failure = P.call_adapting(self, req, dropper(body, learned))
  if not v then return nil, err, code, failure end
  if not done and not info.finish_reason then
    return nil, "openai: malformed chat completion stream: it ended without [DONE]", "EPROTO"
  end
  local text = table.concat(parts)
  if info.finish_reason == "length" and not text:find("%S") then return cut_off(self, body, info) end
  return text, info
end

-- ---- vlm ------------------------------------------------------------------------------

-- describe(images{{path=, t=}}, opts{prompt=, detail=}) -> {{t=, text=}, ...}: one
-- request per image, up to cfg.concurrency at once (the limiter has the last word).
function Obj:describe(images, opts)
  opts = opts or {}
  return P.describe_each(self, images, opts, function(mime, b64)
    return { type = "image_url", image_url = { url = "data:" .. mime .. ";base64," .. b64,
      detail = opts.detail or self.detail or "auto" } }
  end, opts.max_tokens or self.max_tokens)
end

return M
