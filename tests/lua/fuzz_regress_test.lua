-- The fuzz targets' inputs replayed in the normal and the sanitizer builds: every seed of
-- tests/fuzz/corpus/<target>/ and every input a fuzzer found a fault with
-- (tests/fuzz/regress/<target>/) goes through the same checks as under libFuzzer
-- (tests/fuzz/targets.lua: the Lua parsers) or the same entry points (media and HLS files
-- through sluice.core.media, as the engine probes and decodes them). docs/fuzz.md.
local T = require "sluice.app.test"
local sl = require "sluice"
local cjson = require "cjson"
local SRC = os.getenv("SLUICE_SOURCE_DIR") or "."
package.path = SRC .. "/tests/fuzz/?.lua;" .. SRC .. "/tests/lua/fixtures/?.lua;" .. package.path
local targets = require "targets"
local P = require "sluice.providers"
local media = require "sluice.core.media"

local function files(dir)
  local out = {}
  local p = io.popen('ls -1 "' .. dir .. '" 2>/dev/null')
  for name in p:lines() do out[#out + 1] = dir .. "/" .. name end
  p:close()
  return out
end

local function inputs(target)
  local out = files(SRC .. "/tests/fuzz/corpus/" .. target)
  for _, f in ipairs(files(SRC .. "/tests/fuzz/regress/" .. target)) do out[#out + 1] = f end
  return out
end

for _, target in ipairs { "sse", "json", "jsonl", "feed", "reply", "config" } do
  T.case(target .. ": every seed and every regression input passes the fuzz target's checks", function()
    local list = inputs(target)
    T.ok(#list >= 3, "inputs for " .. target)
    for _, path in ipairs(list) do
      local ok, err = pcall(targets[target], T.slurp(path))
      T.ok(ok, path .. ": " .. tostring(err))
    end
  end)
end

-- found by fuzz_json (tests/fuzz/regress/json/nan_roundtrip.json): lua-cjson read NaN and
-- Infinity, which a model may write, and then refused to write them again
T.case("json: NaN and Infinity are not JSON: refused on reading, so a judge's NaN score is an error", function()
  T.ok(not pcall(cjson.decode, '{"score": NaN}'))
  T.ok(not pcall(cjson.decode, '[Infinity]'))
  T.ok(not pcall(cjson.decode, '[0x10]'))
  local v, why = P.parse_json_reply('```json\n{"score": NaN, "reasons": []}\n```')
  T.eq(v, nil)
  T.eq(why, "no JSON object in the reply")
  T.eq(cjson.decode('[1e308, -0.5]')[2], -0.5, "finite numbers still read")
end)

-- found by fuzz_json (tests/fuzz/regress/json/overflowing_number.json): a number too large for
-- a double is valid JSON and reads as infinity, which the encoder refused: an event or output
-- holding it could not be written. It is written as null (JSON.stringify's rule), as are NaN.
T.case("json: a number too large for a double reads as infinity and is written as null", function()
  local json = require "sluice.runtime.json"
  local v = cjson.decode('{"x": 1e999, "y": [-1e999, 2]}')
  T.eq(v.x, math.huge)
  local back = cjson.decode(json.encode(v))
  T.eq(back.x, cjson.null)
  T.eq(back.y[1], cjson.null)
  T.eq(back.y[2], 2)
  T.eq(json.encode({ 0 / 0 }), "[null]")
end)

local function probe(path)
  return sl.await("media.probe", function(done) return media.probe(path, done) end)
end

-- found by fuzz_media (tests/fuzz/regress/media/riff_info_huge_tag.wav): an 86-byte WAV whose
-- RIFF INFO tag claims a length of ~1.9 GB made FFmpeg's WAV reader allocate and zero that
-- much (peak RSS 1.9 GB); FFmpeg's allocations are capped (256 MiB each, core/av.c), so it
-- is refused with one line in bounded memory. (Before the case below, which probes every
-- regression input too: the peak is the process's.)
T.case("a WAV tag claiming 1.9 GB: one line, without the allocation", function()
  local PL = require "pltest"
  local function peak_kb() -- the process's peak RSS so far (VmHWM: a freed allocation counts)
    for line in io.lines("/proc/self/status") do
      local kb = line:match("^VmHWM:%s+(%d+)")
      if kb then return tonumber(kb) end
    end
  end
  local path = SRC .. "/tests/fuzz/regress/media/riff_info_huge_tag.wav"
  local before = peak_kb()
  local info, err = probe(path)
  T.eq(info, nil)
  T.ok(type(err) == "string" and err:find(path, 1, true) and not err:find("\n"), tostring(err))
  local grew = peak_kb() - before
  T.ok(PL.sanitized() or grew < 200 * 1024, "peak RSS grew by " .. grew .. " KB")
end)

-- found by fuzz_media (tests/fuzz/regress/media/scene_format_change.mkv): a stream whose pixel
-- format changes between frames took the scene score's two paths in turn (luma planes, and
-- a gray conversion); the gray one wrote its plane's size into the luma path's previous frame,
-- which then compared the next frame against a smaller buffer: a heap overflow (ASan, in the
-- sanitizer build's run of this test). Every regression input is now read with scene scores.
T.case("media regression inputs read with scene scores: frames or one line, no overflow", function()
  for _, path in ipairs(files(SRC .. "/tests/fuzz/regress/media")) do
    local frames = media.frame_reader(path, { scene = 0.3, format = "jpeg", output = "blob", max_width = 64 })
    for _ = 1, 200 do
      local f, err = sl.await("media.frames", function(done) return frames:next(done) end)
      if not f then
        T.ok(err == nil or (type(err) == "string" and not err:find("\n")), path .. ": " .. tostring(err))
        break
      end
    end
    frames:close()
  end
end)

T.case("media and HLS seeds and regression inputs: probed as the engine does, an answer or one line naming the input", function()
  local list = inputs("media") -- (seeds and tests/fuzz/regress/media)
  for _, f in ipairs(files(SRC .. "/tests/fuzz/regress/hls")) do list[#list + 1] = f end
  for _, path in ipairs(list) do
    local info, err = probe(path)
    T.ok(info or (type(err) == "string" and not err:find("\n") and err:find(path, 1, true)),
      path .. ": " .. tostring(err))
  end
end)

-- Hostile media: each gets a frame or one line naming it, and the next one is still served.
T.case("hostile media: zero-length, cut at 10 points, wrong extension, a 30000x30000 PNG header", function()
  local dir = os.tmpname() .. ".d"
  assert(sl.exec({ "mkdir", dir }))
  local function put(name, bytes)
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    f:write(bytes)
    f:close()
    return dir .. "/" .. name
  end
  local clip = T.slurp(SRC .. "/tests/fuzz/corpus/media/clip.mp4")
  local list = { put("empty.mp4", ""), put("speech.mp4", T.slurp(SRC .. "/tests/fuzz/corpus/media/speech.wav")) }
  for i = 1, 10 do list[#list + 1] = put("cut" .. i .. ".mp4", clip:sub(1, #clip * i // 11)) end
  -- a PNG whose header says 30000x30000 (IHDR with a valid CRC), then no image data
  local png = T.slurp(SRC .. "/tests/fuzz/corpus/media/frame.png")
  local ihdr = "IHDR" .. string.pack(">I4I4", 30000, 30000) .. png:sub(25, 29)
  local crc = 0xFFFFFFFF -- PNG's CRC-32
  for i = 1, #ihdr do
    crc = crc ~ ihdr:byte(i)
    for _ = 1, 8 do crc = (crc >> 1) ~ ((crc & 1) * 0xEDB88320) end
  end
  crc = crc ~ 0xFFFFFFFF
  list[#list + 1] = put("huge.png", png:sub(1, 12) .. ihdr .. string.pack(">I4", crc) .. png:sub(34))
  list[#list + 1] = put("good.mp4", clip) -- the last one still works
  local answered = 0
  for _, path in ipairs(list) do
    local frames = media.frame_reader(path, { every = 0.2, format = "jpeg", output = "blob", max_width = 64 })
    local fr, err = sl.await("media.frames", function(done) return frames:next(done) end)
    frames:close()
    T.ok(fr or (type(err) == "string" and not err:find("\n") and err:find(path, 1, true)),
      path .. ": " .. tostring(err))
    answered = answered + 1
  end
  T.eq(answered, #list)
  local info = assert(probe(dir .. "/good.mp4"))
  T.ok(info, "a good file after the hostile ones")
end)

-- A master playlist naming itself: FFmpeg's HLS demuxer follows it for ever (variants of
-- variants, hundreds of MB, never asking the interrupt callback), and playlists that name each
-- other do the same round their cycle. The adapter refuses the nested open at once, with one
-- line, for the probe and the frame reader alike (before: the open cap ended it, 3-11 s later
-- depending on the machine's load, after 0.7-1.4 GB).
T.case("playlists that name themselves or each other: refused at once, one line", function()
  local dir = os.tmpname() .. ".d"
  assert(sl.exec({ "mkdir", dir }))
  local path = dir .. "/p.m3u8" -- the corpus entry names p.m3u8
  local f = assert(io.open(path, "wb"))
  f:write(T.slurp(SRC .. "/tests/fuzz/corpus/hls/master_self.m3u8"))
  f:close()
  for _, pair in ipairs { { "a.m3u8", "b.m3u8" }, { "b.m3u8", "a.m3u8" } } do
    f = assert(io.open(dir .. "/" .. pair[1], "wb"))
    f:write("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=200000\n" .. pair[2] .. "\n")
    f:close()
  end
  local ok, e = pcall(function()
    for _, case in ipairs { { path, "a playlist that names itself" }, { dir .. "/a.m3u8", "names itself" } } do
      local t0 = sl.now()
      local info, err = probe(case[1])
      T.ok(not info and err:find(case[1], 1, true) and err:find(case[2], 1, true) and not err:find("\n"),
        tostring(err))
      T.ok(sl.now() - t0 < 1, "probe ended after " .. (sl.now() - t0) .. " s")
      local frames = media.frame_reader(case[1], { every = 1, format = "jpeg", output = "blob" })
      local fr, ferr = sl.await("media.frames", function(done) return frames:next(done) end)
      frames:close()
      T.ok(not fr and ferr:find(case[2], 1, true), tostring(ferr))
    end
  end)
  assert(sl.exec({ "rm", "-rf", dir }))
  if not ok then error(e, 0) end
end)

-- An input that never settles (here a server that accepts and never answers) fails within
-- media.open_timeout (2 s here; 30 s by default), saying so.
T.case("an input that never answers: opening fails within media.open_timeout, one line", function()
  local srv = require("pltest").python_server({ "-c", "import socket\ns = socket.socket()\n" ..
    "s.bind(('127.0.0.1', 0))\ns.listen(8)\nprint(s.getsockname()[1], flush=True)\nheld = []\n" ..
    "while True:\n    held.append(s.accept())\n" }, { name = "the silent server" })
  local mmedia = require "sluice.media"
  T.eq(mmedia.set_open_timeout(2), 2)
  local ok, e = pcall(function()
    local url = "http://127.0.0.1:" .. srv.port .. "/live.m3u8"
    local t0 = sl.now()
    local info, err = probe(url)
    T.ok(not info and err:find(url, 1, true) and err:find("not opened within 2 s", 1, true)
      and not err:find("\n"), tostring(err))
    T.ok(sl.now() - t0 < 10, "probe ended after " .. (sl.now() - t0) .. " s")
    local frames = media.frame_reader(url, { every = 1, format = "jpeg", output = "blob" })
    local fr, ferr = sl.await("media.frames", function(done) return frames:next(done) end)
    frames:close()
    T.ok(not fr and ferr:find("not opened within 2 s", 1, true), tostring(ferr))
  end)
  mmedia.set_open_timeout(0)
  T.eq(mmedia.set_open_timeout(), 30, "the default is back")
  srv.stop()
  if not ok then error(e, 0) end
end)

return T.run()
