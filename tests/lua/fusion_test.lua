-- Fusion policies (by_slide, by_window, nearest), incremental merging of VLM batches after the
-- STT gate, and the overlap merge of chunked transcripts.
local T = require "sluice.app.test"
local fusion = require "sluice.blocks.fusion"
local text = require "sluice.blocks.text"

local SLIDES = {
  { seq = 1, t = 0, text = "Intro", path = "slides/0001.jpg" },
  { seq = 2, t = 10, text = "Methods", path = "slides/0002.jpg" },
  { seq = 3, t = 20, text = "Results", path = "slides/0003.jpg" },
}
local SPEECH = {
  { start = 0.5, ["end"] = 4.0, text = "hello everyone" },
  { start = 8.0, ["end"] = 12.0, text = "now the methods", words = {
    { start = 8.0, ["end"] = 8.5, word = "now" },
    { start = 8.6, ["end"] = 9.8, word = "the" },
    { start = 9.9, ["end"] = 10.0, word = "<sil>" },
    { start = 10.2, ["end"] = 11.9, word = "methods(2)" } } },
  { start = 18.5, ["end"] = 22.5, text = "results are good" },
  { start = 25, ["end"] = 29, text = "thank you" },
}

local function brief(entries)
  local out = {}
  for i, e in ipairs(entries) do
    out[i] = { seq = e.seq, window = e.window, t0 = e.t0, t1 = e.t1, slide_text = e.slide_text,
      speech = e.speech, missing = e.missing }
  end
  return out
end

T.case("by_slide: one entry per slide interval, words split at the slide change", function()
  local e = fusion.fuse(fusion.by_slide, SPEECH, SLIDES, { end_time = 30 })
  T.same(brief(e), {
    { seq = 1, t0 = 0, t1 = 10, slide_text = "Intro", speech = "hello everyone now the" },
    { seq = 2, t0 = 10, t1 = 20, slide_text = "Methods", speech = "methods" },
    { seq = 3, t0 = 20, t1 = 30, slide_text = "Results", speech = "results are good thank you" },
  })
  T.same(e[1].segments, { { start = 0.5, ["end"] = 4.0, text = "hello everyone" },
    { start = 8.0, ["end"] = 9.8, text = "now the" } })
  T.same(e[2].segments, { { start = 10.2, ["end"] = 11.9, text = "methods" } })
  T.eq(e[3].segments[1].text, "results are good", "a segment without words goes whole")
  T.eq(e[2].slide_path, "slides/0002.jpg")
end)

T.case("by_slide: without end_time the last interval ends with the speech", function()
  local e = fusion.fuse(fusion.by_slide, SPEECH, SLIDES)
  T.eq(e[3].t1, 29)
end)

T.case("by_slide: speech before the first capture belongs to the first slide", function()
  local slides = { { seq = 1, t = 3, text = "A" }, { seq = 2, t = 6, text = "B" } }
  local e = fusion.fuse(fusion.by_slide, { { start = 0, ["end"] = 1, text = "early" },
    { start = 6.5, ["end"] = 7, text = "late" } }, slides, { end_time = 8 })
  T.same(brief(e), { { seq = 1, t0 = 3, t1 = 6, slide_text = "A", speech = "early" },
    { seq = 2, t0 = 6, t1 = 8, slide_text = "B", speech = "late" } })
end)

T.case("nearest: each segment goes to the nearest capture", function()
  local e = fusion.fuse(fusion.nearest, SPEECH, SLIDES, { end_time = 30 })
  T.same(brief(e), {
    { seq = 1, t0 = 0, t1 = 5, slide_text = "Intro", speech = "hello everyone" },
    { seq = 2, t0 = 5, t1 = 15, slide_text = "Methods", speech = "now the methods" },
    { seq = 3, t0 = 15, t1 = 30, slide_text = "Results", speech = "results are good thank you" },
  })
end)

