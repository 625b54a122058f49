-- sluice.graph.memokey: the keys resume is keyed by: what determines a stage's results.
--
-- Owns, for a job whose memo is keyed (the job store's): each stage's settings key, each
-- unit's key, each output's key, the config view that records which settings a stage
-- reads, the files a unit writes, and the account of what was reused and why the rest ran.
-- Keys are made by the one keying function, sluice.runtime.digest (key, join).
--
--   stage settings key = key{ code of run/on_gate, version, the pipeline's version, params,
--                              the settings it read in the run before (path -> value) }
--     It stays the stored one while all of that is unchanged; otherwise it is new, and the
--     differences are the stage's reasons ("setting fusion changed").
--   unit key          = join(stage key, input keys): an item's key (plus its gate's, for a
--                        gated join), the sorted keys of a batch's or group's items (those
--                        a collect stage's keep let go included)
--   output key        = join(unit key, "#k") for the k-th output of a unit that wrote files
--                        before it (the output names files the unit made: the unit is what
--                        they are), else join(stage key, key(data)): the output is its content
--                        (so a stage whose units emit in an order that varies from run to run,
--                        like a fusion, gives the same keys to the same outputs)
--   source item key   = key{ size, mtime, SHA-256 of the first and last MiB } of an input
--                        file (its URL otherwise); key{ source, data, ... } for function sources
-- An item's key is computed once, where it is made, and travels in its envelope (`_mk`).
-- Calls: sluice.runtime.digest, sluice.runtime.files, sluice.graph.util.
local files = require "sluice.runtime.files"
local digest = require "sluice.runtime.digest"
local util = require "sluice.graph.util"

local join, dkey, is_secret = digest.join, digest.key, digest.is_secret
local type, rawget, tostring, pairs, ipairs = type, rawget, tostring, pairs, ipairs
local concat, sort = table.concat, table.sort
local plain = util.plain

local M = {}

-- Config views ----------------------------------------------------------------------------

local function path_text(path)
  local parts = {}
  for i, p in ipairs(path) do parts[i] = tostring(p) end
  return concat(parts, ".")
end
M.path_text = path_text

local function has_secret(path)
  for _, p in ipairs(path) do if is_secret(p) then return true end end
  return false
end

-- A copy of v without secret entries (at any depth).
local function without_secrets(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do
    if not (type(k) == "string" and is_secret(k)) then out[k] = without_secrets(x) end
  end
  return out
end

local function value_at(cfg, path)
  local v = cfg
  for _, p in ipairs(path) do
    if type(v) ~= "table" then return nil end
    v = v[p]
  end
  return v
end


-- A read-only view of config table t (at path) that notes in reads (text -> path) every
-- setting read through it: a leaf by its path, a table iterated (pairs, #) as a whole.
-- Tables below are views too. Secrets are never noted (they do not determine results).
local function view(t, reads, path)
  local children, leaf = {}, {}
  local function note(k) -- leaf[k]: the read's text and path (false: a secret, never noted)
    local l = leaf[k]
    if l == nil then
      local full = { table.unpack(path) }
      full[#full + 1] = k
      l = not has_secret(full) and { path_text(full), full } or false
      leaf[k] = l
    end
    if l and not reads[l[1]] then reads[l[1]] = l[2] end
  end
  local function note_all()
    if #path > 0 and not has_secret(path) then
      local text = path_text(path)
      if not reads[text] then reads[text] = path end
    end
  end
  return setmetatable({}, {
    __index = function(_, k)
      local v = t[k]
      if type(v) == "table" and getmetatable(v) == nil then
        local c = children[k]
        if not c then
          local p = { table.unpack(path) }
          p[#p + 1] = k
          c = view(v, reads, p)
          children[k] = c
        end
        return c
      end
      note(k)
      return v
    end,
    __newindex = function(_, k, v)
      t[k] = v
      children[k] = nil
    end,
    __pairs = function()
      note_all()
      return next, t, nil
    end,
    __len = function()
      note_all()
      return #t
    end,
  })
end
M.view = view

-- Stage keys -----------------------------------------------------------------------------

-- What a read value was, for the reasons and `sluice jobs show` (secrets already removed).
local function display(v) return plain(v) end

-- What a stage is, apart from the settings it reads: its code (the bytecode of run and
-- on_gate), its version and the pipeline's, its params.
local function static_parts(S, job)
  local spec = job.pipeline and job.pipeline.spec or {}
  local params = without_secrets(S.params)
  return { code = dkey { S.run, S.on_gate or false }, version = S.version,
    pipeline_version = spec.version, params_key = dkey(params or false), params = plain(params) }
end

local function param_names_changed(a, b)
  local names, seen = {}, {}
  for _, t in ipairs { a or {}, b or {} } do
    for k in pairs(t) do
      if not seen[k] then
        seen[k] = true
        if dkey((a or {})[k]) ~= dkey((b or {})[k]) then names[#names + 1] = tostring(k) end
      end
    end
  end
  sort(names)
  return names
end

-- Sets up keying for job (after the store attached it): each stage's key (S.skey), its
-- reasons (S.key_diff), its config view; sources are marked keyed.
function M.setup(job)
  -- (loading sluice.runtime.files makes Lua's file functions tell the unit's watcher)
  local memo = job.memo
  for _, n in ipairs(job.order) do
    local N = job.nodes[n]
    N.keyed = true
    if N.source then
      N.inputs_changed, N.inputs_new, N.inputs_seen = {}, {}, 0
      if N.run then N.code = dkey(N.run) end
    else
      local S = N
      local static = static_parts(S, job)
      local stored = memo:stage_record(n)
      local diffs = {}
      local prev_reads = {}
      if stored and type(stored.parts) == "table" then
        local sp = stored.parts
        if sp.code ~= static.code then diffs[#diffs + 1] = { kind = "code" } end
        if tostring(sp.version) ~= tostring(static.version) or
          tostring(sp.pipeline_version) ~= tostring(static.pipeline_version) then
          diffs[#diffs + 1] = { kind = "version" }
        end
        if sp.params_key ~= static.params_key then
          diffs[#diffs + 1] = { kind = "params", names = param_names_changed(sp.params, static.params) }
        end
        for _, r in ipairs(type(sp.reads) == "table" and sp.reads or {}) do
          local cur = without_secrets(value_at(job.config, r.path))
          prev_reads[path_text(r.path)] = r.path
          if dkey(cur) ~= r.d then
            diffs[#diffs + 1] = { kind = "setting", path = path_text(r.path), old = r.v, new = display(cur) }
          end
        end
      end
      if stored and #diffs == 0 and type(stored.mkey) == "string" then
        S.skey = stored.mkey
      else
        local now = {}
        for text, p in pairs(prev_reads) do now[text] = dkey(without_secrets(value_at(job.config, p))) end
        S.skey = dkey { static, now }
      end
      S.static_parts = static
      S.key_diff = stored and diffs or {}
      S.prev_reads = (stored and #diffs == 0) and prev_reads or {}
      S.reads = {}
      S.ctx_mt.config = view(job.config, S.reads, {})
      S.keyed = true
      S.why = {}
      S.why_paths = {}
    end
  end
end

-- Stores each stage's key and what it was made of (the settings it read in this run, and in
-- earlier runs when its key stayed the same).
function M.finish(job)
  local memo = job.memo
  for _, n in ipairs(job.order) do
    local S = job.nodes[n]
    if not S.source and S.keyed then
      local all = {}
      for text, p in pairs(S.prev_reads) do all[text] = p end
      for text, p in pairs(S.reads) do all[text] = p end
      local texts = {}
      for text in pairs(all) do texts[#texts + 1] = text end
      sort(texts)
      local reads = {}
      for i, text in ipairs(texts) do
        local cur = without_secrets(value_at(job.config, all[text]))
        reads[i] = { path = all[text], d = dkey(cur), v = display(cur) }
      end
      local parts = {}
      for k, v in pairs(S.static_parts) do parts[k] = v end
      parts.reads = reads
      parts.from = S.from
      memo:put_stage(n, S.skey, parts)
    end
  end
end

-- Unit and output keys ----------------------------------------------------------------------

local function env_key(e)
  return rawget(e, "_mk") or ("id:" .. tostring(e.id))
end
M.env_key = env_key

-- The key of a list of items (order does not matter), cached on the list.
local function list_key(items)
  local k = rawget(items, "_lk")
  if k then return k end
  local ks = {}
  for i, e in ipairs(items) do ks[i] = env_key(e) end
  sort(ks)
  k = dkey(ks)
  rawset(items, "_lk", k)
  return k
end

-- The key of unit u at stage S: what determines its outputs.
function M.unit(S, u)
  local kind = u.kind
  if kind == "item" then
    local mk = join(S.skey, env_key(u.env))
    if S.gate and u.gate then mk = join(mk, "gate:" .. list_key(u.gate)) end
    return mk
  end
  local ks = {}
  for i, e in ipairs(u.items) do ks[i] = env_key(e) end
  local dropped = u.dropped_keys -- (a group's items its stage's keep let go)
  if dropped then for _, k in ipairs(dropped) do ks[#ks + 1] = k end end
  sort(ks)
  return join(S.skey, kind .. ":" .. dkey(ks))
end

-- The key of the k-th output (data) of unit u at S (see the header).
function M.output(S, u, data, k)
  local f = u.files
  if f and f.n > 0 then return join(u.mk, "#" .. k) end
  return join(S.skey, dkey(data))
end

-- Source items: an input's identity (waits: the file is read on the pool).
function M.input(N, input, id)
  local parts
  local path = type(input) == "string" and input:gsub("^file://", "") or nil
  if path and not path:match("^[%a][%w+.-]*://") then
    local ident = digest.file(path)
    if ident then parts = { size = ident.size, mtime = ident.mtime, sha256 = ident.sha256, whole = ident.whole } end
  end
  parts = parts or { input = tostring(input) }
  local mk = dkey { "input", parts }
  local memo = N.job.memo
  local before = memo:source(N.name, id)
  N.inputs_seen = N.inputs_seen + 1
  if before == nil then
    N.inputs_new[#N.inputs_new + 1] = tostring(input)
  elseif before ~= mk then
    N.inputs_changed[#N.inputs_changed + 1] = tostring(input)
  end
  memo:put_source(N.name, id, mk, parts)
  return mk
end

function M.source_item(N, data, key, seq, t0, t1)
  return dkey { N.name, N.code or false, key, seq, t0 or false, t1 or false, data }
end

-- Files a unit writes ------------------------------------------------------------------------

-- The watcher (sluice.runtime.files) of a unit: the paths it wrote (n, list, set: made on the
-- first), minus those it renamed away or removed. A file of another unit removed here was a
-- temporary (memo:removed); a file its writer declares temporary (files.wrote(path, true)) is
-- one from the start (self.temps: set on the first), so a run killed after a later stage
-- removed it, before the store had the removal, still knows it for one.
local Watch = {}
Watch.__index = Watch

-- The temporaries declared in each job (by its memo) and not yet removed by a consumer.
local declared = setmetatable({}, { __mode = "k" })

function Watch:wrote(p, temporary)
  local d = self.deferred
  if d then -- written again: a removal held for that path no longer applies
    for i = #d, 1, -1 do
      if d[i] == p then table.remove(d, i) end
    end
  end
  local set = self.set
  if not set then
    set = {}
    self.set, self.list = set, {}
  end
  if temporary then -- declared by its writer (written with the unit's files: memo:put)
    self.temps = self.temps or {}
    self.temps[p] = true
    local memo = self.memo
    if memo then -- (until a consumer removes it: Watch:defer_remove)
      local t = declared[memo]
      if not t then
        t = {}
        declared[memo] = t
      end
      t[p] = true
    end
  end
  if not set[p] then
    set[p] = true
    local n = self.n + 1
    self.n = n
    self.list[n] = p
  end
end

local function drop(self, p)
  local set = self.set
  if not (set and set[p]) then return false end
  set[p] = nil
  local list = self.list
  for i = 1, self.n do
    if list[i] == p then
      table.remove(list, i)
      self.n = self.n - 1
      break
    end
  end
  return true
end

function Watch:renamed(from, to)
  drop(self, from)
  self:wrote(to)
end

function Watch:removed(p)
  local memo = self.memo
  if not drop(self, p) and memo.removed then memo:removed(p) end
end

-- A file of another unit (a temporary this one consumed) is removed only once this unit's
-- result is committed (M.removals): a run killed between the removal and the commit would
-- otherwise find the file gone and this unit's result not stored, and make the file again
-- (the producer's stored work lost). The store learns at once that it is a temporary.
-- Only files another unit declared temporary (files.wrote(path, true): handed to a later
-- stage, possibly before the writer's result is put) or that the memo knows as another unit's
-- output are held: any other file (a log the unit's events rotate, a file of the pipeline's
-- own) goes at once, as a held removal would remove whatever is written at that path meanwhile.
function Watch:defer_remove(p)
  if self.set and self.set[p] then return false end
  local memo = self.memo
  local owners, temps = memo.file_owner, declared[memo]
  if not ((owners and owners[p]) or (temps and temps[p])) then return false end
  if temps then temps[p] = nil end
  if memo.removed then memo:removed(p) end
  local d = self.deferred
  if not d then
    d = {}
    self.deferred = d
  end
  d[#d + 1] = p
  return true
end

-- The removals unit u held (Watch:defer_remove): done once what its memo has put so far is
-- committed (now when the memo is nil: nothing was put). Leaves them in place when the commit
-- failed (the unit runs again on resume and needs them).
function M.removals(u, memo)
  local w = u.files
  local d = w and w.deferred
  if not d then return end
  w.deferred = nil
  local function remove(ok)
    if not ok then return end
    for _, p in ipairs(d) do files.remove(p) end
  end
  if memo then memo:on_commit(remove) else remove(true) end
end

-- A new watcher for unit u of S (u.files: what memokey.output and the memo's put read).
function M.watch(S, u)
  local w = setmetatable({ n = 0, list = false, set = false, memo = S.job.memo }, Watch)
  u.files = w
  return w
end

-- Whether a stored unit of S whose temporaries are gone must run again to make them: some
-- consumer will run on its outputs (its settings changed, it is never taken from the memo,
-- or, for a consumer of single items, one of these outputs has no stored result there).
-- Consumers of batches, groups and gates are taken to reuse theirs when their settings did
-- not change.
function M.needed(S, u, outs)
  local memo = S.job.memo
  for _, C in ipairs(S.consumers) do
    if #C.key_diff > 0 or not C.memoize then return true end
    if not (C.batch or C.collect or C.gate) then
      for _, o in ipairs(outs) do
        local omk = o._mk
        if not omk or not memo:peek(C.name, join(C.skey, omk)) then return true end
      end
    end
  end
  return false
end

-- Reasons --------------------------------------------------------------------------------------

-- A unit of S was not taken from the memo, because why ("new", "changed", ...; detail: a
-- path for "missing" and "modified").
function M.miss(S, u, why, detail)
  local w = S.why
  w[why] = (w[why] or 0) + u.n
  if detail and #S.why_paths < 5 then
    local seen = false
    for _, p in ipairs(S.why_paths) do if p.path == detail then seen = true end end
    if not seen then S.why_paths[#S.why_paths + 1] = { why = why, path = detail } end
  end
end

-- What was reused and why the rest ran: { resumed = bool, stages = { {name, reused, ran,
-- total, why = {...}, diffs = {...}, paths = {...}} }, inputs = { changed = {...}, new =
-- {...} } }, in graph order. resumed is false when nothing was stored before (a first run).
function M.report(job)
  local out = { stages = {}, inputs = { changed = {}, new = {} }, resumed = false }
  for _, n in ipairs(job.order) do
    local N = job.nodes[n]
    if N.source then
      for _, i in ipairs(N.inputs_changed or {}) do out.inputs.changed[#out.inputs.changed + 1] = i end
      for _, i in ipairs(N.inputs_new or {}) do out.inputs.new[#out.inputs.new + 1] = i end
      -- (an input seen before: a source of inputs; a function source's items say nothing here)
      if N.inputs_changed and (#N.inputs_changed > 0 or #N.inputs_new < N.inputs_seen) then
        out.resumed = true
      end
    elseif N.keyed then
      local total = N.n_done + N.n_failed
      local reused = N.n_cached
      out.stages[#out.stages + 1] = { name = n, reused = reused, ran = total - reused, total = total,
        why = N.why, diffs = N.key_diff, paths = N.why_paths, memoize = N.memoize, from = N.from }
      if reused > 0 or #N.key_diff > 0 or (N.why.changed or 0) > 0 or (N.why.missing or 0) > 0 then
        out.resumed = true
      end
    end
  end
  out.fresh = job.memo and job.memo.fresh or false
  return out
end

return M
