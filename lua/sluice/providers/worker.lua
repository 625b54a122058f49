-- sluice.providers.worker: a provider backed by a model worker process (sluice.runtime.worker:
-- JSON Lines over stdin/stdout, loaded once, restarted after a crash). By default it runs
-- the bundled OpenCV detector (workers/opencv_detect.py) for the filter role; any program
-- that speaks the protocol can serve any role (see docs/local-providers.md).
--
--   local f = require("sluice.providers.worker").new{}            -- the OpenCV detector
--   local out = f:classify({ { path = "f1.jpg", t = 1.0 } }, { "person", "face" })
--   -- out[1] = { t = 1.0, classes = { { name = "person", score = 0.93, boxes = {...} }, ... } }
--
--   local mine = require("sluice.providers.worker").new{
--     argv = { "/usr/bin/python3", "my_yolo_worker.py", "--weights", "yolov8n.onnx" },
--     roles = { filter = true } }
--
-- Configuration: argv (the command; default: the bundled detector named by `detector`,
-- "opencv" (/usr/bin/python3 <share>/workers/opencv_detect.py) or "centernet" (node
-- <share>/workers/detect.js)),
-- name, env, cwd, roles (default {filter=true}), retries, max_restarts, timeout (seconds per
-- request), max_inflight. Role methods call the worker method of the same name:
-- classify -> "classify" (one request per frame: {path=, t=, classes=}), transcribe ->
-- "transcribe" ({audio=, opts=}), describe -> "describe" ({images=, opts=}), complete ->
-- "complete" ({prompt=, opts=}), summarize -> "summarize" ({text=, opts=}).
local core = require "sluice.core.core"
local worker = require "sluice.runtime.worker"
local engines = require "sluice.providers.engines"

local M = { roles = { filter = true }, name = "worker" }

local P = {}
P.__index = P

-- The bundled detectors (cfg.detector): "opencv" (workers/opencv_detect.py: HOG people and
-- Haar cascades, Debian's python3-opencv) and "centernet" (workers/detect.js: the 80 COCO
-- classes with a CenterNet model on TensorFlow.js, from the npm packages of
-- workers/package.json).
M.DETECTORS = {
  opencv = function() return { "/usr/bin/python3", core.share_dir .. "/workers/opencv_detect.py" } end,
  centernet = function() return { "node", core.share_dir .. "/workers/detect.js" } end,
}

function M.default_argv(detector)
  local d = M.DETECTORS[detector or "opencv"]
  if not d then
    local names = {}
    for k in pairs(M.DETECTORS) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("worker: unknown detector '%s' (known: %s)", tostring(detector), table.concat(names, ", ")), 0)
  end
  return d()
end

function M.new(cfg)
  cfg = cfg or {}
  local argv = cfg.argv or cfg.command or M.default_argv(cfg.detector)
  if type(argv) == "string" then argv = { "/bin/sh", "-c", argv } end
  local self = setmetatable({ cfg = cfg, roles = cfg.roles or M.roles, timeout = cfg.timeout }, P)
  self.name = cfg.name or (argv[#argv]:match("([^/]+)$") or "worker"):gsub("%.%w+$", "")
  self.provider = "worker:" .. self.name
  self.worker = worker.start {
    name = self.name, argv = argv, env = cfg.env, cwd = cfg.cwd, retries = cfg.retries,
    max_restarts = cfg.max_restarts, max_inflight = cfg.max_inflight, log = cfg.log,
  }
  return self
end

-- call(method, params) -> result or nil, msg, code: any method of the worker.
function P:call(method, params)
  return self.worker:call(method, params, self.timeout and { timeout = self.timeout } or nil)
end

function P:close(grace) return self.worker:close(grace) end

-- known_classes() -> the list of class names the worker's classify knows (its `info`), or
-- nil, message (a worker without an `info` method: any name may do).
function P:known_classes()
  local r, err = self:call("info", {})
  if type(r) == "table" and type(r.classes) == "table" then return r.classes end
  return nil, err or "worker " .. self.name .. ": info gave no classes"
end
function P:stats() return self.worker.stats end

-- classify(frames, classes, opts) -> one entry per frame, in order:
-- {t=, classes={{name=, score=, boxes=}...}} or {t=, error=message}. All frames are in
-- flight at once (the worker answers them in turn); a failed frame does not stop the others.
function P:classify(frames, classes, opts)
  if type(frames) ~= "table" then
    error("bad argument #1 to 'classify' (list of {path=, t=} expected)", 2)
  end
  local out = {}
  engines.each(frames, function(fr, i)
    local r, msg = self:call("classify", { path = fr.path, t = fr.t, classes = classes, opts = opts })
    if r and type(r.classes) == "table" then
      out[i] = { t = fr.t, classes = r.classes, provider = self.provider }
    else
      out[i] = { t = fr.t, error = msg or ("worker " .. self.name .. ": reply without classes"),
        provider = self.provider }
    end
  end)
  return out
end

function P:transcribe(audio, opts) return self:call("transcribe", { audio = audio, opts = opts }) end
function P:describe(images, opts) return self:call("describe", { images = images, opts = opts }) end
function P:complete(prompt, opts) return self:call("complete", { prompt = prompt, opts = opts }) end
function P:summarize(text, opts) return self:call("summarize", { text = text, opts = opts }) end

return M
