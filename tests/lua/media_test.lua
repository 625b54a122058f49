-- sluice.media against files made here with the ffmpeg CLI and the real footage in shared/media.
local sl = require "sluice"
local T = require "sluice.app.test"
local media = require "sluice.media"

package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"
local tmp = (os.getenv("TMPDIR") or "/tmp") .. "/sluice-media-test-" .. tostring(os.time()) ..
  "-" .. tostring(math.random(1, 1e9))
os.execute("mkdir -p " .. tmp)

local function ffmpeg(args)
  local argv = { "ffmpeg", "-y", "-v", "error", "-nostdin" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = assert(sl.exec(argv))
  assert(r.status == 0, "ffmpeg failed: " .. r.stderr)
  return r
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local made = {}
local function file(name, args)
  local path = tmp .. "/" .. name
  if not made[name] then
    local a = {}
    for _, v in ipairs(args) do a[#a + 1] = v end
    a[#a + 1] = path
    ffmpeg(a)
    made[name] = true
  end
  return path
end

-- 6 s of testsrc + 440 Hz sine, 25 fps, a keyframe every 2 s.
local function av_file()
  return file("av.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=6",
    "-f", "lavfi", "-i", "sine=frequency=440:duration=6:sample_rate=44100",
    "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-shortest" })
end

-- Three sources cut together: cuts at 2 s and 4 s.
local function cuts_file()
  return file("cuts.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2",
    "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=2",
    "-f", "lavfi", "-i", "color=c=blue:size=320x240:rate=25:duration=2",
    "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]",
    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p" })
end

-- ffmpeg's pts_time values printed by showinfo for a filter chain ending in showinfo.
local function showinfo_times(path, vf)
  local r = assert(sl.exec({ "ffmpeg", "-v", "info", "-nostdin", "-i", path, "-vf", vf,
    "-f", "null", "-" }))
  local ts = {}
  for t in r.stderr:gmatch("pts_time:([%d%.%-]+)") do ts[#ts + 1] = tonumber(t) end
  return ts
end

local function collect(stream)
  local out = {}
  for item in stream do out[#out + 1] = item end
  return out
end

T.case("probe reports container, duration and streams", function()
  local info = T.ok(media.probe(av_file()))
  T.near(info.duration, 6, 0.1)
  T.ok(info.container:find("mp4"), "container")
  local v, a
  for _, s in ipairs(info.streams) do
    if s.type == "video" then v = s elseif s.type == "audio" then a = s end
  end
  T.eq(v.codec, "h264")
  T.eq(v.width, 320)
  T.eq(v.height, 240)
  T.near(v.fps, 25, 0.01)
  T.eq(a.codec, "aac")
  T.eq(a.sample_rate, 44100)
  T.eq(a.channels, 1)
end)

T.case("probe of the real footage", function()
  local info = T.ok(media.probe(P.footage("person.mp4")))
  T.eq(info.streams[1].width, 768)
  T.eq(info.streams[1].height, 432)
  T.near(info.duration, 139, 2)
end)

T.case("non-media, zero-length, missing and truncated inputs give errors naming the file", function()
  local junk = tmp .. "/junk.mp4"
  local f = io.open(junk, "wb")
  f:write(string.rep("this is not a video\n", 200))
  f:close()
  local empty = tmp .. "/empty.mp4"
  io.open(empty, "wb"):close()
  local whole = slurp(av_file())
  local cut = tmp .. "/cut.mp4" -- moov atom at the end: cut off
  f = io.open(cut, "wb")
  f:write(whole:sub(1, #whole // 2))
  f:close()
  for _, p in ipairs({ junk, empty, tmp .. "/missing.mp4", cut }) do
    local info, msg, code = media.probe(p)
    T.eq(info, nil, p)
    T.ok(msg:find(p, 1, true), "message names the file: " .. tostring(msg))
    T.eq(code, "EMEDIA")
    local chunks = media.audio_chunks(p, { seconds = 1, output = "blob" })
    local c, err = chunks:next()
    T.eq(c, nil)
    T.ok(err and err:find(p, 1, true), "audio error names the file")
    local frames = media.frames(p, { every = 1, output = "blob" })
    local fr, ferr = frames:next()
    T.eq(fr, nil)
    T.ok(ferr and ferr:find(p, 1, true), "frames error names the file")
    -- the for-loop form raises the same message
    T.raises(function() for _ in media.frames(p, { every = 1, output = "blob" }) do end end, p)
  end
end)

T.case("a stream that ends early yields what was decoded", function()
  local ts = file("long.ts", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=4",
    "-f", "lavfi", "-i", "sine=duration=4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
    "-c:a", "aac", "-shortest" })
  local whole = slurp(ts)
  local cut = tmp .. "/cut.ts"
  local f = io.open(cut, "wb")
  f:write(whole:sub(1, #whole // 2))
  f:close()
  local frames = collect(media.frames(cut, { every = 0.5, format = "none" }))
  T.ok(#frames >= 2 and #frames < 8, "some frames, not all: " .. #frames)
  local chunks = collect(media.audio_chunks(cut, { seconds = 0.5, output = "blob" }))
  T.ok(#chunks >= 1 and #chunks < 8, "some chunks, not all: " .. #chunks)
end)

T.case("a file cut short whose header states its length: chunks/frames, then a warning naming it", function()
  -- moov at the front (+faststart): the header promises 6 s, the bytes stop near the middle.
  -- Some demuxers report this as a plain end of file; the reader compares with the header.
  local mp4 = file("faststart.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=6",
    "-f", "lavfi", "-i", "sine=duration=6", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
    "-c:a", "aac", "-movflags", "+faststart", "-shortest" })
  local whole = slurp(mp4)
  local cut = tmp .. "/cut_faststart.mp4"
  local f = io.open(cut, "wb")
  f:write(whole:sub(1, #whole // 2))
  f:close()
  local s = media.audio_chunks(cut, { seconds = 1, output = "blob" })
  local n = 0
  while s:next() do n = n + 1 end
  T.ok(n >= 1 and n < 6, "some chunks, not all: " .. n)
  T.ok(s.warning and s.warning:find(cut, 1, true) and s.warning:find("input ended early", 1, true),
    tostring(s.warning))
  local w = media.audio_chunks(mp4, { seconds = 1, output = "blob" })
  while w:next() do end
  T.eq(w.warning, nil, "the whole file gives no warning")
  for _, mode in ipairs { { every = 0.5 }, { keyframes = true }, { scene = 0.3 } } do
    mode.format = "none"
    local fs = media.frames(cut, mode)
    local nf = 0
    while fs:next() do nf = nf + 1 end
    T.ok(nf >= 1 or mode.scene, "some frames") -- (testsrc has no cut for scene mode)
    T.ok(fs.warning and fs.warning:find(cut, 1, true) and fs.warning:find("of video read", 1, true),
      tostring(fs.warning))
    local whole_frames = media.frames(mp4, mode)
    while whole_frames:next() do end
    T.eq(whole_frames.warning, nil, "the whole file gives no warning")
  end
end)

T.case("garbage in the middle of a file: decoding goes on past it", function()
  local whole = slurp(file("mid.ts", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=4",
    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25" }))
  local bad = tmp .. "/mid_bad.ts"
  local f = io.open(bad, "wb")
  local mid = #whole // 2
  f:write(whole:sub(1, mid), string.rep("\0\255", 8000), whole:sub(mid + 16001))
  f:close()
  local frames = collect(media.frames(bad, { every = 0.5, format = "jpeg", output = "blob" }))
  T.ok(#frames >= 6, "frames before and after the damage: " .. #frames)
  T.ok(frames[#frames].t >= 3, "reached the end: " .. frames[#frames].t)
end)

T.case("audio chunks: boundaries and overlap exact to the sample, total equals ffmpeg's", function()
  local p = av_file()
  local rate, L, O = 16000, 2 * 16000, 8000
  local chunks = collect(media.audio_chunks(p, { seconds = 2, overlap = 0.5, output = "blob" }))
  local r = assert(sl.exec({ "ffmpeg", "-v", "error", "-nostdin", "-i", p, "-ac", "1", "-ar", "16000",
    "-f", "s16le", "-" }))
  local total = #r.stdout // 2
  T.ok(total > 90000, "ffmpeg decoded the audio")
  -- chunk k starts at (k-1)*(L-O); every chunk but the last has L samples
  local expect_n = 1
  while (expect_n - 1) * (L - O) + L < total do expect_n = expect_n + 1 end
  T.eq(#chunks, expect_n, "chunk count")
  for i, c in ipairs(chunks) do
    T.eq(c.seq, i)
    T.eq(c.start, (i - 1) * (L - O), "start of chunk " .. i)
    T.eq(c.t0, c.start / rate)
    T.eq(c.t1, (c.start + c.samples) / rate)
    T.eq(#c.blob, c.samples * 2)
    if i < #chunks then T.eq(c.samples, L) end
    if i > 1 then
      local prev = chunks[i - 1]
      T.eq(c.blob:bytes(1, O * 2), prev.blob:bytes(#prev.blob - O * 2 + 1), "overlap " .. i)
    end
  end
  local last = chunks[#chunks]
  T.eq(last.start + last.samples, total, "total samples equal ffmpeg -ac 1 -ar 16000")
  -- and the samples themselves: the first chunk equals ffmpeg's first 2 s
  T.eq(chunks[1].blob:bytes(), r.stdout:sub(1, L * 2), "PCM equals ffmpeg's")
end)

T.case("audio chunks as WAV files, extract_audio writes the whole track", function()
  local p = av_file()
  local dir = tmp .. "/wav"
  local n, total = 0, 0
  for c in media.audio_chunks(p, { seconds = 2.5, dir = dir, prefix = "av" }) do
    n = n + 1
    T.eq(c.path, string.format("%s/av_%05d.wav", dir, n))
    local info = T.ok(media.probe(c.path))
    T.eq(info.container, "wav")
    T.eq(info.streams[1].sample_rate, 16000)
    T.eq(info.streams[1].channels, 1)
    T.eq(#slurp(c.path), 44 + c.samples * 2)
    total = total + c.samples
  end
  T.eq(n, 3)
  local out = tmp .. "/whole.wav"
  local samples = T.ok(media.extract_audio(p, out))
  T.eq(samples, total)
  T.eq(#slurp(out), 44 + samples * 2)
  -- stereo 8 kHz works too
  local s2 = T.ok(media.extract_audio(p, tmp .. "/st.wav", { rate = 8000, channels = 2 }))
  T.near(s2, total / 2, 2)
  local info = T.ok(media.probe(tmp .. "/st.wav"))
  T.eq(info.streams[1].channels, 2)
end)

T.case("split=silence cuts inside the pauses", function()
  -- 1.5 s of tone, 0.5 s of silence, repeated: pauses at [1.5,2), [3.5,4), [5.5,6), ...
  local p = file("speechlike.wav", { "-f", "lavfi", "-i",
    "aevalsrc=0.5*sin(2*PI*440*t)*lt(mod(t\\,2)\\,1.5):s=16000:d=9" })
  local chunks = collect(media.audio_chunks(p, { seconds = 3, window = 1.6, split = "silence",
    output = "blob" }))
  T.ok(#chunks >= 3, "chunks: " .. #chunks)
  for i = 1, #chunks - 1 do
    local cut = chunks[i].t1
    local phase = cut % 2
    T.ok(phase >= 1.5 and phase <= 2.0, string.format("cut %d at %.3f s is inside a pause", i, cut))
    T.eq(chunks[i + 1].start, chunks[i].start + chunks[i].samples, "no gap, no overlap")
  end
end)

T.case("split=silence on real speech (LibriVox) cuts where it is quiet", function()
  local dir = "/usr/share/pocketsphinx/test/data/librivox/"
  local list = tmp .. "/speech.txt"
  local f = io.open(list, "w")
  for _, n in ipairs({ "0870", "0880", "0890", "0920", "0930" }) do
    f:write(string.format("file '%ssense_and_sensibility_01_austen_64kb-%s.wav'\n", dir, n))
  end
  f:close()
  local p = file("speech.wav", { "-f", "concat", "-safe", "0", "-i", list })
  local chunks = collect(media.audio_chunks(p, { seconds = 5, window = 2, split = "silence",
    output = "blob" }))
  T.ok(#chunks >= 4, "chunks: " .. #chunks)
  -- energy of the 20 ms around a sample position, against the median over the whole file
  local whole = {}
  for _, c in ipairs(chunks) do whole[#whole + 1] = c.blob:bytes() end
  local pcm = table.concat(whole)
  local function energy(at)
    local e, n = 0, 0
    for i = math.max(0, at - 160), at + 159 do
      local lo = i * 2 + 1
      if lo + 1 > #pcm then break end
      local v = string.unpack("<i2", pcm, lo)
      e, n = e + v * v, n + 1
    end
    return n > 0 and e / n or 0
  end
  local all = {}
  for at = 160, #pcm // 2 - 160, 320 do all[#all + 1] = energy(at) end
  table.sort(all)
  local median = all[#all // 2]
  for i = 1, #chunks - 1 do
    local cut = chunks[i].start + chunks[i].samples
    T.ok(energy(cut) < median * 0.1, string.format("cut %d at %.2f s: energy %.0f vs median %.0f",
      i, cut / 16000, energy(cut), median))
  end
end)

T.case("split=silence: a cut in a pause needs no overlap, elsewhere chunks overlap", function()
  -- 1.5 s of tone, 0.5 s of silence: every 3 s target has a pause within its 2.4 s window
  local p = file("speechlike13.wav", { "-f", "lavfi", "-i",
    "aevalsrc=0.5*sin(2*PI*440*t)*lt(mod(t\\,2)\\,1.5):s=16000:d=13" })
  local function cuts(o)
    local c = collect(media.audio_chunks(p, { seconds = 3, window = 2.4, overlap = 1, split = "silence",
      pause = o.pause, output = "blob" }))
    T.ok(#c >= 4, "chunks: " .. #c)
    return c
  end
  local c = cuts {}
  for i = 1, #c - 1 do
    local cut = (c[i].start + c[i].samples) / 16000
    T.ok(cut % 2 >= 1.5 + 0.1 and cut % 2 <= 2.0 - 0.1, string.format("cut %d at %.3f s: inside a pause, away from its edges", i, cut))
    T.eq(c[i + 1].start, c[i].start + c[i].samples, "chunks meet at a pause")
  end
  T.eq(c[#c].start + c[#c].samples, 13 * 16000, "the last chunk ends with the input")
  -- pause = 0: every cut overlaps by the full second
  c = cuts { pause = 0 }
  for i = 1, #c - 1 do T.eq(c[i + 1].start, c[i].start + c[i].samples - 16000, "overlap at cut " .. i) end
  -- a pause shorter than pause = 0.6 s is not one
  c = cuts { pause = 0.6 }
  for i = 1, #c - 1 do T.eq(c[i + 1].start, c[i].start + c[i].samples - 16000, "0.5 s is no 0.6 s pause: overlap " .. i) end
end)

T.case("split=silence on real speech: chunks meet only at quiet cuts", function()
  local dir = "/usr/share/pocketsphinx/test/data/librivox/"
  local list = tmp .. "/speech2.txt"
  local f = io.open(list, "w")
  for _, n in ipairs({ "0870", "0880", "0890", "0920", "0930", "0940", "0950" }) do
    f:write(string.format("file '%ssense_and_sensibility_01_austen_64kb-%s.wav'\n", dir, n))
  end
  f:close()
  local p = file("speech2.wav", { "-f", "concat", "-safe", "0", "-i", list })
  local chunks = collect(media.audio_chunks(p, { seconds = 8, window = 6, overlap = 2, split = "silence",
    pause = 0.2, output = "blob" }))
  local pcm = {}
  for _, c in ipairs(chunks) do pcm[#pcm + 1] = { start = c.start, bytes = c.blob:bytes() } end
  local function power(from, to) -- mean power of samples [from, to), from the chunk holding them
    for _, c in ipairs(pcm) do
      if from >= c.start and to <= c.start + #c.bytes // 2 then
        local e = 0
        for i = from, to - 1 do
          local v = string.unpack("<i2", c.bytes, (i - c.start) * 2 + 1)
          e = e + v * v
        end
        return e / (to - from)
      end
    end
  end
  local met = 0
  for i = 1, #chunks - 1 do
    local a, b = chunks[i], chunks[i + 1]
    local cut = a.start + a.samples
    if b.start == cut then
      met = met + 1
      -- the 0.2 s around the cut is quiet against the chunk it ends (each 20 ms 20 dB down)
      local mean = power(a.start, cut)
      for at = cut - 1600, cut + 1600 - 320, 320 do
        local q = power(at, at + 320) or power(at - 1, at + 319)
        if q then T.ok(q < mean * 0.0125, string.format("cut %d at %.2f s: quiet around it", i, cut / 16000)) end
      end
    else
      T.eq(b.start, cut - 2 * 16000, "not a pause: 2 s overlap at cut " .. i)
    end
  end
  T.ok(met >= 1, "some cuts fall in pauses (LibriVox pauses between sentences): " .. met .. " of " .. (#chunks - 1))
end)

T.case("frames every N: timestamps match ffmpeg -vf fps=1/N within one frame", function()
  local p = av_file()
  local frames = collect(media.frames(p, { every = 1, output = "blob", max_width = 160 }))
  local cli = showinfo_times(p, "fps=1/1,showinfo")
  T.ok(#cli >= 5, "ffmpeg printed timestamps")
  T.ok(math.abs(#frames - #cli) <= 1, string.format("count %d vs ffmpeg %d", #frames, #cli))
  for i = 1, math.min(#frames, #cli) do
    T.near(frames[i].t, cli[i], 0.04 + 1e-9, "frame " .. i)
    T.eq(frames[i].width, 160)
    T.eq(frames[i].height, 120)
    T.eq(frames[i].format, "jpg")
  end
  -- seeking skipped work: far fewer frames decoded than the 150 in the file
  T.ok(frames[#frames].decoded < 150, "decoded " .. frames[#frames].decoded)
end)

-- B-frames (x264's veryfast: 3 of them, the middle one a reference), keyframes 4 s apart.
local function bframes_file()
  return file("bpyramid.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=8",
    "-c:v", "libx264", "-preset", "veryfast", "-g", "100", "-pix_fmt", "yuv420p" })
end

T.case("every and times: frames nothing refers to before the wanted time are not decoded; the same pixels", function()
  local p = bframes_file()
  local digest = require "sluice.core.digest"
  for _, o in ipairs { { every = 0.5 }, { every = 1.3, threads = 1 }, { times = { 0.3, 2.22, 2.3, 5.01, 7.9 } } } do
    local what = o.every and ("every " .. o.every) or "times"
    local function run(all)
      local q = { format = "gray", output = "blob", decode_all = all }
      for k, v in pairs(o) do q[k] = v end
      local fs = collect(media.frames(p, q))
      local out = {}
      for i, f in ipairs(fs) do out[i] = string.format("%.3f %s", f.t, digest.sha256(f.blob:bytes())) end
      return out, fs[#fs].decoded
    end
    local exact, decoded_all = run(true)
    local got, decoded = run(false)
    T.ok(#exact >= 5, what .. ": frames")
    T.eq(#got, #exact, what .. ": count")
    for i = 1, #exact do T.eq(got[i], exact[i], what .. ": frame " .. i .. " (time and pixels)") end
    T.ok(decoded < decoded_all * 0.8, string.format("%s: decoded %d against %d", what, decoded, decoded_all))
  end
end)

T.case("frames at explicit times, as JPEG files that decode", function()
  local p = av_file()
  local dir = tmp .. "/jpg"
  local frames = collect(media.frames(p, { times = { 0.5, 3.2, 1.0 }, dir = dir, max_height = 120 }))
  T.eq(#frames, 3)
  T.near(frames[1].t, 0.5, 0.04)
  T.near(frames[2].t, 1.0, 0.04)
  T.near(frames[3].t, 3.2, 0.04)
  for _, f in ipairs(frames) do
    local info = T.ok(media.probe(f.path))
    T.eq(info.streams[1].codec, "mjpeg")
    T.eq(info.streams[1].width, 160)
    T.eq(info.streams[1].height, 120)
  end
  local png = collect(media.frames(p, { times = { 2 }, format = "png", output = "blob" }))
  T.eq(png[1].blob:bytes(1, 8), "\137PNG\r\n\26\n")
  local gray = collect(media.frames(p, { times = { 2 }, format = "gray", output = "blob", max_width = 32 }))
  T.eq(#gray[1].blob, 32 * 24)
end)

T.case("a time between a keyframe's dts and pts (B-frames) is reached, not sought forever", function()
  -- x264 with B-frames: the keyframe at 2 s has dts 1.92. Seeking to 1.96 lands on the keyframe
  -- before (the demuxer seeks by presentation time); the reader used to seek to the 2 s
  -- keyframe again at every step and never return (the sample lecture hung at 9.9 s).
  local p = file("bframes.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=6",
    "-c:v", "libx264", "-preset", "medium", "-bf", "2", "-g", "50", "-pix_fmt", "yuv420p" })
  local frames = sl.timeout(30, function()
    return collect(media.frames(p, { times = { 1.96, 3.97 }, format = "none" }))
  end)
  T.ok(frames, "the reader returned within 30 s")
  T.eq(#frames, 2)
  T.near(frames[1].t, 1.96, 0.02 + 1e-9)
  T.near(frames[2].t, 3.96, 0.02 + 1e-9)
  local every = sl.timeout(30, function()
    return collect(media.frames(p, { every = 1.96, format = "none" }))
  end)
  T.ok(every, "every = 1.96 returned within 30 s")
  T.eq(#every, 4) -- 0, 1.96, 3.92, 5.88
end)

T.case("readers of one MP4 open at once share its demuxer and read what separate readers read", function()
  -- video with B-frames and audio; the reference reads a copy (another file: its own demuxer)
  local p = file("shared.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=12",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=12", "-c:v", "libx264", "-bf", "2",
    "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest" })
  local copy = tmp .. "/shared-copy.mp4"
  assert(sl.exec({ "cp", p, copy }))
  -- every frame (with prefetch = false, readers take strict turns: each next() is one job)
  local prefetch = true
  local function opts_frames()
    return { every = prefetch and 0.5 or 0.04, format = "gray", output = "blob", max_width = 96, prefetch = prefetch }
  end
  local function opts_audio() return { seconds = 2, output = "blob", prefetch = prefetch } end
  for _, pf in ipairs { true, false } do
  prefetch = pf
  local grabs = { 7.2, 1.04, 11.5, 3 }
  -- alone, one after another, on the copy
  local ref_frames = collect(media.frames(copy, opts_frames()))
  local ref_audio = collect(media.audio_chunks(copy, opts_audio()))
  local ref_grabs = {}
  for i, t in ipairs(grabs) do
    ref_grabs[i] = collect(media.frames(copy, { times = { t }, format = "gray", output = "blob" }))[1]
  end
  -- together: turns taken item by item, a grab retimed back and forth between them, a probe
  local opened0 = media.inputs()
  local fs = media.frames(p, opts_frames())
  local as = media.audio_chunks(p, opts_audio())
  local g = media.frames(p, { times = {}, keep_open = true, format = "gray", output = "blob" })
  local frames, audio, got_grabs = {}, {}, {}
  local fdone, adone, k = false, false, 0
  while not (fdone and adone) do
    k = k + 1
    if not fdone then
      local f, err = fs:next()
      T.eq(err, nil)
      if f then frames[#frames + 1] = f else fdone = true end
    end
    if not adone and k % 3 ~= 0 then
      local c, err = as:next()
      T.eq(err, nil)
      if c then audio[#audio + 1] = c else adone = true end
    end
    if k % 5 == 0 and #got_grabs < #grabs then
      g:retime({ grabs[#got_grabs + 1] })
      got_grabs[#got_grabs + 1] = T.ok(g:next())
    end
    if k == 7 then T.near(T.ok(media.probe(p)).duration, 12, 0.2) end
  end
  while #got_grabs < #grabs do
    g:retime({ grabs[#got_grabs + 1] })
    got_grabs[#got_grabs + 1] = T.ok(g:next())
  end
  local opened, open = media.inputs()
  T.eq(opened - opened0, 1, "one demuxer for the three readers and the probe")
  T.eq(open, 1)
  g:close()
  T.eq(select(2, media.inputs()), 0, "closed with the last reader")
  T.eq(#frames, #ref_frames, "frames")
  for i, f in ipairs(frames) do
    T.eq(f.t, ref_frames[i].t, "frame time " .. i)
    T.eq(f.blob:bytes(1, #f.blob), ref_frames[i].blob:bytes(1, #ref_frames[i].blob), "frame pixels " .. i)
  end
  T.eq(#audio, #ref_audio, "audio chunks")
  for i, c in ipairs(audio) do
    T.eq(c.start, ref_audio[i].start, "chunk start " .. i)
    T.eq(c.blob:bytes(1, #c.blob), ref_audio[i].blob:bytes(1, #ref_audio[i].blob), "chunk samples " .. i)
  end
  for i, f in ipairs(got_grabs) do
    T.eq(f.t, ref_grabs[i].t, "grab time " .. i)
    T.eq(f.blob:bytes(1, #f.blob), ref_grabs[i].blob:bytes(1, #ref_grabs[i].blob), "grab pixels " .. i)
  end
  end
end)

T.case("a kept-open reader retimed (back and forth) gives a new reader's frames from one open input", function()
  -- B-frames, so seeking back lands before a keyframe's presentation time as well
  local p = file("retime.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=12",
    "-c:v", "libx264", "-bf", "2", "-g", "50", "-pix_fmt", "yuv420p" })
  -- the fresh readers read a copy: readers of one file open at once share its demuxer
  local copy = tmp .. "/retime-copy.mp4"
  assert(sl.exec({ "cp", p, copy }))
  local opened0 = media.inputs()
  local g = media.frames(p, { times = {}, keep_open = true, format = "gray", output = "blob" })
  T.eq(g:next(), nil, "no times: no frame, and the input stays open")
  local fresh = 0
  for _, t in ipairs { 6.3, 2.04, 2.04, 11.9, 0, 7.96, 4 } do
    g:retime({ t })
    local a = T.ok(g:next())
    T.eq(g:next(), nil, "one time, one frame")
    local b = collect(media.frames(copy, { times = { t }, format = "gray", output = "blob" }))[1]
    fresh = fresh + 1
    T.eq(a.t, b.t, "the frame at " .. t)
    T.eq(a.dhash, b.dhash, "the picture at " .. t)
    T.eq(a.blob:bytes(1, #a.blob), b.blob:bytes(1, #b.blob), "the pixels at " .. t)
  end
  -- several times at once, another format and cells: refine's use
  g:retime({ 3.2, 1.0, 1.04 }, { format = "none", cells = 8 })
  local got = collect(g)
  T.eq(#got, 3)
  T.near(got[1].t, 1.0, 0.02 + 1e-9)
  T.near(got[3].t, 3.2, 0.02 + 1e-9)
  T.ok(got[1].cells and got[1].path == nil and got[1].blob == nil, "cells, no picture")
  local opened, open = media.inputs()
  T.eq(opened - opened0, fresh + 1, "the kept-open reader opened its input once")
  T.eq(open, 1, "and holds it until closed")
  g:close()
  T.eq(select(2, media.inputs()), 0, "closed")
  T.raises(function() media.frames(p, { every = 1, keep_open = true }) end, "keep_open needs times")
  local s = media.frames(p, { times = { 1 }, format = "none" })
  T.raises(function() s:retime({ 2 }) end, "keep_open")
  s:close()
end)

T.case("keyframes mode decodes only keyframes", function()
  local p = av_file()
  local frames = collect(media.frames(p, { keyframes = true, format = "none" }))
  local r = assert(sl.exec({ "ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
    "packet=pts_time,flags", "-of", "csv=p=0", p }))
  local keys = {}
  for t, flags in r.stdout:gmatch("([%d%.]+),(%S+)") do
    if flags:find("K") then keys[#keys + 1] = tonumber(t) end
  end
  T.eq(#frames, #keys)
  for i, f in ipairs(frames) do
    T.eq(f.seq, i) -- in order across the batches a job delivers
    T.ok(f.key, "key frame")
    T.near(f.t, keys[i], 1e-6)
  end
  T.eq(frames[#frames].decoded, #keys)
end)

T.case("scene scores equal ffmpeg's select=scene; cuts are found", function()
  local p = cuts_file()
  -- every frame's score from ffmpeg (metadata=print shows lavfi.scene_score)
  local r = assert(sl.exec({ "ffmpeg", "-v", "info", "-nostdin", "-i", p, "-vf",
    "select='gte(scene\\,0)',metadata=print", "-f", "null", "-" }))
  local cli = {}
  for s in r.stderr:gmatch("lavfi.scene_score=([%d%.]+)") do cli[#cli + 1] = tonumber(s) end
  T.ok(#cli >= 140, "ffmpeg printed scores: " .. #cli)
  local mine = collect(media.frames(p, { scene = 0, format = "none" }))
  -- scene=0 selects every frame scoring above 0: compare those with ffmpeg's non-zero scores
  local nonzero = {}
  for _, s in ipairs(cli) do if s > 0 then nonzero[#nonzero + 1] = s end end
  T.eq(#mine, #nonzero, "frames with a non-zero score")
  for i, f in ipairs(mine) do T.near(f.scene_score, nonzero[i], 1e-6, "score " .. i) end
  local cuts = collect(media.frames(p, { scene = 0.3, output = "blob", max_width = 64 }))
  local cli_cuts = showinfo_times(p, "select='gt(scene\\,0.3)',showinfo")
  T.eq(#cuts, 2)
  T.eq(#cli_cuts, 2)
  T.near(cuts[1].t, 2, 0.04)
  T.near(cuts[2].t, 4, 0.04)
  for i = 1, 2 do T.near(cuts[i].t, cli_cuts[i], 1e-6) end
end)

T.case("dHash: 0 for identical frames, large across a cut; index finds near duplicates", function()
  local p = cuts_file()
  local f = collect(media.frames(p, { times = { 0.2, 0.2001, 2.5, 4.5 }, format = "none", phash = true }))
  -- times 0.2 and 0.2001 select the same frame once; take frames of one still scene instead
  local still = collect(media.frames(p, { times = { 4.2, 4.6 }, format = "none", phash = true }))
  T.eq(#still, 2)
  T.eq(media.distance(still[1].dhash, still[2].dhash), 0, "same picture")
  T.eq(media.distance(still[1].phash, still[2].phash), 0, "same picture (pHash)")
  T.ok(media.distance(f[1].dhash, f[2].dhash) >= 16, "testsrc vs smptebars")
  T.ok(media.distance(f[2].dhash, f[3].dhash) >= 8, "smptebars vs blue")
  T.eq(#media.hex(f[1].dhash), 16)
  T.eq(media.from_hex(media.hex(f[1].dhash)), f[1].dhash)
  -- the hash of a JPEG of a frame is close to the frame's own
  local jpg = collect(media.frames(p, { times = { 1.0 }, dir = tmp .. "/h" }))[1]
  local d = T.ok(media.dhash(jpg.path))
  T.ok(media.distance(d, jpg.dhash) <= 6, "JPEG round trip: " .. media.distance(d, jpg.dhash))
  T.eq(media.dhash(jpg), jpg.dhash)
  local ix = media.index()
  ix:add(f[1].dhash, "a")
  ix:add(f[2].dhash, "b")
  ix:add(d, "jpeg")
  local ids = ix:near(jpg.dhash, 6)
  table.sort(ids)
  T.same(ids, { "a", "jpeg" })
  T.eq(#ix, 3)
end)

T.case("frames of the real footage: dHash separates the empty office from people", function()
  -- the office is empty at 1 s, 1.5 s and 90 s; people stand in it at 30 s
  local frames = collect(media.frames(P.footage("person.mp4"), { times = { 1, 1.5, 30, 90 },
    format = "none", phash = true }))
  T.eq(#frames, 4)
  T.ok(media.distance(frames[1].dhash, frames[2].dhash) <= 2, "same empty scene")
  T.ok(media.distance(frames[1].dhash, frames[4].dhash) <= 2, "empty again")
  T.ok(media.distance(frames[1].dhash, frames[3].dhash) >= 6, "people in the scene")
  T.ok(media.distance(frames[1].phash, frames[3].phash) >= 6, "people in the scene (pHash)")
end)

T.case("closing a stream early removes the files of items made ahead that nobody got", function()
  local p = file("long.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=20",
    "-c:v", "libx264", "-preset", "ultrafast", "-g", "250" })
  local function files_in(dir)
    local r = assert(sl.exec { "sh", "-c", "ls -A " .. dir .. " 2>/dev/null | wc -l" })
    return tonumber(r.stdout)
  end
  local function settle(dir, want)
    -- a cancelled job frees (and removes its files) once its worker returns
    T.wait_until(function() return files_in(dir) == want end)
    return files_in(dir)
  end
  -- frames come in batches and one job runs ahead: after the first frame, several files of
  -- frames not handed out exist; closing removes them and keeps the one handed out
  local fdir = tmp .. "/ahead-frames"
  local frames = media.frames(p, { every = 0.2, dir = fdir, max_width = 64 })
  local first = assert(frames:next())
  sl.sleep(0.2) -- let the job running ahead finish (or not: either way close cleans up)
  frames:close()
  T.eq(settle(fdir, 1), 1, "only the frame handed out is left")
  T.ok(io.open(first.path, "rb"), "the frame handed out is kept")
  -- the same for audio chunk files
  local adir = tmp .. "/ahead-audio"
  local wav = file("tone.wav", { "-f", "lavfi", "-i", "sine=duration=20", "-ar", "16000" })
  local chunks = media.audio_chunks(wav, { seconds = 1, dir = adir })
  local c1 = assert(chunks:next())
  sl.sleep(0.2)
  chunks:close()
  T.eq(settle(adir, 1), 1, "only the chunk handed out is left")
  T.ok(io.open(c1.path, "rb"), "the chunk handed out is kept")
end)

T.case("cancelling the consuming task cancels the decode job", function()
  local p = file("long.mp4", { "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=20",
    "-c:v", "libx264", "-preset", "ultrafast", "-g", "250" })
  local started = sl.event()
  local task = sl.spawn(function()
    started:set()
    -- scene=1 never selects a frame: one job decodes the whole file unless cancelled
    for _ in media.frames(p, { scene = 1, format = "none", threads = 1 }) do end
  end)
  started:wait() -- the task is now waiting on its first decode job (the whole file)
  sl.sleep(0)    -- one loop turn, so a worker has it; far less than decoding 20 s of video
  task:cancel()
  local ok, err = pcall(task.wait, task)
  T.eq(ok, false)
  T.ok(tostring(err):find("cancelled"), tostring(err))
  -- the pool is free again: a new job runs
  T.ok(media.probe(p))
end)

T.case("HLS playlists are inputs like files", function()
  local dir = tmp .. "/hls"
  os.execute("mkdir -p " .. dir)
  ffmpeg({ "-i", av_file(), "-c", "copy", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0",
    "-hls_segment_filename", dir .. "/seg%03d.ts", dir .. "/index.m3u8" })
  local url = dir .. "/index.m3u8"
  local info = T.ok(media.probe(url))
  T.eq(info.container, "hls")
  local frames = collect(media.frames(url, { every = 2, format = "none" }))
  T.ok(#frames >= 3, "frames from the playlist: " .. #frames)
  local chunks = collect(media.audio_chunks(url, { seconds = 2, output = "blob" }))
  local direct = collect(media.audio_chunks(av_file(), { seconds = 2, output = "blob" }))
  T.eq(#chunks, #direct)
  T.near(chunks[#chunks].t1, direct[#direct].t1, 0.05)
end)

T.case("http URLs over loopback", function()
  local proc = require "sluice.core.proc"
  local port_ev, port = sl.event(), nil
  local buf = ""
  local server = assert(proc.spawn {
    file = "/usr/bin/python3", args = { "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
      "--directory", tmp },
    on_stdout = function(c)
      if c then
        buf = buf .. c
        port = port or tonumber(buf:match("port (%d+)"))
        if port then port_ev:set() end
      end
    end,
    on_stderr = function() end,
    on_exit = function() port_ev:set() end,
  })
  -- Python's server ignores Range requests: serve a file with the index at the front
  ffmpeg({ "-i", av_file(), "-c", "copy", "-movflags", "+faststart", tmp .. "/web.mp4" })
  port_ev:wait()
  T.ok(port, "server port")
  local url = string.format("http://127.0.0.1:%d/web.mp4", port)
  local ok, err = pcall(function()
    local info = T.ok(media.probe(url))
    T.near(info.duration, 6, 0.1)
    local frames = collect(media.frames(url, { every = 2, output = "blob" }))
    T.eq(#frames, 3)
    local chunks = collect(media.audio_chunks(url, { seconds = 2, output = "blob" }))
    T.ok(#chunks >= 3)
    local missing, msg = media.probe(string.format("http://127.0.0.1:%d/nope.mp4", port))
    T.eq(missing, nil)
    T.ok(msg:find("nope.mp4", 1, true), msg)
  end)
  server:kill("SIGTERM")
  if not ok then error(err, 0) end
end)

-- A live HLS stream whose publication the test controls: the playlist (no ENDLIST) lists the
-- segments published so far. Every frame of what is published must reach the reader before
-- the next segment is: a frame decoded and then held while the reader waits for the next
-- segment is a frame late by a whole segment (the live monitor fell behind the stream so).
-- Asserted on stream positions: which frames arrived while the playlist ended where.
T.case("live HLS: every frame of the published segments arrives before the next segment is published", function()
  local dir = tmp .. "/live"
  os.execute("mkdir -p " .. dir)
  ffmpeg({ "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10:duration=12", "-c:v", "libx264",
    "-tune", "zerolatency", "-g", "20",
    "-keyint_min", "20", "-sc_threshold", "0", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0",
    "-hls_segment_filename", dir .. "/seg%d.ts", dir .. "/vod.m3u8" })
  local durations = {}
  for d in slurp(dir .. "/vod.m3u8"):gmatch("#EXTINF:([%d.]+),") do durations[#durations + 1] = tonumber(d) end
  T.eq(#durations, 6)
  local function publish(n) -- the first n segments, as a live playlist
    local lines = { "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0" }
    for i = 1, n do
      lines[#lines + 1] = string.format("#EXTINF:%.6f,", durations[i])
      lines[#lines + 1] = string.format("seg%d.ts", i - 1)
    end
    local f = assert(io.open(dir .. "/live.tmp", "wb"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    assert(os.rename(dir .. "/live.tmp", dir .. "/live.m3u8"))
  end
  publish(3)
  local srv = P.static_server(dir)
  local ok, err = pcall(function()
    local stream = media.frames(srv.url .. "/live.m3u8", { every = 0.5, format = "none" })
    local got = {}
    -- published: segments 1-3 (0-6 s); then 4 and 5, one at a time
    for n = 3, 5 do
      local edge = 2 * n - 0.5 -- the last frame of segment n
      while #got == 0 or got[#got] < edge - 1e-6 do
        local f, ferr = sl.timeout(20, stream.next, stream)
        T.ok(f, string.format("frame after %.1f s, with %d segments published: %s", got[#got] or -1, n, tostring(ferr)))
        got[#got + 1] = f.t
      end
      T.near(got[#got], edge, 0.06, "the last frame of segment " .. n)
      if n < 5 then publish(n + 1) end
    end
    stream:close()
    T.eq(#got, 20, "a frame every 0.5 s of 10 s")
  end)
  srv.stop()
  if not ok then error(err, 0) end
end)

T.case("misuse raises", function()
  T.raises(function() media.audio_chunks("x.mp4", { seconds = 1, overlap = 2, output = "blob" }) end, "overlap")
  T.raises(function() media.frames("x.mp4", { every = 1, scene = 0.3 }) end, "one of")
  T.raises(function() media.frames("x.mp4", { format = "bmp" }) end, "format")
  T.raises(function() media.probe(nil) end, "path or URL expected")
end)

local rc = T.run()
os.execute("rm -rf " .. tmp)
return rc