T.case("by_window: fixed windows with the slides shown in each", function()
  local e = fusion.fuse(fusion.by_window { seconds = 15 }, SPEECH, SLIDES, { end_time = 30 })
  T.same(brief(e), {
    { window = 0, t0 = 0, t1 = 15, slide_text = "Intro\nMethods", speech = "hello everyone now the methods" },
    { window = 1, t0 = 15, t1 = 30, slide_text = "Results", speech = "results are good thank you" },
  })
  T.eq(#e[1].slides, 2)
  T.eq(e[2].slides[1].path, "slides/0003.jpg")
end)

T.case("by_window: the last window ends with the media", function()
  local e = fusion.fuse(fusion.by_window { seconds = 20 }, SPEECH, SLIDES, { end_time = 30 })
  T.eq(#e, 2)
  T.eq(e[2].t0, 20)
  T.eq(e[2].t1, 30)
  T.eq(e[1].speech, "hello everyone now the methods")
  T.eq(e[2].speech, "results are good thank you", "18.5-22.5 has its midpoint in the second window")
end)

T.case("vision without seq is numbered by time", function()
  local e = fusion.fuse(fusion.by_slide, SPEECH, { { t = 20, text = "Results" },
    { t = 0, text = "Intro" }, { t = 10, text = "Methods" } }, { end_time = 30 })
  T.eq(#e, 3)
  T.eq(e[2].slide_text, "Methods")
  T.eq(e[2].speech, "methods")
end)

T.case("incremental: batches before the STT gate are buffered, later ones merge at once", function()
  local f = fusion.new { policy = fusion.by_slide, end_time = 30 }
  T.same(f:add_vision { SLIDES[1], SLIDES[2] }, {}, "no speech yet: buffered")
  local got = f:set_speech(SPEECH)
  T.same(brief(got), { { seq = 1, t0 = 0, t1 = 10, slide_text = "Intro", speech = "hello everyone now the" } },
    "the gate releases what is ready (slide 2 waits for slide 3's time)")
  got = f:add_vision { SLIDES[3] }
  T.same(brief(got), { { seq = 2, t0 = 10, t1 = 20, slide_text = "Methods", speech = "methods" } },
    "a batch after the gate merges at once")
  got = f:finish()
  T.same(brief(got), { { seq = 3, t0 = 20, t1 = 30, slide_text = "Results", speech = "results are good thank you" } })
  T.same(brief(f:entries()), brief(fusion.fuse(fusion.by_slide, SPEECH, SLIDES, { end_time = 30 })),
    "incremental equals batch")
end)

T.case("incremental: the last slide of a batch waits for the next capture time", function()
  local f = fusion.by_slide:fuser { end_time = 30 }
  f:set_speech(SPEECH)
  local got = f:add_vision { SLIDES[1], SLIDES[2] }
  T.same(brief(got), { { seq = 1, t0 = 0, t1 = 10, slide_text = "Intro", speech = "hello everyone now the" } })
  got = f:add_times { { seq = 3, t = 20 } }
  T.eq(#got, 1)
  T.eq(got[1].seq, 2)
  T.eq(#f:add_vision { SLIDES[3] }, 0, "the last slide waits for finish")
  T.eq(#f:finish(), 1)
  T.eq(#f:finish(), 0, "nothing is emitted twice")
end)

T.case("incremental: a slide whose batch failed is emitted by finish with its speech", function()
  local f = fusion.new { policy = fusion.by_slide, end_time = 30 }
  f:set_speech(SPEECH)
  f:add_times { { seq = 2, t = 10 } }
  f:add_vision { SLIDES[1], SLIDES[3] }
  local got = f:finish()
  T.same(brief(got), {
    { seq = 2, t0 = 10, t1 = 20, speech = "methods", missing = true },
    { seq = 3, t0 = 20, t1 = 30, slide_text = "Results", speech = "results are good thank you" } })
end)

T.case("incremental nearest needs both neighbours' times", function()
  local f = fusion.new { policy = fusion.nearest, end_time = 30 }
  f:set_speech(SPEECH)
  T.same(f:add_vision { SLIDES[2] }, {})
  T.eq(#f:add_vision { SLIDES[1] }, 1, "slide 1 is first and knows slide 2")
  local got = f:add_vision { SLIDES[3] }
  T.same(brief(got), { { seq = 2, t0 = 5, t1 = 15, slide_text = "Methods", speech = "now the methods" } })
  T.eq(f:finish()[1].seq, 3)
end)

T.case("incremental by_window emits a window once every slide before its end is described", function()
  local f = fusion.new { policy = fusion.by_window { seconds = 15 }, end_time = 30 }
  f:set_speech(SPEECH)
  T.same(f:add_vision { SLIDES[1] }, {})
  T.same(f:add_times { { seq = 2, t = 10 }, { seq = 3, t = 20 } }, {})
  local got = f:add_vision { SLIDES[2] }
  T.eq(#got, 1)
  T.eq(got[1].window, 0)
  T.eq(got[1].slide_text, "Intro\nMethods")
  got = f:finish()
  T.eq(#got, 1)
  T.eq(got[1].speech, "results are good thank you")
end)

T.case("bad input raises a clear message", function()
  T.raises(function() fusion.by_window { seconds = 0 } end, "seconds = positive number")
  T.raises(function() fusion.new { policy = "sideways" } end, "bad fusion policy")
  local f = fusion.new {}
  T.raises(function() f:add_vision { { t = 1 } } end, "vision item 1 (t=1) needs an integer seq")
  T.raises(function() f:set_speech { { text = "x" } } end, "speech segment 1 has no start/end")
end)

-- Overlap merge ------------------------------------------------------------------------------

local SENTENCE = text.words("we walked along the quiet river bank and watched eleven herons "
  .. "fishing near the old stone bridge until evening came")

-- Words of SENTENCE at 1 s each (word k spoken over [k-1, k-0.4]), cut into chunks of `len`
-- seconds starting every `step` seconds; times relative to each chunk. `garble` maps an
-- absolute word index to what a chunk heard at its edge instead.
local function chunked(len, step, garble)
  local chunks = {}
  local t0 = 0
  while t0 < #SENTENCE do
    local t1 = math.min(t0 + len, #SENTENCE)
    local words, parts = {}, {}
    for k = 1, #SENTENCE do
      local s = k - 1
      if s >= t0 and s < t1 then
        local w = SENTENCE[k]
        local g = garble and garble[#chunks + 1] and garble[#chunks + 1][k]
        if g then w = g end
        words[#words + 1] = { start = s - t0, ["end"] = s - t0 + 0.6, word = w }
        parts[#parts + 1] = w
      end
    end
    chunks[#chunks + 1] = { t0 = t0, t1 = t1, segments = { { start = words[1].start,
      ["end"] = words[#words]["end"], text = table.concat(parts, " "), words = words } } }
    if t1 >= #SENTENCE then break end
    t0 = t0 + step
  end
  return chunks
end

local function dup_at_boundary(words)
  for i = 2, #words do
    if text.normalize(words[i]) == text.normalize(words[i - 1]) then return i end
  end
end

-- Speech as an STT engine hears it in overlapping chunks: 240 words at 0.25 s each (60 s),
-- chunks of 5, 10, then 20 s overlapping 2 s; a word cut by a chunk edge is misheard there
-- (the other chunk hears it right), so the merge has something to fix at every boundary.
local function chunked_speech(total)
  total = total or 60
  local chunks, t0, len, k = {}, 0, 5, 0
  while true do
    k = k + 1
    local t1 = math.min(t0 + len, total)
    local words = {}
    for i = 0, total * 4 - 1 do
      local ws, we = i * 0.25, i * 0.25 + 0.2
      if we > t0 and ws < t1 then
        local edge = ws < t0 or we > t1
        words[#words + 1] = { word = edge and ("x" .. i) or ("w" .. i), start = math.max(ws, t0), ["end"] = math.min(we, t1) }
      end
    end
    -- two segments per chunk
    local h = #words // 2
    local function seg(a, b)
      local ws, parts = {}, {}
      for i = a, b do ws[#ws + 1] = words[i]; parts[#parts + 1] = words[i].word end
      return { start = ws[1].start, ["end"] = ws[#ws]["end"], text = table.concat(parts, " "), words = ws }
    end
    chunks[k] = { seq = k, t0 = t0, t1 = t1, segments = { seg(1, h), seg(h + 1, #words) } }
    if t1 >= total then break end
    t0, len = t1 - 2, math.min(len * 2, 20)
  end
  return chunks
end

local VISION = { { seq = 1, t = 0, text = "One" }, { seq = 2, t = 4.1, text = "Two" },
  { seq = 3, t = 12.6, text = "Three" }, { seq = 4, t = 30.2, text = "Four" }, { seq = 5, t = 44.9, text = "Five" } }

T.case("incremental speech: chunks merged as they come give merge_chunks' transcript and fuse()'s entries", function()
  local chunks = chunked_speech()
  T.ok(#chunks >= 5, "several chunks")
  local whole = fusion.merge_chunks(chunks, { absolute = true })
  for _, policy in ipairs { fusion.by_slide, fusion.nearest, fusion.by_window { seconds = 15 } } do
    local want = fusion.fuse(policy, whole.segments, VISION, { end_time = 60 })
    -- vision arrives interleaved with the chunks (one slide after each chunk); slide 5 after all
    local m = fusion.chunk_merger { absolute = true }
    local f = fusion.new { policy = policy, end_time = 60 }
    local got, before_complete, provisional = {}, 0, {}
    local taken = {}
    for i, ch in ipairs(chunks) do
      m:add(ch)
      local segs, first, upto = m:take_final()
      for j, sg in ipairs(segs) do taken[first + j - 1] = sg end
      for _, e in ipairs(f:add_speech(segs, first, upto)) do got[#got + 1] = e; before_complete = before_complete + 1 end
      f:set_tentative(m:tail())
      if VISION[i] and i < 5 then
        for _, e in ipairs(f:add_vision { VISION[i] }) do got[#got + 1] = e; before_complete = before_complete + 1 end
      end
      for _, e in ipairs(f:provisional()) do
        T.ok(not f.emitted[e.seq], "a provisional entry is never one already final")
        provisional[e.seq] = true
      end
    end
    -- what take_final handed out is merge_chunks' transcript, segment for segment
    local r = m:result()
    T.same(r.segments, whole.segments, tostring(policy) .. ": result() is merge_chunks'")
    for idx, sg in pairs(taken) do T.same(sg, whole.segments[idx], "final segment " .. idx) end
    for _, e in ipairs(f:add_vision { VISION[5] }) do got[#got + 1] = e end
    for _, e in ipairs(f:set_speech(whole.segments)) do got[#got + 1] = e end
    for _, e in ipairs(f:finish()) do got[#got + 1] = e end
    T.same(got, want, tostring(policy) .. ": the same entries as fuse() on the whole transcript")
    if policy.kind ~= "by_window" then
      T.ok(before_complete >= 2, tostring(policy) .. ": entries final before the whole transcript: " .. before_complete)
      T.ok(provisional[1] and provisional[2], tostring(policy) .. ": provisional entries came first")
    end
  end
end)

-- The lecture's transcript stage: merge took the final segments chunk by chunk; at the end the
-- rest is taken at once (take_final(true)) and the fuser told no speech is to come (end_speech).
T.case("the rest at the end: take_final(true) and end_speech complete merge_chunks' transcript and fuse()'s entries", function()
  local chunks = chunked_speech()
  for _, ch in ipairs(chunks) do
    for i, sg in ipairs(ch.segments) do sg.speaker = "S" .. ch.seq .. "." .. i end
  end
  local whole = fusion.merge_chunks(chunks, { absolute = true, carry = { "speaker" } })
  local source = {} -- speaker -> the words of that chunk segment
  for _, ch in ipairs(chunks) do
    for _, sg in ipairs(ch.segments) do
      source[sg.speaker] = {}
      for _, w in ipairs(sg.words) do source[sg.speaker][w.word] = true end
    end
  end
  for _, sg in ipairs(whole.segments) do
    T.ok(source[sg.speaker], "a carried speaker: " .. tostring(sg.speaker))
    for _, w in ipairs(sg.words) do
      T.ok(source[sg.speaker][w.word], sg.speaker .. " said " .. w.word)
    end
  end
  for _, policy in ipairs { fusion.by_slide, fusion.nearest, fusion.by_window { seconds = 15 } } do
    local want = fusion.fuse(policy, whole.segments, VISION, { end_time = 60 })
    local m = fusion.chunk_merger { absolute = true, forget_taken = true, carry = { "speaker" } }
    local f = fusion.new { policy = policy, end_time = 60, forget = true }
    local got, segs, bounds = {}, {}, {}
    local function take(all)
      local s, first, upto, b = m:take_final(all)
      T.eq(first, #segs + 1, "numbered on")
      for _, sg in ipairs(s) do segs[#segs + 1] = sg end
      for _, x in ipairs(b) do bounds[#bounds + 1] = x end
      for _, e in ipairs(f:add_speech(s, first, upto)) do got[#got + 1] = e end
    end
    for i, ch in ipairs(chunks) do
      m:add(ch)
      if i < #chunks - 1 then take() end -- (the last two chunks wait: merged at the end)
      if VISION[i] then
        for _, e in ipairs(f:add_vision { VISION[i] }) do got[#got + 1] = e end
      end
    end
    take(true)
    T.same(segs, whole.segments, tostring(policy) .. ": every segment, once")
    T.same(bounds, whole.boundaries, tostring(policy) .. ": every boundary, once")
    T.same({ m:tail() }, { {}, #segs + 1 }, "nothing left")
    for i = #chunks + 1, #VISION do
      for _, e in ipairs(f:add_vision { VISION[i] }) do got[#got + 1] = e end
    end
    for _, e in ipairs(f:end_speech()) do got[#got + 1] = e end
    for _, e in ipairs(f:finish()) do got[#got + 1] = e end
    T.same(got, want, tostring(policy) .. ": the same entries as fuse() on the whole transcript")
  end
end)

-- Issue 16: what a long lecture's merger and fuser hold must not grow with its length.
T.case("bounded: a forget_taken merger hands out the same segments and keeps the last chunk's tokens only", function()
  local chunks = chunked_speech(600)
  T.ok(#chunks >= 30, "many chunks: " .. #chunks)
  local keep = fusion.chunk_merger { absolute = true }
  local forget = fusion.chunk_merger { absolute = true, forget_taken = true }
  local most = 0
  for _, ch in ipairs(chunks) do
    keep:add(ch)
    forget:add(ch)
    T.same({ forget:take_final() }, { keep:take_final() }, "chunk " .. ch.seq .. ": take_final")
    T.same({ forget:tail() }, { keep:tail() }, "chunk " .. ch.seq .. ": tail")
    if #forget.tokens > most then most = #forget.tokens end
    T.ok(#forget.boundaries <= 1, "boundaries taken go")
  end
  -- a 20 s chunk is 80 words: the merger holds about one chunk, the other every word
  T.ok(most <= 100, "tokens held at most: " .. most)
  T.ok(#keep.tokens >= 2000, "without forget_taken: every token, " .. #keep.tokens)
  T.raises(function() forget:result() end, "forget_taken")
end)

T.case("bounded: a fuser made with forget returns the same entries and holds the open intervals' speech only", function()
  local chunks = chunked_speech(600)
  local whole = fusion.merge_chunks(chunks, { absolute = true })
  local slides = {}
  for i = 1, 60 do slides[i] = { seq = i, t = (i - 1) * 10 + 0.5, text = "Slide " .. i } end
  for _, policy in ipairs { fusion.by_slide, fusion.nearest, fusion.by_window { seconds = 30 } } do
    local name = policy.kind
    local m = fusion.chunk_merger { absolute = true, forget_taken = true }
    local all = fusion.new { policy = policy }
    local fg = fusion.new { policy = policy, forget = true }
    local got, want = {}, {}
    local function both(call, ...)
      for _, e in ipairs(all[call](all, ...)) do want[#want + 1] = e end
      for _, e in ipairs(fg[call](fg, ...)) do got[#got + 1] = e end
    end
    local next_slide, most = 1, 0
    for _, ch in ipairs(chunks) do
      m:add(ch)
      local segs, first, upto = m:take_final()
      both("add_speech", segs, first, upto)
      all:set_tentative(m:tail())
      fg:set_tentative(m:tail())
      -- the slides captured by the chunk's end, described a chunk later
      local batch = {}
      while slides[next_slide] and slides[next_slide].t < ch.t0 do
        batch[#batch + 1] = slides[next_slide]
        next_slide = next_slide + 1
      end
      if #batch > 0 then both("add_vision", batch) end
      T.same(fg:provisional(), all:provisional(), name .. ": provisional after chunk " .. ch.seq)
      if #(fg.units or {}) > most then most = #fg.units end
    end
    local rest = {}
    for i = next_slide, #slides do rest[#rest + 1] = slides[i] end
    both("add_vision", rest)
    both("finish")
    T.same(got, want, name .. ": the same entries")
    T.ok(#want >= 10, name .. ": entries " .. #want)
    -- 600 s of speech are 2400 words; an open interval (and the last chunk) about a hundred
    T.ok(most <= 300, name .. ": speech units held at most " .. most .. " (without forget: " .. #all.units .. ")")
    T.raises(function() fg:entries() end, "forget")
  end
end)

T.case("bounded: a slide's provisional signature goes once its entry is final", function()
  local f = fusion.new { policy = fusion.by_slide }
  for seq = 1, 200 do
    local t = (seq - 1) * 10
    f:add_speech({ { start = t + 1, ["end"] = t + 2, text = "words of slide " .. seq } }, seq, t + 5)
    f:add_vision { { seq = seq, t = t, text = "Slide " .. seq } }
    f:provisional()
  end
  local held = 0
  for _ in pairs(f.prov) do held = held + 1 end
  T.eq(#f:entries(), 199, "every slide but the last is final")
  T.ok(held <= 1, "signatures held: " .. held)
end)

T.case("provisional: a slide with speech so far, again only when it changed", function()
  local f = fusion.new { policy = fusion.by_slide }
  T.same(f:provisional(), {}, "nothing yet")
  f:add_times { { seq = 1, t = 0 } }
  f:add_speech({ { start = 0.5, ["end"] = 1.5, text = "hello there" } }, 1, 0)
  local p = f:provisional()
  T.eq(#p, 1)
  T.eq(p[1].seq, 1); T.eq(p[1].speech, "hello there"); T.eq(p[1].provisional, true); T.eq(p[1].missing, true)
  T.same(f:provisional(), {}, "unchanged: not again")
  f:set_tentative({ { start = 2, ["end"] = 3, text = "and more" } }, 2)
  T.eq(f:provisional()[1].speech, "hello there and more")
  f:add_vision { { seq = 1, t = 0, text = "Title" } }
  T.eq(f:provisional()[1].slide_text, "Title", "the description came: again")
  -- slide 2 at 2.4: slide 1's interval closes; its speech is final up to 4: final, no more provisional
  local got = f:add_speech({ { start = 2, ["end"] = 3, text = "and more" } }, 2, 4)
  T.same(got, {}, "slide 2's time is not known yet")
  got = f:add_vision { { seq = 2, t = 2.4, text = "Next" } }
  T.eq(#got, 1)
  T.eq(got[1].speech, "hello there")
  T.eq(got[1].provisional, nil)
  local p2 = f:provisional()
  T.eq(#p2, 1); T.eq(p2[1].seq, 2); T.eq(p2[1].speech, "and more")
end)

T.case("merge_chunks: timed chunks with 4 s overlap give the sentence once", function()
  local chunks = chunked(10, 6)
  T.ok(#chunks >= 3, "several chunks")
  local r = fusion.merge_chunks(chunks)
  T.eq(r.text, table.concat(SENTENCE, " "))
  T.eq(#r.words, #SENTENCE)
  for k, w in ipairs(r.words) do T.near(w.start, k - 1, 1e-9, "absolute word time " .. k) end
  for _, b in ipairs(r.boundaries) do T.ok(b.aligned, "aligned boundary") end
  T.eq(dup_at_boundary(text.words(r.text)), nil)
end)

T.case("merge_chunks: words misheard at chunk edges are replaced by the other chunk's", function()
  -- chunk 1 covers words 1..10 and mishears word 10 (cut at its edge); chunk 2 starts at
  -- word 7 and mishears it.
  local chunks = chunked(10, 6, { [1] = { [10] = "heroes" }, [2] = { [7] = "wash" } })
  local r = fusion.merge_chunks(chunks)
  T.eq(r.text, table.concat(SENTENCE, " "))
  T.eq(r.boundaries[1].matched, 2)
end)

T.case("merge_chunks: untimed chunk texts align on words alone", function()
  local chunks = {}
  for i, c in ipairs(chunked(10, 6)) do
    chunks[i] = { t0 = c.t0, t1 = c.t1, text = c.segments[1].text }
  end
  local r = fusion.merge_chunks(chunks)
  T.eq(r.text, table.concat(SENTENCE, " "))
  T.eq(r.segments[1].start, 0)
  T.eq(#r.words, 0)
end)

T.case("merge_chunks: no common words falls back to the middle of the overlap", function()
  local a = { t0 = 0, t1 = 6, segments = { { start = 0, ["end"] = 6, text = "alpha beta gamma", words = {
    { start = 0, ["end"] = 1, word = "alpha" }, { start = 2, ["end"] = 3, word = "beta" },
    { start = 4.5, ["end"] = 5.5, word = "gamma" } } } } }
  local b = { t0 = 4, t1 = 10, segments = { { start = 0, ["end"] = 6, text = "gamut delta epsilon", words = {
    { start = 0.2, ["end"] = 0.6, word = "gamut" }, { start = 1.5, ["end"] = 2.5, word = "delta" },
    { start = 4, ["end"] = 5, word = "epsilon" } } } } }
  local r = fusion.merge_chunks { a, b }
  -- overlap [4, 6], cut at 5: gamma (mid 5.0) is dropped from a, gamut (4.4) from b.
  T.eq(r.text, "alpha beta delta epsilon")
  T.eq(r.boundaries[1].aligned, false)
  T.eq(#r.segments, 2)
  T.same(r.segments[2], { start = 5.5, ["end"] = 9, text = "delta epsilon", words = {
    { start = 5.5, ["end"] = 6.5, word = "delta" }, { start = 8, ["end"] = 9, word = "epsilon" } } })
end)

T.case("merge_chunks: segments keep their grouping and absolute times", function()
  local r = fusion.merge_chunks({
    { t0 = 0, t1 = 5, segments = { { start = 0, ["end"] = 2, text = "one two" },
      { start = 2.5, ["end"] = 5, text = "three four five" } } },
    { t0 = 3, t1 = 8, segments = { { start = 0, ["end"] = 2, text = "four five" },
      { start = 2.5, ["end"] = 5, text = "six seven" } } },
  })
  T.eq(r.text, "one two three four five six seven")
  -- cut at the middle matched word ("four"): "five" comes from the second chunk's segment.
  T.same(r.segments, { { start = 0, ["end"] = 2, text = "one two" },
    { start = 2.5, ["end"] = 5, text = "three four" }, { start = 3, ["end"] = 5, text = "five" },
    { start = 5.5, ["end"] = 8, text = "six seven" } })
end)

T.case("merge_chunks: chunks that meet (cut in a pause) are joined whole, repeated words kept", function()
  -- "of the" ends the first chunk and starts the second within 1.5 s: with an overlap they would
  -- align and one pair would go; chunks that meet heard nothing twice.
  local a = { t0 = 0, t1 = 4, segments = { { start = 0, ["end"] = 3.8, text = "the top of the", words = {
    { start = 0, ["end"] = 0.5, word = "the" }, { start = 1, ["end"] = 1.5, word = "top" },
    { start = 2.8, ["end"] = 3.2, word = "of" }, { start = 3.3, ["end"] = 3.6, word = "the" } } } } }
  local b = { t0 = 4, t1 = 8, segments = { { start = 0.2, ["end"] = 2, text = "of the hill", words = {
    { start = 0.2, ["end"] = 0.5, word = "of" }, { start = 0.6, ["end"] = 0.9, word = "the" },
    { start = 1.2, ["end"] = 2, word = "hill" } } } } }
  local r = fusion.merge_chunks { a, b }
  T.eq(r.text, "the top of the of the hill")
  T.eq(r.boundaries[1].adjacent, true)
  T.eq(r.boundaries[1].dropped_prev + r.boundaries[1].dropped_next, 0)
  -- the same two with a 1 s overlap (b from 3 s): the repeated pair is heard twice and goes once
  local b2 = { t0 = 3, t1 = 8, segments = { { start = 0.2, ["end"] = 3, text = "of the hill", words = {
    { start = -0.2, ["end"] = 0.2, word = "of" }, { start = 0.3, ["end"] = 0.6, word = "the" },
    { start = 2.2, ["end"] = 3, word = "hill" } } } } }
  T.eq(fusion.merge_chunks({ a, b2 }).text, "the top of the hill")
end)

-- Shared text helpers ------------------------------------------------------------------------

T.case("text: word error rate, sentences, keywords, extractive summary", function()
  T.eq(text.wer("he was not an ill disposed young man", "he was not an illness those young man"), 2 / 8)
  T.eq(select(2, text.wer("a b c", "a x c d")), 2)
  T.same(text.sentences("Mr. Smith went home. Did he? Yes!\n\nNew paragraph"),
    { "Mr. Smith went home.", "Did he?", "Yes!", "New paragraph" })
  T.same(text.keywords("The river, the River bank and the herons by the river bank.", 2),
    { { word = "river", count = 3 }, { word = "bank", count = 2 } })
  T.same(text.summarize("Rivers flood often. Rivers and herons. Cats sleep. Herons fish in rivers.", 2),
    { "Rivers and herons.", "Herons fish in rivers." })
end)

return T.run()
