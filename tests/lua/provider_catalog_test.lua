-- The vendors' model lists (sluice.providers.catalog) against tests/fakeapi/server.py:
-- fetched with the key, cached for a day under the cache directory, paged; the preflight
-- check of a run (an unknown model or one that cannot do its role exits 2 before any work,
-- naming the nearest models; shutdown dates are warnings); `sluice providers --check`.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" ..
    (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
  return require "pltest"
end)()
local fake = require "fakeapi"
local providers = require "sluice.providers"
local catalog = require "sluice.providers.catalog"

local srv, tmp, cache
local OKEY, GKEY = "sk-catalog-test-123456", "AIza-catalog-test"

local function conf(extra)
  local c = { openai = { base_url = srv.url .. "/v1", api_key = OKEY },
    gemini = { base_url = srv.url .. "/v1beta", api_key = GKEY } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function today(date) catalog.now = function() return os.time { year = tonumber(date:sub(1, 4)),
  month = tonumber(date:sub(6, 7)), day = tonumber(date:sub(9, 10)), hour = 12 } end end
local real_now = catalog.now

T.setup("setup", function()
  srv = fake.start()
  tmp = P.tmpdir("catalog")
  cache = tmp .. "/cache"
  catalog.cache_dir = function() return cache .. "/sluice" end -- as XDG_CACHE_HOME=cache does
end)

T.case("the model list is fetched with the key, then read from the cache for a day", function()
  local p = providers.get("llm", "openai", conf().openai)
  local list, info = catalog.models(p)
  T.ok(list, info)
  T.eq(info.cached, false)
  local ids = {}
  for _, m in ipairs(list) do ids[m.id] = m end
  T.eq(ids["gpt-4o-mini"].shutdown_date, "2027-01-14")
  T.eq(ids["whisper-1"].shutdown_date, "2027-02-26")
  T.eq(ids["gpt-5.4-mini"].shutdown_date, nil)
  local req = srv:requests("/v1/models")[1]
  T.eq(req.headers.Authorization, "Bearer " .. OKEY)
  -- the file: under the cache directory, one per provider and base URL, without the key
  local body = T.slurp(info.file)
  local prefix = cache .. "/sluice/models-openai-"
  T.eq(info.file:sub(1, #prefix), prefix)
  T.ok(not body:find(OKEY, 1, true), "no key in the cache")
  T.eq(cjson.decode(body).base_url, srv.url .. "/v1")
  local _, info2 = catalog.models(p)
  T.eq(info2.cached, true)
  T.eq(#srv:requests("/v1/models"), 1, "no second request")
  -- a day later the list is fetched again
  local f = assert(io.open(info.file, "wb"))
  f:write((body:gsub('"fetched":%d+', '"fetched":' .. (os.time() - 86400 - 5))))
  f:close()
  local _, info3 = catalog.models(p)
  T.eq(info3.cached, false)
  T.eq(#srv:requests("/v1/models"), 2)
end)

T.case("gemini: the list is read page by page, with what each model supports", function()
  srv:reset()
  srv:control { page_size = 2 }
  local p = providers.get("vlm", "gemini", conf().gemini)
  local list = T.ok(catalog.models(p, { refresh = true }))
  srv:control { page_size = 50 }
  local reqs = srv:requests("/v1beta/models")
  T.eq(#reqs, 3, "six models, two a page")
  T.eq(reqs[1].headers["x-goog-api-key"] or reqs[1].headers["X-Goog-Api-Key"], GKEY)
  T.eq(reqs[2].query.pageToken, "2")
  T.eq(#list, 6)
  local by = {}
  for _, m in ipairs(list) do by[m.id] = m end
  T.eq(by["gemini-3.5-flash"].thinking, true)
  T.eq(by["gemini-3.5-flash"].output_token_limit, 65536)
  T.same(by["gemini-embedding-001"].methods, { "embedContent", "countTokens" })
  T.eq(by["gemini-2.0-flash"], nil, "shut down")
end)

T.case("preflight: unknown models and models that cannot do their role, naming the nearest", function()
  local ok, err = catalog.preflight(conf { providers = { vlm = "gemini", llm = "gemini" },
    gemini = { base_url = srv.url .. "/v1beta", api_key = GKEY, model = "gemini-2.0-flash" } })
  T.eq(ok, nil)
  T.eq(err, "gemini: model 'gemini-2.0-flash' (vlm, llm) is not in gemini's model list at " .. srv.url ..
    "/v1beta; nearest: gemini-3.5-flash, gemini-3-flash, gemini-3.5-flash-lite")
  ok, err = catalog.preflight(conf { providers = { vlm = "gemini" },
    gemini = { base_url = srv.url .. "/v1beta", api_key = GKEY, vlm_model = "gemini-embedding-001" } })
  T.eq(err, "gemini: model 'gemini-embedding-001' cannot do vlm: it does not support generateContent " ..
    "(it supports: embedContent, countTokens)")
  ok, err = catalog.preflight(conf { providers = { stt = "openai", llm = "openai" },
    openai = { base_url = srv.url .. "/v1", api_key = OKEY, stt_model = "gpt-5.4-mini", llm_model = "gpt-5.4-mimi" } })
  T.ok(err:find("openai: model 'gpt-5.4-mini' cannot do stt: it is a chat model", 1, true), err)
  T.ok(err:find("openai: model 'gpt-5.4-mimi' (llm) is not in openai's model list at " .. srv.url ..
    "/v1; nearest: gpt-5.4-mini, gpt-4.1-mini, gpt-5-mini", 1, true), err)
  -- the defaults are all there; local providers and roles not configured are not checked
  T.ok(catalog.preflight(conf { providers = { stt = "openai", vlm = "gemini", llm = "openai" } }))
  T.ok(catalog.preflight(conf { providers = { stt = "sphinx", vlm = "tesseract" } }))
  -- without a key there is nothing to ask
  T.ok(catalog.preflight { providers = { vlm = "gemini" },
    gemini = { base_url = srv.url .. "/v1beta", api_key = "", model = "nosuch" } })
end)

T.case("preflight: a shutdown date within 60 days is one warning per model with the date", function()
  local lines = {}
  local function warn(l) lines[#lines + 1] = l end
  today("2027-01-01")
  local ok, err = pcall(catalog.preflight, conf { providers = { stt = "openai", vlm = "openai", llm = "openai" },
    openai = { base_url = srv.url .. "/v1", api_key = OKEY, model = "gpt-4o-mini", stt_model = "whisper-1" } },
    { warn = warn })
  catalog.now = real_now
  T.ok(ok and err, tostring(err))
  T.same(lines, {
    "warning: openai model whisper-1 (stt) shuts down on 2027-02-26, in 56 days; set openai.stt_model " ..
      "to a current model, e.g. gpt-transcribe",
    "warning: openai model gpt-4o-mini (vlm, llm) shuts down on 2027-01-14, in 13 days; set " ..
      "openai.vlm_model / openai.llm_model to a current model, e.g. gpt-5.4-mini",
  })
  -- further away than 60 days: a note, not a warning
  lines = {}
  today("2026-12-06")
  catalog.preflight(conf { providers = { stt = "openai" },
    openai = { base_url = srv.url .. "/v1", api_key = OKEY, stt_model = "whisper-1" } }, { warn = warn })
  catalog.now = real_now
  T.same(lines, { "note: openai model whisper-1 (stt) shuts down on 2027-02-26, in 82 days" })
end)

T.case("a list that cannot be fetched is a warning, not a failure", function()
  P.rm(cache)
  local lines = {}
  srv:control { faults = { { kind = "401", path = "/v1/models" } } }
  local ok = catalog.preflight(conf { providers = { llm = "openai" } }, {
    warn = function(l) lines[#lines + 1] = l end,
  })
  T.eq(ok, true)
  T.eq(#lines, 1)
  T.ok(lines[1]:find("^warning: cannot check openai's models: openai: model list failed: HTTP 401: " ..
    "Incorrect API key provided: %[redacted%]%."), lines[1])
  T.ok(not lines[1]:find(OKEY, 1, true))
  srv:reset()
end)

-- `sluice run` with an unknown model: exit 2 before any work, the nearest models named.
T.case("sluice run: an unknown model exits 2 before any work; the second time from the cache", function()
  local sample = P.sample("lecture") .. "/lecture.mp4"
  local out = tmp .. "/out"
  local env = { XDG_CACHE_HOME = tmp .. "/cli-cache", SLUICE_PROGRESS = "off" }
  local args = { "pipelines/lecture.lua", sample, "--out", out, "--set", "providers.vlm=gemini",
    "--set", "gemini.base_url=" .. srv.url .. "/v1beta", "--set", "gemini.api_key=" .. GKEY,
    "--set", "gemini.vlm_model=gemini-2.0-flash" }
  srv:reset()
  local times = {}
  for run = 1, 2 do
    local t0 = sl.now()
    local r = P.run(args, { env = env })
    times[run] = sl.now() - t0
    T.eq(r.status, 2, r.stderr)
    T.eq(r.stderr, "sluice run: gemini: model 'gemini-2.0-flash' (vlm) is not in gemini's model list at " ..
      srv.url .. "/v1beta; nearest: gemini-3.5-flash, gemini-3-flash, gemini-3.5-flash-lite\n")
    T.eq(P.exists(out), false, "no output directory: nothing ran")
  end
  print(string.format("     exit 2 after %.3f s (list fetched), %.3f s (list cached)", times[1], times[2]))
  T.eq(#srv:requests("/v1beta/models"), 1, "the second run read the cached list")
  T.eq(#srv:requests("/v1beta/models/gemini"), 0, "no generateContent request")
end)

T.case("sluice providers --check: what the vendors say about the models a run would use", function()
  local env = { XDG_CACHE_HOME = tmp .. "/cli-cache", SLUICE_TODAY = "2027-01-01" }
  local function providers_cmd(...)
    return assert(sl.exec({ P.bin, "providers", ... }, { cwd = P.src, env = env }))
  end
  local base = { "--set", "openai.base_url=" .. srv.url .. "/v1", "--set", "openai.api_key=" .. OKEY,
    "--set", "gemini.base_url=" .. srv.url .. "/v1beta", "--set", "gemini.api_key=" .. GKEY }
  local r = providers_cmd(table.unpack(base))
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stdout:find("\nopenai +llm, stt, vlm +stt gpt%-transcribe; vlm, llm gpt%-5%.4%-mini\n"), r.stdout)
  T.ok(r.stdout:find("\ngemini +llm, vlm +vlm, llm gemini%-3%.5%-flash\n"), r.stdout)
  T.ok(r.stdout:find("\nsphinx +stt +%-\n"), r.stdout)
  T.ok(not r.stdout:find("available", 1, true), "no --check: nothing asked")
  r = providers_cmd("--check", "--set", "openai.llm_model=gpt-4o-mini", table.unpack(base))
  T.eq(r.status, 0, r.stderr)
  T.ok(r.stdout:find("  gpt-4o-mini (llm): available, owned by system; shuts down on 2027-01-14, in 13 days (warning)\n",
    1, true), r.stdout)
  T.ok(r.stdout:find("  gemini-3.5-flash (vlm, llm): available, thinking, 1048576 in / 65536 out tokens\n", 1, true),
    r.stdout)
  r = providers_cmd("--check", "--set", "gemini.model=gemini-2.5-flash", table.unpack(base))
  T.eq(r.status, 1, "a model that does not exist")
  T.ok(r.stdout:find("  gemini-2.5-flash (vlm, llm): model 'gemini-2.5-flash' (vlm, llm) is not in gemini's " ..
    "model list", 1, true), r.stdout)
  r = providers_cmd("--check", "--set", "openai.base_url=" .. srv.url .. "/v1", "--set", "openai.api_key=")
  T.ok(r.stdout:find("no key (OPENAI_API_KEY or --set openai.api_key=...): not checked", 1, true), r.stdout)
  r = providers_cmd("--bogus")
  T.eq(r.status, 2)
end)

T.teardown("teardown", function()
  srv:stop()
  P.rm(tmp)
end)

return T.run()
