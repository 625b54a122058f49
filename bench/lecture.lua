-- bench/lecture.lua: the lecture pipeline (pipelines/lecture.lua, every stage at once) vs
-- the same stages run batch-serially (seed 000's "current" design: each stage starts after
-- the previous one finished every item), on the sample lecture, with remote providers on the
-- fake API server at fixed latencies (STT per chunk, VLM per batch, LLM per call). Both use
-- the same media code, provider objects, worker counts, chunking and batching.
-- Prints both makespans, their ratio, and the time to the first fused segment for both.
--
--   sluice run bench/lecture.lua [STT_LATENCY VLM_LATENCY LLM_LATENCY]   (default 1.0 1.5 0.3)
--   sluice run bench/lecture.lua local     (the local engines instead: pocketsphinx, tesseract,
--                                           the extractive summariser: CPU-bound stages
--                                           sharing the machine's cores)
local sl = require "sluice"
local cjson = require "cjson"
local fusion = require "sluice.blocks.fusion"
local media = require "sluice.media"
local providers = require "sluice.providers"
local stages = require "sluice.blocks.stages"

local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/fakeapi/?.lua;" .. package.path
local fake = require "fakeapi"

local LOCAL = arg[1] == "local"
local LAT = { stt = tonumber(arg[1]) or 1.0, vlm = tonumber(arg[2]) or 1.5, llm = tonumber(arg[3]) or 0.3 }
local CHUNK, OVERLAP, BATCH, STT_W, VLM_W = 8, 1, 2, 2, 2

local function sh(cmd)
  local r = assert(sl.exec({ "/bin/sh", "-c", cmd }))
  assert(r.status == 0, cmd .. ": " .. r.stderr)
  return r.stdout
end

local bin = os.getenv("SLUICE_BIN") or (SRC .. "/build/sluice")
local sample = (os.getenv("SLUICE_BUILD_DIR") or (SRC .. "/build")) .. "/sample"
local r = assert(sl.exec({ bin, "run", SRC .. "/scripts/make_sample.lua", sample, "--only", "lecture" }))
assert(r.status == 0, r.stderr)
local video = sample .. "/lecture.mp4"

local srv = fake.start { latency = 0 }
local function conf()
  if LOCAL then
    return {
      providers = { stt = "sphinx", vlm = "tesseract", llm = "extractive" },
      stages = {
        audio = { params = { seconds = CHUNK, overlap = OVERLAP } },
        stt = { workers = STT_W }, vlm = { workers = VLM_W, batch = { size = BATCH, wait = 30 } },
      },
    }
  end
  return {
    providers = { stt = "openai", vlm = "openai", llm = "openai" },
    openai = { base_url = srv.url .. "/v1", api_key = "sk-bench" },
    stt = { headers = { ["X-Fake-Latency"] = tostring(LAT.stt) } },
    vlm = { headers = { ["X-Fake-Latency"] = tostring(LAT.vlm) } },
    llm = { headers = { ["X-Fake-Latency"] = tostring(LAT.llm) } },
    stages = {
      audio = { params = { seconds = CHUNK, overlap = OVERLAP } },
      stt = { workers = STT_W }, vlm = { workers = VLM_W, batch = { size = BATCH, wait = 30 } },
    },
  }
end

-- The pipeline ----------------------------------------------------------------------------

local function pipelined()
  local out = sh("mktemp -d /tmp/sluice-bench-lecture.XXXXXX"):gsub("%s+$", "")
  local p = sl.load(SRC .. "/pipelines/lecture.lua")
  local bus = require("sluice.runtime.events").new()
  local t0 = sl.now()
  local first_fused, first_final, first = nil, nil, {}
  bus:on(function(ev)
    local t = sl.now() - t0
    if ev.event == "segment" and not first_fused then first_fused = t end
    if ev.event == "fused" and not first_final then first_final = t end
    if not first[ev.event] then first[ev.event] = t end
  end)
  local job = p:start { inputs = { video }, out = out, config = conf(), bus = bus }
  local s = job:wait()
  local makespan = sl.now() - t0
  assert(s.failed == 0, "pipeline failed: " .. cjson.encode(s.dead))
  local fused = #cjson.decode(io.open(out .. "/fused.json"):read("a"))
  sh("rm -rf " .. out)
  print(string.format("pipeline: first speech %.2fs, first frame %.2fs, first description %.2fs, " ..
    "first final fused segment %.2fs", first.speech or -1, first.frame or -1, first.slides or -1, first_final or -1))
  return makespan, first_fused, fused, first_final
end

-- Batch-serial: the same work, one stage after another ---------------------------------------

local function parallel(list, workers, fn)
  local sem = sl.semaphore(workers)
  local g = sl.group()
  local out = {}
  for i, x in ipairs(list) do
    g:spawn(function() sem:with(function() out[i] = fn(x, i) end) end)
  end
  g:wait()
  return out
end

local function serial()
  local out = sh("mktemp -d /tmp/sluice-bench-serial.XXXXXX"):gsub("%s+$", "")
  local c = conf()
  local stt = providers.for_role("stt", c)
  local vlm = providers.for_role("vlm", c)
  local llm = providers.for_role("llm", c)
  local t0 = sl.now()
  -- 1. audio
  local chunks = {}
  for ch in media.audio_chunks(video, { seconds = CHUNK, overlap = OVERLAP, dir = out, prefix = "c" }) do
    chunks[#chunks + 1] = ch
  end
  -- 2. stt
  local results = parallel(chunks, STT_W, function(ch)
    local res = assert(stt:transcribe({ path = ch.path, t0 = ch.t0, t1 = ch.t1 }))
    return { seq = ch.seq, t0 = ch.t0, t1 = ch.t1, segments = res.segments }
  end)
  local merged = fusion.merge_chunks(results, { absolute = true })
  -- 3. capture (first frame + scene changes, as the pipeline's capture stage)
  local frames = {}
  for f in media.frames(video, { times = { 0 }, dir = out, prefix = "first", max_width = 960 }) do frames[1] = f end
  for f in media.frames(video, { scene = 0.02, min_interval = 2, dir = out, prefix = "f", max_width = 960 }) do
    if f.t >= frames[1].t + 2 then frames[#frames + 1] = f end
  end
  -- 4. vlm, in batches
  local batches = {}
  for i = 1, #frames, BATCH do
    local b = {}
    for j = i, math.min(i + BATCH - 1, #frames) do b[#b + 1] = { path = frames[j].path, t = frames[j].t, seq = j } end
    batches[#batches + 1] = b
  end
  local described = parallel(batches, VLM_W, function(b) return assert(vlm:describe(b)) end)
  local vision = {}
  for bi, b in ipairs(batches) do
    for j, img in ipairs(b) do vision[#vision + 1] = { seq = img.seq, t = img.t, text = described[bi][j].text } end
  end
  -- 5. fusion
  local entries = fusion.fuse(fusion.by_slide, merged.segments, vision, { end_time = chunks[#chunks].t1 })
  local first_fused = sl.now() - t0
  -- 6. summary, 7. judge (two workers each, as in the pipeline)
  local sums = parallel(entries, 2, function(e)
    local src = (e.slide_text or "") .. "\n\n" .. e.speech
    return assert(llm:summarize(src, { sentences = 2, stream = function() end })) -- as the pipeline does
  end)
  parallel(entries, 2, function(e, i)
    local list = { e.slide_text ~= "" and e.slide_text or nil }
    if e.speech ~= "" then list[#list + 1] = e.speech end
    if #list > 0 then assert(llm:judge(sums[i], list)) end
  end)
  local makespan = sl.now() - t0
  sh("rm -rf " .. out)
  return makespan, first_fused, #entries
end

local ok, err = pcall(function()
  if LOCAL then
    print(string.format("lecture bench: sample %s, local engines: pocketsphinx (%d s chunks, %d workers), " ..
      "tesseract (batches of %d, %d workers), extractive summaries; %d CPUs", video, CHUNK, STT_W, BATCH,
      VLM_W, require("sluice.blocks.plan").cpu_count()))
  else
    print(string.format("lecture bench: sample %s, STT %.2fs/chunk (%d s chunks, %d workers), " ..
      "VLM %.2fs/batch of %d (%d workers), LLM %.2fs/call", video, LAT.stt, CHUNK, STT_W, LAT.vlm,
      BATCH, VLM_W, LAT.llm))
  end
  local sm, sf, sn = serial()
  local pm, pf, pn, pff = pipelined()
  print(string.format("batch-serial: makespan %.2fs, first fused segment at %.2fs (%d segments)", sm, sf, sn))
  print(string.format("pipeline:     makespan %.2fs, first fused segment at %.2fs (provisional; final %.2fs) (%d segments)",
    pm, pf, pff, pn))
  print(string.format("makespan ratio (serial / pipeline) %.2fx; time to first fused segment %.2fx sooner " ..
    "(first final one %.2fx)", sm / pm, sf / pf, sf / pff))
end)
srv:stop()
if not ok then error(err, 0) end
