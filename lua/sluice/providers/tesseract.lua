-- sluice.providers.tesseract: offline OCR with Tesseract (Debian's libtesseract5 and
-- tesseract-ocr-eng), run in C on the engine's pool. It is the local provider for the VLM
-- role on slides: describe() returns the text on each image, with word boxes and
-- confidences.
--
--   local vlm = require("sluice.providers.tesseract").new{ workers = 2, lang = "eng" }
--   local out = vlm:describe{ { path = "slide-0001.png", t = 12.0 } }
--   -- out[1] = { t = 12.0, text = "...", confidence = 0.91,
--   --            words = {{text=, conf=0..1, box={x=,y=,w=,h=}}...}, provider = "tesseract" }
--
-- Configuration: workers (Tesseract instances, default 1), lang ("eng"; "eng+deu" needs
-- tesseract-ocr-deu), datapath (tessdata directory), psm (page segmentation mode),
-- min_conf (words below this confidence, 0..1, are dropped from text; default 0.3).
local cocr = require "sluice.core.ocr"
local engines = require "sluice.providers.engines"

local M = { roles = { vlm = true, ocr = true }, name = "tesseract" }

local Tess = {}
Tess.__index = Tess

function M.new(cfg)
  cfg = cfg or {}
  local open_opts = { lang = cfg.lang or "eng", datapath = cfg.datapath, psm = cfg.psm }
  local self = setmetatable({ cfg = cfg, min_conf = cfg.min_conf or 0.3 }, Tess)
  self.pool = engines.new {
    name = "tesseract", size = math.tointeger(tonumber(cfg.workers) or 1) or 1,
    load = function(done) return cocr.open(open_opts, done) end,
  }
  return self
end

function Tess:warm() return self.pool:warm() end
function Tess:close() self.pool:close() end

-- ocr(image) -> {text=, confidence=0..1, words=, width=, height=} or nil, msg, code.
-- image is a path, a blob of encoded bytes, or a table {path=|blob=}.
function Tess:ocr(image)
  local input = image
  if type(image) == "table" then input = image.path or image.blob end
  if input == nil then error("bad argument #1 to 'ocr' (image path or blob expected)", 2) end
  local r, msg, code = self.pool:run("tesseract.recognize", function(engine, done)
    return engine:recognize(input, done)
  end)
  if not r then return nil, msg, code end
  local words, kept = {}, {}
  for _, w in ipairs(r.words) do
    local conf = w.conf / 100
    words[#words + 1] = { text = w.text, conf = conf, box = { x = w.x, y = w.y, w = w.w, h = w.h } }
    if conf >= self.min_conf then kept[#kept + 1] = w.text end
  end
  -- Tesseract's own text keeps its line layout; trim the trailing form feed and blank lines.
  local text = r.text:gsub("\f", ""):gsub("\n%s*\n+", "\n"):gsub("^%s+", ""):gsub("%s+$", "")
  return {
    text = text, confidence = math.max(r.confidence, 0) / 100, words = words,
    width = r.width, height = r.height, kept_text = table.concat(kept, " "),
  }
end

-- describe(images, opts) -> list of {t=, text=, words=, confidence=, provider=}, one per image
-- in order. An image that fails gives {t=, error=message} and the others go on.
function Tess:describe(images, opts)
  if type(images) ~= "table" then
    error("bad argument #1 to 'describe' (list of {path=, t=} expected)", 2)
  end
  local out = {}
  engines.each(images, function(img, i)
    local r, msg = self:ocr(img)
    if r then
      out[i] = { t = img.t, text = r.text, words = r.words, confidence = r.confidence,
        provider = "tesseract" }
    else
      out[i] = { t = img.t, error = msg, provider = "tesseract" }
    end
  end)
  return out
end

return M
