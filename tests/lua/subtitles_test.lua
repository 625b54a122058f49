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
  assert(subs.write_file(srt, SEGS))
  assert(subs.write_file(vtt, SEGS))
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

return T.run()
