-- sluice.runtime.digest.is_secret: which setting names hold credentials (never keyed, stored or
-- shown) and which are ordinary settings that change results (keyed like any other).
local T = require "sluice.app.test"
local digest = require "sluice.runtime.digest"

T.case("credentials by whole words; max_tokens, keywords and keyframes are settings", function()
  for _, n in ipairs { "api_key", "apiKey", "OPENAI_API_KEY", "apikey", "token", "access_token",
    "accessToken", "password", "client_secret", "credentials" } do
    T.eq(digest.is_secret(n), true, n)
  end
  for _, n in ipairs { "max_tokens", "max_completion_tokens", "keywords", "keyframes", "tokens",
    "budget", "model" } do
    T.eq(digest.is_secret(n), false, n)
  end
end)
