-- sluice.blocks.plan: how many workers a stage runs and how big its units are, decided from
-- the whole queue (every input's queued and expected units) and the machine (CPUs, memory,
-- the engine's cost), not per input. Pure functions plus a small per-job ledger of the work
-- a stage has ahead of it; pipelines call them as work arrives (pipelines/podcast.lua).
--
--   plan.workers{units=, engine=, cpus=, cpus_used=0, memory_gb=, max=10, stage=}
--     -> n, why ("stt 2 workers: 2 CPUs, sphinx")
--   plan.chunk_seconds{pending=, duration=, cpus=, overlap=0, min=30, max=300, per_cpu=2}
--     -> seconds, chunks
--   plan.ledger() -> a ledger of inputs' audio: expect/cut/done, pending(), units()
local pool = require "sluice.core.pool"

local M = {}

-- What one worker of an engine costs: `cpu` CPUs while it works (local engines; remote ones
-- none), `memory` GB, and the chunk length seed 001 gives it. Seed 001's engines, plus the
-- local ones sluice runs.
M.ENGINES = {
  ["whisper-cpp"] = { chunk = 300, memory = 2.5, cpu = 1 },
  ["whisper-api"] = { chunk = 600, memory = 0.1 },
  ["gpt-4o"] = { chunk = 600, memory = 0.1 },
  ["gpt-4o-mini"] = { chunk = 600, memory = 0.1 },
  openai = { chunk = 600, memory = 0.1 },
  gemini = { chunk = 600, memory = 0.1 },
  clova = { chunk = 600, memory = 0.1 },
  sphinx = { chunk = 300, memory = 0.15, cpu = 1 },
  tesseract = { chunk = 300, memory = 0.1, cpu = 1 },
  exec = { chunk = 300, memory = 1.0, cpu = 1 },
}
local UNKNOWN = { chunk = 600, memory = 1.0 }

function M.engine(name) return M.ENGINES[name or ""] or UNKNOWN end

function M.available_memory_gb()
  local f = io.open("/proc/meminfo")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local kb = s:match("MemAvailable:%s+(%d+)")
  return kb and tonumber(kb) / (1024 * 1024) or nil
end

-- cpu_count() -> the CPUs CPU-bound work may use: the C core's CPU budget (one token per CPU,
-- or SLUICE_CPUS, or pool.set_cpu_limit), so that the workers planned here and the tokens
-- their engines' calls wait for are counted by the same rule.
function M.cpu_count() return pool.cpu().limit end

local function plural(n, word) return string.format("%d %s%s", n, word, n == 1 and "" or "s") end

