-- Every remote provider reads its credentials and endpoint by one rule (providers.setting):
-- a setting given (config file, --set), else $SLUICE_<PROVIDER>_<SETTING>, else the vendor's
-- own variable. SLUICE_GEMINI_API_KEY used to be ignored (as were SLUICE_OPENAI_API_KEY and
-- the CLOVA ones): only GEMINI_API_KEY was read.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local P = require "pltest"
local cjson = require "cjson"

local VARS = { "OPENAI_API_KEY", "OPENAI_BASE_URL", "GEMINI_API_KEY", "GEMINI_BASE_URL", "CLOVA_SPEECH_SECRET",
  "CLOVA_SPEECH_INVOKE_URL", "SLUICE_OPENAI_API_KEY", "SLUICE_OPENAI_BASE_URL", "SLUICE_GEMINI_API_KEY",
  "SLUICE_GEMINI_BASE_URL", "SLUICE_CLOVA_SECRET", "SLUICE_CLOVA_INVOKE_URL" }

-- What the providers read in a process whose environment holds only `set` of VARS.
local function probe(set)
  local env = {}
  for _, k in ipairs(VARS) do env[k] = false end
  for k, v in pairs(set) do env[k] = v end
  local r = assert(sl.exec({ P.bin, "run", P.src .. "/tests/lua/fixtures/provider_env_probe.lua" }, { env = env }))
  T.eq(r.status, 0, r.stderr)
  return cjson.decode(r.stdout)
end

T.case("SLUICE_<PROVIDER>_<SETTING> gives each remote provider its key and endpoint", function()
  local got = probe { SLUICE_OPENAI_API_KEY = "sk-o", SLUICE_GEMINI_API_KEY = "g-key",
    SLUICE_GEMINI_BASE_URL = "http://127.0.0.1:9/v1beta/", SLUICE_CLOVA_SECRET = "c-secret",
    SLUICE_CLOVA_INVOKE_URL = "http://127.0.0.1:9/clova" }
  T.eq(got.openai.secret, "sk-o")
  T.eq(got.openai.missing, 0)
  T.eq(got.gemini.secret, "g-key")
  T.eq(got.gemini.url, "http://127.0.0.1:9/v1beta")
  T.eq(got.gemini.missing, 0)
  T.eq(got.clova.secret, "c-secret")
  T.eq(got.clova.url, "http://127.0.0.1:9/clova")
  T.eq(got.clova.missing, 0)
end)

T.case("the SLUICE_ name wins over the vendor's variable, which still works alone", function()
  local got = probe { SLUICE_GEMINI_API_KEY = "ours", GEMINI_API_KEY = "vendor", OPENAI_API_KEY = "sk-vendor",
    CLOVA_SPEECH_SECRET = "c-vendor", CLOVA_SPEECH_INVOKE_URL = "http://127.0.0.1:9/c" }
  T.eq(got.gemini.secret, "ours")
  T.eq(got.openai.secret, "sk-vendor")
  T.eq(got.clova.secret, "c-vendor")
end)

T.case("none set: each says what it needs", function()
  local got = probe {}
  T.eq(got.openai.missing, 1)
  T.eq(got.gemini.missing, 1)
  T.eq(got.clova.missing, 2)
  T.eq(got.gemini.secret, false)
end)

T.case("sluice run takes SLUICE_GEMINI_API_KEY (no 'needs an API key' refusal); without it, refused", function()
  local sample = P.sample("podcast") .. "/podcast"
  local function dry(key)
    local env = {}
    for _, k in ipairs(VARS) do env[k] = false end
    env.SLUICE_GEMINI_API_KEY = key
    return assert(sl.exec({ P.bin, "run", "pipelines/podcast.lua", sample .. "/episode2.m4a", "--out",
      "/tmp/sluice-provider-env-unused", "--no-store", "--set", "providers.llm=gemini", "--dry-run" },
      { cwd = P.src, env = env, timeout = 60 }))
  end
  local r = dry("g-key")
  T.eq(r.status, 0, r.stderr)
  T.ok(not r.stderr:find("needs an API key", 1, true), r.stderr)
  r = dry(false)
  T.eq(r.status, 2)
  T.ok(r.stderr:find("gemini needs an API key", 1, true), r.stderr)
end)

return T.run()
