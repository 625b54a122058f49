-- sluice.runtime.breaker: the states of a circuit breaker on a simulated clock.
local T = require "sluice.app.test"
local breaker = require "sluice.runtime.breaker"

local function clocked(opts)
  local now = 0
  opts.clock = function() return now end
  local b = breaker.new(opts)
  local changes = {}
  b:on(function(_, state, why) changes[#changes + 1] = state .. ": " .. why end)
  return b, function(dt) now = now + dt end, changes
end

T.case("opens after N consecutive failures; an answer in between resets the count", function()
  local b, _, changes = clocked { failures = 3 }
  b:record(false); b:record(false); b:record(true)
  b:record(false); b:record(false)
  T.eq(b.state, "closed", "2 in a row after an answer")
  T.ok(b:allow())
  b:record(false, "chat completion failed: http: Couldn't connect to server")
  T.eq(b.state, "open")
  T.same(changes, { "open: 3 consecutive failures" })
  local ok, why = b:allow()
  T.eq(ok, false)
  T.eq(why, "circuit open for 10s more (last failure: chat completion failed: http: Couldn't connect to server)",
    "a refusal says what the endpoint last failed with")
  T.eq(b.rejected, 1)
end)

T.case("opens on the error rate of the window, not on old outcomes", function()
  local b, tick, changes = clocked { failures = 100, rate = 0.5, window = 10, min_calls = 6 }
  for _ = 1, 10 do b:record(false); b:record(true); b:record(true) end -- a third fail
  T.eq(b.state, "closed")
  tick(11) -- all of that is out of the window now
  b:record(false); b:record(true); b:record(false); b:record(true); b:record(false)
  T.eq(b.state, "closed", "5 outcomes: fewer than min_calls")
  b:record(true) -- 3 of 6 failed: 50%
  T.eq(b.state, "closed", "the last one was an answer: the rate is checked on failures")
  b:record(false)
  T.eq(b.state, "open")
  T.same(changes, { "open: 4 of the last 7 requests failed" })
end)

T.case("half-open after the cool-down: one probe; its failure doubles the cool-down, its answer closes", function()
  local b, tick, changes = clocked { failures = 1, cooldown = 10, max_cooldown = 25 }
  b:record(false)
  T.eq(b.state, "open")
  tick(9.9)
  T.eq(b:peek(), false)
  T.eq(b:allow(), false)
  tick(0.2)
  T.eq(b:peek(), true, "the cool-down is over")
  T.eq(b:allow(), true, "the probe")
  T.eq(b.state, "half_open")
  T.eq(b:peek(), false, "one probe at a time")
  T.eq(b:allow(), false)
  b:record(false)
  T.eq(b.state, "open")
  tick(19.9)
  T.eq(b:allow(), false, "twice the cool-down")
  tick(0.2)
  T.ok(b:allow())
  b:record(nil) -- cancelled: no verdict, the next caller probes
  T.eq(b.state, "half_open")
  T.ok(b:allow(), "a new probe")
  b:record(false)
  tick(25.1) -- capped at max_cooldown (not 40)
  T.ok(b:allow())
  b:record(true)
  T.eq(b.state, "closed")
  T.eq(b.opens, 1, "opened once; failed probes re-opened it")
  T.eq(b.probes, 4, "the cancelled probe counts")
  T.same(changes, { "open: 1 consecutive failures", "half_open: probing after 10s", "open: the probe failed",
    "half_open: probing after 20s", "open: the probe failed", "half_open: probing after 25s",
    "closed: the probe was answered" })
  b:record(false)
  T.eq(b.state, "open", "closed again: counts from zero, the cool-down back to 10 s")
  T.eq(b.opens, 2)
  tick(10.1)
  T.ok(b:allow())
end)

T.case("bad settings are one line naming the setting", function()
  T.raises(function() breaker.new { failures = 0 } end, "breaker.failures must be a positive number (got 0)")
  T.raises(function() breaker.new { rate = 2 } end, "breaker.rate must be a positive number up to 1 (got 2)")
  T.raises(function() breaker.settings({ cooldwn = 3 }, "breaker") end, "unknown setting breaker.cooldwn")
end)

return T.run()
