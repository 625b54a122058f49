-- sluice.runtime.http over HTTP/2 against a real HTTP/2 server (nghttpd, Debian's nghttp2-server),
-- over TLS on loopback, as the remote APIs are reached: curl negotiates h2 through ALPN and
-- multiplexes concurrent requests on one connection. The server's verbose log (its frames)
-- tells how many connections and streams it saw.
local sl = require "sluice"
local T = require "sluice.app.test"
local http = require "sluice.runtime.http"
local proc = require "sluice.core.proc"

local dir = os.tmpname()
os.remove(dir)
local docs = dir .. "/docs"
local cert, key, log = dir .. "/cert.pem", dir .. "/key.pem", dir .. "/nghttpd.log"
local url, server, exited
local BIG = 3 * 1024 * 1024

local function server_log() return T.slurp(log) or "" end
local function count(s, pat)
  local n = 0
  for _ in s:gmatch(pat) do n = n + 1 end
  return n
end

T.case("nghttpd starts with a self-signed certificate", function()
  T.ok(sl.exec { "mkdir", "-p", docs })
  local r = T.ok(sl.exec { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1" })
  T.eq(r.status, 0, r.stderr)
  local f = assert(io.open(docs .. "/ok", "wb"))
  f:write("ok")
  f:close()
  f = assert(io.open(docs .. "/big", "wb"))
  f:write(string.rep("0123456789abcdef", BIG // 16))
  f:close()
  -- nghttpd takes a fixed port: try random ones until one is free
  for _ = 1, 20 do
    local port = math.random(20000, 60000)
    exited = sl.event()
    local p = T.ok(proc.spawn {
      file = "/bin/sh", args = { "-c", 'exec nghttpd -v -a 127.0.0.1 -d "$1" "$2" "$3" "$4" >"$5" 2>&1',
        "nghttpd", docs, tostring(port), key, cert, log },
      on_exit = function(status) exited:set(status or true) end,
    })
    local up = T.wait_until(function() return exited:is_set() or server_log():find("listen") end, 10)
    if up and not exited:is_set() then
      server, url = p, "https://127.0.0.1:" .. port
      break
    end
    if not exited:is_set() then pcall(p.kill, p, "SIGKILL") end
  end
  T.ok(server, "nghttpd did not start: " .. server_log())
end)

T.case("HTTP/2 is negotiated through ALPN and the certificate is verified", function()
  local res, msg, code = http.get(url .. "/ok")
  T.eq(res, nil)
  T.eq(code, "ETLS", msg)
  res = T.ok(http.get(url .. "/ok", { cainfo = cert }))
  T.eq(res.status, 200)
  T.eq(res.body, "ok")
  T.eq(res.http_version, "2")
end)

T.case("100 concurrent requests are streams of one connection", function()
  local before = server_log()
  local handshakes0, streams0 = count(before, "handshake completed"), count(before, "recv HEADERS")
  local g = sl.group()
  local bodies, versions = 0, {}
  for _ = 1, 100 do
    g:spawn(function()
      local r = assert(http.get(url .. "/ok", { cainfo = cert }))
      if r.status == 200 and r.body == "ok" then bodies = bodies + 1 end
      versions[r.http_version] = true
    end)
  end
  g:wait()
  T.eq(bodies, 100)
  T.same(versions, { ["2"] = true })
  -- the server's log of frames: 100 more request streams, and at most one new connection (the
  -- one of the first case may have been kept)
  local after
  T.wait_until(function()
    after = server_log()
    return count(after, "recv HEADERS") >= streams0 + 100
  end, 10)
  T.eq(count(after, "recv HEADERS") - streams0, 100)
  T.ok(count(after, "handshake completed") - handshakes0 <= 1,
    (count(after, "handshake completed") - handshakes0) .. " new connections")
end)

T.case("a failed download ends its stream only; the others on the connection complete", function()
  local before = server_log()
  local g = sl.group()
  local got = {}
  for i = 1, 3 do
    g:spawn(function()
      local path = dir .. "/big." .. i
      local r, msg = http.download(url .. "/big", path, { cainfo = cert, resume = false,
        progress = function(n)
          -- the second one gives up a quarter of the way through
          if i == 2 and n >= BIG // 4 then error("enough of this one") end
        end })
      got[i] = r and T.slurp(path) or msg
    end)
  end
  g:wait()
  local want = string.rep("0123456789abcdef", BIG // 16)
  T.ok(got[1] == want, "download 1 is complete and intact")
  T.ok(got[3] == want, "download 3 is complete and intact")
  T.ok(type(got[2]) == "string" and got[2]:find("enough of this one"), tostring(got[2]):sub(1, 200))
  -- the client reset the one stream; the connection goes on serving
  local r = T.ok(http.get(url .. "/ok", { cainfo = cert }))
  T.eq(r.body, "ok")
  T.eq(r.http_version, "2")
  local after = server_log():sub(#before + 1)
  T.ok(after:find("recv RST_STREAM"), "the server saw the stream reset")
  T.eq(count(after, "recv GOAWAY"), 0)
  T.eq(http.stats().transfers, 0)
end)

T.case("nghttpd stops", function()
  server:kill("SIGTERM")
  T.ok(sl.timeout(10, exited.wait, exited) ~= nil, "nghttpd exited")
  sl.exec { "rm", "-rf", dir }
end)

return T.run()
