-- custom_stage.lua: a stage is a Lua function. This pipeline reads text files, counts words in
-- each (2 workers), and a collect stage ranks the files once all are counted.
-- Run: sluice run examples/custom_stage.lua
local sl = require "sluice"
local text = require "sluice.blocks.text"

local count_words = {
  from = "files", workers = 2,
  run = function(item)                       -- item.data is the input path
    local f = assert(io.open(item.data))
    local n = #text.words(f:read("a"))
    f:close()
    return { file = item.data:match("[^/]+$"), words = n }
  end,
}

local p = sl.pipeline "wordcount" {
  sources = { files = sl.inputs() },
  stages = {
    count = count_words,
    rank = { from = "count", collect = "all", run = function(items)
      table.sort(items, function(a, b) return a.data.words > b.data.words end)
      local out = {}
      for i, it in ipairs(items) do out[i] = it.data.file .. "=" .. it.data.words end
      return table.concat(out, " ")
    end },
  },
}

-- Make three small files and run the pipeline on them (what `sluice run p.lua FILES` does).
local dir = os.tmpname()
os.remove(dir)
assert(sl.exec({ "mkdir", "-p", dir }))
local files = {}
for i, body in ipairs { "one two three", "a b c d e", "single" } do
  files[i] = dir .. "/f" .. i .. ".txt"
  local f = assert(io.open(files[i], "w"))
  f:write(body)
  f:close()
end
local job = p:start { inputs = files, out = dir }
local summary = job:wait()
local ranking = summary.results.rank[1].data
print("ranking: " .. ranking)
assert(ranking == "f2.txt=5 f1.txt=3 f3.txt=1", ranking)
sl.exec({ "rm", "-rf", dir })
