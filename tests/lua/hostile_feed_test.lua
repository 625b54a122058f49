-- A hostile feed (issue 18): an RSS feed of about 50 MB listing 100,000 episodes.
--   - feed.max_items (a podcast setting, default 2000) bounds what is read: the first 2000
--     entries are parsed (feeds list the newest first), the rest are counted, not parsed, and
--     one skipped record (one line on the terminal) says how many; the whole feed used to be
--     parsed into a tree (about 740 MB and 30 s on a loaded machine) and every episode planned.
--   - feed.max_bytes (default 64 MiB) refuses a larger feed, from a file or over HTTP, with one
--     line naming it, while the run's other input finishes.
-- The bounds on RSS are not checked under AddressSanitizer (its quarantine keeps freed memory).
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local P = require "pltest"
local stages = require "sluice.blocks.stages"
local cjson = require "cjson"
T.timeout = 300

local N = 100000
local dir, big, sample, srv

-- `sluice run ARGS` under /usr/bin/time: the result of P.run, and the child's peak RSS in KB.
local function run_measured(args)
  local argv = { "/usr/bin/time", "-f", "peak-rss-kb %M", P.bin, "run" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local t0 = sl.now()
  local r = assert(sl.exec(argv, { cwd = P.src, timeout = 240 }))
  r.seconds = sl.now() - t0
  r.peak_kb = tonumber(r.stderr:match("peak%-rss%-kb (%d+)"))
  return r
end

T.setup("setup", function()
  dir = P.tmpdir("hostile-feed")
  sample = P.sample("podcast") .. "/podcast"
  -- the first two entries are real episodes, the other 99,998 point nowhere
  local parts = { '<?xml version="1.0"?>\n<rss version="2.0" ' ..
    'xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel><title>Endless</title>\n' }
  local words = string.rep("Some words about this episode. ", 8)
  for i = 1, N do
    local url = i <= 2 and (sample .. "/episode" .. i .. ".m4a") or ("http://127.0.0.1:9/ep" .. i .. ".mp3")
    parts[#parts + 1] = string.format('<item><title>Episode %d</title><guid>ep-%d</guid>' ..
      '<pubDate>Mon, 07 Dec 2026 00:00:00 +0000</pubDate><itunes:duration>3600</itunes:duration>' ..
      '<description>%s</description><enclosure url="%s" type="audio/mp4" length="1000"/></item>\n',
      i, i, words, url)
  end
  parts[#parts + 1] = "</channel></rss>\n"
  big = dir .. "/endless.xml"
  P.write(big, table.concat(parts))
  srv = P.static_server(dir)
end)

T.case("100,000 entries: the first feed.max_items (2000) are read, the rest counted in one record", function()
  local size = #P.read(big)
  T.ok(size > 48e6 and size < 56e6, size .. " bytes")
  collectgarbage()
  local heap = collectgarbage("count")
  -- a task ticking every 5 ms: the read (on the pool) and the parse (which yields) let it run
  local ticks, last, gap, ticking = 0, sl.now(), 0, true
  sl.spawn(function()
    while ticking do
      sl.sleep(0.005)
      local now = sl.now()
      ticks, gap, last = ticks + 1, math.max(gap, now - last), now
    end
  end)
  sl.sleep(0.02)
  local t0 = sl.now()
  ticks, gap, last = 0, 0, t0
  local items, errors, skipped = stages.expand_inputs { big }
  local took = sl.now() - t0
  local during = ticks
  ticking = false
  local held = collectgarbage("count") - heap
  print(string.format("     %d bytes: %d items in %.2f s, Lua heap +%.0f MB; the loop turned %d times meanwhile, "
    .. "longest gap %.0f ms", size, #items, took, held / 1024, during, gap * 1000))
  T.ok(during >= 3, "the loop turned while the feed was read and parsed: " .. during .. " ticks")
  T.eq(#errors, 0, cjson.encode(errors))
  T.eq(#items, 2000)
  T.eq(items[1].title, "Episode 1")
  T.eq(items[2000].title, "Episode 2000")
  T.eq(#skipped, 1)
  T.eq(skipped[1].count, N - 2000)
  T.eq(skipped[1].reason, "past feed.max_items (the first 2000 entries were read, 98000 more not)")
  T.ok(took < 60, "took " .. took .. " s")
  T.ok(P.sanitized() or held < 100 * 1024, "held " .. held .. " KB")
end)

T.case("a podcast run over the 50 MB feed with feed.max_items=2: two episodes, one line for the rest", function()
  local out = dir .. "/out"
  local r = run_measured { "pipelines/podcast.lua", big, "--out", out, "--no-store", "--set", "feed.max_items=2" }
  print(string.format("     run: %.1f s, peak RSS %d MB", r.seconds, (r.peak_kb or 0) // 1024))
  T.eq(r.status, 0, r.stderr)
  T.ok(P.exists(out .. "/Episode_1/transcript.json") or P.exists(out .. "/Episode-1/transcript.json")
    or #P.sh("ls " .. out .. "/*/transcript.json"):gsub("[^\n]", "") == 2, P.sh("ls " .. out))
  local index = P.json(out .. "/index.json")
  T.eq(#index.episodes, 2, cjson.encode(index.episodes))
  T.eq(#index.skipped, 1, cjson.encode(index.skipped))
  T.eq(index.skipped[1].count, N - 2)
  local line = "skipped 99998 entries in " .. big ..
    ": past feed.max_items (the first 2 entries were read, 99998 more not)"
  T.ok(r.stderr:find(line, 1, true), r.stderr)
  T.ok(P.sanitized() or (r.peak_kb and r.peak_kb < 400 * 1024), "peak RSS " .. tostring(r.peak_kb) .. " KB")
  T.ok(r.seconds < 200, "took " .. r.seconds .. " s")
end)

T.case("feed.max_bytes refuses the feed from a file and over HTTP, one line each; the other input finishes", function()
  local out = dir .. "/capped"
  local url = srv.url .. "/endless.xml"
  local size = #P.read(big)
  local r = run_measured { "pipelines/podcast.lua", big, url, sample .. "/episode2.m4a", "--out", out,
    "--no-store", "--quiet", "--set", "feed.max_bytes=10000000" }
  print(string.format("     run: %.1f s, peak RSS %d MB", r.seconds, (r.peak_kb or 0) // 1024))
  T.eq(r.status, 1, r.stderr)
  T.ok(P.exists(out .. "/episode2/transcript.json"), r.stderr)
  local index = P.json(out .. "/index.json")
  local lines = {}
  for _, f in ipairs(index.failed) do
    lines[#lines + 1] = f.error
    print("     " .. f.error)
    T.ok(P.one_line(f.error), f.error)
  end
  table.sort(lines)
  T.eq(table.concat(lines, "\n"), table.concat({
    "input " .. big .. ": feed larger than feed.max_bytes (" .. size .. " bytes, more than 10000000 bytes)",
    "input " .. url .. ": feed larger than feed.max_bytes (10000000 bytes)",
  }, "\n"))
  T.ok(P.sanitized() or (r.peak_kb and r.peak_kb < 200 * 1024), "peak RSS " .. tostring(r.peak_kb) .. " KB")
end)

T.case("a bad feed cap is refused with one line naming the setting", function()
  local r = P.run { "pipelines/podcast.lua", big, "--out", dir .. "/bad", "--no-store", "--set", "feed.max_items=0" }
  T.eq(r.status, 2)
  T.ok(r.stderr:find("feed.max_items must be a positive whole number (got 0)", 1, true), r.stderr)
end)

T.teardown("teardown", function()
  if srv then srv.stop() end
  P.rm(dir)
end)

return T.run()
