-- sluice.runtime.broker: units and results on Redis Streams (the transport of remote stages).
--
-- Knows nothing of graphs: a unit is a set of fields sent to a (job, stage) stream, a result a
-- set of fields on the job's results stream. The remote executor (sluice.graph.remote) and the
-- worker side (sluice.graph.serve) build on it. docs/scale.md has the design; in short:
--
--   P:jobs:<pipeline>    SET    jobs that have remote stages, for workers to find
--   P:job:<job>          HASH   the job's description (pipeline, config, remote stages, ...)
--   P:u:<job>:<stage>    STREAM units; consumer group "workers" (at-least-once, pending lists)
--   P:r:<job>            STREAM results of every remote stage; consumer group "coord"
--   P:sent:<job>         HASH   "<stage>\0<unit id>" -> attempt: what is outstanding, so that a
--                               resumed coordinator never sends a unit twice
--   P:hb:<pipeline>      HASH   worker id -> its status (host, pid, stages, in flight, done)
--
-- Delivery: a worker reads units with XREADGROUP; it puts the result on the results stream
-- and acknowledges (XACK, XDEL) the unit in one Lua script (atomic; results finished in the
-- same loop turn go together); while a unit runs it keeps its
-- claim fresh (XCLAIM ... JUSTID); a dead worker's units are taken over with XAUTOCLAIM after
-- an idle time, and a unit delivered more than N times is dead-lettered onto the results
-- stream instead (one Lua script, atomically). The coordinator reads results with its own
-- consumer group and acknowledges them once their outputs are safe (see graph/remote).
-- Every key has a TTL (refreshed while the job runs); a finished job deletes its keys.
local codec = require "sluice.runtime.codec"
local redis = require "sluice.runtime.redis"

local M = {}

local Broker = {}
Broker.__index = Broker
Broker.__name = "sluice.broker"

M.GROUP = "workers"
M.COORD = "coord"

-- new(client, {prefix="sluice", ttl=86400}) -> broker on a connected sluice.runtime.redis
-- client (for non-blocking commands; blocking reads take a connection of their own).
function M.new(client, opts)
  opts = opts or {}
  return setmetatable({ r = client, prefix = opts.prefix or "sluice", ttl = opts.ttl or 86400,
    url = client.url }, Broker)
end

-- connect(url, opts) -> broker | nil, message (waits; one clear error when Redis is not there)
function M.connect(url, opts)
  local c, err = redis.connect(url, opts)
  if not c then return nil, err end
  return M.new(c, opts)
end

-- A second client on the same server, for a blocking reader.
function Broker:blocking_client()
  return redis.connect({ host = self.r.host, port = self.r.port }, { timeout = self.r.timeout })
end

function Broker:close() self.r:close() end

local function k(self, ...) return table.concat({ self.prefix, ... }, ":") end
function Broker:k_units(job, stage) return k(self, "u", job, stage) end
function Broker:k_results(job) return k(self, "r", job) end
function Broker:k_sent(job) return k(self, "sent", job) end
function Broker:k_job(job) return k(self, "job", job) end
function Broker:k_jobs(pipeline) return k(self, "jobs", pipeline) end
function Broker:k_workers(pipeline) return k(self, "hb", pipeline) end

-- The sent-hash field of a unit: stage and unit id (callers that keep it pass it as
-- `field` to send and ack_results, so it is made once per unit).
local function unit_field(stage, uid) return stage .. "\0" .. uid end
M.unit_field = unit_field

-- A stream entry's flat field list as a table.
local function fields_of(list)
  local f = {}
  for i = 1, #list - 1, 2 do f[list[i]] = list[i + 1] end
  return f
end
M.fields_of = fields_of


local function call(self, ...) return redis.retry(self.r.call, self.r, ...) end

local function ensure_group(self, stream, group)
  local r, err = call(self, "XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
  if r or tostring(err):match("^BUSYGROUP") then return true end
  return nil, err
end

-- Coordinator ---------------------------------------------------------------------------------

-- register_job(job_id, pipeline, info, stages): the job's description (info: a table, sent
-- encoded), its streams and groups, and its entry in the pipeline's job set.
function Broker:register_job(job_id, pipeline, info, stages)
  for _, s in ipairs(stages) do
    local ok, err = ensure_group(self, self:k_units(job_id, s), M.GROUP)
    if not ok then return nil, err end
  end
  local ok, err = ensure_group(self, self:k_results(job_id), M.COORD)
  if not ok then return nil, err end
  local r
  r, err = call(self, "HSET", self:k_job(job_id), "info", codec.encode(info), "pipeline", pipeline)
  if not r then return nil, err end
  r, err = call(self, "SADD", self:k_jobs(pipeline), job_id)
  if not r then return nil, err end
  return self:touch_job(job_id, pipeline, stages)
end

