-- sluice.blocks.feed: podcast feeds. RSS 2.0 (with the iTunes and Media RSS extensions) and Atom
-- 1.0, parsed in pure Lua.
--
--   local feed = require "sluice.blocks.feed"
--   local f = feed.parse(xml_string)   -- or nil, message
--   f.kind ("rss"|"atom"), f.title, f.link, f.description, f.items = {
--     { title=, link=, guid=, published= (as written), time= (Unix seconds or nil),
--       duration= (seconds or nil), description=, enclosure = {url=, type=, length=} or nil,
--       url= (the enclosure's URL, else the link) } }
--
-- The XML reader handles the prolog, comments, processing instructions, DOCTYPE, CDATA
-- sections, the five XML entities, numeric character references and the common HTML named
-- entities, and resolves namespace prefixes (an Atom feed may use a default namespace or an
-- `atom:` prefix). feed.xml(str) returns the element tree: {name=local name, ns=URI,
-- qname=, attrs={}, children={}} with strings for text.
local sched = require "sluice.runtime.sched"
local core = require "sluice.core.core"

local M = {}

-- Reading a large feed takes a while (0.15 s for 50 MB): inside a task, the parser looks at
-- the clock every PAUSE elements and gives the loop a turn (one I/O poll) once TURN seconds
-- went by since the last, so timers, sockets and other tasks are never held longer than
-- that. Outside a task (tests, the fuzzer) it runs straight through.
local PAUSE, TURN = 256, 0.003
local last_turn = 0
local function pause()
  if not sched.current() then return end
  local now = core.now()
  if now - last_turn < TURN then return end
  require("sluice").sleep(0)
  last_turn = core.now()
end

local NS = {
  atom = "http://www.w3.org/2005/Atom",
  itunes = "http://www.itunes.com/dtds/podcast-1.0.dtd",
  media = "http://search.yahoo.com/mrss/",
  content = "http://purl.org/rss/1.0/modules/content/",
  dc = "http://purl.org/dc/elements/1.1/",
  xml = "http://www.w3.org/XML/1998/namespace",
}
M.NS = NS

local ENT = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", nbsp = "\194\160",
  hellip = "\226\128\166", mdash = "\226\128\148", ndash = "\226\128\147", rsquo = "\226\128\153",
  lsquo = "\226\128\152", rdquo = "\226\128\157", ldquo = "\226\128\156", copy = "\194\169",
  reg = "\194\174", trade = "\226\132\162", eacute = "\195\169", egrave = "\195\168",
  uuml = "\195\188", ouml = "\195\182", auml = "\195\164", ccedil = "\195\167" }

local function utf8char(n)
  if n < 0 or n > 0x10FFFF or (n >= 0xD800 and n <= 0xDFFF) then return "\239\191\189" end
  return utf8.char(n)
end

local function unescape(s)
  if not s:find("&", 1, true) then return s end
  return (s:gsub("&(#?)([xX]?)(%w+);", function(hash, x, name)
    if hash == "#" then
      local n = tonumber(name, x ~= "" and 16 or 10)
      return n and utf8char(n) or nil
    end
    return ENT[name]
  end))
end
M.unescape = unescape

-- xml(str[, max_items]) -> root element, or nil, message with the byte offset. With
-- max_items, reading stops before the element that would be the (max_items+1)-th <item> or
-- <entry> near the top (the document's first three levels): the elements open there are
-- closed, and the second value is {pos=, qname=}, where it stopped and the element's name.
function M.xml(str, max_items)
  if type(str) ~= "string" then error("bad argument #1 to 'xml' (string expected)", 2) end
  local entries, stopped = 0, nil
  -- (a copy only when there is a byte-order mark: gsub would copy a 50 MB feed to find none)
  if str:sub(1, 3) == "\239\187\191" then str = str:sub(4) end
  local pos, len = 1, #str
  local root
  local stack = {}
  local function fail(msg) return nil, string.format("xml: %s at byte %d", msg, pos) end
  local steps = 0
  while pos <= len do
    steps = steps + 1
    if steps % PAUSE == 0 then pause() end
    local lt = str:find("<", pos, true)
    local top = stack[#stack]
    if lt == nil or lt > pos then
      local chunk = str:sub(pos, (lt or len + 1) - 1)
      if top then
        top.children[#top.children + 1] = unescape(chunk)
      elseif chunk:find("%S") then
        return fail("text outside the root element")
      end
      if not lt then break end
      pos = lt
    end
    if str:sub(pos, pos + 3) == "<!--" then
      local e = str:find("-->", pos + 4, true)
      if not e then return fail("unterminated comment") end
      pos = e + 3
    elseif str:sub(pos, pos + 8) == "<![CDATA[" then
      local e = str:find("]]>", pos + 9, true)
      if not e then return fail("unterminated CDATA section") end
      if not top then return fail("CDATA outside the root element") end
      top.children[#top.children + 1] = str:sub(pos + 9, e - 1)
      pos = e + 3
    elseif str:sub(pos, pos + 1) == "<?" then
      local e = str:find("?>", pos + 2, true)
      if not e then return fail("unterminated processing instruction") end
      pos = e + 2
    elseif str:sub(pos, pos + 1) == "<!" then -- DOCTYPE, possibly with an internal subset
      local depth, i = 0, pos + 2
      while i <= len do
        local c = str:sub(i, i)
        if c == "[" then depth = depth + 1
        elseif c == "]" then depth = depth - 1
        elseif c == ">" and depth <= 0 then break end
        i = i + 1
      end
      if i > len then return fail("unterminated declaration") end
      pos = i + 1
    elseif str:sub(pos, pos + 1) == "</" then
      local name, e = str:match("^</%s*([^%s>]+)%s*>()", pos)
      if not name then return fail("bad end tag") end
      if not top then return fail("end tag </" .. name .. "> without a start tag") end
      if top.qname ~= name then
        return fail("end tag </" .. name .. "> does not match <" .. top.qname .. ">")
      end
      stack[#stack] = nil
      pos = e
    else
      local name, p = str:match("^<([%a_:][^%s/>]*)()", pos)
      if not name then return fail("bad start tag") end
      local attrs, decls = {}, {}
      local order = {}
      while true do
        local ws, q = str:match("^(%s*)()", p)
        p = q
        if str:sub(p, p) == ">" then p = p + 1; break end
        if str:sub(p, p + 1) == "/>" then p = p + 2; order.empty = true; break end
        local an, v, np = str:match('^([^%s=/>]+)%s*=%s*"([^"]*)"()', p)
        if not an then an, v, np = str:match("^([^%s=/>]+)%s*=%s*'([^']*)'()", p) end
        if not an or ws == "" then pos = p; return fail("bad attribute in <" .. name .. ">") end
        v = unescape(v)
        if an == "xmlns" then decls[""] = v
        elseif an:sub(1, 6) == "xmlns:" then decls[an:sub(7)] = v
        else order[#order + 1] = { an, v } end
        p = np
      end
      local scope = setmetatable(decls, { __index = top and top.scope or { xml = NS.xml } })
      local prefix, lname = name:match("^([^:]+):(.+)$")
      if not prefix then prefix, lname = "", name end
      if max_items and (lname == "item" or lname == "entry") and #stack <= 2 then
        entries = entries + 1
        if entries > max_items then
          stopped = { pos = pos, qname = name }
          stack = {}
          break
        end
      end
      local el = { name = lname, qname = name, ns = scope[prefix], attrs = {}, children = {},
        scope = scope }
      for _, kv in ipairs(order) do
        local ap, al = kv[1]:match("^([^:]+):(.+)$")
        if ap then
          el.attrs[kv[1]] = kv[2]
          if ap ~= "xmlns" then el.attrs[al] = el.attrs[al] or kv[2] end
        else
          el.attrs[kv[1]] = kv[2]
        end
      end
      if top then
        top.children[#top.children + 1] = el
      elseif root then
        return fail("second root element <" .. name .. ">")
      else
        root = el
      end
      if not order.empty then stack[#stack + 1] = el end
      pos = p
    end
  end
  if #stack > 0 then return nil, "xml: unexpected end of input inside <" .. stack[#stack].qname .. ">" end
  if not root then return nil, "xml: no root element" end
  return root, stopped
end

-- The start tags <qname ...> in str from pos on (a count of the entries not read).
-- (A plain search for "<qname", then its next byte: a pattern starting with "<" would be tried
-- at every byte of a 50 MB feed.)
local TAG_END = { [32] = true, [9] = true, [10] = true, [13] = true, [47] = true, [62] = true }
local function count_tags(str, qname, pos)
  local n, needle = 0, "<" .. qname
  local after = #needle
  while true do
    local s = str:find(needle, pos, true)
    if not s then return n end
    if TAG_END[str:byte(s + after)] then
      n = n + 1
      if n % PAUSE == 0 then pause() end
    end
    pos = s + after
  end
end

-- Helpers on elements ----------------------------------------------------------------------

local function text_of(el)
  if not el then return nil end
  local parts = {}
  local function walk(e)
    for _, c in ipairs(e.children) do
      if type(c) == "string" then parts[#parts + 1] = c else walk(c) end
    end
  end
  walk(el)
  return (table.concat(parts):gsub("^%s+", ""):gsub("%s+$", ""))
end
M.text = text_of

-- child(el, name, ns?) -> the first child element with that local name (and namespace, when
-- given; ns = false means no namespace).
local function child(el, name, ns)
  for _, c in ipairs(el.children) do
    if type(c) == "table" and c.name == name and (ns == nil or c.ns == (ns or nil)) then return c end
  end
end

local function children(el, name, ns)
  local out = {}
  for _, c in ipairs(el.children) do
    if type(c) == "table" and c.name == name and (ns == nil or c.ns == (ns or nil)) then out[#out + 1] = c end
  end
  return out
end

-- Dates and durations ------------------------------------------------------------------------

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9,
  oct = 10, nov = 11, dec = 12 }
local ZONES = { ut = 0, utc = 0, gmt = 0, z = 0, est = -5, edt = -4, cst = -6, cdt = -5, mst = -7,
  mdt = -6, pst = -8, pdt = -7 }

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  y = (m <= 2) and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function epoch(y, mo, d, h, mi, s, offset_s)
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset_s
end

local function zone_offset(z)
  if not z or z == "" then return 0 end
  local sign, hh, mm = z:match("^([+-])(%d%d):?(%d%d)$")
  if sign then
    local o = tonumber(hh) * 3600 + tonumber(mm) * 60
    return sign == "-" and -o or o
  end
  local named = ZONES[z:lower()]
  if named then return named * 3600 end
  return nil
end

-- parse_date(s) -> Unix seconds, from RFC 822/1123 ("Tue, 05 Mar 2024 14:30:00 +0000") or
-- RFC 3339 ("2024-03-05T14:30:00.5Z"); nil when it is neither.
function M.parse_date(s)
  if type(s) ~= "string" then return nil end
  s = s:gsub("^%s+", ""):gsub("%s+$", "")
  local y, mo, d, h, mi, sec, frac, z = s:match(
    "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)([%.,]?%d*)%s*([Zz]?[+-]?[%d:]*)$")
  if y then
    local off = zone_offset(z)
    if not off then return nil end
    local t = epoch(tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec), off)
    if frac and #frac > 1 then t = t + tonumber("0." .. frac:sub(2)) end
    return t
  end
  y, mo, d = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  if y then return epoch(tonumber(y), tonumber(mo), tonumber(d), 0, 0, 0, 0) end
  local dd, mon, yy, rest = s:match("^%a*,?%s*(%d%d?)%s+(%a%a%a)%a*%s+(%d%d%d?%d?)%s+(.*)$")
  if dd then
    local m = MONTHS[mon:lower()]
    if not m then return nil end
    local hh, mm, ss, zz = rest:match("^(%d%d?):(%d%d):?(%d*)%s*(%S*)$")
    if not hh then return nil end
    local off = zone_offset(zz)
    if not off then return nil end
    local year = tonumber(yy)
    if year < 100 then year = year + (year < 50 and 2000 or 1900) end
    return epoch(year, m, tonumber(dd), tonumber(hh), tonumber(mm), tonumber(ss) or 0, off)
  end
  return nil
end

-- parse_duration("1:02:03" | "62:03" | "3723" | "PT1H2M3S") -> seconds, or nil.
function M.parse_duration(s)
  if type(s) == "number" then return s end
  if type(s) ~= "string" then return nil end
  s = s:gsub("^%s+", ""):gsub("%s+$", "")
  if s:match("^%d+%.?%d*$") then return tonumber(s) end
  local h, m, sec = s:match("^(%d+):(%d%d?):(%d%d?%.?%d*)$")
  if h then return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(sec) end
  m, sec = s:match("^(%d+):(%d%d?%.?%d*)$")
  if m then return tonumber(m) * 60 + tonumber(sec) end
  local iso = s:match("^P?T(.+)$")
  if iso then
    local total, any = 0, false
    for n, u in iso:gmatch("(%d+%.?%d*)([HMS])") do
      any = true
      total = total + tonumber(n) * (u == "H" and 3600 or u == "M" and 60 or 1)
    end
    if any then return total end
  end
  return nil
end

-- Feeds ------------------------------------------------------------------------------------

local function rss_item(it)
  local e = {}
  e.title = text_of(child(it, "title", false))
  e.link = text_of(child(it, "link", false))
  e.guid = text_of(child(it, "guid", false))
  e.published = text_of(child(it, "pubDate", false)) or text_of(child(it, "date", NS.dc))
  e.time = M.parse_date(e.published)
  e.description = text_of(child(it, "description", false)) or text_of(child(it, "encoded", NS.content))
    or text_of(child(it, "summary", NS.itunes))
  local enc = child(it, "enclosure", false)
  if enc and enc.attrs.url then
    e.enclosure = { url = enc.attrs.url, type = enc.attrs.type, length = tonumber(enc.attrs.length) }
  else
    local mc = child(it, "content", NS.media)
    if not mc then
      local group = child(it, "group", NS.media)
      mc = group and child(group, "content", NS.media)
    end
    if mc and mc.attrs.url then
      e.enclosure = { url = mc.attrs.url, type = mc.attrs.type, length = tonumber(mc.attrs.fileSize) }
      e.duration = M.parse_duration(mc.attrs.duration)
    end
  end
  local dur = child(it, "duration", NS.itunes)
  if dur then e.duration = M.parse_duration(text_of(dur)) or e.duration end
  e.url = e.enclosure and e.enclosure.url or e.link
  return e
end

-- Atom link choice: rel="enclosure" is the media; rel="alternate" (or none) the page.
local function atom_entry(en)
  local e = {}
  e.title = text_of(child(en, "title", NS.atom))
  e.guid = text_of(child(en, "id", NS.atom))
  e.published = text_of(child(en, "published", NS.atom)) or text_of(child(en, "updated", NS.atom))
  e.time = M.parse_date(e.published)
  e.description = text_of(child(en, "summary", NS.atom)) or text_of(child(en, "content", NS.atom))
  for _, l in ipairs(children(en, "link", NS.atom)) do
    local rel = l.attrs.rel or "alternate"
    if rel == "enclosure" and not e.enclosure then
      e.enclosure = { url = l.attrs.href, type = l.attrs.type, length = tonumber(l.attrs.length) }
    elseif rel == "alternate" and not e.link then
      e.link = l.attrs.href
    end
  end
  local dur = child(en, "duration", NS.itunes)
  if dur then e.duration = M.parse_duration(text_of(dur)) end
  e.url = e.enclosure and e.enclosure.url or e.link
  return e
end

-- parse(xml[, {max_items=N}]) -> feed table (see the top of this file), or nil, message.
-- With max_items only the first N items (or entries) are read, so a feed of 100,000 is read
-- in the time and memory of N; f.unread is then the number of those after them (start tags
-- counted, not parsed).
function M.parse(str, opts)
  local max_items = type(opts) == "table" and opts.max_items or nil
  local root, err = M.xml(str, max_items)
  if not root then return nil, "feed: " .. err end
  local f, perr = M.from_xml(root)
  if f and err then f.unread = count_tags(str, err.qname, err.pos) end
  return f, perr
end

-- from_xml(root) -> the feed table of an element tree from xml(), or nil, message.
function M.from_xml(root)
  if root.name == "rss" or root.name == "RDF" then
    local ch = child(root, "channel")
    if not ch then return nil, "feed: <rss> without <channel>" end
    local f = { kind = "rss", title = text_of(child(ch, "title", false)),
      link = text_of(child(ch, "link", false)),
      description = text_of(child(ch, "description", false)), items = {} }
    local items = children(ch, "item")
    if #items == 0 and root.name == "RDF" then items = children(root, "item") end
    for _, it in ipairs(items) do f.items[#f.items + 1] = rss_item(it) end
    return f
  elseif root.name == "feed" and root.ns == NS.atom then
    local f = { kind = "atom", title = text_of(child(root, "title", NS.atom)),
      description = text_of(child(root, "subtitle", NS.atom)), items = {} }
    for _, l in ipairs(children(root, "link", NS.atom)) do
      if (l.attrs.rel or "alternate") == "alternate" then f.link = l.attrs.href break end
    end
    for _, en in ipairs(children(root, "entry", NS.atom)) do f.items[#f.items + 1] = atom_entry(en) end
    return f
  end
  return nil, string.format("feed: not an RSS or Atom feed (root element <%s>)", root.qname)
end

-- read_file(path) -> feed, or nil, message.
function M.read_file(path)
  local fh, err = io.open(path, "rb")
  if not fh then return nil, "feed: " .. err end
  local s = fh:read("a")
  fh:close()
  local f, perr = M.parse(s)
  if not f then return nil, perr:gsub("^feed: ", "feed: " .. path .. ": ", 1) end
  return f
end

return M
