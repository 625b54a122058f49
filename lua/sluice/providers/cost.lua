-- sluice.providers.cost: what a remote call costs, and what one is expected to use.
--
--   local cost = require "sluice.providers.cost"
--   local prices = cost.prices(conf.prices)           -- shipped < user file < conf.prices
--   local entry = prices:of("openai", "gpt-5.4-mini") -- {input=, output=, minute=, request=} | nil
--   cost.usd(entry, {input=, output=, seconds=})      -- dollars, or nil without a price
--   cost.expect("vlm", "describe", p, {path=}, estimates) -> {calls=, input=, output=, seconds=}
--
-- The prices and the estimates are data (sluice.providers.prices; a user's file in
-- $SLUICE_PRICES or ~/.config/sluice/prices.lua; a run's `prices` setting): no code path
-- holds a price.
local M = {}

local data, user_path

local function overlay(into, from)
  for prov, models in pairs(type(from) == "table" and from or {}) do
    if type(models) == "table" then
      into[prov] = into[prov] or {}
      for model, e in pairs(models) do
        if type(e) == "table" then into[prov][model] = e end
      end
    end
  end
end

-- data() -> {prices = {provider = {model = entry}}, estimates = {...}}: the shipped file with
-- the user's on top ($SLUICE_PRICES or ~/.config/sluice/prices.lua; read once, reload()
-- reads again).
function M.data()
  if data then return data end
  local shipped = require "sluice.providers.prices"
  local d = { prices = {}, estimates = {} }
  overlay(d.prices, shipped.prices)
  for k, v in pairs(shipped.estimates) do d.estimates[k] = v end
  local u = require("sluice.providers.catalog").user_table("prices", "SLUICE_PRICES", "prices.lua", user_path) or {}
  overlay(d.prices, u.prices)
  for k, v in pairs(type(u.estimates) == "table" and u.estimates or {}) do d.estimates[k] = v end
  data = d
  return d
end

function M.reload(path) data, user_path = nil, path end

local Prices = {}
Prices.__index = Prices

-- prices(extra) -> the price table of a run: data() with extra (a run's `prices` setting,
-- provider -> model -> entry) on top.
function M.prices(extra)
  local d = M.data()
  local t = {}
  overlay(t, d.prices)
  overlay(t, extra)
  return setmetatable({ t = t, estimates = d.estimates }, Prices)
end

-- p:of(provider, model) -> the entry for model (exact id, else the longest entry it starts
-- with, else "*"), or nil.
function Prices:of(provider, model)
  local models = self.t[provider]
  if not models then return nil end
  model = tostring(model)
  if models[model] then return models[model] end
  local best, blen = nil, 0
  for k, e in pairs(models) do
    if k ~= "*" and #k > blen and model:sub(1, #k) == k then best, blen = e, #k end
  end
  return best or models["*"]
end

-- usd(entry, usage{input=, output=, seconds=}) -> dollars, or nil when entry prices nothing
-- the usage has. Tokens are priced when the entry has token prices and the usage tokens;
-- else audio seconds by the minute; a per-request price is added.
function M.usd(entry, u)
  if type(entry) ~= "table" then return nil end
  local total, priced = 0, false
  if (entry.input or entry.output) and (u.input or u.output) then
    total = total + (u.input or 0) * (entry.input or 0) / 1e6 + (u.output or 0) * (entry.output or 0) / 1e6
    priced = true
  elseif entry.minute and u.seconds then
    total = total + u.seconds / 60 * entry.minute
    priced = true
  end
  if entry.request then
    total = total + entry.request
    priced = true
  end
  return priced and total or nil
end

-- message_tokens(msgs[, est]) -> the input tokens a message list is expected to take: its
-- text / chars_per_token, and image_tokens per image (the limiters' estimates use it too).
function M.message_tokens(msgs, est)
  est = est or M.data().estimates
  local chars, imgs = 0, 0
  for _, m in ipairs(msgs or {}) do
    if type(m.content) == "string" then
      chars = chars + #m.content
    elseif type(m.content) == "table" then
      for _, part in ipairs(m.content) do
        if type(part) == "table" then
          if type(part.text) == "string" then chars = chars + #part.text end
          if part.image_url or part.inlineData or part.inline_data then imgs = imgs + 1 end
        end
      end
    end
  end
  return math.floor(chars / (est.chars_per_token or 4)) + imgs * (est.image_tokens or 1000)
end

-- expect(role, method, args, est) -> {calls=1, input=, output=, seconds=}: what one call is
-- expected to use, from its arguments and the estimates (est: data().estimates, or learned
-- averages {input=, output=} that replace the token guesses).
--   transcribe(audio{t0=, t1=}): seconds = t1 - t0; tokens for token-priced models
--   describe of one image (args = {prompt=}): the prompt, one image, a short reply
--   complete(messages, opts): the messages' text / chars_per_token, images, the reply budget
function M.expect(role, method, args, est, learned)
  est = est or M.data().estimates
  local cpt = est.chars_per_token or 4
  local e = { calls = 1 }
  if method == "transcribe" then
    local a = args or {}
    local secs = (type(a.t1) == "number" and type(a.t0) == "number" and a.t1 > a.t0) and (a.t1 - a.t0) or a.seconds or 0
    e.seconds = secs
    e.input = math.floor(secs * (est.audio_tokens_per_second or 10))
    e.output = math.floor(secs * (est.words_per_second or 2.5))
  elseif method == "describe" then
    e.input = math.floor(#tostring(args and args.prompt or "") / cpt) + (est.image_tokens or 1000) + 60
    e.output = (est.output_tokens or {}).vlm or 60
  else
    e.input = M.message_tokens(type(args) == "table" and args.messages or {}, est)
    local out = (est.output_tokens or {}).llm or 300
    if type(args.max_tokens) == "number" and args.max_tokens < out then out = args.max_tokens end
    e.output = out
  end
  if learned and learned.n and learned.n > 0 then
    if method ~= "complete" and learned.input then e.input = learned.input / learned.n end
    if learned.output then e.output = learned.output / learned.n end
  end
  return e
end

return M
