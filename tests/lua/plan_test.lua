-- sluice.blocks.plan: worker counts from the whole queue and the machine, chunk lengths that
-- spread the queued audio over the CPUs, and the ledger of work a stage has ahead of it.
-- Known inputs, answers worked out by hand.
local T = require "sluice.app.test"
local plan = require "sluice.blocks.plan"

T.case("workers: by the whole queue, the CPUs left, memory, max; says why", function()
  local w = plan.workers
  -- 3 episodes of one chunk each on 2 CPUs: the queue has 3 units, the CPUs cap it at 2
  local n, why = w { units = 3, engine = "sphinx", cpus = 2, memory_gb = 8 }
  T.eq(n, 2)
  T.eq(why, "stt 2 workers: 2 CPUs, sphinx")
  -- one unit queued: one worker, and that is the reason
  n, why = w { units = 1, engine = "sphinx", cpus = 2, memory_gb = 8 }
  T.eq(n, 1)
  T.eq(why, "stt 1 worker: 1 chunk queued, sphinx")
  -- nothing queued yet: still one worker
  T.eq((w { units = 0, engine = "sphinx", cpus = 2, memory_gb = 8 }), 1)
  -- other CPU-bound stages hold CPUs: what is left
  n, why = w { units = 10, engine = "sphinx", cpus = 8, cpus_used = 5, memory_gb = 8 }
  T.eq(n, 3)
  T.eq(why, "stt 3 workers: 3 CPUs left of 8, sphinx")
  -- memory: 70% of 4 GB / 2.5 GB per whisper-cpp worker = 1
  n, why = w { units = 10, engine = "whisper-cpp", cpus = 8, memory_gb = 4 }
  T.eq(n, 1)
  T.eq(why, "stt 1 worker: 4.0 GB memory, whisper-cpp")
  -- remote engines: no CPU cap, the queue and max decide
  T.eq((w { units = 7, engine = "openai", cpus = 2, memory_gb = 8 }), 7)
  n, why = w { units = 40, engine = "openai", cpus = 2, memory_gb = 8, max = 6, stage = "vlm", unit = "frame" }
  T.eq(n, 6)
  T.eq(why, "vlm 6 workers: at most 6, openai")
  T.eq((w { units = 40, engine = "openai", cpus = 2, memory_gb = 8 }), 10, "default max")
end)

T.case("chunk_seconds: the queued audio over the CPUs, equal parts, 30-300 s", function()
  local c = plan.chunk_seconds
  -- one 70 s episode on an idle 2-core machine: two chunks, one per core
  local s, k = c { pending = 70, duration = 70, cpus = 2, overlap = 5 }
  T.eq(k, 2)
  T.near(s, 37.5, 1e-9) -- (70 + 5) / 2: two chunks sharing 5 s cover 70 s
  -- three 70 s episodes: 210 s over 2 CPUs, 2 units each -> 52.5 s target -> 2 parts each
  s, k = c { pending = 210, duration = 70, cpus = 2, overlap = 5 }
  T.eq(k, 2)
  -- a 10-minute episode alone: 4 units of ~150 s (2 per core)
  s, k = c { pending = 600, duration = 600, cpus = 2, overlap = 5, window = 2 }
  T.eq(k, 4)
  T.near(s, (600 + 3 * 5) / 4 + 1, 1e-9)
  -- many long episodes: 300 s chunks (never longer)
  s, k = c { pending = 20 * 3600, duration = 3600, cpus = 2, overlap = 5 }
  T.eq(k, 12)
  T.near(s, (3600 + 11 * 5) / 12, 1e-9)
  -- a short episode is never cut below 30 s a part
  s, k = c { pending = 18, duration = 18, cpus = 2, overlap = 5 }
  T.eq(k, 1)
  T.near(s, 18, 1e-9)
  s, k = c { pending = 50, duration = 50, cpus = 2, overlap = 5 }
  T.eq(k, 1, "two parts would be 25 s")
  -- an input shorter than the overlap: one part, longer than the overlap (a reader refuses
  -- a part that is not; a 2 s episode was refused so)
  s, k = c { pending = 2, duration = 2, cpus = 2, overlap = 5, window = 2 }
  T.eq(k, 1)
  T.ok(s > 5 and s > 2, "one part of " .. s .. " s")
  -- more CPUs: shorter parts for the same queue
  local _, k8 = c { pending = 600, duration = 600, cpus = 8, overlap = 5 }
  T.eq(k8, 16)
  -- every k chunks of s seconds, each starting s - overlap after the last, cover the input
  for _, d in ipairs { 31, 70, 119, 600, 3601 } do
    for _, cpus in ipairs { 1, 2, 4 } do
      local sec, n = c { pending = d * 2, duration = d, cpus = cpus, overlap = 5 }
      T.ok(n * sec - (n - 1) * 5 >= d - 1e-9, string.format("%d s on %d CPUs covered", d, cpus))
      T.ok(n == 1 or sec >= 30, "parts of at least 30 s")
    end
  end
end)

T.case("ledger: pending audio and units of every input, expected ones included", function()
  local l = plan.ledger()
  l:expect("a", 70)
  l:expect("b") -- length not known yet: counts as the mean of the known ones
  l:expect("c")
  T.near(l:pending(), 210, 1e-9)
  T.eq(l:units(), 3, "one unit per input not cut, without a chunk rule")
  T.eq(l:units(function(sec) return sec >= 60 and 2 or 1 end), 6)
  l:expect("b", 30)
  T.near(l:pending(), 70 + 30 + 50, 1e-9)
  l:cut("a", 2, 70)
  l:done("a", 37.5)
  T.near(l:pending(), 32.5 + 30 + 50, 1e-9)
  T.eq(l:units(function() return 1 end), 1 + 1 + 1)
  l:done("a", 37.5)
  l:finished("a")
  T.near(l:pending(), 30 + 50, 1e-9, "the unknown input's mean still counts a")
  T.eq(l:units(function() return 1 end), 2)
  -- a failed download leaves the queue; a retry that succeeds is expected again
  l:finished("c")
  T.eq(l:units(function() return 1 end), 1)
  l:expect("c", 40)
  T.eq(l:units(function() return 1 end), 2)
end)

return T.run()
