-- sluice.providers: the provider registry and the HTTP machinery remote providers share.
--
--   local providers = require "sluice.providers"
--   local stt = providers.get("stt", "openai", { model = "whisper-1" })
--   local r = stt:transcribe({ path = "chunk.wav", t0 = 300, t1 = 600 })
--   local llm = providers.for_role("llm", conf)   -- name from conf.providers.llm, ...
--
-- A provider module `sluice.providers.<name>` returns {roles = {stt=true, ...},
-- new = function(cfg, role) -> object}. Role interfaces:
--   stt:transcribe(audio{path=, t0=, t1=}, opts) -> {segments = {{start=, ["end"]=, text=,
--       words = {{word=, start=, ["end"]=}}}}, text=, provider=}   (media seconds)
--   vlm:describe(images{{path=, t=}}, opts) -> {{t=, text=}, ...}
--   llm:complete(messages | prompt, opts{stream = fn(token)}) -> text, info
--   llm:summarize(text, opts) -> text;  llm:judge(summary, sources, opts) -> {score=, reasons=}
-- Failures are returned as nil, message, code, failure; messages name the provider and
-- never contain keys; failure = {status=, retry_after=, error={message=, code=, param=}}
-- when the server answered (code: OpenAI's error.code or Google's status).
local http = require "sluice.runtime.http"
local sse = require "sluice.runtime.sse"
local retry = require "sluice.runtime.retry"
local limit = require "sluice.runtime.limit"
local cjson = require "cjson"
require "sluice.runtime.json" -- strict decoding (no NaN) for parse_json_reply
local sched = require "sluice.runtime.sched"
local chttp = require "sluice.core.http"

local M = {}

M.ROLES = { stt = "speech to text", vlm = "image description", llm = "text generation" }
-- Provider modules that ship with sluice; modules already loaded under sluice.providers.*
-- and those added with register() are listed too.
M.KNOWN = { "openai", "gemini", "clova", "sphinx", "tesseract", "worker", "exec", "extractive" }
M.defaults = { stt = "openai", vlm = "openai", llm = "openai" }

local extra = {} -- providers registered at run time (local models, ...)

-- register(name, module): adds a provider that is not a sluice.providers.* module.
function M.register(name, mod)
  assert(type(mod) == "table" and type(mod.roles) == "table" and type(mod.new) == "function",
    "providers.register: module needs roles and new")
  extra[name] = mod
end

local function load(name)
  if extra[name] then return extra[name] end
  local modname = "sluice.providers." .. name
  local ok, mod = pcall(require, modname)
  if ok then return mod end
  if tostring(mod):find("module '" .. modname .. "' not found", 1, true) then return nil end
  error(mod, 0)
end

