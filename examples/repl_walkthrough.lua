-- repl_walkthrough.lua: what a REPL session with a running pipeline looks like. Run it as a
-- script (sluice run examples/repl_walkthrough.lua) or load it at the prompt
-- (sluice repl examples/repl_walkthrough.lua) and type the same lines yourself:
--
--   > job = p:start{ inputs = inputs }      -- runs in the background; the prompt stays live
--   > job:stats().stages.work               -- done, in_flight, queue, rate, workers ...
--   > job.stages.work.workers = 4           -- more workers while it runs
--   > job:wait().state                      -- "done"
--
-- The pipeline: 24 items through a slow stage (0.05 s each) and a fast one.
local sl = require "sluice"

p = sl.pipeline "walkthrough" {
  sources = { numbers = function(ctx)
    for i = 1, 24 do ctx:emit(i, { seq = i }) end
  end },
  stages = {
    work = { from = "numbers", workers = 1, run = function(item)
      sl.sleep(0.05)
      return item.data * item.data
    end },
    total = { from = "work", collect = "all", run = function(items)
      local s = 0
      for _, it in ipairs(items) do s = s + it.data end
      return s
    end },
  },
}
inputs = {}

job = p:start { inputs = inputs }
sl.sleep(0.2)
local st = job:stats().stages.work
print(string.format("after 0.2 s: %d done, %d queued, %d worker(s)", st.done, st.queue, st.workers))
job.stages.work.workers = 4
print("workers now " .. job.stages.work.workers)
local summary = job:wait()
local total = summary.results.total[1].data
print(string.format("%s in %.2f s, sum of squares 1..24 = %d", summary.state, summary.elapsed, total))
assert(summary.state == "done" and total == 4900)
assert(job:stats().stages.work.workers == 4)
