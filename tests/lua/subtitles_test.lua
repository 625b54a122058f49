-- SRT and WebVTT: exact timestamps, multi-line cues, BOM, CRLF, VTT blocks, bad input.
local T = require "sluice.app.test"
local subs = require "sluice.blocks.subtitles"

local SEGS = {
  { start = 0, ["end"] = 2.5, text = "Hello there." },
  { start = 3.0004, ["end"] = 61.2346, text = "Two lines\nof text" },
  { start = 3599.999, ["end"] = 3725.5, text = "an hour --> later" },
  { start = 4000, ["end"] = 4001, text = "   " },
}

T.case("srt: numbering, comma timestamps, rounding to milliseconds", function()
  T.eq(subs.srt(SEGS), table.concat({
    "1", "00:00:00,000 --> 00:00:02,500", "Hello there.", "",
    "2", "00:00:03,000 --> 00:01:01,235", "Two lines", "of text", "",
    "3", "00:59:59,999 --> 01:02:05,500", "an hour --> later", "" }, "\n"))
end)

T.case("vtt: header, dot timestamps, no arrow in text", function()
  T.eq(subs.vtt(SEGS), table.concat({ "WEBVTT", "",
    "1", "00:00:00.000 --> 00:00:02.500", "Hello there.", "",
    "2", "00:00:03.000 --> 00:01:01.235", "Two lines", "of text", "",
    "3", "00:59:59.999 --> 01:02:05.500", "an hour -> later", "" }, "\n"))
  T.eq(subs.vtt {}, "WEBVTT\n")
end)

