-- sluice.providers.exec: any command line as a provider, run once per item (per audio
-- chunk, per image, per prompt). Arguments are templates; the output (stdout, or a file
-- the command writes) is parsed as JSON, SRT, WebVTT or plain text.
--
--   -- whisper.cpp, where a user has it:
--   local stt = require("sluice.providers.exec").new{
--     command = { "whisper-cli", "-m", "/models/ggml-base.en.bin", "-f", "{path}", "-oj", "-of", "{out}" },
--     output = "{out}.json" }
--   local r = stt:transcribe{ path = "chunk.wav", t0 = 30, t1 = 60 }
--
-- Configuration:
--   command   list of arguments (never run through a shell), or a string split on spaces
--   role      "stt" (default), "vlm", "llm" or "filter": which methods the object has
--   format    "auto" (default), "json", "srt", "vtt" or "text"
--   output    a template naming the file the command writes (default: its stdout)
--   stdin     a template written to the command's stdin (e.g. "{prompt}" for an LLM)
--   vars      extra template values: {model = "/models/x.bin"} makes {model} usable
--   workers   commands running at once (default 1), timeout (seconds per item), env, cwd
-- Templates: {path}, {t0}, {t1}, {t}, {out} (a fresh temporary path prefix per item),
-- {tmp} (the provider's temporary directory), {prompt}, {classes} (comma-separated), {lang},
-- and the names in vars. An unknown {name} is an error when the provider is created.
local sl = require "sluice"
local cjson = require "cjson"
local subtitles = require "sluice.blocks.subtitles"
local engines = require "sluice.providers.engines"

local M = { roles = { stt = true, vlm = true, llm = true, filter = true }, name = "exec" }

local KNOWN_VARS = { path = true, t0 = true, t1 = true, t = true, out = true, tmp = true,
  prompt = true, classes = true, lang = true }

local X = {}
X.__index = X

local function split(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function check_template(s, vars, where)
  for name in tostring(s):gmatch("{([%w_]+)}") do
    if not KNOWN_VARS[name] and (vars == nil or vars[name] == nil) then
      error(string.format("exec provider: unknown template {%s} in %s (known: path, t0, t1, t, out, " ..
        "tmp, prompt, classes, lang, and the names in vars)", name, where), 3)
    end
  end
end

function M.new(cfg, role)
  cfg = cfg or {}
  local command = cfg.command
  if type(command) == "string" then command = split(command) end
  if type(command) ~= "table" or type(command[1]) ~= "string" then
    error("exec provider: 'command' (a list of arguments, e.g. {\"whisper-cli\", \"-f\", \"{path}\"}) is required", 2)
  end
  for i, a in ipairs(command) do check_template(a, cfg.vars, "command argument " .. i) end
  if cfg.output then check_template(cfg.output, cfg.vars, "output") end
  if cfg.stdin then check_template(cfg.stdin, cfg.vars, "stdin") end
  local fmt = cfg.format or "auto"
  if not ({ auto = true, json = true, srt = true, vtt = true, text = true })[fmt] then
    error("exec provider: format must be auto, json, srt, vtt or text, got " .. tostring(fmt), 2)
  end
  local prog = command[1]:match("([^/]+)$")
  return setmetatable({
    cfg = cfg, command = command, format = fmt, role = cfg.role or role or "stt",
    provider = "exec:" .. prog, prog = prog, sem = sl.semaphore(math.tointeger(cfg.workers or 1) or 1),
    seq = 0,
  }, X)
end

local function fmt_num(v)
  if math.type(v) == "integer" then return tostring(v) end
  return string.format("%.3f", v)
end

function X:_tmpdir()
  if not self.tmp then
    local base = os.tmpname()
    os.remove(base)
    local r, msg = sl.exec { "mkdir", "-p", base }
    if not r or r.status ~= 0 then return nil, "exec provider: cannot create a temporary directory: " .. tostring(msg) end
    self.tmp = base
  end
  return self.tmp
end

local function expand(s, vars)
  return (tostring(s):gsub("{([%w_]+)}", function(name)
    local v = vars[name]
    if v == nil then return "" end
    if type(v) == "number" then return fmt_num(v) end
    return tostring(v)
  end))
end

-- Runs the command for one item; returns the raw output text or nil, msg, code.
function X:run(vars)
  local tmp, err = self:_tmpdir()
  if not tmp then return nil, err, "EIO" end
  self.seq = self.seq + 1
  local all = {}
  for k, v in pairs(self.cfg.vars or {}) do all[k] = v end
  for k, v in pairs(vars) do all[k] = v end
  all.tmp = tmp
  all.out = string.format("%s/item-%d", tmp, self.seq)
  local argv = {}
  for i, a in ipairs(self.command) do argv[i] = expand(a, all) end
  local opts = { timeout = self.cfg.timeout, env = self.cfg.env, cwd = self.cfg.cwd }
  if self.cfg.stdin then opts.stdin = expand(self.cfg.stdin, all) end
  self.sem:acquire()
  local ok, r, msg, code = pcall(sl.exec, argv, opts)
  self.sem:release()
  if not ok then error(r, 0) end
  if not r then return nil, string.format("%s: %s", self.provider, msg), code end
  if r.status ~= 0 or (r.signal or 0) ~= 0 then
    local last = r.stderr:match("([^\n]*%S[^\n]*)\n?$") or ""
    return nil, string.format("%s: '%s' %s%s", self.provider, self.prog,
      (r.signal or 0) ~= 0 and ("was killed by signal " .. r.signal) or ("exited with status " .. r.status),
      last ~= "" and (": " .. last) or ""), "EEXEC"
  end
  local out = r.stdout
  if self.cfg.output then
    local path = expand(self.cfg.output, all)
    local f, ferr = io.open(path, "rb")
    if not f then
      return nil, string.format("%s: '%s' did not write its output file %s (%s)", self.provider,
        self.prog, path, ferr), "EEXEC"
    end
    out = f:read("a")
    f:close()
    os.remove(path)
  end
  return out
end

local function detect(out)
  local s = out:gsub("^\239\187\191", ""):gsub("^%s+", "")
  if s:match("^[{%[]") then return "json" end
  if s:match("^WEBVTT") then return "vtt" end
  if s:match("^%d+%s*\r?\n%d+:%d%d:%d%d[,.]%d+%s+%-%->") or s:match("^%d+:%d%d:%d%d,%d+%s+%-%->") then
    return "srt"
  end
  return "text"
end

-- whisper.cpp's "-oj" timestamps: "00:00:01,500"
local function whisper_time(v)
  if type(v) == "number" then return v end
  if type(v) == "string" then return subtitles.parse_time(v) end
end

-- Turns JSON output into segments; knows whisper.cpp (-oj), OpenAI verbose_json and plain
-- {"text": ...} or {"segments": [...]}.
local function json_segments(v)
  if type(v) ~= "table" then return nil, "the JSON output is not an object" end
  local segs = {}
  if type(v.transcription) == "table" then -- whisper.cpp
    for _, s in ipairs(v.transcription) do
      local start, stop
      if type(s.offsets) == "table" then
        start, stop = tonumber(s.offsets.from), tonumber(s.offsets.to)
        start, stop = start and start / 1000, stop and stop / 1000
      elseif type(s.timestamps) == "table" then
        start, stop = whisper_time(s.timestamps.from), whisper_time(s.timestamps.to)
      end
      if not start or not stop then return nil, "a whisper.cpp segment has no offsets or timestamps" end
      segs[#segs + 1] = { start = start, ["end"] = stop, text = tostring(s.text or "") }
    end
    return segs
  end
  if type(v.segments) == "table" then -- OpenAI verbose_json and similar
    for _, s in ipairs(v.segments) do
      local start, stop = tonumber(s.start), tonumber(s["end"])
      if not start or not stop then return nil, "a segment lacks numeric start/end" end
      local words
      if type(s.words) == "table" then
        words = {}
        for _, w in ipairs(s.words) do
          words[#words + 1] = { word = w.word, start = tonumber(w.start), ["end"] = tonumber(w["end"]),
            conf = tonumber(w.probability or w.conf) }
        end
      end
      segs[#segs + 1] = { start = start, ["end"] = stop, text = tostring(s.text or ""), words = words }
    end
    return segs
  end
  if type(v.text) == "string" then return nil, nil, v.text end
  return nil, "no 'transcription', 'segments' or 'text' in the JSON output"
end

-- parse(out) -> {segments=?, text=?, json=?} or nil, msg
function X:parse(out)
  local fmt = self.format == "auto" and detect(out) or self.format
  if fmt == "text" then
    return { text = out:gsub("^%s+", ""):gsub("%s+$", ""), format = "text" }
  elseif fmt == "json" then
    local ok, v = pcall(cjson.decode, out)
    if not ok then
      return nil, string.format("%s: malformed JSON output: %s", self.provider, tostring(v):gsub("^.-: ", ""))
    end
    return { json = v, format = "json" }
  else
    local segs, msg = subtitles.parse(out, { format = fmt })
    if not segs then return nil, string.format("%s: malformed %s output: %s", self.provider, fmt, msg) end
    return { segments = segs, format = fmt }
  end
end

-- transcribe(audio{path=, t0=, t1=}, opts) -> {segments=, text=, provider=}; times in media
-- seconds (the command sees the chunk, so t0 is added, and segments are clipped to t1).
function X:transcribe(audio, opts)
  if type(audio) ~= "table" or type(audio.path) ~= "string" then
    error("bad argument #1 to 'transcribe' (table {path=, t0=, t1=} expected)", 2)
  end
  local t0 = audio.t0 or 0
  local out, msg, code = self:run { path = audio.path, t0 = t0, t1 = audio.t1 or "", lang = opts and opts.language or "" }
  if not out then return nil, msg, code end
  local p
  p, msg = self:parse(out)
  if not p then return nil, msg, "EPROTO" end
  local segs, text = p.segments, p.text
  if p.json then
    local err
    segs, err, text = json_segments(p.json)
    if not segs and not text then return nil, string.format("%s: %s", self.provider, err), "EPROTO" end
  end
  local t1 = audio.t1
  local result, texts = {}, {}
  for _, s in ipairs(segs or {}) do
    local st = s.text:gsub("^%s+", ""):gsub("%s+$", ""):gsub("\n", " ")
    local a, b = t0 + s.start, t0 + s["end"]
    if t1 then a, b = math.min(a, t1), math.min(b, t1) end
    if st ~= "" then
      local words
      if s.words then
        words = {}
        for _, w in ipairs(s.words) do
          words[#words + 1] = { word = w.word, start = w.start and t0 + w.start, ["end"] = w["end"] and t0 + w["end"], conf = w.conf }
        end
      end
      result[#result + 1] = { start = a, ["end"] = math.max(a, b), text = st, words = words }
      texts[#texts + 1] = st
    end
  end
  if not segs and text then
    -- plain text: one segment covering the chunk
    text = text:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    if text ~= "" then
      result[1] = { start = t0, ["end"] = t1 or t0, text = text }
      texts[1] = text
    end
  end
  return { segments = result, text = table.concat(texts, " "), provider = self.provider }
end

-- describe(images, opts) -> per image {t=, text=} (JSON output may give {"text": ...,
-- "confidence": ...}); a failed image gives {t=, error=}.
function X:describe(images, opts)
  local out = {}
  engines.each(images, function(img, i)
    local raw, msg = self:run { path = img.path, t = img.t or 0, prompt = opts and opts.prompt or "" }
    local p = raw and self:parse(raw)
    if raw and not p then msg = select(2, self:parse(raw)) end
    if not p then
      out[i] = { t = img.t, error = msg, provider = self.provider }
    elseif p.json then
      local v = p.json
      out[i] = { t = img.t, text = type(v) == "table" and v.text or tostring(v),
        confidence = type(v) == "table" and v.confidence or nil, provider = self.provider }
    else
      local text = p.text
      if p.segments then
        local parts = {}
        for _, s in ipairs(p.segments) do parts[#parts + 1] = s.text end
        text = table.concat(parts, " ")
      end
      out[i] = { t = img.t, text = text, provider = self.provider }
    end
  end)
  return out
end

-- complete(prompt, opts) -> text. The prompt reaches the command through {prompt} or
-- cfg.stdin = "{prompt}"; JSON output may be {"text": ...} or {"content": ...}.
function X:complete(prompt, opts)
  if type(prompt) == "table" then
    local parts = {}
    for _, m in ipairs(prompt) do parts[#parts + 1] = type(m) == "table" and m.content or tostring(m) end
    prompt = table.concat(parts, "\n\n")
  end
  local raw, msg, code = self:run { prompt = prompt }
  if not raw then return nil, msg, code end
  local p
  p, msg = self:parse(raw)
  if not p then return nil, msg, "EPROTO" end
  local text = p.text
  if p.json then text = type(p.json) == "table" and (p.json.text or p.json.content) or tostring(p.json) end
  if opts and type(opts.stream) == "function" and text then opts.stream(text) end
  return text, { provider = self.provider }
end

function X:summarize(text, opts) return self:complete(text, opts) end

-- classify(frames, classes) -> per frame {t=, classes={{name=, score=}...}} from JSON output
-- {"classes": [...]} (or a list).
function X:classify(frames, classes)
  local out = {}
  engines.each(frames, function(fr, i)
    local raw, msg = self:run { path = fr.path, t = fr.t or 0, classes = table.concat(classes or {}, ",") }
    local p
    if raw then p, msg = self:parse(raw) end
    local list = p and p.json and (p.json.classes or p.json)
    if type(list) == "table" then
      out[i] = { t = fr.t, classes = list, provider = self.provider }
    else
      out[i] = { t = fr.t, error = msg or (self.provider .. ": the output has no classes"), provider = self.provider }
    end
  end)
  return out
end

function X:close()
  if self.tmp then
    local dir = self.tmp
    self.tmp = nil
    if sl.current() then sl.exec { "rm", "-rf", dir } end
  end
end

return M
