-- sluice.app.progress: what a run shows in the terminal.
--
--   local view = progress.new(job, { stream = io.stderr })   -- tty: redrawn in place
--   view:start()  ...  view:stop()
--   io.stderr:write(progress.table(job:summary()))            -- the end-of-run table
--
-- One line per stage: done/total (total once known), failed, in flight, queue depth, rate,
-- ETA. On a terminal the block is redrawn in place a few times a second; otherwise (a pipe, a
-- log file, CI) it prints a plain block every `interval` seconds (default 10).
-- SLUICE_PROGRESS=tty|plain|off overrides the detection.
local core = require "sluice.core.core"

local M = {}

local function fmt_dur(s)
  if s == nil then return "-" end
  if s < 1e-3 then return string.format("%.0fus", s * 1e6) end
  if s < 1 then return string.format("%.0fms", s * 1e3) end
  if s < 60 then return string.format("%.1fs", s) end
  if s < 3600 then return string.format("%dm%02ds", s // 60, math.floor(s % 60)) end
  return string.format("%dh%02dm", s // 3600, math.floor(s % 3600 / 60))
end
M.fmt_dur = fmt_dur

local function fmt_rate(r)
  if not r or r == 0 then return "-" end
  if r >= 100 then return string.format("%.0f/s", r) end
  if r >= 1 then return string.format("%.1f/s", r) end
  return string.format("%.2f/s", r)
end

-- Is stderr a terminal? (Asks test(1) once: Lua cannot call isatty.)
local tty_cache
function M.stderr_is_tty()
  if tty_cache ~= nil then return tty_cache end
  local mode = os.getenv("SLUICE_PROGRESS")
  if mode == "tty" then tty_cache = true return true end
  if mode == "plain" or mode == "off" then tty_cache = false return false end
  local ok, f = pcall(io.popen, "test -t 2 && echo y")
  local r = ok and f and f:read("a") or ""
  if ok and f then f:close() end
  tty_cache = r:match("y") ~= nil
  return tty_cache
end

local function pad(s, n)
  s = tostring(s)
  if #s >= n then return s end
  return s .. string.rep(" ", n - #s)
end

local function lpad(s, n)
  s = tostring(s)
  if #s >= n then return s end
  return string.rep(" ", n - #s) .. s
end

local function bar(done, total, width)
  if not total or total <= 0 then return string.rep("·", width) end
  local f = math.min(1, done / total)
  local full = math.floor(f * width + 0.5)
  return string.rep("█", full) .. string.rep("·", width - full)
end

-- The lines of the live view for stats (job:stats()).
function M.lines(stats, rates)
  local out = {}
  local w = 6
  for _, n in ipairs(stats.order) do if #n > w then w = #n end end
  for _, n in ipairs(stats.order) do
    local st = stats.stages[n]
    local done = st.done or 0
    local total = st.total
    local rate = rates and rates[n] or st.rate
    local eta = "-"
    if st.finished then
      eta = "done"
    elseif total and rate and rate > 0 then
      eta = fmt_dur(math.max(0, total - done - (st.failed or 0)) / rate)
    end
    local count = total and string.format("%d/%d", done, total) or string.format("%d/?", done)
    local line
    if st.kind == "source" then
      line = string.format("%s %s %s %s", pad(n, w), bar(done, total, 12), lpad(count, 11),
        st.finished and "done" or "reading")
    else
      line = string.format("%s %s %s  fail %-3d run %-3d queue %3d/%-3d %8s  eta %s",
        pad(n, w), bar(done + (st.failed or 0), total, 12), lpad(count, 11), st.failed or 0,
        st.in_flight or 0, st.queue or 0, st.queue_cap or 0, fmt_rate(rate), eta)
      -- a worker count decided by a rule says why ("stt 2 workers: 2 CPUs, sphinx")
      if st.workers_why then line = line .. "  (" .. st.workers_why .. ")" end
    end
    out[#out + 1] = line
  end
  local pl = M.providers_line(stats.providers, w)
  if pl then out[#out + 1] = pl end
  for _, l in ipairs(stats.status or {}) do out[#out + 1] = tostring(l) end -- (job:set_status)
  for _, wk in ipairs(stats.workers or {}) do -- remote workers (sluice run --broker)
    out[#out + 1] = string.format("%s %s (%s) %s: run %d, done %d%s", pad("worker", w), wk.id,
      tostring(wk.host), table.concat(wk.stages or {}, ","), wk.in_flight or 0, wk.done or 0,
      (wk.failed or 0) > 0 and (", failed " .. wk.failed) or "")
  end
  return out
end

-- The live view's line about provider calls (stats.providers): cost so far (and the budget),
-- answers from the cache, hedges, and each endpoint's breaker while it is not closed.
function M.providers_line(pv, w)
  if not pv or (pv.total.requests == 0 and pv.total.cached == 0 and #pv.breakers == 0) then return nil end
  local t = pv.total
  local parts = { string.format("%s%s", pv.dry and "expected " or "", M.usd(t.usd)) }
  if pv.budget and pv.budget.usd then parts[1] = parts[1] .. " of " .. M.usd(pv.budget.usd) end
  if pv.stopped then parts[1] = parts[1] .. " (budget reached)" end
  parts[#parts + 1] = string.format("%d requests", t.requests)
  if t.cached > 0 then parts[#parts + 1] = string.format("%d cached", t.cached) end
  if t.hedges > 0 then parts[#parts + 1] = string.format("%d hedged", t.hedges) end
  for _, b in ipairs(pv.breakers) do
    if b.state ~= "closed" then
      parts[#parts + 1] = string.format("%s circuit %s%s", b.provider, b.state == "open" and "open" or "half-open",
        b.open_for and string.format(" (%.0fs)", b.open_for) or "")
    end
  end
  return pad("calls", w or 6) .. " " .. table.concat(parts, " · ")
end

-- How far a job is through its media, from the "progress" events its stages send (done and
-- total, in seconds of media, per key): reports = {stage = {key = {done=, total=}}}. Returns
-- the fraction done (the slowest stage's), the ETA in seconds, and the media seconds done and
-- in all. The ETA goes by the rate over the later half of the run so far (hist: samples {t=,
-- f=} of the fraction, oldest first, kept by the view; without them, the average since the
-- start, elapsed seconds ago): a long lecture's stages go at a steady pace, so a long average
-- is a better guide than the last few seconds, and the later half leaves out the start (opening
-- the input, the first small chunks) and follows a machine that became busier. No stage's
-- item total is known before its upstream is done, so the item counts cannot give it.
function M.media_eta(reports, elapsed, hist, now)
  local frac, done, total
  for _, keys in pairs(reports or {}) do
    local d, t = 0, 0
    for _, r in pairs(keys) do d, t = d + r.done, t + r.total end
    if t > 0 then
      local f = math.min(1, d / t)
      if not frac or f < frac then frac, done, total = f, d, t end
    end
  end
  if not frac then return nil end
  local eta = frac > 0 and elapsed * (1 - frac) / frac or nil
  if hist and #hist >= 2 then
    local a, b = hist[1], hist[#hist]
    if b.f > a.f and b.t > a.t then
      eta = math.max(0, (1 - b.f) * (b.t - a.t) / (b.f - a.f) - ((now or b.t) - b.t))
    end
  end
  return frac, eta, done, total
end

-- Adds a sample of the fraction done to hist and drops those older than the later half of
-- the run (at least 10 s kept).
function M.eta_sample(hist, t, f, started)
  hist[#hist + 1] = { t = t, f = f }
  local keep = math.max(10, (t - started) / 2)
  while #hist > 2 and hist[2].t <= t - keep do table.remove(hist, 1) end
end

-- The media fraction a stage's items follow: the lowest of the stages upstream of it (itself
-- included) that send progress events (reports), or nil when none does.
local function upstream_fraction(stats, reports, name)
  local seen, low = {}, nil
  local function walk(n)
    if seen[n] then return end
    seen[n] = true
    local keys = reports[n]
    if keys then
      local d, t = 0, 0
      for _, r in pairs(keys) do d, t = d + r.done, t + r.total end
      if t > 0 and (not low or d / t < low) then low = math.min(1, d / t) end
    end
    local st = stats.stages[n]
    for _, up in ipairs(st and st.from or {}) do walk(up) end
  end
  walk(name)
  return low
end

-- The job's ETA while its media is read: the media's (media_eta), or longer when a stage
-- downstream falls behind (a summary per slide at the model's pace): the work after the media
-- is then what is left in that stage's queue when the media ends. For every running stage
-- that is fed from a stage sending progress events, its items in all are estimated from those
-- in so far and the media fraction they follow (its total once its upstream is done), and the
-- items left take it (left / its rate since its first item) to finish; the ETA is the longest.
-- Stages that wait for all their inputs (collect) are not counted: they start when the rest
-- ends, and take little next to it. Returns the ETA in seconds (media_eta's when nothing lags).
function M.job_eta(stats, reports, media_eta)
  if not stats or not reports or not media_eta then return media_eta end
  local eta = media_eta
  for _, n in ipairs(stats.order or {}) do
    local st = stats.stages[n]
    if st.kind == "stage" and not st.finished and (st.rate or 0) > 0 and (st["in"] or 0) >= 5 then
      local f = upstream_fraction(stats, reports, n)
      if f and f >= 0.05 then
        local total = st.total or st["in"] / f
        local left = total - (st.done or 0) - (st.failed or 0)
        if left > 0 and left / st.rate > eta then eta = left / st.rate end
      end
    end
  end
  return eta
end

-- The view's line for media progress, or nil. With the job's stats, the ETA is the job's
-- (job_eta): the media's, or longer when a stage lags behind it.
function M.media_line(reports, elapsed, w, hist, now, stats)
  local frac, eta, done, total = M.media_eta(reports, elapsed, hist, now)
  if not frac then return nil end
  if stats then eta = M.job_eta(stats, reports, eta) end
  return string.format("%s %s %11s  %3d%%  eta %s", pad("media", w or 6), bar(frac, 1, 12),
    fmt_dur(done) .. "/" .. fmt_dur(total), math.floor(frac * 100), eta and fmt_dur(eta) or "-")
end

local View = {}
View.__index = View

function M.new(job, opts)
  opts = opts or {}
  local tty = opts.tty
  if tty == nil then tty = M.stderr_is_tty() end
  return setmetatable({
    job = job, stream = opts.stream or io.stderr, tty = tty,
    interval = opts.interval or (tty and 0.25 or 10), drawn = 0, samples = {},
  }, View)
end

-- Rates over the last ~5 seconds (more telling than the average since the start).
function View:rates(stats)
  local t = core.now()
  local s = self.samples
  s[#s + 1] = { t = t, done = {} }
  for n, st in pairs(stats.stages) do s[#s].done[n] = (st.done or 0) + (st.failed or 0) end
  while #s > 2 and t - s[1].t > 5 do table.remove(s, 1) end
  local first = s[1]
  local dt = t - first.t
  if dt < 0.5 then return nil end
  local r = {}
  for n, d in pairs(s[#s].done) do r[n] = (d - (first.done[n] or 0)) / dt end
  return r
end

function View:draw(final)
  local stats = self.job:stats()
  local lines = M.lines(stats, (not final) and self:rates(stats) or nil)
  local ml = (not final) and M.media_line(self.reports, stats.elapsed or 0, nil, self.hist, core.now(), stats)
  if ml then table.insert(lines, 1, ml) end
  local f = self.stream
  if self.tty then
    local buf = {}
    if self.drawn > 0 then buf[#buf + 1] = string.format("\27[%dA", self.drawn) end
    for _, l in ipairs(lines) do buf[#buf + 1] = "\27[2K" .. l .. "\n" end
    f:write(table.concat(buf))
    self.drawn = #lines
  else
    f:write(string.format("[%s] %s %s\n", fmt_dur(stats.elapsed), self.job.name, stats.state))
    for _, l in ipairs(lines) do f:write("  ", l, "\n") end
  end
  f:flush()
end

-- view:note(line): prints a line above the live block (which is redrawn below it).
function View:note(line)
  local f = self.stream
  if self.tty and self.drawn > 0 then
    f:write(string.format("\27[%dA\27[J", self.drawn))
    self.drawn = 0
  end
  f:write(line, "\n")
  f:flush()
end

function View:start()
  self.reports, self.hist = {}, {}
  local started = core.now()
  if self.job.bus then
    self.off = self.job.bus:on(function(ev)
      if type(ev.done) == "number" and type(ev.total) == "number" and ev.stage then
        local st = self.reports[ev.stage] or {}
        self.reports[ev.stage] = st
        st[ev.key or ""] = { done = ev.done, total = ev.total }
        local f = M.media_eta(self.reports, 0)
        if f then M.eta_sample(self.hist, core.now(), f, started) end
      end
    end, { "progress" })
  end
  self.timer = core.timer()
  self.timer:start(self.interval, self.interval, function()
    local ok, err = pcall(self.draw, self)
    if not ok then
      io.stderr:write("sluice: progress view failed: ", tostring(err), "\n")
      self.timer:close()
    end
  end)
  return self
end

function View:stop()
  if self.off then self.off(); self.off = nil end
  if self.timer then self.timer:close() end
  self.timer = nil
  if self.tty then pcall(self.draw, self, true) end
end

-- The end-of-run table (a string ending in a newline) for a job summary.
-- "HTTP 500 x8, timeout x1": retries by cause, most first (the stage's and its requests').
function M.causes(by)
  local list = {}
  for cause, n in pairs(by or {}) do list[#list + 1] = { cause, n } end
  table.sort(list, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end)
  for i, c in ipairs(list) do list[i] = c[1] .. " x" .. c[2] end
  return table.concat(list, ", ")
end

local function usd(x)
  if not x then return "-" end
  if x == 0 then return "$0" end
  if x < 0.01 then return string.format("$%.4f", x) end
  return string.format("$%.2f", x)
end
M.usd = usd

-- grid(rows) -> the rows as a table (a string ending in a newline): the first row is the
-- head, underlined; the first and last columns are left-aligned, the others right-aligned.
function M.grid(rows)
  local widths = {}
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i] or 0, #c) end
  end
  local out = {}
  for ri, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do
      cells[i] = (i == 1 or i == #r) and pad(c, widths[i]) or lpad(c, widths[i])
    end
    out[#out + 1] = (table.concat(cells, "  "):gsub("%s+$", ""))
    if ri == 1 then
      local dashes = {}
      for i, w in ipairs(widths) do dashes[i] = string.rep("-", w) end
      out[#out + 1] = table.concat(dashes, "  ")
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- The providers' table (summary.providers, sluice.providers.chain): per provider, the calls
-- it was given, served and failed (after its retries), skipped while its breaker was open,
-- hedges sent, p50/p95 of its calls, cost, and its breaker.
function M.providers_table(pv)
  if not pv or #(pv.provider_order or {}) == 0 then return "" end
  local br = {}
  for _, b in ipairs(pv.breakers or {}) do br[b.provider] = b end
  local rows = { { "provider", "calls", "served", "failed", "skipped", "hedges", "cached", "p50", "p95", "cost",
    "breaker" } }
  for _, n in ipairs(pv.provider_order) do
    local p = pv.providers[n]
    local b = br[n]
    rows[#rows + 1] = { n, tostring(p.calls), tostring(p.served), tostring(p.failures), tostring(p.skipped),
      tostring(p.hedges), tostring(p.cached), fmt_dur(p.p50), fmt_dur(p.p95), usd(p.usd),
      b and string.format("%s (opened %d, probes %d)", b.state, b.opens, b.probes) or "" }
  end
  local t = pv.total
  local head = string.format("provider calls: %d requests, %d answered from the cache (saved %s), cost %s%s\n",
    t.requests, t.cached, usd(t.saved), usd(t.usd),
    pv.budget and pv.budget.usd and string.format(" of a %s budget", usd(pv.budget.usd)) or "")
  return head .. M.grid(rows)
end

function M.table(summary)
  local pv = summary.providers
  local rows = { { "stage", "items", "failed", "retried", "busy", "p50", "p95", "blocked", "starved" } }
  if pv then
    for _, c in ipairs { "calls", "cached", "cost" } do rows[1][#rows[1] + 1] = c end
  end
  rows[1][#rows[1] + 1] = "retries by cause"
  for _, n in ipairs(summary.order) do
    local st = summary.stages[n]
    local row
    if st.kind == "source" then
      row = { n, tostring(st.out or 0), tostring(st.failed or 0), "-", "-", "-", "-", "-", "-" }
    else
      row = {
        n, tostring(st.done + st.failed), tostring(st.failed),
        tostring((st.retried or 0) + (st.request_retries or 0)),
        string.format("%.0f%%", st.busy_pct or 0), fmt_dur(st.p50), fmt_dur(st.p95),
        fmt_dur(st.blocked), fmt_dur(st.starved),
      }
    end
    if pv then
      local c = pv.stages[n]
      for _, x in ipairs(c and { tostring(c.requests), tostring(c.cached), usd(c.usd) } or { "-", "-", "-" }) do
        row[#row + 1] = x
      end
    end
    row[#row + 1] = st.kind == "source" and "" or M.causes(st.retries_by)
    rows[#rows + 1] = row
  end
  local head = string.format("%s %s: %s in %s, %d failed\n", summary.name, summary.job,
    summary.state, fmt_dur(summary.elapsed), summary.failed or 0)
  local whys = {}
  for _, n in ipairs(summary.order) do
    local st = summary.stages[n]
    if st.workers_why then whys[#whys + 1] = st.workers_why .. "\n" end
  end
  local c = summary.cpu
  if c and c.waited > 0 then -- a cap that bit is said
    whys[#whys + 1] = string.format("cpu budget: %d tokens (at most %d held at once); %d CPU-bound jobs waited %s for one\n",
      c.limit, c.peak, c.waited, fmt_dur(c.wait_seconds))
  end
  return head .. M.grid(rows) .. table.concat(whys) .. M.providers_table(pv)
end

return M
