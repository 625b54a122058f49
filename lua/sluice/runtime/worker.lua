-- sluice.runtime.worker: long-lived model worker processes speaking JSON Lines.
--
-- A model (a detector, a classifier, a local LLM...) loads once in its own process and
-- serves the whole run. sluice writes one request per line to the worker's stdin and reads
-- one reply per line from its stdout, matched by id, with many requests in flight:
--
--   -> {"id": 7, "method": "classify", "params": {...}}
--   <- {"id": 7, "result": {...}}            or   {"id": 7, "error": "message"}
--                                             or   {"id": 7, "error": {"message": "..."}}
--
-- Replies may come in any order. Whatever the worker writes to stderr goes to sluice's
-- stderr, each line prefixed with the worker's name. When the worker dies (a crash, a kill,
-- an out-of-memory), it is started again and every request that was in flight is sent
-- again; a request that has been in flight during `retries + 1` deaths fails with a message
-- naming the worker, how it died and its last stderr line. After `max_restarts` deaths in a
-- row without a single reply, the worker is given up on and calls fail with that message;
-- so is a worker that exits with status 78 (EX_CONFIG: "I cannot work here", e.g. a missing
-- package), at once.
--
--   local worker = require "sluice.runtime.worker"
--   local w = worker.start{ name = "detect", argv = { "/usr/bin/python3", "workers/opencv_detect.py" } }
--   local result, err = w:call("classify", { path = "frame.jpg", classes = { "person" } })
--   w:close()
local core = require "sluice.core.core"
local proc = require "sluice.core.proc"
local cjson = require "cjson"
local sl = require "sluice"
local sched = require "sluice.runtime.sched"

local M = {}

