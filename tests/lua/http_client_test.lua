-- sluice.runtime.http against a real local server (tests/fakeapi/server.py) over loopback sockets.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local http = require "sluice.runtime.http"
local fake = require "fakeapi"
local cjson = require "cjson"

local srv

-- Waits (polling) until cond() is true or seconds pass; returns cond()'s last value. The
-- deadline is generous: it only matters when the condition never comes.
local function eventually(cond, seconds)
  local deadline = sl.now() + (seconds or 30)
  while not cond() and sl.now() < deadline do sl.sleep(0.01) end
  return cond()
end

T.case("server starts", function()
  srv = fake.start()
  T.ok(srv.port > 0)
end)

T.case("GET returns status, lower-case headers and body", function()
  local r = T.ok(http.get(srv.url .. "/ok"))
  T.eq(r.status, 200)
  T.eq(r.body, "ok")
  T.ok(r.headers["content-type"]:find("text/plain", 1, true))
  T.eq(r.headers["content-length"], "2")
end)

T.case("POST json sends the body and headers as given", function()
  local r = T.ok(http.request { url = srv.url .. "/echo?x=1", json = { a = 1, s = "héllo" },
    headers = { ["X-Test"] = "yes", "X-Raw: raw value" } })
  T.eq(r.status, 200)
  local rec = cjson.decode(r.body)
  T.eq(rec.method, "POST")
  T.eq(rec.query.x, "1")
  T.eq(rec.json.a, 1)
  T.eq(rec.json.s, "héllo")
  T.eq(rec.headers["Content-Type"], "application/json")
  T.eq(rec.headers["X-Test"], "yes")
  T.eq(rec.headers["X-Raw"], "raw value")
  T.ok(rec.headers["User-Agent"]:find("^sluice/"))
end)

T.case("custom methods and raw bodies", function()
  local r = T.ok(http.request { method = "PUT", url = srv.url .. "/echo", body = "plain text",
    headers = { ["Content-Type"] = "text/plain" } })
  local rec = cjson.decode(r.body)
  T.eq(rec.method, "PUT")
  T.eq(rec.raw, "plain text")
  r = T.ok(http.request { method = "DELETE", url = srv.url .. "/echo" })
  T.eq(cjson.decode(r.body).method, "DELETE")
end)

T.case("multipart sends fields and files", function()
  local path = os.tmpname()
  local f = io.open(path, "wb")
  f:write(string.rep("A", 5000))
  f:close()
  local r = T.ok(http.request { url = srv.url .. "/echo", multipart = {
    { name = "model", data = "whisper-1" },
    { name = "file", file = path, filename = "a.wav", type = "audio/wav" },
  } })
  os.remove(path)
  local rec = cjson.decode(r.body)
  T.eq(rec.multipart.model, "whisper-1")
  T.eq(rec.multipart.file.filename, "a.wav")
  T.eq(rec.multipart.file.size, 5000)
  T.eq(rec.multipart.file.content_type, "audio/wav")
end)

T.case("HTTP error statuses are responses, not failures", function()
  local r = T.ok(http.get(srv.url .. "/status/503"))
  T.eq(r.status, 503)
  T.eq(r.body, "status page\n")
end)

T.case("transport failures: refused, timeout, dropped connection", function()
  local r, msg, code = http.get("http://127.0.0.1:1/x?key=SECRET")
  T.eq(r, nil)
  T.eq(code, "ECONNREFUSED")
  T.ok(msg:find("GET http://127.0.0.1:1/x", 1, true), msg)
  T.ok(not msg:find("SECRET"), "query strings never appear in messages")
  r, msg, code = http.request { url = srv.url .. "/echo", timeout = 0.3,
    headers = { ["X-Fake-Fault"] = "hang" } }
  T.eq(code, "ETIMEDOUT", msg)
  r, msg, code = http.request { url = srv.url .. "/echo", headers = { ["X-Fake-Fault"] = "drop" } }
  T.eq(code, "ECONNRESET", msg)
  r, msg, code = http.request { url = srv.url .. "/echo", headers = { ["X-Fake-Fault"] = "truncate" } }
  T.eq(code, "ECONNRESET", msg)
end)

