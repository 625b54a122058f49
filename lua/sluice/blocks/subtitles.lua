-- sluice.blocks.subtitles: SRT and WebVTT, written from and parsed into transcript segments
-- {start=, ["end"]=, text=, speaker=} (seconds; text may hold several lines; speaker is
-- optional: SRT writes it as "A: text", WebVTT as a voice span "<v A>text"; parse leaves
-- both in the text).
--
--   local subs = require "sluice.blocks.subtitles"
--   local srt = subs.srt(segments)            -- string: one cue per segment, as given
--   local vtt = subs.vtt(segments)
--   local cues = subs.layout(segments)         -- cues that follow the style guide (below)
--   local segs = subs.parse(str)              -- SRT or WebVTT (detected), or nil, message
--   subs.write_file(path, segments)           -- layout(), then the format from the extension
--                                             (written through a temporary name and a rename)
--   local w = subs.writer(path); w:add(segs)  -- a file that grows: only new segments laid out;
--   w:finish()                                -- then its end (sluice.blocks.grow)
--
-- Times are whole milliseconds: writing rounds to the nearest one, parsing gives exact
-- thousandths. A UTF-8 byte order mark and CRLF line ends are accepted; cue identifiers, cue
-- settings, NOTE/STYLE/REGION blocks (WebVTT) are skipped. Cues come back in file order.
local files = require "sluice.runtime.files"
local grow = require "sluice.blocks.grow"

local M = {}

local function ms_of(t)
  if type(t) ~= "number" or t ~= t then error("subtitles: cue time must be a number, got " .. tostring(t), 3) end
  if t < 0 then t = 0 end
  return math.floor(t * 1000 + 0.5)
end

-- timestamp(seconds, sep) -> "HH:MM:SS,mmm" (sep ",") or "HH:MM:SS.mmm" (sep ".").
function M.timestamp(t, sep)
  local ms = ms_of(t)
  return string.format("%02d:%02d:%02d%s%03d", ms // 3600000, ms // 60000 % 60, ms // 1000 % 60,
    sep or ",", ms % 1000)
end

-- Cue text: no blank lines inside a cue (they would end it), no "-->" in VTT text.
local function cue_text(s, vtt)
  s = tostring(s or ""):gsub("\r\n?", "\n"):gsub("\n%s*\n", "\n"):gsub("^%s+", ""):gsub("%s+$", "")
  if vtt then s = s:gsub("%-%->", "->") end
  return s
end

-- A speaker label fit for a cue: one line, and no "<", ">" or "&" in a WebVTT voice span.
local function speaker_of(seg, vtt)
  local s = seg.speaker
  if s == nil then return nil end
  s = tostring(s):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if vtt then s = s:gsub("[<>&]", "") end
  return s ~= "" and s or nil
end

