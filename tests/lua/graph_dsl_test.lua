-- Stage graphs: the DSL's validation messages, and config resolution.
local sl = require "sluice"
local T = require "sluice.app.test"
local config = require "sluice.app.config"

local function run(item) return item end

local function declare(stages, extra)
  local spec = { sources = { files = sl.inputs() }, stages = stages }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return sl.pipeline "v" (spec)
end

T.case("a valid pipeline declares and knows its order", function()
  local p = declare {
    b = { from = "a", run = run },
    a = { from = "files", run = run },
    c = sl.join { inputs = { "a", "b" }, gate = "a", run = run },
  }
  T.same(p.order, { "files", "a", "b", "c" })
  T.ok(tostring(p):find("3 stages", 1, true))
  T.ok(sl.pipeline { name = "tbl", sources = { s = function() end }, stages = {} })
end)

T.case("validation names the stage and the option", function()
  local cases = {
    { { a = { from = "nope", run = run } },
      "pipeline 'v': stage 'a': option 'from' names unknown stage 'nope' (known: a, files)" },
    { { a = { from = "files" } }, "stage 'a': option 'run' is missing" },
    { { a = { run = run } }, "stage 'a': option 'from' is missing" },
    { { a = { from = "files", run = "x" } }, "stage 'a': option 'run' must be a function (got string)" },
    { { a = { from = "files", run = run, workers = "4" } }, "stage 'a': option 'workers' must be a positive integer (got \"4\")" },
    { { a = { from = "files", run = run, workers = 0 } }, "option 'workers' must be a positive integer (got 0)" },
    { { a = { from = "files", run = run, workers = 1.5 } }, "option 'workers' must be a positive integer (got 1.5)" },
    { { a = { from = "files", run = run, queue = -1 } }, "stage 'a': option 'queue' must be a non-negative integer" },
    { { a = { from = "files", run = run, wrokers = 2 } }, "stage 'a': unknown option 'wrokers'" },
    { { a = { from = "files", run = run, batch = { size = 0 } } }, "stage 'a': option 'batch.size' must be a positive integer" },
    { { a = { from = "files", run = run, batch = { wait = "5" } } }, "stage 'a': option 'batch.wait' must be a non-negative number" },
    { { a = { from = "files", run = run, batch = {} } }, "stage 'a': option 'batch' needs 'size' and/or 'wait'" },
    { { a = { from = "files", run = run, batch = { sise = 3 } } }, "stage 'a': unknown option 'batch.sise'" },
    { { a = { from = "files", run = run, retry = { attempts = 0 } } }, "stage 'a': option 'retry.attempts' must be a positive integer" },
    { { a = { from = "files", run = run, retry = { backoff = -1 } } }, "stage 'a': option 'retry.backoff' must be a non-negative number" },
    { { a = { from = "files", run = run, retry = { retry_if = 3 } } }, "stage 'a': option 'retry.retry_if' must be a function" },
    { { a = { from = "files", run = run, timeout = 0 } }, "stage 'a': option 'timeout' must be a positive number" },
    { { a = { from = "files", run = run, limits = { "gpu" } } }, "stage 'a': option 'limits' names unknown limit 'gpu' (declared: none)" },
    { { a = { from = "files", run = run, order = "yes" } }, "stage 'a': option 'order' must be true or {start=N}" },
    { { a = { from = "files", run = run, collect = "some" } }, "stage 'a': option 'collect' must be true (per key), \"all\" or \"end\"" },
    { { a = { from = "files", run = run, collect = true, batch = { size = 2 } } }, "stage 'a': options 'collect' and 'batch' exclude each other" },
    { { a = sl.join { inputs = { "files" }, gate = "x", run = run } }, "stage 'a': option 'join.gate' ('x') must be one of join.inputs" },
    { { a = sl.join { inputs = {}, run = run } }, "stage 'a': option 'join.inputs' must be a non-empty list" },
    { { a = { from = "b", run = run }, b = { from = "a", run = run } }, "pipeline 'v': stages: cycle: a -> b -> a" },
    { { a = { from = "a", run = run } }, "stage 'a': reads from itself" },
    { { files = { from = "files", run = run } }, "stage 'files': has the same name as a source" },
  }
  for _, c in ipairs(cases) do T.raises(function() declare(c[1]) end, c[2]) end
  T.raises(function() sl.pipeline "v" { stages = {} } end, "at least one source is needed")
  T.raises(function() sl.pipeline "v" { sources = { s = 3 }, stages = {} } end, "source 's': must be sl.inputs()")
  T.raises(function() declare({}, { limits = { gpu = 3 } }) end, "limit 'gpu': must be a limiter with :acquire()")
  T.raises(function() declare({}, { stagse = {} }) end, "unknown option 'stagse'")
  T.raises(function()
    declare({ a = { from = "files", run = run } }):start { config = { stages = { a = { workers = "x" } } } }
  end, "stage 'a': option 'workers' must be a positive integer (got \"x\")")
  T.raises(function()
    declare({ a = { from = "files", run = run } }):start { config = { stages = { zz = { workers = 2 } } } }
  end, "config 'stages.zz': names no stage")
end)

