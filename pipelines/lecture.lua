-- lecture.lua: a recorded lecture -> transcript, slide notes, a fused timeline, a summary and
-- its judgement (seed 000, all eight steps), every stage running at once.
--
--   sluice run pipelines/lecture.lua VIDEO --out DIR [--set key=value ...]
--
-- audio   cuts the soundtrack into overlapping chunks while it decodes: 5 s, 10 s, then 20 s
--         (params.first: the first words in seconds)                       (step 4)
-- stt     transcribes chunks in parallel (2 workers)                       (step 4)
-- merge   merges the chunks in order as they come: the speech no later chunk can change
-- transcript  merges the chunks in order once all are in; writes transcript.json/.srt/.vtt
-- frames  captures each slide as it is shown (sluice.media.slides: slide-like pictures, changes
--         in the slide region only, a slide shown again recognised); a video without slides
--         gets one frame per `window` seconds and says so (a log line, a no_slides event,
--         window_fallback in fused.json and a line in summary.md)                  (step 4)
-- vlm     describes every `x` captured slides as one request (batch.size = x, or whatever
--         arrived within batch.wait seconds; the first batch 1 slide, then 2, then x: batch.first),
--         under the shared model quota                                            (step 5)
-- fusion  a slide's segment is final once its description is in, its interval closed (the
--         next slide's time) and the speech of that interval final; before that it is sent
--         as provisional (event segment, final = false) as soon as the slide has speech (step 6)
-- summary, judge  run on each fused segment as it appears, independently of fusion; their
--         intermediate results are events (--events FILE, the dashboard)         (step 7)
-- report  writes summary.md and judge.json once everything is in.
-- Retries, bounded queues, graceful stop and the tests are step 8.
--
-- Outputs in DIR: transcript.json, transcript.srt, transcript.vtt, slides/NNNN.jpg,
-- slides.json, fused.json, summary.md, judge.json.
--
-- Providers are local by default (sphinx, tesseract, extractive); remote ones by
-- configuration alone: --set providers.stt=openai --set providers.vlm=gemini ...
-- Other settings: --set stages.audio.params.first=0 (20 s chunks from the start; the default 5
-- gives 5 s, 10 s, then 20 s), --set stages.vlm.batch.first=4 (batches of 4 from the start),
-- --set stages.vlm.batch.size=8, --set stages.stt.workers=4,
-- --set stages.audio.params.seconds=60, --set stages.frames.params.scene=0.2 (capture at
-- scene changes instead of slides), --set stages.frames.params.rate=4 (slide samples a second),
-- --set fusion=by_window --set window=30 (or nearest), --set keep_chunks=true (keep the WAV
-- chunks in DIR/audio).
local sl = require "sluice"
local cjson = require "cjson"
local json = require "sluice.runtime.json"
local fusion = require "sluice.blocks.fusion"
local subtitles = require "sluice.blocks.subtitles"
local stages = require "sluice.blocks.stages"
local text = require "sluice.blocks.text"
local media = require "sluice.media"
local files = require "sluice.runtime.files"

-- Per-job state: the fuser and the summary sections of each key.
local jobs = stages.job_states()
local function state(ctx)
  return stages.job_state(jobs, ctx, function() return { fusers = {}, sections = {} } end)
end

local provider = stages.provider

local function check(v, err, what)
  if v == nil then error(what .. ": " .. tostring(err), 0) end
  return v
end

