-- hello.lua: three tasks pass numbers through two bounded queues while a fourth sleeps.
-- Run: sluice run examples/hello.lua
local sl = require "sluice"

local numbers, squares = sl.queue(4), sl.queue(4)
sl.spawn(function()
  for i = 1, 10 do numbers:put(i) end
  numbers:close()
end)
sl.spawn(function()
  for n in numbers:iter() do squares:put(n * n) end
  squares:close()
end)
local sum = 0
for s in squares:iter() do sum = sum + s end
assert(sum == 385, "sum of squares 1..10 should be 385")
print("sum of squares 1..10 = " .. sum)
