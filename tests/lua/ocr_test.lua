-- tesseract OCR: word recall on slides rendered with known text (ffmpeg drawtext with
-- DejaVu Sans), word boxes, blobs, bad input, missing language data.
local sl = require "sluice"
local T = require "sluice.app.test"
local tesseract = require "sluice.providers.tesseract"
local blob = require "sluice.core.blob"
package.path = (os.getenv("SLUICE_SOURCE_DIR") or ".") .. "/tests/lua/fixtures/?.lua;" .. package.path
local P = require "pltest"

T.timeout = 180

local FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
local BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

local SLIDES = {
  { "Introduction to Signal Processing", "Sampling turns a continuous signal into numbers",
    "The Nyquist rate is twice the highest frequency", "Aliasing folds high tones into low ones" },
  { "Fourier Transform", "Every periodic signal is a sum of sines",
    "The spectrum shows energy per frequency band", "Windowing reduces spectral leakage" },
  { "Digital Filters", "Finite impulse response filters are always stable",
    "Recursive filters need fewer coefficients", "Group delay matters for audio quality" },
  { "Speech Recognition", "Acoustic models map frames to phonemes",
    "Language models rank likely word sequences", "Word error rate measures the result" },
}

local TMP
local function tmpdir()
  local base = os.tmpname()
  os.remove(base)
  assert(sl.exec({ "mkdir", "-p", base }))
  return base
end

local function render(lines, path)
  local filters = {}
  for i, line in ipairs(lines) do
    local size = i == 1 and 56 or 40
    local font = i == 1 and BOLD or FONT
    filters[#filters + 1] = string.format("drawtext=fontfile=%s:text='%s':fontsize=%d:fontcolor=black:x=80:y=%d",
      font, line, size, i == 1 and 70 or (130 + 90 * i))
  end
  local r = T.ok(sl.exec { "ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
    "-i", "color=c=white:s=1280x720", "-vf", table.concat(filters, ","), "-frames:v", "1", path })
  T.eq(r.status, 0, r.stderr)
end

local function words_of(text)
  local w = {}
  for tok in text:lower():gmatch("%w+") do w[#w + 1] = tok end
  return w
end

local vlm = tesseract.new { workers = 2 }

T.case("at least 95% of the words on rendered slides are found", function()
  TMP = TMP or tmpdir()
  local images = {}
  for i, lines in ipairs(SLIDES) do
    -- half the slides as JPEG (what frame extraction produces), half as PNG
    local path = string.format("%s/slide-%d.%s", TMP, i, i % 2 == 1 and "jpg" or "png")
    render(lines, path)
    images[i] = { path = path, t = 10 * i }
  end
  local out = vlm:describe(images)
  T.eq(#out, #SLIDES)
  local found, total = 0, 0
  for i, r in ipairs(out) do
    T.eq(r.t, 10 * i)
    T.ok(r.text, r.error)
    T.ok(r.confidence > 0.5 and r.confidence <= 1, "confidence " .. tostring(r.confidence))
    local seen = {}
    for _, w in ipairs(words_of(r.text)) do seen[w] = (seen[w] or 0) + 1 end
    for _, line in ipairs(SLIDES[i]) do
      for _, w in ipairs(words_of(line)) do
        total = total + 1
        if (seen[w] or 0) > 0 then
          found = found + 1
          seen[w] = seen[w] - 1
        end
      end
    end
  end
  local recall = found / total
  print(string.format("     OCR word recall %.1f%% (%d of %d words)", 100 * recall, found, total))
  T.ok(recall >= 0.95, string.format("recall %.3f", recall))
end)

T.case("word boxes lie on the image where the text was drawn", function()
  TMP = TMP or tmpdir()
  local path = TMP .. "/boxes.png"
  render(SLIDES[1], path)
  local r = T.ok(vlm:ocr(path))
  T.eq(r.width, 1280)
  T.eq(r.height, 720)
  local title
  for _, w in ipairs(r.words) do
    T.ok(w.box.x >= 0 and w.box.y >= 0 and w.box.x + w.box.w <= 1280 and w.box.y + w.box.h <= 720)
    T.ok(w.conf >= 0 and w.conf <= 1)
    if w.text == "Introduction" then title = w end
  end
  T.ok(title, "the title word was found")
  -- drawn at x=80, y=70 with a 56 px font
  T.ok(title.box.x >= 70 and title.box.x <= 100, "x " .. title.box.x)
  T.ok(title.box.y >= 60 and title.box.y <= 130, "y " .. title.box.y)
end)

T.case("encoded bytes in a blob work like a file", function()
  TMP = TMP or tmpdir()
  local path = TMP .. "/blob.png"
  render(SLIDES[2], path)
  local f = assert(io.open(path, "rb"))
  local bytes = blob.new(f:read("a"))
  f:close()
  local a = T.ok(vlm:ocr(path))
  local b = T.ok(vlm:ocr { blob = bytes })
  T.eq(b.text, a.text)
end)

T.case("bad images give a clear error and the others go on", function()
  TMP = TMP or tmpdir()
  local good = TMP .. "/good.png"
  render(SLIDES[3], good)
  local junk = TMP .. "/junk.png"
  local f = assert(io.open(junk, "wb"))
  f:write("this is not a png")
  f:close()
  local out = vlm:describe { { path = "/nonexistent/slide.png", t = 1 }, { path = junk, t = 2 },
    { path = good, t = 3 } }
  T.ok(out[1].error:find("/nonexistent/slide.png", 1, true) and out[1].error:find("No such file", 1, true), out[1].error)
  T.ok(out[2].error:find(junk, 1, true) and out[2].error:find("not an image", 1, true), out[2].error)
  T.ok(out[3].text:find("Digital Filters", 1, true), out[3].text)
end)

T.case("tesseract's own diagnostics stay off the run's stderr", function()
  -- The frame at 52.1 s of the real footage makes tesseract print "Image too small to
  -- scale!!" and "Line cannot be recognized!!" (its stderr is the process's: run in a child).
  TMP = TMP or tmpdir()
  local script = TMP .. "/diag.lua"
  local f = assert(io.open(script, "w"))
  f:write(string.format([[
local media = require "sluice.media"
local s = media.frames(%q, { times = { 52.1 }, max_width = 960, dir = %q })
local frame = s:next()
s:close()
local out = require("sluice.providers.tesseract").new {}:describe { { path = frame.path, t = frame.t } }
print(out[1].error or "read")
]], P.footage("person.mp4"), TMP))
  f:close()
  local r = T.ok(sl.exec { P.bin, "run", script })
  T.eq(r.status, 0, r.stderr)
  T.eq(r.stdout, "read\n")
  T.eq(r.stderr, "")
end)

T.case("a missing language names the Debian package to install", function()
  local p = tesseract.new { lang = "xyz" }
  local r, msg = p:ocr(TMP .. "/good.png")
  T.eq(r, nil)
  T.ok(msg:find("tesseract-ocr-xyz", 1, true), msg)
end)

local status = T.run()
vlm:close()
if TMP then sl.exec { "rm", "-rf", TMP } end
return status
