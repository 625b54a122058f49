-- sluice.blocks.text: small text helpers the pipelines share: word tokens for alignment, word error
-- rate, sentence splitting and keyword scoring (for the extractive summarizer and the judge).
-- Pure Lua, byte-oriented: letters outside ASCII (UTF-8 sequences) count as word characters.
local suggest = require "sluice.runtime.suggest"

local M = {}

-- Words that carry no topic; used by keywords() and by the extractive summary.
local STOP = {}
for w in ([[a an and are as at be been being but by can could did do does for from had has
  have he her him his how i if in into is it its just may me might more most much my no not of
  on once one only or other our out over own said she should so some such than that the their
  them then there these they this those through to too under until up upon very was we were
  what when where which while who whom why will with would you your also about after again all
  any because before between both each few here itself himself herself nor same shall us yet
  let mr mrs mister miss]]):gmatch("%a+") do
  STOP[w] = true
end
M.stopwords = STOP

-- normalize(word) -> the word lower-cased with surrounding punctuation removed ("" when
-- nothing is left). Apostrophes inside a word stay ("don't").
function M.normalize(word)
  local w = word:lower():gsub("^[^%w\128-\255]+", ""):gsub("[^%w\128-\255]+$", "")
  return w
end

-- words(text) -> list of tokens as written (split on white space), skipping tokens that are
-- only punctuation.
function M.words(text)
  local out = {}
  for tok in tostring(text or ""):gmatch("%S+") do
    if M.normalize(tok) ~= "" then out[#out + 1] = tok end
  end
  return out
end

-- norm_words(text) -> list of normalized words.
function M.norm_words(text)
  local out = {}
  for tok in tostring(text or ""):gmatch("%S+") do
    local w = M.normalize(tok)
    if w ~= "" then out[#out + 1] = w end
  end
  return out
end

-- edit_distance(a, b) -> Levenshtein distance between two lists (compared with ==).
M.edit_distance = function(a, b) return suggest.distance(a, b) end

-- wer(reference, hypothesis) -> word error rate (edits / reference words), edits, ref words.
-- Both are strings or lists of words; strings are normalized first.
function M.wer(ref, hyp)
  if type(ref) == "string" then ref = M.norm_words(ref) end
  if type(hyp) == "string" then hyp = M.norm_words(hyp) end
  local d = M.edit_distance(ref, hyp)
  if #ref == 0 then return (#hyp == 0) and 0 or 1, d, 0 end
  return d / #ref, d, #ref
end

-- sentences(text) -> list of sentences: splits after . ! ? (and their closing quotes) followed
-- by white space, and at blank lines. Common abbreviations (Mr., Dr., e.g.) do not end one.
local ABBREV = { mr = true, mrs = true, ms = true, dr = true, prof = true, st = true, vs = true,
  etc = true, ["e.g"] = true, ["i.e"] = true, jr = true, sr = true, no = true, fig = true }
function M.sentences(text)
  local out = {}
  text = tostring(text or ""):gsub("\r\n?", "\n")
  for para in (text .. "\n\n"):gmatch("(.-)\n%s*\n") do
    para = para:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    local start = 1
    local pos = 1
    while true do
      local s, e = para:find("[%.!?]+[\"')%]]*%s", pos)
      if not s then break end
      local before = para:sub(start, s - 1):match("([%w%.]+)$")
      if before and ABBREV[before:lower()] and para:sub(s, s) == "." then
        pos = e + 1
      else
        local sent = para:sub(start, e - 1)
        if sent:find("%S") then out[#out + 1] = sent end
        start, pos = e + 1, e + 1
      end
    end
    local rest = para:sub(start)
    if rest:find("%S") then out[#out + 1] = rest end
  end
  return out
end

-- keywords(text, n) -> up to n {word=, count=} sorted by count then first appearance,
-- skipping stop words and words shorter than 3 letters.
function M.keywords(text, n)
  local count, first, order = {}, {}, 0
  for _, w in ipairs(M.norm_words(text)) do
    if #w >= 3 and not STOP[w] and not w:match("^%d+$") then
      if not count[w] then
        order = order + 1
        first[w] = order
      end
      count[w] = (count[w] or 0) + 1
    end
  end
  local list = {}
  for w, c in pairs(count) do list[#list + 1] = { word = w, count = c } end
  table.sort(list, function(a, b)
    if a.count ~= b.count then return a.count > b.count end
    return first[a.word] < first[b.word]
  end)
  local out = {}
  for i = 1, math.min(n or #list, #list) do out[i] = list[i] end
  return out
end

-- summarize(text, n) -> the n highest-scoring sentences in their original order (extractive:
-- a sentence scores the mean frequency of its content words across the text).
function M.summarize(text, n)
  local sents = M.sentences(text)
  if #sents <= (n or 3) then return sents end
  local freq = {}
  for _, w in ipairs(M.norm_words(text)) do
    if not STOP[w] then freq[w] = (freq[w] or 0) + 1 end
  end
  local scored = {}
  for i, s in ipairs(sents) do
    local total, k = 0, 0
    for _, w in ipairs(M.norm_words(s)) do
      if not STOP[w] then total, k = total + freq[w], k + 1 end
    end
    scored[#scored + 1] = { i = i, score = k > 0 and total / k or 0 }
  end
  table.sort(scored, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.i < b.i
  end)
  local pick = {}
  for i = 1, n or 3 do pick[#pick + 1] = scored[i].i end
  table.sort(pick)
  local out = {}
  for _, i in ipairs(pick) do out[#out + 1] = sents[i] end
  return out
end

return M
