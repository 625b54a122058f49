-- sluice.runtime.sse: Server-Sent Events parsing (the WHATWG "text/event-stream" format), for
-- streamed LLM replies (OpenAI chat completions with stream=true, Gemini
-- streamGenerateContent?alt=sse) and anything else that streams events.
--
--   local p = sse.parser(function(ev) print(ev.event, ev.data, ev.id) end)
--   p:feed(chunk) ... p:finish()
--
--   local r, err = sse.request({ url = ..., json = ... }, function(ev) ... end)
--
-- Lines end with CRLF, LF or CR, also split across chunks; "data:" lines of one event are
-- joined with "\n"; comments (":...") are ignored; a blank line dispatches the event.
-- An event that is not terminated by a blank line at the end of the stream is dropped,
-- as the specification says.
local http = require "sluice.runtime.http"

local M = {}

local Parser = {}
Parser.__index = Parser

function M.parser(on_event)
  if type(on_event) ~= "function" then error("bad argument #1 to 'sse.parser' (function expected)", 2) end
  return setmetatable({ on_event = on_event, buf = "", data = nil, event = nil, id = nil,
    last_id = nil, skip_lf = false, first = true, count = 0 }, Parser)
end

local function dispatch(self)
  local data = self.data
  local ev = self.event
  self.data, self.event = nil, nil
  if data == nil then return end
  self.count = self.count + 1
  self.on_event { event = ev or "message", data = data, id = self.last_id }
end

local function line(self, l)
  if l == "" then return dispatch(self) end
  local c = l:byte(1)
  if c == 58 then return end -- ':' comment
  local field, value = l:match("^([^:]*):(.*)$")
  if not field then
    field, value = l, ""
  elseif value:byte(1) == 32 then
    value = value:sub(2)
  end
  if field == "data" then
    self.data = self.data and (self.data .. "\n" .. value) or value
  elseif field == "event" then
    self.event = value
  elseif field == "id" then
    if not value:find("\0", 1, true) then self.last_id = value end
  elseif field == "retry" then
    if value:match("^%d+$") then self.retry = tonumber(value) end
  end
end

-- feed(chunk): parses what the chunk completes; the rest waits for the next chunk.
function Parser:feed(chunk)
  local s = self.buf .. chunk
  local pos = 1
  if self.first and #s >= 3 then
    if s:sub(1, 3) == "\239\187\191" then pos = 4 end -- BOM
    self.first = false
  elseif self.first then
    self.buf = s
    return
  end
  if self.skip_lf and s:byte(pos) == 10 then pos = pos + 1 end
  self.skip_lf = false
  local n = #s
  while pos <= n do
    local e = s:find("[\r\n]", pos)
    if not e then break end
    line(self, s:sub(pos, e - 1))
    if s:byte(e) == 13 then
      if e == n then
        self.skip_lf = true -- a CR at the end of the chunk: a LF may follow in the next
        pos = e + 1
        break
      elseif s:byte(e + 1) == 10 then
        e = e + 1
      end
    end
    pos = e + 1
  end
  self.buf = s:sub(pos)
end

-- finish(): the stream ended; an unterminated event is dropped.
function Parser:finish()
  if self.first and #self.buf > 0 then
    self.first = false
    local b = self.buf
    self.buf = ""
    self:feed(b)
  end
  self.buf, self.data, self.event = "", nil, nil
end

-- request(opts, on_event) -> response (body nil on success) | nil, message, code.
-- A non-2xx reply is not parsed as events: its body is returned for the caller to report.
function M.request(opts, on_event)
  local p = M.parser(on_event)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.stream = function(chunk) p:feed(chunk) end
  local r, msg, code = http.request(o)
  if not r then return nil, msg, code end
  p:finish()
  r.events = p.count
  return r
end

return M
