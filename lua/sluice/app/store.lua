-- sluice.app.store: the job store (SQLite, WAL) behind resume, `sluice jobs` and the dashboard.
--
--   local store = require("sluice.app.store").open("out/sluice.db")
--   store:attach(job)            -- before sources start: records the job, listens to job.bus,
--                                -- sets job.memo
--   job.memo:get(stage, item_id) -- (waits) stored outputs {{data=,key=,seq=,t0=,t1=}, ...} or nil
--   job.memo:put(stage, item_id, outputs)
--   job.memo:put_batch(stage, batch_id, member_ids) / job.memo:batch_plan(stage, item_id)
--   job.memo:flush()             -- (waits) until what was put is committed
--   store:on_commit(fn)          -- fn(ok) once everything written so far is committed
--   store:detach(job[, status])  -- flushes and marks the job's status
--
-- The memo is keyed (memo.keyed): an item's stored outputs are used only when the key it was
-- stored under (sluice.graph.memokey: what determines the result) is the key it has now, and
-- the files it wrote are still there as they were. See docs/store.md, "Resume".
--
-- Writes never run on the loop thread: they are queued in memory and written by one pool job
-- at a time, each a single transaction holding everything queued since the previous one
-- (at most FLUSH_DELAY seconds old). A crash loses at most those last writes; their items
-- simply run again on resume.
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local digest = require "sluice.runtime.digest"
local serial = require "sluice.runtime.serial"
local core = require "sluice.core.core"
local cstore = require "sluice.core.store"
local cjson = require "cjson"
local json = require "sluice.runtime.json"

local M = {}
M.NULL = cstore.NULL
M.FLUSH_DELAY = 0.05 -- seconds a write may wait to be batched with others
M.MAX_BATCH = 500     -- statements per transaction (bounds the copy on the loop thread)

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, pipeline TEXT, script TEXT, inputs TEXT, config TEXT, out TEXT,
  status TEXT, created REAL, started REAL, finished REAL, runs INTEGER NOT NULL DEFAULT 0,
  error TEXT);
CREATE TABLE IF NOT EXISTS items (
  job TEXT NOT NULL, stage TEXT NOT NULL, id TEXT NOT NULL, key TEXT, seq INTEGER,
  status TEXT, attempt INTEGER, result TEXT, error TEXT, t_start REAL, t_end REAL,
  PRIMARY KEY (job, stage, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  job TEXT NOT NULL, run INTEGER NOT NULL, n INTEGER, t REAL, stage TEXT, event TEXT,
  item TEXT, json TEXT);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job, run, n);
