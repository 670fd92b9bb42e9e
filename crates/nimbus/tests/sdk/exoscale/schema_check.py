"""Validates every response of the Exoscale dialect against the official OpenAPI document that ships in
the `exoscale` package (exoscale/openapi.json, OpenAPI 3.0).

`install()` wraps `requests.Session.send` (which the SDK's session and its anonymous `requests.request` for
list-zones both go through), finds the operation of each response under the dialect's base URL by verb and
path template, and validates the JSON body against the schema of that operation and status. Errors must be
Exoscale's `{"message": str}`.

The OpenAPI schemas are turned into JSON Schema draft 4 (which shares OpenAPI 3.0's boolean
`exclusiveMinimum`): `nullable` becomes a `null` type, `$ref`s resolve within the document, `uuid`, `ipv4`
and `date-time` formats are checked, and — stricter than the document — an object may only carry the
properties its schema names, so a misnamed field fails as surely as a mistyped one. The few fields real
clients read without a check are required on top (CLIENT_REQUIRED).
"""

import copy
import datetime
import ipaddress
import json
import pathlib
import re
import uuid
from collections import Counter
from urllib.parse import urlparse

import exoscale
import jsonschema
import requests

SPEC = json.loads((pathlib.Path(exoscale.__file__).parent / "openapi.json").read_text())

_DROP = {"nullable", "readOnly", "writeOnly", "example", "deprecated", "discriminator", "xml",
         "externalDocs", "title", "description", "x-go-findable", "x-go-type"}


def to_draft4(node):
    """An OpenAPI 3.0 schema as a strict JSON Schema draft 4 schema."""
    if isinstance(node, list):
        return [to_draft4(x) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = {"$ref": node["$ref"]}
        return {"anyOf": [ref, {"type": "null"}]} if node.get("nullable") else ref
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: to_draft4(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_draft4(v) if isinstance(v, dict) else v
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [to_draft4(x) for x in v]
        elif k not in _DROP:
            out[k] = copy.deepcopy(v)
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = out["enum"] + [None]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


COMPONENTS = {"schemas": {name: to_draft4(s) for name, s in SPEC["components"]["schemas"].items()}}

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("uuid", raises=ValueError)
def _uuid(value):
    return not isinstance(value, str) or str(uuid.UUID(value)) == value.lower()


@FORMATS.checks("ipv4", raises=ValueError)
def _ipv4(value):
    return not isinstance(value, str) or bool(ipaddress.IPv4Address(value))


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value):
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"{value!r} is not RFC 3339")
    return datetime.datetime.fromisoformat(value) is not None


ERROR_SCHEMA = {"type": "object", "properties": {"message": {"type": "string", "minLength": 1}},
                "required": ["message"], "additionalProperties": False}

# Fields the real clients read without a check, required on top of the document (§4, §7 of the notes):
# the Python waiter reads `state` and, on failure, `reason`; `exo compute instance show` dereferences
# `secureboot-enabled` and `tpm-enabled`.
CLIENT_REQUIRED = {
    "get-instance": ["id", "name", "state", "created-at", "instance-type", "template", "disk-size",
                     "secureboot-enabled", "tpm-enabled", "labels"],
    "get-operation": ["id", "state", "reference"],
    "list-zones": ["zones"],
}


def _routes():
    routes = []
    for path, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/:]+", re.escape(path)) + "$"
        for verb, op in item.items():
            routes.append((verb.upper(), re.compile(pattern), path, op))
    return routes


ROUTES = _routes()


def operation_of(method, path):
    """The spec's operation for a request path relative to the base URL (`/instance/...`)."""
    matches = [(p, op) for verb, rx, p, op in ROUTES if verb == method and rx.match(path)]
    # A literal segment beats a template (`/instance/{id}:start` over `/instance/{id}`): the longest
    # literal text wins.
    matches.sort(key=lambda m: -len(re.sub(r"\{[^}]+\}", "", m[0])))
    return matches[0] if matches else (None, None)


def schema_for(op, status):
    responses = op["responses"]
    response = responses.get(str(status))
    if response is None:
        raise AssertionError(f"{op['operationId']}: status {status} is not documented (only {list(responses)})")
    return response["content"]["application/json"]["schema"]


class SchemaError(AssertionError):
    pass


def validate(operation_id, schema, body):
    document = {"allOf": [to_draft4(schema)], "components": COMPONENTS}
    validator = jsonschema.Draft4Validator(document, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    for field in CLIENT_REQUIRED.get(operation_id, []):
        if isinstance(body, dict) and field not in body:
            errors.append(f"required field {field!r} is missing")
    if operation_id in ("get-operation",) or (isinstance(schema, dict)
                                              and schema.get("$ref") == "#/components/schemas/operation"):
        if isinstance(body, dict) and body.get("state") in ("failure", "timeout") and "reason" not in body:
            errors.append("a failed operation has no reason")
        for field in ("id", "state", "reference"):
            if isinstance(body, dict) and field not in body:
                errors.append(f"operation field {field!r} is missing")
    if errors:
        lines = [e if isinstance(e, str) else f"at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in errors]
        raise SchemaError(f"{operation_id}: response does not match the official schema:\n  "
                          + "\n  ".join(lines) + f"\nbody: {json.dumps(body)[:2000]}")


class Recorder:
    def __init__(self, base):
        self.base = urlparse(base).path.rstrip("/")
        self.host = urlparse(base).netloc
        self.validated = Counter()
        self.samples = {}

    def check(self, request, response):
        url = urlparse(request.url)
        if url.netloc != self.host or not url.path.startswith(self.base + "/"):
            return
        path = url.path[len(self.base):]
        spec_path, op = operation_of(request.method, path)
        try:
            body = response.json()
        except ValueError:
            raise SchemaError(f"{request.method} {url.path}: {response.status_code} without a JSON body: "
                              f"{response.text[:200]!r}")
        if op is None:
            # Not an operation of the document: only errors may come back, in Exoscale's shape.
            assert response.status_code >= 400, f"{request.method} {url.path} answered an undocumented path"
            validate("error", ERROR_SCHEMA, body)
            self.validated["<error>"] += 1
            return
        oid = op["operationId"]
        if response.status_code >= 400:
            validate(f"{oid} (error)", ERROR_SCHEMA, body)
            self.validated[f"{oid} {response.status_code}"] += 1
        else:
            validate(oid, schema_for(op, response.status_code), body)
            self.validated[oid] += 1
            self.samples.setdefault(oid, body)


def install(base):
    """Validates every response under `base` (the dialect's `…/v2` URL) from now on."""
    recorder = Recorder(base)
    original = requests.Session.send

    def send(self, request, **kwargs):
        response = original(self, request, **kwargs)
        recorder.check(request, response)
        return response

    requests.Session.send = send
    return recorder


def must_fail(operation_id, body, what):
    """The validator's own test: `body` is wrong in one way, and must be refused."""
    op = next(op for _, _, _, op in ROUTES if op["operationId"] == operation_id)
    try:
        validate(operation_id, schema_for(op, 200), body)
    except SchemaError:
        return
    raise AssertionError(f"the schema check accepted {what}: {json.dumps(body)[:300]}")
