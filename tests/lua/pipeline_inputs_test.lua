-- Pipeline inputs: feeds and URL lists expand into items, downloads stream to files, skip what
-- is already there and resume partial files; seed 001's worker rule.
local T = require "sluice.app.test"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()
local stages = require "sluice.blocks.stages"

T.case("resolve relative references against URLs and paths", function()
  T.eq(stages.resolve("http://h:8/a/feed.xml?x=1", "ep1.m4a"), "http://h:8/a/ep1.m4a")
  T.eq(stages.resolve("http://h:8/a/feed.xml", "/media/ep1.m4a"), "http://h:8/media/ep1.m4a")
  T.eq(stages.resolve("https://h/a/feed.xml", "//cdn/x.mp3"), "https://cdn/x.mp3")
  T.eq(stages.resolve("http://h/a/feed.xml", "https://o/x.mp3"), "https://o/x.mp3")
  T.eq(stages.resolve("/data/pod/feed.xml", "ep1.m4a"), "/data/pod/ep1.m4a")
  T.eq(stages.resolve("feed.xml", "ep1.m4a"), "ep1.m4a")
  T.eq(stages.slug("Episode 2: Queues & Co!"), "episode-2-queues-co")
end)

T.case("safe_name keeps a name as it is, except what a file name cannot hold", function()
  T.eq(stages.safe_name("book_copy"), "book_copy")
  T.eq(stages.safe_name("Episode 2: Queues & Co!"), "Episode 2: Queues & Co!")
  T.eq(stages.safe_name("a/b\0c\nd"), "a_b_c_d")
  T.eq(stages.safe_name(".."), "_..")
  T.eq(stages.safe_name(""), "item")
  -- cut at a character boundary: "é" is two bytes, never split
  T.eq(stages.safe_name("ab" .. ("é"):rep(3), 5), "abé")
  T.eq(stages.safe_name("ab" .. ("é"):rep(3), 6), "abéé")
end)

T.case("a feed file expands into its episodes; bad inputs are errors, not failures", function()
  local dir = P.sample("podcast") .. "/podcast"
  local items, errors = stages.expand_inputs { dir .. "/feed.xml", dir .. "/episode2.m4a",
    "/nonexistent/x.mp3", P.src .. "/tests/lua/fixtures/podcast_atom.xml.missing" }
  T.eq(#items, 4)
  T.eq(items[1].path, dir .. "/episode1.m4a")
  T.ok(items[1].title:match("^Episode 1: "), items[1].title)
  T.ok(items[1].duration > 10, "duration from the feed")
  T.eq(items[4].path, dir .. "/episode2.m4a")
  T.eq(items[4].key, "episode2")
  T.eq(#errors, 2)
  T.eq(errors[1], "input /nonexistent/x.mp3: no such file")
end)

T.case("a feed over HTTP: enclosures resolve against it, downloads skip and resume", function()
  local dir = P.sample("podcast") .. "/podcast"
  local srv = P.static_server(dir, { "--cut", "episode3.m4a:20000" })
  local out = P.tmpdir("fetch")
  local ok, err = pcall(function()
    local items, errors = stages.expand_inputs { srv.url .. "/feed.xml" }
    T.eq(#errors, 0)
    T.eq(#items, 3)
    T.eq(items[2].url, srv.url .. "/episode2.m4a")
    -- Episode 3's first response is cut short: the download fails and leaves a .part file.
    local path, e3 = stages.fetch(items[3], out)
    T.eq(path, nil, "the cut download fails")
    T.ok(e3:find("fetch " .. srv.url .. "/episode3.m4a", 1, true), e3)
    T.ok((stages.file_size(out .. "/" .. items[3].key .. ".m4a.part") or 0) > 0, "partial file kept")
    local info
    path, info = stages.fetch(items[3], out)
    T.ok(path, info)
    T.ok(info.resumed, "second attempt resumes")
    T.ok(info.had >= 20000, "resumed from the partial file")
    T.eq(P.read(path), P.read(dir .. "/episode3.m4a"), "downloaded bytes equal the original")
    local ranges = 0
    for _, r in ipairs(srv.log) do if r.path == "/episode3.m4a" and type(r.range) == "string" then ranges = ranges + 1 end end
    T.eq(ranges, 1, "one Range request")
    -- Already downloaded: skipped without a request.
    local n = #srv.log
    local p2, info2 = stages.fetch(items[3], out)
    T.eq(p2, path)
    T.ok(info2.skipped)
    T.eq(#srv.log, n)
    -- A missing file is an HTTP error naming the URL.
    local p3, e404 = stages.fetch({ url = srv.url .. "/missing.m4a" }, out)
    T.eq(p3, nil)
    T.eq(e404, "fetch " .. srv.url .. "/missing.m4a: HTTP 404")
  end)
  srv.stop()
  P.rm(out)
  if not ok then error(err, 0) end
end)

T.case("seed 001 worker rule: by chunks, memory and CPUs", function()
  local w = stages.workers_for
  T.eq(w { duration = 500, engine = "whisper-api", memory_gb = 32, cpus = 8 }, 1, "<= 2 chunks")
  T.eq(w { duration = 3000, engine = "whisper-api", memory_gb = 32, cpus = 8 }, 3, "5 chunks")
  T.eq(w { duration = 6000, engine = "whisper-api", memory_gb = 32, cpus = 8 }, 5, "10 chunks")
  T.eq(w { duration = 600 * 30, engine = "whisper-api", memory_gb = 32, cpus = 8 }, 10, "30 chunks: max")
  T.eq(w { duration = 600 * 14, engine = "whisper-api", memory_gb = 32, cpus = 8 }, 7, "14 chunks: half")
  T.eq(w { duration = 300 * 30, engine = "whisper-cpp", memory_gb = 8, cpus = 16 }, 2, "memory: 8*0.7/2.5")
  T.eq(w { duration = 300 * 30, engine = "sphinx", memory_gb = 32, cpus = 2 }, 2, "CPU-bound: cores")
  T.eq(w { duration = 300 * 30, engine = "openai", chunk = 60, memory_gb = 32, cpus = 2, max = 4 }, 4)
  T.ok(stages.available_memory_gb() > 0)
end)

return T.run()
