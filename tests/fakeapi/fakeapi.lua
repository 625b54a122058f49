-- fakeapi.lua: starts tests/fakeapi/server.py from a Lua test and talks to its control API.
--
--   package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
--   local fake = require "fakeapi"
--   local srv = fake.start()            -- inside a task; srv.url = "http://127.0.0.1:PORT"
--   srv:control { faults = { { kind = "429", arg = 1, path = "/v1/chat" } } }
--   local reqs = srv:requests("/v1/chat/completions")
--   srv:stop()
local sl = require "sluice"
local proc = require "sluice.core.proc"
local http = require "sluice.runtime.http"
local cjson = require "cjson"

local M = {}
local Server = {}
Server.__index = Server

local function source_dir() return os.getenv("SLUICE_SOURCE_DIR") or "." end

-- python_server(args[, {name=, on_stderr=}]) -> srv: runs /usr/bin/python3 ARGS, a server that
-- prints its port on the first line of its stdout (tests/fakeapi/server.py, the static and
-- live-origin servers of tests/lua/fixtures); srv.port, srv.proc, srv.exited (an event set
-- with its exit status), srv.stop() (SIGTERM, then waits up to 5 s). Inside a task; raises
-- when it does not start within 20 s, with what it wrote on stderr when on_stderr is not given.
function M.python_server(args, opts)
  opts = opts or {}
  local ready, out, errs = sl.event(), "", {}
  local srv = { exited = sl.event() }
  local p, msg = proc.spawn {
    file = "/usr/bin/python3", args = args,
    on_stdout = function(c)
      if not c then return end
      out = out .. c
      local port = out:match("^(%d+)\n")
      if port and not ready:is_set() then ready:set(tonumber(port)) end
    end,
    on_stderr = function(c)
      if not c then return end
      if opts.on_stderr then opts.on_stderr(c) else errs[#errs + 1] = c end
    end,
    on_exit = function(status)
      srv.exited:set(status or true)
      if not ready:is_set() then ready:set(false) end
    end,
  }
  local name = opts.name or tostring(args[1])
  if not p then error(name .. ": cannot start: " .. tostring(msg)) end
  srv.proc = p
  local port = sl.timeout(20, ready.wait, ready)
  if not port then
    pcall(p.kill, p, "SIGKILL")
    error(name .. " did not start: " .. table.concat(errs))
  end
  srv.port = port
  function srv.stop()
    pcall(p.kill, p, "SIGTERM")
    sl.timeout(5, srv.exited.wait, srv.exited)
  end
  return srv
end

-- start{latency=, rpm=} -> server. Raises when the server does not come up in 20 s.
function M.start(opts)
  opts = opts or {}
  local args = { source_dir() .. "/tests/fakeapi/server.py", "--port", "0" }
  if opts.latency then args[#args + 1] = "--latency"; args[#args + 1] = tostring(opts.latency) end
  if opts.rpm then args[#args + 1] = "--rpm"; args[#args + 1] = tostring(opts.rpm) end
  if opts.tls then
    for _, a in ipairs { "--tls-cert", opts.tls.cert, "--tls-key", opts.tls.key } do args[#args + 1] = a end
  end
  local debug = os.getenv("FAKEAPI_DEBUG")
  local py = M.python_server(args, { name = "fakeapi: server.py",
    on_stderr = debug and function(c) io.stderr:write(c) end or nil })
  local srv = setmetatable({ exited = py.exited, proc = py.proc, port = py.port }, Server)
  srv.cainfo = opts.tls and opts.tls.cert
  srv.url = (opts.tls and "https" or "http") .. "://127.0.0.1:" .. py.port
  return srv
end

local function call(self, method, path, body)
  local r, err = http.request { method = method, url = self.url .. path, json = body, timeout = 10,
    cainfo = self.cainfo }
  if not r then error("fakeapi: " .. path .. ": " .. tostring(err)) end
  if r.status ~= 200 then error("fakeapi: " .. path .. ": status " .. r.status .. ": " .. r.body) end
  return cjson.decode(r.body)
end

function Server:control(settings) return call(self, "POST", "/_control", settings) end
function Server:reset() return call(self, "POST", "/_reset", {}) end
function Server:stats() return call(self, "GET", "/_stats") end
function Server:events() return call(self, "GET", "/_events").events end

-- requests(path_prefix) -> list of recorded requests (method, path, query, headers,
-- json | multipart | raw) in arrival order.
function Server:requests(prefix)
  local q = prefix and ("?path=" .. prefix) or ""
  return call(self, "GET", "/_requests" .. q).requests
end

function Server:stop()
  if self.proc then
    pcall(self.proc.kill, self.proc, "SIGTERM")
    sl.timeout(5, self.exited.wait, self.exited)
    self.proc = nil
  end
end

-- write_wav(path, seconds[, rate]): a 16-bit mono PCM WAV file of a quiet tone.
function M.write_wav(path, seconds, rate)
  rate = rate or 16000
  local n = math.floor(seconds * rate)
  local samples = {}
  for i = 1, n do
    samples[i] = string.pack("<i2", math.floor(3000 * math.sin(i * 2 * math.pi * 440 / rate)))
  end
  local data = table.concat(samples)
  local f = assert(io.open(path, "wb"))
  f:write("RIFF", string.pack("<I4", 36 + #data), "WAVE", "fmt ",
    string.pack("<I4I2I2I4I4I2I2", 16, 1, 1, rate, rate * 2, 2, 16), "data",
    string.pack("<I4", #data), data)
  f:close()
  return path
end

-- write_jpeg(path): a small file with a JPEG signature (the fake server does not decode it).
function M.write_jpeg(path, size)
  local f = assert(io.open(path, "wb"))
  f:write("\255\216\255\224", string.rep("\0", (size or 2000) - 6), "\255\217")
  f:close()
  return path
end

return M
