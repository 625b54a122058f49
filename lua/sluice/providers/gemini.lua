-- sluice.providers.gemini: Google's Gemini API (generativelanguage.googleapis.com).
-- Roles: llm and vlm via POST {base}/models/{model}:generateContent, streamed with
-- :streamGenerateContent?alt=sse; images travel as inline_data (base64).
--
-- cfg: base_url ($GEMINI_BASE_URL, default https://generativelanguage.googleapis.com/v1beta),
-- api_key ($GEMINI_API_KEY, sent in the x-goog-api-key header, never in the URL), model
-- (default gemini-2.0-flash), llm_model / vlm_model, temperature, max_tokens, limit, retry,
-- timeout, concurrency (images described at once).
local P = require "sluice.providers"
local cjson = require "cjson"

local M = { roles = { vlm = true, llm = true } }

local Obj = {}
Obj.__index = Obj
Obj.__name = "sluice.provider.gemini"
function Obj:__tostring()
  return string.format("gemini %s provider (%s, model %s)", self.role, self.base_url, self.model)
end

function M.new(cfg, role)
  role = role or "llm"
  local base = cfg.base_url or os.getenv("GEMINI_BASE_URL") or
    "https://generativelanguage.googleapis.com/v1beta"
  local self = setmetatable({
    role = role, base_url = (base:gsub("/+$", "")),
    model = cfg[role .. "_model"] or cfg.model or "gemini-2.0-flash",
    temperature = cfg.temperature, max_tokens = cfg.max_tokens, vlm_prompt = cfg.vlm_prompt,
    concurrency = cfg.concurrency or 4,
  }, Obj)
  P.remote(self, "gemini", cfg, cfg.api_key or os.getenv("GEMINI_API_KEY"))
  return P.llm_mixin(self)
end

-- Converts OpenAI-style messages to Gemini contents + systemInstruction.
local function to_contents(msgs)
  local contents, system = {}, {}
  for _, m in ipairs(msgs) do
    local parts = {}
    if type(m.content) == "string" then
      parts[1] = { text = m.content }
    else
      for _, p in ipairs(m.content or {}) do
        if p.type == "text" then
          parts[#parts + 1] = { text = p.text }
        elseif p.inline_data then
          parts[#parts + 1] = { inline_data = p.inline_data }
        end
      end
    end
    if m.role == "system" then
      for _, p in ipairs(parts) do system[#system + 1] = p end
    else
      contents[#contents + 1] = { role = m.role == "assistant" and "model" or "user", parts = parts }
    end
  end
  return contents, (#system > 0) and { parts = system } or nil
end

local function candidate_text(v)
  if type(v) ~= "table" then return nil, "expected a JSON object" end
  local c = type(v.candidates) == "table" and v.candidates[1]
  if type(c) ~= "table" then
    local fb = type(v.promptFeedback) == "table" and v.promptFeedback.blockReason
    if fb then return nil, "no candidates (prompt blocked: " .. tostring(fb) .. ")" end
    return nil, "missing 'candidates'"
  end
  local content = c.content
  if type(content) ~= "table" or type(content.parts) ~= "table" then
    if c.finishReason then return "", c.finishReason end
    return nil, "candidate 1 has no content parts"
  end
  local out = {}
  for _, p in ipairs(content.parts) do
    if type(p.text) == "string" then out[#out + 1] = p.text end
  end
  return table.concat(out), c.finishReason
end

local function usage_of(v)
  return type(v) == "table" and type(v.usageMetadata) == "table" and v.usageMetadata.totalTokenCount or nil
end

-- complete(messages | prompt, opts{stream=fn(token), max_tokens=, temperature=, json=,
-- model=, system=}) -> text, {usage=, finish_reason=}
function Obj:complete(m, opts)
  opts = opts or {}
  local msgs = P.messages(m, opts)
  local contents, system = to_contents(msgs)
  local body = { contents = contents, systemInstruction = system }
  local gc = {}
  local max_tokens = opts.max_tokens or self.max_tokens
  if max_tokens then gc.maxOutputTokens = max_tokens end
  local temp = opts.temperature or self.temperature
  if temp then gc.temperature = temp end
  if opts.json then gc.responseMimeType = "application/json" end
  if next(gc) then body.generationConfig = gc end
  local model = opts.model or self.model
  local key = P.secret(self)
  local headers = { ["Content-Type"] = "application/json" }
  if key and key ~= "" then headers["x-goog-api-key"] = key end
  local req = { what = "generateContent", headers = headers, json = body,
    tokens = P.estimate_tokens(msgs, max_tokens) }
  if not opts.stream then
    req.url = self.base_url .. "/models/" .. model .. ":generateContent"
    req.check = function(v)
      local t, why = candidate_text(v)
      if t == nil then return nil, why end
      return true
    end
    req.usage = usage_of
    local v, err, code, failure = P.call(self, req)
    if not v then return nil, err, code, failure end
    local text, finish = candidate_text(v)
    return text, { usage = v.usageMetadata, finish_reason = finish }
  end
  req.what = "streamGenerateContent"
  req.url = self.base_url .. "/models/" .. model .. ":streamGenerateContent?alt=sse"
  local parts, info = {}, {}
  local on_token = opts.stream
  req.sse = function(ev)
    local ok, v = pcall(cjson.decode, ev.data)
    if not ok or type(v) ~= "table" then return nil, "event is not JSON: " .. ev.data:sub(1, 80) end
    if type(v.error) == "table" then return nil, "error event: " .. tostring(v.error.message) end
    if v.usageMetadata then info.usage = v.usageMetadata end
    local text, finish = candidate_text(v)
    if text == nil then return nil, finish end
    if type(finish) == "string" then info.finish_reason = finish end
    if text ~= "" then
      parts[#parts + 1] = text
      req.emitted = true
      on_token(text)
    end
    return true
  end
  req.usage = function() return info.usage and info.usage.totalTokenCount end
  local v, err, code, failure = P.call(self, req)
  if not v then return nil, err, code, failure end
  if not info.finish_reason then
    return nil, "gemini: malformed streamGenerateContent stream: it ended without a finishReason", "EPROTO"
  end
  return table.concat(parts), info
end

-- describe(images{{path=, t=}}, opts{prompt=}) -> {{t=, text=}, ...}
function Obj:describe(images, opts)
  opts = opts or {}
  return P.describe_each(self, images, opts, function(mime, b64)
    return { inline_data = { mime_type = mime, data = b64 } }
  end, opts.max_tokens or self.max_tokens)
end

return M
