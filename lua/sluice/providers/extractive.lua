-- sluice.providers.extractive: an offline stand-in for the LLM role. It writes nothing new:
-- summaries are the transcript's most central sentences, keywords and chapter titles are
-- the words that characterise the text or a stretch of it, and the judge measures how many
-- of the sources' keywords a summary covers. Every result is labelled
-- provider = "extractive (local fallback)" so reports show that no model wrote it.
--
--   local llm = require("sluice.providers.extractive").new{}
--   local summary = llm:summarize(transcript_text, { sentences = 5 })
--   local kws = llm:keywords(text, 10)              -- {{word=, score=, count=}...}
--   local chapters = llm:chapters(segments)         -- {{start=, ["end"]=, title=, keywords=}...}
--   local verdict = llm:judge(summary, { slides_text, transcript_text })
--
-- Sentence ranking is TF-IDF centrality: each sentence is a vector of TF-IDF weights of its
-- content words (stop words removed, light suffix stemming), and scores the cosine with the
-- centroid of all sentences; the best ones are kept in their original order, skipping
-- near-duplicates. Transcripts without punctuation (PocketSphinx output) are cut into
-- pseudo-sentences of about 20 words, or taken segment by segment. Long inputs yield to
-- other tasks every few hundred sentences, so the loop stays responsive.
local text = require "sluice.blocks.text"
local sched = require "sluice.runtime.sched"

local M = { roles = { llm = true }, name = "extractive" }
local LABEL = "extractive (local fallback)"
M.label = LABEL

local STOP = text.stopwords
local EXTRA_STOP = {}
for w in ([[um uh yeah okay ok like know think going get got really right well actually
  basically thing things lot kind sort way say says see now today also just let us we'll
  it's that's there's don't can't i'm you're they're we're used use using make makes made
  first second new many much good great one two three another every would could should]]):gmatch("%S+") do
  EXTRA_STOP[w] = true
end

local function is_content(w)
  return #w >= 3 and not STOP[w] and not EXTRA_STOP[w] and not w:match("^%d+$")
    and not w:find("'", 1, true)
end

-- A light English stemmer: enough to match "filters" with "filter" and "sampling" with
-- "sample" when comparing keywords; the surface form shown is the most frequent one.
local function stem(w)
  if #w > 5 and w:sub(-3) == "ing" then w = w:sub(1, -4)
  elseif #w > 4 and w:sub(-2) == "ed" then w = w:sub(1, -3)
  elseif #w > 4 and w:sub(-3) == "ies" then w = w:sub(1, -4) .. "y"
  elseif #w > 3 and w:sub(-1) == "s" and w:sub(-2) ~= "ss" and w:sub(-2) ~= "us" and w:sub(-2) ~= "is" then
    w = w:sub(1, -2)
  end
  if #w > 4 and w:sub(-1) == "e" then w = w:sub(1, -2) end
  return w
end
M.stem = stem

local function maybe_yield(i)
  if i % 200 == 0 and sched.current() then sched.yield() end
end

