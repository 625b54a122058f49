-- sluice.providers.gemini: Google's Gemini API (generativelanguage.googleapis.com).
-- Roles: llm and vlm via POST {base}/models/{model}:generateContent, streamed with
-- :streamGenerateContent?alt=sse; images travel as inlineData (base64); the model list is
-- GET {base}/models. Request fields are the protos' JSON names (lowerCamelCase).
--
-- cfg: base_url ($GEMINI_BASE_URL, default https://generativelanguage.googleapis.com/v1beta),
-- api_key ($GEMINI_API_KEY, sent in the x-goog-api-key header, never in the URL), model
-- (default in sluice.providers.models), llm_model / vlm_model, temperature, max_tokens,
-- thinking_budget (generationConfig.thinkingConfig.thinkingBudget; by default the model's
-- family sets it per role: low for describing a frame), limit, retry, timeout, concurrency
-- (images described at once).
local P = require "sluice.providers"
local catalog = require "sluice.providers.catalog"
local cjson = require "cjson"

local M = { roles = { vlm = true, llm = true } }

local Obj = {}
Obj.__index = Obj
Obj.__name = "sluice.provider.gemini"
function Obj:__tostring()
  return string.format("gemini %s provider (%s, model %s)", self.role, self.base_url, self.model)
end

local ENDPOINT = { name = "gemini", base_env = "GEMINI_BASE_URL", base = "https://generativelanguage.googleapis.com/v1beta",
  key_env = "GEMINI_API_KEY", host = "googleapis%.com" }

-- needs(cfg) -> what a request cannot go without: a key for Google's API (a test server at
-- another base URL may take none).
function M.needs(cfg) return select(3, P.endpoint(cfg, ENDPOINT)) end

function M.new(cfg, role)
  role = role or "llm"
  local base, key = P.endpoint(cfg, ENDPOINT)
  local self = setmetatable({
    role = role, base_url = base,
    model = cfg[role .. "_model"] or cfg.model or catalog.default_model("gemini", role),
    temperature = cfg.temperature, max_tokens = cfg.max_tokens, vlm_prompt = cfg.vlm_prompt,
    thinking_budget = cfg.thinking_budget, concurrency = cfg.concurrency or 4,
  }, Obj)
  P.remote(self, "gemini", cfg, key)
  return P.llm_mixin(self)
end

local function key_headers(self, json)
  local key = P.secret(self)
  local h = {}
  if json then h["Content-Type"] = "application/json" end
  if key and key ~= "" then h["x-goog-api-key"] = key end
  return h
end

-- ---- the model list -------------------------------------------------------------------

-- list_models(p) -> {{id=, methods=, thinking=, input_token_limit=, output_token_limit=,
-- display_name=}, ...} from GET {base}/models, page by page.
function M.list_models(p)
  local out, token = {}, nil
  repeat
    local url = p.base_url .. "/models?pageSize=1000" .. (token and ("&pageToken=" .. token) or "")
    local v, err = P.call(p, { what = "model list", method = "GET", url = url, headers = key_headers(p, false),
      timeout = 10, attempts = 2, check = function(v)
        if type(v) ~= "table" then return nil, "expected a JSON object" end
        if v.models ~= nil and type(v.models) ~= "table" then return nil, "'models' is not a list" end
        return true
      end })
    if not v then return nil, err end
    for _, m in ipairs(v.models or {}) do
      if type(m) == "table" and type(m.name) == "string" then
        out[#out + 1] = { id = (m.name:gsub("^models/", "")), display_name = m.displayName,
          methods = type(m.supportedGenerationMethods) == "table" and m.supportedGenerationMethods or {},
          thinking = m.thinking == true, input_token_limit = m.inputTokenLimit,
          output_token_limit = m.outputTokenLimit }
      end
    end
    token = type(v.nextPageToken) == "string" and v.nextPageToken ~= "" and v.nextPageToken or nil
  until not token
  return out
end

