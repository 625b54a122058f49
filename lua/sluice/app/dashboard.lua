-- sluice.app.dashboard: the live web dashboard, served on the engine's own loop.
--
--   local dash = require("sluice.app.dashboard").start{addr="127.0.0.1:8750", token=nil,
--                                                  job=job, store=store}
--   print(dash.url) ... dash:close()
--   -- or listen first (so that an address it cannot have stops a run before any work) and
--   -- give it the job once it exists:
--   local dash = assert(dashboard.start{addr=...}); ...; dash:attach(job, store)
--
-- The door (docs/graph.md, "The dashboard's door"):
--  - loopback only unless a token is given: a non-loopback address without one is refused;
--  - with a token, every request (page, API, SSE, files) carries it: "Authorization: Bearer
--    T", or "?token=T" (the browser's first visit), which sets the cookie sluice_token (HttpOnly,
--    SameSite=Strict; its value is a digest of the token, not the token) that the page's
--    later requests carry. Tokens are compared by their SHA-256 digests, byte by byte without
--    an early exit: the time taken says nothing about the token, not even its length;
--  - without a token (loopback), the Host header must name a loopback host: a web page whose
--    DNS name is rebound to 127.0.0.1 gets 403, not the jobs;
--  - a request that is not GET/HEAD with an Origin other than the server's own gets 403 (then
--    405: nothing changes state today);
--  - every answer says nosniff, no-referrer and DENY framing.
-- Routes (GET/HEAD):
--   /                 the page (web/index.html and its files)
--   /api/jobs         jobs in the store (the live one first)
--   /api/jobs/ID      one job: row, per-stage counts, failures, live stats and graph
--   /api/events       Server-Sent Events: every bus event once, in order, id = event n;
--                     resumes after Last-Event-ID (header, or ?last_event_id=N); ?job=ID
--                     replays a stored job's latest run
--   /files/PATH       files under the job's output folder (thumbnails; ?job=ID names the job,
--                     else the live one, else the store's newest): images and plain text
--                     only (M.FILE_TYPES), sandboxed by Content-Security-Policy
-- A non-loopback address needs a token. Paths with ".." segments are refused; files are
-- resolved on a worker thread and must stay inside their folder.
local sl = require "sluice"
local core = require "sluice.core.core"
local httpd = require "sluice.core.httpd"
local cjson = require "cjson"
local digest = require "sluice.core.digest"
local S = require "sluice.app.store"

local M = {}
M.DEFAULT_ADDR = "127.0.0.1:8750"
M.RING = 20000          -- events kept in memory for Last-Event-ID resume
M.STATS_INTERVAL = 0.5  -- seconds between live stats pushes
M.PING_INTERVAL = 15

local MIME = {
  html = "text/html; charset=utf-8", js = "text/javascript; charset=utf-8",
  css = "text/css; charset=utf-8", json = "application/json", png = "image/png",
  jpg = "image/jpeg", jpeg = "image/jpeg", svg = "image/svg+xml", txt = "text/plain; charset=utf-8",
  webp = "image/webp", ico = "image/x-icon", md = "text/plain; charset=utf-8",
}

-- parse_addr("host:port" | "host" | ":port" | "[v6]:port") -> host, port | nil, message
function M.parse_addr(addr)
  if addr == nil or addr == true or addr == "" then addr = M.DEFAULT_ADDR end
  addr = tostring(addr)
  local host, port
  if addr:match("^%[") then
    host, port = addr:match("^%[([^%]]+)%]:?(%d*)$")
  elseif addr:match("^%d+$") then
    port = addr
  else
    host, port = addr:match("^([^:]*):(%d+)$")
    if not host then host = addr:match("^([^:]+)$") end
  end
  if host == nil and port == nil then return nil, "bad address '" .. addr .. "' (expected HOST:PORT)" end
  if host == nil or host == "" or host == "localhost" then host = "127.0.0.1" end
  port = tonumber(port ~= "" and port or nil) or 8750
  if port > 65535 then return nil, "bad port in '" .. addr .. "'" end
  return host, port
end

function M.is_loopback(host)
  return host:match("^127%.%d+%.%d+%.%d+$") ~= nil or host == "::1"
end

