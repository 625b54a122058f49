-- The exec provider: argument templates, output files, JSON (whisper.cpp and OpenAI
-- shapes), SRT and WebVTT (produced by the real ffmpeg), plain text (the real
-- pocketsphinx_continuous), and clear errors.
local sl = require "sluice"
local T = require "sluice.app.test"
local exec = require "sluice.providers.exec"
local subtitles = require "sluice.blocks.subtitles"

T.timeout = 120

local DATA = "/usr/share/pocketsphinx/test/data/librivox/"
local MODEL = "/usr/share/pocketsphinx/model/en-us"

local TMP
local function tmpdir()
  if TMP then return TMP end
  local base = os.tmpname()
  os.remove(base)
  assert(sl.exec({ "mkdir", "-p", base }))
  TMP = base
  return base
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local SEGS = {
  { start = 0.5, ["end"] = 2.25, text = "first line of the chunk" },
  { start = 2.5, ["end"] = 4.0, text = "second line\nwith a break" },
  { start = 4.5, ["end"] = 9.0, text = "runs past the end" },
}

T.case("SRT and WebVTT from ffmpeg are parsed, shifted by t0 and clipped to t1", function()
  local srt = tmpdir() .. "/in.srt"
  T.ok(subtitles.write_file(srt, SEGS, { layout = false }))
  for _, f in ipairs { "srt", "webvtt" } do
    local p = exec.new { command = { "ffmpeg", "-loglevel", "error", "-i", "{subs}", "-f", f, "-" },
      vars = { subs = srt } }
    local r = T.ok(p:transcribe { path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav", t0 = 100, t1 = 106 })
    T.eq(r.provider, "exec:ffmpeg")
    T.eq(#r.segments, 3, f)
    T.near(r.segments[1].start, 100.5, 0.001)
    T.near(r.segments[1]["end"], 102.25, 0.001)
    T.eq(r.segments[2].text, "second line with a break")
    T.near(r.segments[3]["end"], 106, 0.001, "clipped to t1")
  end
end)

T.case("whisper.cpp's JSON output file ({out}.json) is read and removed", function()
  local dir = tmpdir()
  -- a stand-in with whisper-cli's command line and its documented -oj output format
  local fake = dir .. "/whisper-cli"
  write(fake, [[#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -f) in="$2"; shift;; -of) out="$2"; shift;; esac; shift
done
test -f "$in" || { echo "error: input file not found '$in'" >&2; exit 2; }
cat > "$out.json" <<EOF
{"systeminfo": "x", "model": {"type": "base"}, "params": {"model": "m"}, "result": {"language": "en"},
 "transcription": [
  {"timestamps": {"from": "00:00:00,000", "to": "00:00:01,500"}, "offsets": {"from": 0, "to": 1500}, "text": " He was not"},
  {"timestamps": {"from": "00:00:01,500", "to": "00:00:03,200"}, "offsets": {"from": 1500, "to": 3200}, "text": " an ill disposed young man."}
 ]}
EOF
]])
  T.ok(sl.exec { "chmod", "+x", fake })
  local p = exec.new { command = { fake, "-m", "{model}", "-f", "{path}", "-oj", "-of", "{out}" },
    output = "{out}.json", vars = { model = "/models/ggml-base.en.bin" } }
  local r = T.ok(p:transcribe { path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav", t0 = 30 })
  T.eq(#r.segments, 2)
  T.near(r.segments[2].start, 31.5, 0.001)
  T.near(r.segments[2]["end"], 33.2, 0.001)
  T.eq(r.text, "He was not an ill disposed young man.")
  local left = T.ok(sl.exec { "sh", "-c", "ls " .. p.tmp .. " | wc -l" })
  T.eq(tonumber(left.stdout), 0, "the output file was removed")
  -- a failing command: status and its last stderr line
  local bad, msg = p:transcribe { path = "/nonexistent/chunk.wav" }
  T.eq(bad, nil)
  T.ok(msg:find("exited with status 2", 1, true) and msg:find("input file not found", 1, true), msg)
  p:close()
end)

T.case("plain text output from pocketsphinx_continuous becomes one segment", function()
  local p = exec.new { command = { "pocketsphinx_continuous", "-infile", "{path}", "-hmm", MODEL .. "/en-us",
    "-lm", MODEL .. "/en-us.lm.bin", "-dict", MODEL .. "/cmudict-en-us.dict", "-logfn", "/dev/null" },
    format = "text" }
  local r = T.ok(p:transcribe { path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav", t0 = 10, t1 = 13.3 })
  T.eq(#r.segments, 1)
  T.eq(r.segments[1].start, 10)
  T.eq(r.segments[1]["end"], 13.3)
  T.ok(r.text:find("young man", 1, true), r.text)
end)

T.case("OpenAI-style verbose JSON on stdout, and JSON for the other roles", function()
  local json = [[{"text":"hello world","segments":[{"start":0.0,"end":1.0,"text":"hello"},{"start":1.0,"end":2.0,"text":"world"}]}]]
  local p = exec.new { command = { "printf", "%s", json } }
  local r = T.ok(p:transcribe { path = "x.wav", t0 = 5 })
  T.eq(#r.segments, 2)
  T.eq(r.segments[2].start, 6.0)
  local v = exec.new { command = { "printf", '{"text":"slide about {path}","confidence":0.8}' }, role = "vlm" }
  local d = v:describe { { path = "a.png", t = 3 } }
  T.eq(d[1].text, "slide about a.png")
  T.eq(d[1].confidence, 0.8)
  local l = exec.new { command = { "tr", "a-z", "A-Z" }, stdin = "{prompt}", role = "llm" }
  T.eq(l:complete("shout this"), "SHOUT THIS")
  local f = exec.new { command = { "printf", '{"classes":[{"name":"person","score":0.5}]}' }, role = "filter" }
  local c = f:classify({ { path = "f.jpg", t = 1 } }, { "person" })
  T.eq(c[1].classes[1].name, "person")
end)

T.case("malformed output, missing programs and bad templates give clear errors", function()
  local p = exec.new { command = { "printf", "{not json" }, format = "json" }
  local r, msg = p:transcribe { path = "x.wav" }
  T.eq(r, nil)
  T.ok(msg:find("exec:printf: malformed JSON output", 1, true), msg)
  p = exec.new { command = { "printf", "1\nbad timing\nhello\n" }, format = "srt" }
  r, msg = p:transcribe { path = "x.wav" }
  T.eq(r, nil)
  T.ok(msg:find("malformed srt output", 1, true), msg)
  p = exec.new { command = { "/nonexistent/whisper-cli", "-f", "{path}" } }
  r, msg = p:transcribe { path = "x.wav" }
  T.eq(r, nil)
  T.ok(msg:find("/nonexistent/whisper-cli", 1, true), msg)
  T.raises(function() exec.new { command = { "whisper-cli", "-m", "{modle}" } } end, "unknown template {modle}")
  T.raises(function() exec.new {} end, "'command'")
  p = exec.new { command = { "true" }, output = "{out}.json" }
  r, msg = p:transcribe { path = "x.wav" }
  T.eq(r, nil)
  T.ok(msg:find("did not write its output file", 1, true), msg)
  p:close()
end)

local status = T.run()
if TMP then sl.exec { "rm", "-rf", TMP } end
return status
