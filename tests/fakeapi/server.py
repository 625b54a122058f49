#!/usr/bin/python3
"""fakeapi: a local stand-in for the remote AI services sluice talks to.

It speaks the documented wire formats of OpenAI's chat completions, audio transcriptions
and model list (also what Ollama, vLLM and llama.cpp serve), Google Gemini's
generateContent / streamGenerateContent and model list, and NAVER CLOVA Speech long-form
recognition (POST {invoke}/recognizer/upload), with realistic bodies. OpenAI requests are
validated against the component schemas of OpenAI's OpenAPI description and Gemini requests
against the protos' JSON mapping (../shared/specs); the models, their lifecycles and their
rules (reasoning models, transcription formats, thinking) are in vendors.py. On request it adds latency,
429s with Retry-After, 5xx, hangs, dropped connections, truncated or malformed JSON, a
fixed requests-per-minute limit and a concurrency limit. It records every request so
tests can check what was sent and count calls.

Usage: /usr/bin/python3 tests/fakeapi/server.py [--port 0] [--latency S] [--rpm N]
Prints the port it listens on (one line, the number) once it accepts connections.
The control API is documented in docs/providers.md.
"""
import argparse
import asyncio
import io
import json
import random
import sys
import time
import os
import wave

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import openai_spec  # noqa: E402
import protojson  # noqa: E402
import vendors  # noqa: E402

GEMINI = "google.ai.generativelanguage.v1beta."
GEMINI_PROTOS = ("content.proto", "generative_service.proto", "safety.proto", "citation.proto",
                 "retriever.proto", "model.proto", "model_service.proto")

OPENAI_PREFIXES = ("/v1", "/openai/v1")


def now():
    return time.monotonic()


class State:
    def __init__(self, args):
        self.base = {
            "latency": args.latency,
            "rpm": args.rpm,
            "window": 60.0,
            "concurrency": 0,
            "stream_delay": 0.02,
            "reply": None,
            "record": not args.no_record,
            "page_size": 50,  # Gemini's ListModels page size when the client asks for none
        }
        self.reset()

    def reset(self):
        self.settings = dict(self.base)
        self.faults = []  # {"kind", "arg", "path", "count"}
        self.requests = []
        self.events = []
        self.hits = []  # monotonic times of requests counted by the rpm limit
        self.in_flight = 0
        self.max_in_flight = 0
        self.limited = 0  # 429s sent by the rpm / concurrency limits
        self.seq = 0
        self.injected = {}  # fault kind -> how many were sent (counted with or without record)
        self.rng = random.Random(0)  # for faults with a rate (POST /_control {"seed": N})

    def take_fault(self, path):
        for f in self.faults:
            if f.get("path") and not path.startswith(f["path"]):
                continue
            f["seen"] = f.get("seen", 0) + 1
            if f.get("every") and f["seen"] % f["every"] != 0:
                continue
            if f.get("rate") is not None and self.rng.random() >= f["rate"]:
                continue
            if not f.get("forever"):
                f["count"] -= 1
                if f["count"] <= 0:
                    self.faults.remove(f)
            return f["kind"], f.get("arg")
        return None, None


def parse_fault(text):
    kind, _, arg = text.partition(":")
    return kind.strip(), (arg.strip() or None)


def openai_error(status, message, etype, code=None, param=None):
    return web.json_response(
        {"error": {"message": message, "type": etype, "param": param, "code": code}}, status=status)


def gemini_error(status, message, sstatus, details=None):
    e = {"code": status, "message": message, "status": sstatus}
    if details:
        e["details"] = details
    return web.json_response({"error": e}, status=status)


def provider_of(path):
    if path.startswith("/v1beta") or path.startswith("/gemini"):
        return "gemini"
    if "/recognizer/" in path:
        return "clova"
    return "openai"


def error_response(path, status, message, headers=None):
    prov = provider_of(path)
    if prov == "gemini":
        names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT",
                 401: "UNAUTHENTICATED", 408: "DEADLINE_EXCEEDED", 409: "ABORTED"}
        r = gemini_error(status, message, names.get(status, "UNKNOWN"))
    elif prov == "clova":
        r = web.json_response({"result": "FAILED", "message": message, "code": str(status)}, status=status)
    else:
        types = {429: "rate_limit_exceeded", 400: "invalid_request_error", 401: "invalid_request_error"}
        r = openai_error(status, message, types.get(status, "server_error"))
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