CREATE TABLE IF NOT EXISTS batch_members (
  job TEXT NOT NULL, stage TEXT NOT NULL, item TEXT NOT NULL, batch TEXT NOT NULL,
  size INTEGER NOT NULL, PRIMARY KEY (job, stage, item)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stage_keys (
  job TEXT NOT NULL, stage TEXT NOT NULL, mkey TEXT, parts TEXT,
  PRIMARY KEY (job, stage)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources (
  job TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL, mkey TEXT, parts TEXT,
  PRIMARY KEY (job, source, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
  job TEXT NOT NULL, path TEXT NOT NULL, stage TEXT NOT NULL, item TEXT NOT NULL,
  size INTEGER, mtime REAL, temp INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (job, path)) WITHOUT ROWID;
]]

-- Columns added since the first schema: a store made before them gets them on open.
local ADDED_COLUMNS = { { "jobs", "settings", "TEXT" }, { "items", "mkey", "TEXT" } }

-- Made once the added columns are there: memo:get finds stored outputs by their key.
local INDEXES = "CREATE INDEX IF NOT EXISTS items_by_mkey ON items (job, stage, mkey)"

-- Values to JSON ---------------------------------------------------------------------------

local MAX_STRING = 65536

-- Converts any Lua value to something cjson can encode: functions and userdata become their
-- tostring, long strings are cut, tables become arrays when they are sequences.
local function jsonable(v, depth)
  local ty = type(v)
  if ty == "string" then
    if #v > MAX_STRING then return v:sub(1, MAX_STRING) .. "..." end
    return v
  elseif ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  elseif ty == "boolean" or ty == "nil" then
    return v
  elseif ty == "table" then
    if depth > 6 then return "{...}" end
    if next(v) == nil then return json.is_object(v) and json.object() or {} end -- (json's [] rule)
    local n = #v
    local out = {}
    local is_array = n > 0 or next(v) == nil
    if n > 0 then
      for k in pairs(v) do
        if math.type(k) ~= "integer" or k < 1 or k > n then is_array = false break end
      end
    end
    if is_array and n > 0 then
      for i = 1, n do
        local x = jsonable(v[i], depth + 1)
        if x == nil then x = cjson.null end
        out[i] = x
      end
      return out
    end
    for k, x in pairs(v) do
      out[tostring(k)] = jsonable(x, depth + 1)
    end
    return out
  end
  return tostring(v)
end

function M.to_json(v)
  local ok, s = pcall(json.encode, jsonable(v, 0))
  if ok then return s end
  return cjson.encode(tostring(v))
end

-- Lua values to stored text and back: sluice.runtime.serial (exact) --------------------

M.serialize = serial.encode -- (v) -> text | nil, message
M.deserialize = serial.decode -- (text) -> value | nil, message

-- Waiting on the database ------------------------------------------------------------------

-- Runs a read on the pool and waits for its rows (inside a task); outside a task (a command
-- line tool that does nothing else) it runs on the calling thread.
local function query(db, sql, params)
  if sched.current() then
    return sched.await("store.query", function(done) return db:query(sql, params, done) end)
  end
  return db:query_sync(sql, params)
end
M.query = query

-- The store ----------------------------------------------------------------------------------

local Store = {}
Store.__index = Store
Store.__name = "sluice.app.store"

-- open(path) -> store | nil, message, code
function M.open(path)
  if type(path) ~= "string" or path == "" then
    error("bad argument #1 to 'open' (database path expected)", 2)
  end
  local db, err, code = cstore.open(path)
  if not db then return nil, err, code end
  local ok, e2, c2 = db:exec_sync(SCHEMA)
  for _, col in ipairs(ADDED_COLUMNS) do
    if not ok then break end
    local rows = db:query_sync("PRAGMA table_info(" .. col[1] .. ")", {})
    local has = false
    for _, r in ipairs(rows or {}) do if r.name == col[2] then has = true end end
    if not has then
      ok, e2, c2 = db:exec_sync(string.format("ALTER TABLE %s ADD COLUMN %s %s", col[1], col[2], col[3]))
    end
  end
  if ok then ok, e2, c2 = db:exec_sync(INDEXES) end
  if not ok then
    db:close()
    return nil, e2, c2
  end
  return setmetatable({
    db = db, path = path, pending = {}, writing = false, timer = nil,
    flush_waiters = {}, attached = {}, memos = {}, write_error = nil, written = 0, batches = 0,
    queued_n = 0, finished_n = 0, commit_waiters = {},
  }, Store)
end

function Store:__tostring() return "sluice.app.store (" .. self.path .. ")" end

local function item_key(stage, id) return stage .. "\0" .. tostring(id) end

-- The memo's index of what is stored (memo.stored, memo.by_mk, memo.failed) holds a 64-bit
-- hash (FNV-1a) of each item key or output key, not the key: 40 bytes an entry instead of
-- about 170, for a run of many thousand items. Reads go to the database by the key itself
-- (a hash that matched by chance, 2^-64 a pair, costs one read that finds nothing).
local math_type = math.type
local fnv64 = require("sluice.graph.envelope").fnv64
local function hashed(stage, id) return fnv64(item_key(stage, id)) end

local start_flush

local function wake_flush_waiters(self)
  if self.writing or #self.pending > 0 then return end
  local w = self.flush_waiters
  self.flush_waiters = {}
  for _, fn in ipairs(w) do fn() end
end

start_flush = function(self)
  if self.timer then
    self.timer:close()
    self.timer = nil
  end
  if self.writing or #self.pending == 0 or not self.db then
    wake_flush_waiters(self)
    return
  end
  -- At most MAX_BATCH statements per transaction, so that copying the parameters (on the
  -- loop thread) stays short even when the disk falls behind.
  local batch = self.pending
  if #batch > M.MAX_BATCH then
    local rest = table.move(batch, M.MAX_BATCH + 1, #batch, 1, {})
    for i = #batch, M.MAX_BATCH + 1, -1 do batch[i] = nil end
    self.pending = rest
  else
    self.pending = {}
  end
  self.writing = true
  self.db:batch(batch, function(ok, err)
    self.writing = false
    if ok then
      self.written = self.written + #batch
      self.batches = self.batches + 1
      -- Outputs now on disk leave memory: a later get reads them back.
      for _, st in ipairs(batch) do
        if st[1] == M.PUT_ITEM then
          local memo = self.memos[st[2]]
          if memo then
            local key = item_key(st[3], st[4])
            local h = hashed(st[3], st[4])
            local mk = st[7] ~= cstore.NULL and st[7] or nil
            local mh = mk and hashed(st[3], mk)
            local old = memo.stored[h] -- (the hash of the key it was stored under)
            if math_type(old) == "integer" and old ~= mh and memo.by_mk[old] == h then
              memo.by_mk[old] = nil
            end
            memo.stored[h] = mh or true
            memo.cache[key] = nil
            if mk then
              memo.by_mk[mh] = h
              memo.cache_mk[item_key(st[3], mk)] = nil
            end
          end
        end
      end
    elseif not self.write_error then
      self.write_error = err
      io.stderr:write("sluice: " .. tostring(err) .. " (later writes go on)\n")
    end
    -- statements are written in the order they were queued: the batch ends at finished_n
    self.finished_n = self.finished_n + #batch
    local cw = self.commit_waiters
    while cw[1] and cw[1].at <= self.finished_n do
      local w = table.remove(cw, 1)
      local cok, cerr = pcall(w.fn, ok and true or false)
      if not cok then io.stderr:write("sluice: store: " .. tostring(cerr) .. "\n") end
    end
    if #self.pending > 0 then start_flush(self) else wake_flush_waiters(self) end
  end)
end

-- store:on_commit(fn): calls fn(ok) once every statement queued so far has been written: ok
-- is false when the transaction that held the last of them failed. fn runs on the loop (not
-- in a task; it must not wait); at once when nothing is queued or being written.
function Store:on_commit(fn)
  if self.finished_n >= self.queued_n then return fn(true) end
  local cw = self.commit_waiters
  cw[#cw + 1] = { at = self.queued_n, fn = fn }
end

-- store:write(sql, params...) queues one statement for the next transaction.
function Store:write(sql, ...)
  if not self.db then error("attempt to use a closed store", 2) end
  local st = table.pack(sql, ...)
  for i = 2, st.n do
    if st[i] == nil then st[i] = cstore.NULL end
  end
  local p = self.pending
  p[#p + 1] = st
  self.queued_n = self.queued_n + 1
  if #p >= M.MAX_BATCH then
    start_flush(self)
  elseif not self.timer and not self.writing then
    self.timer = core.after(M.FLUSH_DELAY, function()
      self.timer = nil
      start_flush(self)
    end)
  end
end

-- store:flush(): waits until everything queued so far is committed (inside a task), or
-- starts the write and returns at once (outside a task).
function Store:flush()
  start_flush(self)
  if not (self.writing or #self.pending > 0) then return true end
  if not sched.current() then return false end
  sched.await("store.flush", function(done)
    self.flush_waiters[#self.flush_waiters + 1] = done
  end)
  return self.write_error == nil, self.write_error
end

function Store:query(sql, params) return query(self.db, sql, params) end

function Store:close()
  if not self.db then return end
  if self.writing or #self.pending > 0 then
    if sched.current() then self:flush() end
  end
  if self.timer then self.timer:close() self.timer = nil end
  if not self.writing then
    self.db:close()
    self.db = nil
  end
end

-- Jobs ------------------------------------------------------------------------------------------

local function now() return core.time() end


-- What each bus event means for the item's row. Events not listed only go to the event log.
local ITEM_STATUS = {
  item_start = "running", item_done = "done", item_retry = "failed", item_failed = "failed",
  item_dead = "dead",
  -- short names, for buses other than the graph's
  start = "running", done = "done", retry = "failed", failed = "failed", dead = "dead",
}
M.ITEM_STATUS = ITEM_STATUS

local UPSERT_ITEM = [[
INSERT INTO items (job, stage, id, key, seq, status, attempt, error, t_start, t_end)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (job, stage, id) DO UPDATE SET
  key = coalesce(excluded.key, key), seq = coalesce(excluded.seq, seq),
  status = CASE WHEN status = 'done' AND result IS NOT NULL AND excluded.status <> 'done'
                THEN status ELSE excluded.status END,
  attempt = coalesce(excluded.attempt, attempt),
  error = CASE WHEN excluded.status IN ('failed', 'dead') THEN excluded.error
               WHEN excluded.status = 'done' THEN NULL ELSE error END,
  t_start = coalesce(excluded.t_start, t_start), t_end = coalesce(excluded.t_end, t_end)]]

local PUT_ITEM = [[
INSERT INTO items (job, stage, id, status, result, t_end, mkey) VALUES (?1, ?2, ?3, 'done', ?4, ?5, ?6)
ON CONFLICT (job, stage, id) DO UPDATE SET status = 'done', result = excluded.result,
  error = NULL, t_end = coalesce(t_end, excluded.t_end), mkey = excluded.mkey]]
M.PUT_ITEM = PUT_ITEM

local INSERT_EVENT = [[
INSERT INTO events (job, run, n, t, stage, event, item, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)]]

local function num_or_nil(v) if type(v) == "number" then return v end return nil end
local function str_or_nil(v) if v == nil then return nil end return tostring(v) end

-- A job's output folder as the store records it: absolute (a relative one is taken from the
-- working directory), so that `sluice serve` and `sluice jobs retry` find it from anywhere.
local function abs_dir(v)
  if v == nil then return nil end
  v = tostring(v)
  if v:sub(1, 1) == "/" then return v end
  local cwd = core.cwd()
  if not cwd then return v end
  v = v:gsub("^%./", "")
  return v == "." and cwd or (cwd .. "/" .. v)
end

-- Records one bus event: the event log row, and the item row when the event says something
-- about an item.
function Store:record(jobrec, ev)
  local json = M.to_json(ev)
  ev._json = json -- other listeners (the dashboard) reuse the encoding
  self:write(INSERT_EVENT, jobrec.id, jobrec.run, num_or_nil(ev.n), num_or_nil(ev.t) or now(),
    str_or_nil(ev.stage), str_or_nil(ev.event), str_or_nil(ev.id), json)
  local status = ITEM_STATUS[ev.event]
  if status and ev.stage ~= nil and ev.id ~= nil then
    local t = num_or_nil(ev.t) or now()
    local err = ev.error ~= nil and tostring(ev.error) or nil
    self:write(UPSERT_ITEM, jobrec.id, tostring(ev.stage), tostring(ev.id), str_or_nil(ev.key),
      math.type(ev.seq) == "integer" and ev.seq or nil, status,
      math.type(ev.attempt) == "integer" and ev.attempt or nil, err,
      status == "running" and t or nil, (status == "done" or status == "dead") and t or nil)
    local c = jobrec.counts
    c[status] = (c[status] or 0) + 1
  end
end

local Memo = {}
Memo.__index = Memo
Memo.__name = "sluice.app.store.memo"

-- memo:get(stage, item_id[, mkey]) -> outputs, missing_temps | nil, why, detail.
-- With a key, the outputs stored at that stage under that key (by any item: the key says
-- what determines them), if the files they came with are still as they were written; without
-- one, the item's own stored outputs. Waits for a read only when there is something stored,
-- and for a stat on the pool when it wrote files. why: "fresh" (--fresh), "new" (the item was
-- never stored), "failed" (its last attempt failed), "changed" (stored under another key:
-- what determines it changed), "missing" or "modified" (an output file, detail = its path, is
-- gone or not as it was written). missing_temps: files it wrote that a later stage removed
-- (temporaries, such as audio chunks): the caller decides whether they are needed again.
function Memo:get(stage, id, mk)
  if self.fresh then return nil, "fresh" end
  local rows, err
  if mk ~= nil then
    local c = self.cache_mk[item_key(stage, mk)]
    if c then return c end
    if not self.by_mk[hashed(stage, mk)] then
      local h = hashed(stage, id)
      if self.stored[h] then return nil, "changed" end
      return nil, self.failed[h] and "failed" or "new"
    end
    -- (the item's own row first, when it is stored under this key)
    rows, err = self.store:query([[SELECT id, result FROM items
      WHERE job = ? AND stage = ? AND mkey = ? AND result IS NOT NULL ORDER BY id = ? DESC LIMIT 1]],
      { self.job_id, tostring(stage), mk, tostring(id) })
  else
    local v = self.cache[item_key(stage, id)]
    if v ~= nil then return v end
    if not self.stored[hashed(stage, id)] then return nil, "new" end
    rows, err = self.store:query(
      "SELECT id, result FROM items WHERE job = ? AND stage = ? AND id = ? AND result IS NOT NULL",
      { self.job_id, tostring(stage), tostring(id) })
  end
  if not rows then error(err, 0) end
  if not rows[1] then return nil, "new" end
  local key = item_key(stage, rows[1].id)
  local rid = rows[1].id
  local out, derr = M.deserialize(rows[1].result)
  if out == nil then
    io.stderr:write(string.format("sluice: stored result of %s/%s is unreadable (%s); running it again\n",
      tostring(stage), tostring(rid), tostring(derr)))
    return nil, "new"
  end
  local temps
  local files = self.files[key]
  if files then
    local paths, want = {}, {}
    for _, f in ipairs(files) do
      if f.temp then
        temps = temps or {}
        temps[#temps + 1] = f.path
      else
        paths[#paths + 1] = f.path
        want[#want + 1] = f
      end
    end
    if #paths > 0 then
      local st, serr = digest.stat(paths)
      if not st then error(serr, 0) end
      for i, f in ipairs(want) do
        local now_ = st[i]
        if not now_ then return nil, "missing", f.path end
        if (f.size and now_.size ~= f.size) or (f.mtime and math.abs(now_.mtime - f.mtime) > 1e-6) then
          return nil, "modified", f.path
        end
      end
    end
    if temps then -- the temporaries still there need not be made again
      local st = digest.stat(temps) or {}
      local gone = {}
      for i, p in ipairs(temps) do if not st[i] then gone[#gone + 1] = p end end
      temps = #gone > 0 and gone or nil
    end
  end
  self.hits = self.hits + 1
  return out, temps
end

-- memo:peek(stage, mkey) -> true when outputs are stored at that stage under that key (never
-- waits; says nothing of their files).
function Memo:peek(stage, mk)
  if self.fresh then return false end
  return self.cache_mk[item_key(stage, mk)] ~= nil or self.by_mk[hashed(stage, mk)] ~= nil
end

local PUT_FILE = [[
INSERT INTO files (job, path, stage, item, size, mtime, temp) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job, path) DO UPDATE SET stage = excluded.stage, item = excluded.item,
  size = excluded.size, mtime = excluded.mtime, temp = excluded.temp]]

-- memo:put(stage, item_id, outputs[, mkey[, files[, temps]]]): stores the item's outputs
-- (written with the next batch) under its key, with the files it wrote (paths; their size and
-- time are read now, on the pool); temps: set of those paths that are temporaries from the
-- start (a later stage removes them: their absence alone does not make the item run again). Returns true, or nil and a message when the outputs cannot be
-- stored (they are not then remembered, and the item runs again on resume).
function Memo:put(stage, id, outputs, mk, files, temps)
  local text, err = M.serialize(outputs)
  if not text then
    local msg = string.format("store: cannot store the result of %s/%s: %s", tostring(stage),
      tostring(id), err)
    if not self.warned then
      self.warned = true
      io.stderr:write("sluice: " .. msg .. "\n")
    end
    return nil, msg
  end
  local key = item_key(stage, id)
  self.cache[key] = outputs
  if mk ~= nil then self.cache_mk[item_key(stage, mk)] = outputs end
  self.failed[hashed(stage, id)] = nil
  -- Files the item wrote when it ran before and did not write this time are stale (a
  -- shorter input gives fewer slides): they go, as a fresh run would not have them.
  local old = self.files[key]
  if old then
    local now_set = {}
    for _, p in ipairs(files or {}) do now_set[p] = true end
    for _, f in ipairs(old) do
      if not now_set[f.path] and self.file_owner[f.path] == key then
        os.remove(f.path)
        self.file_owner[f.path] = nil
        self.store:write("DELETE FROM files WHERE job = ? AND path = ?", self.job_id, f.path)
      end
    end
  end
  local list
  if files and #files > 0 then
    local st = digest.stat(files) or {}
    list = {}
    for i, path in ipairs(files) do
      local f = st[i]
      if f then
        local temp = temps and temps[path] and true or nil
        list[#list + 1] = { path = path, size = f.size, mtime = f.mtime, temp = temp }
        local old = self.file_owner[path]
        if old and old ~= key then self:_drop_file(old, path) end
        self.file_owner[path] = key
        self.store:write(PUT_FILE, self.job_id, path, tostring(stage), tostring(id), f.size, f.mtime,
          temp and 1 or 0)
      end
    end
  end
  self.files[key] = list
  self.store:write(PUT_ITEM, self.job_id, tostring(stage), tostring(id), text, now(), mk)
  return true
end

function Memo:_drop_file(owner, path)
  local list = self.files[owner]
  if not list then return end
  for i = #list, 1, -1 do
    if list[i].path == path then table.remove(list, i) end
  end
end

-- memo:removed(path): a stage removed a file another item wrote: it was a temporary, not
-- an output that must be there for that item's result to be used.
function Memo:removed(path)
  local owner = self.file_owner[path]
  if not owner then return end
  for _, f in ipairs(self.files[owner] or {}) do
    if f.path == path then f.temp = true end
  end
  self.store:write("UPDATE files SET temp = 1 WHERE job = ? AND path = ?", self.job_id, path)
end

-- memo:stage_record(stage) -> {mkey=, parts=} stored for the stage by the last run, or nil
-- (never waits: read when the job attached).
function Memo:stage_record(stage)
  if self.fresh then return nil end
  return self.stage_keys[stage]
end

-- memo:put_stage(stage, mkey, parts): what the stage's key was made of in this run.
function Memo:put_stage(stage, mk, parts)
  local text = M.serialize(parts)
  self.stage_keys[stage] = { mkey = mk, parts = parts }
  self.store:write([[INSERT INTO stage_keys (job, stage, mkey, parts) VALUES (?, ?, ?, ?)
    ON CONFLICT (job, stage) DO UPDATE SET mkey = excluded.mkey, parts = excluded.parts]],
    self.job_id, tostring(stage), mk, text)
end

-- memo:source(stage, item_id) -> the key a source item had in the last run, or nil.
function Memo:source(stage, id)
  if self.fresh then return nil end
  return self.sources[item_key(stage, id)]
end

-- memo:put_source(stage, item_id, mkey, parts): a source item's key and what it was made of
-- (an input file's identity), for the next run and `sluice jobs show`.
function Memo:put_source(stage, id, mk, parts)
  self.store:write([[INSERT INTO sources (job, source, id, mkey, parts) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (job, source, id) DO UPDATE SET mkey = excluded.mkey, parts = excluded.parts]],
    self.job_id, tostring(stage), tostring(id), mk, M.serialize(parts) or "{}")
end

-- memo:flush(): waits until every output put so far is committed (remote stages acknowledge
-- a result on the broker only after this: sluice.graph.remote).
function Memo:flush() return self.store:flush() end

-- memo:on_commit(fn): fn(ok) once what was put so far is committed (see store:on_commit).
function Memo:on_commit(fn) return self.store:on_commit(fn) end

local PUT_MEMBER = [[
INSERT INTO batch_members (job, stage, item, batch, size) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (job, stage, item) DO UPDATE SET batch = excluded.batch, size = excluded.size]]

-- memo:put_batch(stage, batch_id, member_ids): remembers which items made a batch whose
-- outputs were stored, so that a resumed run can put the same items together again (a batch
-- closed by its `wait` may otherwise be composed differently, and its id would not match).
-- Only the database learns it: in this run the items have come already (each comes once).
function Memo:put_batch(stage, batch_id, member_ids)
  for _, item in ipairs(member_ids) do
    self.store:write(PUT_MEMBER, self.job_id, tostring(stage), tostring(item), tostring(batch_id), #member_ids)
  end
end

-- memo:batch_plan(stage, item_id) -> { batch = id, size = n } of the stored batch the item
-- was part of, or nil. Cannot wait: the plans are read when the store attaches the job.
function Memo:batch_plan(stage, item_id)
  local plans = self.batches[stage]
  return plans and plans[item_id]
end

local function load_batch_plans(self, job_id)
  local rows, err = query(self.db, "SELECT stage, item, batch, size FROM batch_members WHERE job = ?",
    { job_id })
  if not rows then error(err, 0) end
  local by_stage, shared = {}, {}
  for _, r in ipairs(rows) do
    local plans = by_stage[r.stage]
    if not plans then plans = {}; by_stage[r.stage] = plans end
    local sk = r.stage .. "\0" .. r.batch
    local plan = shared[sk]
    if not plan then plan = { batch = r.batch, size = r.size }; shared[sk] = plan end
    plans[r.item] = plan
  end
  return by_stage
end

-- Which (stage, id) pairs an earlier run stored, under which key (true: stored before keys
-- were), and which failed, so that memo:get of a fresh or changed item costs no read.
local function load_stored_keys(self, job_id)
  local rows, err = query(self.db, [[SELECT stage, id, mkey, result IS NOT NULL AS has, status
    FROM items WHERE job = ?]], { job_id })
  if not rows then error(err, 0) end
  local set, failed, by_mk, n = {}, {}, {}, 0
  for _, r in ipairs(rows) do
    local h = hashed(r.stage, r.id)
    if r.has == 1 then
      local mk = type(r.mkey) == "string" and r.mkey or nil
      local mh = mk and hashed(r.stage, mk)
      set[h] = mh or true
      if mh then by_mk[mh] = h end
      n = n + 1
    elseif r.status == "dead" or r.status == "failed" then
      failed[h] = true
    end
  end
  return set, n, failed, by_mk
end

-- The files each stored item wrote: item key -> list of {path, size, mtime, temp}, and
-- path -> item key.
local function load_files(self, job_id)
  local rows, err = query(self.db, "SELECT path, stage, item, size, mtime, temp FROM files WHERE job = ?",
    { job_id })
  if not rows then error(err, 0) end
  local by_item, owner = {}, {}
  for _, r in ipairs(rows) do
    local key = item_key(r.stage, r.item)
    local list = by_item[key]
    if not list then list = {}; by_item[key] = list end
    list[#list + 1] = { path = r.path, size = r.size, mtime = r.mtime, temp = r.temp == 1 }
    owner[r.path] = key
  end
  return by_item, owner
end

local function load_sources(self, job_id)
  local rows, err = query(self.db, "SELECT source, id, mkey FROM sources WHERE job = ?", { job_id })
  if not rows then error(err, 0) end
  local out = {}
  for _, r in ipairs(rows) do out[item_key(r.source, r.id)] = r.mkey end
  return out
end

local function load_stage_keys(self, job_id)
  local rows, err = query(self.db, "SELECT stage, mkey, parts FROM stage_keys WHERE job = ?", { job_id })
  if not rows then error(err, 0) end
  local out = {}
  for _, r in ipairs(rows) do
    out[r.stage] = { mkey = r.mkey, parts = r.parts and M.deserialize(r.parts) or {} }
  end
  return out
end

-- What can be stored exactly of a config (functions and objects of a Lua config file are left
-- out).
local plain = require("sluice.graph.util").plain

local function encode_field(v)
  if v == nil then return nil end
  return M.to_json(v)
end

-- The job's settings without secrets (API keys come from the environment and never reach
-- the store).
local function safe_config(cfg)
  if type(cfg) ~= "table" then return cfg end
  local ok, config = pcall(require, "sluice.app.config")
  if ok and type(config) == "table" and config.redact then
    local ok2, r = pcall(config.redact, cfg)
    if ok2 then return r end
  end
  return cfg
end

-- The path of the pipeline script, for `sluice jobs retry`: the job's own, else the script
-- `sluice run` is running.
local function script_path(job)
  local p = job.script_path or job.script
  if type(p) == "string" then return p end
  local a = rawget(_G, "arg")
  if type(a) == "table" and type(a[0]) == "string" and a[0]:match("%.lua$") then return a[0] end
  return nil
end

local function pipeline_name(job)
  local n = job.pipeline_name or job.name
  if type(n) == "string" then return n end
  return nil
end

-- store:attach(job): records the job, subscribes to job.bus and sets job.memo.
function Store:attach(job)
  if not self.db then error("attempt to use a closed store", 2) end
  if type(job) ~= "table" or job.id == nil then
    error("bad argument #1 to 'attach' (job with an id expected)", 2)
  end
  local id = tostring(job.id)
  local rows = query(self.db, "SELECT runs FROM jobs WHERE id = ?", { id }) or {}
  local run = ((rows[1] and rows[1].runs) or 0) + 1
  local stored, nstored, failed, by_mk = load_stored_keys(self, id)
  local files, file_owner = load_files(self, id)
  local stage_keys = load_stage_keys(self, id)
  local t = now()
  local safe = safe_config(job.config)
  -- the settings exactly (integers stay integers), for `sluice jobs retry`
  local settings = type(safe) == "table" and M.serialize(plain(safe)) or nil
  self:write([[INSERT INTO jobs (id, pipeline, script, inputs, config, out, status, created, runs)
    VALUES (?, ?, ?, ?, ?, ?, 'running', ?, 0) ON CONFLICT (id) DO NOTHING]],
    id, pipeline_name(job), script_path(job),
    encode_field(job.inputs), encode_field(safe), abs_dir(job.out_dir or job.out), t)
  self:write([[UPDATE jobs SET status = 'running', started = ?, finished = NULL, runs = ?,
    pipeline = coalesce(?, pipeline), script = coalesce(?, script), inputs = coalesce(?, inputs),
    config = coalesce(?, config), out = coalesce(?, out), settings = coalesce(?, settings),
    error = NULL WHERE id = ?]],
    t, run, pipeline_name(job), script_path(job),
    encode_field(job.inputs), encode_field(safe), abs_dir(job.out_dir or job.out), settings, id)
  -- A dead item gets its chance again on this run: clear its old failure count.
  local rec = { id = id, run = run, counts = {}, resumed = nstored }
  self.attached[job] = rec
  job.memo = setmetatable({ store = self, job_id = id, cache = {}, cache_mk = {}, stored = stored,
    by_mk = by_mk, failed = failed, sources = load_sources(self, id), files = files, file_owner = file_owner, stage_keys = stage_keys, hits = 0,
    keyed = true, fresh = job.fresh or false, batches = load_batch_plans(self, id) }, Memo)
  self.memos[id] = job.memo
  job.store = self
  job.store_run = run
  if job.bus then
    local off = job.bus:on(function(ev) self:record(rec, ev) end)
    rec.off = off
  end
  return rec
end

-- store:detach(job[, status]): stops listening, flushes, and marks the job's status: the one
-- given, else job.status, else "failed" when items were dead-lettered, else "done".
function Store:detach(job, status)
  local rec = self.attached[job]
  if not rec then return nil, "job is not attached" end
  self.attached[job] = nil
  if self.memos[rec.id] == job.memo then self.memos[rec.id] = nil end
  if type(rec.off) == "function" then
    pcall(rec.off)
  elseif job.bus and job.bus.off then
    pcall(job.bus.off, job.bus, rec.off)
  end
  if status == nil then
    local state = job.state or job.status
    local dead = (rec.counts.dead or 0) > 0 or (type(job.dead) == "table" and #job.dead > 0)
    if state == "stopped" or state == "cancelled" or state == "interrupted" then
      status = "interrupted"
    elseif state == "failed" or dead then
      status = "failed"
    else
      status = "done"
    end
  end
  self:write("UPDATE jobs SET status = ?, finished = ? WHERE id = ?", status, now(), rec.id)
  return self:flush()
end

-- Reading --------------------------------------------------------------------------------------

-- store:jobs() -> list of job rows, newest first.
function Store:jobs()
  return self:query([[SELECT id, pipeline, script, status, created, started, finished, runs, out,
    (SELECT count(*) FROM items i WHERE i.job = jobs.id AND i.status = 'done') AS done,
    (SELECT count(*) FROM items i WHERE i.job = jobs.id AND i.status = 'dead') AS dead
    FROM jobs ORDER BY coalesce(started, created) DESC]], {})
end

-- store:remove(id) -> true, or nil and a message: deletes the job with its items, events and
-- batch members (written on the pool like every other write). Removing a job no process runs
-- any more is the caller's business (see `sluice jobs rm`).
local REMOVE_JOB = { "DELETE FROM events WHERE job = ?", "DELETE FROM items WHERE job = ?",
  "DELETE FROM batch_members WHERE job = ?", "DELETE FROM stage_keys WHERE job = ?",
  "DELETE FROM sources WHERE job = ?",
  "DELETE FROM files WHERE job = ?", "DELETE FROM jobs WHERE id = ?" }

function Store:remove(id)
  if not self.db then error("attempt to use a closed store", 2) end
  id = tostring(id)
  if sched.current() then
    for _, sql in ipairs(REMOVE_JOB) do self:write(sql, id) end
    return self:flush()
  end
  -- Outside a task (the `sluice jobs` command, which runs no loop work): directly, in one
  -- transaction, like that command's reads.
  local ok, err = query(self.db, "BEGIN", {})
  for _, sql in ipairs(REMOVE_JOB) do
    if not ok then break end
    ok, err = query(self.db, sql, { id })
  end
  if not ok then
    query(self.db, "ROLLBACK", {})
    return nil, err
  end
  return query(self.db, "COMMIT", {})
end

-- store:prune(job, {items = N, events = M}): bounds what a long-running job leaves in the
-- store while it runs. Of each stage's finished item rows (done or dead), the latest N (by
-- when they finished) are kept; of the job's event rows, those of the latest M events of
-- this run (earlier runs' events all go), except its `cost` records. Nil or 0 keeps all of
-- that kind. The deletions are queued like every other write (one transaction on the pool,
-- never on the loop); each statement touches the job's rows through their primary key or
-- the events index, so its cost is that of the rows kept plus those deleted.
local PRUNE_ITEMS = [[
DELETE FROM items WHERE job = ?1 AND stage = ?2 AND t_end IS NOT NULL AND t_end <
  (SELECT t_end FROM items WHERE job = ?1 AND stage = ?2 AND t_end IS NOT NULL
   ORDER BY t_end DESC LIMIT 1 OFFSET ?3)]]
local PRUNE_EVENTS = [[
DELETE FROM events WHERE job = ?1 AND (run < ?2 OR (run = ?2 AND n <= ?3)) AND
  (event IS NULL OR event <> 'cost')]]

function Store:prune(job, keep)
  local rec = self.attached[job]
  if not rec then return nil, "job is not attached" end
  keep = keep or {}
  local items, events = math.tointeger(keep.items or 0), math.tointeger(keep.events or 0)
  if not items or items < 0 or not events or events < 0 then
    error("bad argument #2 to 'prune' (items and events must be integers >= 0)", 2)
  end
  if items > 0 then
    for _, stage in ipairs(job.order or {}) do
      local name = type(stage) == "table" and stage.name or stage
      self:write(PRUNE_ITEMS, rec.id, tostring(name), items - 1)
    end
  end
  local n = job.bus and job.bus.n or 0
  if events > 0 and n > events then self:write(PRUNE_EVENTS, rec.id, rec.run, n - events) end
  return true
end

-- store:job(id) -> {job=row, stages={ {stage=, done=, dead=, ...}, ... }, failures={...}} | nil
function Store:job(id)
  local rows, err = self:query("SELECT * FROM jobs WHERE id = ?", { tostring(id) })
  if not rows then return nil, err end
  if not rows[1] then return nil, "no job '" .. tostring(id) .. "' in " .. self.path end
  local job = rows[1]
  local counts = self:query([[SELECT stage, status, count(*) AS n, min(t_start) AS first,
    max(t_end) AS last FROM items WHERE job = ? GROUP BY stage, status ORDER BY stage]],
    { job.id }) or {}
  local stages, order = {}, {}
  for _, r in ipairs(counts) do
    local s = stages[r.stage]
    if not s then
      s = { stage = r.stage, done = 0, dead = 0, failed = 0, running = 0 }
      stages[r.stage] = s
      order[#order + 1] = s
    end
    s[r.status or "unknown"] = (s[r.status or "unknown"] or 0) + r.n
  end
  local failures = self:query([[SELECT stage, id, key, seq, status, attempt, error FROM items
    WHERE job = ? AND status IN ('dead', 'failed') ORDER BY stage, key, seq, id]], { job.id }) or {}
  -- what each stage's key was made of, and each input's identity (sources' rows)
  local keys = {}
  for _, r in ipairs(self:query("SELECT stage, mkey, parts FROM stage_keys WHERE job = ? ORDER BY stage",
    { job.id }) or {}) do
    keys[#keys + 1] = { stage = r.stage, mkey = r.mkey, parts = r.parts and M.deserialize(r.parts) or {} }
  end
  local sources = {}
  for _, r in ipairs(self:query("SELECT source, id, mkey, parts FROM sources WHERE job = ? ORDER BY id",
    { job.id }) or {}) do
    sources[#sources + 1] = { stage = r.source, id = r.id, mkey = r.mkey,
      parts = r.parts and M.deserialize(r.parts) or nil }
  end
  -- what each run's provider calls cost (its `cost` event, sluice.providers.chain)
  local costs = {}
  for _, r in ipairs(self:query("SELECT run, json FROM events WHERE job = ? AND event = 'cost' ORDER BY run, n",
    { job.id }) or {}) do
    local ok, v = pcall(cjson.decode, r.json)
    if ok and type(v) == "table" then
      v.run = r.run
      costs[#costs + 1] = v
    end
  end
  return { job = job, stages = order, failures = failures, keys = keys, sources = sources, costs = costs }
end

-- store:events(job_id, after_n[, run]) -> rows of the job's latest (or given) run with n > after_n
function Store:events(job_id, after_n, run, limit)
  if not run then
    local r = self:query("SELECT max(run) AS run FROM events WHERE job = ?", { tostring(job_id) })
    run = r and r[1] and r[1].run or 0
  end
  return self:query([[SELECT n, json FROM events WHERE job = ? AND run = ? AND n > ?
    ORDER BY n LIMIT ?]], { tostring(job_id), run, after_n or 0, limit or 100000 }), run
end

return M