-- list(role) -> names of the known providers that serve role (all when role is nil).
function M.list(role)
  local out, seen = {}, {}
  local names = {}
  for _, n in ipairs(M.KNOWN) do names[#names + 1] = n end
  for n in pairs(extra) do names[#names + 1] = n end
  for modname in pairs(package.loaded) do
    local n = type(modname) == "string" and modname:match("^sluice%.providers%.([%w_]+)$")
    if n and n ~= "init" then names[#names + 1] = n end
  end
  for _, n in ipairs(names) do
    if not seen[n] then
      seen[n] = true
      local okl, mod = pcall(load, n)
      if okl and type(mod) == "table" and type(mod.roles) == "table" and type(mod.new) == "function"
        and (role == nil or mod.roles[role]) then
        out[#out + 1] = n
      end
    end
  end
  table.sort(out)
  return out
end

-- module(role, name) -> the provider module named for role, or nil and why (an unknown role
-- or provider, with the near names, or a provider without that role).
function M.module(role, name)
  local suggest = require "sluice.runtime.suggest"
  if type(role) ~= "string" or (not M.ROLES[role] and #M.list(role) == 0) then
    local roles = {}
    for r in pairs(M.ROLES) do roles[#roles + 1] = r end
    table.sort(roles)
    return nil, string.format("unknown provider role '%s'%s (roles: %s)", tostring(role),
      suggest.did_you_mean(tostring(role), roles), table.concat(roles, ", "))
  end
  local names = M.list(role)
  if type(name) ~= "string" then
    return nil, string.format("no provider named for role '%s' (providers for %s: %s)", role, role,
      table.concat(names, ", "))
  end
  local mod = load(name)
  if type(mod) ~= "table" or type(mod.roles) ~= "table" or type(mod.new) ~= "function" then
    return nil, string.format("unknown provider '%s' for role '%s'%s (providers for %s: %s)", name, role,
      suggest.did_you_mean(name, names), role, table.concat(names, ", "))
  end
  if not mod.roles[role] then
    local roles = {}
    for r in pairs(mod.roles) do roles[#roles + 1] = r end
    table.sort(roles)
    return nil, string.format("provider '%s' cannot do '%s' (it does: %s; providers for %s: %s)", name,
      role, table.concat(roles, ", "), role, table.concat(names, ", "))
  end
  return mod
end

-- get(role, name, cfg) -> provider object. Raises a clear error for an unknown role or
-- provider, or a provider without that role.
function M.get(role, name, cfg)
  local mod, err = M.module(role, name)
  if not mod then error(err, 2) end
  return mod.new(cfg or {}, role)
end

-- setting(cfg, name, key, vendor_env) -> provider `name`'s setting `key` (an API key, a base
-- URL, ...): from cfg (a config file or --set), else $SLUICE_<NAME>_<KEY> (the name the
-- configuration's environment rule gives `name.key`, sluice.app.config.env_name), else the
-- vendor's own variable; nil when none is set or the value is empty. The one rule for every
-- provider's credentials and endpoints.
function M.setting(cfg, name, key, vendor_env)
  local v = cfg[key]
  if v == nil or v == "" then v = os.getenv("SLUICE_" .. (name .. "_" .. key):upper():gsub("[.%-]", "_")) end
  if (v == nil or v == "") and vendor_env then v = os.getenv(vendor_env) end
  if v == "" then return nil end
  return v
end

-- endpoint(cfg, spec) -> base URL (no trailing "/"), key, needs: a vendor's API from cfg
-- (base_url, api_key) or the environment (M.setting); spec = {name=, base_env=, base=,
-- key_env=, host=}. needs (as a module's needs() returns it) asks for the key when the base
-- URL is the vendor's own host (a Lua pattern): a local server at another URL may take none.
function M.endpoint(cfg, spec)
  local base = (M.setting(cfg, spec.name, "base_url", spec.base_env) or spec.base):gsub("/+$", "")
  local key = M.setting(cfg, spec.name, "api_key", spec.key_env)
  local needs = {}
  if (key == nil or key == "") and base:match("^https?://[^/]*" .. spec.host) then
    needs[1] = { what = "an API key", env = spec.key_env, setting = "api_key" }
  end
  return base, key, needs
end

-- missing(role, name, cfg) -> what provider `name` lacks to do role with settings cfg (and the
-- environment): one line each, naming the variable to set; empty when nothing is missing.
-- A provider module says it with needs(cfg, role) -> {{what=, env=, setting=}, ...}.
function M.missing(role, name, cfg)
  local mod = M.module(role, name)
  local out = {}
  if not mod or type(mod.needs) ~= "function" then return out end
  for _, n in ipairs(mod.needs(cfg or {}, role) or {}) do
    out[#out + 1] = string.format("%s needs %s: set %s%s", name, n.what, n.env,
      n.setting and (" (or " .. name .. "." .. n.setting .. " in a --config file)") or "")
  end
  return out
end

-- name_for(role, conf) -> the provider configured for role: conf.providers[role] (or
-- conf["providers." .. role]), else $SLUICE_PROVIDER_<ROLE>, else the default (openai); and
-- true as a second value when it was configured (not the default).
function M.name_for(role, conf)
  conf = conf or {}
  local name = (type(conf.providers) == "table" and conf.providers[role]) or conf["providers." .. role]
    or os.getenv("SLUICE_PROVIDER_" .. role:upper())
  if name ~= nil then return name, true end
  return M.defaults[role], false
end

-- names_for(role, conf) -> the list of providers configured for role, in order of preference
-- (a fallback chain: providers.vlm = {"gemini", "openai", "tesseract"}; one name is a list of
-- one), and true as a second value when it was configured. Raises one line for a list that
-- holds anything but names.
function M.names_for(role, conf)
  local v, configured = M.name_for(role, conf)
  if type(v) == "string" then return { v }, configured end
  if type(v) == "table" then
    local out = {}
    for i = 1, #v do
      local n = v[i]
      if type(n) ~= "string" or n == "" then
        error(string.format("providers.%s: entry %d must be a provider name (got %s)", role, i, tostring(n)), 0)
      end
      out[i] = n
    end
    if #out == 0 then error(string.format("providers.%s: the list of providers is empty", role), 0) end
    return out, configured
  end
  error(string.format("providers.%s must be a provider name or a list of them (got %s)", role, tostring(v)), 0)
end

-- settings_for(role, name, conf) -> the provider's settings: conf[name] overlaid with conf[role].
function M.settings_for(role, name, conf)
  local cfg = {}
  for _, key in ipairs { name, role } do
    local src = (conf or {})[key]
    if type(src) == "table" then for k, v in pairs(src) do cfg[k] = v end end
  end
  return cfg
end

-- for_role(role, conf) -> provider object chosen by configuration (name_for), with the
-- settings of settings_for.
function M.for_role(role, conf)
  local name = M.name_for(role, conf)
  return M.get(role, name, M.settings_for(role, name, conf))
end

-- ---- shared machinery for remote providers --------------------------------------------

-- Replaces every occurrence of secret in msg (keys never reach messages or logs).
function M.redact(msg, secret)
  msg = tostring(msg)
  if type(secret) == "string" and #secret >= 4 then
    local s, e = msg:find(secret, 1, true)
    while s do
      msg = msg:sub(1, s - 1) .. "[redacted]" .. msg:sub(e + 1)
      s, e = msg:find(secret, s + 10, true)
    end
  end
  return msg
end

-- Resolves cfg.limit: a limiter, a registered limiter's name, or a rate{} spec.
function M.limiter(spec)
  if spec == nil or limit.is_limiter(spec) then return spec end
  if type(spec) == "string" then
    local l = limit.named(spec)
    if not l then error("no limiter named '" .. spec .. "'", 3) end
    return l
  end
  if type(spec) == "table" then return limit.rate(spec) end
  error("bad option 'limit' (limiter, name or rate spec expected)", 3)
end

-- The largest reply a remote provider may send (bytes; a streamed reply counts whole): a
-- transcription of hours or a long completion is a few MB at most.
M.MAX_REPLY_BYTES = 32 * 1024 * 1024

-- Base object for remote providers: name, secret (kept out of the object's fields so that
-- printing a provider never shows it), limiter, retry and timeout settings.
local secrets = setmetatable({}, { __mode = "k" })

function M.remote(obj, name, cfg, secret)
  obj.provider = name
  obj.limit = M.limiter(cfg.limit)
  obj.retry_opts = {
    attempts = (cfg.retry and cfg.retry.attempts) or cfg.attempts or 4,
    base = (cfg.retry and cfg.retry.base) or 0.5,
    max = (cfg.retry and cfg.retry.max) or 30,
    sleep = cfg.retry and cfg.retry.sleep,
  }
  obj.timeout = cfg.timeout or 600
  obj.connect_timeout = cfg.connect_timeout or 15
  -- a reply (or a whole stream) longer than this is cut off and fails (ETOOBIG, not retried)
  obj.max_reply_bytes = cfg.max_reply_bytes or M.MAX_REPLY_BYTES
  secrets[obj] = secret
  return obj
end

-- each_image(images, concurrency, one(i, img) -> entry | nil, err, code) -> the entries in
-- input order, at most `concurrency` images at once. One image that cannot be described does
-- not throw away the others: its entry is {t=, path=, error=}. Only when none could be
-- described is the result nil, the first error and its code.
function M.each_image(images, concurrency, one)
  local sl = require "sluice"
  local out, first_err, first_code, nfailed = {}, nil, nil, 0
  local sem = sl.semaphore(math.max(1, concurrency or 1))
  local g = sl.group()
  for i, img in ipairs(images) do
    g:spawn(function()
      sem:acquire()
      local ok, e = pcall(function()
        local entry, err, code = one(i, img)
        if entry then
          out[i] = entry
        else
          first_err, first_code = first_err or err, first_code or code
          nfailed = nfailed + 1
          out[i] = { t = img.t, path = img.path, error = err }
        end
      end)
      sem:release()
      if not ok then error(e, 0) end
    end)
  end
  g:wait()
  if nfailed > 0 and nfailed == #images then return nil, first_err, first_code end
  return out
end

-- The VLM role of a chat provider: one p:complete() per image with the prompt and the image
-- (image_part(mime, base64) makes the provider's content part), at most p.concurrency at
-- once (the limiter has the last word). Returns {{t=, text=, path=}, ...} in input order
-- (an image that failed has {t=, path=, error=} instead), or nil, the first error and its
-- code when no image could be described (each_image).
function M.describe_each(p, images, opts, image_part, max_tokens)
  if type(images) ~= "table" then error("bad argument #1 to 'describe' (list of images expected)", 3) end
  local prompt = opts.prompt or p.vlm_prompt or
    "Describe this video frame in one or two sentences: the people, objects, text and slides visible."
  return M.each_image(images, p.concurrency, function(_, img)
    local b64, rerr, rcode = M.read_base64(img.path)
    if not b64 then return nil, p.provider .. ": " .. rerr, rcode end
    local mime = img.mime or (img.path:lower():match("%.png$") and "image/png") or "image/jpeg"
    local text, err, code = p:complete({ { role = "user", content = {
      { type = "text", text = prompt }, image_part(mime, b64),
    } } }, { max_tokens = max_tokens, model = opts.model })
    if not text then return nil, err, code end
    return { t = img.t, text = text, path = img.path }
  end)
end

-- Checks a transcription reply's segments: each needs numeric start/end and text. Returns
-- true, or nil and what is wrong (the caller names the provider).
function M.check_segments(segments)
  if type(segments) ~= "table" then return nil, "missing 'segments'" end
  for i, s in ipairs(segments) do
    if type(s.start) ~= "number" or type(s["end"]) ~= "number" or type(s.text) ~= "string" then
      return nil, "segment " .. i .. " lacks numeric start/end or text"
    end
  end
  return true
end

function M.secret(obj) return secrets[obj] end

-- Reads a file as base64 on a worker thread.
function M.read_base64(path)
  return sched.await("read " .. path, function(done) return chttp.read_base64(path, done) end)
end

-- What an error body says: {message=, code=, param=, type=} (OpenAI: error.message, .code,
-- .param; Google: error.message, .status, and the field of a BadRequest fieldViolation as
-- param), or {message = the body's first 200 characters}.
local function error_info(body)
  local ok, v = pcall(cjson.decode, body or "")
  if ok and type(v) == "table" then
    local e = v.error
    local function str(x) return (type(x) == "string" or type(x) == "number") and tostring(x) or nil end
    if type(e) == "table" then
      local info = { message = str(e.message), code = str(e.code), param = str(e.param), type = str(e.type) }
      if type(e.status) == "string" then info.code = e.status end -- Google's canonical code
      if type(e.details) == "table" then
        for _, d in ipairs(e.details) do
          local fv = type(d) == "table" and type(d.fieldViolations) == "table" and d.fieldViolations[1]
          if type(fv) == "table" and type(fv.field) == "string" then
            local unknown = type(fv.description) == "string" and fv.description:match('Unknown name "([^"]+)"')
            local field = fv.field ~= "" and fv.field or nil
            if unknown then field = field and (field .. "." .. unknown) or unknown end
            info.param = info.param or field
          end
        end
      end
      if info.message or info.code then
        info.message = info.message or info.code
        return info
      end
    elseif type(e) == "string" then
      return { message = e }
    end
    if v.message ~= nil then return { message = tostring(v.message), code = str(v.code) } end
  end
  local s = tostring(body or ""):gsub("%s+", " ")
  if #s > 200 then s = s:sub(1, 200) .. "..." end
  return { message = s }
end

-- One line for an error reply: "HTTP 400: <message> (code x, param y, retry in 30s)".
local function error_line(status, info, retry_after)
  local msg = tostring(info.message or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  local why = {}
  if info.code and info.code ~= tostring(status) and info.code ~= msg then
    why[#why + 1] = (info.code:match("^[A-Z_]+$") and "status " or "code ") .. info.code
  end
  if info.param then why[#why + 1] = "param " .. info.param end
  if retry_after then why[#why + 1] = string.format("retry in %gs", retry_after) end
  return string.format("HTTP %d: %s%s", status, msg, #why > 0 and (" (" .. table.concat(why, ", ") .. ")") or "")
end

-- Google APIs put the retry delay in the error body: error.details[] of type
-- google.rpc.RetryInfo with retryDelay "30s". Returns seconds or nil.
local function retry_delay(body)
  if type(body) ~= "string" or not body:find("RetryInfo", 1, true) then return nil end
  local ok, v = pcall(cjson.decode, body)
  if not ok or type(v) ~= "table" or type(v.error) ~= "table" or type(v.error.details) ~= "table" then
    return nil
  end
  for _, d in ipairs(v.error.details) do
    if type(d) == "table" and type(d["@type"]) == "string" and d["@type"]:find("RetryInfo$")
      and type(d.retryDelay) == "string" then
      return limit.parse_duration(d.retryDelay)
    end
  end
  return nil
end

-- What one request's outcome says about the endpoint (for its breaker): true, it answered;
-- false, it failed (a 5xx or 408, a timeout or connection failure, a malformed reply); nil,
-- nothing (cancelled, or the caller's own callback failed).
local function verdict(status, code)
  if status then return not (status >= 500 or status == 408) end
  if code == "ESTREAM" or code == nil then return nil end
  return false
end
M.verdict = verdict

-- call(p, req) -> decoded JSON reply (or true for a stream), or nil, message, code, info.
-- req: what (for messages), url, method, headers, json | multipart, timeout, attempts (instead
-- of the provider's), tokens (estimate for the limiter), usage(decoded) -> total tokens,
-- input tokens, output tokens, audio seconds (what the reply says it used), check(decoded) ->
-- true | nil, why; sse(ev) -> "done" | nil, why (for streamed replies; must set req.emitted
-- when it has passed data on to the caller). One attempt acquires a permit, sends, releases the
-- permit with what happened; retries follow sluice.runtime.retry's rules, except that a stream
-- that already delivered tokens is not retried.
-- With p.breaker (sluice.runtime.breaker, set by sluice.providers.chain), an attempt is not
-- sent while the endpoint's breaker is open (code EBREAKER, not retried) and each outcome is
-- recorded there. Each request is reported to the task's context (sched.context().meter(p,
-- outcome), set by sluice.providers.chain): {ok=, status=, code=, cancelled=, tokens=, input=,
-- output=, seconds=}.
function M.call(p, req)
  local name, secret = p.provider, secrets[p]
  local b = p.breaker
  local function fail(msg, code, info)
    return nil, M.redact(name .. ": " .. msg, secret), code, info
  end
  local function report(outcome, why) -- why: the failure's line (kept by the breaker)
    if b then b:record(verdict(outcome.status, outcome.code), why and M.redact(why, secret)) end
    local c = sched.context()
    local m = c and c.meter
    if m then m(p, outcome) end
  end
  local function attempt()
    if b and not b:peek() then
      local _, why = b:allow()
      return fail(req.what .. " not sent: " .. tostring(why), "EBREAKER", { retry = false })
    end
    local permit = p.limit and p.limit:acquire { tokens = req.tokens or 0 }
    if b then
      local go, why = b:allow()
      if not go then
        if permit then permit:release { ok = false } end
        return fail(req.what .. " not sent: " .. tostring(why), "EBREAKER", { retry = false })
      end
    end
    local o = {
      method = req.method or "POST", url = req.url, headers = req.headers, json = req.json,
      multipart = req.multipart, timeout = req.timeout or p.timeout,
      connect_timeout = p.connect_timeout, max_bytes = p.max_reply_bytes,
    }
    local stream_fail
    local ok, r, err, code = pcall(function()
      if req.sse then
        return sse.request(o, function(ev)
          if stream_fail then return end
          local st, why = req.sse(ev)
          if st == nil and why then stream_fail = why end
        end)
      end
      return http.request(o)
    end)
    if not ok then -- cancelled, or a bug: give the permit back and pass the error on
      if permit then permit:release { ok = false } end
      report { ok = false, cancelled = true }
      error(r, 0)
    end
    if not r then
      if permit then permit:release { ok = false, timeout = code == "ETIMEDOUT" } end
      local msg = req.what .. " failed: " .. tostring(err)
      report({ ok = false, code = code }, msg)
      local info = {}
      if req.emitted then info.retry = false end -- the caller already has part of a reply
      return fail(msg, code, info)
    end
    local status = r.status
    if status >= 300 then
      local ra = tonumber(r.headers["retry-after"] or "") or retry_delay(r.body)
      if permit then permit:release { ok = false, status = status, headers = r.headers, retry_after = ra } end
      local info = error_info(r.body)
      local msg = req.what .. " failed: " .. error_line(status, info, retry_delay(r.body))
      report({ ok = false, status = status }, msg)
      return fail(msg, "EHTTPSTATUS", { status = status, retry_after = ra, error = info })
    end
    local v
    if req.sse then
      if stream_fail then
        if permit then permit:release { ok = false, status = status, headers = r.headers } end
        local msg = string.format("malformed %s stream: %s", req.what, stream_fail)
        report({ ok = false, code = "EPROTO" }, msg)
        return fail(msg, "EPROTO", { retry = false })
      end
      v = true
    else
      local dok, dv = pcall(cjson.decode, r.body)
      if not dok then
        if permit then permit:release { ok = false, status = status, headers = r.headers } end
        local msg = string.format("malformed %s reply: invalid JSON (%s)", req.what, tostring(dv))
        report({ ok = false, code = "EPROTO" }, msg)
        return fail(msg, "EPROTO")
      end
      v = dv
      if req.check then
        local good, why = req.check(v)
        if not good then
          if permit then permit:release { ok = false, status = status, headers = r.headers } end
          local msg = string.format("malformed %s reply: %s", req.what, why)
          report({ ok = false, code = "EPROTO" }, msg)
          return fail(msg, "EPROTO")
        end
      end
    end
    local tokens, tin, tout, secs
    if req.usage then tokens, tin, tout, secs = req.usage(v) end
    if permit then
      permit:release { ok = true, status = status, headers = r.headers, tokens = tokens }
    end
    report { ok = true, status = status, tokens = tokens, input = tin, output = tout, seconds = secs }
    return v, r
  end
  local ropts = {}
  for k, v in pairs(p.retry_opts) do ropts[k] = v end
  if req.attempts then ropts.attempts = req.attempts end
  return retry.call(function()
    if req.emitted then return nil, "stream interrupted", "EPROTO", { retry = false } end
    return attempt()
  end, ropts)
end

-- call_adapting(p, req, drop) -> like call(p, req); but when the server refuses the request
-- with a 400 whose error names a parameter (OpenAI's error.param with code
-- unsupported_parameter / unsupported_value; a Google field violation), drop(param, error)
-- may change req (remove the parameter, pick another value) and return true: the request is
-- sent again, once per parameter. drop records the fact for the model (catalog.learn) so
-- later requests are made right the first time.
function M.call_adapting(p, req, drop)
  local tried = {}
  while true do
    local v, err, code, failure = M.call(p, req)
    if v ~= nil then return v, err, code, failure end
    local e = failure and failure.status == 400 and failure.error
    local param = e and e.param
    if not param or tried[param] or (e.type and e.code ~= "unsupported_parameter" and e.code ~= "unsupported_value") then
      return nil, err, code, failure
    end
    tried[param] = true
    if not drop(param, e) then return nil, err, code, failure end
  end
end

-- ---- LLM helpers built on complete() -------------------------------------------------

-- Normalises a prompt string or a message list to a message list.
function M.messages(m, opts)
  local msgs
  if type(m) == "string" then
    msgs = { { role = "user", content = m } }
  elseif type(m) == "table" then
    msgs = m
  else
    error("bad argument #1 to 'complete' (prompt string or message list expected)", 3)
  end
  if opts and opts.system then
    local out = { { role = "system", content = opts.system } }
    for _, x in ipairs(msgs) do out[#out + 1] = x end
    msgs = out
  end
  return msgs
end

-- Rough token estimate for limiters: the messages' input tokens (sluice.providers.cost's
-- estimate) plus the reply budget.
function M.estimate_tokens(msgs, max_tokens)
  return require("sluice.providers.cost").message_tokens(msgs) + (max_tokens or 512)
end

local SUMMARY_SYSTEM = "You summarize transcripts and notes. Write a faithful, concise summary " ..
  "in the language of the source. Use short paragraphs or bullet points. Do not invent facts."

local JUDGE_SYSTEM = "You grade summaries. Given source material and a summary, reply with only " ..
  "a JSON object {\"score\": number from 0 to 1, \"reasons\": [short strings]} judging " ..
  "faithfulness and coverage."

-- Extracts the first JSON object from a model's reply (which may wrap it in ``` fences).
function M.parse_json_reply(text)
  if type(text) ~= "string" then return nil, "no text" end
  local ok, v = pcall(cjson.decode, text)
  if ok and type(v) == "table" then return v end
  local s = text:find("{", 1, true)
  local e
  for i = #text, 1, -1 do
    if text:sub(i, i) == "}" then e = i break end
  end
  if s and e and e > s then
    ok, v = pcall(cjson.decode, text:sub(s, e))
    if ok and type(v) == "table" then return v end
  end
  return nil, "no JSON object in the reply"
end

-- Adds summarize() and judge() to an object that has complete().
function M.llm_mixin(obj)
  function obj:summarize(text, opts)
    opts = opts or {}
    if type(text) ~= "string" then error("bad argument #1 to 'summarize' (string expected)", 2) end
    local prompt = (opts.prompt or "Summarize the following material.") .. "\n\n" .. text
    return self:complete({ { role = "system", content = opts.system or SUMMARY_SYSTEM },
      { role = "user", content = prompt } }, { stream = opts.stream, max_tokens = opts.max_tokens,
      temperature = opts.temperature, model = opts.model })
  end

  function obj:judge(summary, sources, opts)
    opts = opts or {}
    if type(sources) == "table" then sources = table.concat(sources, "\n\n") end
    local prompt = "SOURCE:\n" .. tostring(sources) .. "\n\nSUMMARY:\n" .. tostring(summary) ..
      "\n\nReply with the JSON object only."
    local text, err, code = self:complete({ { role = "system", content = opts.system or JUDGE_SYSTEM },
      { role = "user", content = prompt } }, { json = true, max_tokens = opts.max_tokens,
      temperature = opts.temperature or 0, model = opts.model })
    if not text then return nil, err, code end
    local v, why = M.parse_json_reply(text)
    if not v or type(v.score) ~= "number" then
      return nil, string.format("%s: malformed judge reply: %s", self.provider,
        why or "'score' is not a number"), "EPROTO"
    end
    local reasons = v.reasons
    if type(reasons) == "string" then reasons = { reasons } end
    if type(reasons) ~= "table" then reasons = {} end
    return { score = v.score, reasons = reasons, provider = self.provider }
  end
  return obj
end

-- Basename for upload file names.
function M.basename(path) return (tostring(path):match("([^/]+)$")) or "file" end

return M