async def read_body(request):
    """Returns a JSON-friendly record of the request body."""
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        fields = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            data = await part.read(decode=False)
            if part.filename is not None:
                value = {"filename": part.filename, "content_type": part.headers.get("Content-Type"),
                         "size": len(data), "_data": data}
            else:
                value = data.decode("utf-8", "replace")
            if part.name in fields:  # a repeated field (timestamp_granularities[]) becomes a list
                prev = fields[part.name]
                fields[part.name] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                fields[part.name] = value
        return {"multipart": fields}
    raw = await request.read()
    if ctype == "application/json" or (raw[:1] in (b"{", b"[")):
        try:
            return {"json": json.loads(raw), "size": len(raw)}
        except ValueError:
            return {"raw": raw.decode("utf-8", "replace")[:2000], "size": len(raw), "invalid_json": True}
    return {"raw": raw.decode("utf-8", "replace")[:2000], "size": len(raw)}


def public(record):
    """The recorded request without file contents (those are summarised by size)."""
    out = dict(record)
    mp = out.get("multipart")
    if mp:
        out["multipart"] = {k: ({kk: vv for kk, vv in v.items() if kk != "_data"}
                                if isinstance(v, dict) else v) for k, v in mp.items()}
    return out


def words_of(text):
    return [w for w in text.replace("\n", " ").split(" ") if w]


