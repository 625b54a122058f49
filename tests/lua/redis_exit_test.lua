-- A Redis client closed by the task that one of its own replies resumed, as the very last
-- thing the script does: sluice.core.redis defers that close (hiredis is still in its
-- callback), the loop stops before the deferral runs, and the engine's shutdown must still
-- free the connection (LeakSanitizer fails this test in the ASan build otherwise).
local sl = require "sluice"
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local R = require "redisfix"
local redis = require "sluice.runtime.redis"

local srv = R.server()
local c = assert(redis.connect(srv.url))
local blocked = sl.spawn(function() return c:call("BLPOP", "never", 0) end) -- pending at the end
assert(c:call("PING") == "PONG")
local r2 = assert(redis.connect(srv.url))
assert(r2:call("SET", "k", "v") == "OK")
r2:close() -- inside r2's reply callback
c:close()  -- c's pending BLPOP ends with ECLOSED
local v, err, code = blocked:wait()
assert(v == nil and code == "ECLOSED", tostring(err))
srv.proc:kill("SIGKILL")
os.execute("rm -rf '" .. srv.dir .. "'")
print("1 passed, 0 failed")
return 0
