-- sluice.app.trace: a Chrome trace-event file (open it in https://ui.perfetto.dev or
-- chrome://tracing) with one span per item per stage.
--
--   local tr = assert(trace.open("run.trace.json", job))   -- listens on job.bus
--   ... job:wait() ...
--   tr:close()
--
-- Each stage worker is one "thread" (named "stage #worker"); a span is an item (or a batch,
-- a collected group) from the moment a worker took it to its last output, with the item's
-- key, seq, id, attempts and outcome as arguments. Retries and custom events (ctx:event)
-- appear as instant events on the same thread.
local events = require "sluice.runtime.events"

local M = {}

local Trace = {}
Trace.__index = Trace

local SPAN = { item_done = "ok", item_failed = "failed" }
local SKIP = { item_start = true, item_dead = true, job_start = true, job_done = true,
  stage_done = true, workers = true, job_stopping = true }

function M.open(path, job)
  local f, err = io.open(path, "w")
  if not f then return nil, "cannot write trace to '" .. path .. "': " .. tostring(err) end
  f:setvbuf("full", 1 << 16)
  local self = setmetatable({ file = f, job = job, tids = {}, ntid = 0, first = true, spans = 0,
    wall0 = nil }, Trace)
  f:write('{"displayTimeUnit":"ms","traceEvents":[\n')
  self:write { name = "process_name", ph = "M", pid = 1, tid = 0, args = { name = job.name .. " " .. job.id } }
  self.off = job.bus:on(function(ev) self:on_event(ev) end)
  return self
end

function Trace:write(ev)
  if self.closed then return end
  if self.first then self.first = false else self.file:write(",\n") end
  self.file:write(events.encode(ev))
end

function Trace:tid(stage, worker)
  local name = stage .. " #" .. tostring(worker or 0)
  local tid = self.tids[name]
  if not tid then
    self.ntid = self.ntid + 1
    tid = self.ntid
    self.tids[name] = tid
    self:write { name = "thread_name", ph = "M", pid = 1, tid = tid, args = { name = name } }
    self:write { name = "thread_sort_index", ph = "M", pid = 1, tid = tid, args = { sort_index = tid } }
  end
  return tid
end

function Trace:on_event(ev)
  local e = ev.event
  if SKIP[e] then
    if e == "item_start" and ev.worker then self.workers = self.workers or {} ; self.workers[ev.id .. ev.stage] = ev.worker end
    return
  end
  local t0 = self.job.t0
  local status = SPAN[e]
  if status and ev.start and ev.dur then
    if self.workers and ev.id then self.workers[ev.id .. ev.stage] = nil end
    local name = tostring(ev.key) .. (ev.seq and ("#" .. tostring(ev.seq)) or "")
    if ev.kind then name = ev.kind .. " " .. name .. " (" .. tostring(ev.size) .. ")" end
    self:write {
      name = name, cat = ev.stage, ph = "X", pid = 1, tid = self:tid(ev.stage, ev.worker),
      ts = ev.start * 1e6, dur = ev.dur * 1e6,
      args = { id = ev.id, key = ev.key, seq = ev.seq, attempt = ev.attempt, status = status,
        error = ev.error, outputs = ev.outputs, cached = ev.cached },
    }
    self.spans = self.spans + 1
    return
  end
  if ev.stage and ev.t then
    -- instant events: retries, custom ctx:event(...) calls
    local ts = (require("sluice.core.core").now() - t0) * 1e6
    local worker = self.workers and ev.id and self.workers[ev.id .. ev.stage]
    self:write { name = e, cat = ev.stage, ph = "i", s = "t", pid = 1,
      tid = self:tid(ev.stage, worker), ts = ts,
      args = { id = ev.id, key = ev.key, seq = ev.seq, error = ev.error, attempt = ev.attempt } }
  end
end

function Trace:close()
  if self.closed then return end
  if self.off then self.off() end
  self.file:write("\n]}\n")
  self.closed = true
  self.file:close()
end

return M
