-- A small pipeline for the preflight tests (tests/py/test_first_minutes.py): file inputs, an
-- stt provider chosen by its settings (never called), settings with defaults and one declared
-- without. Stage "stt" writes OUT/ran-<key> so a test sees whether anything ran; an input
-- whose text is "bad provider" makes it ask the library for a provider its own settings name
-- and that does not exist (an error raised inside the library, as a dead letter).
local sl = require "sluice"

return sl.pipeline "pre" {
  defaults = { providers = { stt = "sphinx" }, window = 30, fusion = "by_slide" },
  settings = { keep = "a setting without a default" },
  inputs = "files",
  sources = { files = sl.inputs() },
  stages = {
    stt = { from = "files", retry = { attempts = 1 }, run = function(item, ctx)
      local f = assert(io.open(item.data))
      local text = f:read("a")
      f:close()
      if text:find("bad provider", 1, true) then
        require("sluice.blocks.stages").provider({ job = {}, config = { providers = { stt = "nope" } } }, "stt")
      end
      local out = assert(io.open(ctx.out .. "/ran-" .. item.key, "w"))
      out:write("ran")
      out:close()
      return item.data
    end },
  },
}
