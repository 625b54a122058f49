-- bench/input_memory.lua FILE: the memory FFmpeg holds while FILE is open for decoding, in this
-- process (the same malloc settings as a pipeline run): malloc's bytes in use (its arenas and
-- its mmapped blocks) with a frame reader open on FILE, less before. For an MP4 most of it is
-- the demuxer's index of every sample of every track, built when the file is opened and held
-- until it is closed, so it grows with the length (bench/lecture_long.sh compares two lengths).
-- Prints "input memory FILE: N KiB".
local media = require "sluice.media"
local core = require "sluice.core.core"

local path = ...
if not path then
  io.stderr:write("usage: sluice run bench/input_memory.lua FILE\n")
  os.exit(2)
end

local function in_use()
  collectgarbage()
  local m = core.malloc_stats()
  return m.in_use + m.mmap
end

local before = in_use()
local next_frame = media.frames(path, { every = 3600, max_width = 64 })
local f, err = next_frame()
if not f then
  io.stderr:write("input memory " .. path .. ": " .. tostring(err or "no frame") .. "\n")
  os.exit(1)
end
local held = in_use() - before
print(string.format("input memory %s: %d KiB", path, held // 1024))
if f.path then os.remove(f.path) end
