# Checks the Gemini side of the fake server against Google's protos (../shared/specs/gemini):
#
# 1. tests/fakeapi/protojson.py, which the server uses to check every generateContent body,
#    accepts what the protos' JSON mapping allows (lowerCamelCase and snake_case names,
#    numbers as strings for integers, enum names) and refuses what it does not (unknown
#    fields, wrong types, two members of a oneof, a list for a single field) -- so the
#    server's check can fail.
# 2. The server's replies have the documented shapes: GenerateContentResponse (plain and
#    each streamed event), ListModelsResponse and Model; its catalogue is today's (gemini-3.x;
#    gemini-2.0-flash gone, with Google's 404 NOT_FOUND wording).
import json
import os
import sys
import urllib.error
import urllib.request

SRC = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
sys.path.insert(0, os.path.join(SRC, "tests", "fakeapi"))
import fakeserver  # noqa: E402
import openai_spec  # noqa: E402
import protojson  # noqa: E402

G = "google.ai.generativelanguage.v1beta."
GDIR = os.environ.get("GEMINI_PROTO_DIR") or os.path.dirname(openai_spec.find_spec("gemini/generative_service.proto"))
SCHEMA = protojson.load([os.path.join(GDIR, f) for f in (
    "content.proto", "generative_service.proto", "safety.proto", "citation.proto", "retriever.proto",
    "model.proto", "model_service.proto")])
failures = []


def valid(msg, value, what):
    errs = SCHEMA.validate(G + msg, value)
    if errs:
        failures.append("%s: %s" % (what, errs[0][1]))
    else:
        print("ok   %s is a valid %s" % (what, msg))


def invalid(msg, value, what, expect):
    errs = SCHEMA.validate(G + msg, value)
    if not errs:
        failures.append("%s was accepted" % what)
    elif expect not in errs[0][1]:
        failures.append("%s: unexpected message %r" % (what, errs[0][1]))
    else:
        print("ok   %s is refused: %s" % (what, errs[0][1]))


def check_validator():
    parts = [{"text": "describe"}, {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}]
    valid("GenerateContentRequest", {
        "contents": [{"role": "user", "parts": parts}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": "64", "temperature": 0.2, "responseMimeType": "application/json",
                             "thinkingConfig": {"thinkingBudget": 512, "includeThoughts": False},
                             "mediaResolution": "MEDIA_RESOLUTION_LOW"},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }, "a request in lowerCamelCase")
    valid("GenerateContentRequest", {"contents": [{"parts": [{"inline_data": {"mime_type": "image/png", "data": ""}}]}],
                                     "generation_config": {"max_output_tokens": 5}}, "a request in snake_case")
    contents = [{"parts": [{"text": "x"}]}]
    invalid("GenerateContentRequest", {"contents": contents, "generationConfig": {"maxTokens": 5}},
            "an unknown field", 'Unknown name "maxTokens" at \'generation_config\'')
    invalid("GenerateContentRequest", {"contents": contents, "generationConfig": {"thinkingConfig": {"thinkingBudget": 1.5}}},
            "a fraction for an int32", "TYPE_INT32")
    invalid("GenerateContentRequest", {"contents": contents, "generationConfig": {"mediaResolution": "HIGH"}},
            "an unknown enum value", "MediaResolution")
    invalid("GenerateContentRequest", {"contents": [{"parts": [{"text": "a", "fileData": {"fileUri": "x"}}]}]},
            "two members of a oneof", "Oneof field 'data' is already set")
    invalid("GenerateContentRequest", {"contents": {"parts": []}}, "an object for a repeated field", "a list is expected")
    invalid("GenerateContentRequest", {"contents": contents, "systemInstruction": [{"parts": []}]},
            "a list for a single field", "cannot start list")
    invalid("GenerateContentRequest", {"contents": [{"parts": [{"inlineData": {"data": "not base64!"}}]}]},
            "bytes that are not base64", "TYPE_BYTES")


def call(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          "x-goog-api-key": "AIza-test"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check_server(base):
    body = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    st, text = call(base + "/v1beta/models/gemini-3.5-flash:generateContent", body)
    valid("GenerateContentResponse", json.loads(text), "the generateContent reply")
    st, text = call(base + "/v1beta/models/gemini-3.5-flash:streamGenerateContent?alt=sse", body)
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if len(events) < 2:
        failures.append("stream: %d events" % len(events))
    for i, e in enumerate(events):
        valid("GenerateContentResponse", json.loads(e), "stream event %d" % (i + 1))
    st, text = call(base + "/v1beta/models/gemini-3.5-flash:generateContent",
                    dict(body, generationConfig={"maxOutputTokens": 50}))
    v = json.loads(text)
    valid("GenerateContentResponse", v, "a reply cut off by thinking")
    if v["candidates"][0].get("finishReason") != "MAX_TOKENS" or "parts" in v["candidates"][0]["content"]:
        failures.append("cut off by thinking: %s" % text)
    st, text = call(base + "/v1beta/models?pageSize=1000")
    models = json.loads(text)
    valid("ListModelsResponse", models, "the model list")
    names = [m["name"] for m in models["models"]]
    if "models/gemini-3.5-flash" not in names or "models/gemini-2.0-flash" in names:
        failures.append("catalogue: %s" % names)
    st, text = call(base + "/v1beta/models/gemini-3.5-flash")
    valid("Model", json.loads(text), "GET models/gemini-3.5-flash")
    st, text = call(base + "/v1beta/models/gemini-2.0-flash:generateContent", body)
    err = json.loads(text)["error"]
    if st != 404 or err["status"] != "NOT_FOUND" or "Call ListModels" not in err["message"]:
        failures.append("gemini-2.0-flash: %s %s" % (st, text))
    else:
        print("ok   gemini-2.0-flash: 404 NOT_FOUND, %s" % err["message"][:60])


def main():
    check_validator()
    with fakeserver.running() as base:
        check_server(base)
    if failures:
        for f in failures:
            print("FAIL", f)
        sys.exit(1)
    print("the Gemini validator and the server's replies match the protos")


if __name__ == "__main__":
    main()
