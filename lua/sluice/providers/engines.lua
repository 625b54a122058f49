-- sluice.providers.engines: a small pool of in-process engines (PocketSphinx decoders,
-- Tesseract instances) for the local providers.
--
-- An engine is loaded once on the thread pool and then serves job after job, one at a time
-- (neither PocketSphinx nor Tesseract objects are thread-safe). Up to `size` engines exist,
-- so `size` jobs run at once on different pool threads. Engines are loaded lazily, on the
-- first job that finds none idle.
--
--   local pool = engines.new{ name = "sphinx", size = 2,
--     load = function(done) return csphinx.load(cfg, done) end }
--   local result, err = pool:run("sphinx.transcribe", function(engine, done)
--     return engine:transcribe(path, done)
--   end)
local sl = require "sluice"
local sched = require "sluice.runtime.sched"

local M = {}
local Pool = {}
Pool.__index = Pool

function M.new(opts)
  assert(type(opts.load) == "function", "engines.new: load function required")
  local size = opts.size or 1
  if math.type(size) ~= "integer" or size < 1 then
    error("engines.new: size must be a positive integer, got " .. tostring(size), 2)
  end
  return setmetatable({
    name = opts.name or "engine", size = size, load = opts.load,
    sem = sl.semaphore(size), idle = {}, all = {}, loaded = 0,
  }, Pool)
end

-- Takes an idle engine, loading one when none is idle. Called holding a permit, so at
-- most `size` engines are ever loaded.
local function take(self)
  local e = table.remove(self.idle)
  if e then return e end
  local engine, msg, code = sched.await(self.name .. ".load", function(done)
    return self.load(function(eng, m, c)
      if eng then
        self.all[#self.all + 1] = eng
        self.loaded = self.loaded + 1
      end
      done(eng, m, c)
    end)
  end)
  return engine, msg, code
end

-- pool:run(what, start) -> start's results: start(engine, done) begins one job on the
-- engine and returns its job handle (or nil, msg, code). Waits for a free engine first.
-- Cancelling the task cancels the job; the engine goes back to the pool when the job has
-- really stopped.
function Pool:run(what, start)
  if self.closed then return nil, self.name .. ": closed", "ECLOSED" end
  self.sem:acquire()
  local ok, engine, msg, code = pcall(take, self)
  if not ok or not engine then
    self.sem:release()
    if not ok then error(engine, 0) end
    return nil, msg, code
  end
  local function give_back()
    if self.closed then engine:close() else self.idle[#self.idle + 1] = engine end
    self.sem:release()
  end
  return sched.await(what, function(done)
    local job, m, c = start(engine, function(...)
      give_back()
      done(...)
    end)
    if not job then
      give_back()
      done(nil, m, c)
    end
    return job
  end)
end

-- Loads engines until `n` (default: size) exist, so the first jobs do not pay for it.
function Pool:warm(n)
  n = math.min(n or self.size, self.size)
  local g = sl.group()
  local taken = {}
  for _ = 1, n - #self.idle do
    g:spawn(function()
      self.sem:acquire()
      local e, msg = take(self)
      if e then taken[#taken + 1] = e end
      self.sem:release()
      if not e then error(msg, 0) end
    end)
  end
  g:wait()
  for _, e in ipairs(taken) do self.idle[#self.idle + 1] = e end
  return true
end

-- each(list, fn): runs fn(item, i) for every item of list, each in its own task, and waits
-- for all of them (providers send a batch's items at once this way). fn should turn an
-- item's failure into a value; an error it raises cancels the others and is raised here.
function M.each(list, fn)
  local g = sl.group()
  for i, item in ipairs(list) do g:spawn(fn, item, i) end
  g:wait()
end

-- pool:resize(n): up to n engines from now on (a stage given more workers gets as many
-- engines, rather than its workers waiting here for one). Shrinking closes idle engines
-- beyond n; busy ones go back to the pool and serve on.
function Pool:resize(n)
  if math.type(n) ~= "integer" or n < 1 then
    error("resize: size must be a positive integer, got " .. tostring(n), 2)
  end
  self.size = n
  self.sem:set_limit(n)
  while #self.idle > 0 and self.loaded > n do
    table.remove(self.idle):close()
    self.loaded = self.loaded - 1
  end
end

-- Closes idle engines now and busy ones when their job ends.
function Pool:close()
  if self.closed then return end
  self.closed = true
  for _, e in ipairs(self.idle) do e:close() end
  self.idle = {}
end

return M
