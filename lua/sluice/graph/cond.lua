-- sluice.graph.cond: condition variables over the scheduler, as the runner's queues use them.
--
-- Owns: a FIFO of waiting tasks. cond:wait([timeout]) -> true when signalled, false on
-- timeout. nwait counts the waiters that have not been signalled yet; woken counts the ones
-- signalled that have not run yet (a producer need not wake a second worker while one is on
-- its way). Calls: sluice.runtime.sched, sluice.core.core (timers).
local core = require "sluice.core.core"
local sched = require "sluice.runtime.sched"

local need_task, begin_wait, suspend, wake = sched.need_task, sched.begin_wait, sched.suspend,
  sched.wake

local Cond = {}
Cond.__index = Cond

local function cond(what)
  return setmetatable({ head = 1, tail = 0, nwait = 0, woken = 0, what = what }, Cond)
end

function Cond:wait(timeout)
  local t = need_task(self.what)
  local id = begin_wait(t, self.what)
  local n = self.tail + 1
  self.tail = n
  self[2 * n - 1], self[2 * n] = t, id
  self.nwait = self.nwait + 1
  local timer
  if timeout then
    timer = core.after(timeout > 0 and timeout or 0, function() wake(t, id, false) end)
    t.wait_cancel = timer
  end
  local ok, v = pcall(suspend)
  if timer then timer:close() end
  if v == true then
    self.woken = self.woken - 1
  else
    self.nwait = self.nwait - 1 -- timed out or cancelled: not counted by signal
  end
  if not ok then error(v, 0) end
  return v
end

-- Wakes the first waiter still waiting; returns false when there was none.
function Cond:signal()
  while self.head <= self.tail do
    local h = self.head
    local t, id = self[2 * h - 1], self[2 * h]
    self[2 * h - 1], self[2 * h] = nil, nil
    self.head = h + 1
    if t.waiting and t.wait_id == id then
      if self.head > self.tail then self.head, self.tail = 1, 0 end
      self.nwait = self.nwait - 1
      self.woken = self.woken + 1
      wake(t, id, true)
      return true
    end
  end
  self.head, self.tail = 1, 0
  return false
end

function Cond:broadcast()
  while self:signal() do end
end

-- Whether an entry is queued (possibly stale: signal skips those).
function Cond:waiting() return self.tail >= self.head end

return { new = cond, Cond = Cond }