def last_user_text(messages):
    for m in reversed(messages or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c, 0
            texts, images = [], 0
            for part in c or []:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images += 1
            return " ".join(texts), images
    return "", 0


def wav_duration(data):
    try:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / float(w.getframerate())
    except Exception:
        return None


def transcript_segments(duration):
    n = max(1, int(duration // 2.5) + (1 if duration % 2.5 > 0.01 else 0))
    segs, words = [], []
    for i in range(n):
        start = round(i * 2.5, 2)
        end = round(min(duration, (i + 1) * 2.5), 2)
        text = f" segment {i} of the fake transcript."
        segs.append({"id": i, "seek": 0, "start": start, "end": end, "text": text,
                     "tokens": [50364 + i, 440, 7534], "temperature": 0.0, "avg_logprob": -0.25,
                     "compression_ratio": 1.2, "no_speech_prob": 0.01})
        ws = words_of(text)
        step = (end - start) / max(1, len(ws))
        for j, w in enumerate(ws):
            words.append({"word": w, "start": round(start + j * step, 3),
                          "end": round(start + (j + 1) * step, 3)})
    return segs, words


class Disconnected(Exception):
    pass


async def pause(request, seconds):
    """Sleeps, but notices a client that went away (aiohttp 3.8 does not cancel handlers)."""
    end = now() + seconds
    while True:
        tr = request.transport
        if tr is None or tr.is_closing():
            raise Disconnected()
        left = end - now()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.02))


class App:
    def __init__(self, args):
        self.state = State(args)
        openai_spec.load()  # fails at once when the spec is missing
        gdir = os.environ.get("GEMINI_PROTO_DIR") or os.path.dirname(
            openai_spec.find_spec("gemini/generative_service.proto"))
        self.protos = protojson.load([os.path.join(gdir, f) for f in GEMINI_PROTOS])
        self.app = web.Application(client_max_size=1024 ** 3)
        r = self.app.router
        r.add_post("/_control", self.control)
        r.add_post("/_reset", self.reset)
        r.add_get("/_requests", self.get_requests)
        r.add_get("/_events", self.get_events)
        r.add_get("/_stats", self.get_stats)
        r.add_route("*", "/{tail:.*}", self.dispatch)

    # ---- control ----------------------------------------------------------------------
    async def control(self, request):
        body = await request.json()
        s = self.state
        for k in ("latency", "rpm", "window", "concurrency", "stream_delay", "reply", "record", "page_size"):
            if k in body:
                s.settings[k] = body[k]
        if "seed" in body:
            s.rng = random.Random(body["seed"])
        for f in body.get("faults", []):
            kind, arg = parse_fault(f["kind"]) if isinstance(f, dict) else parse_fault(f)
            if isinstance(f, dict) and f.get("arg") is not None:
                arg = str(f["arg"])
            d = f if isinstance(f, dict) else {}
            s.faults.append({"kind": kind, "arg": arg, "path": d.get("path"),
                             "count": int(d.get("count", 1)),
                             # every matching request (until /_reset), every Nth one, or each
                             # one with a probability (the server's seeded generator)
                             "forever": bool(d.get("forever")), "every": int(d.get("every") or 0),
                             "rate": float(d["rate"]) if d.get("rate") is not None else None})
        if "rpm" in body or "window" in body:
            s.hits = []
        return web.json_response({"ok": True, "settings": s.settings, "faults": len(s.faults)})

    async def reset(self, request):
        self.state.reset()
        return web.json_response({"ok": True})

    async def get_requests(self, request):
        prefix = request.query.get("path", "")
        reqs = [public(r) for r in self.state.requests if r["path"].startswith(prefix)]
        return web.json_response({"count": len(reqs), "requests": reqs})

    async def get_events(self, request):
        return web.json_response({"events": self.state.events})

    async def get_stats(self, request):
        s = self.state
        return web.json_response({"requests": len(s.requests), "max_in_flight": s.max_in_flight,
                                  "in_flight": s.in_flight, "limited": s.limited,
                                  "received": s.seq, "injected": s.injected})

    # ---- every API request ------------------------------------------------------------
    async def dispatch(self, request):
        s = self.state
        s.seq += 1
        rec = {"seq": s.seq, "t": time.time(), "method": request.method, "path": request.path,
               "query": dict(request.query), "headers": dict(request.headers)}
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            try:
                rec.update(await read_body(request))
            except Exception as e:  # a body we cannot parse is recorded, not fatal
                rec["body_error"] = str(e)
            if s.settings.get("record", True):
                s.requests.append(rec)
            return await self.handle(request, rec)
        except (asyncio.CancelledError, Disconnected, ConnectionResetError) as e:
            s.events.append({"event": "disconnected", "path": request.path, "seq": rec["seq"],
                             "t": time.time()})
            if isinstance(e, asyncio.CancelledError):
                raise
            raise asyncio.CancelledError()
        finally:
            s.in_flight -= 1

    async def handle(self, request, rec):
        s = self.state
        path = request.path
        kind, arg = s.take_fault(path)
        hdr = request.headers.get("X-Fake-Fault")
        if hdr and not kind:
            kind, arg = parse_fault(hdr)
        latency = float(request.headers.get("X-Fake-Latency", s.settings["latency"] or 0))
        if kind == "latency":
            latency = float(arg or 1)
            kind = None
        if kind:
            label = kind + (":" + arg if arg and kind == "429" else "")
            s.injected[label] = s.injected.get(label, 0) + 1

        # limits are checked on arrival, like a real gateway
        if s.settings.get("concurrency") and s.in_flight > int(s.settings["concurrency"]):
            s.limited += 1
            return error_response(path, 429, "Too many concurrent requests (fake limit %d)"
                                  % int(s.settings["concurrency"]), {"Retry-After": "1"})
        rpm = s.settings.get("rpm")
        if rpm and not path.startswith("/files/"):
            window = float(s.settings.get("window") or 60)
            t = now()
            s.hits = [h for h in s.hits if h > t - window]
            if len(s.hits) >= int(rpm):
                s.limited += 1
                wait = max(0.0, s.hits[0] + window - t)
                return error_response(path, 429, "Rate limit reached for requests (fake limit %d per %gs)"
                                      % (int(rpm), window), {"Retry-After": "%.3f" % wait,
                                                             "x-ratelimit-limit-requests": str(rpm),
                                                             "x-ratelimit-remaining-requests": "0",
                                                             "x-ratelimit-reset-requests": "%.3fs" % wait})
            s.hits.append(t)
            rec["rate_headers"] = {"x-ratelimit-limit-requests": str(rpm),
                                   "x-ratelimit-remaining-requests": str(int(rpm) - len(s.hits))}

        if latency > 0:
            await pause(request, latency)

        if kind == "429":
            if provider_of(path) == "gemini":
                # Gemini says when to retry in the body (google.rpc.RetryInfo), not in a header
                body = {"error": {"code": 429, "message": "Resource has been exhausted (injected)",
                                  "status": "RESOURCE_EXHAUSTED"}}
                if arg:
                    body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                 "retryDelay": "%ss" % arg}]
                return web.json_response(body, status=429)
            h = {"Retry-After": arg} if arg else {}
            return error_response(path, 429, "Rate limit reached (injected)", h)
        if kind == "401" and provider_of(path) == "openai":
            # like OpenAI, echo (part of) the key that was sent: clients must not log it
            key = request.headers.get("Authorization", "").replace("Bearer ", "")
            return openai_error(401, "Incorrect API key provided: %s. You can find your API key "
                                "at https://platform.openai.com/account/api-keys." % key,
                                "invalid_request_error", "invalid_api_key")
        if kind in ("500", "502", "503", "400", "401", "404", "408", "409", "422"):
            return error_response(path, int(kind), "Injected error %s" % kind)
        if kind == "hang":
            await pause(request, float(arg or 3600))
        if kind == "drop":
            request.transport.abort()
            await asyncio.sleep(5)
            return web.Response(status=500)

        if kind == "huge":
            return await self.huge(request, int(float(arg or 2 ** 30)))
        if kind == "endless":
            return await self.endless(request)

        rec["fault"] = kind
        resp = await self.route(request, rec)
        if kind in ("truncate", "malformed", "cut") and isinstance(resp, web.Response) and resp.body:
            body = bytes(resp.body)
            if kind == "malformed":  # "cut" of a plain body is a truncation
                bad = body[: max(1, len(body) // 2)] + b"}}]"
                return web.Response(status=200, body=bad, content_type="application/json")
            out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            out.content_length = len(body)
            await out.prepare(request)
            await out.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            request.transport.abort()
            return out
        rh = rec.get("rate_headers")
        if rh and isinstance(resp, web.Response):
            for k, v in rh.items():
                resp.headers[k] = v
        return resp

    async def route(self, request, rec):
        path = request.path
        for p in OPENAI_PREFIXES:
            if path == p + "/models" or path.startswith(p + "/models/"):
                return self.openai_models(request, rec)
            if path.startswith(p + "/chat/completions"):
                return await self.openai_chat(request, rec)
            if path.startswith(p + "/audio/transcriptions"):
                return self.openai_transcription(request, rec)
        if ":generateContent" in path or ":streamGenerateContent" in path:
            return await self.gemini(request, rec)
        if path == "/v1beta/models" or (path.startswith("/v1beta/models/") and ":" not in path):
            return self.gemini_models(request, rec)
        if path.endswith("/recognizer/upload"):
            return self.clova(request, rec)
        if path.startswith("/echo"):
            return web.json_response(public(rec))
        if path.startswith("/bytes/"):
            return await self.bytes(request)
        if path.startswith("/status/"):
            return web.Response(status=int(path.split("/")[2]), text="status page\n")
        if path.startswith("/sse"):
            return await self.sse(request)
        if path == "/redirect/loop":
            return web.Response(status=302, headers={"Location": "/redirect/loop"})
        if path.startswith("/html"):
            return web.Response(text="<!DOCTYPE html><html><head><title>Episode</title></head>"
                                "<body><p>This episode has moved.</p></body></html>\n", content_type="text/html")
        if path == "/ok" or path == "/":
            return web.Response(text="ok")
        return web.json_response({"error": {"message": "no route " + path}}, status=404)

    # ---- generic endpoints ------------------------------------------------------------
    async def bytes(self, request):
        n = int(request.path.split("/")[2])
        delay = float(request.query.get("delay", 0))
        chunk = int(request.query.get("chunk", 65536))
        data = bytes((i * 7 + 3) % 251 for i in range(min(n, 251))) * (n // 251 + 1)
        data = data[:n]
        start = 0
        status = 200
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        rng = request.headers.get("Range")
        if rng and rng.startswith("bytes=") and not request.query.get("norange"):
            start = int(rng[6:].split("-")[0] or 0)
            if start >= n:
                return web.Response(status=416, headers={"Content-Range": "bytes */%d" % n})
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, n - 1, n)
        body = data[start:]
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), chunk):
            await resp.write(body[i:i + chunk])
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    async def huge(self, request, n):
        """200 with a JSON reply of n bytes (one long string), sent as it is made."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = n
        await resp.prepare(request)
        head = b'{"choices": [{"message": {"role": "assistant", "content": "'
        await resp.write(head)
        block = b"ha " * 21845
        left = n - len(head) - 4
        while left > 0:
            await resp.write(block[:left])
            left -= len(block)
        await resp.write(b'"}}]')
        await resp.write_eof()
        return resp

    async def endless(self, request):
        """An OpenAI-style chat stream that never ends: a delta after another, no delay."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        c = {"id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "endless", "choices": [{"index": 0, "delta": {"content": " ha"}, "finish_reason": None}]}
        ev = ("data: " + json.dumps(c) + "\n\n").encode() * 64
        while True:
            await resp.write(ev)

    async def sse(self, request):
        n = int(request.query.get("n", 5))
        delay = float(request.query.get("delay", self.state.settings["stream_delay"]))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(("data: {\"i\": %d}\n\n" % i).encode())
            await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    # ---- OpenAI -------------------------------------------------------------------------
    def openai_auth(self, request):
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return openai_error(401, "You didn't provide an API key.", "invalid_request_error")
        return None

    def openai_models(self, request, rec):
        """GET /v1/models (ListModelsResponse) and GET /v1/models/{id} (Model)."""
        bad = self.openai_auth(request)
        if bad is not None:
            return bad
        rest = request.path.split("/models", 1)[1].strip("/")
        if rest:
            m = vendors.openai_model(rest)
            if not m:
                return openai_error(404, "The model '%s' does not exist" % rest, "invalid_request_error",
                                    "model_not_found", "model")
            return web.json_response(m)
        return web.json_response({"object": "list", "data": vendors.openai_catalogue()})

    def openai_invalid(self, errs):
        e = errs[0]
        param = ".".join(str(p) for p in e.path) or None
        return openai_error(400, "Invalid request: %s%s" % (("'%s': " % param) if param else "",
                                                            e.message[:300]),
                            "invalid_request_error", "invalid_value" if param else None, param)

    def openai_model_check(self, model, chat):
        if not vendors.openai_model(model):
            return openai_error(404, "The model `%s` does not exist or you do not have access to it." % model,
                                "invalid_request_error", "model_not_found")
        if chat and not vendors.is_chat(model):
            return openai_error(404, "This is not a chat model and thus not supported in the "
                                "v1/chat/completions endpoint.", "invalid_request_error", "model_not_found")
        if not chat and vendors.base_model(model) not in vendors.TRANSCRIBE:
            return openai_error(400, "Model %s does not support audio transcription." % model,
                                "invalid_request_error", "unsupported_model", "model")
        return None

    def reasoning_rules(self, body):
        """400 for what a reasoning model refuses, as OpenAI words it; None when all is well."""
        model = body["model"]
        if vendors.is_reasoning(model):
            if "max_tokens" in body:
                return openai_error(400, "Unsupported parameter: 'max_tokens' is not supported with this "
                                    "model. Use 'max_completion_tokens' instead.", "invalid_request_error",
                                    "unsupported_parameter", "max_tokens")
            for name in ("temperature", "top_p"):
                v = body.get(name)
                if v is not None and v != 1:
                    return openai_error(400, "Unsupported value: '%s' does not support %s with this model. "
                                        "Only the default (1) value is supported." % (name, json.dumps(v)),
                                        "invalid_request_error", "unsupported_value", name)
        elif body.get("reasoning_effort") is not None:
            return openai_error(400, "Unsupported parameter: 'reasoning_effort' is not supported with this "
                                "model.", "invalid_request_error", "unsupported_parameter", "reasoning_effort")
        return None

    async def openai_chat(self, request, rec):
        bad = self.openai_auth(request)
        if bad is not None:
            return bad
        body = rec.get("json")
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        spec = openai_spec.load()
        errs = spec.errors("CreateChatCompletionRequest", body)
        if errs:
            return self.openai_invalid(errs)
        rec["deprecated"] = spec.deprecated("CreateChatCompletionRequest", body)
        # (aiohttp responses are empty mappings, hence false: compare with None)
        for check in (lambda: self.openai_model_check(body["model"], True), lambda: self.reasoning_rules(body)):
            bad = check()
            if bad is not None:
                return bad
        text, images = last_user_text(body["messages"])
        reply = self.state.settings.get("reply") or request.headers.get("X-Fake-Reply")
        rf = body.get("response_format") or {}
        if not reply:
            if rf.get("type") in ("json_object", "json_schema"):
                reply = json.dumps({"score": 0.8, "reasons": ["covers the main points",
                                                              "fake judge reply"]})
            elif images:
                reply = "A frame showing %d image(s): a person next to a bottle on a table." % images
            else:
                reply = "This is a fake reply about: " + " ".join(words_of(text)[:12])
        # A reasoning model thinks first; its reasoning tokens count against
        # max_completion_tokens, so a small budget can leave nothing for the answer.
        reasoning = 0
        if vendors.is_reasoning(body["model"]):
            reasoning = vendors.REASONING_TOKENS[body.get("reasoning_effort") or "medium"]
        budget = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if budget is not None and reasoning + len(words_of(reply)) > budget:
            finish = "length"
            reasoning = min(reasoning, budget)
            reply = " ".join(reply.split(" ")[:budget - reasoning]) if budget > reasoning else ""
        prompt_tokens = max(1, len(json.dumps(body["messages"])) // 4)
        completion_tokens = len(words_of(reply)) + reasoning
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "completion_tokens_details": {"reasoning_tokens": reasoning}}
        cid = "chatcmpl-fake%06d" % rec["seq"]
        created = int(time.time())
        model = body["model"]
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            delay = float(self.state.settings["stream_delay"])

            def chunk(delta, finish=None, usage_v=None, choices=True):
                c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": "fp_fake",
                     "choices": ([{"index": 0, "delta": delta, "logprobs": None,
                                   "finish_reason": finish}] if choices else [])}
                if usage_v is not None:
                    c["usage"] = usage_v
                return ("data: " + json.dumps(c) + "\n\n").encode()

            await resp.write(chunk({"role": "assistant", "content": ""}))
            ws = reply.split(" ") if reply else []
            for i, w in enumerate(ws):
                if rec.get("fault") == "cut" and i == len(ws) // 2:
                    request.transport.abort()  # the stream breaks half-way
                    return resp
                await resp.write(chunk({"content": (w if i == 0 else " " + w)}))
                if delay:
                    await asyncio.sleep(delay)
            await resp.write(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(chunk(None, usage_v=usage, choices=False))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })

    def openai_transcription(self, request, rec):
        bad = self.openai_auth(request)
        if bad is not None:
            return bad
        mp = rec.get("multipart") or {}
        f = mp.get("file")
        if not isinstance(f, dict) or not mp.get("model"):
            return openai_error(400, "Invalid request: 'file' and 'model' are required",
                                "invalid_request_error")
        spec = openai_spec.load()
        errs = spec.errors("CreateTranscriptionRequest", spec.transcription_instance(mp))
        if errs:
            return self.openai_invalid(errs)
        model = mp["model"]
        bad = self.openai_model_check(model, False)
        if bad is not None:
            return bad
        caps = vendors.TRANSCRIBE[vendors.base_model(model)]
        fmt = mp.get("response_format", "json")
        tg = mp.get("timestamp_granularities[]")
        tg = [] if tg is None else (tg if isinstance(tg, list) else [tg])
        if fmt not in caps["formats"]:
            return openai_error(400, "Unsupported value: 'response_format' does not support '%s' with this "
                                "model. Supported values are: %s." % (fmt, ", ".join("'%s'" % x for x in caps["formats"])),
                                "invalid_request_error", "unsupported_value", "response_format")
        if caps.get("diarize"):
            for name in ("prompt", "include[]", "timestamp_granularities[]"):
                if name in mp:
                    return openai_error(400, "Unsupported parameter: '%s' is not supported with this model."
                                        % name.rstrip("[]"), "invalid_request_error", "unsupported_parameter",
                                        name.rstrip("[]"))
        elif tg:
            if fmt != "verbose_json":
                return openai_error(400, "Invalid value: 'timestamp_granularities' requires response_format "
                                    "'verbose_json'.", "invalid_request_error", "invalid_value",
                                    "timestamp_granularities")
            for g in tg:
                if g not in caps["granularities"]:
                    return openai_error(400, "Unsupported value: 'timestamp_granularities' does not support "
                                        "'%s' with this model. Supported values are: %s." %
                                        (g, ", ".join("'%s'" % x for x in caps["granularities"])),
                                        "invalid_request_error", "unsupported_value", "timestamp_granularities")
        duration = wav_duration(f["_data"]) or 10.0
        if caps.get("diarize") and duration > 30 and not mp.get("chunking_strategy"):
            return openai_error(400, "chunking_strategy is required for diarization when the input is longer "
                                "than 30 seconds.", "invalid_request_error", "missing_required_parameter",
                                "chunking_strategy")
        segs, words = transcript_segments(duration)
        text = "".join(s["text"] for s in segs).strip()
        seconds = int(round(duration))
        if fmt == "text":
            return web.Response(text=text)
        if fmt == "diarized_json":
            dsegs = [{"type": "transcript.text.segment", "id": "seg_%03d" % s["id"], "start": s["start"],
                      "end": s["end"], "text": s["text"].strip(), "speaker": "AB"[(s["id"] // 2) % 2]}
                     for s in segs]
            return web.json_response({"task": "transcribe", "duration": round(duration, 3), "text": text,
                                      "segments": dsegs, "usage": {"type": "duration", "seconds": seconds}})
        if fmt != "verbose_json":
            out = {"text": text}
            if vendors.base_model(model) == "gpt-transcribe":
                out["languages"] = [{"code": "en"}]
            if model != "whisper-1":
                out["usage"] = {"type": "tokens", "input_tokens": 10 + seconds * 10,
                                "input_token_details": {"text_tokens": 10, "audio_tokens": seconds * 10},
                                "output_tokens": len(words_of(text)), "total_tokens":
                                10 + seconds * 10 + len(words_of(text))}
            return web.json_response(out)
        out = {"task": "transcribe", "language": "english", "duration": round(duration, 3),
               "text": text, "segments": segs,
               "usage": {"type": "duration", "seconds": seconds}}
        if "word" in tg:
            out["words"] = words
        return web.json_response(out)

    # ---- Gemini -------------------------------------------------------------------------
    def gemini_auth(self, request):
        if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            return gemini_error(403, "Method doesn't allow unregistered callers (callers without established "
                                "identity). Please use API Key or other form of API consumer identity to call "
                                "this API.", "PERMISSION_DENIED")
        return None

    def gemini_models(self, request, rec):
        """GET /v1beta/models (ListModelsResponse, paged) and GET /v1beta/models/{name} (Model)."""
        bad = self.gemini_auth(request)
        if bad is not None:
            return bad
        rest = request.path.split("/models", 1)[1].strip("/")
        if rest:
            m = vendors.gemini_model(rest)
            if not m:
                return gemini_error(404, "models/%s is not found for API version v1beta" % rest, "NOT_FOUND")
            return web.json_response(m)
        try:
            size = int(request.query.get("pageSize") or self.state.settings["page_size"])
            start = int(request.query.get("pageToken") or 0)
        except ValueError:
            return gemini_error(400, "Invalid page token or size.", "INVALID_ARGUMENT")
        size = max(1, min(size, 1000, int(self.state.settings["page_size"] or 50)))
        page = vendors.GEMINI_MODELS[start:start + size]
        out = {"models": page}
        if start + size < len(vendors.GEMINI_MODELS):
            out["nextPageToken"] = str(start + size)
        return web.json_response(out)

    async def gemini(self, request, rec):
        bad = self.gemini_auth(request)
        if bad is not None:
            return bad
        body = rec.get("json")
        if not isinstance(body, dict):
            return gemini_error(400, "Invalid JSON payload received. Expected an object.", "INVALID_ARGUMENT")
        errs = self.protos.validate(GEMINI + "GenerateContentRequest", body)
        if errs:
            return gemini_error(400, errs[0][1], "INVALID_ARGUMENT", [{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": f, "description": m} for f, m in errs]}])
        if not body.get("contents"):
            return gemini_error(400, "* GenerateContentRequest.contents: contents is not specified",
                                "INVALID_ARGUMENT")
        model = request.path.split("/models/")[-1].split(":")[0]
        info = vendors.gemini_model(model)
        if not info or "generateContent" not in info["supportedGenerationMethods"]:
            return gemini_error(404, "models/%s is not found for API version v1beta, or is not supported for "
                                "generateContent. Call ListModels to see the list of available models and "
                                "their supported methods." % model, "NOT_FOUND")
        gc = body.get("generationConfig") or body.get("generation_config") or {}
        tc = gc.get("thinkingConfig") or gc.get("thinking_config") or {}
        budget = tc.get("thinkingBudget", tc.get("thinking_budget"))
        if budget is not None and int(budget) == 0 and vendors.gemini_thinking_only(model):
            return gemini_error(400, "Budget 0 is invalid. This model only works in thinking mode.",
                                "INVALID_ARGUMENT")
        texts, images = [], 0
        for c in body["contents"]:
            for p in c.get("parts", []):
                if "text" in p:
                    texts.append(p["text"])
                if "inline_data" in p or "inlineData" in p:
                    images += 1
        reply = self.state.settings.get("reply") or request.headers.get("X-Fake-Reply")
        mime = gc.get("responseMimeType") or gc.get("response_mime_type")
        if not reply:
            if mime == "application/json":
                reply = json.dumps({"score": 0.7, "reasons": ["gemini fake judge"]})
            elif images:
                reply = "A frame showing %d image(s): a person next to a bottle on a table." % images
            else:
                reply = "Gemini fake reply about: " + " ".join(words_of(" ".join(texts))[:12])
        # Thinking: the thoughts count against maxOutputTokens.
        thoughts = 0
        if info.get("thinking"):
            thoughts = vendors.GEMINI_DYNAMIC_THOUGHTS if budget is None or int(budget) < 0 else int(budget)
        limit = gc.get("maxOutputTokens", gc.get("max_output_tokens"))
        finish = "STOP"
        if limit is not None and thoughts + len(words_of(reply)) > int(limit):
            finish = "MAX_TOKENS"
            thoughts = min(thoughts, int(limit))
            reply = " ".join(reply.split(" ")[:int(limit) - thoughts]) if int(limit) > thoughts else ""
        ptok = max(1, len(json.dumps(body["contents"])) // 4)
        usage = {"promptTokenCount": ptok, "candidatesTokenCount": len(words_of(reply)),
                 "totalTokenCount": ptok + len(words_of(reply)) + thoughts}
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts

        def response(text, finish):
            content = {"parts": [{"text": text}], "role": "model"} if text else {"role": "model"}
            r = {"candidates": [{"content": content, "index": 0}],
                 "usageMetadata": usage, "modelVersion": model, "responseId": "fake%06d" % rec["seq"]}
            if finish:
                r["candidates"][0]["finishReason"] = finish
            return r

        if ":streamGenerateContent" in request.path:
            if request.query.get("alt") != "sse":
                return web.json_response([response(reply, finish)])
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            ws = reply.split(" ") if reply else [""]
            delay = float(self.state.settings["stream_delay"])
            step = 2
            for i in range(0, len(ws), step):
                piece = " ".join(ws[i:i + step]) + (" " if i + step < len(ws) else "")
                last = i + step >= len(ws)
                await resp.write(("data: " + json.dumps(response(piece, finish if last else None))
                                  + "\r\n\r\n").encode())
                if delay:
                    await asyncio.sleep(delay)
            await resp.write_eof()
            return resp
        return web.json_response(response(reply, finish))

    # ---- CLOVA Speech -------------------------------------------------------------------
    def clova(self, request, rec):
        if not request.headers.get("X-CLOVASPEECH-API-KEY"):
            return web.json_response({"result": "FAILED", "message": "Invalid secret", "code": "401"},
                                     status=401)
        mp = rec.get("multipart") or {}
        media = mp.get("media")
        try:
            params = json.loads(mp.get("params") or "")
        except ValueError:
            params = None
        if not isinstance(media, dict) or not isinstance(params, dict):
            return web.json_response({"result": "FAILED", "message": "Invalid request parameters",
                                      "code": "400"}, status=400)
        if params.get("language") not in ("ko-KR", "en-US", "enko", "ja", "zh-cn", "zh-tw"):
            return web.json_response({"result": "FAILED", "message": "Invalid Language", "code": "STT005"},
                                     status=400)
        duration = wav_duration(media["_data"]) or 10.0
        segs, words = transcript_segments(duration)
        out_segs = []
        for s in segs:
            ws = [w for w in words if w["start"] >= s["start"] and w["end"] <= s["end"] + 1e-6]
            out_segs.append({
                "start": int(s["start"] * 1000), "end": int(s["end"] * 1000),
                "text": s["text"].strip(), "confidence": 0.93,
                "diarization": {"label": "1"}, "speaker": {"label": "1", "name": "A", "edited": False},
                "words": [[int(w["start"] * 1000), int(w["end"] * 1000), w["word"]] for w in ws],
                "textEdited": s["text"].strip(),
            })
        text = " ".join(s["text"] for s in out_segs)
        return web.json_response({
            "result": "COMPLETED", "message": "Succeeded", "token": "fake%06d" % rec["seq"],
            "version": "ncp_v2_fake", "params": params, "progress": 100,
            "keywordExtensions": [], "segments": out_segs, "text": text, "confidence": 0.93,
            "speakers": [{"label": "1", "name": "A", "edited": False}],
            "events": [], "eventTypes": [],
        })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--rpm", type=int, default=0)
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="and this key (PEM)")
    ap.add_argument("--no-record", action="store_true", help="do not keep requests (benchmarks)")
    args = ap.parse_args()
    app = App(args)

    async def run():
        runner = web.AppRunner(app.app, access_log=None, handle_signals=True)
        await runner.setup()
        ctx = None
        if args.tls_cert:
            import ssl
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
        site = web.TCPSite(runner, args.host, args.port, backlog=2048, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(port, flush=True)
        while True:
            await asyncio.sleep(3600)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
