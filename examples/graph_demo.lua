-- graph_demo.lua: a stage graph with every kind of stage, on made-up work (sleeps), so it runs
-- anywhere in about a second. Two "lectures" go through: their audio is split into chunks and
-- transcribed (2 workers, retried when a chunk fails once), their slides are described in
-- batches of 4 under a shared quota, fusion waits for each lecture's whole transcript (the
-- gate) and then merges every slide batch at once, and the summary streams partial text.
--   sluice run examples/graph_demo.lua [--set chunks=6] [--trace demo.json] [--events ev.jsonl]
local sl = require "sluice"

local failed_once = {}

return sl.pipeline "demo" {
  description = "made-up lecture processing (sleeps stand in for the work)",
  defaults = { chunks = 4, slides = 10 },
  sources = {
    lectures = function(ctx)
      for _, name in ipairs { "intro", "queues" } do ctx:emit(name, { key = name }) end
    end,
  },
  limits = { quota = sl.semaphore(2) },
  stages = {
    audio = { from = "lectures", run = function(item, ctx)
      for i = 1, ctx.config.chunks do ctx:emit("chunk " .. i, { seq = i, t0 = (i - 1) * 60, t1 = i * 60 }) end
    end },
    slides = { from = "lectures", run = function(item, ctx)
      for i = 1, ctx.config.slides do
        sl.sleep(0.01)
        ctx:emit("slide " .. i, { seq = i, t0 = i * 20 })
      end
    end },
    stt = { from = "audio", workers = 2, retry = { attempts = 3, backoff = 0.02 }, timeout = 5,
      run = function(item)
        sl.sleep(0.05)
        local id = item.key .. item.seq
        if item.seq == 2 and not failed_once[id] then
          failed_once[id] = true
          error("transient STT failure")
        end
        return "words of " .. item.data
      end },
    transcript = { from = "stt", collect = true, run = function(items)
      local parts = {}
      for i, e in ipairs(items) do parts[i] = e.data end
      return table.concat(parts, " / ")
    end },
    vlm = { from = "slides", batch = { size = 4, wait = 1 }, workers = 2, limits = { "quota" },
      run = function(items)
        sl.sleep(0.05)
        return #items .. " slides described", { seq = (items[1].seq - 1) // 4 + 1 }
      end },
    fusion = sl.join { inputs = { "transcript", "vlm" }, gate = "transcript",
      run = function(item, ctx)
        return item.data .. " + transcript (" .. #ctx.gate[1].data .. " chars)"
      end },
    summary = { from = "fusion", order = true, emit = true, run = function(item, ctx)
      for word in item.data:gmatch("%S+") do ctx:event("partial", { text = word }) end
      return "summary " .. item.key .. " #" .. item.seq
    end },
  },
}