T.case("stream delivers chunks as they arrive", function()
  local chunks, times = {}, {}
  local t0 = sl.now()
  local r = T.ok(http.request { url = srv.url .. "/sse?n=5&delay=0.2", stream = function(c)
    chunks[#chunks + 1] = c
    times[#times + 1] = sl.now() - t0
  end })
  T.eq(r.status, 200)
  T.eq(r.body, nil)
  local all = table.concat(chunks)
  T.eq(select(2, all:gsub("data: ", "")), 5)
  T.ok(#chunks >= 3, "several chunks, got " .. #chunks)
  -- the first chunk arrived well before the end of the response: the server spreads the
  -- events over 0.8 s, a client that buffered the body would deliver them all at once (the
  -- margin lets this process stall for 0.6 s on a loaded machine)
  T.ok(times[1] < times[#times] - 0.2, string.format("first %.3f last %.3f", times[1], times[#times]))
end)

T.case("an error in the stream callback aborts the request with a clear error", function()
  local r, msg, code = http.request { url = srv.url .. "/sse?n=50&delay=0.02",
    stream = function() error("boom") end }
  T.eq(r, nil)
  T.eq(code, "ESTREAM")
  T.ok(msg:find("boom"), msg)
end)

T.case("download streams to a file, reports progress and resumes with Range", function()
  local path = os.tmpname()
  local seen = 0
  local r = T.ok(http.download(srv.url .. "/bytes/1000000?chunk=65536", path,
    { resume = false, progress = function(n, total) seen = n; T.eq(total, 1000000) end }))
  T.eq(r.status, 200)
  T.eq(r.bytes, 1000000)
  T.eq(seen, 1000000)
  local f = io.open(path, "rb")
  local data = f:read("a")
  f:close()
  T.eq(#data, 1000000)
  -- cut the file and resume
  f = io.open(path, "wb")
  f:write(data:sub(1, 300000))
  f:close()
  r = T.ok(http.download(srv.url .. "/bytes/1000000", path))
  T.eq(r.status, 206)
  T.eq(r.resumed, true)
  T.eq(r.bytes, 700000)
  f = io.open(path, "rb")
  local again = f:read("a")
  f:close()
  T.eq(#again, 1000000)
  T.ok(again == data, "resumed file equals the original")
  local req = srv:requests("/bytes/1000000")
  T.eq(req[#req].headers.Range, "bytes=300000-")
  -- a server that ignores Range: the file starts over
  f = io.open(path, "wb")
  f:write(data:sub(1, 1000))
  f:close()
  r = T.ok(http.download(srv.url .. "/bytes/1000000?norange=1", path))
  T.eq(r.status, 200)
  f = io.open(path, "rb")
  again = f:read("a")
  f:close()
  T.ok(again == data, "restarted file equals the original")
  -- error statuses do not touch the file's content
  r = T.ok(http.download(srv.url .. "/status/404", path, { resume = false }))
  T.eq(r.status, 404)
  T.eq(r.body, "status page\n")
  os.remove(path)
  local r2, msg, code = http.download(srv.url .. "/bytes/10", "/nonexistent-dir/x.bin")
  T.eq(r2, nil)
  T.eq(code, "ENOENT", msg)
end)

T.case("a cancelled download keeps what it wrote; resuming completes it", function()
  local path = os.tmpname()
  local got = 0
  -- 30 chunks 0.05 s apart: the cancel comes after 3 of them, 1.35 s before the end, so a
  -- slow (loaded) machine still cancels mid-transfer
  local task = sl.spawn(function()
    return http.download(srv.url .. "/bytes/3000000?chunk=100000&delay=0.05", path,
      { resume = false, progress = function(n) got = n end })
  end)
  T.ok(eventually(function() return got >= 300000 end), "the download is under way")
  task:cancel()
  T.ok(not pcall(task.wait, task), "the download was cancelled before it finished")
  -- the transfer lives on only until the file writes already queued have finished
  T.ok(eventually(function() return http.stats().transfers == 0 end), "the transfer ended")
  local f = io.open(path, "rb")
  local partial = #f:read("a")
  f:close()
  T.ok(partial >= got and partial < 3000000, "partial file " .. partial .. ", progress " .. got)
  local r = T.ok(http.download(srv.url .. "/bytes/3000000", path))
  T.eq(r.status, 206)
  T.eq(r.bytes, 3000000 - partial)
  f = io.open(path, "rb")
  local data = f:read("a")
  f:close()
  T.eq(#data, 3000000)
  local ref = T.ok(http.get(srv.url .. "/bytes/3000000"))
  T.ok(ref.body == data, "resumed file is byte-identical")
  os.remove(path)
end)

T.case("cancelling the task aborts the transfer; the server sees the connection close", function()
  srv:reset()
  local task = sl.spawn(function()
    return http.request { url = srv.url .. "/echo?cancel=1", headers = { ["X-Fake-Fault"] = "hang" } }
  end)
  -- wait until the server has the request
  eventually(function() return #srv:requests("/echo") > 0 end)
  T.eq(#srv:requests("/echo"), 1)
  T.eq(http.stats().transfers, 1)
  task:cancel()
  local ok, err = pcall(task.wait, task)
  T.ok(not ok and tostring(err):find("cancelled"), tostring(err))
  T.eq(http.stats().transfers, 0)
  T.eq(http.stats().active, 0)
  local seen = eventually(function()
    for _, e in ipairs(srv:events()) do
      if e.event == "disconnected" and e.path == "/echo" then return true end
    end
    return false
  end)
  T.ok(seen, "server saw the client disconnect")
end)

T.case("timeout from sluice.timeout cancels the request too", function()
  local r, msg, code = sl.timeout(0.2, http.request, { url = srv.url .. "/echo",
    headers = { ["X-Fake-Fault"] = "hang" } })
  T.eq(code, "ETIMEDOUT", msg)
  T.eq(http.stats().transfers, 0)
end)

T.case("200 concurrent requests over kept-alive connections", function()
  srv:reset()
  local g = sl.group()
  local results = {}
  for i = 1, 200 do
    g:spawn(function()
      local r = T.ok(http.request { url = srv.url .. "/echo?i=" .. i, json = { i = i } })
      results[i] = cjson.decode(r.body).json.i
    end)
  end
  g:wait()
  for i = 1, 200 do T.eq(results[i], i) end
  -- sequential requests reuse one connection
  for _ = 1, 20 do T.ok(http.get(srv.url .. "/ok")) end
  T.ok(http.stats().sockets <= 64, "sockets " .. http.stats().sockets)
end)

T.case("TLS: the server certificate is verified", function()
  local dir = os.tmpname()
  os.remove(dir)
  T.ok(sl.exec { "mkdir", "-p", dir })
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  local r = T.ok(sl.exec { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1" })
  T.eq(r.status, 0, r.stderr)
  local tls = fake.start { tls = { cert = cert, key = key } }
  local res, msg, code = http.get(tls.url .. "/ok")
  T.eq(res, nil)
  T.eq(code, "ETLS", msg)
  res = T.ok(http.get(tls.url .. "/ok", { cainfo = cert }))
  T.eq(res.status, 200)
  T.eq(res.body, "ok")
  tls:stop()
  sl.exec { "rm", "-rf", dir }
end)

T.case("proxies come from the environment (http_proxy)", function()
  srv:reset()
  local script = os.tmpname() .. ".lua"
  local f = io.open(script, "w")
  f:write([[
local http = require "sluice.runtime.http"
local r, err = http.get("http://api.example.invalid/echo?via=proxy")
io.write(r and tostring(r.status) or ("ERR " .. tostring(err)))
]])
  f:close()
  local r = T.ok(sl.exec({ os.getenv("SLUICE_BIN") or "build/sluice", "run", script },
    { env = { http_proxy = srv.url, HTTP_PROXY = srv.url, no_proxy = false, NO_PROXY = false } }))
  os.remove(script)
  T.eq(r.stdout, "200", r.stderr)
  local req = srv:requests("/echo")[1]
  T.eq(req.query.via, "proxy")
  T.eq(req.headers.Host, "api.example.invalid")
end)

T.case("misuse raises", function()
  T.raises(function() http.request {} end, "url")
  T.raises(function() http.request { url = "http://x", body = "a", json = {} } end, "only one")
  T.raises(function() http.request { url = "http://x", stream = 1 } end, "stream")
end)

T.teardown("server stops", function() srv:stop() end)

return T.run()
