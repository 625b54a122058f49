-- sluice.blocks.grow: an output file that grows as its parts finish, in order, without its
-- writer holding what it wrote (a two-hour lecture's fused.json, summary.md and judge.json).
--
--   local grow = require "sluice.blocks.grow"
--   local g = grow.new { path = dir .. "/fused.json", open = "[", sep = ",", close = "]" }
--   g:put(seq, text)  -- (in a task) part seq; written once every part before it is
--   g:finish()        -- (in a task) the parts still held, in seq order, then `close`
--
-- The file is `open`, the parts in seq order (from `first`, default 1) separated by `sep`,
-- then `close`: after each write it is complete as far as it goes (a JSON array is valid
-- JSON). A part waits for the ones before it (a slide whose description is late holds the
-- later ones back; finish() writes what is held, gaps skipped). A write makes the file its
-- old bytes less `close`, plus the new parts (sluice.runtime.files.extend: a temporary and a
-- rename, copied on the pool), so each is as atomic as a whole write; as that copies the
-- file, a write waits `factor` (20) times as long as the last one took, at least `min_wait`
-- (2 s) after it: at most 5% of the time goes to copying. `open` may be set (g.open = text)
-- until the first write.
--
-- Where `path` exists when the grower is made (a run that resumes or redoes a job: the file
-- is a finished one), the parts grow in `path .. ".part"` and finish() renames that over
-- `path`: the finished file stays whole until the new one is. finish() reports the file as
-- written by the running unit (sluice.runtime.files.wrote); the writes before it are previews
-- (written by C, not seen by the unit's watcher).
--
-- put and finish return true, or nil and a message naming the file: after a failed write
-- the grower writes nothing more, and finish() returns that error.
local files = require "sluice.runtime.files"
local sched = require "sluice.runtime.sched"

local concat = table.concat

local M = {}

local Grower = {}
Grower.__index = Grower
Grower.__name = "sluice.grower"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- new{path=, open="", sep="", close="", first=1, factor=20, min_wait=2} -> a grower.
function M.new(o)
  if type(o) ~= "table" or type(o.path) ~= "string" then
    error("bad argument #1 to 'grow.new' ({path=...} expected)", 2)
  end
  local live = not exists(o.path)
  return setmetatable({
    path = o.path, target = live and o.path or (o.path .. ".part"), live = live,
    open = o.open or "", sep = o.sep or "", close = o.close or "",
    factor = o.factor or 20, min_wait = o.min_wait or 2,
    ready = {},          -- seq -> text of a part not yet written
    next = o.first or 1, -- the next part in order
    size = 0,            -- bytes in the file before `close` (0: nothing written yet)
    parts = 0,           -- parts written
    next_write = 0,      -- sched.now() before which no write starts
    err = nil, finished = false,
  }, Grower)
end

-- Writes the parts ready in order (all of those held, gaps skipped, when `all`), then close.
local function write(self, all)
  local out, ready = {}, self.ready
  local function take(seq)
    out[#out + 1] = ready[seq]
    ready[seq] = nil
    self.next = seq + 1
  end
  while ready[self.next] do take(self.next) end
  if all then
    local rest = {}
    for seq in pairs(ready) do rest[#rest + 1] = seq end
    table.sort(rest)
    for _, seq in ipairs(rest) do take(seq) end
  end
  if #out == 0 and not all then return true end -- (finish writes even then: `close` may differ)
  local body = concat(out, self.sep)
  local lead = self.size == 0 and self.open or ((self.parts > 0 and #out > 0) and self.sep or "")
  local bytes = lead .. body .. self.close
  local t0 = sched.now()
  local ok, err = files.extend(self.target, self.size, bytes)
  if not ok then
    self.err = "cannot grow " .. self.path .. ": " .. tostring(err)
    self.ready = {}
    return nil, self.err
  end
  self.size = self.size + #bytes - #self.close
  self.parts = self.parts + #out
  self.next_write = sched.now() + math.max(self.min_wait, self.factor * (sched.now() - t0))
  return true
end

-- g:put(seq, text): part seq (an integer >= first, each once). Writes when it and the parts
-- before it are in and the last write is long enough ago.
function Grower:put(seq, text)
  if math.type(seq) ~= "integer" then error("bad argument #1 to 'put' (integer seq expected)", 2) end
  if type(text) ~= "string" then error("bad argument #2 to 'put' (string expected)", 2) end
  if self.finished then error("grow: put after finish (" .. self.path .. ")", 2) end
  if self.err then return nil, self.err end
  if seq < self.next or self.ready[seq] then return true end -- (written or held already)
  self.ready[seq] = text
  if not self.ready[self.next] or sched.now() < self.next_write then return true end
  return write(self, false)
end

-- g:finish(): writes every part held, in seq order, and `close`; renames a `.part` file over
-- the path. Once only.
function Grower:finish()
  if self.finished then error("grow: finish called twice (" .. self.path .. ")", 2) end
  self.finished = true
  if self.err then return nil, self.err end
  local ok, err = write(self, true)
  if not ok then return nil, err end
  if not self.live then
    local rok, rerr = os.rename(self.target, self.path) -- (the watcher sees the rename)
    if not rok then return nil, "cannot grow " .. self.path .. ": " .. tostring(rerr) end
  else
    files.wrote(self.path)
  end
  return true
end

return M
