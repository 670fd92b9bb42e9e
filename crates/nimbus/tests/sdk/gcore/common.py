"""Shared by the Gcore SDK scripts: a real `gcore` client pointed at the Nimbus server under test, the
project and region ids of its key (from the native `GET /v1/whoami` and `GET /v1/zones`), and checks that a
raw response carries exactly the keys of the SDK's model and parses under it."""

import os

import httpx
from gcore import Gcore

URL = os.environ["NIMBUS_URL"]
SECRET = os.environ["NIMBUS_SECRET"]
NATIVE = {"Authorization": f"Bearer {SECRET}"}


def native(method, path, **kw):
    r = httpx.request(method, f"{URL}{path}", headers=NATIVE, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()


WHO = native("GET", "/v1/whoami")
PROJECT = WHO["project"]["numeric_id"]
REGION = native("GET", "/v1/zones")["items"][0]["numeric_id"]


def client(**kw):
    opts = dict(
        api_key=SECRET,
        base_url=URL,
        cloud_project_id=PROJECT,
        cloud_region_id=REGION,
        polling_interval_seconds=1,
        polling_timeout_seconds=60,
        _strict_response_validation=True,
    )
    opts.update(kw)
    return Gcore(**opts)


def keys_of(model):
    return {f.alias or name for name, f in model.model_fields.items()}


def exact(model, raw, what):
    """`raw` has every key of `model` (optional ones too, as null) and no other, and parses under it."""
    keys = keys_of(model)
    assert set(raw) == keys, f"{what}: missing {sorted(keys - set(raw))}, unknown {sorted(set(raw) - keys)}"
    return model.model_validate(raw)


def required(model, raw, what):
    """`raw` has every required key of `model` and parses under it."""
    needed = {f.alias or name for name, f in model.model_fields.items() if f.is_required()}
    assert needed <= set(raw), f"{what}: missing {sorted(needed - set(raw))}"
    return model.model_validate(raw)


def tag_map(instance, read_only):
    return {t.key: t.value for t in instance.tags if t.read_only == read_only}


def error_body(exc):
    """The Gcore error envelope an SDK exception carries."""
    body = exc.body
    assert isinstance(body, dict), f"not a JSON error body: {body!r}"
    assert set(body) >= {"exception_class", "message", "request_id"}, body
    assert body["request_id"], body
    return body