-- touch_job(...): renews the TTL of the job's keys (the coordinator does this while it runs).
function Broker:touch_job(job_id, pipeline, stages)
  local cmds = {}
  local keys = { self:k_job(job_id), self:k_results(job_id), self:k_sent(job_id), self:k_jobs(pipeline) }
  for _, s in ipairs(stages) do keys[#keys + 1] = self:k_units(job_id, s) end
  for i, key in ipairs(keys) do cmds[i] = { "EXPIRE", key, self.ttl } end
  return redis.retry(self.r.multi, self.r, cmds)
end

-- finish_job(...): deletes the job's keys and its entry in the job set (a finished job).
function Broker:finish_job(job_id, pipeline, stages)
  local cmds = { { "SREM", self:k_jobs(pipeline), job_id },
    { "DEL", self:k_job(job_id), self:k_results(job_id), self:k_sent(job_id) } }
  for _, s in ipairs(stages) do cmds[#cmds + 1] = { "DEL", self:k_units(job_id, s) } end
  return redis.retry(self.r.multi, self.r, cmds)
end

-- Sends units, each unless this attempt of it (or a later one) is outstanding already.
-- KEYS: the sent hash, then the unit streams; ARGV per unit: its stream's index in KEYS, its
-- sent-hash field, its attempt, the number of its stream fields, the fields.
local SEND = [[
local out, i = {}, 1
while i <= #ARGV do
  local k, field, a, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local cur = redis.call('HGET', KEYS[1], field)
  if cur and tonumber(cur) >= a then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], field, a)
    redis.call('XADD', k, '*', unpack(ARGV, i + 4, i + 3 + n))
    out[#out + 1] = 1
  end
  i = i + 4 + n
end
return out
]]

-- Stream keys and their indexes in KEYS (after `first`), for scripts over several streams.
local function key_list(first)
  local keys, index = { first }, {}
  return keys, function(k)
    local i = index[k]
    if not i then
      keys[#keys + 1] = k
      i = #keys
      index[k] = i
    end
    return i
  end
end

-- send(job, units) -> list of 1 (sent) / 0 (outstanding already) | nil, err: one script call
-- for all of them. units: { {stage=, uid=, attempt=, fields = {name, value, ...}[, field=]}, ... };
-- the unit's id and attempt are added to its fields (field: unit_field(stage, uid), if kept).
function Broker:send(job_id, units)
  local keys, index = key_list(self:k_sent(job_id))
  local args, of_stage = {}, {}
  for _, u in ipairs(units) do
    local n = #args
    local i = of_stage[u.stage]
    if not i then
      i = index(self:k_units(job_id, u.stage))
      of_stage[u.stage] = i
    end
    args[n + 1], args[n + 2], args[n + 3] = i, u.field or unit_field(u.stage, u.uid), u.attempt
    args[n + 4] = #u.fields + 4
    args[n + 5], args[n + 6], args[n + 7], args[n + 8] = "id", u.uid, "a", u.attempt
    table.move(u.fields, 1, #u.fields, n + 9, args)
  end
  return redis.retry(self.r.eval, self.r, SEND, keys, args)
end

-- read_results(client, job, from, count, block_ms) -> entries | nil, err, code. from "0":
-- this coordinator's pending results (after a restart), ">": new ones. client: a blocking one.
function Broker:read_results(client, job_id, from, count, block_ms)
  local argv = { "XREADGROUP", "GROUP", M.COORD, "c", "COUNT", count }
  if block_ms then argv[#argv + 1] = "BLOCK"; argv[#argv + 1] = block_ms end
  argv[#argv + 1] = "STREAMS"
  argv[#argv + 1] = self:k_results(job_id)
  argv[#argv + 1] = from
  return client:call_argv(argv, "entries") -- { {stream=, eid=, f = fields}, ... }
end

-- ack_results(job, list of {eid=, stage=, uid=[, field=]}): the results are taken for good: they leave
-- the results stream and their units are no longer outstanding.
function Broker:ack_results(job_id, list)
  if #list == 0 then return true end
  local rs = self:k_results(job_id)
  local ack, del, hdel = { "XACK", rs, M.COORD }, { "XDEL", rs }, { "HDEL", self:k_sent(job_id) }
  for _, a in ipairs(list) do
    ack[#ack + 1] = a.eid
    del[#del + 1] = a.eid
    hdel[#hdel + 1] = a.field or unit_field(a.stage, a.uid)
  end
  return redis.retry(self.r.multi, self.r, { ack, del, hdel })
end

-- Workers -------------------------------------------------------------------------------------

-- jobs(pipeline) -> list of job ids
function Broker:jobs(pipeline)
  local r, err = call(self, "SMEMBERS", self:k_jobs(pipeline))
  if not r then return nil, err end
  table.sort(r)
  return r
end

-- job_info(job) -> info table | nil (gone), err
function Broker:job_info(job_id)
  local r, err = call(self, "HGET", self:k_job(job_id), "info")
  if r == nil then return nil, err end
  if r == false then return nil end
  return codec.decode(r)
end

-- take(client, streams, consumer, count, block_ms) -> entries: new units of any of the streams
-- (a blocking client: it waits up to block_ms).
function Broker:take(client, streams, consumer, count, block_ms)
  local argv = { "XREADGROUP", "GROUP", M.GROUP, consumer, "COUNT", count, "BLOCK", block_ms, "STREAMS" }
  for _, s in ipairs(streams) do argv[#argv + 1] = s end
  for _ = 1, #streams do argv[#argv + 1] = ">" end
  return client:call_argv(argv, "entries") -- { {stream=, eid=, f = fields}, ... }
end

-- Puts results on the results stream (KEYS[1]) and acknowledges and deletes their units, in
-- one script (atomic). ARGV[1]: the group; per result: its unit stream's index in KEYS, the
-- unit's entry id, the number of result fields, the fields.
local COMMIT = [[
local i = 2
while i <= #ARGV do
  local k, eid, n = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 3, i + 2 + n))
  redis.call('XACK', k, ARGV[1], eid)
  redis.call('XDEL', k, eid)
  i = i + 3 + n
end
return 1
]]

-- commit(job, list): each result {stage=, eid=, fields = {...}} onto the results stream and
-- its unit acknowledged and deleted, all in one atomic script call. Repeated until it gets
-- through (a duplicate result is harmless: the coordinator takes one result per unit id).
function Broker:commit(job_id, list)
  local keys, index = key_list(self:k_results(job_id))
  local args, of_stage = { M.GROUP }, {}
  for _, c in ipairs(list) do
    local n = #args
    local i = of_stage[c.stage]
    if not i then
      i = index(self:k_units(job_id, c.stage))
      of_stage[c.stage] = i
    end
    args[n + 1], args[n + 2], args[n + 3] = i, c.eid, #c.fields
    table.move(c.fields, 1, #c.fields, n + 4, args)
  end
  return redis.retry(self.r.eval, self.r, COMMIT, keys, args)
end

-- refresh(stream, consumer, eids): keeps the claims on units that are still running fresh,
-- so that nobody takes them over (XCLAIM with JUSTID does not count a delivery).
function Broker:refresh(stream, consumer, eids)
  local argv = { "XCLAIM", stream, M.GROUP, consumer, 0 }
  for _, e in ipairs(eids) do argv[#argv + 1] = e end
  argv[#argv + 1] = "JUSTID"
  return self.r:call_argv(argv)
end

-- Takes over units idle for longer than min_idle ms (their worker died or hung); a unit
-- delivered more than max_deliveries times is not run again but dead-lettered onto the
-- results stream with its delivery count and the last consumer that had it.
local CLAIM = [[
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local eid = e[1]
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], eid, eid, 1)[1]
    local n = p and tonumber(p[4]) or 1
    if n > tonumber(ARGV[5]) then
      local uid, a = '', '1'
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'id' then uid = f[i + 1] elseif f[i] == 'a' then a = f[i + 1] end
      end
      redis.call('XADD', KEYS[2], '*', 's', ARGV[6], 'id', uid, 'a', a, 'dead', n - 1,
        'w', ARGV[7])
      redis.call('XACK', KEYS[1], ARGV[1], eid)
      redis.call('XDEL', KEYS[1], eid)
    else
      out[#out + 1] = e
    end
  end
end
return out
]]

-- claim(job, stage, consumer, min_idle_ms, count, max_deliveries, last) -> entries taken over
function Broker:claim(job_id, stage, consumer, min_idle_ms, count, max_deliveries, last)
  local us = self:k_units(job_id, stage)
  local r, err, code = self.r:eval(CLAIM, { us, self:k_results(job_id) },
    { M.GROUP, consumer, min_idle_ms, count, max_deliveries, stage, last or consumer })
  if r == nil then return nil, err, code end
  local out = {}
  for _, e in ipairs(r) do out[#out + 1] = { stream = us, eid = e[1], f = fields_of(e[2]) } end
  return out
end

-- heartbeat(pipeline, worker_id, status): the worker's status (a table) for coordinators.
function Broker:heartbeat(pipeline, wid, status)
  return self.r:call("HSET", self:k_workers(pipeline), wid, codec.encode(status))
end

function Broker:leave(pipeline, wid)
  return self.r:call("HDEL", self:k_workers(pipeline), wid)
end

-- workers(pipeline) -> { [worker id] = status } (as last reported; staleness is the reader's)
function Broker:workers(pipeline)
  local r, err = self.r:call("HGETALL", self:k_workers(pipeline))
  if not r then return nil, err end
  local out = {}
  for i = 1, #r - 1, 2 do
    local st = codec.decode(r[i + 1])
    if type(st) == "table" then out[r[i]] = st end
  end
  return out, r
end

return M
