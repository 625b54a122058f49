"""protojson: checks JSON against protocol buffer message definitions, as Google's REST
front ends do (the proto3 JSON mapping: https://protobuf.dev/programming-guides/json/).

It reads the .proto files themselves (no protoc, no generated code): messages, nested
messages and enums, oneofs, maps, `json_name` options. A JSON object is valid for a message
when every key names one of its fields (by its lowerCamelCase JSON name or its original
snake_case name), every value has the field's type (numbers for int32 and float, strings or
numbers for 64-bit integers, base64 for bytes, enum value names or numbers, lists for
repeated fields, objects for maps and messages), and at most one field of each oneof is set.
The well-known types google.protobuf.Value/Struct/ListValue/Duration/Timestamp/FieldMask/
Empty/Any have their special JSON forms; a message type from a file that is not loaded is
accepted as any object.

    schema = protojson.load(["/path/gemini/content.proto", ...])
    errs = schema.validate("google.ai.generativelanguage.v1beta.GenerateContentRequest", body)
    # [] or [(field_path, message)], messages worded as Google's: 'Invalid JSON payload
    # received. Unknown name "foo" at 'generation_config': Cannot find field.'
"""
import base64
import re

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}
INT32 = {"int32", "uint32", "sint32", "fixed32", "sfixed32"}
INT64 = {"int64", "uint64", "sint64", "fixed64", "sfixed64"}
TYPE_NAMES = {  # how Google names the type in 'Invalid value' messages
    "double": "TYPE_DOUBLE", "float": "TYPE_FLOAT", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "sint32": "TYPE_SINT32", "sint64": "TYPE_SINT64",
    "fixed32": "TYPE_FIXED32", "fixed64": "TYPE_FIXED64", "sfixed32": "TYPE_SFIXED32",
    "sfixed64": "TYPE_SFIXED64", "bool": "TYPE_BOOL", "string": "TYPE_STRING", "bytes": "TYPE_BYTES",
}
WELL_KNOWN = {
    "google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue",
    "google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask",
    "google.protobuf.Empty", "google.protobuf.Any",
}

TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|(?P<num>-?\d[\w.+-]*)|'
                   r'(?P<id>[A-Za-z_.][\w.]*)|(?P<sym>[{}\[\]()<>=;,:]))')


def json_name(name):
    """protoc's default JSON name: snake_case -> lowerCamelCase."""
    out, up = [], False
    for ch in name:
        if ch == "_":
            up = True
        elif up:
            out.append(ch.upper())
            up = False
        else:
            out.append(ch)
    return "".join(out)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def tokenize(text):
    toks, pos = [], 0
    text = strip_comments(text)
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise ValueError("proto: cannot read %r" % text[pos:pos + 40])
        pos = m.end()
        for kind in ("str", "num", "id", "sym"):
            if m.group(kind) is not None:
                toks.append((kind, m.group(kind)))
                break
    return toks


class Field:
    def __init__(self, name, ftype, label, number, options, oneof=None, key_type=None):
        self.name, self.type, self.label, self.number = name, ftype, label, number
        self.json = options.get("json_name") or json_name(name)
        self.oneof = oneof
        self.key_type = key_type  # map fields: the key's type; self.type is the value's
        self.resolved = None  # full name of a message or enum type


class Message:
    def __init__(self, full):
        self.full = full
        self.fields = []
        self.by_key = {}


class Enum:
    def __init__(self, full):
        self.full = full
        self.values = {}


class Parser:
    def __init__(self, toks):
        self.toks, self.i = toks, 0

    def peek(self, k=0):
        return self.toks[self.i + k][1] if self.i + k < len(self.toks) else None

    def next(self):
        t = self.toks[self.i][1]
        self.i += 1
        return t

    def expect(self, v):
        t = self.next()
        if t != v:
            raise ValueError("proto: expected %r, got %r" % (v, t))

    def skip_statement(self):
        depth = 0
        while True:
            t = self.next()
            if t == "{":
                depth += 1
            elif t == "}":
                depth -= 1
                if depth == 0:
                    if self.peek() == ";":
                        self.next()
                    return
            elif t == ";" and depth == 0:
                return

    def options(self):
        """[a = b, (x.y) = {...}] -> {'json_name': ...} (the others are skipped)."""
        opts = {}
        if self.peek() != "[":
            return opts
        self.next()
        depth = 1
        name = None
        while depth:
            t = self.next()
            if t in ("[", "{"):
                depth += 1
            elif t in ("]", "}"):
                depth -= 1
            elif t == "json_name" and depth == 1:
                name = t
            elif t == "=" and name:
                v = self.next()
                opts[name] = v.strip("\"'")
                name = None
        return opts


