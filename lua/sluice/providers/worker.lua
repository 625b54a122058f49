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
-- request), max_inflight,
-- processes (how many copies of the worker serve requests: default the CPU budget's tokens
-- for the bundled opencv detector, each single-threaded; 1 for centernet and for your argv;
-- the copies beyond the first start when every running one is busy), cpu (each request holds
-- a token of the engine's CPU budget while it runs, sluice.core.pool.cpu_lease: default true
-- for the bundled detectors, false for your argv; with cpu, a copy gets one request at a
-- time). Role methods call the worker method of the same name:
-- classify -> "classify" (one request per frame: {path=, t=, classes=}), transcribe ->
-- "transcribe" ({audio=, opts=}), describe -> "describe" ({images=, opts=}), complete ->
-- "complete" ({prompt=, opts=}), summarize -> "summarize" ({text=, opts=}).
local core = require "sluice.core.core"
local worker = require "sluice.runtime.worker"
local engines = require "sluice.providers.engines"
local pool = require "sluice.core.pool"
local sched = require "sluice.runtime.sched"
local sl = require "sluice"

local M = { roles = { filter = true }, name = "worker" }

local P = {}
P.__index = P

-- The bundled detectors (cfg.detector): "opencv" (workers/opencv_detect.py: HOG people and
-- Haar cascades, Debian's python3-opencv; one single-threaded process per CPU token: two
-- OpenCV threads in one process cost ~30% more CPU per frame than two processes of one) and
-- "centernet" (workers/detect.js: the 80 COCO classes with a CenterNet model on
-- TensorFlow.js, from the npm packages of workers/package.json; one process, which threads
-- itself). Both are CPU-bound: their requests hold CPU tokens.
M.DETECTORS = {
  opencv = { argv = function() return { "/usr/bin/python3", core.share_dir .. "/workers/opencv_detect.py" } end,
    env = { OPENCV_DETECT_THREADS = "1" }, per_cpu = true },
  centernet = { argv = function() return { "node", core.share_dir .. "/workers/detect.js" } end },
}

local function detector(name)
  local d = M.DETECTORS[name or "opencv"]
  if not d then
    local names = {}
    for k in pairs(M.DETECTORS) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("worker: unknown detector '%s' (known: %s)", tostring(name), table.concat(names, ", ")), 0)
  end
  return d
end

function M.default_argv(name) return detector(name).argv() end

function M.new(cfg)
  cfg = cfg or {}
  local argv = cfg.argv or cfg.command
  local bundled = not argv and detector(cfg.detector) or nil
  argv = argv or bundled.argv()
  if type(argv) == "string" then argv = { "/bin/sh", "-c", argv } end
  local n = cfg.processes
  if n == nil then n = bundled and bundled.per_cpu and pool.cpu().limit or 1 end
  n = math.tointeger(tonumber(n))
  if not n or n < 1 then
    error(string.format("worker: processes must be a positive integer (got %s)", tostring(cfg.processes)), 0)
  end
  local cpu = cfg.cpu
  if cpu == nil then cpu = bundled ~= nil end
  local env = cfg.env
  if bundled and bundled.env then
    env = {}
    for k, v in pairs(bundled.env) do env[k] = v end
    for k, v in pairs(cfg.env or {}) do env[k] = v end
  end
  local self = setmetatable({ cfg = cfg, roles = cfg.roles or M.roles, timeout = cfg.timeout,
    nprocesses = n, cpu = cpu and true or false, workers = {} }, P)
  self.name = cfg.name or (argv[#argv]:match("([^/]+)$") or "worker"):gsub("%.%w+$", "")
  self.provider = "worker:" .. self.name
  self.start_opts = { argv = argv, env = env, cwd = cfg.cwd, retries = cfg.retries,
    max_restarts = cfg.max_restarts, max_inflight = cfg.max_inflight, log = cfg.log }
  -- With the CPU lease a process gets one request at a time: no more requests run than
  -- processes, and a token is held only while its request runs.
  if self.cpu then self.slots = sl.semaphore(n) end
  self.worker = self:_start() -- the first process at once (a broken argv shows at once)
  return self
end

-- Starts one more process of the pool (each is a sluice.runtime.worker: restarted after a
-- crash on its own, its requests in flight sent again to it).
function P:_start()
  local o = {}
  for k, v in pairs(self.start_opts) do o[k] = v end
  local i = #self.workers + 1
  o.name = self.nprocesses > 1 and (self.name .. "#" .. i) or self.name
  local w = worker.start(o)
  self.workers[i] = w
  return w
end

-- The least busy process: an idle one if there is one, else a new one while the pool has
-- room, else the one with the fewest requests in flight (the first of those: the oldest).
function P:_pick()
  -- A copy that cannot work (exit 78, or gave up after restarts) says so for all of them: its
  -- error is the answer, rather than starting more copies of the same command.
  if self.workers[1].broken then return self.workers[1] end
  local best
  for _, w in ipairs(self.workers) do
    if not w.broken and (not best or w:in_flight() < best:in_flight()) then best = w end
  end
  if best and best:in_flight() == 0 then return best end
  if #self.workers < self.nprocesses and not self.closed then return self:_start() end
  return best or self.workers[1]
end

-- call(method, params) -> result or nil, msg, code: any method of the worker, on the least
-- busy process. A CPU-bound worker's request first takes a slot (a process of its own) and
-- then a token of the CPU budget, held until the reply.
function P:call(method, params)
  local opts = self.timeout and { timeout = self.timeout } or nil
  if not self.cpu then return self:_pick():call(method, params, opts) end
  self.slots:acquire()
  local r = table.pack(pcall(function()
    local lease, err, code = sched.await("cpu token for worker " .. self.name, function(done)
      return pool.cpu_lease(done)
    end)
    if not lease then return nil, err, code end
    local rr = table.pack(pcall(function() return self:_pick():call(method, params, opts) end))
    lease:release()
    if not rr[1] then error(rr[2], 0) end
    return table.unpack(rr, 2, rr.n)
  end))
  self.slots:release()
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

function P:close(grace)
  self.closed = true
  for _, w in ipairs(self.workers) do w:close(grace) end
end

-- known_classes() -> the list of class names the worker's classify knows (its `info`), or
-- nil, message (a worker without an `info` method: any name may do).
function P:known_classes()
  local r, err = self:call("info", {})
  if type(r) == "table" and type(r.classes) == "table" then return r.classes end
  return nil, err or "worker " .. self.name .. ": info gave no classes"
end
-- stats() -> the pool's counters summed over its processes, and processes = how many ran.
function P:stats()
  local t = { processes = #self.workers }
  for _, w in ipairs(self.workers) do
    for k, v in pairs(w.stats) do t[k] = (t[k] or 0) + v end
  end
  return t
end

-- classify(frames, classes, opts) -> one entry per frame, in order:
-- {t=, classes={{name=, score=, boxes=}...}} or {t=, error=message}. All frames are asked
-- at once (spread over the processes; with `cpu`, as processes and tokens come free); a
-- failed frame does not stop the others.
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
