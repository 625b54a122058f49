-- Benchmark 2: overlap. The lecture graph of seed 000 with stages whose work is a known sleep:
--   audio   splits the lecture into CHUNKS chunks (0.01 s each)
--   capture grabs FRAMES frames (0.02 s each, one worker: the busiest stage)
--   stt     0.5 s per chunk, 2 workers
--   vlm     0.3 s per batch of 8 frames, 4 workers
--   fusion  join gated on stt (items wait until the transcript is complete), 0.01 s each
--   summary 0.05 s per fused item, in seq order
-- Prints the makespan of the stage graph, the analytic lower bound (busiest stage's work /
-- workers + the pipeline's fill and drain), their ratio (goal <= 1.05), the batch-serial
-- makespan (each stage starts after the previous one finished every item, as the seed's
-- current code does) and the speedup, and the time to the first fused result for both.
--   sluice run bench/graph_overlap.lua [FRAMES] [CHUNKS]
local sl = require "sluice"

local FRAMES = tonumber(arg and arg[1]) or 160
local CHUNKS = tonumber(arg and arg[2]) or 8
local W = { audio = 0.01, capture = 0.02, stt = 0.5, vlm = 0.3, fusion = 0.01, summary = 0.05 }
local STT_WORKERS, VLM_WORKERS, BATCH = 2, 4, 8
local NBATCH = math.ceil(FRAMES / BATCH)

-- The stage graph -------------------------------------------------------------------------

local p = sl.pipeline "overlap" {
  sources = { video = sl.inputs() },
  stages = {
    audio = { from = "video", run = function(item, ctx)
      for i = 1, CHUNKS do
        sl.sleep(W.audio)
        ctx:emit("chunk" .. i, { seq = i })
      end
    end },
    capture = { from = "video", run = function(item, ctx)
      for i = 1, FRAMES do
        sl.sleep(W.capture)
        ctx:emit("frame" .. i, { seq = i })
      end
    end },
    stt = { from = "audio", workers = STT_WORKERS, run = function(item)
      sl.sleep(W.stt)
      return "text of " .. item.data
    end },
    vlm = { from = "capture", workers = VLM_WORKERS, batch = { size = BATCH, wait = 5 },
      run = function(items)
        sl.sleep(W.vlm)
        return #items .. " frames described", { seq = (items[1].seq - 1) // BATCH + 1 }
      end },
    fusion = sl.join { inputs = { "stt", "vlm" }, gate = "stt", run = function(item, ctx)
      sl.sleep(W.fusion)
      return item.data .. " + " .. #ctx.gate .. " transcript chunks"
    end },
    summary = { from = "fusion", order = true, run = function(item)
      sl.sleep(W.summary)
      return "summary of " .. item.seq
    end },
  },
}

local function run_graph()
  local t0 = sl.now()
  local first_fused
  local job = p:start { inputs = { "lecture.mp4" } }
  job.bus:on(function(ev)
    if not first_fused and ev.event == "item_done" and ev.stage == "fusion" then
      first_fused = sl.now() - t0
    end
  end)
  local s = job:wait()
  assert(#s.dead == 0 and #s.results.summary == NBATCH, "graph run incomplete")
  local busy = {}
  for n, st in pairs(s.stages) do busy[n] = st.busy end
  return sl.now() - t0, first_fused, busy, s
end

-- The batch-serial baseline ---------------------------------------------------------------
-- Same work, same workers per stage, but each stage starts only when the previous one has
-- finished all its items (audio, capture, stt, vlm, fusion, summary).

local function parallel_map(list, workers, fn)
  local out = {}
  local sem = sl.semaphore(workers)
  local g = sl.group()
  for i, x in ipairs(list) do
    sem:acquire()
    g:spawn(function()
      out[i] = fn(x)
      sem:release()
    end)
  end
  g:wait()
  return out
end

local function run_serial()
  local t0 = sl.now()
  local first_fused
  local chunks, frames = {}, {}
  for i = 1, CHUNKS do sl.sleep(W.audio) chunks[i] = "chunk" .. i end
  for i = 1, FRAMES do sl.sleep(W.capture) frames[i] = "frame" .. i end
  local texts = parallel_map(chunks, STT_WORKERS, function(c) sl.sleep(W.stt) return "text of " .. c end)
  local batches = {}
  for i = 1, FRAMES, BATCH do
    local b = {}
    for j = i, math.min(i + BATCH - 1, FRAMES) do b[#b + 1] = frames[j] end
    batches[#batches + 1] = b
  end
  local described = parallel_map(batches, VLM_WORKERS, function(b) sl.sleep(W.vlm) return #b .. " frames described" end)
  local fused = {}
  for i, d in ipairs(described) do
    sl.sleep(W.fusion)
    fused[i] = d .. " + " .. #texts .. " transcript chunks"
    if not first_fused then first_fused = sl.now() - t0 end
  end
  local summaries = {}
  for i = 1, #fused do sl.sleep(W.summary) summaries[i] = "summary of " .. i end
  assert(#summaries == NBATCH)
  return sl.now() - t0, first_fused
end

-- The analytic lower bound -----------------------------------------------------------------
-- For each stage: the earliest it can start + its total work / its workers + the least time
-- its last output needs to get through the rest of the graph. The bound is the largest.
local function lower_bound(w)
  local stt_done = w.audio + CHUNKS * w.stt / STT_WORKERS    -- gate opens
  local bounds = {
    capture = FRAMES * w.capture + w.vlm + w.fusion + w.summary,
    vlm = BATCH * w.capture + NBATCH * w.vlm / VLM_WORKERS + w.fusion + w.summary,
    stt = stt_done + w.fusion + w.summary,
    summary = stt_done + w.fusion + NBATCH * w.summary,
    audio = CHUNKS * w.audio + w.stt + w.fusion + w.summary,
  }
  local best, which = 0, nil
  for n, b in pairs(bounds) do
    if b > best then best, which = b, n end
  end
  return best, which
end

local graph_time, graph_first, busy, summary = run_graph()
local serial_time, serial_first = run_serial()
local lb, busiest = lower_bound(W)
-- the same bound with each stage's measured work per item (timer slop included)
local measured = {
  audio = busy.audio / CHUNKS, capture = busy.capture / FRAMES, stt = busy.stt / CHUNKS,
  vlm = busy.vlm / NBATCH, fusion = busy.fusion / NBATCH, summary = busy.summary / NBATCH,
}
local lbm = lower_bound(measured)

print(string.format("lecture graph: %d frames (capture %.2fs each), %d chunks (stt %.2fs, %d workers), vlm %.2fs per batch of %d (%d workers)",
  FRAMES, W.capture, CHUNKS, W.stt, STT_WORKERS, W.vlm, BATCH, VLM_WORKERS))
print(string.format("stage graph makespan:        %7.3f s", graph_time))
print(string.format("analytic lower bound:        %7.3f s  (busiest: %s)", lb, busiest))
print(string.format("ratio:                       %7.3f    goal <= 1.05", graph_time / lb))
print(string.format("bound with measured work:    %7.3f s  ratio %.3f (timer slop counted as work)", lbm, graph_time / lbm))
print(string.format("batch-serial makespan:       %7.3f s", serial_time))
print(string.format("speedup over batch-serial:   %7.2fx", serial_time / graph_time))
print(string.format("first fused result: graph %.3f s, batch-serial %.3f s (%.1fx sooner)",
  graph_first, serial_first, serial_first / graph_first))
io.stdout:write(require("sluice.app.progress").table(summary))
