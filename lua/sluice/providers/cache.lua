-- sluice.providers.cache: provider results addressed by the content of their requests, in one
-- SQLite file shared by every job on the machine.
--
--   local cache = require "sluice.providers.cache"
--   local c, err = cache.open()                -- $XDG_CACHE_HOME/sluice/results.db (or a path)
--   local hit = c:get({key1, key2})            -- (waits) the first key's row in list order:
--                                              -- {key=, value=, usd=, provider=, model=} | nil
--   c:put(key, value, {provider=, model=, role=, usd=, tokens=})   -- (waits)
--   c:stats() / c:prune(days) / c:clear()      -- `sluice cache stats | prune DAYS | rm`
--
-- Keys are made by sluice.runtime.digest.key (the project's one keying function) from the
-- exact request content (sluice.providers.chain says which parts). Values are stored with
-- sluice.runtime.serial (exact). Reads and writes run on the engine's worker threads
-- (sluice.core.store), never on the loop; opening the file is done once per run. The file
-- holds no key or secret: a key is a hash, a value a provider's reply.
local sched = require "sluice.runtime.sched"
local serial = require "sluice.runtime.serial"
local cstore = require "sluice.core.store"
local core = require "sluice.core.core"

local M = {}

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS results (
  key TEXT PRIMARY KEY, provider TEXT, model TEXT, role TEXT, value TEXT NOT NULL,
  usd REAL, tokens INTEGER, bytes INTEGER, created REAL, used REAL, hits INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_used ON results (used);
]]

-- The default file: $XDG_CACHE_HOME/sluice/results.db (~/.cache/sluice/results.db), beside
-- the vendors' model lists (sluice.providers.catalog).
function M.default_path()
  return require("sluice.providers.catalog").cache_dir() .. "/results.db"
end

local Cache = {}
Cache.__index = Cache
Cache.__name = "sluice.providers.cache"

local function query(db, sql, params)
  if sched.current() then
    return sched.await("cache.query", function(done) return db:query(sql, params, done) end)
  end
  return db:query_sync(sql, params)
end

local function batch(db, stmts)
  return sched.await("cache.write", function(done) return db:batch(stmts, done) end)
end

-- open([path]) -> cache | nil, message. Makes the folder (a child process: mkdir -p) when
-- it is missing.
function M.open(path)
  path = path or M.default_path()
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local sl = require "sluice"
    local f = io.open(dir, "rb")
    if f then f:close() else
      local r = sched.current() and sl.exec({ "mkdir", "-p", dir }) or os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
      if r == nil or (type(r) == "table" and r.status ~= 0) then
        return nil, "cache " .. path .. ": cannot make its folder " .. dir
      end
    end
  end
  local db, err = cstore.open(path)
  if not db then return nil, "cache " .. tostring(err) end
  local ok, e2 = db:exec_sync(SCHEMA)
  if not ok then
    db:close()
    return nil, "cache " .. tostring(e2)
  end
  return setmetatable({ db = db, path = path }, Cache)
end

function Cache:__tostring() return "sluice.providers.cache (" .. self.path .. ")" end

-- get(keys) -> the row of the first of keys (a list, in order of preference) the cache holds,
-- with its value decoded, or nil. A value that cannot be decoded is no hit.
function Cache:get(keys)
  if #keys == 0 then return nil end
  local marks = {}
  for i = 1, #keys do marks[i] = "?" end
  local rows, err = query(self.db, "SELECT key, provider, model, role, value, usd, tokens FROM results WHERE key IN (" ..
    table.concat(marks, ",") .. ")", keys)
  if not rows then return nil, err end
  local by = {}
  for _, r in ipairs(rows) do by[r.key] = r end
  for _, k in ipairs(keys) do
    local r = by[k]
    if r then
      local v = serial.decode(r.value)
      if v ~= nil then
        r.value = v
        self.db:batch({ { "UPDATE results SET used = ?, hits = hits + 1 WHERE key = ?", core.time(), k } },
          function() end)
        return r
      end
    end
  end
  return nil
end

-- put(key, value, meta{provider=, model=, role=, usd=, tokens=}) -> true | nil, message
function Cache:put(key, value, meta)
  meta = meta or {}
  local text, err = serial.encode(value)
  if not text then return nil, err end
  local t = core.time()
  local NULL = cstore.NULL
  return batch(self.db, { { "INSERT OR REPLACE INTO results (key, provider, model, role, value, usd, tokens, bytes, " ..
    "created, used, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)", key, meta.provider or NULL,
    meta.model and tostring(meta.model) or NULL, meta.role or NULL, text, meta.usd or NULL,
    meta.tokens and math.tointeger(meta.tokens) or NULL, #text, t, t } })
end

-- stats() -> {entries=, bytes=, hits=, usd=, by = {{provider=, model=, role=, entries=, hits=,
-- usd=, saved=}}, oldest=, newest=}: saved is what the hits would have cost.
function Cache:stats()
  local rows, err = query(self.db, "SELECT provider, model, role, COUNT(*) AS entries, SUM(hits) AS hits, " ..
    "SUM(bytes) AS bytes, SUM(usd) AS usd, SUM(usd * hits) AS saved, MIN(created) AS oldest, MAX(used) AS newest " ..
    "FROM results GROUP BY provider, model, role ORDER BY provider, model, role", {})
  if not rows then return nil, err end
  local s = { entries = 0, hits = 0, bytes = 0, usd = 0, saved = 0, by = rows }
  for _, r in ipairs(rows) do
    s.entries = s.entries + (r.entries or 0)
    s.hits = s.hits + (r.hits or 0)
    s.bytes = s.bytes + (r.bytes or 0)
    s.usd = s.usd + (r.usd or 0)
    s.saved = s.saved + (r.saved or 0)
    if r.oldest and (not s.oldest or r.oldest < s.oldest) then s.oldest = r.oldest end
    if r.newest and (not s.newest or r.newest > s.newest) then s.newest = r.newest end
  end
  return s
end

-- prune(days) -> entries removed: those not used for more than days.
function Cache:prune(days)
  local cut = core.time() - days * 86400
  local before = query(self.db, "SELECT COUNT(*) AS n FROM results WHERE used < ?", { cut })
  local n = before and before[1] and before[1].n or 0
  local ok, err
  if sched.current() then
    ok, err = batch(self.db, { { "DELETE FROM results WHERE used < ?", cut } })
  else
    ok, err = self.db:exec_sync(string.format("DELETE FROM results WHERE used < %.6f", cut))
  end
  if not ok then return nil, err end
  return n
end

-- clear() -> entries removed
function Cache:clear()
  local before = query(self.db, "SELECT COUNT(*) AS n FROM results", {})
  local n = before and before[1] and before[1].n or 0
  local ok, err
  if sched.current() then ok, err = batch(self.db, { { "DELETE FROM results" } })
  else ok, err = self.db:exec_sync("DELETE FROM results") end
  if not ok then return nil, err end
  return n
end

function Cache:close()
  if self.db then self.db:close() end
  self.db = nil
end

return M
