-- lecture.lua: a recorded lecture -> transcript, slide notes, a fused timeline, a summary and
-- its judgement (seed 000, all eight steps), every stage running at once.
--
--   sluice run pipelines/lecture.lua VIDEO --out DIR [--set key=value ...]
--
-- audio   cuts the soundtrack into overlapping chunks while it decodes: 5 s, 10 s, then 20 s
--         (params.first: the first words in seconds)                       (step 4)
-- stt     transcribes chunks in parallel (2 workers)                       (step 4)
-- merge   merges the chunks in order as they come: the speech no later chunk can change;
--         transcript.json/.srt/.vtt grow with it
-- transcript  once all chunks are in: the rest of the speech; closes the three files
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
-- sections  grows summary.md and judge.json as the summaries and judgements come (in order);
--         report closes them (the mean score) once everything is in.
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
local grow = require "sluice.blocks.grow"

-- Per-job state: the fuser and the report of each key.
local jobs = stages.job_states()
local function state(ctx)
  return stages.job_state(jobs, ctx, function() return { fusers = {}, reports = {}, speech = {} } end)
end

local provider = stages.provider

local function check(v, err, what)
  if v == nil then error(what .. ": " .. tostring(err), 0) end
  return v
end

local write_json = stages.write_json

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

-- fused.json as it grows: the final entries in seq order (sluice.blocks.grow), each added
-- once the ones before it are (a slide whose description is late holds the later ones back);
-- fusion_end adds the last ones and closes it. Nothing written is held.
local function fused_file(ctx, key, f)
  if not f.file then
    f.file = grow.new { path = stages.out_dir(ctx, key) .. "/fused.json", open = "[", sep = ",", close = "]" }
  end
  return f.file
end

-- A growing file's write that failed is logged once (the stage that finishes the file fails
-- with it: the file is not whole) and the work goes on.
local function log_failed(ctx, file, ok, err)
  if not ok and not file.logged then
    file.logged = true
    ctx:log(err)
  end
end

-- Adds part seq to a growing file (sluice.blocks.grow).
local function put_part(ctx, file, seq, text) log_failed(ctx, file, file:put(seq, text)) end

local function grow_fused(ctx, file, entries)
  for _, e in ipairs(entries) do put_part(ctx, file, e.seq or (e.window + 1), json.encode(fused_entry(e))) end
end

-- Provisional segments (events only: summary and the files take the final ones): a slide's
-- interval with the speech heard in it so far, sent again whenever it changed.
local function emit_provisional(ctx, f)
  for _, e in ipairs(f:provisional()) do
    ctx:event("segment", { seq = e.seq, final = false, t0 = e.t0, t1 = e.t1, slide_text = e.slide_text,
      speech = e.speech, slide_path = e.slide_path })
  end
end

-- The transcript of a key as it is transcribed (merge, then transcript): the chunks merged in
-- seq order (fusion.chunk_merger; who spoke and how the times were found carried onto each
-- segment), transcript.json/.srt/.vtt grown with the final segments (sluice.blocks.grow; where
-- they exist, a run that redoes the job, in NAME.part until closed). Holds the chunks not yet
-- final and, for transcript.json's end, the segments' texts and the chunk boundaries.
local function speech_of(ctx, key)
  local all = state(ctx).speech
  local k = all[key]
  if not k then
    local dir = stages.out_dir(ctx, key)
    k = { merger = fusion.chunk_merger { absolute = true, forget_taken = true, carry = { "speaker", "timing" } },
      pending = {}, next = 1, t1 = 0, words = 0, texts = {}, boundaries = {}, wavs = {},
      json = grow.new { path = dir .. "/transcript.json", open = '{"segments":[', sep = ",", close = "]}" },
      srt = subtitles.writer(dir .. "/transcript.srt"), vtt = subtitles.writer(dir .. "/transcript.vtt") }
    all[key] = k
  end
  return k
end

