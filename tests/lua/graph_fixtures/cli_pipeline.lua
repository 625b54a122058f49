-- A small pipeline for graph_cli_test.lua: config `mode` chooses ok / fail / slow.
local sl = require "sluice"
return sl.pipeline "clitest" {
  description = "test pipeline",
  defaults = { mode = "ok", api_key = "sk-do-not-print", stages = { words = { workers = 2 } } },
  sources = { files = sl.inputs() },
  stages = {
    words = { from = "files", run = function(item, ctx)
      if ctx.config.mode == "slow" then sl.sleep(0.2) end
      for i = 1, 3 do ctx:emit(item.key .. ":" .. i, { seq = i }) end
    end },
    check = { from = "words", workers = 2, retry = { attempts = 2, backoff = 0.01 }, run = function(item, ctx)
      if ctx.config.mode == "fail" and item.key == "bad" then error("cannot handle " .. item.data, 0) end
      if ctx.config.mode == "slow" then sl.sleep(0.2) end
      return item.data
    end },
    all = { from = "check", collect = true, emit = true, run = function(items) return #items end },
  },
}
