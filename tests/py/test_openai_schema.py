# Validates the openai provider's requests, and the fake server's replies, against OpenAI's
# official OpenAPI description (../shared/specs/openai-openapi.json; see
# tests/fakeapi/openai_spec.py for where it is looked for).
#
# 1. Runs tests/lua/provider_openai_test.lua with OPENAI_RECORD_OUT set: the fake server
#    records every request the provider made and the test writes them out.
# 2. Validates chat requests against CreateChatCompletionRequest and transcription requests
#    (multipart fields turned into an object) against CreateTranscriptionRequest, and checks
#    that none carries a field the spec marks deprecated (max_tokens, ...).
# 3. Asks the fake server directly and validates its replies against
#    CreateChatCompletionResponse, CreateChatCompletionStreamResponse, the transcription
#    responses of each format (verbose_json, json, diarized_json) and ListModelsResponse, so
#    the provider is tested on realistic replies.
# 4. Checks that broken requests do fail validation (the test can fail).
import io
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
import wave

import jsonschema

SRC = os.environ.get("SLUICE_SOURCE_DIR", os.getcwd())
BIN = os.environ.get("SLUICE_BIN", os.path.join(SRC, "build", "sluice"))
sys.path.insert(0, os.path.join(SRC, "tests", "fakeapi"))
import fakeserver  # noqa: E402
import openai_spec  # noqa: E402  (the fake server validates with the same module)

SPEC = openai_spec.load()
failures = []


def errors(name, instance):
    return SPEC.errors(name, instance)


def check(name, instance, what):
    errs = errors(name, instance)
    if errs:
        failures.append("%s does not validate against %s: %s" % (what, name, errs[0].message[:300]))
    else:
        print("ok   %s validates against %s" % (what, name))


def transcription_instance(mp):
    return SPEC.transcription_instance(mp)