-- Merges chunk ch (the next in order). Its WAV file goes at the end (transcript): the audio
-- stage, still cutting, records its files when it ends.
local function merge_chunk(k, ch)
  k.merger:add(ch)
  if ch.t1 > k.t1 then k.t1 = ch.t1 end
  if ch.path then k.wavs[#k.wavs + 1] = ch.path end
end

-- Takes the segments no later chunk can change (all of them when `all`) into the three files;
-- returns them, the first one's number and the speech's lower bound still to come.
local function take_final(ctx, k, all)
  local segs, first, upto, bounds = k.merger:take_final(all)
  for i, seg in ipairs(segs) do
    k.texts[#k.texts + 1] = seg.text
    k.words = k.words + #text.words(seg.text)
    put_part(ctx, k.json, first + i - 1, json.encode(seg))
  end
  for _, b in ipairs(bounds) do k.boundaries[#k.boundaries + 1] = b end
  if #segs > 0 then
    log_failed(ctx, k.srt, k.srt:add(segs))
    log_failed(ctx, k.vtt, k.vtt:add(segs))
  end
  return segs, first, upto
end

-- While no frame has come, fusion keeps the final speech (the first frame lets it go): an
-- audio-only recording's windows are made from it (fusion_end); a video's first frame comes
-- from its start.
local function keep_heard(f, segs)
  if #f.sorted > 0 then return end
  f.heard = f.heard or {}
  for _, seg in ipairs(segs) do f.heard[#f.heard + 1] = seg end
end

local function title_of(e)
  -- a window of a video without slides: its frame's text is whatever the camera saw
  if e.window_fallback then return string.format("%s-%s", clock(e.t0), clock(e.t1)) end
  local first = (e.slide_text or ""):match("^%s*([^\n]+)")
  if first and first:find("%S") then return first end
  if e.speech_only then return "(speech)" end
  return e.missing and "(slide not described)" or string.format("%s-%s", clock(e.t0), clock(e.t1))
end

-- summary.md's head: the title, and what the sections are when they are not slides (the
-- first summary says: every one is alike).
local function summary_head(key, first)
  local head = "# Lecture summary: " .. tostring(key) .. "\n"
  if first and first.speech_only then
    head = head .. "\n_The recording has no video: this summary is of the speech alone._\n"
  elseif first and first.window_fallback then
    head = head .. "\n_No slides were found in the video: the sections are fixed windows of its time._\n"
  end
  return head
end

-- summary.md as it grows, made when the first summary (or, with none, report) comes.
local function summary_file(ctx, r, key, first)
  if not r.md then r.md = grow.new { path = stages.out_dir(ctx, key) .. "/summary.md", open = summary_head(key, first) } end
  return r.md
end

-- The report of a key as its sections come: summary.md (made with the first summary),
-- judge.json, and the judgements' total.
local function report_of(ctx, key)
  local reports = state(ctx).reports
  local r = reports[key]
  if not r then
    r = { sections = 0, total = 0, n = 0,
      judge = grow.new { path = stages.out_dir(ctx, key) .. "/judge.json", open = '{"segments":[', sep = ",",
        close = "]}" } }
    reports[key] = r
  end
  return r
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

    -- The transcript as it grows: chunks merged in order as they come (speech_of); each
    -- output carries the segments no later chunk can change (final, from `first` on, nothing
    -- later before `upto`) and the last chunk's as they stand (tail).
    merge = {
      from = "stt", workers = 1, memo = false,
      run = function(env, ctx)
        local k = speech_of(ctx, env.key)
        local c = env.data
        k.pending[c.seq] = c
        -- One output per chunk, when it is merged (in seq order): what it holds depends on the
        -- chunks up to it only, not on the order they were transcribed in.
        local outs = {}
        while k.pending[k.next] do
          local ch = k.pending[k.next]
          k.pending[k.next] = nil
          k.next = k.next + 1
          merge_chunk(k, ch)
          local out = { seq = ch.seq, t0 = ch.t0, t1 = ch.t1 }
          out.final, out.first, out.upto = take_final(ctx, k)
          out.tail, out.tail_first = k.merger:tail()
          outs[#outs + 1] = out
        end
        if #outs > 0 then
          -- how much of the lecture is transcribed, for the progress view's ETA
          if k.duration == nil then
            local info = c.source and media.probe(c.source)
            k.duration = info and info.duration or false
          end
          if k.duration then ctx:event("progress", { done = k.t1, total = k.duration, unit = "s" }) end
        end
        for _, out in ipairs(outs) do
          ctx:emit(out, { seq = out.seq, t0 = out.t0, t1 = out.t1 })
        end
      end,
    },

    -- Once every chunk is in: the chunks after one whose transcription failed (they waited in
    -- merge for it) merged, the gap joined as chunks cut in a pause are; the rest of the speech
    -- taken (to fusion); transcript.json (its text, duration and the chunk boundaries last),
    -- .srt and .vtt closed. It holds none of its inputs (merge's state has what is left); it
    -- reads stt too, so it runs when the first chunk failed (merge then had nothing to hand on).
    transcript = {
      from = { "stt", "merge" }, collect = true, memo = false,
      keep = function() return nil end,
      run = function(_, ctx)
        local key = ctx:key()
        local k = speech_of(ctx, key)
        local late = {}
        for seq in pairs(k.pending) do late[#late + 1] = seq end
        table.sort(late)
        for _, seq in ipairs(late) do merge_chunk(k, k.pending[seq]) end
        k.pending = {}
        local final, first = take_final(ctx, k, true)
        k.json.close = "]," .. json.encode({ text = table.concat(k.texts, " "), duration = k.t1,
          boundaries = k.boundaries }):sub(2)
        local errs = {}
        for _, file in ipairs { k.json, k.srt, k.vtt } do
          local ok, err = file:finish()
          if not ok then errs[#errs + 1] = err end
        end
        state(ctx).speech[key] = nil
        if not ctx.config.keep_chunks then -- the WAV chunks are only needed until now
          for _, path in ipairs(k.wavs) do os.remove(path) end
        end
        ctx:event("transcript", { segments = #k.texts, words = k.words, duration = k.t1 })
        -- fusion has the rest of the speech even when a file could not be written (the stage
        -- still fails, naming it)
        ctx:emit({ final = final, first = first, duration = k.t1, segments = #k.texts })
        if #errs > 0 then error(table.concat(errs, "; "), 0) end
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
            keep_heard(f, d.final)
          end
        elseif env.stage == "transcript" then
          f.end_time = d.duration
          new = f:add_speech(d.final, d.first)
          keep_heard(f, d.final)
          for _, e in ipairs(f:end_speech()) do new[#new + 1] = e end
        elseif env.stage == "frames" then
          new = f:add_times { { seq = d.seq, t = d.t } }
          f.heard = nil
        elseif env.stage == "vlm" then
          new = f:add_vision(d.slides)
        end
        emit_entries(ctx, new)
        -- fused.json grows as segments become final; after the events, which a file write on
        -- the pool must not delay
        grow_fused(ctx, fused_file(ctx, env.key, f), new)
        emit_provisional(ctx, f)
      end,
    },

    -- Once fusion has seen every input of a key: the last slide, slides whose batch failed,
    -- and the files that need all of them. It finishes fusion's fuser (the job's state: fusion
    -- runs in every run, a resumed one too, memo = false), so it holds none of its inputs; a
    -- recording without frames is fused from the transcript alone, one entry per window.
    fusion_end = {
      from = { "transcript", "frames", "vlm", "fusion" }, collect = true, memo = false,
      keep = function() return nil end, -- (fusion has them all)
      run = function(_, ctx)
        local key = ctx:key()
        local f = fuser_for(ctx, key)
        local rest = {}
        if not f.complete then
          -- No transcript: the video has no audio, or every chunk failed (those failures are
          -- reported on their own; so is a transcript whose files could not be written: the
          -- speech merged before is kept). The slides are still fused and summarised.
          if not f:has_speech() then ctx:log("no transcript for " .. tostring(key) .. ": slides without speech") end
          rest = f:end_speech()
        end
        if #f.sorted == 0 then
          -- No frames at all (an audio-only recording): speech-only entries, one per window.
          local whole = fusion.new { policy = fusion.by_window { seconds = ctx.config.window or 30 },
            forget = true, end_time = f.end_time }
          whole:set_speech(f.heard or {})
          rest = whole:finish()
          for _, e in ipairs(rest) do e.speech_only = true end
        else
          for _, e in ipairs(f:finish()) do rest[#rest + 1] = e end
        end
        f.heard = nil
        emit_entries(ctx, rest)
        local file = fused_file(ctx, key, f)
        grow_fused(ctx, file, rest)
        local fok, ferr = file:finish()
        local slides = {}
        for _, seq in ipairs(f.sorted) do
          local it = f.items[seq]
          slides[#slides + 1] = { seq = seq, t = f.times[seq], path = it and it.path,
            text = it and it.text, provider = it and it.provider, missing = (not it) or nil,
            slide = it and it.slide, same_as = it and it.same_as, window = it and it.window }
        end
        write_json(stages.out_dir(ctx, key) .. "/slides.json", slides)
        if not fok then error(ferr, 0) end
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

    -- summary.md and judge.json as the summaries and judgements come (in segment order,
    -- sluice.blocks.grow); report closes them once everything is in. Nothing is held but the
    -- judgements' running total.
    sections = {
      from = { "summary", "judge" }, workers = 1, memo = false,
      run = function(env, ctx)
        local r = report_of(ctx, env.key)
        local d = env.data
        if env.stage == "summary" then
          r.sections = r.sections + 1
          r.by = r.by or (d.window_fallback and "window") or (d.speech_only and "speech") or "slide"
          put_part(ctx, summary_file(ctx, r, env.key, d), d.seq, string.format("\n## %s-%s %s\n\n%s\n",
            clock(d.t0), clock(d.t1), d.title, (d.summary ~= "" and d.summary) or "_(nothing was said)_"))
        else
          if type(d.score) == "number" then r.total, r.n = r.total + d.score, r.n + 1 end
          put_part(ctx, r.judge, d.seq, json.encode(d))
        end
        return true
      end,
    },

    report = {
      from = "sections", collect = true, memo = false,
      keep = function() return nil end, -- (it needs none of them: sections wrote them)
      run = function(_, ctx)
        local key = ctx:key()
        local r = report_of(ctx, key)
        local mok, merr = summary_file(ctx, r, key):finish()
        local score = r.n > 0 and r.total / r.n or nil
        r.judge.close = '],"score":' .. json.encode(score or cjson.null) .. "}"
        local jok, jerr = r.judge:finish()
        state(ctx).reports[key] = nil
        if not (mok and jok) then error(table.concat({ merr, jerr }, "; "), 0) end
        return { sections = r.sections, score = score, sections_by = r.by or "slide" }
      end,
    },
  },
}
