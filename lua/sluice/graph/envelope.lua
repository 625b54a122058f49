-- sluice.graph.envelope: item ids and the envelopes items travel in.
--
-- Owns: deterministic ids (the path that made an item, hashed past 120 characters), the
-- envelope metatables of a job's sources and stages, and `output`, the one function that
-- makes a stage's output envelope. Calls nothing else of the graph.
--
-- An envelope is { id, key, seq, t0, t1, data, attempt, parent } with `job` and `stage` read
-- through its metatable, and, in a job keyed for resume, `_mk`: the item's key
-- (sluice.graph.memokey), made where the item is made and carried with it. A 1:1 output (the first output of an item, with the item's key, seq
-- and times) is *lazy*: { data, key, _o, _t } where _o is the item's origin (the last
-- envelope made in full, or { id, seq, t0, t1 } of it) and _t the chain of stage hops since
-- ({ sfx = "/stage/1", prev = hop or false }, one per stage and chain, shared by every item).
-- id, parent, seq, t0, t1 and attempt are read through the metatable; id is made on its first
-- read (exactly the text an eager id has) and then kept. Four fields instead of eight, and no
-- id strings for items nobody names.
local byte, format = string.byte, string.format
local math_type = math.type
local setmetatable, rawget, rawset = setmetatable, rawget, rawset

local M = {}

-- 64-bit FNV-1a of s, as an integer (the job store's index of stored items keeps these).
local function fnv64(s)
  local h = -3750763034362895579 -- 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ byte(s, i)) * 1099511628211 end
  return h
end
M.fnv64 = fnv64

-- The same, as 16 hex digits.
local function hash(s) return format("%016x", fnv64(s)) end
M.hash = hash

-- Item ids: the path that made the item, "source/identity/stage/k/stage/k...", where k is the
-- emission number within the parent unit; a path longer than ID_MAX characters is replaced by
-- "#" and its hash (children then extend the short form). The same inputs give the same ids
-- in every run: the store's resume relies on it.
local ID_MAX = 120
local function make_id(p)
  if #p > ID_MAX then return "#" .. hash(p) end
  return p
end
M.make_id = make_id

local function chain_id(base, hop)
  if not hop then return base end
  return make_id(chain_id(base, hop.prev) .. hop.sfx)
end

local LAZY_FIELDS = { "id", "key", "seq", "t0", "t1", "data", "attempt", "parent" }

