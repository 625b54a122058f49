-- RSS 2.0 and Atom feeds: enclosures and links, titles with entities and CDATA, dates,
-- durations, namespaces, and clear errors on bad XML.
local T = require "sluice.app.test"
local feed = require "sluice.blocks.feed"

local FIX = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/"

T.case("rss: channel and items with enclosures, iTunes durations and dates", function()
  local f = assert(feed.read_file(FIX .. "podcast_rss.xml"))
  T.eq(f.kind, "rss")
  T.eq(f.title, "Signals & Noise")
  T.eq(f.link, "https://example.org/podcast", "atom:link rel=self is not the channel link")
  T.eq(f.description, "Talks about <b>audio</b> & pipelines.")
  T.eq(#f.items, 3)
  local e2 = f.items[1]
  T.eq(e2.title, "Episode 2: Queues \226\128\147 and why they \226\128\152back up\226\128\153")
  T.eq(e2.guid, "ep-0002")
  T.eq(e2.link, "https://example.org/ep2")
  T.same(e2.enclosure, { url = "https://cdn.example.org/ep2.mp3?token=a&b=1", type = "audio/mpeg",
    length = 31457280 })
  T.eq(e2.url, e2.enclosure.url)
  T.eq(e2.duration, 3723)
  T.eq(e2.time, 1709649000)
  T.eq(e2.description, "Backpressure <explained>.")
  local e1 = f.items[2]
  T.eq(e1.title, "Episode 1: Hello & welcome")
  T.eq(e1.url, "ep1.m4a")
  T.eq(e1.duration, 754)
  T.eq(e1.time, 1709561100, "EST is UTC-5")
  local tr = f.items[3]
  T.eq(tr.enclosure, nil)
  T.eq(tr.url, "https://example.org/trailer", "no enclosure: the link")
  T.eq(tr.duration, 150)
  T.eq(tr.time, 1709452800, "two-digit year, no seconds")
end)

T.case("atom with a prefixed namespace: enclosure links, summaries, RFC 3339 dates", function()
  local f = assert(feed.read_file(FIX .. "podcast_atom.xml"))
  T.eq(f.kind, "atom")
  T.eq(f.title, "Lecture Hall")
  T.eq(f.description, "Recorded lectures")
  T.eq(f.link, "https://example.org/")
  T.eq(#f.items, 2)
  local w1 = f.items[1]
  T.eq(w1.title, "Week 1 &mdash; Signals", "escaped once: the text is what the XML says")
  T.eq(w1.guid, "tag:example.org,2024:week1")
  T.eq(w1.link, "https://example.org/week1")
  T.same(w1.enclosure, { url = "https://cdn.example.org/week1.mp4", type = "video/mp4", length = 52428800 })
  T.eq(w1.time, 1709616600, "+09:00 offset")
  T.eq(w1.duration, 3600)
  T.eq(w1.description, "Sampling and aliasing")
  local w0 = f.items[2]
  T.eq(w0.url, "https://example.org/week0")
  T.eq(w0.time, 1709020800.25, "updated when there is no published")
end)

T.case("atom with a default namespace; elements of other namespaces are not confused", function()
  local f = assert(feed.parse([[<feed xmlns="http://www.w3.org/2005/Atom" xmlns:x="urn:other">
    <title>T</title><x:title>not this</x:title>
    <entry><x:link rel="enclosure" href="wrong.mp3"/><title>E</title>
      <link rel="enclosure" href="right.mp3"/></entry></feed>]]))
  T.eq(f.title, "T")
  T.eq(f.items[1].url, "right.mp3")
end)

T.case("rss with Media RSS content and no enclosure", function()
  local f = assert(feed.parse([[<rss xmlns:media="http://search.yahoo.com/mrss/"><channel>
    <title>V</title><item><title>clip</title>
    <media:group><media:content url="http://h/clip.mp4" type="video/mp4" duration="42"/></media:group>
    </item></channel></rss>]]))
  T.eq(f.items[1].url, "http://h/clip.mp4")
  T.eq(f.items[1].duration, 42)
end)

T.case("dates and durations", function()
  T.eq(feed.parse_date("Fri, 31 Dec 1999 23:59:59 GMT"), 946684799)
  T.eq(feed.parse_date("Sat, 01 Jan 2000 00:59:59 +0100"), 946684799)
  T.eq(feed.parse_date("2000-02-29T00:00:00Z"), 951782400)
  T.eq(feed.parse_date("2000-02-29"), 951782400)
  T.eq(feed.parse_date("2000-02-29T01:30:00+01:30"), 951782400)
  T.eq(feed.parse_date("yesterday"), nil)
  T.eq(feed.parse_date("Fri, 31 Foo 1999 23:59:59 GMT"), nil)
  T.eq(feed.parse_duration("1:02:03"), 3723)
  T.eq(feed.parse_duration("62:03"), 3723)
  T.eq(feed.parse_duration(" 3723 "), 3723)
  T.eq(feed.parse_duration("PT1H2M3S"), 3723)
  T.eq(feed.parse_duration("12.5"), 12.5)
  T.eq(feed.parse_duration("soon"), nil)
end)

T.case("xml: entities, CDATA, comments, DOCTYPE and attributes", function()
  local root = assert(feed.xml([==[<?xml version="1.0"?>
<!DOCTYPE r [ <!ENTITY x "y"> ]>
<r a='1' b="&lt;&#65;&#x42;&gt;"><!-- c --><s>x &amp; y<![CDATA[ <raw> & ]]></s><e/></r>]==]))
  T.eq(root.name, "r")
  T.eq(root.attrs.b, "<AB>")
  T.eq(feed.text(root.children[1]), "x & y <raw> &")
  T.eq(root.children[2].name, "e")
end)

T.case("bad XML and non-feeds give one line naming the cause", function()
  local f, err = feed.parse("<rss><channel><title>x</channel></rss>")
  T.eq(f, nil)
  T.ok(err:find("feed: xml: end tag </channel> does not match <title> at byte", 1, true), err)
  f, err = feed.parse("<rss><channel><item>")
  T.eq(err, "feed: xml: unexpected end of input inside <item>")
  f, err = feed.parse("<html><body/></html>")
  T.eq(err, "feed: not an RSS or Atom feed (root element <html>)")
  f, err = feed.parse("")
  T.eq(err, "feed: xml: no root element")
  f, err = feed.read_file(FIX .. "missing.xml")
  T.ok(err:find("^feed: .*missing.xml"), err)
end)

return T.run()
