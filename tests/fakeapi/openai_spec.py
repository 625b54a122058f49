"""openai_spec: OpenAI's OpenAPI description as a validator, for the fake server and the tests.

    spec = openai_spec.load()                       # finds openai-openapi.json (see find_spec)
    spec.errors("CreateChatCompletionRequest", body) -> [jsonschema.ValidationError] (sorted)
    spec.deprecated("CreateChatCompletionRequest", body) -> ["max_tokens", ...]: the fields
        of a valid instance that the spec marks `deprecated: true`
    spec.transcription_instance(multipart_fields) -> the multipart form as the JSON object
        CreateTranscriptionRequest describes (files as a placeholder string, repeated
        `name[]` fields as lists, numbers as numbers)

OpenAPI's `nullable: true` (which jsonschema ignores) is turned into "or null" first.
"""
import json
import os

from jsonschema import Draft202012Validator, RefResolver, validators

SRC = os.environ.get("SLUICE_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def find_spec(rel, env=None):
    """The path of a file under the shared specs directory: $ENV, SRC/specs/REL,
    SRC/../shared/specs/REL or /work/shared/specs/REL (the first that exists)."""
    paths = [p for p in ((os.environ.get(env) if env else None),
                         os.path.join(SRC, "specs", rel),
                         os.path.join(SRC, "..", "shared", "specs", rel),
                         os.path.join("/work/shared/specs", rel)) if p]
    for p in paths:
        if os.path.exists(p):
            return p
    raise SystemExit("%s not found%s; looked in %s" % (rel, (" (set %s)" % env) if env else "", paths))


def find():
    return find_spec("openai-openapi.json", "OPENAI_OPENAPI_SPEC")


def openapi_nullable(node):
    if isinstance(node, list):
        return [openapi_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _deprecated(validator, value, instance, schema):
    if value is True:
        from jsonschema.exceptions import ValidationError
        yield ValidationError("deprecated field", validator="deprecated")


DeprecationValidator = validators.extend(Draft202012Validator, {"deprecated": _deprecated})

# multipart fields that are numbers / lists in CreateTranscriptionRequest
NUMBER_FIELDS = {"temperature"}


class Spec:
    def __init__(self, path=None):
        with open(path or find()) as f:
            self.doc = json.load(f)
        self.doc["components"] = openapi_nullable(self.doc["components"])
        self.resolver = RefResolver.from_schema(self.doc)
        self.schemas = self.doc["components"]["schemas"]
        self._validators = {}
        self._deprecation = {}

    def validator(self, name):
        v = self._validators.get(name)
        if v is None:
            v = Draft202012Validator({"$ref": "#/components/schemas/" + name}, resolver=self.resolver)
            self._validators[name] = v
        return v

    def errors(self, name, instance):
        return sorted(self.validator(name).iter_errors(instance), key=lambda e: list(e.path))

    def deprecated(self, name, instance):
        """Names (dotted paths) of the fields of instance that the spec marks deprecated."""
        v = self._deprecation.get(name)
        if v is None:
            v = DeprecationValidator({"$ref": "#/components/schemas/" + name}, resolver=self.resolver)
            self._deprecation[name] = v
        found = []

        def walk(errs):
            for e in errs:
                if e.validator == "deprecated":
                    found.append(".".join(str(p) for p in e.absolute_path) or "(root)")
                walk(e.context or [])
        walk(v.iter_errors(instance))
        return sorted(set(found))

    @staticmethod
    def transcription_instance(mp):
        inst = {}
        for k, v in mp.items():
            if isinstance(v, dict) and "filename" in v:
                inst[k] = "<binary %d bytes>" % v.get("size", 0)
                continue
            if k.endswith("[]"):
                inst[k[:-2]] = v if isinstance(v, list) else [v]
            elif k in NUMBER_FIELDS:
                try:
                    inst[k] = float(v)
                except ValueError:
                    inst[k] = v
            else:
                inst[k] = v
        return inst


_spec = None


def load():
    global _spec
    if _spec is None:
        _spec = Spec()
    return _spec
