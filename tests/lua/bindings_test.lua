-- C bindings are safe from birth: every binding that allocates is called with each argument,
-- option field and list element of a wrong type (tests/lua/fixtures/bindings_fuzz.lua, in a
-- child process); each call raises a message or returns nil, message, and nothing it
-- allocated is left behind. In the ASan build (the suite's second tree) the child runs with
-- LeakSanitizer on and must report 0 bytes leaked; the normal build checks the calls only.
local sl = require "sluice"
local T = require "sluice.app.test"
local P = (function()
  package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
  return require "pltest"
end)()

local function asan_build()
  local r = assert(sl.exec({ "ldd", P.bin }))
  return r.stdout:find("libasan", 1, true) ~= nil
end

T.case("every allocating binding, each argument of a wrong type: errors, and 0 bytes leaked", function()
  local dir = P.tmpdir("fuzz")
  local env = {
    ASAN_OPTIONS = "detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=23",
    LSAN_OPTIONS = "suppressions=" .. P.sh("cd '" .. P.src .. "' && pwd"):gsub("%s+$", "") ..
      "/tests/lsan.supp:print_suppressions=0",
  }
  local src = P.sh("cd '" .. P.src .. "' && pwd"):gsub("%s+$", "")
  local bin = P.bin:sub(1, 1) == "/" and P.bin or (src .. "/" .. P.bin)
  local r = assert(sl.exec({ bin, "run", src .. "/tests/lua/fixtures/bindings_fuzz.lua", dir },
    { cwd = dir, env = env, timeout = 400 })) -- (a number is a path too: "7" is made there)
  P.rm(dir)
  local calls, raised, failed, started = r.stdout:match("fuzz: (%d+) calls, (%d+) raised, (%d+) returned nil, (%d+) started")
  T.ok(calls, "the fuzz ran to its end: " .. r.stdout .. r.stderr:sub(-3000))
  T.ok(tonumber(calls) > 1000, "calls: " .. calls)
  T.ok(tonumber(raised) > 800, "most wrong arguments raise: " .. raised)
  T.ok(not r.stderr:find("AddressSanitizer", 1, true), "no memory error: " .. r.stderr:sub(1, 4000))
  T.ok(not r.stderr:find("LeakSanitizer", 1, true),
    "0 bytes leaked: " .. (r.stderr:match("SUMMARY: [^\n]*") or "") .. "\n" .. r.stderr:sub(1, 3000))
  T.eq(r.status, 0, r.stderr:sub(-2000))
  print(string.format("     %s calls (%s raised, %s returned nil, %s started and stopped)%s", calls, raised,
    failed, started, asan_build() and "; LeakSanitizer: 0 bytes leaked" or
    "; leaks are counted in the ASan build"))
end)

return T.run()
