-- sluice.runtime.http: HTTP requests that wait in the calling task (libcurl on the engine's loop).
--
--   local http = require "sluice.runtime.http"
--   local r, err, code = http.request { method = "POST", url = "http://127.0.0.1:8080/v1/x",
--     json = { a = 1 }, timeout = 30 }
--   if r then print(r.status, r.headers["content-type"], r.body) end
--
-- request{method, url, headers, body | json | multipart, timeout, connect_timeout,
--         stream = function(chunk) end, download = path, resume = bool,
--         progress = function(bytes, total) end, follow = bool, cainfo = CA file,
--         max_bytes = N}
--   -> {status=, headers=, body=, bytes=, seconds=, http_version=, resumed=}
--   or nil, message, code (ETIMEDOUT, ECONNREFUSED, ECONNRESET, ENOTFOUND, ETLS, EREDIRECT
--   (more than 8 redirects), ETOOBIG (more than max_bytes bytes of body, buffered, streamed
--   or downloaded, counted after decompression: the transfer stops there), ...)
-- Any HTTP status is a response (check r.status); failures are transport failures.
-- Cancelling the task aborts the transfer: curl drops the connection, no callback runs.
local sched = require "sluice.runtime.sched"
local chttp = require "sluice.core.http"
local cjson = require "cjson"

local M = {}

M.curl_version = chttp.curl_version
M.configure = chttp.configure
M.stats = chttp.stats

local function header_list(h, out, seen)
  if h == nil then return end
  if type(h) ~= "table" then error("http.request: 'headers' must be a table", 3) end
  for k, v in pairs(h) do
    if type(k) == "number" then
      out[#out + 1] = tostring(v)
      local name = tostring(v):match("^([^:]+):")
      if name then seen[name:lower()] = true end
    elseif v ~= false and v ~= nil then
      out[#out + 1] = k .. ": " .. tostring(v)
      seen[k:lower()] = true
    end
  end
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end") or 0
  f:close()
  return n
end

-- Strips the query string: messages and wait names never show it (keys may live there).
local function safe_url(url)
  return (url:gsub("[?#].*$", ""))
end
M.safe_url = safe_url

function M.request(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'http.request' (table expected)", 2) end
  local url = opts.url
  if type(url) ~= "string" or url == "" then
    error("bad argument #1 to 'http.request' (option 'url' must be a non-empty string)", 2)
  end
  local nbodies = (opts.body ~= nil and 1 or 0) + (opts.json ~= nil and 1 or 0) +
    (opts.multipart ~= nil and 1 or 0)
  if nbodies > 1 then error("http.request: give only one of 'body', 'json', 'multipart'", 2) end
  for _, name in ipairs { "stream", "progress" } do
    if opts[name] ~= nil and type(opts[name]) ~= "function" then
      error("http.request: '" .. name .. "' must be a function", 2)
    end
  end
  local headers, seen = {}, {}
  header_list(opts.headers, headers, seen)
  local body = opts.body
  if opts.json ~= nil then
    body = cjson.encode(opts.json)
    if not seen["content-type"] then headers[#headers + 1] = "Content-Type: application/json" end
  end
  if body ~= nil and type(body) ~= "string" then error("http.request: 'body' must be a string", 2) end
  local method = opts.method and opts.method:upper() or ((body or opts.multipart) and "POST" or "GET")
  local copts = {
    method = method, url = url, headers = headers, body = body, multipart = opts.multipart,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout, download = opts.download,
    follow = opts.follow, cainfo = opts.cainfo, max_bytes = opts.max_bytes,
  }
  if opts.download and opts.resume then
    local n = file_size(opts.download)
    if n > 0 then copts.resume_from = n end
  end
  local failed -- a callback of the caller raised: the request is over
  local handle
  local what = "http " .. method .. " " .. safe_url(url)
  local r = table.pack(sched.await(what, function(done)
    -- The caller's stream and progress functions run from the loop; one that raises cancels
    -- the request, which then fails with its error (ESTREAM).
    for _, name in ipairs { "stream", "progress" } do
      local user = opts[name]
      if user then
        copts[name] = function(...)
          if failed then return end
          local ok, err = pcall(user, ...)
          if not ok then
            failed = true
            if handle then handle:cancel() end
            done(nil, string.format("http: %s %s: %s callback failed: %s", method, safe_url(url), name,
              tostring(err)), "ESTREAM")
          end
        end
      end
    end
    local h, msg, code = chttp.request(copts, done)
    if not h then
      done(nil, msg, code)
      return nil
    end
    handle = h
    return h
  end))
  if r[1] == nil then return nil, r[2], r[3] end
  local info = r[4] or {}
  return {
    status = r[1], headers = r[2], body = r[3], bytes = info.bytes, seconds = info.seconds,
    http_version = info.http_version, resumed = info.resumed,
  }
end

function M.get(url, opts)
  opts = opts or {}
  opts.url = url
  opts.method = opts.method or "GET"
  return M.request(opts)
end

function M.post(url, opts)
  opts = opts or {}
  opts.url = url
  opts.method = opts.method or "POST"
  return M.request(opts)
end

-- download(url, path, opts) -> response (r.bytes: bytes received this time). With
-- opts.resume (default true) an existing partial file continues with a Range request.
function M.download(url, path, opts)
  opts = opts or {}
  opts.url = url
  opts.download = path
  if opts.resume == nil then opts.resume = true end
  return M.request(opts)
end

-- Decodes a JSON body; returns value or nil, message.
function M.decode_json(body)
  if type(body) ~= "string" then return nil, "no body" end
  local ok, v = pcall(cjson.decode, body)
  if not ok then return nil, tostring(v) end
  return v
end

return M
