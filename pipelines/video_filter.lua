-- video_filter.lua: videos -> the frames that show what you ask for, without near-duplicates
-- across videos (seed 003, option 2: stage-level queues that pass folder paths).
--
--   sluice run pipelines/video_filter.lua VIDEO_OR_URL... --out DIR [--set key=value ...]
--
-- download  2 workers: HTTP(S) URLs stream to DIR/downloads (YouTube-style URLs go through
--           yt-dlp when it is installed); paths are used where they are
-- extract   2 workers: one frame every `every` seconds (default 1) into DIR/frames/<video>/
--           plus frames.json (t, file, perceptual hashes); passes the frames on in batches of
--           `batch` (8) as they are made (the folder and the file names: paths, not pixels),
--           so one long video is decoded and filtered at once; batch=0 passes the whole
--           video once it is extracted
-- filter    2 workers, so that a batch waits while one is being classified and the detector's
--           processes never run dry; one model worker provider for the whole run (the bundled
--           CenterNet detector by default, workers/detect.js: the 80 COCO classes, loaded once;
--           the opencv one runs a single-threaded process per CPU token, worker.processes),
--           each frame a request to the least busy process, holding a CPU token: keeps
--           frames where one of `classes` (default person) scores at least `min_score` (0.5);
--           copies them to DIR/kept/<video>/. Class names the detector does not know stop the
--           run before it starts (exit 2), with the list of known ones.
-- dedup     once every video is filtered: drops a kept frame when at most `change` (0.02) of
--           the picture changed since an earlier kept frame, across all videos (64-pixel gray
--           thumbnails, less their mean brightness: media.changed); writes DIR/manifest.json
--           (per frame: video, t, classes with scores, hash, kept or dropped and why)
-- --set cleanup=true removes the raw frames once filtered (their folders once all are).
-- --set worker.detector=opencv uses the older OpenCV detector (HOG people, Haar cascades).
-- --set providers.filter=worker --set worker.argv='["python3","my_yolo.py"]' plugs in your model.
local sl = require "sluice"
local json = require "sluice.runtime.json"
local stages = require "sluice.blocks.stages"

local provider = stages.provider

local jobs = stages.job_states()
local function state(ctx) return stages.job_state(jobs, ctx, function() return {} end) end

local write_json = stages.write_json

