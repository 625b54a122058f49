-- sluice.runtime.redis: a Redis client for tasks, on sluice.core.redis (hiredis on the loop).
--
--   local redis = require "sluice.runtime.redis"
--   local r, err = redis.connect("redis://127.0.0.1:6379", { timeout = 5 })  -- waits
--   r:call("SET", "k", "v")               -- -> reply | nil, message, code (waits)
--   r:call_argv({ "XADD", s, "*", ... })  -- the same with a list
--   r:multi({ {"XADD", ...}, {"XACK", ...} })  -- MULTI ... EXEC: the list of EXEC's replies
--   r:eval(script, keys, args)            -- EVALSHA, EVAL on NOSCRIPT (scripts by text)
--   r:on_state(fn)                        -- fn("down", msg) / fn("up") on losses and reconnects
--   r:close()
--
-- Replies as sluice.core.redis gives them: strings, integers, `false` for nil, tables for
-- arrays ({ err = msg } for an error inside one); an error reply is nil, msg, "EREDIS".
--
-- Pipelining: commands of every task go out on one connection; those issued in the same loop
-- turn are written together and their replies come back in order, so many tasks calling at
-- once cost one round trip. A blocking command (XREADGROUP ... BLOCK) holds its connection:
-- give it a client of its own.
--
-- Reconnecting: connect() tries once (a clear error when Redis is not there). Once connected,
-- a lost connection is re-established in the background with backoff (0.05 s doubling to 2 s,
-- for as long as the client is open); calls made meanwhile wait for it. A call whose reply was
-- lost with the connection returns nil, msg, "ECONNRESET": the command may or may not have
-- run, and only its caller knows whether it is safe to repeat (see `retry`).
local sl = require "sluice"
local sched = require "sluice.runtime.sched"
local cr = require "sluice.core.redis"

local M = {}

local Client = {}
Client.__index = Client
Client.__name = "sluice.runtime.redis"

-- parse_url("redis://host:port") -> { host=, port=, url= } | nil, message
function M.parse_url(url)
  if type(url) ~= "string" then return nil, "broker: expected redis://HOST:PORT, got " .. type(url) end
  local host, port = url:match("^redis://%[?([%w%.%-_:]-)%]?:(%d+)/?$")
  if not host then
    host = url:match("^redis://([%w%.%-_]+)/?$")
    port = host and "6379"
  end
  if not host or host == "" then
    return nil, "broker: '" .. url .. "' is not a redis://HOST:PORT address"
  end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, "broker: port out of range in '" .. url .. "'" end
  return { host = host, port = port, url = "redis://" .. host .. ":" .. port }
end

local function command(conn, argv, shape)
  return sched.await("redis " .. argv[1], function(done)
    local ok, err, code = conn:command(argv, done, shape)
    if not ok then done(nil, err, code) end
  end)
end

-- Opens one connection; waits up to `timeout` seconds. -> conn | nil, msg, code
local function open(host, port, timeout)
  local conn
  local ok, err, code = sl.timeout(timeout, function()
    return sched.await("redis connect", function(done)
      conn = cr.connect(host, port, done)
      return function() conn:close() end
    end)
  end)
  if ok then return conn end
  if conn then conn:close() end
  return nil, err, code
end

local function set_state(self, state, msg)
  self.state = state
  for _, fn in ipairs(self.watchers) do pcall(fn, state, msg) end
end

local reconnect

local function attach(self, conn)
  self.conn = conn
  conn:on_disconnect(function(msg)
    if self.closed or self.conn ~= conn then return end
    self.conn = nil
    self.ready = sl.event()
    set_state(self, "down", msg)
    reconnect(self)
  end)
  set_state(self, "up")
  self.ready:set(true)
end

function reconnect(self)
  local t = sched.spawn(function()
    local delay = 0.05
    while not self.closed do
      local conn = open(self.host, self.port, self.timeout)
      if self.closed then
        if conn then conn:close() end
        return
      end
      if conn then
        self.reconnects = self.reconnects + 1
        return attach(self, conn)
      end
      sl.sleep(delay)
      delay = math.min(delay * 2, 2)
    end
  end)
  t.name = "redis reconnect " .. self.url
  t.observed = true
  self.reconnect_task = t
end

