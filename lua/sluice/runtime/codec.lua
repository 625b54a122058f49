-- sluice.runtime.codec: Lua values to bytes and back, exactly, for values that travel between
-- processes (the broker's units and results).
--
--   local codec = require "sluice.runtime.codec"
--   local bytes = codec.encode(v)          -- raises for what cannot travel (functions, ...)
--   local v, err = codec.decode(bytes)     -- nil, message for bytes that are not a value
--
-- What survives: nil (inside tables it is simply absent), booleans, integers and floats
-- (kept apart, floats bit-exact, including inf and nan), strings (any bytes), tables (any
-- keys of these types, nested up to 64 levels, read raw: metamethods are not called; a
-- table met twice is sent twice, a cycle is an error) and sluice.blob values (they come back
-- as blobs). Decoding never runs code: the format is a tag byte per value and fixed-size
-- little-endian fields (string.pack's `<Bs4`, `<Bj`, `<Bn`, `<BI4`), so bytes from the
-- network can at worst fail to decode. The work is sluice.core.codec's (core/codec.c, which
-- describes the format byte by byte): a unit is encoded and decoded on both sides of the
-- broker, and one buffer in C costs a fraction of a Lua string per value.
local cc = require "sluice.core.codec"

return { encode = cc.encode, decode = cc.decode }
