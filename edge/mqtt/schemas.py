"""The JSON Schemas of the MQTT contract, shipped as package data in ``edge/schemas``.

Every payload that crosses the broker has a schema: ``event``, ``status``, ``health``,
``command`` and ``command_result``. Incoming payloads are validated before anything acts on
them; outgoing ones are validated in the tests (and health, which the app fills in, at runtime).
Their canonical form and time format are the event rules of :mod:`edge.events`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from edge.errors import PayloadError

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

try:  # compiled validators, ~100x faster: the consumer checks every event it receives
    import fastjsonschema
except ImportError:  # pragma: no cover - fall back to the reference validator
    _HAVE_FAST = False
else:
    _HAVE_FAST = True

SCHEMA_VERSION = 1
KINDS = ("event", "status", "health", "command", "command_result")


@cache
def schema(kind: str) -> dict:
    """The schema document for ``kind`` (one of KINDS)."""
    if kind not in KINDS:
        raise KeyError(kind)
    text = resources.files("edge").joinpath("schemas", f"{kind}.v{SCHEMA_VERSION}.json")
    return json.loads(text.read_text("utf-8"))


@cache
def _validator(kind: str) -> Draft202012Validator:
    # Imported here: jsonschema costs the daemon ~2.5 MB and is needed only to word a failure.
    from jsonschema import Draft202012Validator

    doc = schema(kind)
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


def errors(kind: str, obj: Any) -> list[str]:
    """Every schema violation of ``obj``, as ``path: rule`` lines (empty when valid).

    The lines name the key path and the rule broken, never the value: these messages are
    logged and stored, and a value may be a household id, a name or anything an attacker sent.
    """
    out = []
    for err in sorted(_validator(kind).iter_errors(obj), key=lambda e: list(e.path)):
        where = "/".join(_key(p) for p in err.path) or "(root)"
        out.append(f"{where}: {_rule(err)}")
    return list(dict.fromkeys(out))  # "required" fails once per missing key, worded once


def _key(part: Any) -> str:
    # Paths lead through the schema's own property names and array indices; an unexpected key
    # is still the sender's text, so only a short key of plain characters is shown.
    text = str(part)
    return text if len(text) <= 32 and text.isascii() and text.isidentifier() else "?"


def _rule(err: Any) -> str:
    """What ``err`` broke, in the schema's words: the keyword and its (schema-given) value."""
    keyword, rule = err.validator, err.validator_value
    if keyword == "required":
        have = err.instance if isinstance(err.instance, dict) else {}
        return "missing " + ", ".join(str(k) for k in rule if k not in have)
    if keyword == "additionalProperties":
        return "unknown key(s): additional properties are not allowed"
    if keyword in ("type", "enum", "const", "pattern", "format") or isinstance(rule, int | float):
        return f"must satisfy {keyword} {json.dumps(rule)[:80]}"
    return f"breaks {keyword}"


@cache
def _compiled(kind: str):
    return fastjsonschema.compile(schema(kind)) if _HAVE_FAST else None


def validate(kind: str, obj: Any) -> None:
    """Raise PayloadError naming the first violations when ``obj`` breaks the ``kind`` schema."""
    fast = _compiled(kind)
    if fast is not None:
        try:
            fast(obj)
            return
        except fastjsonschema.JsonSchemaException:
            pass  # the reference validator below words the errors
    problems = errors(kind, obj)
    if problems:
        raise PayloadError(f"{kind}: " + "; ".join(problems[:3]))


def parse(kind: str, payload: bytes, max_bytes: int = 1 << 20) -> dict:
    """Decode and validate an incoming payload; raise PayloadError when it is malformed."""
    if len(payload) > max_bytes:
        raise PayloadError(f"{kind}: payload of {len(payload)} bytes is too large")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{kind}: not JSON ({exc.__class__.__name__})") from exc
    validate(kind, obj)
    return obj