-- Units of text to rank: sentences, or pseudo-sentences when there is no punctuation.
local function units_of(input)
  if type(input) == "table" then
    local out = {}
    for _, seg in ipairs(input) do
      local s = type(seg) == "table" and seg.text or seg
      if type(s) == "string" and s:find("%S") then out[#out + 1] = s:gsub("^%s+", ""):gsub("%s+$", "") end
    end
    return out
  end
  local sents = text.sentences(input)
  local out = {}
  for _, s in ipairs(sents) do
    local words = text.words(s)
    if #words <= 40 then
      out[#out + 1] = s
    else
      for i = 1, #words, 20 do
        out[#out + 1] = table.concat(words, " ", i, math.min(i + 19, #words))
      end
    end
  end
  return out
end

-- Term counts of one unit: stem -> count; surface forms are tallied in `forms`.
local function terms(s, forms)
  local tf = {}
  for _, w in ipairs(text.norm_words(s)) do
    if is_content(w) then
      local st = stem(w)
      tf[st] = (tf[st] or 0) + 1
      if forms then
        local f = forms[st] or {}
        f[w] = (f[w] or 0) + 1
        forms[st] = f
      end
    end
  end
  return tf
end

local function best_form(forms, st)
  local best, n = st, -1
  for w, c in pairs(forms[st] or {}) do
    if c > n or (c == n and #w < #best) then best, n = w, c end
  end
  return best
end

local function normalize(v)
  local norm = 0
  for _, x in pairs(v) do norm = norm + x * x end
  norm = math.sqrt(norm)
  local out = {}
  if norm > 0 then for t, x in pairs(v) do out[t] = x / norm end end
  return out
end

-- TF-IDF vectors for a list of units; returns vectors, idf, forms.
local function vectors(units)
  local forms, tfs, df = {}, {}, {}
  for i, u in ipairs(units) do
    local tf = terms(u, forms)
    tfs[i] = tf
    for t in pairs(tf) do df[t] = (df[t] or 0) + 1 end
    maybe_yield(i)
  end
  local n = #units
  local idf = {}
  for t, d in pairs(df) do idf[t] = math.log((n + 1) / (d + 0.5)) end
  local vecs, raws = {}, {}
  for i, tf in ipairs(tfs) do
    local raw = {}
    for t, c in pairs(tf) do raw[t] = (1 + math.log(c)) * idf[t] end
    raws[i] = raw
    vecs[i] = normalize(raw)
  end
  return vecs, idf, forms, raws
end

local function dot(a, b)
  local s = 0
  if next(a) == nil or next(b) == nil then return 0 end
  for t, x in pairs(a) do
    local y = b[t]
    if y then s = s + x * y end
  end
  return s
end

local E = {}
E.__index = E

function M.new(cfg)
  return setmetatable({ cfg = cfg or {}, provider = LABEL }, E)
end

-- rank(input) -> list of {i=, text=, score=} for every unit, in original order.
function E:rank(input)
  local units = units_of(input)
  local vecs, _, _, raws = vectors(units)
  -- The centroid sums the raw weights, so a unit of one repeated word does not count as
  -- much as a unit full of topic words.
  local centroid = {}
  for i, v in ipairs(raws) do
    for t, x in pairs(v) do centroid[t] = (centroid[t] or 0) + x end
    maybe_yield(i)
  end
  centroid = normalize(centroid)
  local out = {}
  for i, u in ipairs(units) do
    -- units with few content words ("Okay, so let us keep going.") carry little: damp them
    local ncontent = 0
    for _ in pairs(vecs[i]) do ncontent = ncontent + 1 end
    local factor = math.min(1, ncontent / 4)
    out[i] = { i = i, text = u, score = dot(vecs[i], centroid) * factor, vec = vecs[i] }
    maybe_yield(i)
  end
  return out
end

-- summarize(text | segments, opts{sentences=, ratio=0.2}) -> summary text, {provider=, sentences=}
function E:summarize(input, opts)
  opts = opts or {}
  if type(input) ~= "string" and type(input) ~= "table" then
    error("bad argument #1 to 'summarize' (text or list of segments expected)", 2)
  end
  local ranked = self:rank(input)
  local n = #ranked
  local k = opts.sentences or math.max(3, math.min(12, math.ceil(n * (opts.ratio or 0.2))))
  if n <= k then
    local all = {}
    for i, r in ipairs(ranked) do all[i] = r.text end
    return table.concat(all, " "), { provider = LABEL, sentences = all }
  end
  local order = {}
  for i = 1, n do order[i] = ranked[i] end
  table.sort(order, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.i < b.i
  end)
  local picked = {}
  for _, cand in ipairs(order) do
    if #picked >= k then break end
    local dup = false
    for _, p in ipairs(picked) do
      if dot(cand.vec, p.vec) > 0.7 then dup = true break end
    end
    if not dup and cand.score > 0 then picked[#picked + 1] = cand end
  end
  table.sort(picked, function(a, b) return a.i < b.i end)
  local sents = {}
  for i, p in ipairs(picked) do
    local s = p.text
    if not s:find("[%.!?]$") then s = s .. "." end
    sents[i] = s
  end
  return table.concat(sents, " "), { provider = LABEL, sentences = sents }
end

-- complete(prompt | messages, opts) -> an extractive summary of the prompt's text, info.
-- There is no model to follow instructions: the text of the user messages is summarized.
function E:complete(prompt, opts)
  local body = prompt
  if type(prompt) == "table" then
    local parts = {}
    for _, m in ipairs(prompt) do
      if type(m) == "table" and m.role ~= "system" and type(m.content) == "string" then
        parts[#parts + 1] = m.content
      elseif type(m) == "string" then
        parts[#parts + 1] = m
      end
    end
    body = table.concat(parts, "\n\n")
  end
  local s, info = self:summarize(tostring(body or ""), opts)
  if opts and type(opts.stream) == "function" then opts.stream(s) end
  return s, info
end

-- keywords(text | segments, n) -> up to n {word=, score=, count=}, best first. A word scores
-- its frequency weighted by how concentrated it is (words spread evenly over every
-- sentence, like "the" that escaped the stop list, score low).
function E:keywords(input, n)
  n = n or 10
  local units = units_of(input)
  local forms, df, total = {}, {}, {}
  for i, u in ipairs(units) do
    local tf = terms(u, forms)
    for t, c in pairs(tf) do
      df[t] = (df[t] or 0) + 1
      total[t] = (total[t] or 0) + c
    end
    maybe_yield(i)
  end
  local nu = math.max(#units, 1)
  local list = {}
  for t, c in pairs(total) do
    local idf = math.log((nu + 1) / (df[t] + 0.5)) + 1
    list[#list + 1] = { stem = t, word = best_form(forms, t), count = c, score = c * idf }
  end
  table.sort(list, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.word < b.word
  end)
  local out = {}
  for i = 1, math.min(n, #list) do
    out[i] = { word = list[i].word, score = list[i].score, count = list[i].count, stem = list[i].stem }
  end
  return out
end

local function title_case(w) return (w:gsub("^%l", string.upper)) end

-- chapters(segments, opts{window=60, min_length=120, max=}) -> list of
-- {start=, ["end"]=, title=, keywords={...}, provider=}. Segments are transcript segments
-- {start=, ["end"]=, text=} in time order. Boundaries go where the vocabulary of the window
-- before and the window after overlap least (TextTiling's depth score); each chapter is
-- titled with the words that distinguish it from the rest of the transcript.
function E:chapters(segments, opts)
  opts = opts or {}
  if type(segments) ~= "table" then
    error("bad argument #1 to 'chapters' (list of {start=, end=, text=} expected)", 2)
  end
  if #segments == 0 then return {} end
  local t_start = segments[1].start or 0
  local t_end = segments[#segments]["end"] or segments[#segments].start or t_start
  local window = opts.window or 60
  local min_len = opts.min_length or 2 * window
  -- blocks of about `window` seconds
  local blocks = {}
  local cur
  for _, seg in ipairs(segments) do
    local s = seg.start or t_start
    if not cur or s - cur.start >= window then
      cur = { start = s, texts = {} }
      blocks[#blocks + 1] = cur
    end
    cur.texts[#cur.texts + 1] = seg.text or ""
    cur["end"] = seg["end"] or s
  end
  local btexts = {}
  for i, b in ipairs(blocks) do btexts[i] = table.concat(b.texts, " ") end
  local vecs = vectors(btexts)
  -- similarity across each gap, using two blocks on each side
  local gaps = {}
  for g = 1, #blocks - 1 do
    local left, right = {}, {}
    for i = math.max(1, g - 1), g do for t, x in pairs(vecs[i]) do left[t] = (left[t] or 0) + x end end
    for i = g + 1, math.min(#blocks, g + 2) do for t, x in pairs(vecs[i]) do right[t] = (right[t] or 0) + x end end
    gaps[g] = dot(normalize(left), normalize(right))
  end
  -- depth: how far the similarity dips below the peaks on either side
  local depth = {}
  for g = 1, #gaps do
    local lp, rp = gaps[g], gaps[g]
    for i = g - 1, 1, -1 do if gaps[i] >= lp then lp = gaps[i] else break end end
    for i = g + 1, #gaps do if gaps[i] >= rp then rp = gaps[i] else break end end
    depth[g] = (lp - gaps[g]) + (rp - gaps[g])
  end
  local mean, var = 0, 0
  for _, d in ipairs(depth) do mean = mean + d end
  mean = #depth > 0 and mean / #depth or 0
  for _, d in ipairs(depth) do var = var + (d - mean) ^ 2 end
  local sd = #depth > 0 and math.sqrt(var / #depth) or 0
  local cut = mean + 0.5 * sd
  local max_chapters = opts.max or math.max(1, math.floor((t_end - t_start) / min_len))
  local cands = {}
  for g, d in ipairs(depth) do
    if d > 0 and d >= cut then cands[#cands + 1] = { g = g, d = d } end
  end
  table.sort(cands, function(a, b) return a.d > b.d end)
  local cuts = {}
  for _, c in ipairs(cands) do
    if #cuts + 1 >= max_chapters then break end
    local t = blocks[c.g + 1].start
    local ok = t - t_start >= min_len and t_end - t >= min_len
    for _, other in ipairs(cuts) do
      if math.abs(blocks[other + 1].start - t) < min_len then ok = false end
    end
    if ok then cuts[#cuts + 1] = c.g end
  end
  table.sort(cuts)
  -- chapters and their titles
  local chapters = {}
  local first = 1
  for k = 1, #cuts + 1 do
    local last = cuts[k] or #blocks
    local parts = {}
    for i = first, last do parts[#parts + 1] = btexts[i] end
    chapters[#chapters + 1] = { first = first, last = last, text = table.concat(parts, " ") }
    first = last + 1
  end
  local ctexts = {}
  for i, c in ipairs(chapters) do ctexts[i] = c.text end
  local cvecs, _, forms = vectors(ctexts)
  local out = {}
  for i, c in ipairs(chapters) do
    local ranked = {}
    for t, x in pairs(cvecs[i]) do ranked[#ranked + 1] = { t = t, x = x } end
    table.sort(ranked, function(a, b)
      if a.x ~= b.x then return a.x > b.x end
      return a.t < b.t
    end)
    local kws, title = {}, {}
    for j = 1, math.min(5, #ranked) do kws[j] = best_form(forms, ranked[j].t) end
    for j = 1, math.min(3, #kws) do title[j] = title_case(kws[j]) end
    out[i] = {
      start = blocks[c.first].start,
      ["end"] = (i < #chapters) and blocks[chapters[i + 1].first].start or t_end,
      title = #title > 0 and table.concat(title, ", ") or ("Part " .. i),
      keywords = kws, provider = LABEL,
    }
  end
  return out
end

-- judge(summary, sources, opts{keywords=20}) -> {score=0..1, coverage=0..1, found={...},
-- missing={...}, reasons={...}, provider=}. sources is a string, a list of strings, or a
-- table {slides=, transcript=}. The score is the keyword weight the summary covers; the
-- coverage is the plain fraction of keywords it mentions.
function E:judge(summary, sources, opts)
  opts = opts or {}
  if type(summary) ~= "string" then error("bad argument #1 to 'judge' (summary text expected)", 2) end
  local parts = {}
  if type(sources) == "string" then
    parts[1] = sources
  elseif type(sources) == "table" then
    for _, v in ipairs(sources) do parts[#parts + 1] = tostring(v) end
    for _, key in ipairs { "slides", "transcript" } do
      local v = sources[key]
      if type(v) == "table" then v = table.concat(v, "\n") end
      if type(v) == "string" then parts[#parts + 1] = v end
    end
  else
    error("bad argument #2 to 'judge' (sources text or list expected)", 2)
  end
  -- keywords of each source separately, so slides weigh as much as a long transcript
  local n = opts.keywords or 20
  local per = math.max(1, math.ceil(n / math.max(#parts, 1)))
  local weights, words, surface = {}, {}, {}
  for _, p in ipairs(parts) do
    local kws = self:keywords(p, per)
    local top = kws[1] and kws[1].score or 1
    for _, k in ipairs(kws) do
      local w = k.score / top
      if not weights[k.stem] then words[#words + 1] = k.stem end
      weights[k.stem] = math.max(weights[k.stem] or 0, w)
      surface[k.stem] = k.word
    end
  end
  local have = terms(summary)
  local total, got, nfound = 0, 0, 0
  local found, missing = {}, {}
  for _, st in ipairs(words) do
    total = total + weights[st]
    if have[st] then
      got = got + weights[st]
      nfound = nfound + 1
      found[#found + 1] = surface[st]
    else
      missing[#missing + 1] = surface[st]
    end
  end
  local nk = #words
  local score = total > 0 and got / total or 0
  return {
    score = score, coverage = nk > 0 and nfound / nk or 0, found = found, missing = missing,
    reasons = {
      string.format("mentions %d of the sources' %d keywords", nfound, nk),
      #missing > 0 and ("missing: " .. table.concat(missing, ", ", 1, math.min(#missing, 10))) or "no keyword missing",
    },
    provider = LABEL,
  }
end

return M
