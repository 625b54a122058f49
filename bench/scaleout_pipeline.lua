-- scaleout_pipeline.lua: the pipeline bench/scaleout.lua runs, with its one stage remote; the
-- same script is what its `sluice worker` processes load.
--   config.mode  "trivial" (returns its item), "latency" (one HTTP request to config.url),
--                "cpu" (transcribes config.chunks[i] with sphinx)
--   config.n     units (trivial, latency); config.warm: units run first, not measured
-- The source marks job.bench_t0 when the measured units start (after the warm-up ones are
-- done, so that job discovery and model loading are not measured).
local sl = require "sluice"

return sl.pipeline "scaleout" {
  defaults = { mode = "trivial", n = 1000, warm = 0, url = "", chunks = {},
    providers = { stt = "sphinx" }, sphinx = { workers = 1 } },
  sources = { gen = function(ctx)
    local c = ctx.config
    local job = ctx.job
    for i = 1, c.warm do ctx:emit({ i = i, warm = true, path = c.chunks[1] }, { key = "warm", seq = i }) end
    while job.stages.work.done + job.stages.work.failed < c.warm do sl.sleep(0.01) end
    job.bench_t0 = sl.now()
    if c.mode == "cpu" then
      for i, p in ipairs(c.chunks) do ctx:emit({ i = i, path = p }, { key = "k", seq = i }) end
    else
      for i = 1, c.n do ctx:emit(i, { key = "k", seq = i }) end
    end
  end },
  stages = {
    work = { from = "gen", remote = true, queue = 16, run = function(env, ctx)
      local c = ctx.config
      if c.mode == "latency" then
        local r, err = require("sluice.runtime.http").request { url = c.url, timeout = 30 }
        if not r then error(err, 0) end
        return r.status
      elseif c.mode == "cpu" then
        local stt = require("sluice.blocks.stages").provider(ctx, "stt")
        local r = assert(stt:transcribe { path = env.data.path })
        return { i = env.data.i, text = r.text }
      end
      return env.data
    end },
  },
}
