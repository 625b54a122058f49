-- model_worker.lua: plug your own model in as a worker process. It loads once, reads one JSON
-- request per line on stdin and answers one JSON line per request on stdout:
--   {"id": 1, "method": "classify", "params": {"path": "...", "classes": ["bright"]}}
--   {"id": 1, "result": {"classes": [{"name": "bright", "score": 0.93}]}}
-- This "model" scores how bright a grey image is; a YOLO script works the same way. Use it in
-- the video filter with --set providers.filter=worker --set worker.argv='["python3","my.py"]'.
-- Run: sluice run examples/model_worker.lua
local sl = require "sluice"

local WORKER = [==[
import json, sys
def brightness(path):                       # the "model": mean grey level of a PGM image
    data = open(path, "rb").read()
    parts = data.split(b"\n", 3)             # P5, "w h", maxval, pixels
    pixels = parts[3]
    return sum(pixels) / (255.0 * len(pixels))
for line in sys.stdin:                       # one request per line, loaded once
    req = json.loads(line)
    try:
        b = brightness(req["params"]["path"])
        scores = {"bright": b, "dark": 1 - b}
        out = [{"name": c, "score": round(scores.get(c, 0), 3)} for c in req["params"]["classes"]]
        reply = {"id": req["id"], "result": {"classes": out}}
    except Exception as e:
        reply = {"id": req["id"], "error": str(e)}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
]==]

local dir = os.tmpname()
os.remove(dir)
assert(sl.exec({ "mkdir", "-p", dir }))
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
write(dir .. "/bright.py", WORKER)
-- Two 8x8 grey images: one light, one dark.
write(dir .. "/light.pgm", "P5\n8 8\n255\n" .. string.rep(string.char(230), 64))
write(dir .. "/night.pgm", "P5\n8 8\n255\n" .. string.rep(string.char(20), 64))

local worker = require("sluice.providers.worker").new {
  argv = { "/usr/bin/python3", dir .. "/bright.py" }, roles = { filter = true } }
local out = assert(worker:classify({ { path = dir .. "/light.pgm", t = 0 }, { path = dir .. "/night.pgm", t = 1 } },
  { "bright", "dark" }))
for i, r in ipairs(out) do
  print(string.format("frame %d: bright %.2f, dark %.2f", i, r.classes[1].score, r.classes[2].score))
end
assert(out[1].classes[1].score > 0.8 and out[2].classes[1].score < 0.2, "the worker answered")
worker:close()
sl.exec({ "rm", "-rf", dir })