-- A worker that exits with this status (sysexits' EX_CONFIG) cannot work at all, e.g. a
-- package is missing: it is not restarted.
M.EX_CONFIG = 78

-- The workers not closed yet (weak): close_all() ends them when a run ends.
local live = setmetatable({}, { __mode = "k" })

local Worker = {}
Worker.__index = Worker
Worker.__name = "sluice.runtime.worker"
M.Worker = Worker -- the class: tests/fuzz feeds reply lines to Worker._on_line

local function default_log(name)
  return function(line)
    io.stderr:write("[", name, "] ", line, "\n")
    io.stderr:flush()
  end
end

-- start{argv=, name=, env=, cwd=, retries=2, max_restarts=5, max_inflight=64, log=fn(line)}
-- -> worker. The process starts at once; a program that cannot be run is reported by the
-- first call.
function M.start(opts)
  if type(opts) ~= "table" or type(opts.argv) ~= "table" or type(opts.argv[1]) ~= "string" then
    error("bad argument #1 to 'worker.start' (table with argv = {program, args...} expected)", 2)
  end
  local name = opts.name or opts.argv[#opts.argv]:match("([^/]+)$") or opts.argv[1]
  local self = setmetatable({
    name = name,
    argv = opts.argv,
    env = opts.env and sl._env_list(opts.env) or nil,
    cwd = opts.cwd,
    retries = opts.retries or 2,
    max_restarts = opts.max_restarts or 5,
    log = opts.log or default_log(name),
    inflight = sl.semaphore(opts.max_inflight or 64),
    pending = {},     -- id -> request
    npending = 0,
    next_id = 0,
    starts = 0,       -- processes started so far
    deaths_in_row = 0,
    last_stderr = nil,
    stats = { calls = 0, replies = 0, retried = 0, restarts = 0 },
  }, Worker)
  live[self] = true
  self:_spawn()
  return self
end

-- close_all([grace]): closes every worker still open and waits for its process to exit (at
-- most grace seconds each, default 5). A run calls it at its end: a worker that sluice waited
-- for is one whose CPU time counts as sluice's (getrusage's children; /usr/bin/time), not an
-- orphan that outlives the run.
function M.close_all(grace)
  local list = {}
  for w in pairs(live) do list[#list + 1] = w end
  for _, w in ipairs(list) do pcall(w.close, w, grace) end
end

function Worker:__tostring()
  return string.format("sluice.runtime.worker %s (%s, %d in flight)", self.name,
    self.broken and "broken" or self.closed and "closed" or self.proc and ("pid " .. self.pid) or "stopped",
    self.npending)
end

local function fail(req, msg, code)
  req.settled = true
  req.done(nil, msg, code)
end

function Worker:_send(req)
  if not self.proc then return end
  self.proc:write(req.line) -- a failed write shows up as the process's exit
end

function Worker:_fail_all(msg, code)
  local reqs = self.pending
  self.pending, self.npending = {}, 0
  for _, req in pairs(reqs) do fail(req, msg, code) end
end

function Worker:_on_line(line)
  if line == "" then return end
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then
    self.log("worker sent a line that is not a JSON object: " .. line:sub(1, 200))
    return
  end
  local req = msg.id ~= nil and self.pending[msg.id]
  if not req then
    if msg.id == nil or msg.id == cjson.null then
      -- a notice not tied to a request (e.g. "model loaded"): log it
      self.log("notice: " .. line:sub(1, 300))
    end
    return -- a reply to a request that was cancelled or already answered
  end
  self.pending[msg.id] = nil
  self.npending = self.npending - 1
  self.deaths_in_row = 0
  self.stats.replies = self.stats.replies + 1
  req.settled = true
  local err = msg.error
  if err ~= nil and err ~= cjson.null then
    if type(err) == "table" then err = err.message or cjson.encode(err) end
    req.done(nil, string.format("worker %s: %s failed: %s", self.name, req.method, tostring(err)), "EWORKER")
  else
    local result = msg.result
    if result == cjson.null then result = nil end
    req.done(true, result)
  end
end

function Worker:_spawn()
  if self.closed or self.broken then return end
  local buf_out, buf_err = "", ""
  local me
  local p, msg = proc.spawn {
    file = self.argv[1], args = { table.unpack(self.argv, 2) }, env = self.env, cwd = self.cwd,
    stdin = true,
    on_stdout = function(chunk)
      if me ~= self.proc then return end
      if not chunk then return end
      buf_out = buf_out .. chunk
      while true do
        local nl = buf_out:find("\n", 1, true)
        if not nl then break end
        local line = buf_out:sub(1, nl - 1):gsub("\r$", "")
        buf_out = buf_out:sub(nl + 1)
        self:_on_line(line)
      end
    end,
    on_stderr = function(chunk)
      if chunk then buf_err = buf_err .. chunk end
      while true do
        local nl = buf_err:find("\n", 1, true)
        if not nl and (chunk or buf_err == "") then break end
        nl = nl or #buf_err + 1
        local line = buf_err:sub(1, nl - 1)
        buf_err = buf_err:sub(nl + 1)
        if line:find("%S") then
          self.last_stderr = line
          self.log(line)
        end
      end
    end,
    on_exit = function(status, sig) self:_on_exit(me, status, sig) end,
  }
  if not p then
    self.broken = string.format("worker %s: %s", self.name, msg)
    self:_fail_all(self.broken, "EWORKER")
    return
  end
  me = p
  self.proc = p
  self.pid = p:pid()
  self.starts = self.starts + 1
  if self.starts > 1 then self.stats.restarts = self.stats.restarts + 1 end
  -- resend what was in flight, oldest first
  local ids = {}
  for id in pairs(self.pending) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do self:_send(self.pending[id]) end
end

local function how_it_died(status, sig)
  if sig and sig ~= 0 then return "was killed by signal " .. sig end
  return "exited with status " .. tostring(status)
end

function Worker:_on_exit(p, status, sig)
  if p ~= self.proc then return end
  self.proc, self.pid = nil, nil
  if self.closed then
    self:_fail_all(string.format("worker %s: closed", self.name), "ECLOSED")
    if self.exited then self.exited:set(true) end
    return
  end
  self.deaths_in_row = self.deaths_in_row + 1
  local why = string.format("worker %s %s", self.name, how_it_died(status, sig))
  if self.last_stderr then why = why .. " (last stderr line: " .. self.last_stderr .. ")" end
  self.log(why .. (self.npending > 0 and string.format("; %d request(s) in flight", self.npending) or ""))
  if status == M.EX_CONFIG and (sig or 0) == 0 then
    -- the worker says it cannot work at all (a missing package): restarting will not help
    self.broken = why
    self:_fail_all(self.broken, "EWORKER")
    return
  end
  if self.deaths_in_row > self.max_restarts then
    self.broken = string.format("%s; gave up after %d restarts in a row without a reply",
      why, self.max_restarts)
    self:_fail_all(self.broken, "EWORKER")
    return
  end
  -- Settling a request runs other tasks, which may add requests: iterate over a snapshot.
  local ids = {}
  for id in pairs(self.pending) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local req = self.pending[id]
    if not req then
      -- cancelled meanwhile
    elseif req.deaths + 1 > self.retries then
      req.deaths = req.deaths + 1
      self.pending[id] = nil
      self.npending = self.npending - 1
      fail(req, string.format("%s while handling %s; gave up after %d attempts", why, req.method,
        req.deaths), "EWORKER")
    else
      req.deaths = req.deaths + 1
      self.stats.retried = self.stats.retried + 1
    end
  end
  -- Restart: at once after a first death, then with backoff (0.1 s, 0.2 s, ... up to 2 s).
  local delay = self.deaths_in_row <= 1 and 0 or math.min(2, 0.05 * 2 ^ (self.deaths_in_row - 1))
  if self.npending == 0 and self.deaths_in_row > 1 then
    self.restart_pending = true -- nothing to do: restart on the next call
    return
  end
  core.after(delay, function() self:_spawn() end)
end

-- call(method, params[, {timeout=}]) -> result, or nil, message, code. Waits in the calling
-- task; cancelling the task forgets the request (the worker's reply is ignored).
function Worker:call(method, params, opts)
  if type(method) ~= "string" then error("bad argument #1 to 'call' (method name expected)", 2) end
  if self.broken then return nil, self.broken, "EWORKER" end
  if self.closed then return nil, string.format("worker %s: closed", self.name), "ECLOSED" end
  self.stats.calls = self.stats.calls + 1
  self.inflight:acquire()
  if self.restart_pending and not self.proc then
    self.restart_pending = false
    self:_spawn()
  end
  local function run()
    return sched.await("worker " .. self.name .. ":" .. method, function(done)
      self.next_id = self.next_id + 1
      local id = self.next_id
      local ok, line = pcall(cjson.encode, { id = id, method = method, params = params or {} })
      if not ok then
        done(nil, string.format("worker %s: cannot encode %s params as JSON: %s", self.name, method, line), "EINVAL")
        return nil
      end
      local req = { id = id, method = method, line = line .. "\n", deaths = 0, done = done }
      if self.broken then
        done(nil, self.broken, "EWORKER")
        return nil
      end
      self.pending[id] = req
      self.npending = self.npending + 1
      self:_send(req)
      return function()
        if self.pending[id] then
          self.pending[id] = nil
          self.npending = self.npending - 1
        end
      end
    end)
  end
  local r = table.pack(pcall(function()
    if opts and opts.timeout then return sl.timeout(opts.timeout, run) end
    return run()
  end))
  self.inflight:release()
  if not r[1] then error(r[2], 0) end
  if r[2] == true then return r[3] end
  if r[2] == nil and r[4] == "ETIMEDOUT" then
    return nil, string.format("worker %s: %s timed out after %gs", self.name, method, opts.timeout), "ETIMEDOUT"
  end
  return nil, r[3], r[4]
end

function Worker:in_flight() return self.npending end

-- kill([signal]): kills the current process (it is restarted; for tests and stuck models).
function Worker:kill(sig)
  if self.proc then return self.proc:kill(sig or "SIGKILL") end
  return false
end

-- close([grace]): closes the worker's stdin (a worker exits at end of input), waits up to
-- grace seconds (default 5) for it to exit, then kills it. Requests still in flight fail.
function Worker:close(grace)
  if self.closed then return end
  self.closed = true
  live[self] = nil
  if not self.proc then return end
  self.exited = sl.event()
  pcall(self.proc.close_stdin, self.proc)
  if not sched.current() then return end -- not in a task: cannot wait
  local ok = sl.timeout(grace or 5, function() return self.exited:wait() end)
  if not ok and self.proc then
    self.proc:kill("SIGKILL")
    self.exited:wait()
  end
end

return M
