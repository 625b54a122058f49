-- sluice.providers.prices: what remote calls cost, as data (sluice.providers.cost reads it).
--
-- prices[provider][model] = {input=, output=, minute=, request=}: US dollars per million
-- input tokens, per million output tokens (a reasoning model's reasoning tokens and Gemini's
-- thoughts are output), per minute of audio, per request. A model is found by its exact id,
-- else by the longest entry its id starts with ("gpt-5.4-mini-2026-03-17" -> "gpt-5.4-mini"),
-- else by "*". A reply's token usage is priced when the entry has input/output prices;
-- a reply that gives audio seconds (or nothing, for speech) by the minute.
--
-- estimates: what a call is expected to use when nothing better is known (--dry-run, and
-- the budget's reservation for a call before its reply says what it used; during a run, the
-- averages of the replies so far replace them per provider, model and role).
--
-- These are list prices as published when this file was written; they change. Override them
-- without editing this file: $SLUICE_PRICES, else $XDG_CONFIG_HOME/sluice/prices.lua
-- (~/.config/sluice/prices.lua), returning the same shape (its entries replace these one by
-- one), or a run's `prices` setting (--config FILE: prices = {openai = {["gpt-5.4-mini"] =
-- {input = 0.25, output = 2}}}).
return {
  prices = {
    openai = {
      ["gpt-5.5"] = { input = 2.50, output = 20.00 },
      ["gpt-5.4"] = { input = 1.25, output = 10.00 },
      ["gpt-5.4-mini"] = { input = 0.25, output = 2.00 },
      ["gpt-5.4-nano"] = { input = 0.05, output = 0.40 },
      ["gpt-5.2"] = { input = 1.25, output = 10.00 },
      ["gpt-5"] = { input = 1.25, output = 10.00 },
      ["gpt-5-mini"] = { input = 0.25, output = 2.00 },
      ["codex-mini-latest"] = { input = 1.50, output = 6.00 },
      ["gpt-4.1"] = { input = 2.00, output = 8.00 },
      ["gpt-4.1-mini"] = { input = 0.40, output = 1.60 },
      ["gpt-4o"] = { input = 2.50, output = 10.00 },
      ["gpt-4o-mini"] = { input = 0.15, output = 0.60 },
      ["whisper-1"] = { minute = 0.006 },
      ["gpt-transcribe"] = { minute = 0.006 },
      ["gpt-4o-transcribe"] = { input = 2.50, output = 10.00, minute = 0.006 },
      ["gpt-4o-transcribe-diarize"] = { input = 2.50, output = 10.00, minute = 0.006 },
      ["gpt-4o-mini-transcribe"] = { input = 1.25, output = 5.00, minute = 0.003 },
      ["ft:gpt-5.4-mini"] = { input = 0.50, output = 4.00 },
    },
    gemini = {
      ["gemini-3.5-pro"] = { input = 1.25, output = 10.00 },
      ["gemini-3.5-flash"] = { input = 0.30, output = 2.50 },
      ["gemini-3.5-flash-lite"] = { input = 0.10, output = 0.40 },
      ["gemini-3-pro"] = { input = 2.00, output = 12.00 },
      ["gemini-3-flash"] = { input = 0.50, output = 3.00 },
    },
    clova = {
      ["*"] = { minute = 0.02 },
    },
  },
  estimates = {
    chars_per_token = 4,       -- text
    image_tokens = 1000,       -- an image in a request
    output_tokens = { vlm = 60, llm = 300 },  -- a reply
    audio_tokens_per_second = 10, -- speech sent to a token-priced transcription model
    words_per_second = 2.5,    -- speech: the transcript's length
  },
}
