-- audio_chunks{first = S}: a short first chunk (a first transcript sooner), each next one twice
-- as long until `seconds`; boundaries exact to the sample and the samples ffmpeg's, on real
-- speech (Debian's pocketsphinx-testdata LibriVox readings, joined).
local sl = require "sluice"
local T = require "sluice.app.test"
local media = require "sluice.media"

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"

local tmp = P.tmpdir("first")
local DATA = "/usr/share/pocketsphinx/test/data/librivox"
local list = tmp .. "/list.txt"
P.write(list, P.sh("ls " .. DATA .. "/*.wav"):gsub("([^\n]+)", "file '%1'"))
local speech = tmp .. "/speech.m4a"
P.ffmpeg { "-f", "concat", "-safe", "0", "-i", list, "-c:a", "aac", "-b:a", "64k", speech }

local function collect(stream)
  local out = {}
  for c in stream do out[#out + 1] = c end
  return out
end

T.case("first = 1: chunks of 1, 2, 4, 8, 8, ... s, exact to the sample, ffmpeg's samples", function()
  local rate, O = 16000, 8000
  local chunks = collect(media.audio_chunks(speech, { seconds = 8, overlap = 0.5, first = 1, output = "blob" }))
  local r = assert(sl.exec { "ffmpeg", "-v", "error", "-nostdin", "-i", speech, "-ac", "1", "-ar", "16000",
    "-f", "s16le", "-" })
  local total = #r.stdout // 2
  T.ok(total > 20 * rate, "over 20 s of speech: " .. total / rate)
  local start = 0
  for i, c in ipairs(chunks) do
    local want = math.min(8, 2 ^ (i - 1)) * rate
    T.eq(c.start, start, "start of chunk " .. i)
    if i < #chunks then T.eq(c.samples, want, "length of chunk " .. i) end
    T.eq(c.blob:bytes(), r.stdout:sub(2 * c.start + 1, 2 * (c.start + c.samples)), "samples of chunk " .. i)
    start = c.start + c.samples - O
  end
  T.eq(chunks[#chunks].start + chunks[#chunks].samples, total, "all of it")
  T.ok(#chunks >= 5, "the lengths reached 8 s: " .. #chunks)
end)

T.case("first is checked", function()
  T.raises(function() media.audio_chunks(speech, { seconds = 8, overlap = 1, first = 1, output = "blob" }) end,
    "first must be")
  T.raises(function() media.audio_chunks(speech, { seconds = 8, first = 9, output = "blob" }) end, "first must be")
end)

local rc = T.run()
P.rm(tmp)
return rc
