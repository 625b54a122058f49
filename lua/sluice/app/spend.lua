-- sluice.app.spend: what `sluice run` does about provider calls: the result cache (--cache,
-- --no-cache), the budget (its stop and exit status), --dry-run, and their lines.
--
--   local spend = require "sluice.app.spend"
--   local ok, err = spend.check(cfg, p)           -- the settings, before anything runs
--   local ledger = spend.attach(job, cfg, o, stop) -- job.providers: the job's ledger
--   spend.report(summary) / spend.budget_line(ledger)
local chain = require "sluice.providers.chain"
local breaker = require "sluice.runtime.breaker"
local progress = require "sluice.app.progress"

local M = {}

M.BUDGET_STATUS = 3 -- exit status of a run stopped by its budget

-- check(cfg, p) -> true, or nil and one line: budget, hedge, breaker and each stage's hedge.
function M.check(cfg, p)
  local ok, err = pcall(function()
    chain.budget_settings(cfg.budget)
    breaker.settings(cfg.breaker, "breaker")
    local h = cfg.hedge
    if type(h) == "table" and h.after == nil and h.max == nil and h.to == nil and h.min_samples == nil then
      for name, x in pairs(h) do chain.hedge_settings(x, "hedge." .. tostring(name)) end
    else
      chain.hedge_settings(h, "hedge")
    end
    for name, s in pairs(p.stages or {}) do
      if s.hedge ~= nil then chain.hedge_settings(s.hedge, "stage '" .. name .. "': hedge") end
    end
    if cfg.prices ~= nil and type(cfg.prices) ~= "table" then
      error("prices must be a table provider -> model -> {input=, output=, minute=}", 0)
    end
  end)
  if not ok then return nil, tostring(err) end
  return true
end

-- open_cache(o) -> the provider result cache (o.cache: a path, else $SLUICE_CACHE, else the
-- default file; "off" for none), false with o.no_cache, or nil and a message. (Before the job
-- starts: opening may wait.)
function M.open_cache(o)
  local path = o.cache or os.getenv("SLUICE_CACHE")
  if o.no_cache or path == "off" then return false end
  if path == "" then path = nil end
  return require("sluice.providers.cache").open(path)
end

-- attach(job, cfg, o, cache, on_budget) -> the job's ledger (job.providers), with the cache,
-- the budget and o.dry_run. Call it right after p:start (it does not wait: the job's stages
-- have not started).
function M.attach(job, cfg, o, cache, on_budget)
  job.providers = chain.ledger { emit = chain.job_emitter(job), prices = cfg.prices, budget = cfg.budget,
    breaker = cfg.breaker, hedge = cfg.hedge, cache = cache or nil, dry = o.dry_run, on_budget = on_budget }
  return job.providers
end

local usd = progress.usd

-- budget_line(ledger) -> "budget of $0.05 reached: $0.0493 spent; ..." (nil when not reached).
function M.budget_line(L, job_id)
  if not (L and L.stopped and L.budget) then return nil end
  local b = L.budget
  return string.format("budget of %s reached (%s spent, %d tokens): no new call was started, the calls " ..
    "in flight finished and what is done is kept; go on with a larger budget: --job %s --set %s",
    b.usd and usd(b.usd) or (b.tokens .. " tokens"), usd(L.total.usd), L.total.tokens, tostring(job_id),
    b.usd and string.format("budget.usd=%g", b.usd * 2) or string.format("budget.tokens=%d", b.tokens * 2))
end

-- report(summary) -> the dry run's table: per stage, the calls it expects, requests, tokens
-- and cost, and what the cache would answer.
function M.report(summary)
  local pv = summary.providers
  if not pv then return "dry run: no provider call expected\n" end
  local rows = { { "stage", "calls", "requests", "cached", "input tok", "output tok", "cost" } }
  for _, n in ipairs(pv.order) do
    local s = pv.stages[n]
    rows[#rows + 1] = { n, tostring(s.calls), tostring(s.requests), tostring(s.cached), tostring(math.floor(s.input)),
      tostring(math.floor(s.output)), usd(s.usd) .. (s.unpriced > 0 and " + unpriced" or "") }
  end
  local t = pv.total
  rows[#rows + 1] = { "total", tostring(t.calls), tostring(t.requests), tostring(t.cached), tostring(math.floor(t.input)),
    tostring(math.floor(t.output)), usd(t.usd) }
  return "dry run: what the run is expected to call (nothing was sent)\n" .. progress.grid(rows)
end

return M
