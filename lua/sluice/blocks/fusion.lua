-- sluice.blocks.fusion: puts what was said next to what was shown.
--
-- Speech is a list of segments {start=, ["end"]=, text=, words={{start=, ["end"]=, word=}}?}
-- in seconds (words optional). Vision is a list of results {seq=, t=, text=, path=?}, one per
-- captured slide or frame, `seq` counting captures from `first_seq` (default 1). A result with
-- same_as = k and no text is slide k shown again: it takes k's description once that is in
-- (entries carry same_as); window = true marks a frame that stands for a fixed window (a video
-- without slides; entries carry window_fallback).
--
-- Policies (declared in pipeline scripts):
--   fusion.by_slide              one entry per slide interval: the slide is shown from its t
--                                until the next slide's t (the last one until end_time)
--   fusion.by_window{seconds=30} one entry per fixed window [k*s, (k+1)*s)
--   fusion.nearest               one entry per vision result: the speech nearer to it than to
--                                its neighbours (interval bounds halfway between captures)
-- Speech goes to the interval that holds its midpoint (where most of it was said). When word
-- timings exist, each word is placed on its own, so a segment spoken across a slide change is
-- split between the two slides; without them the whole segment goes to one interval. Speech
-- before the first slide belongs to the first one.
--
-- Batch use:       entries = fusion.fuse(fusion.by_slide, speech, vision, {end_time = 60})
-- Incremental use (seed 000 step 6: STT completes first, VLM batches arrive in any order):
--   local f = fusion.new { policy = fusion.by_slide, end_time = 60 }
--   f:add_times{ {seq=1, t=0}, {seq=2, t=9.5} }  -- optional: capture times known early
--   f:add_vision(batch)    -- buffered while speech is missing; returns the entries ready now
--   f:set_speech(segments) -- the gate: returns the entries that became ready
--   (or, as it is transcribed: f:add_speech(final, first, upto) per chunk, then f:end_speech())
--   f:finish()             -- no more vision: returns every remaining entry
--   f:entries()            -- every entry emitted so far
-- forget = true (fusion.new{policy=, forget=true}): the fuser lets go of what no entry still
-- to come can need, the speech before the earliest interval not yet emitted, and keeps no
-- list of the entries it returned (entries() is then an error: the caller owns them), so it
-- holds what is not final only, whatever the input's length (a two-hour lecture's fuser).
-- Capture times must then come in time order (as a capture makes them).
-- Every call returns a list of new entries in seq order, each emitted exactly once. An entry
-- for slide k is ready once its description is in and the next slide's time is known (from
-- add_times, a later batch, or finish), so each VLM batch yields its slides at once except
-- the last one, which waits for the next capture time. Entry fields:
--   by_slide / nearest: seq, t, t0, t1, slide_text, slide_path, speech, segments
--   by_window:          window (0-based), t0, t1, slides = {{seq,t,text,path}}, slide_text,
--                       speech, segments
-- where segments are the (possibly clipped) speech segments {start, end, text}. A slide whose
-- description never came (failed batch) is emitted by finish() with missing = true so the
-- speech said while it was shown is not lost.
--
-- Chunked transcripts: fusion.merge_chunks(chunks, opts) joins per-chunk STT results whose
-- audio overlapped, removing the words both chunks heard (see below).
local text = require "sluice.blocks.text"

local M = {}

local INF = math.huge

-- Policies ---------------------------------------------------------------------------------

local Policy = {}
Policy.__index = Policy
Policy.__name = "sluice.blocks.fusion.policy"
function Policy:__tostring()
  if self.kind == "by_window" then return "fusion.by_window{seconds=" .. self.seconds .. "}" end
  return "fusion." .. self.kind
end
-- policy:fuse(speech, vision, opts) is fusion.fuse(policy, ...).
function Policy:fuse(speech, vision, opts) return M.fuse(self, speech, vision, opts) end
function Policy:fuser(opts)
  opts = opts or {}
  local o = { policy = self }
  for k, v in pairs(opts) do o[k] = v end
  return M.new(o)
end

M.by_slide = setmetatable({ kind = "by_slide" }, Policy)
M.nearest = setmetatable({ kind = "nearest" }, Policy)

function M.by_window(opts)
  local s = type(opts) == "table" and opts.seconds or opts
  if type(s) ~= "number" or s <= 0 then
    error("bad argument to 'fusion.by_window' (seconds = positive number expected, got " ..
      tostring(s) .. ")", 2)
  end
  return setmetatable({ kind = "by_window", seconds = s }, Policy)
