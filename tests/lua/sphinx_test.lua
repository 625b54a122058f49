-- labels: slow
-- sphinx STT: accuracy against pocketsphinx_continuous on Debian's LibriVox utterances,
-- word timings, bad input, cancellation.
local sl = require "sluice"
local T = require "sluice.app.test"
local sphinx = require "sluice.providers.sphinx"
local csphinx = require "sluice.core.sphinx"
local blob = require "sluice.core.blob"

T.timeout = 240

local DATA = "/usr/share/pocketsphinx/test/data/librivox/"
local MODEL = "/usr/share/pocketsphinx/model/en-us"

local function tmpdir()
  local base = os.tmpname()
  os.remove(base)
  assert(sl.exec({ "mkdir", "-p", base }))
  return base
end
local TMP = nil

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The five utterances and their reference transcripts.
local function references()
  local refs = {}
  for line in read_file(DATA .. "transcription"):gmatch("[^\n]+") do
    local text, id = line:match("^(.-)%s*%(([^)]+)%)%s*$")
    text = text:gsub("</?s>", "")
    refs[#refs + 1] = { id = id, path = DATA .. id .. ".wav", text = text }
  end
  return refs
end

local function words_of(text)
  local w = {}
  for tok in text:lower():gmatch("[%w']+") do w[#w + 1] = tok end
  return w
end

-- Word-level Levenshtein distance.
local function edit_distance(ref, hyp)
  local prev = {}
  for j = 0, #hyp do prev[j] = j end
  for i = 1, #ref do
    local cur = { [0] = i }
    for j = 1, #hyp do
      local sub = prev[j - 1] + (ref[i] == hyp[j] and 0 or 1)
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, sub)
    end
    prev = cur
  end
  return prev[#hyp]
end

local function wer(pairs_)
  local errors, total = 0, 0
  for _, p in ipairs(pairs_) do
    local ref = words_of(p.ref)
    errors = errors + edit_distance(ref, words_of(p.hyp))
    total = total + #ref
  end
  return 100 * errors / total
end

local stt = sphinx.new { workers = 2 }

T.case("WER on the LibriVox utterances is within 2 points of pocketsphinx_continuous", function()
  local refs = references()
  T.eq(#refs, 5, "utterances in the test data")
  local ours, theirs = {}, {}
  local g = sl.group()
  for i, r in ipairs(refs) do
    g:spawn(function()
      local res = T.ok(stt:transcribe { path = r.path })
      ours[i] = { ref = r.text, hyp = res.text }
    end)
    g:spawn(function()
      local out = T.ok(sl.exec { "pocketsphinx_continuous", "-infile", r.path,
        "-hmm", MODEL .. "/en-us", "-lm", MODEL .. "/en-us.lm.bin",
        "-dict", MODEL .. "/cmudict-en-us.dict", "-logfn", "/dev/null" })
      T.eq(out.status, 0, "pocketsphinx_continuous exit status")
      theirs[i] = { ref = r.text, hyp = out.stdout }
    end)
  end
  g:wait()
  if os.getenv("SPHINX_TEST_VERBOSE") then
    for i = 1, #refs do print("ours:   " .. ours[i].hyp, "\ntheirs: " .. theirs[i].hyp) end
  end
  local w_ours, w_theirs = wer(ours), wer(theirs)
  print(string.format("     WER sluice sphinx %.1f%%, pocketsphinx_continuous %.1f%%", w_ours, w_theirs))
  T.ok(w_theirs < 100, "the reference decoder recognised something")
  T.ok(math.abs(w_ours - w_theirs) <= 2, string.format("WER %.1f vs %.1f within 2 points", w_ours, w_theirs))
end)

T.case("word timings are monotonic, inside the chunk, and shifted by t0", function()
  TMP = TMP or tmpdir()
  local long = TMP .. "/two.wav"
  -- utterance, 3 s of silence, utterance: two segments
  T.ok(sl.exec { "ffmpeg", "-loglevel", "error", "-y",
    "-i", DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav",
    "-f", "lavfi", "-t", "3", "-i", "anullsrc=r=16000:cl=mono",
    "-i", DATA .. "sense_and_sensibility_01_austen_64kb-0930.wav",
    "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1",
    "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", long })
  local t0 = 100
  local r = T.ok(stt:transcribe { path = long, t0 = t0 })
  T.eq(r.provider, "sphinx")
  T.ok(#r.segments >= 2, "at least two segments, got " .. #r.segments)
  T.ok(r.duration > 9 and r.duration < 10, "duration " .. r.duration)
  local t1 = t0 + r.duration
  local last, nwords = t0, 0
  for _, seg in ipairs(r.segments) do
    T.ok(seg.start >= t0 and seg["end"] <= t1 and seg.start <= seg["end"], "segment inside the chunk")
    T.ok(#seg.words > 0 and seg.text ~= "")
    for _, w in ipairs(seg.words) do
      T.ok(not w.word:find("[<%[%(]"), "no fillers or alternates: " .. w.word)
      T.ok(w.start >= last - 1e-9, string.format("%s starts at %.2f, after %.2f", w.word, w.start, last))
      T.ok(w["end"] >= w.start and w["end"] <= t1)
      T.ok(w.conf >= 0 and w.conf <= 1)
      last = w["end"]
      nwords = nwords + 1
    end
  end
  -- the second utterance starts after the first one and the silence (about 3.2 s + 3 s)
  T.ok(r.segments[#r.segments].start > t0 + 6, "second segment at media time " .. r.segments[#r.segments].start)
  T.ok(nwords >= 12)
end)

T.case("a PCM blob gives the same words as the WAV file", function()
  local path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav"
  local wav = read_file(path)
  local pcm = blob.new(wav:sub(45)) -- this file has a plain 44-byte header
  local a = T.ok(stt:transcribe { path = path })
  local b = T.ok(stt:transcribe { blob = pcm, rate = 16000, t0 = 0 })
  T.eq(b.text, a.text)
  local bad, msg = stt:transcribe { blob = pcm, rate = 44100 }
  T.eq(bad, nil)
  T.ok(msg:find("44100", 1, true) and msg:find("16000", 1, true), msg)
end)

T.case("bad input gives one clear error naming the file and the cause", function()
  TMP = TMP or tmpdir()
  local r, msg = stt:transcribe { path = "/nonexistent/x.wav" }
  T.eq(r, nil)
  T.ok(msg:find("/nonexistent/x.wav", 1, true) and msg:find("No such file", 1, true), msg)
  r, msg = stt:transcribe { path = DATA .. "transcription" }
  T.eq(r, nil)
  T.ok(msg:find("not a WAV file", 1, true), msg)
  local stereo = TMP .. "/stereo.wav"
  T.ok(sl.exec { "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-t", "1",
    "-i", "sine=f=440:r=44100", "-ac", "2", "-c:a", "pcm_s16le", stereo })
  r, msg = stt:transcribe { path = stereo }
  T.eq(r, nil)
  T.ok(msg:find("44100 Hz, 2 channel", 1, true) and msg:find("16000 Hz mono", 1, true), msg)
  -- the decoders still work afterwards
  T.ok(stt:transcribe { path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav" })
end)

T.case("a missing model names the Debian package to install", function()
  local p = sphinx.new { model = "/nonexistent/model" }
  local r, msg = p:transcribe { path = DATA .. "sense_and_sensibility_01_austen_64kb-0880.wav" }
  T.eq(r, nil)
  T.ok(msg:find("pocketsphinx-en-us", 1, true) and msg:find("/nonexistent/model", 1, true), msg)
end)

T.case("a decoder runs one job at a time; cancelling stops the job and frees it", function()
  local d = T.ok(sl.await("load", function(done)
    return csphinx.load({ hmm = MODEL .. "/en-us", lm = MODEL .. "/en-us.lm.bin",
      dict = MODEL .. "/cmudict-en-us.dict" }, done)
  end))
  local path = DATA .. "sense_and_sensibility_01_austen_64kb-0870.wav"
  local job = d:transcribe(path, function() end)
  T.ok(job and d:busy())
  local j2, msg, code = d:transcribe(path, function() end)
  T.eq(j2, nil)
  T.eq(code, "EBUSY", msg)
  job:cancel()
  while d:busy() do sl.sleep(0.01) end
  local task = sl.spawn(function()
    return sl.await("tr", function(done) return d:transcribe(path, done) end)
  end)
  sl.sleep(0.05)
  task:cancel()
  T.ok(not pcall(task.wait, task))
  while d:busy() do sl.sleep(0.01) end
  local r = T.ok(sl.await("tr", function(done) return d:transcribe(path, done) end))
  T.ok(#r.utterances >= 1)
  d:close()
  d:close()
  T.raises(function() d:transcribe(path, function() end) end, "attempt to use a closed sphinx decoder")
end)

local status = T.run()
stt:close()
if TMP then sl.exec { "rm", "-rf", TMP } end
return status
