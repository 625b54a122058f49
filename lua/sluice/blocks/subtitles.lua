-- sluice.blocks.subtitles: SRT and WebVTT, written from and parsed into transcript segments
-- {start=, ["end"]=, text=, speaker=} (seconds; text may hold several lines; speaker is
-- optional: SRT writes it as "A: text", WebVTT as a voice span "<v A>text"; parse leaves
-- both in the text).
--
--   local subs = require "sluice.blocks.subtitles"
--   local srt = subs.srt(segments)            -- string
--   local vtt = subs.vtt(segments)
--   local segs = subs.parse(str)              -- SRT or WebVTT (detected), or nil, message
--   subs.write_file(path, segments)           -- format from the extension (.srt or .vtt)
--
-- Times are whole milliseconds: writing rounds to the nearest one, parsing gives exact
-- thousandths. A UTF-8 byte order mark and CRLF line ends are accepted; cue identifiers, cue
-- settings, NOTE/STYLE/REGION blocks (WebVTT) are skipped. Cues come back in file order.
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

local function cues(segments, vtt)
  local out = {}
  local n = 0
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

-- write_file(path, segments): .vtt writes WebVTT, anything else SRT. Returns true or nil, msg.
function M.write_file(path, segments)
  local body = path:match("%.vtt$") and M.vtt(segments) or M.srt(segments)
  local f, err = io.open(path, "wb")
  if not f then return nil, "subtitles: " .. err end
  f:write(body)
  f:close()
  return true
end

return M