end

local function check_policy(p, level)
  if getmetatable(p) ~= Policy then
    if p == "by_slide" then return M.by_slide end
    if p == "nearest" then return M.nearest end
    error("bad fusion policy (fusion.by_slide, fusion.nearest or fusion.by_window{seconds=} " ..
      "expected, got " .. tostring(p) .. ")", level + 1)
  end
  return p
end

-- Speech units -----------------------------------------------------------------------------

-- True for recognizer fillers that are not words: <s>, </s>, <sil>, [NOISE], ++UH++.
local function filler(w)
  return w == "" or w:match("^<.*>$") or w:match("^%[.*%]$") or w:match("^%+%+.*%+%+$")
end

-- Splits speech into placeable units: one per timed word, or one per segment without words.
-- Each unit: {seg = segment index, start, end, text}.
local function speech_units(speech, offset)
  local units = {}
  offset = offset or 0
  for si, seg in ipairs(speech) do
    local i = si + offset
    local s, e = tonumber(seg.start), tonumber(seg["end"])
    if not s or not e then
      error(string.format("fusion: speech segment %d has no start/end times", si), 3)
    end
    local words = seg.words
    if type(words) == "table" and #words > 0 and words[1].start ~= nil then
      for _, w in ipairs(words) do
        local wt = tostring(w.word or w.text or ""):gsub("%(%d+%)$", "")
        if not filler(wt) then
          local ws = tonumber(w.start) or s
          units[#units + 1] = { seg = i, start = ws, ["end"] = tonumber(w["end"]) or ws, text = wt }
        end
      end
    elseif seg.text and tostring(seg.text):find("%S") then
      units[#units + 1] = { seg = i, start = s, ["end"] = e, text = tostring(seg.text), whole = true }
    end
  end
  return units
end

local function mid(u) return (u.start + u["end"]) / 2 end

-- The order of units: by midpoint, then by segment.
local function before(a, b)
  local ma, mb = mid(a), mid(b)
  if ma ~= mb then return ma < mb end
  return a.seg < b.seg
end

-- The first index of units (sorted by midpoint) whose midpoint is >= lo.
local function first_at(units, lo)
  local a, b = 1, #units + 1
  while a < b do
    local m = (a + b) // 2
    if mid(units[m]) < lo then a = m + 1 else b = m end
  end
  return a
end

-- Speech of the units whose midpoint lies in [lo, hi): returns the joined text and the
-- per-segment pieces {start, end, text}. units are sorted by midpoint.
local function speech_in(units, lo, hi)
  local pieces, words = {}, {}
  local cur
  for i = first_at(units, lo), #units do
    local u = units[i]
    local m = mid(u)
    if m >= hi then break end
    do
      words[#words + 1] = u.text
      if cur and cur.seg == u.seg then
        cur.parts[#cur.parts + 1] = u.text
        if u["end"] > cur["end"] then cur["end"] = u["end"] end
      else
        cur = { seg = u.seg, start = u.start, ["end"] = u["end"], parts = { u.text } }
        pieces[#pieces + 1] = cur
      end
    end
  end
  local segs = {}
  for i, p in ipairs(pieces) do
    segs[i] = { start = p.start, ["end"] = p["end"], text = table.concat(p.parts, " ") }
  end
  return table.concat(words, " "), segs
end

local function speech_end(units)
  local e = 0
  for _, u in ipairs(units) do if u["end"] > e then e = u["end"] end end
  return e
end

-- The incremental fuser ----------------------------------------------------------------------

local Fuser = {}
Fuser.__index = Fuser
Fuser.__name = "sluice.blocks.fusion.fuser"

-- new{policy=, end_time=?, first_seq=1} -> a fuser (see the top of this file).
function M.new(opts)
  opts = opts or {}
  local policy = check_policy(opts.policy or M.by_slide, 2)
  if opts.end_time ~= nil and type(opts.end_time) ~= "number" then
    error("bad option 'end_time' to 'fusion.new' (number expected)", 2)
  end
  return setmetatable({
    policy = policy,
    end_time = opts.end_time,
    first_seq = opts.first_seq or 1,
    times = {},      -- seq -> t
    sorted = {},     -- the seqs of times, in order
    items = {},      -- seq -> vision result
    emitted = {},    -- seq (or window) -> true
    out = {},        -- every entry emitted, in emission order
    next_window = 0, -- by_window: the first window not yet emitted
    units = nil,     -- set by set_speech
    units_end = 0,   -- where the speech added so far ends
    forget = opts.forget and true or false,
    finished = false,
  }, Fuser)
end

local function check_item(it, i)
  if type(it) ~= "table" or type(it.t) ~= "number" then
    error(string.format("fusion: vision item %d needs a number t", i), 3)
  end
  if math.type(it.seq) ~= "integer" then
    error(string.format("fusion: vision item %d (t=%g) needs an integer seq", i, it.t), 3)
  end
end

-- Sorted list of known seqs (kept as seqs are added: a long lecture's fuser is asked for it on
-- every input; the caller must not change it).
local function known_seqs(self)
  return self.sorted
end

-- Records the time of seq, keeping self.sorted in order (seqs come mostly in order).
local function set_time(self, seq, t)
  if self.times[seq] == nil then
    local list = self.sorted
    local i = #list + 1
    list[i] = seq
    while i > 1 and list[i - 1] > seq do
      list[i], list[i - 1] = list[i - 1], seq
      i = i - 1
    end
  end
  self.times[seq] = t
end

function Fuser:add_times(list)
  for i, it in ipairs(list) do
    check_item(it, i)
    set_time(self, it.seq, it.t)
  end
  return self:_ready()
end

-- A slide shown again (same_as = the seq of its first showing) and not described itself takes
-- the description of its first showing, once that is in.
local function resolve_alias(self, it)
  local orig = self.items[it.same_as]
  if not orig then
    self.aliases[it.same_as] = self.aliases[it.same_as] or {}
    table.insert(self.aliases[it.same_as], it)
    return
  end
  local copy = {}
  for k, v in pairs(it) do copy[k] = v end
  copy.text, copy.provider = orig.text, orig.provider
  self.items[it.seq] = copy
end

function Fuser:add_vision(list)
  if self.finished then error("fusion: add_vision after finish", 2) end
  self.aliases = self.aliases or {}
  for i, it in ipairs(list) do
    check_item(it, i)
    set_time(self, it.seq, it.t)
    if it.same_as and it.text == nil and it.same_as ~= it.seq then
      resolve_alias(self, it)
    else
      self.items[it.seq] = it
      local waiting = self.aliases[it.seq]
      if waiting then
        self.aliases[it.seq] = nil
        for _, a in ipairs(waiting) do resolve_alias(self, a) end
      end
    end
  end
  return self:_ready()
end


function Fuser:set_speech(speech)
  if type(speech) ~= "table" then error("bad argument #1 to 'set_speech' (segment list expected)", 2) end
  local units = speech_units(speech)
  table.sort(units, before)
  self.units = units
  self.units_end = speech_end(units)
  self.complete, self.tent = true, nil
  return self:_ready()
end

-- Speech as it is transcribed (see fusion.chunk_merger): `segments` are segments first,
-- first+1, ... of the whole transcript, final; no speech still to come has its midpoint before
-- `upto`. An entry whose interval ends by `upto` is then ready as with set_speech, and the same.
function Fuser:add_speech(segments, first, upto)
  if type(segments) ~= "table" then error("bad argument #1 to 'add_speech' (segment list expected)", 2) end
  if self.complete then error("fusion: add_speech after set_speech", 2) end
  local new = speech_units(segments, (first or 1) - 1)
  table.sort(new, before)
  self.units_end = math.max(self.units_end, speech_end(new))
  local units = self.units or {}
  for _, u in ipairs(new) do -- mostly appended: move each back to its place
    local i = #units + 1
    units[i] = u
    while i > 1 and before(u, units[i - 1]) do
      units[i], units[i - 1] = units[i - 1], u
      i = i - 1
    end
  end
  self.units = units
  self.tent = nil -- superseded: set_tentative gives the new tail
  if upto and upto > (self.upto or -INF) then self.upto = upto end
  return self:_ready()
end

-- No more speech is to come (the last add_speech had the rest): every interval's speech is
-- final, as after set_speech.
function Fuser:end_speech()
  self.units = self.units or {}
  self.complete, self.tent = true, nil
  return self:_ready()
end

-- The speech heard so far that may still change (the last chunk's, after add_speech): only
-- provisional entries use it.
function Fuser:set_tentative(segments, first)
  local units = speech_units(segments or {}, (first or 1) - 1)
  table.sort(units, before)
  self.tent = units
end

-- Has speech for [lo, hi) no more to come?
function Fuser:_speech_done(hi)
  return self.complete or (hi ~= nil and hi <= (self.upto or -INF))
end

-- An entry's slide fields from the captured item it (or `missing` when none was captured).
local function with_slide(e, it)
  if it then
    e.slide_text, e.slide_path = it.text, it.path
    e.same_as, e.window_fallback = it.same_as, it.window
  else
    e.missing = true
  end
end

-- provisional() -> the entries not yet ready for which both sides have something: the slide
-- (its capture time; its description when in) and speech in its interval (final and
-- tentative), with the interval as known now. Each is returned again only when it changed;
-- entries carry provisional = true. by_slide and nearest only (by_window: an empty list).
function Fuser:provisional()
  local out = {}
  local kind = self.policy.kind
  if kind == "by_window" or not self.units and not self.tent then return out end
  self.prov = self.prov or {}
  local seqs = known_seqs(self)
  local units = self.units or {}
  local tent = self.tent or {}
  for i, seq in ipairs(seqs) do
    if not self.emitted[seq] then
      local prev, nxt = seqs[i - 1], seqs[i + 1]
      local first = seq == self.first_seq or prev == nil
      local t = self.times[seq]
      local lo, hi
      if kind == "by_slide" then
        lo, hi = first and -INF or t, nxt and self.times[nxt] or INF
      else
        lo = first and -INF or (self.times[prev] + t) / 2
        hi = nxt and (t + self.times[nxt]) / 2 or INF
      end
      local got = {}
      for j = first_at(units, lo), #units do
        if mid(units[j]) >= hi then break end
        got[#got + 1] = units[j]
      end
      for _, u in ipairs(tent) do
        local m = mid(u)
        if m >= lo and m < hi then got[#got + 1] = u end
      end
      if #got > 0 then
        table.sort(got, before)
        local speech, segs = speech_in(got, -INF, INF)
        local it = self.items[seq]
        local t0 = kind == "by_slide" and t or (first and math.min(0, t) or lo)
        local t1 = hi < INF and hi or math.max(t, got[#got]["end"])
        local e = { seq = seq, t = t, t0 = t0, t1 = t1, speech = speech, segments = segs,
          provisional = true }
        with_slide(e, it)
        local sig = string.format("%s\0%s\0%.3f", speech, tostring(e.slide_text), t1)
        if self.prov[seq] ~= sig then
          self.prov[seq] = sig
          out[#out + 1] = e
        end
      end
    end
  end
  return out
end

function Fuser:finish(end_time)
  if end_time then self.end_time = end_time end
  self.finished = true
  return self:_ready()
end

function Fuser:has_speech() return self.units ~= nil end
function Fuser:entries()
  if self.forget then error("fusion: entries() of a fuser made with forget (its calls returned them)", 2) end
  return self.out
end

-- forget: drops the speech units no entry still to come can take, those whose midpoint lies
-- before the lowest bound of an interval not yet emitted (by_window: the next window; by_slide
-- and nearest: the earliest slide not yet emitted, or the last one known, since slides still to
-- come are later).
local function forget_speech(self)
  local units = self.units
  if not units or #units == 0 then return end
  local kind, bound = self.policy.kind, nil
  if kind == "by_window" then
    if self.next_window == 0 then return end
    bound = self.next_window * self.policy.seconds
  else
    local seqs = self.sorted
    if #seqs == 0 then return end
    for i, seq in ipairs(seqs) do
      if not self.emitted[seq] then
        if i == 1 or seq == self.first_seq then return end -- its speech starts at the beginning
        local t = self.times[seq]
        bound = kind == "by_slide" and t or (self.times[seqs[i - 1]] + t) / 2
        break
      end
    end
    bound = bound or self.times[seqs[#seqs]]
  end
  local n = first_at(units, bound) - 1
  if n <= 0 then return end
  local len = #units
  table.move(units, n + 1, len, 1)
  for i = len, len - n + 1, -1 do units[i] = nil end
end


local function last_time(self)
  local e = self.end_time
  if e then return e end
  e = self.units_end
  for _, t in pairs(self.times) do if t > e then e = t end end
  return e
end

function Fuser:_slide_entry(seq, first, prev_t, next_t)
  local t = self.times[seq]
  local it = self.items[seq]
  local lo, hi, t0, t1
  if self.policy.kind == "by_slide" then
    lo = first and -INF or t
    hi = next_t or INF
    t0, t1 = t, next_t or math.max(last_time(self), t)
  else -- nearest
    lo = (not first) and (prev_t + t) / 2 or -INF
    hi = next_t and (t + next_t) / 2 or INF
    t0 = (not first) and lo or math.min(0, t)
    t1 = next_t and hi or math.max(last_time(self), t)
  end
  local speech, segs = speech_in(self.units, lo, hi)
  local e = { seq = seq, t = t, t0 = t0, t1 = t1, speech = speech, segments = segs }
  with_slide(e, it)
  return e
end

function Fuser:_window_entry(w, last)
  local s = self.policy.seconds
  local lo, hi = w * s, (w + 1) * s
  local speech, segs = speech_in(self.units, w == 0 and -INF or lo, last and INF or hi)
  local slides, texts = {}, {}
  for _, seq in ipairs(known_seqs(self)) do
    local t = self.times[seq]
    if t >= lo and (t < hi or (last and t >= lo)) then
      local it = self.items[seq]
      slides[#slides + 1] = { seq = seq, t = t, text = it and it.text, path = it and it.path,
        missing = (not it) or nil }
      if it and it.text then texts[#texts + 1] = it.text end
    end
  end
  return { window = w, t0 = lo, t1 = last and math.max(math.min(hi, last_time(self)), lo) or hi, slides = slides,
    slide_text = table.concat(texts, "\n"), speech = speech, segments = segs }
end

-- Emits every entry that has become ready; returns them in order.
function Fuser:_ready()
  local new = {}
  if not self.units then return new end
  local kind = self.policy.kind
  if kind == "by_window" then
    local s = self.policy.seconds
    local coverage
    if self.finished then
      coverage = INF
    else
      -- All descriptions of slides shown before `coverage` are in.
      local seq = self.first_seq
      coverage = -INF
      while true do
        if not self.items[seq] then
          if self.times[seq] then coverage = self.times[seq] end
          break
        end
        coverage = self.items[seq].t
        seq = seq + 1
      end
    end
    local nwin = self.finished and math.max(1, math.ceil(last_time(self) / s)) or INF
    local w = self.next_window
    while w < nwin and (w + 1) * s <= coverage and not (self.finished and w == nwin - 1)
      and self:_speech_done((w + 1) * s) do
      local e = self:_window_entry(w, false)
      new[#new + 1] = e
      w = w + 1
    end
    if self.finished and w < nwin and self.complete then
      while w < nwin do
        new[#new + 1] = self:_window_entry(w, w == nwin - 1)
        w = w + 1
      end
    end
    self.next_window = w
  else
    local seqs = known_seqs(self)
    for i, seq in ipairs(seqs) do
      if not self.emitted[seq] and (self.items[seq] or self.finished) then
        local prev, nxt = seqs[i - 1], seqs[i + 1]
        local first = seq == self.first_seq or (self.finished and prev == nil)
        local last = self.finished and nxt == nil
        local prev_ok = first or (prev ~= nil and (prev == seq - 1 or self.finished))
        local next_ok = last or (nxt ~= nil and (nxt == seq + 1 or self.finished))
        if kind == "by_slide" then prev_ok = true end
        local prev_t = (not first) and prev and self.times[prev] or nil
        local next_t = (not last) and nxt and self.times[nxt] or nil
        -- the speech of its interval is all in (an interval that runs to the end: all speech)
        local hi = next_t and (kind == "by_slide" and next_t or (self.times[seq] + next_t) / 2)
        if prev_ok and next_ok and self:_speech_done(hi) then
          self.emitted[seq] = true
          -- An emitted entry is never provisional again: its signature goes (a long
          -- lecture's fuser would otherwise keep every slide's speech twice).
          if self.prov then self.prov[seq] = nil end
          new[#new + 1] = self:_slide_entry(seq, first, prev_t, next_t)
        end
      end
    end
  end
  if self.forget then
    forget_speech(self)
  else
    for _, e in ipairs(new) do self.out[#self.out + 1] = e end
  end
  return new
end

-- fuse(policy, speech, vision, {end_time=}) -> every entry. Vision items without seq are
-- numbered by time.
function M.fuse(policy, speech, vision, opts)
  policy = check_policy(policy, 2)
  opts = opts or {}
  local items = {}
  for i, it in ipairs(vision or {}) do items[i] = it end
  local numbered = true
  for _, it in ipairs(items) do if it.seq == nil then numbered = false end end
  if not numbered then
    table.sort(items, function(a, b) return a.t < b.t end)
    local copy = {}
    for i, it in ipairs(items) do
      copy[i] = { seq = i, t = it.t, text = it.text, path = it.path }
    end
    items = copy
  end
  local first = INF
  for _, it in ipairs(items) do if it.seq < first then first = it.seq end end
  local f = M.new { policy = policy, end_time = opts.end_time,
    first_seq = first < INF and first or 1 }
  f:set_speech(speech)
  f:add_vision(items)
  f:finish()
  return f.out
end

-- Overlapping chunks --------------------------------------------------------------------------

-- merge_chunks(chunks, opts) -> {segments=, text=, words=, boundaries=}
-- chunks: in order, each {t0=, t1=, segments={...}} (or {t0, t1, text}) with segment and word
-- times relative to the chunk's t0 (opts.absolute = true when they are already absolute).
-- Consecutive chunks overlap by (previous t1 - next t0) seconds (or opts.overlap when the times
-- are not given): both heard those words. Chunks that meet (next t0 >= previous t1: cut in a
-- pause) are joined as they are (boundary marked adjacent = true). Otherwise the tail of one
-- chunk and the head of the next are aligned word by word (longest common subsequence on
-- normalized words; with word times, only words less than opts.max_skew (1.5 s) apart may
-- match) and the result is cut at the middle matched pair,
-- away from the chunk edges where recognition is worst. Without a match of at least
-- opts.min_match (2) words, timed words are cut at the middle of the overlap and untimed ones
-- are kept (boundary marked aligned = false). Output segments keep their original grouping;
-- segments cut at a boundary keep the words that stay.
-- Incremental use (the lecture's speech stage: chunks as they are transcribed, in seq order):
--   local m = fusion.chunk_merger { absolute = true }
--   m:add(chunk)                  -- the next chunk in order
--   local segs, first, upto, bounds = m:take_final()
--       -- the segments no later chunk can change, that were not taken before: they are
--       -- segments first, first+1, ... of merge_chunks' result over every chunk, and no
--       -- speech of a later chunk has its midpoint before `upto` (seconds); bounds: the chunk
--       -- boundaries (merge_chunks' `boundaries`) made since the last call
--   m:take_final(true)            -- the same once no chunk is to come: every segment is final
--   local tail, first = m:tail()  -- the last chunk's segments as they stand (may change)
--   m:result()                    -- what merge_chunks returns for the chunks added so far
-- opts.forget_taken = true: take_final lets go of the tokens (and boundaries) it returned, so
-- that the merger holds the chunks not yet final only, whatever the input's length; result()
-- is then an error (the caller owns what take_final returned).
-- opts.carry = {"speaker", ...}: each output segment has these fields of the chunk segment
-- its words came from (who spoke, from a diarizing model; how the times were found).
-- A later chunk only ever changes tokens of the chunk before it (the overlap both heard), so
-- every token of the chunks before the last is final.
local Merger = {}
Merger.__index = Merger
Merger.__name = "sluice.blocks.fusion.chunk_merger"

function M.chunk_merger(opts)
  opts = opts or {}
  return setmetatable({ opts = opts, min_match = opts.min_match or 2, max_skew = opts.max_skew or 1.5,
    wps = opts.words_per_second or 3.5, tokens = {}, boundaries = {}, prev = nil, n = 0,
    taken = 0, nseg = 0, btaken = 0 }, Merger)
end

function Merger:add(ch)
  local opts, tokens, boundaries, prev = self.opts, self.tokens, self.boundaries, self.prev
  local min_match, max_skew, wps = self.min_match, self.max_skew, self.wps
  local ci = self.n + 1
  do
    if type(ch) ~= "table" then error("fusion.merge_chunks: chunk " .. ci .. " is not a table", 3) end
    local off = opts.absolute and 0 or (tonumber(ch.t0) or 0)
    local segs = ch.segments or (ch.result and ch.result.segments)
    if not segs then
      local txt = ch.text or (ch.result and ch.result.text) or ""
      segs = { { start = 0, ["end"] = (tonumber(ch.t1) or 0) - (tonumber(ch.t0) or 0), text = txt } }
      if opts.absolute then segs[1].start, segs[1]["end"] = ch.t0 or 0, ch.t1 or 0 end
    end
    -- This chunk's tokens.
    local toks = {}
    for si, seg in ipairs(segs) do
      local sref = { chunk = ci, start = (tonumber(seg.start) or 0) + off,
        ["end"] = (tonumber(seg["end"]) or 0) + off }
      if opts.carry then
        for _, f in ipairs(opts.carry) do sref[f] = seg[f] end
      end
      local words = seg.words
      if type(words) == "table" and #words > 0 and words[1].start ~= nil then
        for _, w in ipairs(words) do
          local wt = tostring(w.word or w.text or ""):gsub("%(%d+%)$", "")
          if not filler(wt) then
            local ws = (tonumber(w.start) or 0) + off
            toks[#toks + 1] = { text = wt, key = text.normalize(wt), start = ws,
              ["end"] = (tonumber(w["end"]) or (tonumber(w.start) or 0)) + off, seg = sref }
          end
        end
      else
        for _, wt in ipairs(text.words(seg.text)) do
          toks[#toks + 1] = { text = wt, key = text.normalize(wt), seg = sref, seg_index = si }
        end
      end
    end
    if not prev then
      for _, t in ipairs(toks) do tokens[#tokens + 1] = t end
    elseif tonumber(ch.t0) and tonumber(prev.t1) and tonumber(ch.t0) >= tonumber(prev.t1) then
      -- Chunks that meet without overlapping (cut in a pause, split = "silence"): nothing was
      -- heard twice, so nothing is aligned or dropped.
      for _, t in ipairs(toks) do tokens[#tokens + 1] = t end
      boundaries[#boundaries + 1] = { chunk = ci, matched = 0, adjacent = true, dropped_prev = 0, dropped_next = 0 }
    else
      local ov_start = (tonumber(ch.t0) or 0)
      local ov_end = tonumber(prev.t1) or ov_start
      local ov = ov_end - ov_start
      if ov <= 0 then ov = opts.overlap or 0 end
      -- Windows: the previous chunk's tail and this chunk's head.
      local tail_first = #tokens + 1
      local nwin = math.max(8, math.ceil(ov * wps) + 4)
      local timed = toks[1] and toks[1].start and tokens[#tokens] and tokens[#tokens].start
      while tail_first > 1 and tokens[tail_first - 1].seg.chunk == prev.index do
        local t = tokens[tail_first - 1]
        if timed then
          if t["end"] < ov_start - max_skew then break end
        elseif #tokens - tail_first + 1 >= nwin then
          break
        end
        tail_first = tail_first - 1
      end
      local head_last = 0
      while head_last < #toks do
        local t = toks[head_last + 1]
        if timed then
          if t.start > ov_end + max_skew then break end
        elseif head_last >= nwin then
          break
        end
        head_last = head_last + 1
      end
      -- Longest common subsequence between tokens[tail_first..] and toks[1..head_last].
      local A = {}
      for i = tail_first, #tokens do A[#A + 1] = tokens[i] end
      local na, nb = #A, head_last
      local L = {}
      for i = 0, na do L[i] = {}; for j = 0, nb do L[i][j] = 0 end end
      local function match(a, b)
        if a.key ~= b.key or a.key == "" then return false end
        if timed and math.abs(mid(a) - mid(b)) > max_skew then return false end
        return true
      end
      for i = na, 1, -1 do
        for j = nb, 1, -1 do
          if match(A[i], toks[j]) then
            L[i - 1][j - 1] = L[i][j] + 1
          else
            L[i - 1][j - 1] = math.max(L[i][j - 1], L[i - 1][j])
          end
        end
      end
      local pairs_ = {}
      do
        local i, j = 1, 1
        while i <= na and j <= nb do
          if match(A[i], toks[j]) and L[i - 1][j - 1] == L[i][j] + 1 then
            pairs_[#pairs_ + 1] = { i, j }
            i, j = i + 1, j + 1
          elseif L[i][j - 1] >= L[i - 1][j] then
            i = i + 1
          else
            j = j + 1
          end
        end
      end
      local b = { chunk = ci, matched = #pairs_ }
      if #pairs_ >= min_match then
        local p = pairs_[(#pairs_ + 1) // 2]
        local keep_prev = tail_first + p[1] - 1 -- keep tokens[1..keep_prev]
        b.aligned = true
        b.dropped_prev = #tokens - keep_prev
        b.dropped_next = p[2]
        for i = #tokens, keep_prev + 1, -1 do tokens[i] = nil end
        for j = p[2] + 1, #toks do tokens[#tokens + 1] = toks[j] end
      elseif timed then
        local cut = (ov_start + ov_end) / 2
        local dp, dn = 0, 0
        while #tokens > 0 and tokens[#tokens].seg.chunk == prev.index and mid(tokens[#tokens]) >= cut do
          tokens[#tokens] = nil
          dp = dp + 1
        end
        for _, t in ipairs(toks) do
          if mid(t) >= cut then tokens[#tokens + 1] = t else dn = dn + 1 end
        end
        b.aligned, b.dropped_prev, b.dropped_next = false, dp, dn
      else
        for _, t in ipairs(toks) do tokens[#tokens + 1] = t end
        b.aligned, b.dropped_prev, b.dropped_next = false, 0, 0
      end
      boundaries[#boundaries + 1] = b
    end
  end
  self.prev = { index = ci, t0 = ch.t0, t1 = ch.t1 }
  self.n = ci
  return self
end

-- Segments (and words, texts) rebuilt from tokens[a..b], grouped by their original segment
-- (whose `carry` fields each has).
local function rebuild(tokens, a, b, carry)
  local segments, words, all = {}, {}, {}
  local cur
  for i = a, b do
    local t = tokens[i]
    all[#all + 1] = t.text
    if t.start then words[#words + 1] = { start = t.start, ["end"] = t["end"], word = t.text } end
    if cur and cur.ref == t.seg then
      cur.parts[#cur.parts + 1] = t.text
      if t["end"] then cur["end"] = t["end"] end
      if t.start then cur.words[#cur.words + 1] = words[#words] end
    else
      cur = { ref = t.seg, parts = { t.text }, start = t.start or t.seg.start,
        ["end"] = t["end"] or t.seg["end"], words = { words[#words] } }
      if not t.start then cur.words = {} end
      segments[#segments + 1] = cur
    end
  end
  for i, c in ipairs(segments) do
    local s = { start = c.start, ["end"] = c["end"], text = table.concat(c.parts, " ") }
    if #c.words > 0 then s.words = c.words end
    if carry then
      for _, f in ipairs(carry) do s[f] = c.ref[f] end
    end
    segments[i] = s
  end
  return segments, words, all
end

function Merger:result()
  if self.opts.forget_taken then
    error("fusion: result() of a chunk_merger made with forget_taken (take_final gave the segments)", 2)
  end
  local segments, words, all = rebuild(self.tokens, 1, #self.tokens, self.opts.carry)
  return { segments = segments, text = table.concat(all, " "), words = words,
    boundaries = self.boundaries }
end

-- The index of the last token of a chunk before the last one.
local function final_end(self)
  local tokens, i = self.tokens, #self.tokens
  while i > 0 and tokens[i].seg.chunk == self.n do i = i - 1 end
  return i
end

function Merger:take_final(all)
  local e = all and #self.tokens or final_end(self)
  local segs = rebuild(self.tokens, self.taken + 1, e, self.opts.carry)
  local first = self.nseg + 1
  self.taken, self.nseg = e, self.nseg + #segs
  local upto = all and INF or self.prev and (tonumber(self.prev.t0) or 0) or -INF
  for i = e + 1, #self.tokens do
    local t = self.tokens[i]
    local s = t.start or t.seg.start
    if s < upto then upto = s end
  end
  local nb = #self.boundaries
  local bounds = table.move(self.boundaries, self.btaken + 1, nb, 1, {})
  self.btaken = nb
  if self.opts.forget_taken then
    -- The taken tokens are final (a later chunk changes the last chunk's only): they go.
    local tokens, n = self.tokens, #self.tokens
    table.move(tokens, e + 1, n, 1)
    for i = n, n - e + 1, -1 do tokens[i] = nil end
    self.taken = 0
    self.boundaries, self.btaken = {}, 0
  end
  return segs, first, upto, bounds
end

function Merger:tail()
  local e = final_end(self)
  local segs = rebuild(self.tokens, e + 1, #self.tokens, self.opts.carry)
  return segs, self.nseg + (e > self.taken and #rebuild(self.tokens, self.taken + 1, e) or 0) + 1
end

function M.merge_chunks(chunks, opts)
  local m = M.chunk_merger(opts)
  for _, ch in ipairs(chunks) do m:add(ch) end
  return m:result()
end

return M