-- workers{units=, engine=, cpus=, cpus_used=0, memory_gb=, max=10, min=1, stage="stt",
-- unit="chunk"} -> n, why, details. units: the stage's queued and expected units (all
-- inputs'); no more workers than that. A local engine (cpu cost > 0) gets at most the CPUs
-- left by other CPU-bound stages (cpus - cpus_used) over its cost; any engine at most 70% of
-- available memory over its memory per worker, and `max`. why names what decided it.
function M.workers(o)
  local name = o.engine or "?"
  local eng = M.engine(o.engine)
  local lo, hi = o.min or 1, o.max or 10
  local units = math.max(0, math.ceil(o.units or 0))
  local cpus = o.cpus or M.cpu_count()
  local left = math.max(1, cpus - (o.cpus_used or 0))
  local by_cpu = eng.cpu and math.max(1, left // eng.cpu) or math.huge
  local mem = o.memory_gb or M.available_memory_gb()
  local by_mem = mem and math.max(1, math.floor(mem * 0.7 / eng.memory)) or math.huge
  local n, cause = hi, string.format("at most %d", hi)
  local function cap(v, why)
    if v < n then n, cause = v, why end
  end
  cap(by_cpu, (o.cpus_used or 0) > 0 and string.format("%s left of %d", plural(left, "CPU"), cpus)
    or plural(cpus, "CPU"))
  cap(by_mem, string.format("%.1f GB memory", mem or 0))
  cap(math.max(units, lo), string.format("%s queued", plural(units, o.unit or "chunk")))
  n = math.max(lo, n)
  local why = string.format("%s %s: %s, %s", o.stage or "stt", plural(n, "worker"), cause, name)
  return n, why, { units = units, by_cpu = by_cpu, by_memory = by_mem, cpus = cpus, cpus_left = left }
end

-- chunk_seconds{pending=, duration=, cpus=, overlap=0, window=0, min=30, max=300, per_cpu=2}
-- -> seconds, chunks: the chunk length for an input of `duration` seconds when `pending`
-- seconds of audio (this input's and every other one not yet transcribed, expected ones
-- included) are to be spread over `cpus` workers: about per_cpu units per CPU (so units pack
-- evenly), never shorter than min (short chunks lose context and repeat their overlap) nor
-- longer than max; then the input is cut into equal parts of about that length (no short
-- last part). seconds includes the overlap each chunk shares with the one before and half a
-- silence-search window, so that k chunks cover the input.
function M.chunk_seconds(o)
  local dur = o.duration or 0
  local cpus = math.max(1, o.cpus or M.cpu_count())
  local lo, hi = o.min or 30, o.max or 300
  local ov, win = o.overlap or 0, o.window or 0
  local pending = math.max(o.pending or dur, dur)
  local target = math.min(hi, math.max(lo, pending / (cpus * (o.per_cpu or 2))))
  if dur <= 0 then return target, 1 end
  local k = math.max(1, math.ceil(dur / target - 1e-9))
  -- no part shorter than min (a long input in a big queue keeps max-long parts)
  while k > 1 and dur / k < lo do k = k - 1 end
  local seconds = (dur + (k - 1) * ov) / k + win / 2
  -- One part holds the whole input and overlaps nothing, but a reader takes no part shorter
  -- than its overlap (a 2 s input with a 5 s overlap was refused with an argument error).
  if k == 1 then seconds = math.max(seconds, ov + 1) end
  return seconds, k
end

-- A ledger of the audio a stage has ahead of it, per input (key): expected seconds (from the
-- feed, else from a probe), chunks cut, chunks done. pending() is the audio not transcribed
-- yet (an input of unknown length counts as the mean of the known ones); units() the chunks
-- queued and expected (an input not cut yet counts as the chunks it will be cut into, an
-- input of unknown length as one of the mean known length).
local Ledger = {}
Ledger.__index = Ledger

function M.ledger() return setmetatable({ inputs = {}, order = {} }, Ledger) end

local function entry(self, key)
  local e = self.inputs[key]
  if not e then
    e = { seconds = nil, chunks = nil, done = 0, done_seconds = 0 }
    self.inputs[key] = e
    self.order[#self.order + 1] = key
  end
  return e
end

-- expect(key, seconds or nil): an input is coming (its length when known).
function Ledger:expect(key, seconds)
  local e = entry(self, key)
  if seconds and seconds > 0 then e.seconds = seconds end
  e.finished = nil
  return e
end

-- cut(key, chunks, seconds): the input is being cut into `chunks` chunks.
function Ledger:cut(key, chunks, seconds)
  local e = entry(self, key)
  e.chunks = chunks
  if seconds and seconds > 0 then e.seconds = e.seconds or seconds end
end

-- done(key, seconds): one of its chunks is transcribed (or failed for good).
function Ledger:done(key, seconds)
  local e = entry(self, key)
  e.done = e.done + 1
  e.done_seconds = e.done_seconds + (seconds or 0)
end

-- finished(key): nothing more of it is coming (transcribed, failed or skipped).
function Ledger:finished(key)
  local e = entry(self, key)
  e.finished = true
end

local function mean_known(self)
  local sum, n = 0, 0
  for _, e in pairs(self.inputs) do
    if e.seconds then sum, n = sum + e.seconds, n + 1 end
  end
  return n > 0 and sum / n or nil
end

-- pending() -> seconds of audio not transcribed yet.
function Ledger:pending()
  local mean = mean_known(self) or 0
  local total = 0
  for _, e in pairs(self.inputs) do
    if not e.finished then total = total + math.max(0, (e.seconds or mean) - e.done_seconds) end
  end
  return total
end

-- units(chunk_for) -> chunks queued and expected; chunk_for(seconds) -> chunks an input of
-- that length not cut yet will give (default 1).
function Ledger:units(chunk_for)
  local n = 0
  local mean = mean_known(self)
  for _, e in pairs(self.inputs) do
    if not e.finished then
      local sec = e.seconds or mean
      local k = e.chunks or (sec and chunk_for and chunk_for(sec)) or 1
      n = n + math.max(0, k - e.done)
    end
  end
  return n
end

return M
