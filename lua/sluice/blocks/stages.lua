-- sluice.blocks.stages: ready-made stages and helpers the pipelines share.
--
-- Inputs and downloads (podcast and video filter pipelines):
--   stages.expand_inputs(list, opts) -> items {key=, url=|path=, title=, duration=, ...}:
--       feeds (RSS/Atom, by URL or file) become one item per episode; other entries are media
--       URLs or paths. Relative enclosure URLs resolve against the feed's location.
--   stages.fetch(item, dir, opts) -> local path, info: paths pass through; http(s) URLs
--       stream to DIR/<name>.part (resuming a partial file with a Range request) and are
--       renamed when complete; a file already downloaded is skipped; YouTube-style URLs go
--       through yt-dlp when it is installed.
-- Seed 001's worker rule (per input; the podcast decides from the whole queue with
-- sluice.blocks.plan instead):
--   stages.workers_for{duration=, engine=, chunk=} -> workers, details
-- Stage builders on the media module (sl.audio_chunks / sl.capture are these):
--   stages.audio_chunks{from=, seconds=30, overlap=0, split=nil, pause=0.3, first=nil, dir="audio",
--       size=}
--       -> a stage that cuts each input (a path or URL, or {path=}) into 16 kHz mono WAV chunks
--       while it decodes; items {seq, t0, t1, path}, one per chunk (fan-out), envelope t0/t1
--       set. seconds = "auto": size(env, ctx, {overlap=, split=}) -> seconds decides per input.
--   stages.capture{from=, every=|scene=|keyframes=|slides=true, min_interval=, max_width=,
--       dir="frames", name="%04d", no_video="fail", window=30, rate=2} -> a stage that
--       captures frames to DIR/<dir>/NNNN.jpg; items {seq, t, path, width, height, dhash}.
--       no_video = "skip": an input without a video stream gives no frames and a log line
--       instead of a failure. slides = true (when no every/scene/keyframes is set): one frame
--       per slide shown (sluice.media.slides, `rate` samples a second), items also {slide,
--       same_as} (same_as: the seq of the slide's first showing when it is shown again); a
--       video without slides gives one frame per `window` seconds instead, items {window =
--       true}, with a log line and a "no_slides" event saying so.
-- Their settings are stage params, so `--set stages.audio.params.seconds=10` changes them.
-- Files go under the run's --out directory (DIR/<key>/... when the run has several inputs).
local sl = require "sluice"
local http = require "sluice.runtime.http"
local files = require "sluice.runtime.files"
local feed = require "sluice.blocks.feed"
local json = require "sluice.runtime.json"

local M = {}

-- Helpers ----------------------------------------------------------------------------------

local function is_url(s) return type(s) == "string" and s:match("^[%a][%w+.-]*://") ~= nil end
M.is_url = is_url

local function file_exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

local function file_size(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end
M.file_size = file_size

-- safe_name(s[, max]) -> s as a file name, changed only where the file system requires it:
-- "/", NUL and control characters become "_", "." and ".." get a "_" in front, and a name
-- longer than max bytes (default 120) is cut at a character boundary. Outputs are named
-- after what they come from this way ("book_copy.mkv" -> folder "book_copy").
function M.safe_name(s, max)
  s = tostring(s or ""):gsub("[/%z%c]", "_")
  max = max or 120
  if #s > max then
    s = s:sub(1, max)
    local lead = s:find("[\192-\255][\128-\191]*$") -- a multi-byte character cut short?
    if lead then
      local c = s:byte(lead)
      local len = c >= 240 and 4 or c >= 224 and 3 or 2
      if #s - lead + 1 < len then s = s:sub(1, lead - 1) end
    end
  end
  if s == "." or s == ".." then s = "_" .. s end
  return s ~= "" and s or "item"
end

-- slug("Episode 2: Queues!") -> "episode-2-queues" (for identifiers; outputs use safe_name)
function M.slug(s, max)
  s = tostring(s or ""):lower():gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", "")
  s = s:sub(1, max or 60):gsub("%-+$", "")
  return s ~= "" and s or "item"
end

-- resolve(base, ref): ref relative to base (a URL or a file path).
function M.resolve(base, ref)
  if is_url(ref) or not base then return ref end
  if ref:sub(1, 7) == "file://" then return ref:sub(8) end
  if is_url(base) then
    local scheme_host = base:match("^([%a][%w+.-]*://[^/]+)")
    if ref:sub(1, 2) == "//" then return base:match("^([%a][%w+.-]*:)") .. ref end
    if ref:sub(1, 1) == "/" then return scheme_host .. ref end
    local dir = base:gsub("[?#].*$", ""):match("^(.*/)") or (scheme_host .. "/")
    return dir .. ref
  end
  if ref:sub(1, 1) == "/" then return ref end
  local dir = base:match("^(.*/)") or ""
  return dir .. ref
end

local function url_basename(u)
  local p = u:gsub("[?#].*$", ""):match("([^/]+)/*$") or "download"
  return M.safe_name((p:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
end

local function looks_like_feed(s, head)
  if type(s) == "string" and (s:match("%.xml$") or s:match("%.rss$") or s:match("%.atom$")
      or s:match("/feed/?$") or s:match("/rss/?$")) then
    return true
  end
  if head then
    head = head:gsub("^\239\187\191", ""):gsub("^%s+", "")
    return head:match("^<%?xml") ~= nil or head:match("^<rss") ~= nil or head:match("^<feed") ~= nil
  end
  return false
end

local function read_head(path, n)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read(n or 512)
  f:close()
  return s
end

-- Inputs -----------------------------------------------------------------------------------

-- The caps on a feed (the podcast's settings feed.max_bytes and feed.max_items): a feed
-- larger than max_bytes is not read (one line says so); of a feed with more than max_items
-- entries only the first max_items are read (feeds list the newest first), and one skipped
-- record counts the rest.
M.FEED_MAX_BYTES = 64 * 1024 * 1024
M.FEED_MAX_ITEMS = 2000

-- expand_inputs(list, {limit=, max_bytes=, max_items=}) -> items, errors, skipped. Each item:
-- {key, url or path, title, duration, published, time, source}. Keys are unique file names
-- (safe_name of the title or base name). A feed that cannot be read is an error (returned,
-- not raised) and the other inputs go on. A feed entry without an enclosure is in skipped:
-- {source=, title=, guid=, link=, reason=}; the entries past max_items are one record
-- {source=, count=, reason=}.
function M.expand_inputs(list, opts)
  opts = opts or {}
  local max_bytes = opts.max_bytes or M.FEED_MAX_BYTES
  local max_items = opts.max_items or M.FEED_MAX_ITEMS
  local function too_big(n)
    return string.format("feed larger than feed.max_bytes (%s%d bytes)", n and (n .. " bytes, more than ") or "",
      max_bytes)
  end
  local items, errors, used, skipped = {}, {}, {}, {}
  local function add(it)
    local base = M.safe_name(it.title or (it.url and url_basename(it.url):gsub("%.[%w]+$", ""))
      or (it.path and it.path:match("([^/]+)$"):gsub("%.[%w]+$", "")), 80)
    local key, n = base, 1
    while used[key] do
      n = n + 1
      key = base .. "-" .. n
    end
    used[key] = true
    it.key = key
    items[#items + 1] = it
  end
  for _, input in ipairs(list) do
    local is_feed, text, err = false, nil, nil
    if is_url(input) and not input:match("^file://") then
      if looks_like_feed(input) then
        local r, e, code = http.get(input, { timeout = 60, follow = true, max_bytes = max_bytes })
        if not r then err = code == "ETOOBIG" and too_big() or e
        elseif r.status ~= 200 then err = "HTTP " .. r.status
        else is_feed, text = true, r.body end
      end
    else
      local path = input:gsub("^file://", "")
      if not file_exists(path) then
        err = "no such file"
      elseif looks_like_feed(path, read_head(path)) then
        local size = file_size(path) or 0
        if size > max_bytes then
          err = too_big(size)
        else
          local rerr
          text, rerr = files.read(path) -- (on the pool: a 50 MB feed would hold the loop)
          if text then is_feed = true else err = rerr end
        end
      end
      input = path
    end
    if err then
      errors[#errors + 1] = string.format("input %s: %s", http.safe_url(input), err)
    elseif is_feed then
      local f, perr = feed.parse(text, { max_items = max_items })
      text = nil
      if not f then
        errors[#errors + 1] = string.format("input %s: %s", http.safe_url(input), perr)
      else
        if f.unread then
          skipped[#skipped + 1] = { source = http.safe_url(input), count = f.unread,
            reason = string.format("past feed.max_items (the first %d entries were read, %d more not)", max_items,
              f.unread) }
        end
        local n = 0
        for _, e in ipairs(f.items) do
          if not (e.enclosure and e.enclosure.url) then
            skipped[#skipped + 1] = { source = http.safe_url(input), title = e.title, guid = e.guid,
              link = e.link, reason = "no enclosure (no media file to fetch)" }
          elseif not opts.limit or n < opts.limit then
            n = n + 1
            local u = M.resolve(input, e.enclosure.url)
            add { url = is_url(u) and u or nil, path = (not is_url(u)) and u or nil, title = e.title,
              duration = e.duration, published = e.published, time = e.time, guid = e.guid,
              source = input, feed_title = f.title, type = e.enclosure.type }
          end
        end
        if n == 0 then
          errors[#errors + 1] = string.format("input %s: feed has no episodes with media", http.safe_url(input))
        end
      end
    elseif is_url(input) then
      add { url = input }
    else
      add { path = input }
    end
  end
  return items, errors, skipped
end

-- Downloads ----------------------------------------------------------------------------------

local function youtube_like(u)
  return u:match("^https?://[%w.]*youtube%.com/") or u:match("^https?://youtu%.be/")
    or u:match("^https?://[%w.]*vimeo%.com/")
end

local function which(cmd)
  for dir in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
    if file_exists(dir .. "/" .. cmd) then return dir .. "/" .. cmd end
  end
end

-- Whether the file at path is an HTML page (what a server sends for a moved or paywalled
-- episode, with status 200): its first bytes, after a byte order mark and blanks, open a
-- document or an <html> element.
local function html_page(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local head = (f:read(512) or ""):gsub("^\239\187\191", ""):gsub("^%s+", ""):lower()
  f:close()
  return head:find("^<!doctype html") ~= nil or head:find("^<html[%s>]") ~= nil
end

-- fetch(item, dir, {timeout=, progress=}) -> path, {skipped=, resumed=, bytes=}; or nil,
-- message. item: {url=} or {path=} (or a string).
function M.fetch(item, dir, opts)
  opts = opts or {}
  if type(item) == "string" then item = is_url(item) and { url = item } or { path = item } end
  if item.path then
    if not file_exists(item.path) then return nil, "fetch " .. item.path .. ": no such file" end
    return item.path, { skipped = true, local_file = true }
  end
  local url = item.url
  if not url then return nil, "fetch: item has neither url nor path" end
  local safe = http.safe_url(url)
  if youtube_like(url) then
    local ytdlp = which("yt-dlp")
    if not ytdlp then return nil, "fetch " .. safe .. ": yt-dlp is not installed (apt install yt-dlp)" end
    local tmpl = dir .. "/" .. (item.key or "%(id)s") .. ".%(ext)s"
    local r, err = sl.exec({ ytdlp, "--no-progress", "--no-playlist", "-f", "mp4/best", "-o", tmpl,
      "--print", "after_move:filepath", url }, { timeout = opts.timeout })
    if not r then return nil, "fetch " .. safe .. ": " .. err end
    if r.status ~= 0 then
      return nil, "fetch " .. safe .. ": yt-dlp failed: " .. (r.stderr:match("([^\n]+)\n*$") or "")
    end
    return (r.stdout:match("([^\n]+)\n*$")), { bytes = nil }
  end
  local name = item.file or ((item.key and (item.key .. (url_basename(url):match("%.[%w]+$") or "")))
    or url_basename(url))
  local final = dir .. "/" .. name
  local size = file_size(final)
  if size and size > 0 then return final, { skipped = true, bytes = 0 } end
  local part = final .. ".part"
  local had = file_size(part) or 0
  local r, err = http.download(url, part, { resume = true, follow = true, timeout = opts.timeout,
    connect_timeout = 20, progress = opts.progress })
  if not r then return nil, "fetch " .. safe .. ": " .. tostring(err) end
  if r.status == 416 and had > 0 then
    -- The partial file already holds everything.
  elseif r.status ~= 200 and r.status ~= 206 then
    os.remove(part)
    return nil, string.format("fetch %s: HTTP %d", safe, r.status)
  end
  local page = html_page(part)
  if page then
    os.remove(part)
    local ctype = r.headers and r.headers["content-type"]
    return nil, string.format("fetch %s: the server sent an HTML page%s, not media", safe,
      ctype and (" (" .. ctype:match("^[^;]*") .. ")") or "")
  end
  local ok, rerr = os.rename(part, final)
  if not ok then return nil, "fetch " .. safe .. ": " .. tostring(rerr) end
  return final, { resumed = r.resumed or (r.status == 206), bytes = r.bytes, had = had }
end

-- Output directories ------------------------------------------------------------------------

local made = {}

-- write_file(path, bytes) -> true, or nil, message: an output file written through a temporary
-- name and a rename, so a reader (or a run killed half-way) never sees a half-written file
-- (sluice.runtime.files.write, the one implementation).
M.write_file = files.write

-- Writes v as JSON to path the same way (raises if it cannot). Empty tables are written as []
-- (the one rule of sluice.runtime.json; a map that may be empty is made with json.object()).
function M.write_json(path, v)
  assert(files.write(path, json.encode(v)))
end

-- Returns the state table a pipeline keeps for ctx's job, made by fresh(ctx) on first use
-- (weakly keyed: it goes with the job). Each `states` table (from M.job_states()) is one
-- pipeline's, so two pipelines never share state.
function M.job_states() return setmetatable({}, { __mode = "k" }) end

function M.job_state(states, ctx, fresh)
  local s = states[ctx.job]
  if not s then
    s = fresh(ctx)
    states[ctx.job] = s
  end
  return s
end

-- The provider for a role, made once per job from the job's configuration (providers hold
-- decoders, worker processes and connections that the whole run shares). providers.ROLE may
-- name one provider or a fallback chain ({"gemini", "openai", "tesseract"}): remote ones go
-- through sluice.providers.chain (the result cache, cost, budget, breakers, hedging,
-- fallback), with the stage's `hedge` and `cache` options; a local engine alone is used as it
-- is (except in a dry run, where nothing is computed).
local job_providers = M.job_states()
function M.provider(ctx, role)
  local providers = require "sluice.providers"
  local cache = M.job_state(job_providers, ctx, function() return {} end)
  -- Every stage that uses the provider reads the settings that chose and configured it
  -- (a stage's resume key covers the settings it reads; see sluice.graph.memokey).
  local names = providers.names_for(role, ctx.config)
  local settings = {}
  for i, n in ipairs(names) do settings[i] = providers.settings_for(role, n, ctx.config) end
  local stage = ctx.stage or "-"
  local k = role .. "\0" .. stage
  local v = cache[k]
  if v == nil then
    local c = cache[role]
    if not c then
      local chain = require "sluice.providers.chain"
      local list = {}
      for i, n in ipairs(names) do list[i] = providers.get(role, n, settings[i]) end
      local ledger = chain.ledger_for(ctx.job)
      if #list == 1 and not list[1].retry_opts and not ledger.dry then
        c = { plain = list[1] }
      else
        c = { chain = chain.new(role, list, { ledger = ledger }) }
      end
      cache[role] = c
    end
    if c.plain then
      v = c.plain
    else
      local S = ctx._stage
      v = c.chain:view(stage, { hedge = S and S.hedge, cache = not (S and S.cache == false) })
    end
    cache[k] = v
  end
  if getmetatable(v) and v.handle and rawget(v, "chain") then return v:handle(ctx._unit) end
  return v
end

-- mkdir(path): creates path and its parents (once per run of the process).
function M.mkdir(path)
  if made[path] then return true end
  local r, err = sl.exec({ "mkdir", "-p", path })
  if not r then error("mkdir " .. path .. ": " .. tostring(err), 0) end
  if r.status ~= 0 then error("mkdir " .. path .. ": " .. r.stderr:gsub("%s+$", ""), 0) end
  made[path] = true
  return true
end

-- out_dir(ctx, key, sub) -> the directory for key's outputs: the run's --out directory when
-- it has one input, DIR/<key> otherwise; with sub, a subdirectory of it. A sub containing
-- "{key}" is taken from DIR itself with the key put in its place ("{key}/audio"); a key is
-- made a file name by safe_name.
-- Created on demand.
function M.out_dir(ctx, key, sub)
  local job = ctx.job
  local base = (job and job.out) or ctx.out or "."
  local n = job and job.inputs and #job.inputs or 1
  local d = base
  if sub and sub:find("{key}", 1, true) then
    sub = sub:gsub("{key}", (M.safe_name(key):gsub("%%", "%%%%")))
  elseif n > 1 and key ~= nil then
    d = base .. "/" .. M.safe_name(key)
  end
  if sub then d = d .. "/" .. sub end
  M.mkdir(d)
  return d
end

-- text_of(r) -> the text of a transcription reply (its `text`, else its segments' joined).
function M.text_of(r)
  if type(r) ~= "table" then return "" end
  if type(r.text) == "string" then return r.text end
  local parts = {}
  for _, s in ipairs(r.segments or {}) do parts[#parts + 1] = s.text end
  return table.concat(parts, " ")
end

-- preview(s, n) -> the first n bytes of s, cut at a word boundary with "…" when cut.
function M.preview(s, n)
  s = tostring(s or "")
  if #s <= n then return s end
  local cut = s:sub(1, n):match("^(.*)%s") or s:sub(1, n)
  return cut .. "…"
end

-- input_path(data) -> the path or URL an item stands for.
function M.input_path(data)
  if type(data) == "string" then return data end
  if type(data) == "table" then return data.path or data.file or data.url end
  return nil
end

-- Raises "what src: cause", naming src once (the media layer's messages often begin with it).
local function fail(what, src, err)
  err = tostring(err)
  if err:sub(1, #src + 2) == src .. ": " then err = err:sub(#src + 3) end
  error(string.format("%s %s: %s", what, src, err), 0)
end

local function param(ctx, defaults, name)
  local p = ctx.params
  if type(p) == "table" and p[name] ~= nil then return p[name] end
  return defaults[name]
end

function M.audio_chunks(o)
  if type(o) ~= "table" or type(o.from) ~= "string" then
    error("bad argument to 'audio_chunks' (table with from = stage name expected)", 2)
  end
  local params = { seconds = o.seconds or 30, overlap = o.overlap or 0, split = o.split,
    window = o.window, pause = o.pause, dir = o.dir or "audio", first = o.first }
  return {
    kind = "audio_chunks", from = o.from, workers = o.workers or 1, queue = o.queue,
    retry = o.retry, params = params,
    run = function(env, ctx)
      local media = require "sluice.media"
      local src = M.input_path(env.data)
      if not src then error("audio_chunks: item has no path", 0) end
      -- an input past media.max_duration is refused before any of it is decoded
      local info, lerr = media.check_length(src)
      if not info then fail("audio_chunks", src, lerr) end
      local dir = M.out_dir(ctx, env.key, param(ctx, params, "dir"))
      local n = 0
      local seconds = param(ctx, params, "seconds")
      if seconds == "auto" then
        -- the length is decided per input from the whole queue (o.size: see sluice.blocks.plan)
        if type(o.size) ~= "function" then error("audio_chunks: seconds = \"auto\" needs a size function", 0) end
        seconds = o.size(env, ctx, { overlap = param(ctx, params, "overlap"), split = param(ctx, params, "split") })
      end
      local stream = media.audio_chunks(src, { seconds = seconds,
        overlap = param(ctx, params, "overlap"), split = param(ctx, params, "split"),
        window = param(ctx, params, "window"), pause = param(ctx, params, "pause"),
        first = param(ctx, params, "first") or nil, dir = dir,
        prefix = M.safe_name(env.key, 60) })
      while true do
        local c, err = stream:next()
        if not c then
          if err then fail("audio_chunks", src, err) end
          break
        end
        n = n + 1
        -- written by C: the resume keys need to know; a temporary (the consumer of the chunks
        -- may remove them once used: then their absence on resume is no reason to cut again)
        if c.path then files.wrote(c.path, true) end
        ctx:emit({ seq = c.seq, t0 = c.t0, t1 = c.t1, path = c.path, samples = c.samples,
          rate = c.rate, source = src }, { seq = c.seq, t0 = c.t0, t1 = c.t1 })
      end
      if n == 0 then error("audio_chunks " .. src .. ": no audio", 0) end
      -- The input broke off: the chunks made so far go on; the input is reported failed.
      if stream.warning then error("audio_chunks: " .. stream.warning, 0) end
    end,
  }
end

function M.capture(o)
  if type(o) ~= "table" or type(o.from) ~= "string" then
    error("bad argument to 'capture' (table with from = stage name expected)", 2)
  end
  local params = { every = o.every, scene = o.scene, keyframes = o.keyframes,
    min_interval = o.min_interval, max_width = o.max_width, max_height = o.max_height,
    dir = o.dir or "frames", name = o.name or "%04d", quality = o.quality, first = o.first,
    no_video = o.no_video or "fail", slides = o.slides, window = o.window, rate = o.rate }
  return {
    kind = "capture", from = o.from, workers = o.workers or 1, queue = o.queue, retry = o.retry,
    params = params,
    run = function(env, ctx)
      local media = require "sluice.media"
      local src = M.input_path(env.data)
      if not src then error("capture: item has no path", 0) end
      -- an input past media.max_duration is refused before any of it is decoded
      local info, perr = media.check_length(src)
      if not info then fail("capture", src, perr) end
      if param(ctx, params, "no_video") == "skip" then
        -- A recording without pictures (an audio-only lecture): nothing to capture, and not a
        -- failure; the stages downstream see no frames for this key.
        local has_video = false
        for _, st in ipairs(info.streams or {}) do
          if st.type == "video" then has_video = true end
        end
        if not has_video then
          ctx:log(string.format("%s has no video stream: no frames", src))
          ctx:event("no_video", { source = src })
          return nil
        end
      end
      local dir = M.out_dir(ctx, env.key, param(ctx, params, "dir"))
      local fo = { dir = dir, prefix = ".frame", max_width = param(ctx, params, "max_width"),
        max_height = param(ctx, params, "max_height"), quality = param(ctx, params, "quality"),
        min_interval = param(ctx, params, "min_interval") }
      local scene, every = param(ctx, params, "scene"), param(ctx, params, "every")
      if scene then fo.scene = scene
      elseif param(ctx, params, "keyframes") then fo.keyframes = true
      else fo.every = every or 2 end
      local name = param(ctx, params, "name")
      local n = 0
      -- Renames a captured frame to its seq's name, records it, and emits it.
      local function deliver(f, t, extra)
        n = n + 1
        local path = f.path
        if path and name then
          local want = dir .. "/" .. string.format(name, n) .. (path:match("%.%w+$") or ".jpg")
          if os.rename(path, want) then path = want end
        end
        if path then files.wrote(path) end
        local item = { seq = n, t = t, path = path, width = f.width, height = f.height, dhash = f.dhash,
          source = src }
        for k, v in pairs(extra) do item[k] = v end
        ctx:event("frame", { seq = n, at = t, path = path, slide = extra.slide, same_as = extra.same_as,
          window = extra.window })
        ctx:emit(item, { seq = n, t0 = t, t1 = t })
      end
      if param(ctx, params, "slides") and not scene and not every and not param(ctx, params, "keyframes") then
        local slides = require "sluice.media.slides"
        local grab = { dir = dir, prefix = ".frame", max_width = fo.max_width, max_height = fo.max_height,
          quality = fo.quality }
        -- each slide's picture: the frame where it was confirmed (fully shown, held still)
        -- how far the video is read, for the progress view's ETA (an event every 10 s of media)
        local total, next_t = info.duration, 0
        local function progress(t)
          if total and t >= next_t then
            next_t = t + 10
            ctx:event("progress", { done = t, total = total, unit = "s" })
          end
        end
        -- One reader of the input, kept open and seeked, takes each slide's picture and finds
        -- each change to the frame (slides.refine): a reader per grab read the index of every
        -- sample again (for a 2-hour MP4, megabytes and tens of milliseconds each time).
        -- (The input is opened at the first read, not here.)
        grab.times, grab.keep_open = {}, true
        local grabber = media.frames(src, grab)
        local found, info = slides.detect(src, { rate = param(ctx, params, "rate"), progress = progress,
          reader = grabber }, function(s)
          grabber:retime({ s.at }, { format = "jpeg", cells = 0 })
          local f, err = grabber:next()
          if not f then fail("capture", src, err or string.format("no frame at %.2f s", s.at)) end
          deliver(f, s.t, { slide = s.slide, same_as = s.same_as })
        end)
        grabber:close()
        if not found then fail("capture", src, info) end
        if total then ctx:event("progress", { done = total, total = total, unit = "s" }) end
        if info.warning then error("capture: " .. info.warning, 0) end
        if #found > 0 then return end
        -- No slides: sections of fixed windows, each with the frame at its start.
        local w = param(ctx, params, "window") or tonumber(ctx.config.window) or 30
        ctx:log(string.format("%s: no slides found (%s in %d samples): sections are fixed %g s windows",
          src, info.reason, info.samples, w))
        ctx:event("no_slides", { source = src, reason = info.reason, samples = info.samples, window = w })
        grab.times, grab.keep_open, grab.every = nil, nil, w
        local fs = media.frames(src, grab)
        while true do
          local f, err = fs:next()
          if not f then
            if err then fail("capture", src, err) end
            break
          end
          deliver(f, f.t, { window = true })
        end
        if n == 0 then error("capture " .. src .. ": no frames", 0) end
        return
      end
      local first_t
      -- Scene detection (like FFmpeg's select=scene) never selects the first frame: capture it
      -- on its own, so the slide shown from the start is there too.
      if scene and param(ctx, params, "first") ~= false then
        local f0 = {}
        for k, v in pairs(fo) do f0[k] = v end
        f0.scene, f0.times, f0.prefix = nil, { 0 }, ".first"
        local s0 = media.frames(src, f0)
        local f, err = s0:next()
        s0:close()
        if not f and err then fail("capture", src, err) end
        if f then first_t = f.t end
        if f then deliver(f, f.t, {}) end
      end
      local stream = media.frames(src, fo)
      local min_gap = param(ctx, params, "min_interval") or 0
      while true do
        local f, err = stream:next()
        if not f then
          if err then fail("capture", src, err) end
          break
        end
        if first_t and f.t < first_t + min_gap then
          if f.path then os.remove(f.path) end
          goto continue
        end
        deliver(f, f.t, { scene_score = f.scene_score })
        ::continue::
      end
      if n == 0 then error("capture " .. src .. ": no frames", 0) end
      -- The input broke off: the frames made so far go on; the input is reported failed.
      if stream.warning then error("capture: " .. stream.warning, 0) end
    end,
  }
end

-- Seed 001's worker rule --------------------------------------------------------------------

-- Engines' costs, memory and CPUs: sluice.blocks.plan (one table, one rule for both).
local plan = require "sluice.blocks.plan"
M.ENGINES = plan.ENGINES
M.available_memory_gb = plan.available_memory_gb
M.cpu_count = plan.cpu_count

-- workers_for{duration=, engine=, chunk=, min=1, max=10, memory_gb=, cpus=} -> n, details.
-- By duration: <= 2 chunks: min; <= 5: 3; <= 10: 5; more: half the chunks, at least 5; never
-- above max. Then by memory: at most 70% of available memory / memory per worker. Local
-- CPU-bound engines are also capped at the CPU count.
function M.workers_for(o)
  local eng = M.ENGINES[o.engine or ""] or { chunk = 600, memory = 1.0 }
  local lo, hi = o.min or 1, o.max or 10
  local chunk = o.chunk or eng.chunk
  local chunks = math.ceil((o.duration or 0) / chunk)
  local n
  if chunks <= 2 then n = lo
  elseif chunks <= 5 then n = math.min(3, hi)
  elseif chunks <= 10 then n = math.min(5, hi)
  else n = math.min(math.max(chunks // 2, 5), hi) end
  local mem = o.memory_gb or M.available_memory_gb()
  local by_mem = mem and math.floor(mem * 0.7 / eng.memory) or n
  n = math.min(n, by_mem)
  local cpus = o.cpus or M.cpu_count()
  if eng.cpu then n = math.min(n, cpus) end
  n = math.max(lo, n)
  return n, { chunks = chunks, chunk = chunk, by_memory = by_mem, cpus = cpus }
end

return M
