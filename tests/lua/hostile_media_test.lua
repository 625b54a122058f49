-- Hostile media (issue 18): a real 10-hour stream of silence, a header that claims 10 hours
-- over 3 seconds of data, and 8 channels at 384 kHz. The 10-hour stream is a WAV whose
-- samples are all zero, written as a sparse file: every one of its 288 million samples is
-- there to decode, and it costs no disk.
--   - Under the default media.max_duration (12 h) it is taken: the chunker reads it through
--     in bounded memory and time.
--   - Over media.max_duration (a setting) it is refused before decoding with one line naming
--     the file and the cap, and the run's other input finishes.
--   - The lying header is believed by the probe (so the cap refuses it); under the cap the
--     decoder stops where the data ends and says so in one line.
--   - 8 channels at 384 kHz come out as 16 kHz mono equal to ffmpeg's own downmix.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local P = require "pltest"
local media = require "sluice.media"
local cjson = require "cjson"
T.timeout = 300

local dir, ten, lie, c8

-- A mono 16-bit WAV of `seconds` of zeros at `rate` Hz, as a sparse file.
local function silent_wav(path, rate, seconds)
  local data = rate * 2 * seconds
  local f = assert(io.open(path, "wb"))
  f:write("RIFF", string.pack("<I4", 36 + data), "WAVE", "fmt ", string.pack("<I4", 16),
    string.pack("<I2I2I4I4I2I2", 1, 1, rate, rate * 2, 2, 16), "data", string.pack("<I4", data))
  f:seek("set", 44 + data - 1)
  f:write("\0")
  f:close()
end

T.setup("setup", function()
  dir = P.tmpdir("hostile-media")
  ten = dir .. "/ten_hours.wav"
  silent_wav(ten, 8000, 36000)
  -- 3 s of FLAC whose STREAMINFO says 288,000,000 samples at 8 kHz (10 h)
  lie = dir .. "/lying_header.flac"
  P.ffmpeg { "-f", "lavfi", "-i", "sine=f=440:r=8000:d=3", "-c:a", "flac", lie }
  local b = P.read(lie)
  assert(b:sub(1, 4) == "fLaC" and b:byte(5) & 0x7f == 0, "a FLAC file starting with STREAMINFO")
  -- the total-samples field: the low 4 bits of byte 22 (1-based) and bytes 23-26
  b = b:sub(1, 21) .. string.char(b:byte(22) & 0xf0) .. string.pack(">I4", 288000000) .. b:sub(27)
  P.write(lie, b)
  -- 8 channels (7.1) at 384 kHz: 440 Hz and 1 kHz on alternate channels
  c8 = dir .. "/eight_channels_384k.wav"
  P.ffmpeg { "-f", "lavfi", "-i", "sine=f=440:r=384000:d=2", "-f", "lavfi", "-i", "sine=f=1000:r=384000:d=2",
    "-filter_complex", "[0][1][0][1][0][1][0][1]amerge=inputs=8,aformat=channel_layouts=7.1", "-c:a", "pcm_s16le", c8 }
end)

T.case("a real 10-hour silent stream: probed at once, then read through in bounded memory and time", function()
  local t0 = sl.now()
  local info = assert(media.probe(ten))
  T.eq(info.duration, 36000.0)
  T.ok(sl.now() - t0 < 5, "probed in " .. (sl.now() - t0) .. " s")
  T.ok(media.check_duration(ten, info), "the default cap (12 h) takes 10 hours")
  local before = P.rss_kb()
  local peak, n, last = 0, 0, nil
  t0 = sl.now()
  for c in media.audio_chunks(ten, { seconds = 600, output = "blob", split = "silence" }) do
    n = n + 1
    last = c
    c.blob:close()
    peak = math.max(peak, P.rss_kb() - before)
  end
  local took = sl.now() - t0
  print(string.format("     10 h read in %.1f s, %d chunks, RSS grew by at most %d KB", took, n, peak))
  T.ok(last and math.abs(last.t1 - 36000) < 0.01, "read to the end: " .. cjson.encode(last and last.t1))
  T.ok(n >= 60 and n <= 62, n .. " chunks of about 600 s")
  -- at most the chunk being read and the one made ahead (2 x 19.2 MB) and the decoder's buffers
  -- (not under AddressSanitizer, whose quarantine keeps up to 256 MB of freed blocks)
  T.ok(P.sanitized() or peak < 100 * 1024, "RSS grew by " .. peak .. " KB")
  T.ok(took < 180, "took " .. took .. " s")
end)

