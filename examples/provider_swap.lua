-- provider_swap.lua: which provider serves a role is configuration, never code. The same
-- step summarizes with the offline extractive provider, then with a provider registered here
-- (a stand-in for your own model), chosen by `providers.llm` (on the command line:
-- --set providers.llm=headline).
-- Run: sluice run examples/provider_swap.lua
local providers = require "sluice.providers"

-- A provider is a module with `roles` and `new(cfg, role)` returning an object with the
-- role's methods (llm: summarize, judge, complete).
providers.register("headline", {
  roles = { llm = true },
  new = function(cfg)
    return {
      provider = "headline",
      summarize = function(_, s) return (s:match("^[^.!?]+") or s):upper() .. (cfg.suffix or "") end,
    }
  end,
})

local text = "Queues hold work between stages. A slow stage makes its queue fill. " ..
  "Backpressure stops the fast stage before memory runs out. Queues are the whole trick."

local function summarize(config)
  local llm = providers.for_role("llm", config)
  return llm:summarize(text, { sentences = 1 })
end

local a = summarize { providers = { llm = "extractive" } }
local b = summarize { providers = { llm = "headline" }, headline = { suffix = "!" } }
print("extractive: " .. a)
print("headline:   " .. b)
assert(a ~= "" and text:find(a:sub(1, 20), 1, true), "an extractive summary is a sentence of the text")
assert(b == "QUEUES HOLD WORK BETWEEN STAGES!", b)
