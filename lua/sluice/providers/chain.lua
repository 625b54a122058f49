-- sluice.providers.chain: providers that never strand a run and never pay twice.
--
--   local chain = require "sluice.providers.chain"
--   local ledger = chain.ledger { emit = fn(ev), prices = conf.prices, budget = {usd = 5},
--                                 cache = cache_or_nil, dry = false, on_budget = fn(info) }
--   local c = chain.new("vlm", { gemini_obj, openai_obj, tesseract_obj }, { ledger = ledger,
--                       hedge = {after = "p95"}, breaker = {...} })
--   local v = c:view("vlm", { hedge = ..., cache = true })   -- one per stage
--   v:describe(images, opts) / v:transcribe(audio, opts) / v:complete(m, opts) / v:summarize / v:judge
--
-- A call (one transcription, one image's description, one completion) goes through:
--   1. the cache (sluice.providers.cache): a result whose request had exactly this content
--      (audio samples, image bytes, prompt, model, parameters, provider) is used as it is;
--   2. --dry-run: no call; what it would use (sluice.providers.cost.expect) is counted and a
--      placeholder returned;
--   3. the budget: a call starts only while what is spent plus what calls in flight are
--      expected to cost stays within it; once it does not, no call starts again (on_budget);
--   4. the chain: each provider in turn, skipping one whose endpoint's breaker is open
--      (sluice.runtime.breaker); the first that answers serves the call. A provider retries
--      by itself (sluice.runtime.retry, the one rule); a call that failed after its retries
--      goes to the next provider. With `hedge`, a call that has run longer than the
--      provider's observed p95 (or `after` seconds) gets one second request to the same or
--      the next provider: the first answer wins and the other is cancelled at once (its
--      transfer leaves curl). Hedges are capped at `max` (0.15) of the endpoint's calls.
-- Each HTTP request is metered (providers.call reports it through the task's context): its
-- tokens or audio seconds, priced by the run's price table, per stage and per provider.
-- Events: provider_call (one per call: stage, provider that served it, tried, requests,
-- tokens, usd, cached, hedged, seconds), breaker (state changes), hedge, budget_reached, cost
-- (the totals, at the end). Nothing here holds a key: keys stay in the provider objects.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local digest = require "sluice.runtime.digest"
local breaker = require "sluice.runtime.breaker"
local http = require "sluice.runtime.http"
local core = require "sluice.core.core"
local P = require "sluice.providers"
local cost = require "sluice.providers.cost"

local now = core.now
local pack, unpack = table.pack, table.unpack

local M = {}

M.HEDGE_DEFAULTS = { after = "p95", max = 0.15, to = "same", min_samples = 5, per_call = 2 }

-- ---- settings ------------------------------------------------------------------------------

-- hedge_settings(v, where) -> settings or nil (off); raises one line naming `where` when v is
-- not true/false, a number of seconds, "pNN", or a table {after=, max=, to=, min_samples=,
-- per_call=}.
function M.hedge_settings(v, where)
  where = where or "hedge"
  if v == nil or v == false then return nil end
  if v == true then v = {} end
  if type(v) == "number" or type(v) == "string" then v = { after = v } end
  if type(v) ~= "table" then
    error(string.format("%s must be true, a number of seconds, \"p95\" or a table {after=, max=, to=} (got %s)",
      where, tostring(v)), 0)
  end
  local s = {}
  for k, d in pairs(M.HEDGE_DEFAULTS) do if v[k] == nil then s[k] = d else s[k] = v[k] end end
  for k in pairs(v) do
    if M.HEDGE_DEFAULTS[k] == nil then
      error(string.format("unknown setting %s.%s (known: after, max, min_samples, per_call, to)", where, tostring(k)), 0)
    end
  end
  local a = s.after
  if type(a) == "string" then
    local q = tonumber(a:match("^p(%d+%.?%d*)$") or "")
    if not q or q <= 0 or q >= 100 then
      error(string.format("%s.after must be a number of seconds or a percentile like \"p95\" (got %q)", where, a), 0)
    end
    s.quantile = q / 100
  elseif type(a) ~= "number" or a <= 0 then
    error(string.format("%s.after must be a positive number of seconds or \"p95\" (got %s)", where, tostring(a)), 0)
  end
  if type(s.max) ~= "number" or s.max < 0 or s.max > 1 then
    error(string.format("%s.max must be a fraction of the calls between 0 and 1 (got %s)", where, tostring(s.max)), 0)
  end
  if s.to ~= "same" and s.to ~= "next" then
    error(string.format("%s.to must be \"same\" or \"next\" (got %s)", where, tostring(s.to)), 0)
  end
  for _, k in ipairs { "min_samples", "per_call" } do
    if math.type(s[k]) ~= "integer" or s[k] < 1 then
      error(string.format("%s.%s must be a positive integer (got %s)", where, k, tostring(s[k])), 0)
    end
  end
  return s
end

-- budget_settings(v) -> {usd=, tokens=} or nil; raises one line when v is not a table of
-- positive numbers usd / tokens (or a bare number: dollars).
function M.budget_settings(v)
  if v == nil or v == false then return nil end
  if type(v) == "number" then v = { usd = v } end
  if type(v) ~= "table" then error("budget must be {usd = N} or {tokens = N} (got " .. tostring(v) .. ")", 0) end
  local b = {}
  for k, x in pairs(v) do
    if k ~= "usd" and k ~= "tokens" then error("unknown setting budget." .. tostring(k) .. " (known: usd, tokens)", 0) end
    x = tonumber(x)
    if not x or x <= 0 then error("budget." .. k .. " must be a positive number (got " .. tostring(v[k]) .. ")", 0) end
    b[k] = x
  end
  if not b.usd and not b.tokens then return nil end
  return b
end

-- ---- endpoints (per process: every job shares what it learns about a server) ----------------

local endpoints = {}

function M.reset() endpoints = {} end -- (tests)

local function endpoint_of(p, bset)
  local where = p.base_url or p.invoke_url
  if not where or not p.retry_opts then return nil end -- a local engine: no endpoint
  local id = p.provider .. " " .. http.safe_url(tostring(where))
  local ep = endpoints[id]
  if not ep then
    local s = {}
    for k, v in pairs(bset or {}) do s[k] = v end
    s.name = id
    ep = { id = id, provider = p.provider, url = http.safe_url(tostring(where)), breaker = breaker.new(s),
      lat = {}, lat_i = 0, calls = 0, hedges = 0 }
    endpoints[id] = ep
  end
  return ep
end
M.endpoint_of = endpoint_of

local LAT_KEEP = 200

local function note_latency(ep, d)
  ep.lat_i = ep.lat_i % LAT_KEEP + 1
  ep.lat[ep.lat_i] = d
end

local function quantile(list, q)
  local n = #list
  if n == 0 then return nil end
  local s = table.move(list, 1, n, 1, {})
  table.sort(s)
  return s[math.max(1, math.min(n, math.ceil(q * n)))]
end
M.quantile = quantile

-- A call waiting to be hedged looks again this often (while the percentile is not known yet,
-- or hedges are at their cap); the cap lets HEDGE_BURST hedges go beyond max * calls, so the
-- first calls of a run (few calls, several of them slow) are not left unhedged.
local RECHECK, HEDGE_BURST = 0.05, 2

-- When a call to ep has run long enough to be hedged: `after` seconds, or the quantile of
-- ep's recent latencies once there are min_samples of them (nil before: no hedge).
local function hedge_after(ep, h)
  if not h.quantile then return h.after end
  if #ep.lat < h.min_samples then return nil end
  return quantile(ep.lat, h.quantile)
end

-- ---- the ledger: what a job's calls used and cost ----------------------------------------

local Ledger = {}
Ledger.__index = Ledger

local function zero_stage()
  return { calls = 0, requests = 0, failed = 0, cached = 0, usd = 0, saved = 0, input = 0,
    output = 0, tokens = 0, seconds = 0, hedges = 0, unpriced = 0 }
end

-- ledger{emit=, prices=, budget=, cache=, dry=, on_budget=, breaker=, hedge=} -> ledger
function M.ledger(opts)
  opts = opts or {}
  local L = setmetatable({
    emit_fn = opts.emit, prices = cost.prices(opts.prices), budget = M.budget_settings(opts.budget),
    cache = opts.cache, dry = opts.dry or false, on_budget = opts.on_budget,
    breaker = breaker.settings(opts.breaker, "breaker"), hedge = opts.hedge,
    stages = {}, stage_order = {}, providers = {}, provider_order = {}, total = zero_stage(),
    reserved = { usd = 0, tokens = 0 }, learned = {}, watching = {}, seen = {}, warned = {},
    stopped = false, stop_ev = sl.event(), in_flight = 0,
  }, Ledger)
  return L
end

-- ledger_for(job) -> the job's ledger (job.providers: the graph puts its stats() in
-- job:stats().providers and calls its close() before job_done), made from the job's
-- settings the first time: prices, budget, breaker, hedge (read from job.config as they are:
-- they decide no result, so no stage's resume key holds them) and cache (a path, or true for
-- the default file; none when unset: `sluice run` opens the default one unless --no-cache).
function M.ledger_for(job)
  if job.providers then return job.providers end
  local conf = job.config or {}
  local cache
  if conf.cache then
    local err
    cache, err = require("sluice.providers.cache").open(type(conf.cache) == "string" and conf.cache or nil)
    if not cache then error(err, 0) end
  end
  job.providers = M.ledger { emit = M.job_emitter(job), prices = conf.prices, budget = conf.budget,
    breaker = conf.breaker, hedge = conf.hedge, cache = cache }
  return job.providers
end

-- job_emitter(job) -> emit(ev): ev on the job's bus (when it has listeners), with its id.
function M.job_emitter(job)
  return function(ev)
    local bus = job.bus
    if bus and bus.count > 0 then
      ev.job = job.id
      bus:emit(ev)
    end
  end
end

function Ledger:emit(ev)
  if self.emit_fn then self.emit_fn(ev) end
end

local function entry(list, order, name, fresh)
  local s = list[name]
  if not s then
    s = fresh()
    list[name] = s
    order[#order + 1] = name
  end
  return s
end

function Ledger:stage(name)
  return entry(self.stages, self.stage_order, name or "-", zero_stage)
end

function Ledger:provider(name)
  return entry(self.providers, self.provider_order, name, function()
    return { calls = 0, served = 0, failures = 0, skipped = 0, hedges = 0, hedge_wins = 0, requests = 0,
      usd = 0, tokens = 0, lat = {}, cached = 0 }
  end)
end

-- Follows ep's breaker: its state changes become `breaker` events of this ledger's job.
function Ledger:watch(ep)
  if not ep or self.watching[ep] then return end
  self.seen[#self.seen + 1] = ep
  self.watching[ep] = ep.breaker:on(function(b, state, why)
    self:emit { event = "breaker", provider = ep.provider, endpoint = ep.url, state = state, reason = why,
      cooldown = state == "open" and b.current_cooldown or nil, opens = b.opens, probes = b.probes }
  end)
end

-- close(): stops following breakers and emits `cost` (the totals).
function Ledger:close()
  for _, off in pairs(self.watching) do off() end
  self.watching = {}
  if self.closed then return end
  self.closed = true
  local st = self:stats()
  self:emit { event = "cost", usd = st.total.usd, tokens = st.total.tokens, requests = st.total.requests,
    cached = st.total.cached, saved = st.total.saved, stages = st.stages, providers = st.providers,
    budget = st.budget, dry = self.dry or nil }
end

-- (a local engine has no `provider` field: its name, so that a dry run can count its calls)
local function learned_key(p, role)
  return tostring(p.provider or p.name) .. "|" .. tostring(p.model) .. "|" .. tostring(role)
end

-- The price of a request (outcome from providers.call's meter) and its usage, with the
-- estimate e where the reply says nothing.
function Ledger:price(p, o, e)
  local u = { input = o.input, output = o.output, seconds = o.seconds }
  if not (u.input or u.output or u.seconds) and e then
    u.input, u.output, u.seconds, u.estimated = e.input, e.output, e.seconds, true
  end
  local entry = self.prices:of(p.provider, p.model)
  local usd = cost.usd(entry, u)
  if usd == nil and p.retry_opts and not self.warned[p.provider .. "|" .. tostring(p.model)] then
    self.warned[p.provider .. "|" .. tostring(p.model)] = true
    self:emit { event = "log", stage = "providers", message = string.format("no price for %s model %s: its calls are not counted in the cost (add it to prices)",
      p.provider, tostring(p.model)) }
  end
  return usd, u
end

-- A request's outcome (from the meter): counted for the stage, the provider and the total.
function Ledger:request(stage, role, p, o, e, rec)
  local s, pv, t = self:stage(stage), self:provider(p.provider), self.total
  s.requests, pv.requests, t.requests = s.requests + 1, pv.requests + 1, t.requests + 1
  rec.requests = rec.requests + 1
  local charged = o.ok or o.cancelled -- a cancelled request may be billed: counted at its estimate
  if not charged then return end
  local usd, u = self:price(p, o.ok and o or {}, e)
  local tokens = (u.input or 0) + (u.output or 0)
  for _, x in ipairs { s, t } do
    x.input, x.output, x.tokens = x.input + (u.input or 0), x.output + (u.output or 0), x.tokens + tokens
    x.seconds = x.seconds + (u.seconds or 0)
    if usd then x.usd = x.usd + usd else x.unpriced = x.unpriced + 1 end
  end
  pv.tokens = pv.tokens + tokens
  if usd then pv.usd = pv.usd + usd end
  rec.usd, rec.input, rec.output = rec.usd + (usd or 0), rec.input + (u.input or 0), rec.output + (u.output or 0)
  if o.ok and not u.estimated then
    local k = learned_key(p, role)
    local l = self.learned[k] or { n = 0, input = 0, output = 0 }
    self.learned[k] = l
    l.n, l.input, l.output = l.n + 1, l.input + (u.input or 0), l.output + (u.output or 0)
  end
  self:check_budget()
end

-- The budget is reached when a call would not fit (what is spent, what calls in flight are
-- expected to cost, and this call's estimate go over it) or what is spent has reached it.
-- Then no call starts again: on_budget is told once (the app stops the job as Ctrl-C does).
function Ledger:reach()
  if self.stopped then return end
  self.stopped = true
  local b = self.budget
  self:emit { event = "budget_reached", budget_usd = b.usd, budget_tokens = b.tokens, usd = self.total.usd,
    tokens = self.total.tokens }
  if self.on_budget then
    local ok, err = pcall(self.on_budget, { budget = b, usd = self.total.usd, tokens = self.total.tokens })
    if not ok then io.stderr:write("sluice: budget handler failed: ", tostring(err), "\n") end
  end
end

function Ledger:check_budget()
  local b = self.budget
  if not b or self.stopped then return end
  if (b.usd and self.total.usd >= b.usd) or (b.tokens and self.total.tokens >= b.tokens) then self:reach() end
end

-- admit(p, e) -> a reservation for a call expected to use e (priced for p); once the budget
-- does not hold it: waits for ever (with on_budget: the job's stop cancels the wait) or
-- returns nil and why.
function Ledger:admit(p, e)
  local b = self.budget
  if not b then return {} end
  local usd = cost.usd(self.prices:of(p.provider, p.model), e) or 0
  local tokens = p.retry_opts and ((e.input or 0) + (e.output or 0)) or 0
  if not self.stopped then
    local over = (b.usd and self.total.usd + self.reserved.usd + usd > b.usd)
      or (b.tokens and self.total.tokens + self.reserved.tokens + tokens > b.tokens)
    if not over then
      self.reserved.usd, self.reserved.tokens = self.reserved.usd + usd, self.reserved.tokens + tokens
      return { usd = usd, tokens = tokens }
    end
    self:reach()
  end
  if self.on_budget then self.stop_ev:wait() end -- never set: the job's stop cancels it
  return nil, string.format("budget of %s reached (%s spent): no new call starts",
    b.usd and string.format("$%.4g", b.usd) or (string.format("%d", b.tokens) .. " tokens"),
    b.usd and string.format("$%.4f", self.total.usd) or (string.format("%d", self.total.tokens) .. " tokens")), "EOVERBUDGET"
end

function Ledger:settle(r)
  if r and r.usd then
    self.reserved.usd = self.reserved.usd - r.usd
    self.reserved.tokens = self.reserved.tokens - r.tokens
  end
end

-- stats() -> {stages = {name = {...}}, order = {...}, providers = {name = {calls=, served=,
-- failures=, skipped=, hedges=, p50=, p95=, usd=, ...}}, total = {...}, budget=, breakers =
-- {{id=, provider=, state=, opens=, probes=}}, dry=}
function Ledger:stats()
  local out = { stages = {}, order = self.stage_order, providers = {}, provider_order = self.provider_order,
    total = {}, dry = self.dry or nil, budget = self.budget, stopped = self.stopped or nil, breakers = {} }
  for k, v in pairs(self.total) do out.total[k] = v end
  for n, s in pairs(self.stages) do
    local c = {}
    for k, v in pairs(s) do c[k] = v end
    out.stages[n] = c
  end
  for n, s in pairs(self.providers) do
    local c = {}
    for k, v in pairs(s) do if k ~= "lat" then c[k] = v end end
    c.p50, c.p95 = quantile(s.lat, 0.5), quantile(s.lat, 0.95)
    out.providers[n] = c
  end
  for _, ep in ipairs(self.seen) do
    local b = ep.breaker:stats()
    b.id, b.provider, b.endpoint = ep.id, ep.provider, ep.url
    out.breakers[#out.breakers + 1] = b
  end
  return out
end

-- ---- chains and their views --------------------------------------------------------------

local Chain = {}
Chain.__index = Chain

-- new(role, providers, {ledger=, hedge=, breaker=}) -> chain. providers: objects made by
-- sluice.providers.get, in order of preference. Remote ones get their endpoint's breaker.
function M.new(role, list, opts)
  opts = opts or {}
  assert(#list > 0, "chain.new: no provider")
  local L = opts.ledger or M.ledger()
  local c = setmetatable({ role = role, providers = list, ledger = L, hedge = opts.hedge or L.hedge }, Chain)
  for _, p in ipairs(list) do
    local ep = endpoint_of(p, L.breaker)
    if ep then
      p.breaker = ep.breaker
      rawset(p, "_ep", ep)
      L:watch(ep)
    end
  end
  c.remote = false
  for _, p in ipairs(list) do if p.retry_opts then c.remote = true end end
  return c
end

-- The names in the chain: "gemini > openai > tesseract".
function Chain:names()
  local n = {}
  for i, p in ipairs(self.providers) do n[i] = p.provider or "?" end
  return table.concat(n, " > ")
end

local View = {}

-- What a provider's fields say about its requests (for cache keys): its scalar settings,
-- without what only changes how a request travels.
local TRANSPORT = { concurrency = true, timeout = true, connect_timeout = true, workers = true,
  base_url = true, invoke_url = true } -- (the endpoint is a part of its own, without its query)
local function settings_of(p)
  local s = {}
  for k, v in pairs(p) do
    local t = type(v)
    if (t == "string" or t == "number" or t == "boolean") and not TRANSPORT[k] and type(k) == "string"
      and k:sub(1, 1) ~= "_" and not digest.is_secret(k) then
      s[k] = v
    end
  end
  return s
end

-- view(stage, {hedge=, cache=}) -> an object with the role's methods, for one stage: what
-- its calls use is counted for that stage. hedge: the stage's setting (else the chain's, per
-- provider: hedge[provider] or hedge); cache = false: this stage's calls are never cached.
function Chain:view(stage, opts)
  opts = opts or {}
  local v = { chain = self, ledger = self.ledger, role = self.role, stage = stage,
    provider = self.providers[1].provider, model = self.providers[1].model,
    hedge_stage = opts.hedge, cache_on = opts.cache ~= false }
  v.__index = v
  setmetatable(v, View)
  if self.role == "llm" then P.llm_mixin(v) end
  return v
end

View.__index = function(v, k)
  local m = rawget(View, k)
  if m ~= nil then return m end
  -- anything else (a provider's own method such as keywords or classify): the first provider's
  local p = rawget(v, "chain").providers[1]
  local x = p[k]
  if type(x) == "function" then return function(_, ...) return x(p, ...) end end
  return x
end

-- handle(unit) -> a per-call object of the view (knows the unit for events).
function View:handle(unit)
  return setmetatable({ unit = unit }, self)
end

local function hedge_for(v, p)
  local h = v.hedge_stage
  if h == nil then
    local c = v.chain.hedge
    if type(c) == "table" and c[p.provider] ~= nil then h = c[p.provider]
    elseif type(c) == "table" and (c.after ~= nil or c.max ~= nil or c.to ~= nil) then h = c
    elseif type(c) ~= "table" then h = c end
  end
  if h == nil or h == false then return nil end
  return M.hedge_settings(h, "hedge")
end

local function emit_call(v, rec)
  local L = v.ledger
  if not L.emit_fn then return end
  local u = rawget(v, "unit")
  L:emit { event = "provider_call", stage = v.stage, role = v.role, method = rec.method,
    id = u and u.path, key = u and u.key, seq = u and u.seq,
    provider = rec.provider, model = rec.model, tried = rec.tried, ok = rec.ok, cached = rec.cached or nil,
    hedged = rec.hedged or nil, hedge_won = rec.hedge_won or nil, requests = rec.requests,
    input_tokens = rec.input, output_tokens = rec.output, usd = rec.usd, saved = rec.saved,
    seconds = rec.seconds, error = rec.error }
end

-- Runs spec.call(p) in a task of its own whose context meters its requests; puts
-- {r = pack(pcall(...)), p=, hedge=, dur=} into q.
local function launch(v, g, q, p, is_hedge, spec, rec, e)
  local parent = sched.context()
  local L = v.ledger
  local ctx = setmetatable({
    meter = function(prov, o) L:request(v.stage, v.role, prov, o, e, rec) end,
  }, { __index = parent })
  g:spawn(function()
    sched.current().context = ctx
    local t0 = now()
    local r = pack(pcall(spec.call, p))
    q:put { r = r, p = p, hedge = is_hedge, dur = now() - t0 }
  end)
end

local function succeeded(x) return x ~= nil and x.r[1] and x.r[2] ~= nil end

-- One provider's try at a call, hedged when the settings say so. Returns the winning
-- outcome {r=, p=, hedge=, dur=} (or the last failure) and whether a hedge was sent.
local function try(v, p, i, spec, rec, e)
  local L, ep = v.ledger, rawget(p, "_ep")
  local h = (not spec.stream) and ep and hedge_for(v, p) or nil
  if ep then ep.calls = ep.calls + 1 end
  local pv = L:provider(p.provider)
  pv.calls = pv.calls + 1
  local q, g = sl.queue(), sl.group()
  launch(v, g, q, p, false, spec, rec, e)
  local running, result, hedged = 1, nil, false
  local ok, err = pcall(function()
    local first
    if h then
      -- wait for an answer until the newest request has run `after` seconds (a percentile of
      -- the endpoint's latencies: known once there are enough of them, so a call that started
      -- before is looked at again as they come), then send one more: at most h.per_call
      -- hedges, so a hedge that stalls too (the same provider, stalling on some calls) is
      -- hedged in its turn
      local started = now()
      local sent = started
      while running <= h.per_call do
        local a = hedge_after(ep, h)
        local left = a and (sent + a - now()) or RECHECK
        if a and left <= 0 and ep.hedges < h.max * ep.calls + HEDGE_BURST then
          local target = p
          if h.to == "next" then
            local nx = v.chain.providers[i + 1]
            if nx and not (nx.breaker and not nx.breaker:peek()) then target = nx end
          end
          ep.hedges = ep.hedges + 1
          pv.hedges = pv.hedges + 1
          L:stage(v.stage).hedges = L:stage(v.stage).hedges + 1
          L.total.hedges = L.total.hedges + 1
          hedged = true
          if target ~= p then L:provider(target.provider).calls = L:provider(target.provider).calls + 1 end
          L:emit { event = "hedge", stage = v.stage, provider = p.provider, to = target.provider,
            after = now() - started }
          launch(v, g, q, target, true, spec, rec, e)
          running, sent = running + 1, now()
        else
          if a and left <= 0 then left = RECHECK end -- hedges are at their cap: look again as calls go on
          first = sl.timeout(math.max(left, 0.001), q.get, q)
          if first then break end
        end
      end
    end
    while running > 0 do
      local x = first or q:get()
      first = nil
      running = running - 1
      if not x.r[1] and not sl.is_cancelled(x.r[2]) then error(x.r[2], 0) end -- a bug: raise it
      result = x
      if succeeded(x) then break end
    end
  end)
  g:cancel() -- the other request, if any, is cancelled now: its transfer leaves curl at once
  if not ok then error(err, 0) end
  if succeeded(result) then
    local served = result.p
    local sep = rawget(served, "_ep")
    if sep then note_latency(sep, result.dur) end
    local sv = L:provider(served.provider)
    sv.lat[#sv.lat + 1] = result.dur
    if #sv.lat > 5000 then table.remove(sv.lat, 1) end
    if result.hedge then sv.hedge_wins = sv.hedge_wins + 1 end
  end
  return result, hedged
end

-- The keys a call's result is cached under, one per cacheable provider of the chain (in
-- chain order): digest.key of the provider, its endpoint and settings, the role and method,
-- and the request's content.
local function cache_keys(v, spec)
  local content = spec.content()
  if content == nil then return nil end
  local keys, by = {}, {}
  for _, p in ipairs(v.chain.providers) do
    if p.retry_opts then
      local k = digest.key { "sluice provider result", 1, provider = p.provider,
        endpoint = http.safe_url(tostring(p.base_url or p.invoke_url or "")), settings = settings_of(p),
        role = v.role, method = spec.method, content = content }
      keys[#keys + 1] = k
      by[k] = p
    end
  end
  return keys, by
end

-- serve(v, spec) -> the call's results (as the provider method returns them).
-- spec: method, args (for estimates), content() -> parts (may wait; nil: not cacheable),
-- call(p) -> results, store(results) -> value to cache, restore(value) -> results,
-- placeholder(p) -> results (dry run), stream (no hedge; no fallback once tokens went out:
-- spec.emitted()).
local function serve(v, spec)
  local L = v.ledger
  local st = L:stage(v.stage)
  local providers = v.chain.providers
  local rec = { method = spec.method, requests = 0, usd = 0, input = 0, output = 0, tried = {} }
  -- 1. the cache
  local keys, by
  if v.cache_on and L.cache and v.chain.remote then
    keys, by = cache_keys(v, spec)
    if keys and #keys > 0 then
      local hit = L.cache:get(keys)
      if hit then
        st.cached, L.total.cached = st.cached + 1, L.total.cached + 1
        st.saved, L.total.saved = st.saved + (hit.usd or 0), L.total.saved + (hit.usd or 0)
        L:provider(hit.provider or by[hit.key].provider).cached = L:provider(hit.provider or by[hit.key].provider).cached + 1
        rec.provider, rec.model, rec.cached, rec.ok, rec.saved = hit.provider, hit.model, true, true, hit.usd
        emit_call(v, rec)
        rawset(v, "provider", hit.provider)
        return spec.restore(hit.value)
      end
    end
  end
  local e = cost.expect(v.role, spec.method, spec.args, L.prices.estimates,
    L.learned[learned_key(providers[1], v.role)])
  -- 2. a dry run: counted, not sent
  if L.dry then
    local p = providers[1]
    local calls = p.expected_calls and p:expected_calls(spec.method, spec.args) or 1
    local usd, u = L:price(p, {}, e)
    st.calls, L.total.calls = st.calls + 1, L.total.calls + 1
    local reqs = p.retry_opts and calls or 0
    st.requests, L.total.requests = st.requests + reqs, L.total.requests + reqs
    if p.retry_opts then
      for _, x in ipairs { st, L.total } do
        x.input, x.output = x.input + (u.input or 0) * calls, x.output + (u.output or 0) * calls
        x.tokens = x.tokens + ((u.input or 0) + (u.output or 0)) * calls
        if usd then x.usd = x.usd + usd * calls else x.unpriced = x.unpriced + 1 end
      end
    end
    return spec.placeholder(p)
  end
  -- 3. the budget
  local res, berr, bcode = L:admit(providers[1], e)
  if not res then return nil, berr, bcode, { retry = false } end
  st.calls, L.total.calls = st.calls + 1, L.total.calls + 1
  -- 4. the chain
  local t0 = now()
  local errs, last = {}, nil
  local waited = 0
  local ok, err = pcall(function()
    ::again::
    for i, p in ipairs(providers) do
      if p.breaker and not p.breaker:peek() then
        local pv = L:provider(p.provider)
        pv.skipped = pv.skipped + 1
        rec.tried[#rec.tried + 1] = p.provider .. " (circuit open)"
        errs[#errs + 1] = p.provider .. ": circuit open" .. p.breaker:last_failure()
      else
        rec.tried[#rec.tried + 1] = p.provider
        local x, hedged = try(v, p, i, spec, rec, e)
        rec.hedged = rec.hedged or hedged
        if succeeded(x) then
          last = x
          return
        end
        errs[#errs + 1] = tostring(x.r[3])
        if x.r[4] == "EBREAKER" then -- the circuit opened while the call retried: not sent
          local pv = L:provider(p.provider)
          pv.skipped = pv.skipped + 1
        else
          last = x
          L:provider(p.provider).failures = L:provider(p.provider).failures + 1
        end
        if spec.emitted and spec.emitted() then return end -- half an answer went out: no fallback
      end
    end
    -- Every provider's circuit is open: after a burst of failures (no failed probe yet) the
    -- call waits for the first probe, up to breaker.wait seconds in all, instead of failing
    -- an item that a flaky endpoint would serve a few seconds later.
    if last == nil then
      local soonest
      for _, p in ipairs(providers) do
        local w = p.breaker and p.breaker:worth_waiting()
        if w and (not soonest or w < soonest) then soonest = w end
      end
      if soonest and waited + soonest <= L.breaker.wait then
        local pause = math.max(0.05, soonest)
        sl.sleep(pause)
        waited = waited + pause
        errs, rec.tried = {}, {}
        goto again
      end
    end
  end)
  L:settle(res)
  if not ok then error(err, 0) end
  rec.seconds = now() - t0
  if last and succeeded(last) then
    local served = last.p
    local pv = L:provider(served.provider)
    pv.served = pv.served + 1
    rec.ok, rec.provider, rec.model, rec.hedge_won = true, served.provider, served.model, last.hedge or nil
    rawset(v, "provider", served.provider)
    local r = { unpack(last.r, 2, last.r.n) }
    r.n = last.r.n - 1
    if keys and served.retry_opts and spec.store then
      local k
      for kk, pp in pairs(by) do if pp == served then k = kk end end
      if k then
        local okp, perr = L.cache:put(k, spec.store(r), { provider = served.provider, model = served.model,
          role = v.role, usd = rec.usd, tokens = rec.input + rec.output })
        if not okp then
          L:emit { event = "log", stage = "providers", message = "result cache: cannot store a result: " .. tostring(perr) }
        end
      end
    end
    emit_call(v, rec)
    return unpack(r, 1, r.n)
  end
  st.failed, L.total.failed = st.failed + 1, L.total.failed + 1
  rec.ok = false
  if last then
    local msg = last.r[3]
    if #errs > 1 then msg = table.concat(errs, "; then ") end
    rec.error = msg
    emit_call(v, rec)
    return nil, msg, last.r[4], last.r[5]
  end
  rec.error = table.concat(errs, "; ")
  emit_call(v, rec)
  return nil, string.format("%s: no provider could be asked (%s)", v.role, table.concat(errs, "; ")), "EBREAKER",
    { retry = false }
end
M.serve = serve

-- ---- the role methods ----------------------------------------------------------------------

-- A copy of t with its start and end moved by dt.
local function shifted(t, dt)
  local c = {}
  for k, x in pairs(t) do c[k] = x end
  if type(t.start) == "number" then c.start = t.start + dt end
  if type(t["end"]) == "number" then c["end"] = t["end"] + dt end
  return c
end

-- A transcription with the times of its segments and their words moved by dt.
local function shift_result(r, dt)
  if type(r) ~= "table" or dt == 0 then return r end
  local out = {}
  for k, x in pairs(r) do out[k] = x end
  if type(r.segments) == "table" then
    out.segments = {}
    for i, s in ipairs(r.segments) do
      local c = shifted(s, dt)
      if type(s.words) == "table" then
        c.words = {}
        for j, w in ipairs(s.words) do c.words[j] = shifted(w, dt) end
      end
      out.segments[i] = c
    end
  end
  return out
end

local function copy_opts(opts, drop)
  local o = {}
  for k, x in pairs(opts or {}) do
    if not (drop and drop[k]) and type(x) ~= "function" then o[k] = x end
  end
  return o
end

-- transcribe(audio{path=, t0=, t1=}, opts): the provider transcribes the file from 0 and the
-- times are moved by t0 here, so the same samples at another place (a renamed copy, another
-- job) are the same request.
function View:transcribe(audio, opts)
  opts = opts or {}
  if type(audio) ~= "table" or type(audio.path) ~= "string" then
    error("bad argument #1 to 'transcribe' (table with path expected)", 2)
  end
  local t0 = audio.t0 or 0
  local rel = {}
  for k, x in pairs(audio) do rel[k] = x end
  rel.t0 = 0
  if type(audio.t1) == "number" then rel.t1 = audio.t1 - t0 end
  local v = self
  local out = pack(serve(v, {
    method = "transcribe", args = { t0 = 0, t1 = rel.t1 },
    content = function()
      local h = digest.content(audio.path)
      if not h then return nil end
      return { audio = h, mime = audio.mime, opts = copy_opts(opts) }
    end,
    call = function(p) return p:transcribe(rel, opts) end,
    store = function(r) return r[1] end,
    restore = function(value) return value end,
    placeholder = function(p)
      local d = rel.t1 or 0
      return { segments = { { start = 0, ["end"] = d, text = "(dry run)", words = {} } }, text = "(dry run)",
        provider = p.provider }
    end,
  }))
  if out[1] == nil then return unpack(out, 1, out.n) end
  return shift_result(out[1], t0), unpack(out, 2, out.n)
end

-- describe(images, opts): one call per image (each cached, hedged and failed over on its own),
-- at most the first provider's `concurrency` at once. {{t=, text=, path=, provider=}, ...} in
-- input order (an image that could not be described has error= instead of text=), or nil and
-- the first error when none could be.
function View:describe(images, opts)
  opts = opts or {}
  if type(images) ~= "table" then error("bad argument #1 to 'describe' (list of images expected)", 2) end
  local v = self
  local first = v.chain.providers[1]
  if not v.chain.remote and not v.ledger.dry and #v.chain.providers == 1 then
    return first:describe(images, opts) -- a local engine alone: as it is (it may take batches)
  end
  local prompt_opts = copy_opts(opts)
  return P.each_image(images, first.concurrency or 4, function(_, img)
    local r, err, code = serve(v, {
      method = "describe", args = { prompt = opts.prompt },
      content = function()
        local h = digest.content(img.path)
        if not h then return nil end
        return { image = h, mime = img.mime, opts = prompt_opts }
      end,
      call = function(p)
        local res, perr, pcode, pinfo = p:describe({ { path = img.path, t = img.t, mime = img.mime } }, opts)
        if res and res[1] and res[1].error then return nil, res[1].error, pcode, pinfo end
        return res, perr, pcode, pinfo
      end,
      store = function(res)
        local d = res[1][1]
        return { text = d.text or d.description, provider = d.provider, confidence = d.confidence }
      end,
      restore = function(value)
        return { { t = img.t, path = img.path, text = value.text, provider = value.provider,
          confidence = value.confidence } }
      end,
      placeholder = function(p) return { { t = img.t, path = img.path, text = "(dry run)", provider = p.provider } } end,
    })
    if not r then return nil, err, code end
    local d = r[1] or {}
    return { t = img.t, path = img.path, text = d.text or d.description, provider = d.provider or rawget(v, "provider"),
      confidence = d.confidence, words = d.words }
  end)
end

-- complete(messages | prompt, opts): cached by the messages and the options that shape the
-- answer; a streamed call is not hedged, and fails over only before its first token.
function View:complete(m, opts)
  opts = opts or {}
  local msgs = P.messages(m, opts)
  local v = self
  local stream = opts.stream
  local emitted = false
  local call_opts = {}
  for k, x in pairs(opts) do call_opts[k] = x end
  call_opts.system = nil -- (already in msgs)
  if stream then
    call_opts.stream = function(tok)
      emitted = true
      return stream(tok)
    end
  end
  local r = pack(serve(v, {
    method = "complete", args = { messages = msgs, max_tokens = opts.max_tokens }, stream = stream ~= nil,
    emitted = function() return emitted end,
    content = function()
      return { messages = msgs, opts = copy_opts(opts, { stream = true, system = true }) }
    end,
    call = function(p)
      local text, info, code, failure = p:complete(msgs, call_opts)
      if text == nil then return nil, info, code, failure end
      info = type(info) == "table" and info or {}
      info.provider = info.provider or p.provider
      return text, info
    end,
    store = function(res) return { text = res[1], info = res[2] } end,
    restore = function(value)
      if stream and type(value.text) == "string" and value.text ~= "" then stream(value.text) end
      return value.text, value.info
    end,
    placeholder = function(p)
      local text = opts.json and '{"score": 0, "reasons": ["dry run"]}' or "(dry run)"
      if stream then stream(text) end
      return text, { provider = p.provider, dry = true }
    end,
  }))
  return unpack(r, 1, r.n)
end

return M
