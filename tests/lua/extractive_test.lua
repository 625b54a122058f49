-- The extractive text provider (offline LLM stand-in): summaries by TF-IDF centrality,
-- keywords, chapter boundaries and titles, and the keyword-coverage judge.
local T = require "sluice.app.test"
local extractive = require "sluice.providers.extractive"

-- A lecture in three parts; each part has its own vocabulary, plus filler shared by all.
local PARTS = {
  volcano = {
    "Today we start with volcanoes and how magma reaches the surface.",
    "Magma forms deep in the mantle where rock melts under heat and pressure.",
    "Because magma is lighter than the surrounding rock it rises through cracks in the crust.",
    "Okay, so let us keep going.",
    "When the pressure of dissolved gas in the magma is high the volcano erupts explosively.",
    "Basalt magma is runny, so shield volcanoes like those of Hawaii erupt gently.",
    "Sticky magma rich in silica traps gas and builds steep stratovolcanoes.",
    "Volcanic ash from an eruption can travel around the whole planet.",
    "Right, any questions so far?",
    "Geologists watch earthquakes and gas emissions to predict an eruption of a volcano.",
    "Lava flows cool into new rock and slowly build the volcano higher.",
    "That is the main idea about volcanoes and magma.",
  },
  photosynthesis = {
    "Now we turn to photosynthesis in green plants.",
    "Chlorophyll in the leaves absorbs sunlight, mostly red and blue light.",
    "Okay, so let us keep going.",
    "Plants use the energy of sunlight to split water and release oxygen.",
    "Carbon dioxide from the air enters the leaves through small pores called stomata.",
    "In the Calvin cycle the plant fixes carbon dioxide into sugar.",
    "The chloroplast is the organelle where photosynthesis happens.",
    "Right, any questions so far?",
    "Glucose made by photosynthesis feeds the plant and, through food chains, animals too.",
    "Without photosynthesis there would be no oxygen in the air for us to breathe.",
    "Leaves turn toward sunlight to capture more energy for photosynthesis.",
    "That is the main idea about photosynthesis in plants.",
  },
  markets = {
    "Finally we look at stock markets and how prices are set.",
    "A stock is a share of ownership in a company.",
    "Okay, so let us keep going.",
    "Investors buy shares when they expect the company to earn more profit.",
    "The price of a stock moves with supply and demand from buyers and sellers.",
    "Stock exchanges match the orders of buyers and sellers every second.",
    "Right, any questions so far?",
    "Dividends pay investors a part of the company profit.",
    "A market crash happens when many investors sell shares at once.",
    "Index funds spread an investor's money over many stocks to lower risk.",
    "Interest rates change how investors value future company profit.",
    "That is the main idea about stock markets and investors.",
  },
}
local ORDER = { "volcano", "photosynthesis", "markets" }

