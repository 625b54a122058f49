-- bench/pipelines_wer.lua: the answer checks of bench/pipelines.
--   podcast EPS_DIR SLUICE_DIR SLUICE_ONE_DIR   WER of each side vs what was read
--   long WAV SLUICE_DIR                          the same for one long episode
--   filter MANIFEST BASELINE_JSONL               the person verdicts of both sides, frame by frame
local cjson = require "cjson"
local text = require "sluice.blocks.text"
local mode = arg[1]

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local function sluice_text(path)
  local s = assert(read(path), path)
  return cjson.decode(s).text
end

local sides = {}
local function add(name, truth, hyp)
  local s = sides[name] or { d = 0, n = 0 }
  sides[name] = s
  local _, d, n = text.wer(truth, hyp)
  s.d, s.n = s.d + d, s.n + n
end
local function wer_of(name) return sides[name].d / sides[name].n end

if mode == "podcast" or mode == "long" then
  local items = {}
  if mode == "podcast" then
    for k = 1, 3 do
      local wav = string.format("%s/episode%d.wav", arg[2], k)
      items[#items + 1] = { wav = wav, sl = string.format("%s/episode%d/transcript.json", arg[3], k),
        one = string.format("%s/episode%d/transcript.json", arg[4], k) }
    end
  else
    -- the pipeline writes DIR/<episode>/transcript.json, the episode named after its file
    local episode = arg[2]:match("([^/]+)$"):gsub("%.%w+$", "")
    items[1] = { wav = arg[2], sl = arg[3] .. "/" .. episode .. "/transcript.json" }
  end
  for _, it in ipairs(items) do
    local truth = read(it.wav .. ".txt")
    add("pocketsphinx_continuous", truth, read(it.wav .. ".ps.txt") or "")
    add("sluice", truth, sluice_text(it.sl))
    if it.one then add("sluice, 1 worker", truth, sluice_text(it.one)) end
  end
  for _, n in ipairs { "pocketsphinx_continuous", "sluice", "sluice, 1 worker" } do
    if sides[n] then print(string.format("  WER %-24s %.3f (%d words)", n, wer_of(n), sides[n].n)) end
  end
  local ref = sides["sluice, 1 worker"] and "sluice, 1 worker" or "pocketsphinx_continuous"
  local ok = math.abs(wer_of("sluice") - wer_of(ref)) <= 0.02
  print(string.format("  answers match (sluice's WER within 0.02 of %s's): %s", ref, ok and "yes" or "NO"))
elseif mode == "filter" then
  -- Frames are matched by their video's source path (sluice's frames/<video>/frames.json
  -- names it; two inputs may share a base name) and their time to the centisecond.
  local m = cjson.decode(assert(read(arg[2])))
  local out_dir = arg[2]:match("^(.*)/[^/]+$") or "."
  local source_of = {}
  local mine = {}
  for _, f in ipairs(m.frames) do
    local src = source_of[f.video]
    if not src then
      local fj = cjson.decode(assert(read(out_dir .. "/frames/" .. f.video .. "/frames.json")))
      src = fj.source
      source_of[f.video] = src
    end
    mine[string.format("%s@%.2f", src, f.t)] = (f.classes.person or 0) >= m.min_score
  end
  local same, differ, missing, n = 0, 0, 0, 0
  for line in io.lines(arg[3]) do
    local r = cjson.decode(line)
    n = n + 1
    local k = string.format("%s@%.2f", r.source, r.t)
    if mine[k] == nil then missing = missing + 1
    elseif mine[k] == (r.person >= m.min_score) then same = same + 1
    else
      differ = differ + 1
      print(string.format("  different verdict: %s (baseline person score %.3f)", k, r.person))
    end
  end
  print(string.format("  frames: sluice %d, baseline %d; same verdict %d, different %d, not matched by time %d",
    #m.frames, n, same, differ, missing))
  print(string.format("  answers match (the same frames kept): %s", (differ == 0 and missing == 0 and n == #m.frames)
    and "yes" or "NO"))
end
