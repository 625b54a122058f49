-- sluice.runtime.codec (core/codec.c): the bytes are the documented format, exactly (a unit
-- encoded by one build is decoded by another on a worker machine), values come back exactly,
-- and bytes that are not a value give nil and one message, never an error or a crash.
local T = require "sluice.app.test"
local codec = require "sluice.runtime.codec"
local blob = require "sluice.core.blob"
local pack = string.pack

T.case("encode writes the documented format (tags, little-endian sizes)", function()
  T.eq(codec.encode("ab\0"), pack("<Bs4", 115, "ab\0"))
  T.eq(codec.encode(-2), pack("<Bj", 105, -2))
  T.eq(codec.encode(math.mininteger), pack("<Bj", 105, math.mininteger))
  T.eq(codec.encode(0.5), pack("<Bn", 100, 0.5))
  T.eq(codec.encode(true) .. codec.encode(false) .. codec.encode(nil), "TFN")
  T.eq(codec.encode(blob.new("xy")), pack("<Bs4", 98, "xy"))
  -- an array with a hole, then the hash part up to 'e'
  T.eq(codec.encode({ 1, "a" }), pack("<BI4", 116, 2) .. pack("<Bj", 105, 1) .. pack("<Bs4", 115, "a") .. "e")
  T.eq(codec.encode({ k = 3 }), pack("<BI4", 116, 0) .. pack("<Bs4", 115, "k") .. pack("<Bj", 105, 3) .. "e")
  local holey = setmetatable({}, { __len = function() return 9 end, __index = function() return 1 end })
  holey[1], holey[3] = 1, 3
  local t = assert(codec.decode(codec.encode(holey)))
  T.eq(getmetatable(t), nil, "metatables do not travel")
  T.eq(t[1], 1)
  T.eq(t[3], 3)
  T.eq(t[2], nil, "metamethods are not called: a hole stays a hole")
end)

T.case("values come back exactly, whatever their shape", function()
  math.randomseed(7)
  local function value(depth)
    local r = math.random(depth > 4 and 5 or 7)
    if r == 1 then return math.random(-1e9, 1e9) end
    if r == 2 then return math.random() * 1e6 end
    if r == 3 then local s = {} for i = 1, math.random(0, 40) do s[i] = string.char(math.random(0, 255)) end return table.concat(s) end
    if r == 4 then return math.random(2) == 1 end
    if r == 5 then return math.maxinteger end
    local t = {}
    for i = 1, math.random(0, 6) do t[i] = value(depth + 1) end
    for _ = 1, math.random(0, 4) do t[value(5)] = value(depth + 1) end
    return t
  end
  local function same(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then return a == b and math.type(a) == math.type(b) end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end
  local bad = 0
  for _ = 1, 500 do
    local v = value(0)
    local w, err = codec.decode(codec.encode(v))
    if not same(v, w) then bad = bad + 1; print("differs:", err) end
  end
  T.eq(bad, 0)
  local w = assert(codec.decode(codec.encode({ n = 0 / 0, inf = -1 / 0, b = blob.new("\0z") })))
  T.ok(w.n ~= w.n and w.inf == -1 / 0 and blob.is_blob(w.b) and w.b:bytes() == "\0z")
end)

T.case("what cannot travel raises one line, naming it", function()
  local ok, err = pcall(codec.encode, { 1, { f = print } })
  T.eq(ok, false)
  T.eq(err, "cannot send a function to another process (unit data and results must be strings, " ..
    "numbers, booleans, tables or blobs)")
  local cyc = {}
  cyc[1] = cyc
  T.raises(function() codec.encode(cyc) end, "nested more than 64 levels")
  local b = blob.new("z")
  b:close()
  T.raises(function() codec.encode({ b }) end, "cannot send a closed blob")
  T.eq(codec.encode("after an error"), pack("<Bs4", 115, "after an error"), "the encoder recovers")
end)

T.case("bytes that are not a value: nil and a message, for every cut and every bad tag", function()
  local bytes = codec.encode({ 1, "two", { 3.5, true }, k = { "v", blob.new("b") } })
  local failures = 0
  for n = 0, #bytes - 1 do
    local v, err = codec.decode(bytes:sub(1, n))
    if v ~= nil or type(err) ~= "string" or not err:match("^codec: cannot decode: ") then failures = failures + 1 end
  end
  T.eq(failures, 0, "every prefix fails cleanly")
  T.eq(select(2, codec.decode(bytes .. "x")), "codec: cannot decode: 1 bytes left over")
  T.eq(select(2, codec.decode("t\255\255\255\255")), "codec: cannot decode: table larger than its bytes")
  T.eq(select(2, codec.decode("q")), "codec: cannot decode: unknown tag 0x71 at byte 1")
  T.eq(select(2, codec.decode(pack("<BI4", 116, 0) .. "NTe")), "codec: cannot decode: bad table key")
  T.eq(select(2, codec.decode(pack("<BI4", 116, 0) .. pack("<Bn", 100, 0 / 0) .. "Te")), "codec: cannot decode: bad table key")
  T.eq(select(2, codec.decode(string.rep(pack("<BI4", 116, 1), 70) .. "T" .. string.rep("e", 70))),
    "codec: cannot decode: nested too deeply")
  T.eq(select(2, codec.decode(42)), "codec: bytes expected, got number")
  math.randomseed(11)
  local crashes = 0
  for _ = 1, 2000 do -- random bytes with the tags mixed in
    local s = {}
    for i = 1, math.random(1, 30) do s[i] = string.char(({ 116, 115, 105, 100, 84, 78, 101, math.random(0, 255) })[math.random(8)]) end
    local ok = pcall(codec.decode, table.concat(s))
    if not ok then crashes = crashes + 1 end
  end
  T.eq(crashes, 0, "decode never raises")
end)

return T.run()