def parse_file(text, schema):
    p = Parser(tokenize(text))
    package = ""
    while p.peek() is not None:
        t = p.peek()
        if t == "package":
            p.next()
            package = p.next()
            p.expect(";")
        elif t == "message":
            parse_message(p, package, schema, package)
        elif t == "enum":
            parse_enum(p, package, schema)
        else:  # syntax, import, option, service, extend
            p.skip_statement()


def parse_enum(p, scope, schema):
    p.expect("enum")
    e = Enum(scope + "." + p.next())
    p.expect("{")
    while p.peek() != "}":
        t = p.next()
        if t in ("option", "reserved"):
            p.i -= 1
            p.skip_statement()
            continue
        p.expect("=")
        num = int(p.next())
        p.options()
        p.expect(";")
        e.values[t] = num
    p.next()
    schema.enums[e.full] = e
    schema.scopes[e.full] = scope


def parse_message(p, scope, schema, package):
    p.expect("message")
    m = Message(scope + "." + p.next())
    p.expect("{")
    fields_of(p, m, schema, package, None)
    schema.messages[m.full] = m
    schema.scopes[m.full] = scope


def fields_of(p, m, schema, package, oneof):
    while p.peek() != "}":
        t = p.peek()
        if t == "message":
            parse_message(p, m.full, schema, package)
        elif t == "enum":
            parse_enum(p, m.full, schema)
        elif t in ("option", "reserved", "extensions", "extend"):
            p.skip_statement()
        elif t == "oneof":
            p.next()
            name = p.next()
            p.expect("{")
            fields_of(p, m, schema, package, name)
        elif t == "map":
            p.next()
            p.expect("<")
            kt = p.next()
            p.expect(",")
            vt = p.next()
            p.expect(">")
            name = p.next()
            p.expect("=")
            num = int(p.next())
            opts = p.options()
            p.expect(";")
            add_field(m, Field(name, vt, "map", num, opts, oneof, kt))
        else:
            label = "single"
            if t in ("optional", "repeated", "required"):
                label = p.next()
            ftype = p.next()
            name = p.next()
            p.expect("=")
            num = int(p.next())
            opts = p.options()
            p.expect(";")
            # proto3 `optional` is a one-field oneof of its own: no clash with other fields
            add_field(m, Field(name, ftype, "repeated" if label == "repeated" else "single", num,
                               opts, oneof))
    p.next()


def add_field(m, f):
    m.fields.append(f)
    m.by_key[f.name] = f
    m.by_key[f.json] = f