local write_json = stages.write_json

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function clock(t)
  t = math.floor((t or 0) + 0.5)
  return string.format("%02d:%02d", t // 60, t % 60)
end

-- The fusion policy from the configuration: by_slide (default), by_window (window = seconds)
-- or nearest.
local function policy_of(ctx)
  local kind = ctx.config.fusion or "by_slide"
  if kind == "by_window" then return fusion.by_window { seconds = ctx.config.window or 30 } end
  if kind == "nearest" then return fusion.nearest end
  if kind ~= "by_slide" then error("config 'fusion' must be by_slide, by_window or nearest (got " .. tostring(kind) .. ")", 0) end
  return fusion.by_slide
end

-- The fuser of a key as its speech and slides come (fusion below): it forgets what is final,
-- so a two-hour lecture's does not hold every segment.
local function fuser_for(ctx, key)
  local s = state(ctx)
  local f = s.fusers[key]
  if not f then
    f = fusion.new { policy = policy_of(ctx), forget = true }
    s.fusers[key] = f
  end
  return f
end

-- Emits fused entries as items (seq = slide number or window index + 1) and as events: a
-- `fused` event and a `segment` event with final = true (it replaces the provisional ones).
local function emit_entries(ctx, entries)
  for _, e in ipairs(entries) do
    local seq = e.seq or (e.window + 1)
    ctx:event("fused", { seq = seq, t0 = e.t0, t1 = e.t1, slide_text = e.slide_text, speech = e.speech,
      slide_path = e.slide_path })
    ctx:event("segment", { seq = seq, final = true, t0 = e.t0, t1 = e.t1, slide_text = e.slide_text,
      speech = e.speech, slide_path = e.slide_path })
    ctx:emit(e, { seq = seq, t0 = e.t0, t1 = e.t1 })
  end
end

-- An entry as fused.json has it.
local function fused_entry(e)
  return { seq = e.seq, window = e.window, t0 = e.t0, t1 = e.t1,
    slide_text = e.slide_text, slide_path = e.slide_path, speech = e.speech,
    segments = e.segments, slides = e.slides, missing = e.missing, speech_only = e.speech_only,
    same_as = e.same_as, window_fallback = e.window_fallback }
end

-- fused.json's entries, in order.
local function fused_json(list)
  local entries = {}
  for i, e in ipairs(list) do entries[i] = fused_entry(e) end
  table.sort(entries, function(a, b) return (a.seq or a.window) < (b.seq or b.window) end)
  return entries
end

-- fused.json as it grows (fusion below; fusion_end writes it whole at the end): the final
-- entries in order, from the first, each added once the ones before it are (a slide whose
-- description is late holds the later ones back). Each write makes the file its old bytes,
-- less the closing bracket, plus the new entries (files.extend), so nothing written is held;
-- as that copies the file, a write waits 20 times as long as the last one took (at least 2 s):
-- at most 5% of the time goes to it.
local function grow_fused(ctx, g, entries)
  for _, e in ipairs(entries) do g.ready[e.seq or (e.window + 1)] = e end
  if not g.ready[g.next] or sl.now() < g.next_write then return end
  local parts = {}
  while g.ready[g.next] do
    parts[#parts + 1] = json.encode(fused_entry(g.ready[g.next]))
    g.ready[g.next] = nil
    g.next = g.next + 1
  end
  local t0 = sl.now()
  local bytes = (g.size > 0 and "," or "[") .. table.concat(parts, ",") .. "]"
  local ok, err = files.extend(g.path, g.size, bytes)
  if not ok then
    ctx:log("fused.json not grown: " .. tostring(err))
    g.next_write = math.huge
    return
  end
  g.size = g.size + #bytes - 1
  g.next_write = sl.now() + math.max(2, 20 * (sl.now() - t0))
end

-- Provisional segments (events only: summary and the files take the final ones): a slide's
-- interval with the speech heard in it so far, sent again whenever it changed.
local function emit_provisional(ctx, f)
  for _, e in ipairs(f:provisional()) do
    ctx:event("segment", { seq = e.seq, final = false, t0 = e.t0, t1 = e.t1, slide_text = e.slide_text,
      speech = e.speech, slide_path = e.slide_path })
  end
end

local function title_of(e)
  -- a window of a video without slides: its frame's text is whatever the camera saw
  if e.window_fallback then return string.format("%s-%s", clock(e.t0), clock(e.t1)) end
  local first = (e.slide_text or ""):match("^%s*([^\n]+)")
  if first and first:find("%S") then return first end
  if e.speech_only then return "(speech)" end
  return e.missing and "(slide not described)" or string.format("%s-%s", clock(e.t0), clock(e.t1))
end

return sl.pipeline "lecture" {
  description = "lecture video -> transcript, slides, fused timeline, summary, judge",
  defaults = {
    providers = { stt = "sphinx", vlm = "tesseract", llm = "extractive" },
    sphinx = { workers = 2 },
    tesseract = { workers = 2 },
    fusion = "by_slide",
    window = 30,
  },
  settings = { keep_chunks = "keep the WAV chunks in DIR/audio (default: removed once transcribed)" },
  inputs = "files",
  sources = { video = sl.inputs() },
  limits = { model_quota = sl.semaphore(6) },
  stages = {
    -- a 5 s first chunk, then 10, then 20: the first words in seconds (params.first = 0: all 20)
    audio = sl.audio_chunks { from = "video", seconds = 20, overlap = 2, first = 5 },

    stt = {
      from = "audio", workers = 2, retry = { attempts = 3 }, queue = 4,
      run = function(env, ctx)
        local c = env.data
        local r, err = provider(ctx, "stt"):transcribe({ path = c.path, t0 = c.t0, t1 = c.t1 })
        check(r, err, string.format("stt chunk %d (%.1f-%.1f s)", c.seq, c.t0, c.t1))
        ctx:event("speech", { seq = c.seq, t0 = c.t0, t1 = c.t1, text = stages.text_of(r) })
        return { seq = c.seq, t0 = c.t0, t1 = c.t1, path = c.path, segments = r.segments or {}, text = r.text,
          provider = r.provider, source = c.source }
      end,
    },

    -- The transcript as it grows: chunks merged in order as they come (fusion.chunk_merger);
    -- each output carries the segments no later chunk can change (final, from `first` on,
    -- nothing later before `upto`) and the last chunk's as they stand (tail).
    merge = {
      from = "stt", workers = 1, memo = false,
      run = function(env, ctx)
        local s = state(ctx)
        s.speech = s.speech or {}
        local k = s.speech[env.key]
        if not k then
          k = { merger = fusion.chunk_merger { absolute = true, forget_taken = true }, pending = {}, next = 1 }
          s.speech[env.key] = k
        end
        local c = env.data
        k.pending[c.seq] = c
        -- One output per chunk, when it is merged (in seq order): what it holds depends on the
        -- chunks up to it only, not on the order they were transcribed in (the transcript's
        -- resume key is made from these outputs).
        local outs = {}
        while k.pending[k.next] do
          local ch = k.pending[k.next]
          k.merger:add(ch)
          k.pending[k.next] = nil
          k.next = k.next + 1
          local out = { chunk = ch, seq = ch.seq }
          out.final, out.first, out.upto = k.merger:take_final()
          out.tail, out.tail_first = k.merger:tail()
          outs[#outs + 1] = out
          -- The subtitles grow as the speech becomes final (transcript writes the whole at the
          -- end), only where there is no transcript yet: a run that resumes (or redoes) a job
          -- has its finished files, which the job store recorded; they stay until replaced whole.
          if k.grow == nil then
            local dir = stages.out_dir(ctx, env.key)
            k.grow = not exists(dir .. "/transcript.srt")
            if k.grow then
              k.srt, k.vtt = subtitles.writer(dir .. "/transcript.srt"), subtitles.writer(dir .. "/transcript.vtt")
            end
          end
          if k.grow and #out.final > 0 then -- (previews: written by C, not this unit's outputs)
            assert(k.srt:add(out.final))
            assert(k.vtt:add(out.final))
          end
        end
        if #outs > 0 then
          -- how much of the lecture is transcribed, for the progress view's ETA
          if k.duration == nil then
            local info = c.source and media.probe(c.source)
            k.duration = info and info.duration or false
          end
          if k.duration then ctx:event("progress", { done = k.merger.prev.t1, total = k.duration, unit = "s" }) end
        end
        for _, out in ipairs(outs) do
          ctx:emit(out, { seq = out.seq, t0 = out.chunk.t0, t1 = out.chunk.t1 })
        end
      end,
    },

    transcript = {
      from = "merge", collect = true,
      -- held until the last chunk: the chunk, not the merged speech fusion took from it
      keep = function(d) return { chunk = d.chunk } end,
      run = function(items, ctx)
        local chunks, t1 = {}, 0
        for i, env in ipairs(items) do
          chunks[i] = env.data.chunk
          if chunks[i].t1 > t1 then t1 = chunks[i].t1 end
        end
        table.sort(chunks, function(a, b) return a.seq < b.seq end)
        local merged = fusion.merge_chunks(chunks, { absolute = true })
        -- who spoke (diarizing models) and how the times were found ("chunk": per short chunk)
        stages.carry_segment_fields(merged.segments, chunks, { "speaker", "timing" })
        local key = items[1].key
        local dir = stages.out_dir(ctx, key)
        local segs = {}
        for i, s in ipairs(merged.segments) do
          segs[i] = { start = s.start, ["end"] = s["end"], text = s.text, words = s.words,
            speaker = s.speaker, timing = s.timing }
        end
        write_json(dir .. "/transcript.json", { duration = t1, text = merged.text, segments = segs,
          boundaries = merged.boundaries })
        assert(subtitles.write_file(dir .. "/transcript.srt", segs))
        assert(subtitles.write_file(dir .. "/transcript.vtt", segs))
        if not ctx.config.keep_chunks then -- the WAV chunks are only needed until now
          for _, c in ipairs(chunks) do if c.path then os.remove(c.path) end end
        end
        ctx:event("transcript", { segments = #segs, words = #text.words(merged.text), duration = t1 })
        return { segments = segs, text = merged.text, duration = t1 }
      end,
    },

    -- An audio-only recording has no frames: the lecture is then fused and summarised from
    -- its speech alone (fusion_end), and says so.
    frames = sl.capture { from = "video", slides = true, min_interval = 2, max_width = 960, dir = "slides",
      no_video = "skip" },

    vlm = {
      -- the first batch is one slide, then 2, then 4 (batch.first): the first description sooner
      from = "frames", batch = { size = 4, wait = 5, first = 1 }, workers = 2, limits = { "model_quota" },
      retry = { attempts = 4, backoff = 0.5 },
      run = function(items, ctx)
        -- a slide shown again is not described again: fusion gives it its first showing's text
        local images, at = {}, {}
        for i, env in ipairs(items) do
          if not env.data.same_as then
            images[#images + 1] = { path = env.data.path, t = env.data.t }
            at[i] = #images
          end
        end
        local out = {}
        if #images > 0 then
          local err
          out, err = provider(ctx, "vlm"):describe(images)
          check(out, err, string.format("vlm batch of %d slides (%.1f-%.1f s)", #images,
            items[1].data.t, items[#items].data.t))
        end
        local slides = {}
        for i, env in ipairs(items) do
          if env.data.same_as then
            slides[i] = { seq = env.data.seq, t = env.data.t, path = env.data.path, same_as = env.data.same_as,
              slide = env.data.slide }
            goto next
          end
          local d = out[at[i]] or {}
          if d.error then -- the others in the batch are kept; this slide stays undescribed
            ctx:log(string.format("slide %d at %.1f s not described: %s", env.data.seq, env.data.t, d.error))
          end
          slides[i] = { seq = env.data.seq, t = env.data.t, path = env.data.path,
            text = d.text or d.description or "", confidence = d.confidence, provider = d.provider,
            slide = env.data.slide, window = env.data.window }
          ::next::
        end
        ctx:event("slides", { count = #slides, first = slides[1].seq, last = slides[#slides].seq,
          slides = slides })
        return { slides = slides }
      end,
    },

    -- Final entries as soon as their interval is closed (the next slide known) and its speech
    -- is final (fusion.chunk_merger); provisional ones before that, as soon as a slide has
    -- some speech. The whole transcript (transcript) makes every closed interval final.
    fusion = sl.join {
      inputs = { "merge", "transcript", "frames", "vlm" }, workers = 1, memo = false,
      run = function(env, ctx)
        local f = fuser_for(ctx, env.key)
        local d = env.data
        local new = {}
        if env.stage == "merge" then
          if not f.complete then
            new = f:add_speech(d.final, d.first, d.upto)
            f:set_tentative(d.tail, d.tail_first)
          end
        elseif env.stage == "transcript" then
          f.end_time = d.duration
          new = f:set_speech(d.segments)
        elseif env.stage == "frames" then
          new = f:add_times { { seq = d.seq, t = d.t } }
        elseif env.stage == "vlm" then
          new = f:add_vision(d.slides)
        end
        emit_entries(ctx, new)
        -- fused.json grows as segments become final, where there is none yet (as the
        -- subtitles above); after the events, which a file write on the pool must not delay
        if f.grow == nil then
          local path = stages.out_dir(ctx, env.key) .. "/fused.json"
          f.grow = not exists(path) and { path = path, ready = {}, next = 1, size = 0, next_write = 0 }
        end
        if f.grow then grow_fused(ctx, f.grow, new) end
        emit_provisional(ctx, f)
      end,
    },

    -- Once fusion has seen every batch of a key: the last slide, slides whose batch failed,
    -- and the files that need all of them. It rebuilds the timeline from its inputs (so a
    -- resumed run, where fusion's outputs came from the job store, gets it right too) and
    -- emits only the entries fusion did not.
    fusion_end = {
      from = { "transcript", "frames", "vlm", "fusion" }, collect = true,
      -- held until the end: of fusion's entries only which were sent (their seq), of a frame
      -- its time; the transcript and the descriptions whole
      keep = function(d, from)
        if from == "fusion" then return true end
        if from == "frames" then return { seq = d.seq, t = d.t } end
        return d
      end,
      run = function(items, ctx)
        local key = items[1].key
        local nframes = 0
        for _, env in ipairs(items) do
          if env.stage == "frames" then nframes = nframes + 1 end
        end
        -- No frames at all (an audio-only recording): speech-only entries, one per window.
        local speech_only = nframes == 0
        local f = fusion.new { policy = speech_only and fusion.by_window { seconds = ctx.config.window or 30 }
          or policy_of(ctx) }
        local done, tr = {}, nil
        for _, env in ipairs(items) do
          if env.stage == "transcript" then tr = env.data
          elseif env.stage == "frames" then f:add_times { { seq = env.data.seq, t = env.data.t } }
          elseif env.stage == "vlm" then f:add_vision(env.data.slides)
          elseif env.stage == "fusion" then done[env.seq] = true end
        end
        if not tr then
          -- No transcript: the video has no audio, or every chunk failed (those failures are
          -- reported on their own). The slides are still fused and summarised, without speech.
          ctx:log("no transcript for " .. tostring(key) .. ": slides without speech")
          tr = { segments = {} }
        end
        f.end_time = tr.duration
        f:set_speech(tr.segments)
        f:finish()
        local rest = {}
        for _, e in ipairs(f:entries()) do
          e.speech_only = speech_only or nil
          if not done[e.seq or (e.window + 1)] then rest[#rest + 1] = e end
        end
        emit_entries(ctx, rest)
        local dir = stages.out_dir(ctx, key)
        local slides = {}
        local seqs = {}
        for seq in pairs(f.times) do seqs[#seqs + 1] = seq end
        table.sort(seqs)
        for _, seq in ipairs(seqs) do
          local it = f.items[seq]
          slides[#slides + 1] = { seq = seq, t = f.times[seq], path = it and it.path,
            text = it and it.text, provider = it and it.provider, missing = (not it) or nil,
            slide = it and it.slide, same_as = it and it.same_as, window = it and it.window }
        end
        write_json(dir .. "/slides.json", slides)
        write_json(dir .. "/fused.json", fused_json(f:entries()))
      end,
    },

    summary = {
      from = { "fusion", "fusion_end" }, workers = 2, limits = { "model_quota" },
      retry = { attempts = 3 },
      run = function(env, ctx)
        local e = env.data
        local source = (e.slide_text and e.slide_text ~= "" and (e.slide_text .. "\n\n") or "") .. (e.speech or "")
        local s, served
        if source:find("%S") then
          local info
          -- Remote models stream their reply: each piece is an event a front end can show.
          s, info = provider(ctx, "llm"):summarize(source, { sentences = 2,
            stream = function(piece) ctx:event("summary_delta", { seq = env.seq, text = piece }) end })
          check(s, info, "summary of segment " .. tostring(env.seq))
          served = type(info) == "table" and info.provider or nil
        else
          s = ""
        end
        if type(s) == "table" then s = s.text or s.summary or "" end
        ctx:event("summary", { seq = env.seq, t0 = e.t0, t1 = e.t1, text = s })
        return { seq = env.seq, t0 = e.t0, t1 = e.t1, title = title_of(e), summary = s,
          slide_text = e.slide_text, speech = e.speech, speech_only = e.speech_only,
          same_as = e.same_as, window_fallback = e.window_fallback, provider = served }
      end,
    },

    judge = {
      from = "summary", workers = 2, limits = { "model_quota" }, retry = { attempts = 3 },
      run = function(env, ctx)
        local s = env.data
        local sources = {}
        if s.slide_text and s.slide_text:find("%S") then sources[#sources + 1] = s.slide_text end
        if s.speech and s.speech:find("%S") then sources[#sources + 1] = s.speech end
        if #sources == 0 or not s.summary:find("%S") then
          ctx:event("judge", { seq = s.seq, score = cjson.null })
          return { seq = s.seq, t0 = s.t0, t1 = s.t1, skipped = "nothing to judge" }
        end
        local j, err = provider(ctx, "llm"):judge(s.summary, sources)
        check(j, err, "judge of segment " .. tostring(env.seq))
        ctx:event("judge", { seq = s.seq, score = j.score })
        return { seq = s.seq, t0 = s.t0, t1 = s.t1, score = j.score, reasons = j.reasons,
          coverage = j.coverage, provider = j.provider }
      end,
    },

    report = {
      from = { "summary", "judge" }, collect = true,
      -- held until the end: a summary without the speech and slide text it was made from
      keep = function(d, from)
        if from ~= "summary" then return d end
        return { seq = d.seq, t0 = d.t0, t1 = d.t1, title = d.title, summary = d.summary,
          speech_only = d.speech_only, window_fallback = d.window_fallback }
      end,
      run = function(items, ctx)
        local key = items[1].key
        local sums, judged = {}, {}
        for _, env in ipairs(items) do
          if env.stage == "summary" then sums[#sums + 1] = env.data else judged[#judged + 1] = env.data end
        end
        table.sort(sums, function(a, b) return a.seq < b.seq end)
        table.sort(judged, function(a, b) return a.seq < b.seq end)
        local md = { "# Lecture summary: " .. tostring(key), "" }
        if sums[1] and sums[1].speech_only then
          md[#md + 1] = "_The recording has no video: this summary is of the speech alone._"
          md[#md + 1] = ""
        end
        local windows = sums[1] and sums[1].window_fallback
        if windows then
          md[#md + 1] = "_No slides were found in the video: the sections are fixed windows of its time._"
          md[#md + 1] = ""
        end
        for _, s in ipairs(sums) do
          md[#md + 1] = string.format("## %s-%s %s", clock(s.t0), clock(s.t1), s.title)
          md[#md + 1] = ""
          md[#md + 1] = (s.summary ~= "" and s.summary) or "_(nothing was said)_"
          md[#md + 1] = ""
        end
        local total, n = 0, 0
        for _, j in ipairs(judged) do
          if type(j.score) == "number" then total, n = total + j.score, n + 1 end
        end
        local dir = stages.out_dir(ctx, key)
        assert(stages.write_file(dir .. "/summary.md", table.concat(md, "\n")))
        write_json(dir .. "/judge.json", { score = n > 0 and total / n or cjson.null,
          segments = judged })
        return { sections = #sums, score = n > 0 and total / n or nil,
          sections_by = windows and "window" or (sums[1] and sums[1].speech_only and "speech") or "slide" }
      end,
    },
  },
}
