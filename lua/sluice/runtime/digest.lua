-- sluice.runtime.digest: the one keying function, and the identity of files.
--
--   local digest = require "sluice.runtime.digest"
--   digest.key(parts)            -- 32 hex digits naming parts (any Lua value): what determines
--                                -- a result. The graph's resume keys (sluice.graph.memokey) and
--                                -- any content-addressed cache are made with it, so two
--                                -- keys made of the same parts are the same key.
--   digest.join(a, b)            -- the key of key a extended by b (a string): a carried key one
--                                -- step further (an item's key at the next stage, its k-th output)
--   digest.encode(v)             -- the canonical text key() hashes: types kept apart (3 and 3.0,
--                                -- "3" and 3), tables by their sorted entries
--   digest.file(path)            -- (waits) {size=, mtime=, sha256=, whole=} on a worker thread:
--                                -- the SHA-256 of the first and last MiB (of all of it up to 2 MiB)
--   digest.content(path)        -- (waits) the SHA-256 (64 hex digits) of all of the file, on a
--                                -- worker thread: what it holds (a content-addressed cache's part)
--   digest.stat(paths)           -- (waits) list: {size=, mtime=} or false (missing) per path,
--                                   and why: {[i] = "ENOENT" | "EISDIR" | "EACCES" (unreadable) ...}
--   digest.is_secret(name)       -- true for names that hold credentials (key, secret, token,
--                                -- password, ...): they never go into keys, stores or messages
local cdigest = require "sluice.core.digest"
local sched = require "sluice.runtime.sched"

local sha256 = cdigest.sha256
local tostring, sub = tostring, string.sub

local M = {}

-- Hex digits kept of a SHA-256: 128 bits, far from any collision among a store's items.
local LEN = 32
M.LEN = LEN

local function hex(s) return sub(sha256(s), 1, LEN) end
M.sha256 = sha256

-- The canonical encoding is core/digest.c's (its comment has the grammar).
M.encode = cdigest.encode

function M.key(parts) return sub(cdigest.key(parts), 1, LEN) end

function M.join(a, b) return hex(a .. "\0" .. b) end

-- Words of a name that say it holds a credential. A name is cut into words at non-letters
-- and lower-to-upper case changes (api_key, apiKey, OPENAI_API_KEY: ... "key"); a word that
-- ends with one of these counts too (apikey, accesstoken). Whole words, not substrings:
-- max_tokens, keywords and keyframes are settings that change results, not credentials.
local SECRET = { "key", "secret", "token", "password", "passwd", "credential", "credentials" }

function M.is_secret(name)
  name = tostring(name):gsub("(%l)(%u)", "%1_%2"):lower()
  for word in name:gmatch("%a+") do
    for _, w in ipairs(SECRET) do
      if word == w or (#word > #w and word:sub(-#w) == w) then return true end
    end
  end
  return false
end

function M.file(path)
  return sched.await("digest " .. path, function(done) return cdigest.file(path, done) end)
end

function M.content(path)
  local f, err, code = sched.await("digest " .. path, function(done) return cdigest.file(path, done, true) end)
  if not f then return nil, err, code end
  return f.sha256
end

function M.stat(paths)
  return sched.await("stat", function(done) return cdigest.stat(paths, done) end)
end

return M
