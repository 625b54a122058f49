-- sluice.runtime.sse: the event-stream parser, fed every possible way a stream can be split.
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/fakeapi/?.lua;" .. package.path
local sl = require "sluice"
local T = require "sluice.app.test"
local sse = require "sluice.runtime.sse"
local fake = require "fakeapi"

local function parse_in_pieces(text, size)
  local evs = {}
  local p = sse.parser(function(ev) evs[#evs + 1] = ev end)
  for i = 1, #text, size do p:feed(text:sub(i, i + size - 1)) end
  p:finish()
  return evs
end

local STREAM = "\239\187\191: comment\r\n" ..
  "data: {\"a\":1}\r\n\r\n" ..
  "event: delta\ndata: line one\ndata: line two\nid: 7\n\n" ..
  "data:no space\r\r" ..
  "retry: 100\ndata\n\n" ..
  "data: [DONE]\n\n" ..
  "data: unterminated"

T.case("fields, multi-line data, comments, ids, every line ending, any split", function()
  for size = 1, #STREAM do
    local evs = parse_in_pieces(STREAM, size)
    T.eq(#evs, 5, "split size " .. size)
    T.eq(evs[1].data, "{\"a\":1}")
    T.eq(evs[1].event, "message")
    T.eq(evs[2].event, "delta")
    T.eq(evs[2].data, "line one\nline two")
    T.eq(evs[2].id, "7")
    T.eq(evs[3].data, "no space")
    T.eq(evs[3].id, "7") -- the last event id persists
    T.eq(evs[4].data, "")
    T.eq(evs[5].data, "[DONE]")
  end
end)

T.case("events reach the caller while the response is still arriving", function()
  local srv = fake.start()
  local times = {}
  local t0 = sl.now()
  local r = T.ok(sse.request({ url = srv.url .. "/sse?n=4&delay=0.25" }, function(ev)
    times[#times + 1] = sl.now() - t0
    T.eq(ev.data, string.format("{\"i\": %d}", #times - 1))
  end))
  srv:stop()
  T.eq(r.status, 200)
  T.eq(#times, 4)
  -- the server spreads the 4 events over 0.75 s; a parser that waited for the whole body
  -- would deliver them at once (the margin lets this process stall for 0.55 s when loaded)
  T.ok(times[4] - times[1] > 0.2, string.format("spread over the response: %.3f s", times[4] - times[1]))
end)

return T.run()