T.case("config stages.<name> overrides stage options", function()
  local seen = {}
  local p = sl.pipeline "ov" {
    defaults = { stages = { s = { workers = 3 } } },
    sources = { gen = function(ctx) for i = 1, 9 do ctx:emit(i) end end },
    stages = { s = { from = "gen", workers = 1, run = function(item, ctx)
      seen[#seen + 1] = ctx.config.stages.s.workers
      sl.sleep(0.01)
    end } },
  }
  local job = p:start {}
  sl.sleep(0.005)
  T.eq(job.stages.s.workers, 3)
  job:wait()
  local job2 = p:start { config = { stages = { s = { workers = 2 } } } }
  T.eq(job2.stages.s.workers, 2)
  job2:wait()
end)

T.case("config: defaults < file < environment < --set", function()
  local dir = os.getenv("TMPDIR") or "/tmp"
  local lua_path = dir .. "/sluice_cfg_test_" .. math.random(1e9) .. ".lua"
  local f = assert(io.open(lua_path, "w"))
  f:write('return { providers = { stt = "file-stt", vlm = "file-vlm", llm = "file-llm" }, n = 2 }')
  f:close()
  local env = { SLUICE_PROVIDERS_VLM = "env-vlm", SLUICE_PROVIDERS_LLM = "env-llm", SLUICE_N = "5",
    SLUICE_UNKNOWN = "ignored" }
  local cfg = assert(config.resolve {
    defaults = { providers = { stt = "def", vlm = "def", llm = "def", judge = "def" }, n = 1, flag = false },
    file = lua_path, env = env,
    sets = { "providers.llm=set-llm", "flag=true", "new.key=[1,2]", "obj={\"a\":1}", "s=hello world" },
  })
  os.remove(lua_path)
  T.eq(cfg.providers.judge, "def")
  T.eq(cfg.providers.stt, "file-stt")
  T.eq(cfg.providers.vlm, "env-vlm")
  T.eq(cfg.providers.llm, "set-llm")
  T.eq(cfg.n, 5)
  T.eq(math.type(cfg.n), "integer")
  T.eq(cfg.flag, true)
  T.same(cfg.new.key, { 1, 2 })
  T.same(cfg.obj, { a = 1 })
  T.eq(cfg.s, "hello world")
  T.eq(cfg.unknown, nil)
  T.eq(config.env_name("providers.stt"), "SLUICE_PROVIDERS_STT")

  local json_path = dir .. "/sluice_cfg_test_" .. math.random(1e9) .. ".json"
  f = assert(io.open(json_path, "w"))
  f:write('{"a": {"b": 3}, "c": null}')
  f:close()
  cfg = assert(config.resolve { defaults = { a = { b = 1, d = 2 } }, file = json_path })
  os.remove(json_path)
  T.eq(cfg.a.b, 3)
  T.eq(cfg.a.d, 2)
  local r, err = config.resolve { file = "/nonexistent/x.json" }
  T.eq(r, nil)
  T.ok(err:find("cannot read config file '/nonexistent/x.json'", 1, true))
  r, err = config.resolve { sets = { "novalue" } }
  T.eq(r, nil)
  T.ok(err:find("--set expects key=value", 1, true))
end)

T.case("config: secrets are never shown", function()
  local text = config.format { api_key = "sk-123", openai = { token = "t0k", model = "gpt" },
    db_password = "pw", client_secret = "s", plain = 1 }
  T.ok(not text:find("sk-123", 1, true) and not text:find("t0k", 1, true) and not text:find("pw\"", 1, true))
  T.ok(text:find('openai.model = "gpt"', 1, true))
  T.ok(text:find("plain = 1", 1, true))
  T.ok(text:find('api_key = "<redacted>"', 1, true))
end)

T.case("events bus: subscribe, unsubscribe, failing listener removed", function()
  local events = require "sluice.runtime.events"
  local bus = events.new()
  local got = {}
  local off = bus:on(function(ev) got[#got + 1] = ev.n end)
  bus:on(function() error("listener bug") end)
  bus:emit { event = "a" }
  bus:emit { event = "b" }
  off()
  bus:emit { event = "c" }
  T.same(got, { 1, 2 })
  T.eq(bus.count, 0)
  T.eq(events.encode { f = function() end, x = 1 }:match('"x":1') ~= nil, true)
end)

T.case("progress: live lines, in-place redraw on a tty, plain blocks otherwise, end table", function()
  local progress = require "sluice.app.progress"
  local p = sl.pipeline "prog" {
    sources = { files = sl.inputs() },
    stages = {
      a = { from = "files", workers = 2, run = function(item) sl.sleep(0.05) return item.data end },
      b = { from = "a", run = function(item) if item.key == "x3" then error("boom") end return item.data end },
    },
  }
  local job = p:start { inputs = { "x1", "x2", "x3", "x4" } }
  local written = {}
  local stream = { write = function(self, ...) for _, v in ipairs { ... } do written[#written + 1] = v end end,
    flush = function() end }
  local tty = progress.new(job, { stream = stream, tty = true, interval = 0.02 }):start()
  sl.sleep(0.03)
  local mid = job:stats()
  local lines = progress.lines(mid)
  T.eq(#lines, 3, "one line per source and stage")
  T.ok(lines[2]:find("^a%s"), lines[2])
  T.ok(lines[2]:find("run 2", 1, true), "two running: " .. lines[2])
  tty:note("a line above the view")
  local s = job:wait()
  tty:stop()
  local text = table.concat(written)
  T.ok(text:find("\27%[3A"), "the block is redrawn in place (cursor up 3 lines)")
  T.ok(text:find("\27%[2K"), "lines are cleared before redraw")
  T.ok(text:find("\27%[3A\27%[Ja line above the view\n"), "a note clears the block and prints above it")
  T.ok(text:find("4/4", 1, true), "done/total once the total is known: " .. text:sub(-400))
  written = {}
  local plain = progress.new(job, { stream = stream, tty = false })
  plain:draw()
  text = table.concat(written)
  T.ok(not text:find("\27", 1, true), "no escape codes when not a tty")
  T.ok(text:find("prog done", 1, true), text)
  local tbl = progress.table(s)
  T.ok(tbl:find("prog prog%-[%w%-]+: done in [%d.]+m?s, 1 failed"), tbl)
  T.ok(tbl:find("\nb%s+4%s+1%s+0%s+%d+%%"), tbl)
  T.ok(tbl:find("\na%s+4%s+0%s+0%s+%d+%%%s+%d+ms%s+%d+ms"), tbl)
end)

T.case("job:graph() describes the stages in graph order", function()
  local p = sl.pipeline "desc" {
    sources = { v = sl.inputs() },
    limits = { gpu = sl.semaphore(1) },
    stages = {
      a = { from = "v", batch = { size = 4, wait = 1 }, workers = 3, run = run },
      b = sl.join { inputs = { "a", "v" }, gate = "a", run = run, limits = { "gpu" } },
    },
  }
  local job = p:start { inputs = {} }
  local g = job:graph()
  job:wait()
  T.eq(#g, 3)
  T.same(g[1], { name = "v", kind = "source", from = {} })
  T.eq(g[2].name, "a")
  T.same(g[2].batch, { size = 4, wait = 1 })
  T.eq(g[2].workers, 3)
  T.same(g[3].from, { "a", "v" })
  T.eq(g[3].gate, "a")
  T.same(g[3].limits, { "gpu" })
  T.same(job:stats().stages.b.from, { "a", "v" })
end)

T.case("progress: the media line's ETA from the slowest stage's progress events", function()
  local progress = require "sluice.app.progress"
  T.eq(progress.media_eta({}, 10), nil, "nothing reported: no line")
  -- two keys of 100 s each; frames is through 150 s of 200, merge through 50 s: merge sets the
  -- pace; 60 s for a quarter: 180 s to go
  local reports = { frames = { a = { done = 100, total = 100 }, b = { done = 50, total = 100 } },
    merge = { a = { done = 30, total = 100 }, b = { done = 20, total = 100 } } }
  local frac, eta = progress.media_eta(reports, 60)
  T.near(frac, 0.25, 1e-9)
  T.near(eta, 180, 1e-9)
  T.eq(progress.media_line(reports, 60), "media  ███········· 50.0s/3m20s   25%  eta 3m00s")
  -- with samples: the rate over the later half of the run (a slow start left out; the window
  -- starts at the last sample before it): from 2% at 20 s to 25% at 60 s, 0.23 in 40 s, so
  -- 0.75 * 40 / 0.23 s for the 75% left, less the 5 s since the last sample
  local hist = {}
  for _, smp in ipairs { { 5, 0.01 }, { 20, 0.02 }, { 40, 0.10 }, { 60, 0.25 } } do
    progress.eta_sample(hist, smp[1], smp[2], 0)
  end
  T.eq(#hist, 3, "samples older than half the run are dropped: " .. #hist)
  T.eq(hist[1].t, 20)
  local _, eta2 = progress.media_eta(reports, 65, hist, 65)
  T.near(eta2, 0.75 * 40 / 0.23 - 5, 1e-9)
  -- the job's ETA counts a stage that lags behind the media: 30 s into a lecture, frames is
  -- 20% through; summary (fed from fusion, fed from frames and merge) has had 48 items, done 38
  -- at 4 a second: 48 / 0.2 = 240 items in all, (240 - 38) / 4 = 50.5 s to go, longer than the
  -- media's 40 s; a collect stage (no rate yet) and a stage without a reporting upstream (stt)
  -- count for nothing; frames' own item (1 in) neither
  local lrep = { frames = { k = { done = 360, total = 1800 } }, merge = { k = { done = 900, total = 1800 } } }
  local stats = { order = { "video", "audio", "stt", "merge", "frames", "fusion", "summary", "report" }, stages = {
    video = { kind = "source", done = 1, total = 1, finished = true, from = {} },
    audio = { kind = "stage", ["in"] = 1, done = 0, rate = 0, from = { "video" } },
    stt = { kind = "stage", ["in"] = 60, done = 40, rate = 0.5, from = { "audio" } },
    merge = { kind = "stage", ["in"] = 40, done = 40, rate = 4, from = { "stt" } },
    frames = { kind = "stage", ["in"] = 1, done = 0, rate = 0, from = { "video" } },
    fusion = { kind = "stage", ["in"] = 100, done = 95, rate = 10, from = { "merge", "frames" } },
    summary = { kind = "stage", ["in"] = 48, done = 38, rate = 4, from = { "fusion" } },
    report = { kind = "stage", ["in"] = 38, done = 0, rate = 0, from = { "summary" } },
  } }
  T.near(progress.job_eta(stats, lrep, 40), (240 - 38) / 4, 1e-9)
  -- nothing lags: the media's ETA; fusion's (100 / 0.2 - 95) / 10 = 40.5 s would lag by half a second
  stats.stages.summary.rate = 100
  stats.stages.fusion.rate = 20
  T.eq(progress.job_eta(stats, lrep, 40), 40)
  -- a total known (the upstream done) is used as is; a finished stage counts for nothing
  stats.stages.summary.rate, stats.stages.summary.total = 4, 100
  stats.stages.fusion.finished = true
  T.near(progress.job_eta(stats, lrep, 10), (100 - 38) / 4, 1e-9)
  T.eq(progress.job_eta(stats, lrep, nil), nil, "no media ETA: none")
  -- the view's line shows the job's ETA: 5 s for 20% gives the media 20 s, summary needs 50.5 s
  stats.stages.summary.total = nil
  T.eq(progress.media_line(lrep, 5, nil, nil, nil, stats), "media  ██·········· 6m00s/30m00s   20%  eta 50.5s")
  -- a job that runs: its stages' progress events reach the view's line
  local p = sl.pipeline "prog" {
    sources = { gen = function(ctx) ctx:emit(1, { key = "k" }) end },
    stages = { a = { from = "gen", run = function(_, ctx)
      ctx:event("progress", { done = 10, total = 40 })
      sl.sleep(0.3)
    end } },
  }
  local job = p:start {}
  local view = progress.new(job, { stream = { write = function() end, flush = function() end }, tty = false, interval = 100 })
  view:start()
  sl.sleep(0.15)
  local f = progress.media_eta(view.reports, 1)
  T.near(f, 0.25, 1e-9, "the view heard the stage")
  job:wait()
  view:stop()
end)

return T.run()
