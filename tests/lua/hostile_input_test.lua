-- Hostile inputs that fuzz_regress_test does not cover: a provider reply of 1 GiB and a chat
-- stream that never ends (both cut at the provider's max_reply_bytes, a setting with a
-- default, in bounded time and memory, one line naming the cause, not retried), a redirect
-- loop, a billion-laughs feed and an enclosure that is an HTML page (each one line naming the
-- input and the cause, while the run's other input finishes).
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" ..
  (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local fake = require "fakeapi"
local P = require "pltest"
local cjson = require "cjson"
local providers = require "sluice.providers"
local stages = require "sluice.blocks.stages"
local feed = require "sluice.blocks.feed"
T.timeout = 120

local srv

T.setup("setup", function()
  srv = fake.start()
end)

local CHAT = "/v1/chat/completions"

local function llm(cfg)
  cfg = cfg or {}
  cfg.base_url, cfg.api_key = srv.url .. "/v1", "sk-hostile"
  cfg.retry = { attempts = 3, base = 0.02, max = 0.1 }
  return providers.get("llm", "openai", cfg)
end

T.case("a 1 GiB reply is cut at the default max_reply_bytes (32 MiB), once, in bounded memory", function()
  srv:reset()
  srv:control { faults = { { kind = "huge", path = CHAT } } } -- 1 GiB of JSON, made as it is sent
  local before = P.rss_kb()
  local t0 = sl.now()
  local text, err, code = llm():complete("hi")
  local took = sl.now() - t0
  T.eq(text, nil)
  T.eq(code, "ETOOBIG")
  T.ok(P.one_line(err) and err:find("larger than " .. providers.MAX_REPLY_BYTES .. " bytes", 1, true), err)
  T.ok(err:find("^openai: ") and err:find(CHAT, 1, true), err)
  T.eq(#srv:requests(CHAT), 1, "not retried")
  T.ok(took < 60, "ended in " .. took .. " s")
  -- the reply is never held whole: at most the cap (and curl's buffers) on top
  T.ok(P.rss_kb() - before < 3 * 32 * 1024, "RSS grew by " .. (P.rss_kb() - before) .. " KB")
end)

T.case("a chat stream that never ends is cut at max_reply_bytes; the tokens before it came", function()
  srv:reset()
  srv:control { faults = { { kind = "endless", path = CHAT } } }
  local got = 0
  local t0 = sl.now()
  local text, err, code = llm { max_reply_bytes = 512 * 1024 }:complete("hi", {
    stream = function(piece) got = got + #piece end })
  T.eq(text, nil)
  T.eq(code, "ETOOBIG")
  T.ok(P.one_line(err) and err:find("larger than 524288 bytes", 1, true), err)
  T.ok(got > 0, "deltas were passed on before the cut")
  T.eq(#srv:requests(CHAT), 1, "a stream that delivered tokens is not retried")
  T.ok(sl.now() - t0 < 30)
end)

T.case("a redirect loop ends after 8 redirects with one line naming the URL", function()
  local out = P.tmpdir("hostile")
  local url = srv.url .. "/redirect/loop"
  local path, err = stages.fetch({ url = url }, out)
  T.eq(path, nil)
  T.ok(P.one_line(err) and err:find("fetch " .. url, 1, true) and err:find("redirects"), err)
  -- as an input of a run (a feed or media URL)
  local items, errors = stages.expand_inputs { url }
  T.eq(#items + #errors >= 1, true)
  P.rm(out)
end)

-- An RSS feed of nested entities (billion laughs), its enclosure URL a %s (the same file
-- bench/hostile_table.py uses).
local LAUGHS = T.slurp(P.src .. "/tests/lua/fixtures/billion_laughs.xml")

T.case("billion laughs: the entities are not expanded (bounded time and memory)", function()
  local before = collectgarbage("count")
  local t0 = os.clock()
  local f, err = feed.parse(LAUGHS:format("x.mp3"))
  T.ok(f, err)
  T.ok(os.clock() - t0 < 0.5)
  T.eq(#f.items, 1)
  T.ok(#f.title < 100, "the title is not 10^9 'lol's: " .. #f.title .. " bytes")
  T.ok(collectgarbage("count") - before < 1024, "no entity expansion in memory")
end)

T.case("a run with a billion-laughs feed whose enclosure is an HTML page, a redirect loop and a good episode", function()
  local dir = P.tmpdir("hostile")
  local sample = P.sample("podcast") .. "/podcast"
  local feed_path = dir .. "/laughs.xml"
  local html = srv.url .. "/html/episode.mp3"
  P.write(feed_path, LAUGHS:format(html))
  local loop = srv.url .. "/redirect/loop"
  local p = sl.load(P.src .. "/pipelines/podcast.lua")
  local t0 = sl.now()
  local job = p:start { inputs = { feed_path, loop, sample .. "/episode2.m4a" }, out = dir .. "/out" }
  local summary = job:wait()
  local took = sl.now() - t0
  local index = P.json(dir .. "/out/index.json")
  -- the good episode is done
  local done = {}
  for _, ep in ipairs(index.episodes) do
    if ep.transcript then done[#done + 1] = ep.key end
  end
  T.ok(P.exists(dir .. "/out/episode2/transcript.json"), cjson.encode(index))
  -- each bad input is one failure, one line naming it and the cause
  T.eq(summary.failed, 2, cjson.encode(summary.dead))
  for _, d in ipairs(summary.dead) do print("     dead letter: " .. d.error) end
  local by = {}
  for _, d in ipairs(summary.dead) do
    T.ok(P.one_line(d.error), d.error)
    if d.error:find(loop, 1, true) then by.loop = d.error end
    if d.error:find("episode.mp3", 1, true) or d.error:find("Laughs", 1, true) then by.html = d.error end
  end
  T.ok(by.loop and by.loop:find("redirects"), cjson.encode(summary.dead))
  T.eq(by.html, "fetch " .. html .. ": the server sent an HTML page (text/html), not media")
  T.ok(took < 90, "took " .. took .. " s")
  P.rm(dir)
end)

T.teardown("teardown", function() srv:stop() end)

return T.run()