local function cues(segments, vtt, n0)
  local out = {}
  local n = n0 or 0
  for _, seg in ipairs(segments) do
    local txt = cue_text(seg.text, vtt)
    local who = speaker_of(seg, vtt)
    if txt ~= "" and who then txt = vtt and ("<v " .. who .. ">" .. txt) or (who .. ": " .. txt) end
    if txt ~= "" then
      n = n + 1
      local sep = vtt and "." or ","
      local s, e = seg.start, seg["end"]
      if ms_of(e) < ms_of(s) then e = s end
      out[#out + 1] = string.format("%d\n%s --> %s\n%s\n", n, M.timestamp(s, sep), M.timestamp(e, sep), txt)
    end
  end
  return out
end

-- Layout: cues that follow the style guide -------------------------------------------------

-- The limits of the Netflix Timed Text Style Guide (English): at most 2 lines of 42
-- characters, a cue on screen from 5/6 s (20 frames at 24 fps) to 7 s, cues never overlapping.
M.LIMITS = { line = 42, lines = 2, min = 5 / 6, max = 7 }

local function ulen(s) return utf8.len(s) or #s end

-- wrap(text, limits) -> the text on at most `lines` lines of `line` characters (broken at the
-- space that balances the lines best), or nil when it does not fit.
function M.wrap(str, lim)
  lim = lim or M.LIMITS
  local n = ulen(str)
  if n <= lim.line then return str end
  if lim.lines < 2 or n > lim.line * 2 + 1 then return nil end
  local best, best_d
  local i = 0
  while true do
    i = str:find(" ", i + 1, true)
    if not i then break end
    local a, b = str:sub(1, i - 1), str:sub(i + 1)
    local la, lb = ulen(a), ulen(b)
    if la <= lim.line and lb <= lim.line and (not best_d or math.abs(la - lb) < best_d) then
      best, best_d = a .. "\n" .. b, math.abs(la - lb)
    end
  end
  return best
end

-- The timed words of a segment: its own word times where it has them, else its text's words
-- spread over its time by length.
local function timed_words(seg)
  local s, e = tonumber(seg.start), tonumber(seg["end"])
  if not s or not e then error("subtitles: cue time must be a number, got " .. tostring(seg.start), 4) end
  if e < s then e = s end
  local out = {}
  local ws = seg.words
  if type(ws) == "table" and #ws > 0 and type(ws[1].start) == "number" then
    for _, w in ipairs(ws) do
      local t = tostring(w.word or w.text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
      if t ~= "" then
        local a = tonumber(w.start) or s
        out[#out + 1] = { text = t, start = a, ["end"] = math.max(a, tonumber(w["end"]) or a) }
      end
    end
    if #out > 0 then return out end
  end
  local txt = tostring(seg.text or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  local toks, total = {}, 0
  for tok in txt:gmatch("%S+") do
    toks[#toks + 1] = tok
    total = total + ulen(tok) + 1
  end
  local at = 0
  for _, tok in ipairs(toks) do
    local a = s + (e - s) * at / total
    at = at + ulen(tok) + 1
    out[#out + 1] = { text = tok, start = a, ["end"] = s + (e - s) * at / total }
  end
  return out
end

-- layout(segments[, limits]) -> cues {start=, ["end"]=, text=, speaker=} that follow the style
-- guide: each segment's words (timed by the recogniser, or spread over the segment) are
-- grouped into cues of at most `lines` x `line` characters (the speaker label counted) and
-- `max` seconds, wrapped on two balanced lines; a cue never runs into the next one (times are
-- sorted first, so the overlapping segments of neighbouring chunks cannot overlap on
-- screen); a cue shorter than `min` is held on screen longer, into the silence after it,
-- joined with the next one when they fit together, or else the next one starts later.
function M.layout(segments, lim)
  lim = lim or M.LIMITS
  local cap = lim.line * lim.lines + (lim.lines - 1)
  local cues = {}
  for _, seg in ipairs(segments) do
    local who = speaker_of(seg, false)
    local prefix = who and (who .. ": ") or ""
    local words = timed_words(seg)
    -- Words in order into cues of at most `budget` characters (and the limits).
    local function group(budget)
      local list, cur = {}, nil
      for _, w in ipairs(words) do
        if cur then
          local joined = cur.body .. " " .. w.text
          if ulen(prefix .. joined) > budget or not M.wrap(prefix .. joined, lim)
              or w["end"] - cur.start > lim.max then
            list[#list + 1] = cur
            cur = nil
          else
            cur.body, cur["end"] = joined, math.max(cur["end"], w["end"])
          end
        end
        if not cur then
          cur = { start = w.start, ["end"] = w["end"], body = w.text, speaker = seg.speaker, prefix = prefix }
        end
      end
      list[#list + 1] = cur
      return list
    end
    local list = group(cap)
    if #list > 1 then -- as many cues, of even lengths, when that fits too
      local total = ulen(prefix) + #words - 1
      for _, w in ipairs(words) do total = total + ulen(w.text) end
      local even = group(math.ceil(total / #list) + 4)
      if #even == #list then list = even end
    end
    for _, c in ipairs(list) do cues[#cues + 1] = c end
  end
  table.sort(cues, function(a, b) return a.start < b.start end)
  local function fits(a, b)
    if a.speaker ~= b.speaker then return false end
    local joined = a.prefix .. a.body .. " " .. b.body
    return ulen(joined) <= cap and M.wrap(joined, lim) ~= nil and math.max(a["end"], b["end"]) - a.start <= lim.max
  end
  local out = {}
  local i = 1
  while i <= #cues do
    local c = cues[i]
    local nxt = cues[i + 1]
    -- too short, and the next one comes too soon to hold it longer: join them when both fit
    while nxt and c["end"] - c.start < lim.min and nxt.start < c.start + lim.min and fits(c, nxt) do
      c.body, c["end"] = c.body .. " " .. nxt.body, math.max(c["end"], nxt["end"])
      i = i + 1
      nxt = cues[i + 1]
    end
    if c["end"] - c.start > lim.max then c["end"] = c.start + lim.max end
    if c["end"] - c.start < lim.min then c["end"] = c.start + lim.min end
    if nxt and nxt.start < c["end"] then
      if nxt.start - c.start >= lim.min then
        c["end"] = nxt.start       -- never into the next cue
      else
        nxt.start = c["end"]       -- the next one waits until this one was readable
        if nxt["end"] < nxt.start then nxt["end"] = nxt.start end
      end
    end
    -- wrapped with the speaker label that srt()/vtt() put in front of the first line
    local wrapped = M.wrap(c.prefix .. c.body, lim) or (c.prefix .. c.body)
    out[#out + 1] = { start = c.start, ["end"] = c["end"], speaker = c.speaker,
      text = wrapped:sub(#c.prefix + 1) }
    i = i + 1
  end
  return out
end

-- check(cues[, limits]) -> true, or nil and the first cue that breaks the style guide (as
-- parse() reads them: markup such as <v A> is not counted; 1 ms of slack for rounding).
function M.check(cues, lim)
  lim = lim or M.LIMITS
  for i, c in ipairs(cues) do
    local d = c["end"] - c.start
    local what = string.format("cue %d (%s --> %s)", i, M.timestamp(c.start), M.timestamp(c["end"]))
    if d > lim.max + 1e-3 then return nil, string.format("%s: %.3f s on screen (at most %g)", what, d, lim.max) end
    if d < lim.min - 1e-3 then return nil, string.format("%s: %.3f s on screen (at least %.3f)", what, d, lim.min) end
    local n = 0
    for line in (tostring(c.text) .. "\n"):gmatch("(.-)\n") do
      n = n + 1
      local visible = line:gsub("<[^>]*>", "")
      if ulen(visible) > lim.line then
        return nil, string.format("%s: line %d has %d characters (at most %d)", what, n, ulen(visible), lim.line)
      end
    end
    if n > lim.lines then return nil, string.format("%s: %d lines (at most %d)", what, n, lim.lines) end
    local nxt = cues[i + 1]
    if nxt and nxt.start < c["end"] - 1e-3 then
      return nil, string.format("%s overlaps cue %d (starting %s)", what, i + 1, M.timestamp(nxt.start))
    end
  end
  return true
end

-- srt(segments) -> SRT text (cues numbered from 1; empty segments skipped).
function M.srt(segments) return table.concat(cues(segments, false), "\n") end

-- vtt(segments) -> WebVTT text.
function M.vtt(segments)
  local c = cues(segments, true)
  if #c == 0 then return "WEBVTT\n" end
  return "WEBVTT\n\n" .. table.concat(c, "\n")
end

-- Parses "HH:MM:SS,mmm", "HH:MM:SS.mmm" or "MM:SS.mmm" into seconds (exact thousandths).
local function parse_time(s)
  local h, m, sec, frac = s:match("^(%d+):(%d%d):(%d%d)[,.](%d+)$")
  if not h then
    m, sec, frac = s:match("^(%d%d):(%d%d)[,.](%d+)$")
    h = "0"
  end
  if not m then return nil end
  if tonumber(m) > 59 or tonumber(sec) > 59 then return nil end
  frac = (frac .. "000"):sub(1, 3)
  local ms = ((tonumber(h) * 60 + tonumber(m)) * 60 + tonumber(sec)) * 1000 + tonumber(frac)
  return ms / 1000
end
M.parse_time = parse_time

-- parse(text, {format="srt"|"vtt"}) -> segments, or nil, message naming the line.
function M.parse(str, opts)
  if type(str) ~= "string" then error("bad argument #1 to 'parse' (string expected)", 2) end
  opts = opts or {}
  str = str:gsub("^\239\187\191", ""):gsub("\r\n?", "\n")
  local format = opts.format
  if not format then format = str:match("^WEBVTT[ \t\n]") and "vtt" or (str == "WEBVTT" and "vtt") or "srt" end
  local lines = {}
  for line in (str .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  local segs = {}
  local i = 1
  if format == "vtt" then
    if not (lines[1] or ""):match("^WEBVTT") then return nil, "vtt: line 1: missing WEBVTT header" end
    i = 2
    while i <= #lines and lines[i]:find("%S") do i = i + 1 end -- header block
  end
  while i <= #lines do
    while i <= #lines and not lines[i]:find("%S") do i = i + 1 end
    if i > #lines then break end
    local start_line = i
    local block = {}
    while i <= #lines and lines[i]:find("%S") do
      block[#block + 1] = lines[i]
      i = i + 1
    end
    local first = block[1]
    if format == "vtt" and (first:match("^NOTE[ \t]") or first == "NOTE" or first:match("^STYLE")
        or first:match("^REGION")) then
      goto continue
    end
    do
      local k = 1
      if not block[k]:find("-->", 1, true) then k = 2 end -- a cue identifier / number
      local tl = block[k]
      if not tl or not tl:find("-->", 1, true) then
        return nil, string.format("%s: line %d: expected a timing line 'start --> end', got %q",
          format, start_line + k - 1, tl or first)
      end
      local a, b = tl:match("^%s*(%S+)%s+%-%->%s+(%S+)")
      local s, e = a and parse_time(a), b and parse_time(b)
      if not s or not e then
        return nil, string.format("%s: line %d: bad timestamp in %q", format, start_line + k - 1, tl)
      end
      local seg = { start = s, ["end"] = e, text = table.concat(block, "\n", k + 1) }
      local id = k == 2 and block[1] or nil
      if id then seg.id = id end
      segs[#segs + 1] = seg
    end
    ::continue::
  end
  return segs
end

function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "subtitles: " .. err end
  local s = f:read("a")
  f:close()
  local fmt = path:match("%.vtt$") and "vtt" or (path:match("%.srt$") and "srt") or nil
  return M.parse(s, { format = fmt })
end

-- write_file(path, segments[, {layout = false}]): .vtt writes WebVTT, anything else SRT, with
-- the cues of layout(segments) (layout = false: one cue per segment, as given). Returns true
-- or nil, msg.
-- Writes body to path through a temporary name and a rename (sluice.runtime.files.write): a
-- reader (a player following a file that grows as a long lecture is transcribed) never sees
-- half of it.
local function write_whole(path, body)
  local ok, err = files.write(path, body)
  if not ok then return nil, "subtitles: " .. err end
  return true
end

-- writer(path[, limits[, opts]]) -> w: a subtitle file (the format from the extension) that
-- grows as final segments come (sluice.blocks.grow: opts.min_wait, opts.factor are its pace).
-- w:add(segments) lays out the new segments only (the cues of earlier calls are kept, not laid
-- out again: a two-hour transcript is not laid out once per chunk) and starts none of them
-- before the last earlier cue ended; the file grows by the new cues (a temporary file and a
-- rename, the old bytes copied on the pool), so the writer holds none of the cues it wrote.
-- w:finish() writes what is held and ends the file; where the file existed (a run that redoes
-- a job), the cues grow in PATH.part until then. Both wait (inside a task) and return true,
-- or nil and a message naming the file. The finished file is write_file's for all segments.
local Writer = {}
Writer.__index = Writer
function M.writer(path, lim, opts)
  local vtt = path:match("%.vtt$") ~= nil
  opts = opts or {}
  return setmetatable({ vtt = vtt, n = 0, parts = 0, last_end = -math.huge, lim = lim,
    file = grow.new { path = path, open = vtt and "WEBVTT\n\n" or "", sep = "\n",
      min_wait = opts.min_wait, factor = opts.factor } }, Writer)
end
function Writer:add(segments)
  local laid = M.layout(segments, self.lim)
  for _, c in ipairs(laid) do
    if c.start < self.last_end then c.start = self.last_end end
    if c["end"] < c.start then c["end"] = c.start end
  end
  local cs = cues(laid, self.vtt, self.n)
  if #laid > 0 then self.last_end = math.max(self.last_end, laid[#laid]["end"]) end
  if #cs == 0 then return true end
  self.n, self.parts = self.n + #cs, self.parts + 1
  return self.file:put(self.parts, table.concat(cs, "\n"))
end
function Writer:finish()
  if self.vtt and self.parts == 0 then self.file.open = "WEBVTT\n" end -- (as vtt({}))
  return self.file:finish()
end

function M.write_file(path, segments, opts)
  if not (opts and opts.layout == false) then segments = M.layout(segments) end
  local body = path:match("%.vtt$") and M.vtt(segments) or M.srt(segments)
  return write_whole(path, body)
end

return M