local function classes_of(config)
  local c = config.classes or { "person" }
  if type(c) == "string" then
    local list = {}
    for w in c:gmatch("[^,%s]+") do list[#list + 1] = w end
    c = list
  end
  return c
end

return sl.pipeline "video_filter" {
  description = "videos -> frames with the requested classes, near-duplicates removed across videos",
  defaults = {
    providers = { filter = "worker" },
    worker = { detector = "centernet" },
    classes = { "person" },
    min_score = 0.5,
    every = 1,
    max_width = 640,
    batch = 8,
    change = 0.02,
    cleanup = false,
  },
  -- Before anything runs: the detector knows every class asked for.
  check = function(config)
    local providers = require "sluice.providers"
    local classes = classes_of(config)
    if #classes == 0 then return nil, "classes: none given" end
    local name = providers.name_for("filter", config)
    if name ~= "worker" then return true end -- remote models take any class name
    local p = providers.for_role("filter", config)
    local known = p:known_classes()
    p:close()
    if not known then return true end -- a worker without `info`: it says so per frame
    local set = {}
    for _, c in ipairs(known) do set[c] = true end
    local bad = {}
    for _, c in ipairs(classes) do if not set[c] then bad[#bad + 1] = "'" .. tostring(c) .. "'" end end
    if #bad > 0 then
      return nil, string.format("classes: %s unknown to the detector %s (known: %s)", table.concat(bad, ", "),
        p.name, table.concat(known, ", "))
    end
    return true
  end,
  inputs = "files",
  sources = { videos = sl.inputs() },
  stages = {
    download = {
      from = "videos", workers = 2, retry = { attempts = 3 },
      run = function(env, ctx)
        local src = env.data
        local key = stages.safe_name((tostring(env.key):gsub("%.[%w]+$", "")))
        local path, info = stages.fetch({ url = stages.is_url(src) and src or nil,
          path = (not stages.is_url(src)) and src or nil, key = key },
          stages.out_dir(ctx, nil, "downloads"))
        if not path then return nil, info end
        return { video = key, path = path }
      end,
    },

    extract = {
      from = "download", workers = 2,
      run = function(env, ctx)
        local media = require "sluice.media"
        local v = env.data
        -- an input past media.max_duration is refused before any of it is decoded
        local ok, lerr = media.check_length(v.path)
        if not ok then error(lerr, 0) end
        local dir = stages.out_dir(ctx, nil, "frames/" .. v.video)
        local size = math.tointeger(ctx.config.batch) or 8
        if size < 1 then size = math.huge end
        local frames, batch, n = {}, {}, 0
        -- A batch goes on as soon as it is full: the filter works on it while the rest of the
        -- video decodes. seq orders the batches of a video (dedup reads them in that order).
        local function pass(last)
          if #batch == 0 and not last then return end
          n = n + 1
          ctx:emit({ video = v.video, folder = dir, frames = batch, batch = n, last = last or nil },
            { seq = n })
          batch = {}
        end
        local stream = media.frames(v.path, { every = ctx.config.every, max_width = ctx.config.max_width,
          dir = dir, prefix = "frame", phash = true })
        while true do
          local f, err = stream:next()
          if not f then
            if err then error(err, 0) end -- (media errors name the input)
            break
          end
          local rec = { t = f.t, file = f.path:match("([^/]+)$"),
            dhash = media.hex(f.dhash), phash = f.phash and media.hex(f.phash) or nil }
          frames[#frames + 1] = rec
          batch[#batch + 1] = rec
          if #batch >= size then pass() end
        end
        if #frames == 0 then error("extract " .. v.path .. ": no frames", 0) end
        write_json(dir .. "/frames.json", { video = v.video, source = v.path, frames = frames })
        pass(true)
      end,
    },

    filter = {
      from = "extract", workers = 2, retry = { attempts = 2 },
      run = function(env, ctx)
        local v = env.data
        local classes = classes_of(ctx.config)
        local reqs = {}
        for i, f in ipairs(v.frames) do reqs[i] = { path = v.folder .. "/" .. f.file, t = f.t } end
        local res, cerr
        if #reqs > 0 then
          res, cerr = provider(ctx, "filter"):classify(reqs, classes)
          if not res then error("filter " .. v.video .. ": " .. tostring(cerr), 0) end
        end
        local kept_dir = stages.out_dir(ctx, nil, "kept/" .. v.video)
        local min = ctx.config.min_score
        local out, to_copy = {}, {}
        for i, f in ipairs(v.frames) do
          local r = res[i] or {}
          local scores, best = json.object(), nil
          for _, c in ipairs(r.classes or {}) do
            scores[c.name] = c.score
            if c.score >= min and (not best or c.score > best.score) then best = c end
          end
          local rec = { video = v.video, t = f.t, file = f.file, dhash = f.dhash, classes = scores }
          if r.error then
            rec.kept, rec.reason = false, "error: " .. tostring(r.error)
          elseif best then
            rec.kept, rec.reason = true, string.format("%s %.2f", best.name, best.score)
            rec.path = kept_dir .. "/" .. f.file
            to_copy[#to_copy + 1] = v.folder .. "/" .. f.file
          else
            rec.kept, rec.reason = false, "no " .. table.concat(classes, "/") .. " >= " .. min
          end
          out[#out + 1] = rec
        end
        if #to_copy > 0 then
          local argv = { "cp" }
          for _, p in ipairs(to_copy) do argv[#argv + 1] = p end
          argv[#argv + 1] = kept_dir .. "/"
          local r, e = sl.exec(argv)
          if not r or r.status ~= 0 then error("filter: copy to " .. kept_dir .. " failed: " .. tostring(e or r.stderr), 0) end
        end
        if ctx.config.cleanup then
          if #v.frames > 0 then
            local argv = { "rm", "-f" }
            for _, f in ipairs(v.frames) do argv[#argv + 1] = v.folder .. "/" .. f.file end
            sl.exec(argv)
          end
        end
        -- The video's tally so far (a dashboard shows each video as its batches come in).
        local tally = state(ctx)[v.video]
        if not tally then
          tally = { kept = 0, total = 0, frames = {}, dropped = json.object() }
          state(ctx)[v.video] = tally
        end
        for _, rec in ipairs(out) do
          tally.total = tally.total + 1
          if rec.kept then
            tally.kept = tally.kept + 1
            tally.frames[#tally.frames + 1] = { t = rec.t, path = rec.path, reason = rec.reason }
          else
            tally.dropped[rec.reason] = (tally.dropped[rec.reason] or 0) + 1
          end
        end
        ctx:event("filtered", { video = v.video, kept = tally.kept, total = tally.total, frames = tally.frames,
          dropped = tally.dropped, batch = v.batch, done = v.last or nil })
        return { video = v.video, folder = kept_dir, frames = out, batch = v.batch }
      end,
    },

    dedup = {
      from = "filter", collect = "all",
      run = function(items, ctx)
        local media = require "sluice.media"
        -- videos by name, each one's batches in the order they were extracted: the frames in
        -- time order, whatever order the batches were filtered in
        table.sort(items, function(a, b)
          if a.data.video ~= b.data.video then return a.data.video < b.data.video end
          return a.data.batch < b.data.batch
        end)
        local limit = ctx.config.change
        local manifest, kept_list = {}, {}
        local kept, dropped_dups, removed = 0, 0, {}
        for _, env in ipairs(items) do
          for _, rec in ipairs(env.data.frames) do
            manifest[#manifest + 1] = rec
            if rec.kept then
              local th, terr = media.thumb(rec.path)
              if not th then error("dedup " .. tostring(rec.path) .. ": " .. tostring(terr), 0) end
              -- the earlier kept frame it changed least from
              local best, best_c
              for _, k in ipairs(kept_list) do
                local c = media.changed(th, k.thumb)
                if not best_c or c < best_c then best, best_c = k, c end
                sl.yield() -- ~0.1 ms each: the loop stays free
              end
              if best and best_c <= limit then
                local other = best.rec
                rec.kept = false
                rec.reason = string.format("near-duplicate of %s@%.2fs (%.1f%% changed)", other.video,
                  other.t, best_c * 100)
                rec.duplicate_of = { video = other.video, t = other.t }
                rec.changed = best_c
                removed[#removed + 1] = { video = rec.video, t = rec.t, path = rec.path }
                os.remove(rec.path)
                rec.path = nil
                dropped_dups = dropped_dups + 1
              else
                kept_list[#kept_list + 1] = { rec = rec, thumb = th }
                kept = kept + 1
              end
            end
          end
        end
        if ctx.config.cleanup then -- every batch is filtered: the raw frame folders go
          local seen = {}
          for _, env in ipairs(items) do
            if not seen[env.data.video] then
              seen[env.data.video] = true
              sl.exec({ "rm", "-rf", stages.out_dir(ctx, nil, "frames/" .. env.data.video) })
            end
          end
        end
        write_json(stages.out_dir(ctx, nil, nil) .. "/manifest.json", { classes = classes_of(ctx.config),
          min_score = ctx.config.min_score, change = limit, kept = kept, duplicates = dropped_dups,
          frames = manifest })
        ctx:event("dedup", { kept = kept, duplicates = dropped_dups, removed = removed })
        return { kept = kept, duplicates = dropped_dups, frames = #manifest }
      end,
    },
  },
}