T.case("a header that claims 10 hours over 3 s of data: the decoder stops at the data's end, in one line", function()
  local info = assert(media.probe(lie))
  T.eq(info.duration, 36000.0) -- the probe believes the header
  local s = media.audio_chunks(lie, { seconds = 600, output = "blob" })
  local chunks = {}
  while true do
    local c, err = s:next()
    if not c then
      T.eq(err, nil)
      break
    end
    chunks[#chunks + 1] = c.t1
    c.blob:close()
  end
  T.eq(#chunks, 1)
  T.ok(math.abs(chunks[1] - 3) < 0.01, cjson.encode(chunks))
  T.ok(P.one_line(s.warning) and s.warning:find(lie, 1, true) and s.warning:find("input ended early"), s.warning)
end)

T.case("media.max_duration refuses the long inputs with one line each; the other episodes finish", function()
  local sample = P.sample("podcast") .. "/podcast"
  local out = dir .. "/out"
  local t0 = sl.now()
  -- (the 2 s file of 8 channels at 384 kHz goes through too: it is under the cap, and shorter
  -- than the podcast's chunk overlap, which the chunk plan refused with an argument error)
  local r = P.run({ "pipelines/podcast.lua", ten, lie, c8, sample .. "/episode2.m4a", "--out", out, "--no-store",
    "--quiet", "--set", "media.max_duration=3600" })
  local took = sl.now() - t0
  T.eq(r.status, 1, r.stderr)
  T.ok(P.exists(out .. "/episode2/transcript.json"), r.stderr)
  T.ok(P.exists(out .. "/eight_channels_384k/transcript.json"), r.stderr)
  local index = P.json(out .. "/index.json")
  local lines = {}
  for _, f in ipairs(index.failed or {}) do lines[#lines + 1] = f.error end
  print("     " .. table.concat(lines, "\n     "))
  T.eq(#lines, 2, cjson.encode(index.failed))
  local want = {
    [ten] = "10:00:00 long (36000 s), longer than media.max_duration (3600 s)",
    [lie] = "10:00:00 long (36000 s), longer than media.max_duration (3600 s)",
  }
  for path, cause in pairs(want) do
    local found
    for _, l in ipairs(lines) do
      if l:find(path, 1, true) then found = l end
    end
    T.ok(found and P.one_line(found) and found:find(cause, 1, true), path .. ": " .. tostring(found))
    T.ok(r.stderr:find(path, 1, true), "the terminal names " .. path)
  end
  T.ok(took < 200, "took " .. took .. " s")
end)

T.case("a bad media.max_duration is refused with one line naming the setting", function()
  local r = P.run({ "pipelines/podcast.lua", c8, "--out", dir .. "/bad", "--no-store", "--set", "media.max_duration=-1" })
  T.eq(r.status, 2)
  T.ok(r.stderr:find("media.max_duration must be a positive number of seconds (got -1)", 1, true), r.stderr)
end)

T.case("8 channels at 384 kHz: 16 kHz mono equal to ffmpeg's downmix and resampling", function()
  local info = assert(media.probe(c8))
  T.eq(info.streams[1].channels, 8)
  T.eq(info.streams[1].sample_rate, 384000)
  local s = media.audio_chunks(c8, { seconds = 600, output = "blob" })
  local c = assert(s:next())
  s:close()
  T.eq(c.rate, 16000)
  T.eq(c.channels, 1)
  T.eq(c.samples, 32000)
  local got = c.blob:bytes()
  c.blob:close()
  local ref_path = dir .. "/ref.raw"
  P.ffmpeg { "-i", c8, "-ac", "1", "-ar", "16000", "-f", "s16le", ref_path }
  local ref = P.read(ref_path)
  T.eq(#got, #ref)
  local err, energy = 0, 0
  for i = 1, #ref // 2 do
    local x, y = string.unpack("<i2", got, 2 * i - 1), string.unpack("<i2", ref, 2 * i - 1)
    err, energy = err + (x - y) ^ 2, energy + y * y
  end
  T.ok(energy / (#ref // 2) > 1000 ^ 2, "the tones are heard (mean square " .. energy / (#ref // 2) .. ")")
  T.ok(math.sqrt(err / energy) < 0.01, "relative error " .. math.sqrt(err / energy))
end)

T.case("a master playlist nested in itself is refused at once, in one line; a good one still opens", function()
  local hdir = dir .. "/hls"
  P.sh("mkdir -p " .. hdir .. " && cp " .. P.src .. "/tests/fuzz/hls/s0.ts " .. P.src .. "/tests/fuzz/hls/s1.ts " ..
    P.src .. "/tests/fuzz/corpus/hls/vod.m3u8 " .. hdir .. "/ && cp " .. P.src ..
    "/tests/fuzz/corpus/hls/master_self.m3u8 " .. hdir .. "/p.m3u8")
  local master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=200000\n%s\n"
  P.write(hdir .. "/a.m3u8", master:format("b.m3u8")) -- a -> b -> a
  P.write(hdir .. "/b.m3u8", master:format("a.m3u8"))
  P.write(hdir .. "/good.m3u8", master:format("vod.m3u8"))
  P.write(hdir .. "/named.mp4", master:format("named.mp4")) -- FFmpeg goes by the content
  for _, case in ipairs { { "p.m3u8" }, { "a.m3u8" }, { "named.mp4" } } do
    local path = hdir .. "/" .. case[1]
    local t0 = sl.now()
    local info, err = media.probe(path)
    T.eq(info, nil)
    T.eq(err, path .. ": a playlist that names itself (directly or through another playlist)")
    -- (FFmpeg's demuxer, left to it, took 60 s and 1.4 GB before a 3 s media.open_timeout ended it)
    T.ok(sl.now() - t0 < 2, "refused in " .. (sl.now() - t0) .. " s")
  end
  local info = assert(media.probe(hdir .. "/good.m3u8"))
  T.ok(info.duration and info.duration > 0, "the good master playlist opens: " .. cjson.encode(info))
end)

T.case("an empty file: one line saying so (FFmpeg says only 'Invalid argument')", function()
  local empty = dir .. "/empty.mp3"
  P.write(empty, "")
  local info, err = media.probe(empty)
  T.eq(info, nil)
  T.eq(err, empty .. ": empty file (0 bytes)")
end)

T.teardown("teardown", function() P.rm(dir) end)

return T.run()
