"""vendors: what the fake server's OpenAI and Gemini endpoints know about models, as the
vendors run them in December 2026.

OpenAI (`GET /v1/models`, Model objects of the OpenAPI spec): the gpt-5.x family are
reasoning models (they take `max_completion_tokens` and `reasoning_effort`; `max_tokens` is
an unsupported parameter and `temperature` other than 1 an unsupported value), gpt-4o-mini
shuts down on 2027-01-14 and whisper-1 on 2027-02-26 (the deprecations page). Transcription
models differ in the response formats they accept (AudioResponseFormat's description):
whisper-1 everything with word and segment times, gpt-transcribe verbose_json with segment
times only (it has no word timestamps), gpt-4o(-mini)-transcribe `json` only,
gpt-4o-transcribe-diarize `json`, `text` and `diarized_json` (speaker segments; no prompt,
no timestamp_granularities; chunking_strategy required over 30 s).

Gemini (`GET /v1beta/models`, Model messages of model.proto): today's catalogue is the
gemini-3.x generation; gemini-2.0-flash and gemini-2.5-flash are gone. The -pro models only
work in thinking mode (thinkingBudget 0 is refused).
"""
import re

CREATED = 1767225600  # 2026-01-01, any fixed time

OPENAI_MODELS = [
    # id, owned_by, shutdown_date
    ("gpt-5.5", "system", None),
    ("gpt-5.4", "system", None),
    ("gpt-5.4-mini", "system", None),
    ("gpt-5.4-mini-2026-03-17", "system", None),
    ("gpt-5.4-nano", "system", None),
    ("gpt-5.2", "system", None),
    ("gpt-5-mini", "system", None),
    ("gpt-5", "system", None),
    ("o4-mini", "system", None),
    ("codex-mini-latest", "system", None),  # a reasoning model of no gpt-/o family
    ("gpt-4.1", "system", None),
    ("gpt-4.1-mini", "system", None),
    ("gpt-4o", "system", None),
    ("gpt-4o-mini", "system", "2027-01-14"),
    ("whisper-1", "openai-internal", "2027-02-26"),
    ("gpt-transcribe", "system", None),
    ("gpt-4o-transcribe", "system", None),
    ("gpt-4o-mini-transcribe", "system", None),
    ("gpt-4o-mini-transcribe-2025-12-15", "system", None),
    ("gpt-4o-transcribe-diarize", "system", None),
    ("text-embedding-3-small", "system", None),
    # a fine-tuned model of an organisation: its id names no family a client knows
    ("ft:gpt-5.4-mini-2026-03-17:acme::b7x2k9q1", "acme", None),
]

TRANSCRIBE = {
    "whisper-1": {"formats": ("json", "text", "srt", "verbose_json", "vtt"), "granularities": ("segment", "word")},
    "gpt-transcribe": {"formats": ("json", "text", "verbose_json"), "granularities": ("segment",)},
    "gpt-4o-transcribe": {"formats": ("json",), "granularities": ()},
    "gpt-4o-mini-transcribe": {"formats": ("json",), "granularities": ()},
    "gpt-4o-mini-transcribe-2025-12-15": {"formats": ("json",), "granularities": ()},
    "gpt-4o-transcribe-diarize": {"formats": ("json", "text", "diarized_json"), "granularities": None,
                                  "diarize": True},
}

# reasoning tokens a reasoning model spends before answering, per reasoning_effort
REASONING_TOKENS = {"none": 0, "minimal": 16, "low": 128, "medium": 512, "high": 2048,
                    "xhigh": 4096, "max": 8192}


def openai_model(mid):
    for m in OPENAI_MODELS:
        if m[0] == mid:
            return {"id": m[0], "object": "model", "created": CREATED, "owned_by": m[1],
                    "shutdown_date": m[2]}
    return None


def openai_catalogue():
    return [openai_model(m[0]) for m in OPENAI_MODELS]


def base_model(mid):
    """ft:BASE:org::id -> BASE."""
    if mid.startswith("ft:"):
        return mid.split(":")[1]
    return mid


def is_reasoning(mid):
    return re.match(r"^(gpt-5|o\d|codex-mini)", base_model(mid)) is not None


def is_chat(mid):
    b = base_model(mid)
    return openai_model(mid) is not None and b not in TRANSCRIBE and not b.startswith("text-embedding")


GEMINI_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]


def gemini_entry(mid, version, display, description, methods=GEMINI_METHODS, thinking=True,
                 limits=(1048576, 65536)):
    m = {"name": "models/" + mid, "version": version, "displayName": display, "description": description,
         "inputTokenLimit": limits[0], "outputTokenLimit": limits[1], "supportedGenerationMethods": methods}
    if thinking:
        m.update({"temperature": 1, "maxTemperature": 2, "topP": 0.95, "topK": 64, "thinking": True})
    return m


GEMINI_MODELS = [
    gemini_entry("gemini-3.5-pro", "3.5", "Gemini 3.5 Pro",
                 "Our most capable model for complex reasoning, coding and multimodal understanding."),
    gemini_entry("gemini-3.5-flash", "3.5", "Gemini 3.5 Flash",
                 "Fast and efficient multimodal model with thinking, for most tasks."),
    gemini_entry("gemini-3.5-flash-lite", "3.5", "Gemini 3.5 Flash-Lite",
                 "Our smallest and most cost-efficient model, built for scale."),
    gemini_entry("gemini-3-pro", "3.0", "Gemini 3 Pro", "Gemini 3 Pro."),
    gemini_entry("gemini-3-flash", "3.0", "Gemini 3 Flash", "Gemini 3 Flash."),
    gemini_entry("gemini-embedding-001", "001", "Gemini Embedding 001", "Obtain a distributed representation of a text.",
                 methods=["embedContent", "countTokens"], thinking=False, limits=(2048, 1)),
]

GEMINI_DYNAMIC_THOUGHTS = 1024  # thoughts a thinking model spends when no budget is given


def gemini_model(name):
    for m in GEMINI_MODELS:
        if m["name"] == "models/" + name:
            return m
    return None


def gemini_thinking_only(name):
    return name.endswith("-pro")
