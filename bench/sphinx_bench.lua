-- bench/sphinx_bench.lua: one PocketSphinx decoder against two on the same long recording,
-- split into chunks that the decoders take in turn. Prints wall times and the speedup
-- (goal: at least 1.7x on two free cores). Run through bench/sphinx.sh.
local sl = require "sluice"
local sphinx = require "sluice.providers.sphinx"

local dir = arg[1] or error("usage: sphinx_bench.lua CHUNK_DIR")
local ls = assert(sl.exec { "sh", "-c", "ls " .. dir .. "/chunk*.wav" })
local chunks = {}
for p in ls.stdout:gmatch("%S+") do chunks[#chunks + 1] = p end
table.sort(chunks)
local CHUNK = tonumber(arg[2]) or 20

local function run(workers)
  local stt = sphinx.new { workers = workers }
  local t_load = sl.now()
  stt:warm()
  t_load = sl.now() - t_load
  local cpu0 = require("sluice.core.core").cpu_time()
  local t0 = sl.now()
  local g = sl.group()
  local words = 0
  for i, path in ipairs(chunks) do
    g:spawn(function()
      local r = assert(stt:transcribe { path = path, t0 = (i - 1) * CHUNK })
      for _, s in ipairs(r.segments) do words = words + #s.words end
    end)
  end
  g:wait()
  local wall = sl.now() - t0
  local cpu = require("sluice.core.core").cpu_time() - cpu0
  stt:close()
  print(string.format("%d decoder(s): %d chunks, %d words, %.2f s wall, %.2f s CPU (model load %.2f s)",
    workers, #chunks, words, wall, cpu, t_load))
  return wall, words
end

local w1, n1 = run(1)
local w2, n2 = run(2)
print(string.format("speedup 2 vs 1 decoders: %.2fx (goal >= 1.7x); same words: %s", w1 / w2,
  tostring(n1 == n2)))
