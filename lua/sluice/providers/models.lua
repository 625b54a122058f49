-- sluice.providers.models: what sluice knows about the vendors' models, as data. Per
-- provider: the model each role uses when none is configured, and model families matched
-- by Lua pattern against the model id (the first family that matches wins; a fine-tuned
-- OpenAI id "ft:BASE:org::id" is matched by BASE).
--
-- A family entry:
--   kind             "chat" (roles vlm, llm), "transcription" (stt), "embedding" (none)
--   token_field      the request field that bounds the reply (OpenAI: max_completion_tokens;
--                    max_tokens is deprecated and never sent)
--   temperature      false: the model only takes its default temperature, so none is sent
--   reasoning_effort per role: OpenAI's reasoning_effort (nil: the model's default)
--   thinking_budget  per role: Gemini's generationConfig.thinkingConfig.thinkingBudget
--   max_tokens       per role: the reply budget when none is configured (it includes a
--                    reasoning model's reasoning tokens)
--   format           transcription: "verbose_json" (times per segment, `words` = word times
--                    too), "diarized_json" (speaker segments) or "json" (text only: sluice
--                    cuts the audio into short chunks at silences and times each chunk)
--
-- Override it without editing this file: $SLUICE_MODELS, else
-- $XDG_CONFIG_HOME/sluice/models.lua (~/.config/sluice/models.lua), may return the same shape;
-- its `defaults` replace these role by role and its `families` are matched before these.
-- A model that matches no family is sent the plainest request, and a 400 that names an
-- unsupported parameter or value is learned (see docs/providers.md).
local function like(base, t)
  for k, v in pairs(base) do if t[k] == nil then t[k] = v end end
  return t
end

-- OpenAI's reasoning models: they think before they answer (those tokens count against
-- max_completion_tokens) and take only the default temperature.
local reasoning = {
  kind = "chat", token_field = "max_completion_tokens", temperature = false,
  reasoning_effort = { vlm = "low" },   -- a frame description needs little thought
  max_tokens = { vlm = 2000 },
}
local thinking = { kind = "chat", thinking = true, thinking_budget = { vlm = 512 } }

return {
  openai = {
    defaults = { stt = "gpt-transcribe", vlm = "gpt-5.4-mini", llm = "gpt-5.4-mini" },
    families = {
      { match = "^whisper%-", kind = "transcription", format = "verbose_json", words = true },
      { match = "^gpt%-transcribe", kind = "transcription", format = "verbose_json", words = false },
      { match = "^gpt%-4o%-transcribe%-diarize", kind = "transcription", format = "diarized_json" },
      { match = "^gpt%-4o%-mini%-transcribe", kind = "transcription", format = "json" },
      { match = "^gpt%-4o%-transcribe", kind = "transcription", format = "json" },
      { match = "^text%-embedding", kind = "embedding" },
      like(reasoning, { match = "^gpt%-5" }),
      like(reasoning, { match = "^o%d" }),
      { match = "^gpt%-4", kind = "chat", token_field = "max_completion_tokens", temperature = true,
        max_tokens = { vlm = 300 } },
    },
  },
  gemini = {
    defaults = { vlm = "gemini-3.5-flash", llm = "gemini-3.5-flash" },
    families = {
      like(thinking, { match = "^gemini%-3" }),
      like(thinking, { match = "^gemini%-2%.5" }),
      { match = "embedding", kind = "embedding" },
    },
  },
}