class Schema:
    def __init__(self):
        self.messages, self.enums, self.scopes = {}, {}, {}

    def resolve_all(self):
        for m in self.messages.values():
            for f in m.fields:
                if f.type not in SCALARS:
                    f.resolved = self.resolve(f.type, m.full)

    def resolve(self, name, scope):
        if name.startswith("."):
            return name[1:]
        if name in WELL_KNOWN:
            return name
        s = scope
        while True:
            cand = (s + "." + name) if s else name
            if cand in self.messages or cand in self.enums:
                return cand
            if not s:
                return name  # unknown (another package): accepted as any object
            s = s.rpartition(".")[0]

    # ---- validation ---------------------------------------------------------------------
    def validate(self, message, value):
        errs = []
        self._message(message, value, "", errs)
        return errs

    def _message(self, full, v, path, errs):
        if full in WELL_KNOWN:
            return self._well_known(full, v, path, errs)
        m = self.messages.get(full)
        if m is None:  # a type from a file that is not loaded
            if not isinstance(v, dict):
                errs.append((path, "Invalid value at '%s' (%s), %s" % (path, full, short(v))))
            return
        if not isinstance(v, dict):
            errs.append((path, "Invalid value at '%s' (type.googleapis.com/%s), %s"
                         % (path, full, short(v))))
            return
        oneofs = {}
        for key, val in v.items():
            f = m.by_key.get(key)
            if f is None:
                where = (" at '%s'" % path) if path else ""
                errs.append((path, "Invalid JSON payload received. Unknown name \"%s\"%s: "
                                   "Cannot find field." % (key, where)))
                continue
            sub = (path + "." if path else "") + f.name
            if val is None:
                continue
            if f.oneof:
                if f.oneof in oneofs:
                    errs.append((sub, "Invalid JSON payload received. Oneof field '%s' is already "
                                      "set. Cannot set '%s'" % (f.oneof, key)))
                oneofs[f.oneof] = key
            if f.label == "repeated":
                if not isinstance(val, list):
                    errs.append((sub, "Invalid value at '%s' (%s), %s: a list is expected"
                                 % (sub, type_label(f), short(val))))
                    continue
                for i, x in enumerate(val):
                    self._value(f, x, "%s[%d]" % (sub, i), errs)
            elif f.label == "map":
                if not isinstance(val, dict):
                    errs.append((sub, "Invalid value at '%s' (map), %s" % (sub, short(val))))
                    continue
                for k, x in val.items():
                    self._value(f, x, "%s[%s]" % (sub, k), errs)
            else:
                if isinstance(val, list):
                    errs.append((sub, "Invalid JSON payload received. Proto field is not repeating, "
                                      "cannot start list."))
                    continue
                self._value(f, val, sub, errs)

    def _value(self, f, v, path, errs):
        t = f.type
        if t in SCALARS:
            if not scalar_ok(t, v):
                errs.append((path, "Invalid value at '%s' (%s), %s" % (path, TYPE_NAMES[t], short(v))))
            return
        full = f.resolved
        if full in self.enums:
            e = self.enums[full]
            if not ((isinstance(v, str) and v in e.values) or
                    (isinstance(v, int) and not isinstance(v, bool))):
                errs.append((path, "Invalid value at '%s' (type.googleapis.com/%s), %s"
                             % (path, full, short(v))))
            return
        self._message(full, v, path, errs)

    def _well_known(self, full, v, path, errs):
        ok = True
        if full == "google.protobuf.Struct":
            ok = isinstance(v, dict)
        elif full == "google.protobuf.ListValue":
            ok = isinstance(v, list)
        elif full in ("google.protobuf.Duration",):
            ok = isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d{1,9})?s", v) is not None
        elif full in ("google.protobuf.Timestamp", "google.protobuf.FieldMask"):
            ok = isinstance(v, str)
        elif full == "google.protobuf.Empty":
            ok = v == {}
        elif full == "google.protobuf.Any":
            ok = isinstance(v, dict) and isinstance(v.get("@type"), str)
        if not ok:
            errs.append((path, "Invalid value at '%s' (%s), %s" % (path, full, short(v))))


def type_label(f):
    return TYPE_NAMES.get(f.type) or ("type.googleapis.com/" + (f.resolved or f.type))


def short(v):
    s = repr(v) if not isinstance(v, str) else '"%s"' % v
    return s if len(s) <= 60 else s[:57] + "..."


INT_RE = re.compile(r"-?\d+")
B64_RE = re.compile(r"[A-Za-z0-9+/_-]*=*")


def scalar_ok(t, v):
    if t == "string":
        return isinstance(v, str)
    if t == "bool":
        return isinstance(v, bool)
    if t == "bytes":
        if not isinstance(v, str) or not B64_RE.fullmatch(v):
            return False
        try:
            base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4))
            return True
        except ValueError:
            return False
    if isinstance(v, bool):
        return False
    if t in INT32 or t in INT64:
        if isinstance(v, int):
            n = v
        elif isinstance(v, float) and v.is_integer():
            n = int(v)
        elif isinstance(v, str) and INT_RE.fullmatch(v):
            n = int(v)
        else:
            return False
        if t.startswith("u") or t.startswith("fixed"):
            return 0 <= n < (2 ** 32 if t in INT32 else 2 ** 64)
        bits = 32 if t in INT32 else 64
        return -(2 ** (bits - 1)) <= n < 2 ** (bits - 1)
    # float, double
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and (v in ("NaN", "Infinity", "-Infinity") or
                                   re.fullmatch(r"-?\d+(\.\d*)?([eE][-+]?\d+)?", v) is not None)


def load(paths):
    schema = Schema()
    for p in paths:
        with open(p) as fh:
            parse_file(fh.read(), schema)
    schema.resolve_all()
    return schema
