-- sluice.runtime.files: which files a piece of work writes and removes.
--
--   local files = require "sluice.runtime.files"
--   files.wrote(path)     -- C code wrote path for the running task's work (Lua writes are seen
--                         -- by themselves, see below)
--   files.unwatched(fn)   -- fn's writes are not the running work's (previews of files that
--                         -- another unit writes whole)
--   files.wrote(path, true) -- ... a temporary: a later stage removes it once used (audio
--                         -- chunks); its absence on resume does not make the work run again
--                         -- unless what consumes it must run
--   files.write(path, bytes) -- the one way an output file is written: a temporary name, then a
--                         -- rename (true, or nil, message)
--   files.read(path)      -- (waits, inside a task) the whole file read on the pool: bytes, or
--                         -- nil, message, code
--   files.extend(path, keep, bytes) -- (waits, inside a task) path becomes its first `keep`
--                         -- bytes then `bytes`, through a temporary and a rename, copied on
--                         -- the pool: a file that grows without its writer holding what it
--                         -- wrote; written by C, so not reported to the watcher (files.wrote)
--
-- Work that wants to know (the graph, for a unit it runs) puts a watcher in its task's
-- context (sluice.runtime.sched.context(): tasks it spawns share it):
--   task.context = { files = watcher } -- watcher:wrote(path), :renamed(from, to), :removed(path)
--                         -- and optionally :defer_remove(path) -> true when it removes the
--                         -- file itself later (os.remove then returns true at once)
-- Once this module is loaded, io.open for writing ("w": a file made anew; appending to a
-- log is not making an output), os.rename and os.remove call
-- the running task's watcher, if any, after they succeeded: so a stage's outputs written by
-- Lua code (JSON, Markdown, renamed frames, downloads) are known without the stage saying
-- so. Files written by C (media chunks) are reported with files.wrote. Without a watcher the
-- three functions behave exactly as Lua's own.
local sched = require "sluice.runtime.sched"

local M = {}

local context = sched.context
local raw_open, raw_rename, raw_remove = io.open, os.rename, os.remove

-- remove(path): os.remove without asking any watcher (a removal a watcher held, done now).
M.remove = raw_remove
local find = string.find

local function watcher()
  local c = context()
  return c and c.files
end

function M.wrote(path, temporary)
  local w = watcher()
  if w then w:wrote(path, temporary) end
end

-- files.unwatched(fn, ...) -> fn(...)'s results, with the running task's watcher away while it
-- runs (fn must not wait): for writing a preview of a file another unit owns (a file that
-- grows while a later stage will write it whole, or close it; the preview writes are not the
-- writing unit's outputs, and counting them would key its outputs by the unit).
function M.unwatched(fn, ...)
  local c = context()
  local w = c and c.files
  if not w then return fn(...) end
  c.files = nil
  local r = table.pack(pcall(fn, ...))
  c.files = w
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

do -- (once per Lua state: require loads a module once)
  io.open = function(path, mode, ...)
    local f, err, code = raw_open(path, mode, ...)
    if f and mode and find(mode, "w", 1, true) then
      local w = watcher()
      if w then w:wrote(path) end
    end
    return f, err, code
  end
  os.rename = function(from, to)
    local ok, err, code = raw_rename(from, to)
    if ok then
      local w = watcher()
      if w then w:renamed(from, to) end
    end
    return ok, err, code
  end
  os.remove = function(path)
    local w0 = watcher()
    -- a file another unit made, removed by this one (a temporary it consumed): the watcher
    -- may hold the removal until this unit's result is stored (true: held, done later)
    if w0 and w0.defer_remove and w0:defer_remove(path) then return true end
    local ok, err, code = raw_remove(path)
    if ok then
      local w = watcher()
      if w then w:removed(path) end
    end
    return ok, err, code
  end
end

-- read(path) -> bytes, or nil, message, code. Reads the whole file on a pool thread (a large
-- file read on the loop would hold it); the calling task waits.
function M.read(path)
  local root, rel = path:match("^(.*)/([^/]+)$")
  if not root then root, rel = ".", path elseif root == "" then root = "/" end
  local httpd = require "sluice.core.httpd"
  return sched.await("read " .. path, function(done) return httpd.read_file(root, rel, done) end)
end

-- extend(path, keep, bytes) -> true, or nil, message, code (see the top of this file).
function M.extend(path, keep, bytes)
  local fs = require "sluice.core.fs"
  return sched.await("extend " .. path, function(done) return fs.extend(path, keep, bytes, done) end)
end

-- write(path, bytes) -> true, or nil, message. Writes bytes to path through a temporary file
-- beside it (path .. ".tmp") and a rename, so a reader, or a run killed at any point, sees the
-- old file or the new one, never half of one. Every output file of a pipeline is written by
-- this function (logs that are appended to are not outputs). The running task's watcher sees
-- the write and the rename, as for any Lua write.
function M.write(path, bytes)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, "cannot write '" .. path .. "': " .. tostring(err) end
  local ok, werr = f:write(bytes)
  local cok, cerr = f:close()
  if not ok or not cok then
    os.remove(tmp)
    return nil, "cannot write '" .. path .. "': " .. tostring(werr or cerr)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, "cannot rename '" .. tmp .. "' to '" .. path .. "': " .. tostring(rerr)
  end
  return true
end

return M
