-- The local providers are chosen by configuration through the registry, like remote ones.
local T = require "sluice.app.test"
local providers = require "sluice.providers"

T.case("the registry lists the local providers for their roles", function()
  local function has(list, name)
    for _, n in ipairs(list) do if n == name then return true end end
    return false
  end
  T.ok(has(providers.list("stt"), "sphinx"))
  T.ok(has(providers.list("stt"), "exec"))
  T.ok(has(providers.list("vlm"), "tesseract"))
  T.ok(has(providers.list("llm"), "extractive"))
  T.ok(has(providers.list("filter"), "worker"))
end)

T.case("for_role picks a local provider from configuration", function()
  local conf = { providers = { stt = "sphinx", vlm = "tesseract", llm = "extractive" },
    sphinx = { workers = 2 }, tesseract = { lang = "eng" } }
  local stt = providers.for_role("stt", conf)
  T.eq(stt.pool.size, 2)
  local r = T.ok(stt:transcribe { path = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav" })
  T.eq(r.provider, "sphinx")
  T.ok(#r.segments >= 1)
  stt:close()
  local llm = providers.for_role("llm", conf)
  local s, info = llm:summarize("Magma rises through the crust. Volcanoes erupt when gas pressure is high. Lava cools into rock.", { sentences = 1 })
  T.eq(info.provider, "extractive (local fallback)")
  T.ok(#s > 0)
  local filter = providers.get("filter", "worker", { log = function() end })
  local info2 = T.ok(filter:call("info"))
  T.ok(#info2.classes > 0)
  filter:close()
  T.raises(function() providers.get("stt", "tesseract") end, "cannot do 'stt'")
end)

return T.run()
