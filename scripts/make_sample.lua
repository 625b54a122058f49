-- make_sample.lua: makes the sample media the main job, the tests and the benchmarks use, from
-- real parts, offline, with the ffmpeg command line. Run: sluice run scripts/make_sample.lua
-- [OUT_DIR] [--force] [--only lecture|podcast|filter|slides|longN] (OUT_DIR defaults to
-- build/sample; longN, e.g. long30 or long120: the lecture looped to N minutes, for the bench).
--
--   OUT/lecture.mp4         ~41 s, 1280x720 H.264 + AAC: the five LibriVox utterances of
--                           Debian's pocketsphinx-testdata read one after another with pauses,
--                           over slides (dark text on a light background) that change between
--                           utterances; each slide's text takes key words from what is said
--                           while it is shown.
--   OUT/lecture.truth.json  slide times and texts, utterance times and reference transcripts.
--   OUT/podcast/feed.xml    an RSS 2.0 feed whose enclosures (relative URLs) are three short
--   OUT/podcast/*.m4a       AAC episodes made of the same utterances (+ truth.json).
--   OUT/slides/*.mp4        40 s, 640x360, 10 fps: the same rendered slide deck (seven slides,
--                           the second shown again later) recorded four ways: deck.mp4 (full
--                           screen), pip.mp4 (a picture-in-picture of real footage in a corner),
--                           camera.mp4 (a camera shot: the deck smaller inside real footage,
--                           a strip of footage moving in front of it like a presenter, sensor
--                           noise) and noslide.mp4 (the real footage alone); LibriVox speech
--                           as audio. OUT/slides/truth.json: every slide change (t, slide).
--   OUT/filter/*.mp4        clips of the shared footage for the video filter: person_a (0-20 s)
--                           and person_b (6-30 s) overlap by 14 s of the same scene (a person
--                           walks in at about 8 s), bottle (0-10 s).
-- Idempotent: a part is skipped when its outputs are newer than this script.
local sl = require "sluice"
local cjson = require "cjson"
local text = require "sluice.blocks.text"

local args = { ... }
local out, force, only = "build/sample", false, nil
do
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--force" then force = true
    elseif a == "--only" then i = i + 1; only = args[i]
    elseif a:sub(1, 1) == "-" then error("make_sample: unknown option " .. a, 0)
    else out = a end
    i = i + 1
  end
end

local DATA = os.getenv("SLUICE_SPEECH_DIR") or "/usr/share/pocketsphinx/test/data/librivox"
local FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
local FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
local SCRIPT = (arg and arg[0]) or "scripts/make_sample.lua"
-- The real footage: $SLUICE_SHARED_MEDIA, else ../shared/media beside the repository.
local function shared_media()
  local env = os.getenv("SLUICE_SHARED_MEDIA")
  if env then return env end
  local repo = SCRIPT:match("^(.*)/scripts/[^/]*$") or "."
  for _, d in ipairs { repo .. "/../shared/media", "/work/shared/media" } do
    local f = io.open(d .. "/person.mp4", "rb")
    if f then
      f:close()
      return d
    end
  end
  return repo .. "/../shared/media"
end
local SHARED_MEDIA = shared_media()

local function sh(cmd)
  local r, err = sl.exec({ "/bin/sh", "-c", cmd })
  if not r then error("make_sample: " .. err, 0) end
  return r
end

local function run(argv, what)
  local r, err = sl.exec(argv)
  if not r then error("make_sample: " .. what .. ": " .. err, 0) end
  if r.status ~= 0 then
    local last = r.stderr:gsub("%s+$", ""):match("([^\n]*)$")
    error(string.format("make_sample: %s: %s exited with %d: %s", what, argv[1], r.status, last), 0)
  end
  return r
end

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- True when every path exists and is newer than this script.
local function up_to_date(paths)
  if force then return false end
  local parts = {}
  for _, p in ipairs(paths) do parts[#parts + 1] = "[ " .. quote(p) .. " -nt " .. quote(SCRIPT) .. " ]" end
  return sh(table.concat(parts, " && ")).status == 0
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function duration(path)
  local r = run({ "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
    "default=nw=1:nk=1", path }, "probe " .. path)
  return tonumber(r.stdout:match("[%d%.]+"))
end

-- The utterances with their reference transcripts, in reading order.
local function utterances()
  local f, err = io.open(DATA .. "/transcription")
  if not f then error("make_sample: speech data missing (install pocketsphinx-testdata): " .. err, 0) end
  local list = {}
  for line in f:lines() do
    local words, id = line:match("^<s>%s*(.-)%s*</s>%s*%((.-)%)")
    if words then
      local wav = DATA .. "/" .. id .. ".wav"
      list[#list + 1] = { id = id, wav = wav, text = words, duration = duration(wav) }
    end
  end
  f:close()
  if #list == 0 then error("make_sample: no utterances in " .. DATA .. "/transcription", 0) end
  return list
end

-- Slide text from an utterance: a title from its first key word and up to three lines of its
-- key words (stop words dropped), three words a line.
local used_titles = {}
local function slide_for(k, u)
  local kws = {}
  for _, w in ipairs(text.norm_words(u.text)) do
    if not text.stopwords[w] and #w >= 3 then kws[#kws + 1] = w end
  end
  local seen, uniq = {}, {}
  for _, w in ipairs(kws) do
    if not seen[w] then seen[w] = true; uniq[#uniq + 1] = w end
  end
  local lines = {}
  for i = 1, math.min(#uniq, 9), 3 do
    lines[#lines + 1] = table.concat({ table.unpack(uniq, i, math.min(i + 2, #uniq)) }, " ")
  end
  -- The title: the longest key word not already a title (ties: the earlier one).
  local best
  for _, w in ipairs(uniq) do
    if not used_titles[w] and (not best or #w > #best) then best = w end
  end
  if best then used_titles[best] = true end
  local title = string.format("Part %d: %s", k, (best or "notes"):gsub("^%l", string.upper))
  return title, lines
end

local LEAD, GAP, TAIL = 1.5, 3.0, 3.0

local function make_lecture()
  local mp4, truth_path = out .. "/lecture.mp4", out .. "/lecture.truth.json"
  if up_to_date { mp4, truth_path } then
    print("sample: " .. mp4 .. " is up to date")
    return
  end
  local utts = utterances()
  used_titles = {}
  local tmp = out .. "/.lecture.tmp"
  sh("rm -rf " .. quote(tmp) .. " && mkdir -p " .. quote(tmp))
  -- Timeline: lead-in, utterances separated by pauses, a closing slide.
  local t = LEAD
  local truth = { utterances = {}, slides = {} }
  for k, u in ipairs(utts) do
    u.start = t
    u["end"] = t + u.duration
    truth.utterances[k] = { id = u.id, start = u.start, ["end"] = u["end"], text = u.text }
    t = u["end"] + GAP
  end
  local total = utts[#utts]["end"] + TAIL
  truth.duration = total
  -- Slide k is shown from the middle of the pause before utterance k (0 for the first).
  local slides = {}
  for k, u in ipairs(utts) do
    local title, lines = slide_for(k, u)
    slides[k] = { t = k == 1 and 0 or u.start - GAP / 2, title = title, lines = lines }
  end
  slides[#slides + 1] = { t = utts[#utts]["end"] + 1.0, title = "Questions?",
    lines = { "thank you for listening" } }
  for k, s in ipairs(slides) do
    s.t1 = slides[k + 1] and slides[k + 1].t or total
    s.text = s.title .. "\n" .. table.concat(s.lines, "\n")
    truth.slides[k] = { t = s.t, t1 = s.t1, title = s.title, lines = s.lines, text = s.text,
      utterance = utts[k] and utts[k].id or nil }
  end
  -- Video: one colour source per slide with the title and lines drawn on it, concatenated.
  local fc, inputs = {}, {}
  for k, s in ipairs(slides) do
    write(string.format("%s/title%d.txt", tmp, k), s.title)
    write(string.format("%s/body%d.txt", tmp, k), table.concat(s.lines, "\n"))
    fc[#fc + 1] = string.format(
      "color=c=0xF5F2E8:s=1280x720:r=10:d=%.3f," ..
      "drawtext=fontfile=%s:textfile=%s/title%d.txt:fontcolor=0x1B1B2F:fontsize=68:x=90:y=110," ..
      "drawtext=fontfile=%s:textfile=%s/body%d.txt:fontcolor=0x222222:fontsize=56:line_spacing=34:x=110:y=280," ..
      "drawtext=fontfile=%s:text='%d / %d':fontcolor=0x666666:fontsize=28:x=1140:y=660[s%d]",
      s.t1 - s.t, FONT_BOLD, tmp, k, FONT, tmp, k, FONT, k, #slides, k)
    inputs[#inputs + 1] = string.format("[s%d]", k)
  end
  fc[#fc + 1] = table.concat(inputs) .. string.format("concat=n=%d:v=1:a=0[v]", #slides)
  -- Audio: silence, utterance, silence, ... resampled to 44.1 kHz mono.
  local argv = { "ffmpeg", "-v", "error", "-y" }
  local ain = {}
  local idx = 0
  local function silence(seconds)
    argv[#argv + 1] = "-f"; argv[#argv + 1] = "lavfi"
    argv[#argv + 1] = "-t"; argv[#argv + 1] = string.format("%.3f", seconds)
    argv[#argv + 1] = "-i"; argv[#argv + 1] = "anullsrc=r=16000:cl=mono"
    ain[#ain + 1] = string.format("[%d:a]", idx)
    idx = idx + 1
  end
  silence(LEAD)
  for k, u in ipairs(utts) do
    argv[#argv + 1] = "-i"; argv[#argv + 1] = u.wav
    ain[#ain + 1] = string.format("[%d:a]", idx)
    idx = idx + 1
    silence(k < #utts and GAP or TAIL)
  end
  fc[#fc + 1] = table.concat(ain) .. string.format("concat=n=%d:v=0:a=1,aresample=44100[a]", #ain)
  write(tmp .. "/graph.txt", table.concat(fc, ";\n"))
  for _, a in ipairs { "-filter_complex_script", tmp .. "/graph.txt", "-map", "[v]", "-map", "[a]",
    "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-g", "50",
    "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-t", string.format("%.3f", total),
    tmp .. "/lecture.mp4" } do
    argv[#argv + 1] = a
  end
  run(argv, "render the lecture")
  write(tmp .. "/truth.json", cjson.encode(truth))
  sh(string.format("mv %s %s && mv %s %s && rm -rf %s", quote(tmp .. "/lecture.mp4"), quote(mp4),
    quote(tmp .. "/truth.json"), quote(truth_path), quote(tmp)))
  print(string.format("sample: %s (%.1f s, %d slides, %d utterances)", mp4, total, #slides, #utts))
end

-- Podcast: three episodes from the utterances (1-2, 3-4, 5 + 1), each with short pauses, and
-- an RSS feed with relative enclosure URLs.
local function make_podcast()
  local dir = out .. "/podcast"
  local feed = dir .. "/feed.xml"
  if up_to_date { feed, dir .. "/truth.json" } then
    print("sample: " .. feed .. " is up to date")
    return
  end
  sh("mkdir -p " .. quote(dir))
  local utts = utterances()
  used_titles = {}
  local plan = { { 1, 2, 3 }, { 4, 5 }, { 2, 5, 1 } }
  local truth = { episodes = {} }
  local items = {}
  for e, list in ipairs(plan) do
    local argv = { "ffmpeg", "-v", "error", "-y" }
    local ain, idx = {}, 0
    local t, spoken = 0.5, {}
    local function silence(seconds)
      for _, a in ipairs { "-f", "lavfi", "-t", string.format("%.3f", seconds), "-i", "anullsrc=r=16000:cl=mono" } do
        argv[#argv + 1] = a
      end
      ain[#ain + 1] = string.format("[%d:a]", idx)
      idx = idx + 1
    end
    silence(0.5)
    for i, k in ipairs(list) do
      local u = utts[k]
      argv[#argv + 1] = "-i"; argv[#argv + 1] = u.wav
      ain[#ain + 1] = string.format("[%d:a]", idx)
      idx = idx + 1
      spoken[#spoken + 1] = { id = u.id, start = t, ["end"] = t + u.duration, text = u.text }
      t = t + u.duration + 1.0
      silence(i < #list and 1.0 or 0.5)
    end
    local name = string.format("episode%d.m4a", e)
    for _, a in ipairs { "-filter_complex", table.concat(ain) .. string.format("concat=n=%d:v=0:a=1", #ain),
      "-c:a", "aac", "-b:a", "64k", "-metadata", "title=Episode " .. e, dir .. "/.partial-" .. name } do
      argv[#argv + 1] = a
    end
    run(argv, "render podcast episode " .. e)
    -- renamed only when whole: an interrupted run never leaves a file that looks finished
    assert(os.rename(dir .. "/.partial-" .. name, dir .. "/" .. name))
    local f = io.open(dir .. "/" .. name, "rb")
    local size = f:seek("end")
    f:close()
    local dur = duration(dir .. "/" .. name)
    local words = {}
    for _, s in ipairs(spoken) do words[#words + 1] = s.text end
    truth.episodes[e] = { file = name, duration = dur, utterances = spoken, text = table.concat(words, " ") }
    items[#items + 1] = string.format([==[
    <item>
      <title>Episode %d: %s</title>
      <guid isPermaLink="false">sample-episode-%d</guid>
      <pubDate>%s</pubDate>
      <description><![CDATA[Readings from <i>Sense and Sensibility</i>, part %d.]]></description>
      <enclosure url="%s" length="%d" type="audio/mp4"/>
      <itunes:duration>%d</itunes:duration>
    </item>
]==], e, slide_for(e, utts[list[1]]):gsub("^Part %d+: ", ""), e,
      os.date("!%a, %d %b %Y %H:%M:%S +0000", 1709640000 + e * 86400), e, name, size,
      math.floor(dur + 0.5))
  end
  write(dir .. "/truth.json", cjson.encode(truth))
  write(feed, [[<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">
  <channel>
    <title>Sluice Sample Readings</title>
    <link>https://example.invalid/sample</link>
    <description>LibriVox readings (public domain) from Debian's pocketsphinx-testdata.</description>
]] .. table.concat(items) .. "  </channel>\n</rss>\n")
  print(string.format("sample: %s (%d episodes)", feed, #plan))
end

local function make_filter()
  local dir = out .. "/filter"
  local clips = {
    { "person_a.mp4", "person.mp4", 0, 20 },
    { "person_b.mp4", "person.mp4", 6, 24 },
    { "bottle.mp4", "bottle.mp4", 0, 10 },
  }
  local paths = {}
  for i, c in ipairs(clips) do paths[i] = dir .. "/" .. c[1] end
  if up_to_date(paths) then
    print("sample: " .. dir .. " is up to date")
    return
  end
  for _, c in ipairs(clips) do
    local f = io.open(SHARED_MEDIA .. "/" .. c[2], "rb")
    if not f then
      io.stderr:write(string.format("sample: skipping the filter clips: %s/%s not found (set SLUICE_SHARED_MEDIA)\n",
        SHARED_MEDIA, c[2]))
      return
    end
    f:close()
  end
  sh("mkdir -p " .. quote(dir))
  for _, c in ipairs(clips) do
    run({ "ffmpeg", "-v", "error", "-y", "-ss", tostring(c[3]), "-i", SHARED_MEDIA .. "/" .. c[2],
      "-t", tostring(c[4]), "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26",
      "-pix_fmt", "yuv420p", dir .. "/.partial-" .. c[1] }, "cut " .. c[1])
    assert(os.rename(dir .. "/.partial-" .. c[1], dir .. "/" .. c[1])) -- only when whole
  end
  print("sample: " .. dir .. " (person_a, person_b, bottle)")
end

-- Slides recorded four ways (see the top). Slide changes land on whole frames (10 fps).
local SLIDE_DECK = {
  { title = "Sorting in linear time", lines = { "counting sort", "radix sort by digits", "bucket sort" } },
  { title = "Counting sort", lines = { "count each key", "prefix sums give positions", "stable: keeps order" } },
  { title = "Radix sort", lines = { "sort by the last digit first", "each pass stable", "d passes of n + k" } },
  { title = "Bucket sort", lines = { "uniform keys in [0, 1)", "n buckets, insertion sort", "expected O(n)" } },
  { title = "Lower bounds", lines = { "comparison sorts need", "n log n comparisons", "decision trees" } },
  { title = "Questions?", lines = { "office hours on Friday", "problem set 3 due Monday" } },
}
-- (slide index, start time): slide 2 is shown again at 21 s
local SLIDE_PLAN = { { 1, 0 }, { 2, 5 }, { 3, 10 }, { 4, 15.5 }, { 2, 21 }, { 5, 26 }, { 6, 31.5 } }
local SLIDE_SECONDS = 40

local function make_slides()
  local dir = out .. "/slides"
  local names = { "deck", "pip", "camera", "noslide" }
  local paths = { dir .. "/truth.json" }
  for _, n in ipairs(names) do paths[#paths + 1] = dir .. "/" .. n .. ".mp4" end
  if up_to_date(paths) then
    print("sample: " .. dir .. " is up to date")
    return
  end
  local person = SHARED_MEDIA .. "/person.mp4"
  local f = io.open(person, "rb")
  if not f then
    io.stderr:write("sample: skipping the slide videos: " .. person .. " not found (set SLUICE_SHARED_MEDIA)\n")
    return
  end
  f:close()
  local tmp = dir .. "/.tmp"
  sh("rm -rf " .. quote(tmp) .. " && mkdir -p " .. quote(tmp))
  -- the slide pictures
  for k, sd in ipairs(SLIDE_DECK) do
    write(string.format("%s/title%d.txt", tmp, k), sd.title)
    write(string.format("%s/body%d.txt", tmp, k), table.concat(sd.lines, "\n"))
    run({ "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=0xF5F2E8:s=1280x720", "-vf",
      string.format("drawtext=fontfile=%s:textfile=%s/title%d.txt:fontcolor=0x1B1B2F:fontsize=64:x=90:y=100," ..
        "drawtext=fontfile=%s:textfile=%s/body%d.txt:fontcolor=0x222222:fontsize=50:line_spacing=30:x=110:y=270," ..
        "drawtext=fontfile=%s:text='%d':fontcolor=0x666666:fontsize=28:x=1180:y=660",
        FONT_BOLD, tmp, k, FONT, tmp, k, FONT, k),
      "-frames:v", "1", string.format("%s/slide%d.png", tmp, k) }, "render slide " .. k)
  end
  -- the deck as a 10 fps stream, one picture per plan entry
  local lines = {}
  for i, p in ipairs(SLIDE_PLAN) do
    local t1 = SLIDE_PLAN[i + 1] and SLIDE_PLAN[i + 1][2] or SLIDE_SECONDS
    lines[#lines + 1] = string.format("file 'slide%d.png'\nduration %.3f", p[1], t1 - p[2])
  end
  lines[#lines + 1] = string.format("file 'slide%d.png'", SLIDE_PLAN[#SLIDE_PLAN][1])
  write(tmp .. "/deck.txt", table.concat(lines, "\n") .. "\n")
  local speech = {}
  for _, u in ipairs(utterances()) do speech[#speech + 1] = "file '" .. u.wav .. "'" end
  write(tmp .. "/speech.txt", table.concat(speech, "\n") .. "\n")
  -- inputs: 0 the deck, 1 the footage, 2 the footage again (the presenter), 3 the speech
  local inputs = { "-f", "concat", "-safe", "0", "-i", tmp .. "/deck.txt",
    "-ss", "20", "-i", person, "-ss", "60", "-i", person,
    "-f", "concat", "-safe", "0", "-i", tmp .. "/speech.txt" }
  local deck = "[0:v]fps=10,scale=640:360:flags=area,format=yuv420p"
  local graphs = {
    deck = deck .. "[v]",
    pip = deck .. "[d];[1:v]fps=10,scale=160:90[p];[d][p]overlay=x=470:y=260:shortest=1[v]",
    camera = "[0:v]fps=10,scale=420:236:flags=area,eq=contrast=0.85:brightness=-0.03[d];" ..
      "[1:v]fps=10,scale=640:360,eq=brightness=-0.08[bg];" ..
      "[2:v]fps=10,crop=120:300:330:100,scale=70:220[p];" ..
      "[bg][d]overlay=x=150:y=30:shortest=1[s];" ..
      "[s][p]overlay=x='160+170*(1+sin(2*PI*t/13))':y=140:shortest=1,noise=alls=6:allf=t,format=yuv420p[v]",
    noslide = "[1:v]fps=10,scale=640:360,format=yuv420p[v]",
  }
  for _, n in ipairs(names) do
    local argv = { "ffmpeg", "-v", "error", "-y" }
    for _, a in ipairs(inputs) do argv[#argv + 1] = a end
    for _, a in ipairs { "-filter_complex", graphs[n], "-map", "[v]", "-map", "3:a", "-t", tostring(SLIDE_SECONDS),
      "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-g", "50", "-pix_fmt", "yuv420p",
      "-c:a", "aac", "-b:a", "48k", "-ar", "16000", "-ac", "1", tmp .. "/" .. n .. ".mp4" } do
      argv[#argv + 1] = a
    end
    run(argv, "render slides/" .. n .. ".mp4")
  end
  local truth = { duration = SLIDE_SECONDS, deck = {}, changes = {} }
  for k, sd in ipairs(SLIDE_DECK) do truth.deck[k] = { title = sd.title, lines = sd.lines } end
  for i, p in ipairs(SLIDE_PLAN) do truth.changes[i] = { t = p[2], slide = p[1] } end
  truth.videos = { deck = "slides", pip = "slides", camera = "slides", noslide = "none" }
  write(tmp .. "/truth.json", cjson.encode(truth))
  for _, n in ipairs(names) do
    sh(string.format("mv %s %s", quote(tmp .. "/" .. n .. ".mp4"), quote(dir .. "/" .. n .. ".mp4")))
  end
  sh(string.format("mv %s %s && rm -rf %s", quote(tmp .. "/truth.json"), quote(dir .. "/truth.json"), quote(tmp)))
  print("sample: " .. dir .. " (deck, pip, camera, noslide)")
end

sh("mkdir -p " .. quote(out))
-- Long lectures (bench/lecture_long.sh only; never part of the default build): the sample
-- lecture looped (its parts are real: LibriVox speech over rendered slides) to `minutes`,
-- stream-copied, so it takes seconds. OUT/long/lecture_<minutes>m.mp4 and its truth: the slide
-- and utterance times of every loop.
local function make_long(minutes)
  make_lecture()
  local dir = out .. "/long"
  local mp4 = string.format("%s/lecture_%dm.mp4", dir, minutes)
  local truth_path = string.format("%s/lecture_%dm.truth.json", dir, minutes)
  if up_to_date { mp4, truth_path } then
    print("sample: " .. mp4 .. " is up to date")
    return
  end
  sh("mkdir -p " .. quote(dir))
  local base = cjson.decode(io.open(out .. "/lecture.truth.json"):read("a"))
  local seconds = minutes * 60
  local loops = math.ceil(seconds / base.duration)
  run({ "ffmpeg", "-v", "error", "-y", "-stream_loop", tostring(loops - 1), "-i", out .. "/lecture.mp4",
    "-t", string.format("%.3f", seconds), "-c", "copy", "-movflags", "+faststart", mp4 .. ".part.mp4" },
    "loop the lecture")
  local truth = { duration = seconds, loops = loops, loop = base.duration, slides = {}, utterances = {} }
  for k = 0, loops - 1 do
    local off = k * base.duration
    for _, sl_ in ipairs(base.slides) do
      if sl_.t + off < seconds then truth.slides[#truth.slides + 1] = { t = sl_.t + off, title = sl_.title } end
    end
    for _, u in ipairs(base.utterances) do
      if u["end"] + off <= seconds then
        truth.utterances[#truth.utterances + 1] = { start = u.start + off, ["end"] = u["end"] + off, text = u.text }
      end
    end
  end
  write(truth_path, cjson.encode(truth))
  assert(os.rename(mp4 .. ".part.mp4", mp4)) -- only when whole
  print(string.format("sample: %s (%d min, %d loops of %.1f s)", mp4, minutes, loops, base.duration))
end

if only and only:match("^long%d+$") then make_long(tonumber(only:match("%d+"))) end
if not only or only == "lecture" then make_lecture() end
if not only or only == "podcast" then make_podcast() end
if not only or only == "filter" then make_filter() end
if not only or only == "slides" then make_slides() end