local function url_decode(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(q)
  local t = {}
  if not q then return t end
  for part in q:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=?(.*)$")
    t[url_decode(k)] = url_decode(v)
  end
  return t
end

-- Decodes a URL path and splits it into segments; refuses "..", NUL and backslashes.
-- Returns the relative path ("a/b.png") or nil.
function M.safe_relpath(path)
  if path:find("%%2[fF]") or path:find("%%5[cC]") then return nil end -- encoded separators
  local p = url_decode(path:gsub("+", "%%2B"))
  if p:find("\0", 1, true) or p:find("\\", 1, true) then return nil end
  local segs = {}
  for seg in p:gmatch("[^/]+") do
    if seg == ".." then return nil end
    if seg ~= "." then segs[#segs + 1] = seg end
  end
  return table.concat(segs, "/")
end

-- Equal strings of the same length, in a time that does not depend on where they differ.
local function const_eq(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = diff | (a:byte(i) ~ b:byte(i)) end
  return diff == 0
end

M.COOKIE = "sluice_token"

-- The cookie's value for a token: a digest, so the cookie jar never holds the token itself.
local function cookie_value(token)
  return digest.sha256("sluice dashboard cookie\0" .. token)
end

-- The token a request carries, and how: "header" | "query" | "cookie" (nil when none).
local function given_token(info, q)
  local auth = info.headers.authorization
  if auth then return auth:match("^[Bb]earer%s+(.-)%s*$"), "header" end
  if q.token then return q.token, "query" end
  local cookies = info.headers.cookie
  if cookies then
    for k, v in cookies:gmatch("([^=;%s]+)=([^;]*)") do
      if k == M.COOKIE then return v, "cookie" end
    end
  end
  return nil
end

-- authorized(token, info, q) -> true, how | false: compares SHA-256 digests (fixed length,
-- no early exit), so neither the token's bytes nor its length show in the time taken.
function M.authorized(token, info, q)
  local given, how = given_token(info, q or parse_query(info.query))
  if type(given) ~= "string" then return false end
  local want = how == "cookie" and digest.sha256(cookie_value(token)) or digest.sha256(token)
  return const_eq(digest.sha256(given), want), how
end

-- The host part of a Host or Origin value ("127.0.0.1:8750", "[::1]:80", "localhost").
local function host_of(v)
  v = v:lower()
  return v:match("^%[([^%]]*)%]") or v:match("^([^:]*)")
end

local function loopback_name(h)
  return h == "localhost" or M.is_loopback(h) or h:match("^[%w%-]+%.localhost$") ~= nil
end

-- A request from a page of another origin (Origin names another scheme/host/port than Host).
local function cross_origin(info)
  local origin = info.headers.origin
  if not origin then return false end
  local host = info.headers.host
  return not host or origin:lower() ~= "http://" .. host:lower()
end

-- Headers every answer carries.
local SAFE_HEADERS = { ["X-Content-Type-Options"] = "nosniff", ["Referrer-Policy"] = "no-referrer",
  ["X-Frame-Options"] = "DENY" }

-- A request handle whose respond/stream add the given headers (and the safe ones); every
-- other method is the handle's own.
local function with_headers(req, extra)
  local function merge(h)
    local out = {}
    for k, v in pairs(SAFE_HEADERS) do out[k] = v end
    for k, v in pairs(extra) do out[k] = v end
    for k, v in pairs(h or {}) do out[k] = v end
    return out
  end
  return setmetatable({}, { __index = function(t, k)
    local fn
    if k == "respond" then
      fn = function(_, status, h, body) return req:respond(status, merge(h), body) end
    elseif k == "stream" then
      fn = function(_, status, h) return req:stream(status, merge(h)) end
    else
      local f = req[k]
      if type(f) ~= "function" then return f end
      fn = function(_, ...) return f(req, ...) end
    end
    rawset(t, k, fn)
    return fn
  end })
end

local function json_response(req, status, value)
  return req:respond(status, { ["Content-Type"] = "application/json",
    ["Cache-Control"] = "no-store" }, S.to_json(value))
end

local function text_response(req, status, msg)
  return req:respond(status, { ["Content-Type"] = "text/plain; charset=utf-8" }, msg .. "\n")
end

local function default_web_dir()
  local share = core.share_dir or ((core.lua_dir or "lua") .. "/..")
  return share .. "/web"
end

local Dash = {}
Dash.__index = Dash
Dash.__name = "sluice.app.dashboard"

-- The stage graph of a live job, as {name=, from={...}} records, when the job exposes one.
local function job_graph(job)
  local out = {}
  if job and type(job.graph) == "function" then -- a graph job: its nodes in graph order
    local ok, g = pcall(job.graph, job)
    if ok and type(g) == "table" then
      for _, n in ipairs(g) do out[#out + 1] = { name = n.name, from = n.from or {} } end
      return out
    end
  end
  local stages = job and job.stages
  if type(stages) ~= "table" then return out end
  for name, st in pairs(stages) do
    if type(name) == "string" then
      local from = {}
      if type(st) == "table" then
        local inner = rawget(st, "_S") -- the graph's stage proxies hold the stage here
        local src = type(inner) == "table" and inner or st
        local f = rawget(src, "from") or rawget(src, "inputs")
        if type(f) == "string" then from = { f }
        elseif type(f) == "table" then for _, x in ipairs(f) do from[#from + 1] = tostring(x) end end
      end
      out[#out + 1] = { name = name, from = from }
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function live_stats(job)
  if not job or type(job.stats) ~= "function" then return nil end
  local ok, st = pcall(job.stats, job)
  if ok then return st end
  return nil
end

-- SSE ------------------------------------------------------------------------------------------

local function sse_frame(n, json)
  return "id: " .. n .. "\ndata: " .. json .. "\n\n"
end

local function client_send(self, c, n, json)
  if c.dead or n <= c.last then return end
  c.last = n
  local ok = c.req:write(sse_frame(n, json))
  if not ok then
    c.dead = true
    self.clients[c] = nil
  end
end

-- Appends a bus event to the ring and sends it to every live client.
function Dash:publish(ev)
  local n = math.type(ev.n) == "integer" and ev.n or (self.last_n + 1)
  if n <= self.last_n then n = self.last_n + 1 end -- keep ids strictly increasing
  self.last_n = n
  local json = ev._json or S.to_json(ev)
  local ring = self.ring
  ring.tail = ring.tail + 1
  ring[ring.tail] = { n, json }
  if ring.tail - ring.head + 1 > M.RING then
    ring[ring.head] = nil
    ring.head = ring.head + 1
  end
  self.events = self.events + 1
  for c in pairs(self.clients) do
    if c.backlog then
      c.queue[#c.queue + 1] = { n, json }
    else
      client_send(self, c, n, json)
    end
  end
end

local function serve_events(self, req, info, q)
  local last = tonumber(info.headers["last-event-id"] or q.last_event_id or "") or 0
  last = math.floor(last)
  local job_id = q.job
  local live = self.job and (job_id == nil or job_id == tostring(self.job.id))
  req:stream(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-store",
    ["X-Accel-Buffering"] = "no" })
  local c = { req = req, last = last, backlog = true, queue = {} }
  self.clients[c] = true
  req:on_close(function()
    c.dead = true
    self.clients[c] = nil
  end)
  req:write("retry: 1000\n\n")
  -- Events older than what the ring holds come from the store.
  local ring = self.ring
  local first_in_ring = ring[ring.head] and ring[ring.head][1] or (self.last_n + 1)
  if self.store and (not live or last + 1 < first_in_ring) then
    local id = job_id or (self.job and tostring(self.job.id))
    if not id then
      local jobs = self.store:jobs()
      id = jobs and jobs[1] and jobs[1].id
    end
    if id then
      local rows = self.store:events(id, last, live and (self.store_run or (self.job and self.job.store_run)) or nil)
      for _, r in ipairs(rows or {}) do
        if live and r.n >= first_in_ring then break end
        client_send(self, c, r.n, r.json)
        if c.dead then return end
      end
    end
  end
  if live then
    for i = ring.head, ring.tail do
      local e = ring[i]
      client_send(self, c, e[1], e[2])
      if c.dead then return end
    end
  end
  c.backlog = false
  for _, e in ipairs(c.queue) do client_send(self, c, e[1], e[2]) end
  c.queue = nil
end

-- Request handling -------------------------------------------------------------------------

-- What /files/ serves from the output folder, which holds what strangers wrote (downloaded
-- enclosures, worker outputs): images and plain text only, never a type a browser runs
-- (html, svg, js) nor the job store, and nothing under a hidden (dot) folder.
M.FILE_TYPES = {
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", webp = "image/webp", gif = "image/gif",
  txt = "text/plain; charset=utf-8", md = "text/plain; charset=utf-8", srt = "text/plain; charset=utf-8",
  vtt = "text/plain; charset=utf-8", csv = "text/plain; charset=utf-8", json = "application/json",
}

local function output_file_type(rel)
  if ("/" .. rel):find("/%.") then return nil end
  local ext = rel:match("%.([%w]+)$")
  return ext and M.FILE_TYPES[ext:lower()]
end

local function serve_file(req, root, rel, info, ctype)
  local data, err, code = sl.await("httpd.read_file", function(done)
    return httpd.read_file(root, rel, done)
  end)
  if not data then
    if code == "EACCES" then return text_response(req, 403, "forbidden") end
    return text_response(req, 404, "not found: " .. tostring(info.path))
  end
  local ext = rel:match("%.([%w]+)$")
  local h = { ["Content-Type"] = ctype or MIME[ext and ext:lower() or ""] or "application/octet-stream",
    ["Cache-Control"] = "no-cache", ["X-Content-Type-Options"] = "nosniff" }
  if ctype then h["Content-Security-Policy"] = "default-src 'none'; sandbox" end -- output files
  return req:respond(200, h, data)
end

function Dash:api_job(req, id)
  local info
  if self.store then
    info = self.store:job(id)
  end
  local live = self.job and tostring(self.job.id) == id
  if not info and not live then return json_response(req, 404, { error = "no job '" .. id .. "'" }) end
  info = info or { job = { id = id, out = live and (self.job.out_dir or self.job.out) or nil,
    pipeline = live and self.job.pipeline_name or nil, status = live and self.job.state or nil },
    stages = {}, failures = {} }
  if live then
    info.live = true
    info.graph = job_graph(self.job)
    info.stats = live_stats(self.job)
    info.last_event = self.last_n
    info.pipeline = self.job.pipeline_name
  end
  return json_response(req, 200, info)
end

-- files_root(id) -> the folder /files/ serves: the output folder of the job ?job=ID names
-- (the live one, or one in the store, as the store recorded it), without ID the live job's,
-- else the store's newest job's; nil when there is none.
function Dash:files_root(id)
  if id == nil or (self.job and tostring(self.job.id) == id) then
    if self.files_dir then return self.files_dir end
    local newest = self.store and self.store:jobs()[1]
    if not newest then return nil end
    id = newest.id
  end
  local info = self.store and self.store:job(id)
  local out = info and info.job and info.job.out
  if type(out) ~= "string" or out == "" then return nil end
  return out
end

function Dash:route(req, info)
  local q = parse_query(info.query)
  local extra = {}
  if self.token then
    local ok, how = M.authorized(self.token, info, q)
    if not ok then
      return with_headers(req, extra):respond(401, { ["Content-Type"] = "text/plain; charset=utf-8",
        ["WWW-Authenticate"] = "Bearer" }, "a token is required\n")
    end
    if how == "query" then -- the browser's first visit: later requests carry the cookie
      extra["Set-Cookie"] = M.COOKIE .. "=" .. cookie_value(self.token) ..
        "; Path=/; HttpOnly; SameSite=Strict"
    end
  elseif info.headers.host and not loopback_name(host_of(info.headers.host)) then
    -- no token: loopback only, also for a page whose own name was rebound to 127.0.0.1
    return with_headers(req, extra):respond(403, {}, "host not allowed\n")
  end
  req = with_headers(req, extra)
  if info.method ~= "GET" and info.method ~= "HEAD" then
    if cross_origin(info) then return req:respond(403, {}, "cross-origin request refused\n") end
    return req:respond(405, { Allow = "GET, HEAD" }, "method not allowed\n")
  end
  local rel = M.safe_relpath(info.path)
  if not rel then return text_response(req, 400, "bad path") end
  self.requests = self.requests + 1
  if rel == "api/events" then
    return serve_events(self, req, info, q)
  elseif rel == "api/jobs" then
    local jobs = self.store and self.store:jobs() or {}
    if self.job then
      local live
      for _, j in ipairs(jobs) do if j.id == tostring(self.job.id) then j.live, live = true, j end end
      if not live then -- no store (or not written yet): the live job from its own stats
        local st = live_stats(self.job) or {}
        local done, dead = 0, st.dead or 0
        for _, x in pairs(st.stages or {}) do
          if x.kind ~= "source" then done = done + (x.done or 0) end
        end
        table.insert(jobs, 1, { id = tostring(self.job.id), pipeline = self.job.pipeline_name,
          status = self.job.state, done = done, dead = dead, live = true })
      end
    end
    -- a list even when empty (the page maps over it)
    local body = #jobs == 0 and '{"jobs":[]}' or nil
    if body then return req:respond(200, { ["Content-Type"] = "application/json",
      ["Cache-Control"] = "no-store" }, body) end
    return json_response(req, 200, { jobs = jobs, live = self.job and tostring(self.job.id) or nil })
  elseif rel:match("^api/jobs/") then
    return self:api_job(req, rel:sub(10))
  elseif rel == "api/stats" then
    return json_response(req, 200, { stats = live_stats(self.job), last_event = self.last_n })
  elseif rel:match("^files/") then
    local root = self:files_root(q.job)
    if not root then return text_response(req, 404, "no output folder") end
    local ctype = output_file_type(rel:sub(7))
    if not ctype then return text_response(req, 403, "not a file the dashboard serves") end
    return serve_file(req, root, rel:sub(7), info, ctype)
  elseif rel:match("^api/") then
    return json_response(req, 404, { error = "no such endpoint" })
  end
  if rel == "" then rel = "index.html" end
  return serve_file(req, self.web_dir, rel, info)
end

-- start{addr=, token=, job=, store=, web_dir=, files_dir=} -> dashboard | nil, message
function M.start(opts)
  opts = opts or {}
  local host, port = M.parse_addr(opts.addr)
  if not host then return nil, port end
  local token = opts.token
  if token == "" then token = nil end
  if not M.is_loopback(host) and not token then
    return nil, "dashboard: listening on " .. host .. " (not loopback) needs --token"
  end
  local self = setmetatable({
    store = opts.store, token = token, web_dir = opts.web_dir or default_web_dir(),
    files_dir = opts.files_dir, clients = {}, ring = { head = 1, tail = 0 }, last_n = 0,
    events = 0, requests = 0,
  }, Dash)
  local srv, err = httpd.listen {
    host = host, port = port, max_header = opts.max_header or 16384, max_body = opts.max_body or 65536,
    on_request = function(req, info)
      local t = sl.spawn(function()
        local ok, e = pcall(self.route, self, req, info)
        if not ok then
          io.stderr:write("sluice: dashboard: " .. tostring(e) .. "\n")
          if not req:closed() then pcall(text_response, req, 500, "internal error") end
        end
      end)
      t.name = "dashboard " .. info.method .. " " .. info.path
      t.observed = true
    end,
  }
  if not srv then return nil, "dashboard: " .. tostring(err) end
  self.server = srv
  local bhost, bport = srv:address()
  self.host, self.port = bhost, bport
  local shown = bhost:find(":", 1, true) and ("[" .. bhost .. "]") or bhost
  self.url = string.format("http://%s:%d/", shown, bport)
  if not opts.quiet then
    io.stderr:write("sluice: dashboard at " .. self.url .. (token and " (token required)" or "") .. "\n")
  end
  if opts.job then self:attach(opts.job, opts.store) end
  -- live stats and keep-alive pings for open streams
  self.timer = core.timer()
  local since_ping = 0
  self.timer:start(M.STATS_INTERVAL, M.STATS_INTERVAL, function()
    if next(self.clients) == nil then return end
    since_ping = since_ping + M.STATS_INTERVAL
    local frame
    local st = live_stats(self.job)
    if st then frame = "event: stats\ndata: " .. S.to_json(st) .. "\n\n" end
    if not frame and since_ping >= M.PING_INTERVAL then frame = ": ping\n\n" end
    if frame then
      since_ping = 0
      for c in pairs(self.clients) do
        if not c.backlog and not c.req:write(frame) then
          c.dead = true
          self.clients[c] = nil
        end
      end
    end
  end)
  return self
end

-- dash:attach(job[, store]): the live job the dashboard shows (its events, stats and output
-- folder), and the store of past jobs.
function Dash:attach(job, store)
  self.job = job
  if store then self.store = store end
  self.files_dir = self.files_dir or job.out_dir or job.out
  if job.store_run then self.store_run = job.store_run end
  if job.bus and not self.off then
    self.off = job.bus:on(function(ev) self:publish(ev) end)
  end
  return self
end

-- dash:close(): ends open streams and stops listening.
function Dash:close()
  if not self.server then return end
  if type(self.off) == "function" then pcall(self.off)
  elseif self.job and self.job.bus and self.job.bus.off then pcall(self.job.bus.off, self.job.bus, self.off) end
  self.timer:close()
  for c in pairs(self.clients) do pcall(c.req.finish, c.req) end
  self.clients = {}
  self.server:close()
  self.server = nil
end

function Dash:__tostring() return "sluice.app.dashboard (" .. tostring(self.url) .. ")" end

M.url_decode = url_decode
M.parse_query = parse_query
return M