-- The metatable of stage `stage`'s lazy envelopes.
local function lazy_mt(job_id, stage)
  local mt = { __name = "sluice.item" }
  local consts = { attempt = 1, job = job_id, stage = stage }
  mt.__index = function(e, k)
    local c = consts[k]
    if c ~= nil then return c end
    local o = rawget(e, "_o")
    if not o then return nil end -- a copy made in full (see copy)
    if k == "id" then
      local id = chain_id(o.id, rawget(e, "_t"))
      rawset(e, "id", id)
      return id
    elseif k == "parent" then
      return chain_id(o.id, rawget(e, "_t").prev)
    end
    return o[k]
  end
  -- pairs() (the REPL's printer, store.jsonable) sees the envelope's fields, not its insides
  mt.__pairs = function(e)
    local i = 0
    return function()
      while i < #LAZY_FIELDS do
        i = i + 1
        local k = LAZY_FIELDS[i]
        local v = e[k]
        if v ~= nil then return k, v end
      end
    end
  end
  return mt
end

-- A source item's id: source/identity for sl.inputs(), source/key/seq otherwise.
local function source_id(N, key, seq, identity)
  local base
  if identity then
    base = N.prefix .. identity
  elseif math_type(seq) == "integer" and type(key) == "string" then
    base = N.prefix .. key .. "/" .. seq -- the same text as below, without two tostring calls
  else
    base = N.prefix .. tostring(key) .. "/" .. tostring(seq)
  end
  if #base > ID_MAX then base = "#" .. hash(base) end
  return base
end

-- A source's envelopes: { key, seq, data[, t0, t1][, id], _o = false }: a function source's
-- leave id out (it is made when first read, and then kept); _o = false says it is no lazy
-- envelope without a call of the metatable. job, stage and attempt (1) come through the
-- metatable; pairs() lists id too, and not _o.
local function source_mt(job_id, N)
  local mt = { __name = "sluice.item" }
  local consts = { attempt = 1, job = job_id, stage = N.name }
  mt.__index = function(e, k)
    if k == "id" then
      local id = source_id(N, rawget(e, "key"), rawget(e, "seq"))
      rawset(e, "id", id)
      return id
    end
    return consts[k]
  end
  mt.__pairs = function(e)
    local _ = e.id -- made now, so that next() lists it
    return function(t, k)
      local v
      repeat k, v = next(t, k) until k ~= "_o" and k ~= "_mk"
      return k, v
    end, e, nil
  end
  return mt
end

-- Sets up what node N (a source or a stage of job) needs to make envelopes.
function M.setup(job, N)
  N.prefix = N.name .. "/"
  if N.source then
    N.env_mt = source_mt(job.id, N)
  else
    -- envelopes made in full keep 8 fields (id, key, seq, t0, t1, data, parent, _mk): a Lua
    -- table of 9 has 16 hash slots, 256 bytes more for each item a collect stage holds;
    -- `job`, `stage` and `attempt` (1, until a retry sets it) come from their metatable
    N.env_mt = { __index = { job = job.id, stage = N.name, attempt = 1 }, __name = "sluice.item" }
    N.lazy_mt = lazy_mt(job.id, N.name)
    N.suffix1 = "/" .. N.name .. "/1"
    N.hop1 = { sfx = N.suffix1, prev = false }
    N.hops = {} -- input hop -> this stage's hop after it
  end
end

-- Source N's envelope of data (with key and seq decided by the caller); identity: the input an
-- sl.inputs() item stands for (its id is made now), or nil.
function M.source_env(N, data, key, seq, t0, t1, identity)
  local env
  if t0 == nil and t1 == nil then
    env = setmetatable({ key = key, seq = seq, data = data, _o = false }, N.env_mt)
  else
    env = setmetatable({ key = key, seq = seq, t0 = t0, t1 = t1, data = data, _o = false }, N.env_mt)
  end
  if identity then env.id = source_id(N, key, seq, identity) end
  return env
end

-- The output envelope that stage S makes of unit u: the k-th output of the unit's call, with
-- data and opts ({key=, seq=, t0=, t1=} overriding the unit's, or nil).
function M.output(S, u, data, opts, k)
  if k == 1 and opts == nil and u.kind == "item" then
    local env = u.env
    local o = env._o
    if o then -- the input is lazy: same origin, one hop more
      local chain = env._t
      local hops = S.hops
      local hop = hops[chain]
      if not hop then
        hop = { sfx = S.suffix1, prev = chain }
        hops[chain] = hop
      end
      return setmetatable({ data = data, key = u.key, _o = o, _t = hop }, S.lazy_mt)
    end
    -- An input made in full is its outputs' origin itself when its data is small: holding it
    -- then holds its data for as long as they live, harmless for small values only.
    local d = env.data
    local td = type(d)
    if td == "number" or td == "boolean" or (td == "string" and #d <= 256) then
      o = env
    else
      o = { id = env.id, seq = env.seq, t0 = env.t0, t1 = env.t1 }
    end
    return setmetatable({ data = data, key = u.key, _o = o, _t = S.hop1 }, S.lazy_mt)
  end
  local key, seq, t0, t1 = u.key, u.seq, u.t0, u.t1
  if opts then
    if opts.key ~= nil then key = opts.key end
    if opts.seq ~= nil then seq = opts.seq end
    if opts.t0 ~= nil then t0 = opts.t0 end
    if opts.t1 ~= nil then t1 = opts.t1 end
  end
  local path = u.path
  return setmetatable({ id = make_id(path .. "/" .. S.name .. "/" .. k), key = key, seq = seq,
    t0 = t0, t1 = t1, data = data, parent = path }, S.env_mt)
end

-- A copy of env made in full, for the second and later consumers of a node (each stage sets
-- its input's attempt).
function M.copy(e)
  return setmetatable({ id = e.id, key = e.key, seq = e.seq, t0 = e.t0, t1 = e.t1, data = e.data,
    parent = e.parent, _mk = rawget(e, "_mk") }, getmetatable(e))
end

return M
