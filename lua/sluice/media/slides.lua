-- sluice.media.slides: finds the slides of a recorded lecture, and knows a video without any.
--
--   local slides = require "sluice.media.slides"
--   local found, info = slides.detect("talk.mp4", { rate = 2 }, function(s)
--     print(s.seq, s.t, s.same_as)   -- as each slide is confirmed
--   end)
--   -- found = { {seq=1, t=0, slide=1, at=0.5}, {seq=2, t=5, slide=2, at=6}, ...,
--   --           {seq=5, t=21, slide=2, same_as=2, at=22}, ... }
--   -- info = { samples=, slide_like=, seconds=, reason= (when found is empty) }
--
-- How: frames are sampled `rate` times a second with FFmpeg's cheaper decoding (no loop
-- filter, no non-reference frames), and each sample is reduced on the worker threads to a grid
-- of cells (48 columns; per cell the mean gray level, its spread and the share of edge pixels:
-- sluice.core.phash's cell statistics, see media.frames{cells=}). The policy is here:
--
-- * A slide is a picture with a flat background and lines of text on it. A cell is background
--   when it is flat and has the background's gray level (the commonest level among flat
--   cells); a cell is text when it has edges and background both above and below it in its
--   column (within `reach` rows), in a run of at least three such cells along the row (a line
--   of text). A sample is slide-like with at least `min_text` text cells and `min_bg` of the
--   picture background. A wall, a floor, a person or a window has flat parts and edges, but
--   not lines of edges between two stretches of one flat level.
-- * Cells that keep changing from one sample to the next (a picture-in-picture speaker, a
--   presenter walking in front of the screen, people in the room) are moving: a running
--   average of their change marks them, and they count for nothing.
-- * The slide changed when, among the text cells of the shown slide and of the sample that
--   are not moving, at least `change` of them differ from the shown slide, in `confirm`
--   consecutive samples that agree with each other (a new picture that holds still). The change
--   time is the first of those samples. A presenter who covers part of the slide changes fewer
--   cells than that, and never holds still in the same place for long.
-- * A new slide is compared with every slide shown before it, on the text cells of either that
--   are not moving now: within `same` of them differing, it is that slide again (`same_as`).
-- * The change time is then found to the frame: the frames between the last sample before
--   the change and the first after it are decoded exactly and compared the same way
--   (refine = false: the first sample's time, within 1/rate).
-- * A video whose samples are never slide-like yields no slides, with info.reason saying so.
--
-- The cell grid is the slide's perceptual hash: robust to noise, compression and a small
-- share of the picture being covered, and comparable region by region.
local sl = require "sluice"
local media = require "sluice.media"

local M = {}

local DEFAULTS = {
  rate = 2,        -- samples a second
  cells = 48,      -- grid columns (rows follow the aspect ratio)
  reach = 3,       -- rows above/below a text cell within which background must be
  min_text = 8,    -- text cells for a slide-like sample
  min_bg = 0.08,   -- share of the picture that is background, for a slide-like sample
  change = 0.3,    -- share of text cells that differ: the slide changed
  confirm = 2,     -- consecutive samples that agree on a new picture
  same = 0.25,     -- share of text cells that differ: the same slide again
  moving = 0.4,    -- running change average above which a cell is moving (a cell that
                   -- changed once is not; twice within a few samples, it is)
  decay = 0.3,     -- weight of the newest sample in that running average
  dmean = 8,       -- a cell differs: its mean moved more than this (gray levels)...
  dedge = 40,      -- ... or its edge share moved more than this (0..255)
}
M.DEFAULTS = DEFAULTS

local function merge(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if DEFAULTS[k] == nil and k ~= "threads" and k ~= "fast" and k ~= "refine" and k ~= "progress"
      and k ~= "reader" then
      error("slides: unknown option '" .. tostring(k) .. "'", 3)
    end
    o[k] = v
  end
  return o
end

-- analyse(frame, opts) -> a sample: {t=, cols=, rows=, mean={}, sd={}, edge={}, text={[i]=true},
-- ntext=, nbg=, bg=, slide_like=} from a frame carrying cells (media.frames{cells=}).
function M.analyse(f, opts)
  opts = opts or DEFAULTS
  local cols, rows, c = f.cells_cols, f.cells_rows, f.cells
  if not c then error("slides.analyse: frame without cells (media.frames{cells = N})", 2) end
  local n = cols * rows
  local mean, sd, edge = {}, {}, {}
  local byte = string.byte
  local hist = {}
  for i = 1, n do
    local m, s, e = byte(c, 3 * i - 2, 3 * i)
    mean[i], sd[i], edge[i] = m, s, e
    if s <= 6 and e <= 5 then
      local b = m // 4
      hist[b] = (hist[b] or 0) + 1
    end
  end
  -- the background level: the commonest among flat cells (bins of 4 levels, a bin with both
  -- neighbours)
  local best, bg = 0, nil
  for b in pairs(hist) do
    local k = (hist[b - 1] or 0) + hist[b] + (hist[b + 1] or 0)
    if k > best then best, bg = k, b * 4 + 2 end
  end
  local isbg, nbg = {}, 0
  if bg then
    for i = 1, n do
      if sd[i] <= 6 and edge[i] <= 5 and math.abs(mean[i] - bg) <= 8 then
        isbg[i] = true
        nbg = nbg + 1
      end
    end
  end
  local reach = opts.reach
  local cand = {}
  for y = 0, rows - 1 do
    for x = 0, cols - 1 do
      local i = y * cols + x + 1
      if edge[i] >= 12 and not isbg[i] then
        local up, down = false, false
        for d = 1, reach do
          if y - d >= 0 and isbg[i - d * cols] then up = true end
          if y + d < rows and isbg[i + d * cols] then down = true end
        end
        if up and down then cand[i] = true end
      end
    end
  end
  -- text: candidates in runs of three or more along a row
  local text, ntext = {}, 0
  for y = 0, rows - 1 do
    local x = 0
    while x < cols do
      local i = y * cols + x + 1
      if cand[i] then
        local x1 = x
        while x1 + 1 < cols and cand[i + (x1 + 1 - x)] do x1 = x1 + 1 end
        if x1 - x + 1 >= 3 then
          for k = x, x1 do
            text[y * cols + k + 1] = true
            ntext = ntext + 1
          end
        end
        x = x1 + 1
      else
        x = x + 1
      end
    end
  end
  return { t = f.t, cols = cols, rows = rows, n = n, mean = mean, sd = sd, edge = edge,
    text = text, ntext = ntext, nbg = nbg, bg = bg,
    slide_like = ntext >= opts.min_text and nbg >= opts.min_bg * n }
end

local function differs(a, b, i, o)
  return math.abs(a.mean[i] - b.mean[i]) > o.dmean or math.abs(a.edge[i] - b.edge[i]) > o.dedge
end

-- The share of the text cells of a or b, not moving, that differ between a and b (and how
-- many cells that is out of).
-- When most of those cells are moving, the whole picture is in motion (a fade from slide to
-- slide, a camera pan): then every text cell counts.
local function text_diff(a, b, moving, o)
  if a.n ~= b.n then return 1, 0 end
  local total, diff, all, alldiff = 0, 0, 0, 0
  for i = 1, a.n do
    if (a.text[i] or b.text[i]) and not (a.unknown and a.unknown[i]) and not (b.unknown and b.unknown[i]) then
      local d = differs(a, b, i, o)
      all = all + 1
      if d then alldiff = alldiff + 1 end
      if not moving[i] then
        total = total + 1
        if d then diff = diff + 1 end
      end
    end
  end
  if total < all / 2 then total, diff = all, alldiff end
  if total == 0 then return 0, 0 end
  return diff / total, total
end
M.text_diff = function(a, b, o) return text_diff(a, b, {}, merge(o)) end

-- A detector: det:push(sample) -> a new slide {seq=, t=, slide=, same_as=, at=} or nil.
-- Samples come in time order from analyse().
local Detector = {}
Detector.__index = Detector

function M.detector(opts)
  local o = merge(opts)
  return setmetatable({ o = o, activity = {}, moving = {}, prev = nil, shown = nil, run = {},
    slides = {}, found = {}, samples = 0, slide_like = 0 }, Detector)
end

function Detector:_update_motion(s)
  local prev, act, mov, o = self.prev, self.activity, self.moving, self.o
  if prev and prev.n == s.n then
    for i = 1, s.n do
      local a = (act[i] or 0) * (1 - o.decay) + (differs(prev, s, i, o) and o.decay or 0)
      act[i] = a
      mov[i] = a > o.moving or nil
    end
  end
  self.prev = s
end

-- A slide's reference picture: the sample, with the cells that were moving (covered by a
-- presenter, say) unknown until a later sample of the same slide shows them still.
local function reference(s, moving)
  local r = { t = s.t, n = s.n, cols = s.cols, rows = s.rows, mean = {}, edge = {}, text = {},
    unknown = {} }
  for i = 1, s.n do
    r.mean[i], r.edge[i], r.text[i] = s.mean[i], s.edge[i], s.text[i]
    if moving[i] then r.unknown[i] = true end
  end
  return r
end

-- Fills the unknown cells of reference r that sample s shows still.
local function fill(r, s, moving)
  for i in pairs(r.unknown) do
    if not moving[i] then
      r.mean[i], r.edge[i], r.text[i] = s.mean[i], s.edge[i], s.text[i]
      r.unknown[i] = nil
    end
  end
end

function Detector:_new_slide(first, s)
  local o = self.o
  s = reference(s, self.moving)
  local same
  for _, old in ipairs(self.slides) do
    if text_diff(old.sample, s, self.moving, o) <= o.same then same = old break end
  end
  local seq = #self.found + 1
  local slide
  if same then
    slide = same.slide
  else
    slide = #self.slides + 1
    self.slides[slide] = { slide = slide, sample = s }
  end
  local ev = { seq = seq, t = first.t, slide = slide, same_as = same and same.seq or nil, at = s.t,
    after = first.prev_t }
  -- (internal, for refine) the picture shown before and the cells moving then
  self.before, self.before_moving = self.shown, self.moving
  if not same then self.slides[slide].seq = seq end
  self.found[seq] = ev
  self.shown = s
  return ev
end

function Detector:push(s)
  local o = self.o
  s.prev_t = self.prev and self.prev.t or nil
  self.samples = self.samples + 1
  if s.slide_like then self.slide_like = self.slide_like + 1 end
  -- motion is judged before the sample joins it: a cell that changes only now is not moving
  local moving = self.moving
  local ev
  if not self.shown then
    -- no slide yet: wait for a slide-like picture that holds still
    local run = self.run
    if s.slide_like and (#run == 0 or text_diff(run[#run], s, moving, o) < o.change) then
      run[#run + 1] = s
    else
      self.run = s.slide_like and { s } or {}
      run = self.run
    end
    if #run >= o.confirm then
      ev = self:_new_slide(run[1], s)
      self.run = {}
    end
  else
    local d = text_diff(self.shown, s, moving, o)
    local run = self.run
    if d >= o.change then
      if #run == 0 or text_diff(run[#run], s, moving, o) < o.change then
        run[#run + 1] = s
      else
        self.run = { s }
        run = self.run
      end
      if #run >= o.confirm then
        self.run = {}
        if s.slide_like then
          ev = self:_new_slide(run[1], s)
        else
          -- the picture is no slide any more (a cut to the camera): nothing shown until one is
          self.shown = nil
        end
      end
    else
      self.run = {}
      fill(self.shown, s, moving)
    end
  end
  self:_update_motion(s)
  return ev
end

-- refine(url, shown, moving, t0, t1, opts) -> the time of the first frame after t0 and up to t1
-- whose text cells differ from the picture shown (by opts.change), decoding every frame in
-- between exactly; t1 when none does (a change over several frames), or nil, message.
-- opts.reader: a frames{times=, keep_open=true} stream of url to read them with (retimed;
-- left open), instead of opening the input again.
function M.refine(url, shown, moving, t0, t1, opts)
  local o = merge(opts)
  local times = {}
  for t = t0 + 0.02, t1 + 0.001, 0.02 do times[#times + 1] = t end
  if #times == 0 then return t1 end
  local stream = o.reader
  if stream then
    stream:retime(times, { format = "none", cells = o.cells })
  else
    stream = media.frames(url, { times = times, format = "none", cells = o.cells, threads = o.threads })
  end
  local found
  while true do
    local f, err, code = stream:next()
    if not f then
      if err then return nil, err, code end
      break
    end
    if f.t > t0 + 1e-6 and text_diff(shown, M.analyse(f, o), moving, o) >= o.change then
      found = f.t
      break
    end
    sl.sleep(0)
  end
  if stream ~= o.reader then stream:close() end
  return found or t1
end

-- detect(url, opts[, on_slide]) -> slides, info; or nil, message when the video cannot be
-- read. on_slide(slide) is called as each slide is confirmed (slides come in time order);
-- opts.progress(t), if given, with each sample's time (how far the video is read); opts.reader,
-- if given, is the refine's (see refine).
function M.detect(url, opts, on_slide)
  local o = merge(opts)
  local det = M.detector(o)
  local stream = media.frames(url, { every = 1 / o.rate, format = "none", cells = o.cells,
    fast = o.fast ~= false, threads = o.threads })
  local last_t = 0
  while true do
    local f, err, code = stream:next()
    if not f then
      if err then return nil, err, code end
      break
    end
    last_t = f.t
    if o.progress then o.progress(f.t) end
    local ev = det:push(M.analyse(f, o))
    -- about a millisecond of Lua a sample: let the loop turn between samples (frames come in
    -- batches, and a batch at once would hold it for tens of milliseconds)
    sl.sleep(0)
    if ev then
      if ev.after and o.refine ~= false and det.before then
        local t, rerr = M.refine(url, det.before, det.before_moving, ev.after, ev.t, o)
        if not t then return nil, rerr end
        ev.t = t
      end
      ev.after = nil
      if on_slide then on_slide(ev) end
    end
  end
  local info = { samples = det.samples, slide_like = det.slide_like, seconds = last_t,
    distinct = #det.slides, warning = stream.warning }
  if #det.found == 0 then
    info.reason = det.slide_like == 0 and "no sampled picture looks like a slide"
      or "no slide held still long enough"
  end
  return det.found, info
end

return M