-- serves(entry, role) -> true, or false and why: a model serves vlm and llm when the list
-- says it supports generateContent.
function M.serves(entry, role)
  for _, m in ipairs(entry.methods or {}) do
    if m == "generateContent" then return true end
  end
  return false, string.format("it does not support generateContent (it supports: %s)",
    table.concat(entry.methods or {}, ", "))
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
        elseif p.inlineData then
          parts[#parts + 1] = { inlineData = p.inlineData }
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
    if type(p.text) == "string" and not p.thought then out[#out + 1] = p.text end
  end
  return table.concat(out), c.finishReason
end

-- usageMetadata: total, prompt (input) and output tokens (the candidates' and the thoughts',
-- both billed as output).
local function usage_meta(u)
  if type(u) ~= "table" then return nil end
  local out = (tonumber(u.candidatesTokenCount) or 0) + (tonumber(u.thoughtsTokenCount) or 0)
  return u.totalTokenCount, u.promptTokenCount, out
end

local function usage_of(v)
  if type(v) ~= "table" then return nil end
  return usage_meta(v.usageMetadata)
end

-- generationConfig for a request: what the caller asked for, and the thinking budget of the
-- model's family for the role.
local function generation_config(self, opts, model)
  local f = catalog.caps("gemini", model) or {}
  local learned = catalog.learned(self, model)
  local gc = {}
  local max_tokens = opts.max_tokens or self.max_tokens
  if max_tokens then gc.maxOutputTokens = max_tokens end
  local temp = opts.temperature or self.temperature
  if temp and f.temperature ~= false then gc.temperature = temp end
  if opts.json then gc.responseMimeType = "application/json" end
  local budget = opts.thinking_budget or self.thinking_budget
  if budget == nil and f.thinking then budget = catalog.per_role(f.thinking_budget, opts.role or self.role) end
  if budget ~= nil then gc.thinkingConfig = { thinkingBudget = budget } end
  for k in pairs(learned.drop or {}) do gc[k] = nil end
  return gc, learned
end

-- Google names a refused field "generation_config.thinking_config" (or ".thinkingConfig"):
-- the generationConfig key it is, if we set it.
local function dropper(gc, learned)
  return function(param)
    local last = tostring(param):match("([%w_]+)$") or ""
    local key = last:gsub("_(%l)", string.upper)
    if gc[key] == nil then return false end
    gc[key] = nil
    learned.drop = learned.drop or {}
    learned.drop[key] = true
    return true
  end
end

-- An answer cut off before any text: the model thought until maxOutputTokens.
local function cut_off(gc, usage)
  local tc = gc.thinkingConfig
  return nil, string.format("gemini: generateContent cut off before any text: finishReason MAX_TOKENS with " ..
    "maxOutputTokens=%s%s, thinkingBudget=%s; raise gemini.max_tokens or lower gemini.thinking_budget",
    tostring(gc.maxOutputTokens or "unset"),
    type(usage) == "table" and type(usage.thoughtsTokenCount) == "number"
      and string.format(" (%d thinking tokens)", usage.thoughtsTokenCount) or "",
    tc and tostring(tc.thinkingBudget) or "the model's default"), "EBUDGET", { finish_reason = "MAX_TOKENS" }
end

-- complete(messages | prompt, opts{stream=fn(token), max_tokens=, temperature=, json=,
-- model=, system=, thinking_budget=, role=}) -> text, {usage=, finish_reason=}
function Obj:complete(m, opts)
  opts = opts or {}
  local msgs = P.messages(m, opts)
  local contents, system = to_contents(msgs)
  local body = { contents = contents, systemInstruction = system }
  local model = opts.model or self.model
  local gc, learned = generation_config(self, opts, model)
  body.generationConfig = gc
  local req = { what = "generateContent", headers = key_headers(self, true), json = body,
    tokens = P.estimate_tokens(msgs, gc.maxOutputTokens) }
  local function send()
    if next(gc) == nil then body.generationConfig = nil end
    return P.call_adapting(self, req, dropper(gc, learned))
  end
  if not opts.stream then
    req.url = self.base_url .. "/models/" .. model .. ":generateContent"
    req.check = function(v)
      local t, why = candidate_text(v)
      if t == nil then return nil, why end
      return true
    end
    req.usage = usage_of
    local v, err, code, failure = send()
    if not v then return nil, err, code, failure end
    local text, finish = candidate_text(v)
    if finish == "MAX_TOKENS" and not text:find("%S") then return cut_off(gc, v.usageMetadata) end
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
  req.usage = function() return usage_meta(info.usage) end
  local v, err, code, failure = send()
  if not v then return nil, err, code, failure end
  if not info.finish_reason then
    return nil, "gemini: malformed streamGenerateContent stream: it ended without a finishReason", "EPROTO"
  end
  local text = table.concat(parts)
  if info.finish_reason == "MAX_TOKENS" and not text:find("%S") then return cut_off(gc, info.usage) end
  return text, info
end

-- describe(images{{path=, t=}}, opts{prompt=}) -> {{t=, text=}, ...}
function Obj:describe(images, opts)
  opts = opts or {}
  return P.describe_each(self, images, opts, function(mime, b64)
    return { inlineData = { mimeType = mime, data = b64 } }
  end, opts.max_tokens or self.max_tokens)
end

return M