-- connect(url | {host=, port=}, {timeout=5}) -> client | nil, message, code (waits)
function M.connect(where, opts)
  opts = opts or {}
  local addr = where
  if type(where) == "string" then
    local err
    addr, err = M.parse_url(where)
    if not addr then return nil, err, "EINVAL" end
  end
  local url = addr.url or ("redis://" .. addr.host .. ":" .. addr.port)
  local timeout = opts.timeout or 5
  local conn, err, code = open(addr.host, addr.port, timeout)
  if not conn then
    return nil, string.format("cannot reach Redis at %s: %s", url, tostring(err):gsub("^redis: ", "")), code
  end
  local self = setmetatable({ host = addr.host, port = addr.port, url = url, timeout = timeout,
    watchers = {}, ready = sl.event(), reconnects = 0, closed = false, scripts = {} }, Client)
  attach(self, conn)
  return self
end

-- r:on_state(fn): fn("down", message) when the connection is lost, fn("up") when it is back.
function Client:on_state(fn) self.watchers[#self.watchers + 1] = fn end

-- r:call_argv(argv[, shape]) -> reply | nil, message, code. shape "entries": the reply of
-- an XREAD/XREADGROUP as { {stream=, eid=, f = {field = value}}, ... } (sluice.core.redis).
function Client:call_argv(argv, shape)
  while true do
    if self.closed then return nil, "redis: the client is closed", "ECLOSED" end
    local conn = self.conn
    if conn then return command(conn, argv, shape) end
    self.ready:wait()
  end
end

function Client:call(...) return self:call_argv({ ... }) end

-- r:multi(cmds) -> list of EXEC's replies (an error inside it: { err = msg }) | nil, msg, code.
-- The commands are sent in one write; MULTI/EXEC makes them one atomic step on the server.
function Client:multi(cmds)
  while true do
    if self.closed then return nil, "redis: the client is closed", "ECLOSED" end
    local conn = self.conn
    if conn then break end
    self.ready:wait()
  end
  local conn = self.conn
  local ok, err, code = conn:command({ "MULTI" }) -- (replies we do not need: none taken)
  if not ok then return nil, err, code end
  for _, c in ipairs(cmds) do
    ok, err, code = conn:command(c)
    if not ok then return nil, err, code end
  end
  local r, e2, c2 = command(conn, { "EXEC" })
  if r == false then return nil, "redis: transaction aborted", "EREDIS" end
  return r, e2, c2
end

-- r:eval(script, keys, args) -> reply | nil, msg, code. The script is sent in full the first
-- time (and after a Redis restart emptied the script cache), by its SHA1 afterwards.
function Client:eval(script, keys, args)
  local sha = self.scripts[script]
  local function argv(cmd, first)
    local nk = #keys
    local a = table.move(keys, 1, nk, 4, { cmd, first, nk })
    if args then table.move(args, 1, #args, nk + 4, a) end
    return a
  end
  if sha then
    local r, err, code = self:call_argv(argv("EVALSHA", sha))
    if r ~= nil or not tostring(err):match("^NOSCRIPT") then return r, err, code end
  end
  local r, err, code = self:call("SCRIPT", "LOAD", script)
  if not r then return nil, err, code end
  self.scripts[script] = r
  return self:call_argv(argv("EVALSHA", r))
end

-- retry(fn, ...) -> fn's results: calls fn until it does not fail with a lost or missing
-- connection (ECONNRESET, ENOTCONN), waiting 0.05 s doubling to 2 s in between. For commands
-- that are safe to repeat.
function M.retry(fn, ...)
  local delay = 0.05
  while true do
    local r = table.pack(fn(...))
    if r[1] ~= nil or (r[3] ~= "ECONNRESET" and r[3] ~= "ENOTCONN") then
      return table.unpack(r, 1, r.n)
    end
    sl.sleep(delay)
    delay = math.min(delay * 2, 2)
  end
end

function Client:close()
  if self.closed then return end
  self.closed = true
  if self.reconnect_task then self.reconnect_task:cancel() end
  if self.conn then self.conn:close() end
  self.conn = nil
  self.ready:set(true)
end
Client.__close = Client.close

function Client:__tostring()
  return string.format("sluice.runtime.redis %s (%s)", self.url, self.closed and "closed" or self.state)
end

return M