local function lecture_text()
  local paras = {}
  for _, k in ipairs(ORDER) do paras[#paras + 1] = table.concat(PARTS[k], " ") end
  return table.concat(paras, "\n\n")
end

-- segments of 15 s each: the parts change at 180 s and 360 s
local function lecture_segments()
  local segs, t = {}, 0
  for _, k in ipairs(ORDER) do
    for _, s in ipairs(PARTS[k]) do
      segs[#segs + 1] = { start = t, ["end"] = t + 14.5, text = s, part = k }
      t = t + 15
    end
  end
  return segs
end

local llm = extractive.new {}

local function part_of(sentence)
  for k, list in pairs(PARTS) do
    for _, s in ipairs(list) do
      if s:gsub("%.$", "") == sentence:gsub("%.$", "") then return k end
    end
  end
end

T.case("the summary keeps central sentences from every part and drops filler", function()
  local summary, info = llm:summarize(lecture_text(), { sentences = 6 })
  T.eq(info.provider, "extractive (local fallback)")
  T.eq(#info.sentences, 6)
  T.ok(#summary < #lecture_text() / 3)
  local parts = {}
  for _, s in ipairs(info.sentences) do
    local k = part_of(s)
    T.ok(k, "a summary sentence is a sentence of the text: " .. s)
    parts[k] = true
    T.ok(not s:find("keep going", 1, true) and not s:find("any questions", 1, true), "filler picked: " .. s)
  end
  for _, k in ipairs(ORDER) do T.ok(parts[k], "the summary covers " .. k) end
  -- sentences stay in their original order
  local pos = 0
  for _, s in ipairs(info.sentences) do
    local p = lecture_text():find(s:gsub("%.$", ""), 1, true)
    T.ok(p and p > pos, "original order")
    pos = p
  end
end)

T.case("an unpunctuated transcript (speech recognizer output) is summarized too", function()
  local words = {}
  for _, k in ipairs(ORDER) do
    for _, s in ipairs(PARTS[k]) do words[#words + 1] = s:lower():gsub("[%.,?']", "") end
  end
  local raw = table.concat(words, " ")
  local summary, info = llm:summarize(raw, { sentences = 4 })
  T.eq(#info.sentences, 4)
  T.ok(#summary > 50 and #summary < #raw / 2)
end)

T.case("keywords are the topic words", function()
  local kws = llm:keywords(lecture_text(), 8)
  T.eq(#kws, 8)
  local set = {}
  for _, k in ipairs(kws) do set[k.word] = true end
  T.ok(set.magma, "magma")
  T.ok(set.photosynthesis, "photosynthesis")
  T.ok(set.investors or set.company or set.stock, "a market word")
  for _, bad in ipairs { "okay", "right", "questions", "main", "idea" } do
    T.ok(not set[bad], "no filler keyword: " .. bad)
  end
end)

T.case("chapters start near the topic changes and are titled with their topic words", function()
  local segs = lecture_segments()
  local chapters = llm:chapters(segs, { window = 45, min_length = 90 })
  T.eq(#chapters, 3)
  T.eq(chapters[1].start, 0)
  T.near(chapters[2].start, 180, 45, "second chapter start")
  T.near(chapters[3].start, 360, 45, "third chapter start")
  T.eq(chapters[3]["end"], segs[#segs]["end"])
  local expect = { { "magma", "volcano", "volcanoes", "eruption" },
    { "photosynthesis", "sunlight", "leaves", "plants", "carbon" },
    { "investors", "stock", "company", "shares", "profit" } }
  for i, c in ipairs(chapters) do
    T.eq(c.provider, "extractive (local fallback)")
    local title = c.title:lower()
    local hit = false
    for _, w in ipairs(expect[i]) do if title:find(w, 1, true) then hit = true end end
    T.ok(hit, "chapter " .. i .. " title: " .. c.title)
  end
end)

T.case("the judge scores a covering summary above a partial and an off-topic one", function()
  local sources = { transcript = lecture_text(),
    slides = { "Volcanoes: magma, eruption, lava", "Photosynthesis: chlorophyll, sunlight, oxygen",
      "Stock markets: shares, investors, dividends" } }
  local good = llm:summarize(lecture_text(), { sentences = 6 })
  local partial = table.concat(PARTS.volcano, " ")
  local off = "The football team trained hard all week and won the final match on Sunday."
  local g = llm:judge(good, sources)
  local p = llm:judge(partial, sources)
  local o = llm:judge(off, sources)
  print(string.format("     judge: covering %.2f, one part %.2f, off-topic %.2f", g.score, p.score, o.score))
  T.ok(g.score > p.score and p.score > o.score, "ordering")
  T.ok(o.score < 0.1)
  T.ok(g.score > 0.4)
  T.eq(g.provider, "extractive (local fallback)")
  -- the partial summary misses the other parts' keywords
  local missing = table.concat(p.missing, " ")
  T.ok(missing:find("photosynthesis", 1, true) or missing:find("investors", 1, true), missing)
  T.ok(#g.reasons >= 1)
  T.ok(g.coverage >= 0 and g.coverage <= 1)
end)

T.case("complete() summarizes the user's text of a chat prompt", function()
  local text, info = llm:complete({ { role = "system", content = "You summarize." },
    { role = "user", content = lecture_text() } }, { sentences = 3 })
  T.eq(info.provider, "extractive (local fallback)")
  T.eq(#info.sentences, 3)
  T.ok(not text:find("You summarize", 1, true))
end)

return T.run()