def run_provider_test(out):
    env = dict(os.environ, OPENAI_RECORD_OUT=out, SLUICE_SOURCE_DIR=SRC)
    p = subprocess.run([BIN, "run", os.path.join(SRC, "tests/lua/provider_openai_test.lua")],
                       cwd=SRC, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit("provider_openai_test.lua failed")
    with open(out) as f:
        return json.load(f)


def post(url, body, headers=None, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": ctype, "Authorization": "Bearer sk-x-123456"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def wav_bytes(seconds):
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return b.getvalue()


def multipart(fields, files):
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields:
        out.write(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (boundary, k, v)).encode())
    for k, (fname, data, ctype) in files.items():
        out.write(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                   "Content-Type: %s\r\n\r\n" % (boundary, k, fname, ctype)).encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(("--%s--\r\n" % boundary).encode())
    return out.getvalue(), "multipart/form-data; boundary=" + boundary


def main():
    with tempfile.TemporaryDirectory() as d:
        reqs = run_provider_test(os.path.join(d, "requests.json"))
    chats = [r for r in reqs if r["path"].endswith("/chat/completions")]
    trans = [r for r in reqs if r["path"].endswith("/audio/transcriptions")]
    if len(chats) < 5 or len(trans) < 1:
        failures.append("expected recorded chat and transcription requests, got %d and %d"
                        % (len(chats), len(trans)))
    for i, r in enumerate(chats):
        check("CreateChatCompletionRequest", r["json"], "provider chat request %d" % (i + 1))
        dep = SPEC.deprecated("CreateChatCompletionRequest", r["json"])
        if dep:
            failures.append("provider chat request %d carries deprecated fields %s" % (i + 1, dep))
    for i, r in enumerate(trans):
        check("CreateTranscriptionRequest", transcription_instance(r["multipart"]),
              "provider transcription request %d" % (i + 1))
    formats = sorted({r["multipart"].get("response_format") for r in trans})
    if formats != ["diarized_json", "json", "verbose_json"]:
        failures.append("expected transcription requests in every format, got %s" % formats)

    # the test can fail: broken requests must not validate
    if not errors("CreateChatCompletionRequest", {"model": "x"}):
        failures.append("a chat request without messages validated")
    if not errors("CreateChatCompletionRequest", {"model": "x", "messages": [{"role": "user", "content": 3}]}):
        failures.append("a chat request with numeric content validated")
    if not errors("CreateTranscriptionRequest", {"model": "whisper-1", "file": "x", "format": "verbose"}):
        failures.append("a transcription request with an unknown field validated")
    if SPEC.deprecated("CreateChatCompletionRequest", {"model": "x", "messages": [{"role": "user", "content": "a"}],
                                                       "max_tokens": 5}) != ["max_tokens"]:
        failures.append("max_tokens was not found deprecated")

    # the fake server's replies have the documented shapes
    with fakeserver.running() as base:
        body = {"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hello there"}]}
        check("CreateChatCompletionResponse", json.loads(post(base + "/v1/chat/completions", body)),
              "fake chat reply")
        stream = post(base + "/v1/chat/completions",
                      dict(body, stream=True, stream_options={"include_usage": True}))
        events = [l[6:] for l in stream.split("\n") if l.startswith("data: ")]
        if events[-1] != "[DONE]":
            failures.append("fake stream does not end with [DONE]")
        for i, e in enumerate(events[:-1]):
            check("CreateChatCompletionStreamResponse", json.loads(e), "fake stream chunk %d" % (i + 1))
        data, ctype = multipart([("model", "whisper-1"), ("response_format", "verbose_json"),
                                 ("timestamp_granularities[]", "segment"),
                                 ("timestamp_granularities[]", "word")],
                                {"file": ("a.wav", wav_bytes(4.0), "audio/wav")})
        v = json.loads(post(base + "/v1/audio/transcriptions", data, ctype=ctype))
        check("CreateTranscriptionResponseVerboseJson", v, "fake transcription reply")
        if abs(v["duration"] - 4.0) > 0.01 or not v.get("words"):
            failures.append("fake transcription: duration %s, words %s" % (v["duration"], bool(v.get("words"))))
        for model, fmt, schema in (("gpt-transcribe", "json", "CreateTranscriptionResponseJson"),
                                   ("gpt-4o-transcribe", "json", "CreateTranscriptionResponseJson"),
                                   ("gpt-4o-transcribe-diarize", "diarized_json",
                                    "CreateTranscriptionResponseDiarizedJson")):
            data, ctype = multipart([("model", model), ("response_format", fmt)],
                                    {"file": ("a.wav", wav_bytes(6.0), "audio/wav")})
            check(schema, json.loads(post(base + "/v1/audio/transcriptions", data, ctype=ctype)),
                  "fake %s reply of %s" % (fmt, model))
        # a json-only model refuses verbose_json, as documented
        data, ctype = multipart([("model", "gpt-4o-transcribe"), ("response_format", "verbose_json")],
                                {"file": ("a.wav", wav_bytes(2.0), "audio/wav")})
        try:
            post(base + "/v1/audio/transcriptions", data, ctype=ctype)
            failures.append("gpt-4o-transcribe answered a verbose_json request")
        except urllib.error.HTTPError as e:
            err = json.loads(e.read())["error"]
            if e.code != 400 or err["param"] != "response_format":
                failures.append("gpt-4o-transcribe verbose_json: %s %s" % (e.code, err))
        req = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer sk-x-123456"})
        with urllib.request.urlopen(req, timeout=30) as r:
            models = json.loads(r.read())
        check("ListModelsResponse", models, "fake model list")
        dates = {m["id"]: m.get("shutdown_date") for m in models["data"]}
        if dates.get("gpt-4o-mini") != "2027-01-14" or dates.get("whisper-1") != "2027-02-26":
            failures.append("model list shutdown dates: %s" % dates)

    if failures:
        for f in failures:
            print("FAIL", f)
        sys.exit(1)
    print("all requests and replies match the OpenAI spec (jsonschema %s)" % jsonschema.__version__
          if hasattr(jsonschema, "__version__") else "all ok")


if __name__ == "__main__":
    main()