T.case("round trip keeps times to the millisecond and multi-line text", function()
  for _, fmt in ipairs { "srt", "vtt" } do
    local back = assert(subs.parse(subs[fmt](SEGS)))
    T.eq(#back, 3, fmt)
    T.eq(back[2].start, 3.0, fmt)
    T.eq(back[2]["end"], 61.235, fmt)
    T.eq(back[2].text, "Two lines\nof text", fmt)
    T.eq(back[3].start, 3599.999, fmt)
    T.eq(back[1].id, "1", fmt)
  end
end)

T.case("srt with BOM, CRLF, blank lines and no trailing newline", function()
  local s = "\239\187\191" .. "1\r\n00:00:01,000 --> 00:00:02,000\r\nfirst\r\n\r\n\r\n" ..
    "2\r\n00:00:02,500 --> 00:00:04,000\r\nsecond\r\nline"
  local segs = assert(subs.parse(s))
  T.same(segs, { { id = "1", start = 1, ["end"] = 2, text = "first" },
    { id = "2", start = 2.5, ["end"] = 4, text = "second\nline" } })
end)

T.case("vtt with short times, settings, identifiers, NOTE and STYLE blocks", function()
  local s = "WEBVTT - a title\nKind: captions\n\nSTYLE\n::cue { color: red }\n\n" ..
    "NOTE this is\na comment\n\nintro\n00:01.250 --> 00:03.5 align:start position:10%\n" ..
    "<v Roger>Hi\n\n01:00:00.000 --> 01:00:01.000\nlate\n"
  local segs = assert(subs.parse(s))
  T.same(segs, { { id = "intro", start = 1.25, ["end"] = 3.5, text = "<v Roger>Hi" },
    { start = 3600, ["end"] = 3601, text = "late" } })
end)

T.case("bad input gives one line naming the place", function()
  local segs, err = subs.parse("1\n00:00:01,000 -> 00:00:02,000\nx\n")
  T.eq(segs, nil)
  T.eq(err, 'srt: line 2: expected a timing line \'start --> end\', got "00:00:01,000 -> 00:00:02,000"')
  segs, err = subs.parse("1\n00:00:01,000 --> 00:61:02,000\nx\n")
  T.eq(err, 'srt: line 2: bad timestamp in "00:00:01,000 --> 00:61:02,000"')
  segs, err = subs.parse("hello", { format = "vtt" })
  T.eq(err, "vtt: line 1: missing WEBVTT header")
  T.raises(function() subs.srt { { start = "x", ["end"] = 1, text = "a" } } end, "cue time must be a number")
end)

T.case("write_file and read_file pick the format from the extension", function()
  local dir = os.tmpname()
  os.remove(dir)
  local srt, vtt = dir .. ".srt", dir .. ".vtt"
  assert(subs.write_file(srt, SEGS, { layout = false }))
  assert(subs.write_file(vtt, SEGS, { layout = false }))
  local f = io.open(vtt, "rb")
  T.eq(f:read("l"), "WEBVTT")
  f:close()
  T.eq(#assert(subs.read_file(srt)), 3)
  T.eq(assert(subs.read_file(vtt))[3].text, "an hour -> later")
  os.remove(srt)
  os.remove(vtt)
  local ok, err = subs.read_file("/nonexistent/x.srt")
  T.eq(ok, nil)
  T.ok(err:find("subtitles: /nonexistent/x.srt", 1, true), err)
end)

-- Layout: the style guide's limits ------------------------------------------------------------

local function words_of(cues)
  local out = {}
  for _, c in ipairs(cues) do
    for w in c.text:gmatch("%S+") do out[#out + 1] = w end
  end
  return table.concat(out, " ")
end

-- A segment of n timed words, w seconds each, from t.
local function timed(t, text, w)
  local seg = { start = t, text = text, words = {} }
  for word in text:gmatch("%S+") do
    seg.words[#seg.words + 1] = { word = word, start = t, ["end"] = t + w }
    t = t + w
  end
  seg["end"] = t
  return seg
end

local LONG = "the quick brown fox jumps over the lazy dog while the five boxing wizards jump " ..
  "quickly and the sphinx of black quartz judges my vow"

T.case("layout: a long segment becomes cues of at most 2 x 42 characters and 7 s, every word kept in order", function()
  T.ok(#LONG > 105)
  local segs = { timed(10, LONG, 0.5) } -- 24 words, 12 s
  local cues = subs.layout(segs)
  T.ok(subs.check(cues))
  T.ok(#cues >= 2, #cues .. " cues")
  T.eq(words_of(cues), LONG)
  for _, c in ipairs(cues) do
    T.ok(c["end"] - c.start <= 7 + 1e-9, "at most 7 s")
    for line in (c.text .. "\n"):gmatch("(.-)\n") do T.ok(#line <= 42, line) end
  end
  T.eq(cues[1].start, 10)
  -- the same segment without word times: its words are spread over it by length
  cues = subs.layout { { start = 10, ["end"] = 22, text = LONG } }
  T.ok(subs.check(cues))
  T.eq(words_of(cues), LONG)
  -- both files follow it
  local p = os.tmpname() .. ".vtt"
  assert(subs.write_file(p, segs))
  T.ok(subs.check(assert(subs.read_file(p))))
  os.remove(p)
end)

T.case("layout: overlapping segments of neighbouring chunks never overlap on screen", function()
  -- chunk 1's last segment runs to 20.4 s, chunk 2's first starts at 19.8 s (the seam)
  local segs = { timed(14, "and so the first chunk ends here with a few words", 0.64),
    timed(19.8, "while the second chunk starts a little earlier", 0.5) }
  T.ok(segs[1]["end"] > segs[2].start, "the segments overlap")
  local cues = subs.layout(segs)
  T.ok(subs.check(cues))
  -- and out of order
  cues = subs.layout { segs[2], segs[1] }
  T.ok(subs.check(cues))
  T.ok(cues[1].text:find("^and so"), cues[1].text)
  T.eq(select(2, subs.check { { start = 0, ["end"] = 2, text = "a" }, { start = 1.5, ["end"] = 3, text = "b" } }),
    "cue 1 (00:00:00,000 --> 00:00:02,000) overlaps cue 2 (starting 00:00:01,500)")
end)

T.case("layout: short cues are held 5/6 s, joined with the next when they fit, or the next waits", function()
  -- a lone word in silence: held into the silence
  local cues = subs.layout { timed(1, "yes", 0.2), timed(5, "and then some more", 0.3) }
  T.ok(subs.check(cues))
  T.near(cues[1]["end"] - cues[1].start, 5 / 6, 1e-9)
  T.eq(#cues, 2)
  -- two short segments close together: one cue
  cues = subs.layout { timed(1, "yes", 0.2), timed(1.3, "indeed", 0.3) }
  T.eq(#cues, 1)
  T.eq(cues[1].text, "yes indeed")
  T.ok(subs.check(cues))
  -- speakers are not joined: the second waits until the first was readable
  local a, b = timed(1, "yes", 0.2), timed(1.3, "no", 0.2)
  a.speaker, b.speaker = "A", "B"
  cues = subs.layout { a, b }
  T.eq(#cues, 2)
  T.ok(subs.check(cues))
  T.near(cues[2].start, 1 + 5 / 6, 1e-9)
  T.eq(select(2, subs.check { { start = 0, ["end"] = 0.5, text = "a" } }),
    "cue 1 (00:00:00,000 --> 00:00:00,500): 0.500 s on screen (at least 0.833)")
end)

T.case("layout: the speaker label counts toward the line", function()
  local seg = timed(0, "a sentence of forty characters in total.", 0.2)
  seg.speaker = "SPEAKER_01"
  T.eq(#seg.text, 40)
  local cues = subs.layout { seg }
  T.eq(#cues, 1)
  T.ok(cues[1].text:find("\n"), "wrapped: the label makes it longer than 42")
  local srt = subs.srt(cues)
  T.ok(srt:find("SPEAKER_01: a sentence", 1, true), srt)
  T.ok(subs.check(assert(subs.parse(srt))))
  T.eq(subs.wrap(string.rep("x", 43)), nil)
  T.eq(subs.wrap("ab cd"), "ab cd")
end)

T.case("writer: a file that grows batch by batch, each time whole, as write_file writes it", function()
  local segs = {}
  for i = 1, 60 do
    local t = i * 2.4
    segs[i] = { start = t, ["end"] = t + 2.1, text = "segment " .. i .. " of a long talk", words = {
      { word = "segment", start = t, ["end"] = t + 0.5 }, { word = tostring(i), start = t + 0.6, ["end"] = t + 0.9 },
      { word = "of", start = t + 1.0, ["end"] = t + 1.1 }, { word = "a", start = t + 1.2, ["end"] = t + 1.3 },
      { word = "long", start = t + 1.4, ["end"] = t + 1.7 }, { word = "talk", start = t + 1.8, ["end"] = t + 2.1 } } }
  end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local function read(path) local f = io.open(path); if not f then return nil end; local b = f:read("a"); f:close(); return b end
  for _, ext in ipairs { "srt", "vtt" } do
    T.ok(subs.write_file(dir .. "/whole." .. ext, segs))
    local whole = read(dir .. "/whole." .. ext)
    local path = dir .. "/grow." .. ext
    for _, redo in ipairs { false, true } do -- (redo: the file is there, a finished one)
      local w = subs.writer(path, nil, { min_wait = 0, factor = 0 })
      local seen = 0
      for i = 1, #segs, 7 do
        local part = {}
        for j = i, math.min(i + 6, #segs) do part[#part + 1] = segs[j] end
        T.ok(w:add(part))
        local now = subs.parse(read(redo and (path .. ".part") or path))
        T.ok(#now > seen, ext .. ": the file grew and parses whole")
        seen = #now
        if redo then T.eq(read(path), whole, ext .. ": the finished file stays until the new one is") end
      end
      T.ok(w:finish())
      T.eq(read(path), whole, ext .. ": the same file as write_file's")
      T.eq(read(path .. ".part"), nil, "no .part left")
    end
    -- nothing to say: the file write_file makes of no segment
    T.ok(subs.write_file(dir .. "/none." .. ext, {}))
    local w = subs.writer(dir .. "/empty." .. ext)
    T.ok(w:add({ { start = 1, ["end"] = 2, text = " " } }))
    T.ok(w:finish())
    T.eq(read(dir .. "/empty." .. ext), read(dir .. "/none." .. ext), ext .. ": no cue")
  end
  os.execute("rm -rf " .. dir)
end)

return T.run()
