-- podcast.lua: podcast feeds or audio/video files -> transcripts and metadata per episode
-- (seeds 004 and 001): a true pipeline, download -> transcription -> metadata, each stage
-- with its own workers, all busy at once.
--
--   sluice run pipelines/podcast.lua FEED_OR_MEDIA... --out DIR [--set key=value ...]
--
-- Inputs: RSS/Atom feeds (URL or file; one item per episode with an enclosure), media URLs
-- or paths, in any mix.
-- download    4 workers; streams each episode to DIR/downloads/<episode>.<ext>, skips what
--             is already there, resumes partial files (.part) with a Range request
-- audio       cuts each episode into chunks while it decodes, in a pause (0.2 s) within
--             3 s of a length that spreads the audio still to transcribe (every episode's, the
--             expected ones too) over the CPUs: 30-300 s (sluice.blocks.plan;
--             --set stages.audio.params.seconds=N fixes it). Chunks cut in a pause meet;
--             elsewhere they overlap by 5 s (nothing is transcribed twice at a pause)
-- stt         with auto_workers (default) the count follows the whole queue (every episode's
--             queued and expected chunks), the engine's CPU and memory cost and the CPUs, and
--             is decided again as episodes arrive; the progress view and stats say why ("stt
--             2 workers: 2 CPUs, sphinx"). --set stages.stt.workers=N fixes it. A local
--             engine gets as many decoders as the stage has workers (unless sphinx.workers
--             says fewer: then the reason says so).
-- transcript  merges an episode's chunks in order, removing the words both sides of an
--             overlap heard; writes DIR/<episode>/transcript.json and .srt
-- metadata    N workers (4): title, summary, keywords, chapters -> DIR/<episode>/metadata.json
-- index       DIR/index.json for the run: episodes, failed (stage, key, error: a feed that
--             cannot be read too), skipped (feed entries without an enclosure).
-- Providers: --set providers.stt=openai|clova, --set providers.llm=openai|gemini.
local sl = require "sluice"
local cjson = require "cjson"
local fusion = require "sluice.blocks.fusion"
local subtitles = require "sluice.blocks.subtitles"
local stages = require "sluice.blocks.stages"
local text = require "sluice.blocks.text"
local plan = require "sluice.blocks.plan"

local jobs = stages.job_states()
local function state(ctx)
  return stages.job_state(jobs, ctx, function() return { ledger = plan.ledger() } end)
end

local provider = stages.provider

local write_json = stages.write_json

local function episode_dir(ctx, key) return stages.out_dir(ctx, key, "{key}") end

local function user_set_workers(ctx, stage)
  local st = type(ctx.config.stages) == "table" and ctx.config.stages[stage]
  return type(st) == "table" and st.workers ~= nil
end

local OVERLAP, WINDOW, PAUSE = 5, 6, 0.2

local function stt_engine(ctx)
  local p = ctx.config.providers
  local name = type(p) == "table" and p.stt or "sphinx"
  return type(name) == "string" and name or "chain"
end

-- The slots the STT stage's units are spread over: the CPUs for a local engine, else the
-- most workers the rule gives a remote one.
local function stt_slots(ctx)
  local eng = plan.engine(stt_engine(ctx))
  return eng.cpu and plan.cpu_count() // eng.cpu or 10
end

-- The chunk length for an episode of `duration` seconds, from all the audio still to be
-- transcribed (sluice.blocks.plan.chunk_seconds; `pending`: that amount, when the caller has it).
local function chunk_plan(ctx, duration, pending)
  return plan.chunk_seconds { pending = pending or state(ctx).ledger:pending(), duration = duration,
    cpus = stt_slots(ctx), overlap = OVERLAP, window = WINDOW }
end

-- Decides the STT stage's workers from the whole queue: every episode's queued and expected
-- chunks, the engine and the machine. Called whenever work arrives; says why.
local function decide_stt(ctx)
  if not ctx.config.auto_workers or user_set_workers(ctx, "stt") then return end
  local s = state(ctx)
  -- the pending audio once, not once per episode: with thousands of episodes in a feed the
  -- per-episode sum made each decision quadratic (bench/soak.py with 5,000 episodes stalled)
  local pending = s.ledger:pending()
  local units = s.ledger:units(function(sec) local _, k = chunk_plan(ctx, sec, pending) return k end)
  local n, why = plan.workers { units = units, engine = stt_engine(ctx), stage = "stt" }
  if n ~= s.workers or why ~= s.why then
    s.workers, s.why = n, why
    ctx.job.stages.stt:set_workers(n, why)
  end
end

return sl.pipeline "podcast" {
  description = "podcast feeds or media -> transcripts, metadata, index",
  defaults = {
    providers = { stt = "sphinx", llm = "extractive" },
    auto_workers = true,
    summary_sentences = 3,
    keywords = 8,
    -- the caps on each feed read (sluice.blocks.stages.expand_inputs)
    feed = { max_bytes = stages.FEED_MAX_BYTES, max_items = stages.FEED_MAX_ITEMS },
  },
  settings = {
    limit = "at most this many episodes per feed",
    download_timeout = "seconds a download may take",
    keep_chunks = "keep the WAV chunks (default: removed once transcribed)",
    chapter_window = "seconds of speech per chapter",
  },
  -- The feed caps are counts: a positive whole number each, else one line naming the key.
  check = function(config)
    local fc = config.feed
    if fc ~= nil and type(fc) ~= "table" then return nil, "feed: a table of settings expected (feed.max_bytes, feed.max_items)" end
    for _, key in ipairs { "max_bytes", "max_items" } do
      local v = fc and fc[key]
      if v ~= nil and not (math.tointeger(v) and v > 0) then
        return nil, string.format("feed.%s must be a positive whole number (got %s)", key, tostring(v))
      end
    end
    return true
  end,
  inputs = "files",
  sources = {
    -- Episodes of the feeds (and media given directly). A feed that cannot be read is an item
    -- that fails at download (a dead letter: on the terminal, in index.json's failed, exit 1);
    -- a feed entry without an enclosure is logged and listed in index.json's skipped.
    episodes = function(ctx)
      local fc = type(ctx.config.feed) == "table" and ctx.config.feed or {}
      local items, errors, skipped = stages.expand_inputs(ctx.job.inputs, { limit = ctx.config.limit,
        max_bytes = fc.max_bytes, max_items = fc.max_items })
      for i, e in ipairs(errors) do
        ctx:emit({ error = e }, { key = "input-error-" .. i, seq = 1 })
      end
      for i, s in ipairs(skipped) do
        local what = s.count and (s.count .. " entries") or s.title and ("'" .. s.title .. "'") or s.guid or "an entry"
        ctx:log(string.format("skipped %s in %s: %s", what, s.source, s.reason))
        ctx:emit({ skipped = s }, { key = "skipped-" .. i, seq = 1 })
      end
      local ledger = state(ctx).ledger
      for _, it in ipairs(items) do ledger:expect(it.key, tonumber(it.duration)) end
      decide_stt(ctx)
      for _, it in ipairs(items) do ctx:emit(it, { key = it.key, seq = 1 }) end
    end,
  },
  stages = {
    download = {
      from = "episodes", workers = 4,
      retry = { attempts = 3, backoff = 0.5, retry_if = function(_, code) return code ~= "EINPUT" end },
      run = function(env, ctx)
        local it = env.data
        if it.error then return nil, it.error, "EINPUT" end
        if it.skipped then return nil end -- reported by the source and the index
        local dir = stages.out_dir(ctx, nil, "downloads")
        local path, info = stages.fetch(it, dir, { timeout = ctx.config.download_timeout })
        if not path then
          state(ctx).ledger:finished(env.key) -- (a retry that succeeds expects it again)
          return nil, info, "EFETCH"
        end
        local media = require "sluice.media"
        local probe, perr = media.check_length(path)
        if not probe then
          state(ctx).ledger:finished(env.key)
          return nil, string.format("episode %s: %s", env.key, perr), "EINPUT"
        end
        local duration = probe.duration or it.duration or 0
        -- The queue now knows this episode's length: the STT workers are decided again.
        state(ctx).ledger:expect(env.key, duration)
        decide_stt(ctx)
        local st = state(ctx)
        st.titles = st.titles or {}
        st.titles[env.key] = it.title
        ctx:event("downloaded", { path = path, bytes = info.bytes, skipped = info.skipped or nil,
          resumed = info.resumed or nil, title = it.title, duration = duration })
        return { key = env.key, title = it.title, path = path, url = it.url, duration = duration,
          published = it.published, feed = it.feed_title }
      end,
    },

    audio = sl.audio_chunks { from = "download", seconds = "auto", overlap = OVERLAP, split = "silence",
      window = WINDOW, pause = PAUSE, dir = "{key}/.chunks", workers = 2,
      size = function(env, ctx)
        local seconds, k = chunk_plan(ctx, env.data.duration or 0)
        state(ctx).ledger:cut(env.key, k, env.data.duration)
        decide_stt(ctx)
        ctx:event("chunking", { seconds = seconds, chunks = k, duration = env.data.duration })
        return seconds
      end },

    stt = {
      from = "audio", workers = 4, retry = { attempts = 3 },
      run = function(env, ctx)
        local c = env.data
        local stt = provider(ctx, "stt")
        -- A local engine runs as many decoders as the stage has workers, unless the user fixed
        -- fewer (then the reason shown says so: nothing caps the stage unseen). A remote
        -- worker process (`sluice worker`) runs units without the job's stages: its own
        -- --workers decide there.
        local stage = ctx.job.stages and ctx.job.stages.stt
        if stt.set_workers and stage and stage.workers then
          local want = stage.workers
          local own = type(ctx.config[stt.name]) == "table" and math.tointeger(ctx.config[stt.name].workers)
          if own and own < want then
            local s = state(ctx)
            if not s.capped then
              s.capped = true
              stage:set_workers(want, string.format("stt %d workers, at most %d decoding: %s.workers=%d",
                want, own, stt.name, own))
            end
          elseif stt:workers() < want then
            stt:set_workers(want)
          end
        end
        local r, err = stt:transcribe({ path = c.path, t0 = c.t0, t1 = c.t1 })
        if not r then error(string.format("stt %s chunk %d (%.1f-%.1f s): %s", env.key, c.seq, c.t0, c.t1, err), 0) end
        state(ctx).ledger:done(env.key, c.t1 - c.t0)
        ctx:event("speech", { seq = c.seq, t0 = c.t0, t1 = c.t1, text = stages.text_of(r) })
        return { seq = c.seq, t0 = c.t0, t1 = c.t1, path = c.path, segments = r.segments or {}, text = r.text }
      end,
    },

    transcript = {
      from = "stt", collect = true,
      run = function(items, ctx)
        local key = items[1].key
        state(ctx).ledger:finished(key)
        local chunks = {}
        for i, env in ipairs(items) do chunks[i] = env.data end
        table.sort(chunks, function(a, b) return a.seq < b.seq end)
        local merged = fusion.merge_chunks(chunks, { absolute = true })
        local dir = episode_dir(ctx, key)
        local segs = {}
        for i, s in ipairs(merged.segments) do
          segs[i] = { start = s.start, ["end"] = s["end"], text = s.text, words = s.words }
        end
        local duration = chunks[#chunks].t1
        write_json(dir .. "/transcript.json", { key = key, duration = duration, text = merged.text,
          segments = segs, chunks = #chunks, boundaries = merged.boundaries })
        assert(subtitles.write_file(dir .. "/transcript.srt", segs))
        if not ctx.config.keep_chunks then
          for _, c in ipairs(chunks) do if c.path then os.remove(c.path) end end
        end
        ctx:event("transcript", { words = #text.words(merged.text), chunks = #chunks, duration = duration,
          preview = stages.preview(merged.text, 1500) })
        return { key = key, duration = duration, text = merged.text, segments = segs }
      end,
    },

    metadata = {
      from = "transcript", workers = 4, retry = { attempts = 3 },
      run = function(env, ctx)
        local tr = env.data
        local llm = provider(ctx, "llm")
        local meta = { key = tr.key, duration = tr.duration }
        if tr.text:find("%S") then
          local s, err = llm:summarize(tr.text, { sentences = ctx.config.summary_sentences })
          if not s then error("summary of " .. tr.key .. ": " .. tostring(err), 0) end
          meta.summary = type(s) == "table" and (s.text or s.summary) or s
          if llm.keywords then
            local kws = llm:keywords(tr.text, ctx.config.keywords)
            meta.keywords = {}
            for i, k in ipairs(kws or {}) do meta.keywords[i] = k.word or k end
          else
            meta.keywords = {}
            for i, k in ipairs(text.keywords(tr.text, ctx.config.keywords)) do meta.keywords[i] = k.word end
          end
          if llm.chapters then
            meta.chapters = llm:chapters(tr.segments, { window = ctx.config.chapter_window })
          else
            meta.chapters = { { start = 0, ["end"] = tr.duration, title = meta.keywords[1] or "episode" } }
          end
          meta.provider = llm.provider
        else
          meta.summary, meta.keywords, meta.chapters = "", {}, {}
        end
        local s = state(ctx)
        meta.title = (s.titles and s.titles[tr.key]) or tr.key
        local dir = episode_dir(ctx, tr.key)
        meta.transcript = dir .. "/transcript.json"
        write_json(dir .. "/metadata.json", meta)
        ctx:event("metadata", { title = meta.title, keywords = meta.keywords, summary = meta.summary,
          chapters = #meta.chapters })
        return meta
      end,
    },

    -- Also fed by the source, so that a run whose every input failed still writes its index.
    index = {
      from = { "episodes", "download", "metadata" }, collect = "all",
      run = function(items, ctx)
        local eps, by_key, skipped = {}, {}, {}
        for _, env in ipairs(items) do
          local d = env.data
          if env.stage == "episodes" then
            if d.skipped then skipped[#skipped + 1] = d.skipped end
            goto next_item
          end
          local e = by_key[env.key]
          if not e then
            e = { key = env.key }
            by_key[env.key] = e
            eps[#eps + 1] = e
          end
          if env.stage == "download" then
            e.title, e.source = d.title, d.url or d.path
            e.audio, e.duration, e.published = d.path, d.duration, d.published
          else
            e.summary, e.keywords, e.chapters = d.summary, d.keywords, #(d.chapters or {})
            e.transcript = d.transcript
            e.metadata = episode_dir(ctx, env.key) .. "/metadata.json"
          end
          ::next_item::
        end
        table.sort(eps, function(a, b) return a.key < b.key end)
        local failed = {}
        for _, d in ipairs(ctx.job.dead or {}) do
          failed[#failed + 1] = { stage = d.stage, key = d.key, error = d.error }
        end
        local out = stages.out_dir(ctx, nil, nil)
        write_json(out .. "/index.json", { job = ctx.job.id, episodes = eps,
          failed = failed, skipped = skipped })
        return { episodes = #eps }
      end,
    },
  },
}
