"""The JSON Schemas of the MQTT contract, shipped as package data in ``edge/schemas``.

Every payload that crosses the broker has a schema: ``event``, ``status``, ``health``,
``command`` and ``command_result``. Incoming payloads are validated before anything acts on
them; outgoing ones are validated in the tests (and health, which the app fills in, at runtime).
Their canonical form and time format are the event rules of :mod:`edge.events`.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from edge.errors import PayloadError
from edge.events import strict_json

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


def _ecma_pattern(validator, pattern: str, instance: Any, schema: dict):
    # JSON Schema patterns are ECMA-262, where "$" ends the text; Python's "$" also matches
    # before a final newline, so "edge-a01\n" would pass ^[a-z0-9-]+$. Anchor at \Z instead.
    from jsonschema.exceptions import ValidationError

    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield ValidationError(f"{instance!r:.40} does not match {pattern!r}")


@cache
def _validator(kind: str) -> Draft202012Validator:
    # Imported here: jsonschema costs the daemon ~2.5 MB and is needed only to word a failure.
    from jsonschema import Draft202012Validator, validators

    doc = schema(kind)
    Draft202012Validator.check_schema(doc)
    strict = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
    return strict(doc)


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
    fast_error = None
    if fast is not None:
        try:
            fast(obj)
            return
        except fastjsonschema.JsonSchemaException as exc:
            fast_error = exc  # the reference validator below words the errors
    try:
        problems = errors(kind, obj)
    except RecursionError:
        problems = ["(root): nested too deeply"]
    if not problems and fast_error is not None:
        # The two validators disagree (they should not): the stricter one wins.
        problems = [str(fast_error)[:160]]
    if problems:
        raise PayloadError(f"{kind}: " + "; ".join(problems[:3]))


def safe_text(text: object, limit: int = 300) -> str:
    """``text`` made safe to log and store: lone surrogates replaced, at most ``limit`` chars."""
    return str(text)[:limit].encode("utf-8", "replace").decode("utf-8")


def parse(kind: str, payload: bytes, max_bytes: int = 1 << 20) -> dict:
    """Decode and validate an incoming payload; raise PayloadError when it is malformed.

    Total: whatever the bytes, the result is a valid dict or a PayloadError. JSON is read by
    :func:`edge.events.strict_json` (no NaN, lone surrogates, NUL or absurd nesting).
    """
    if not isinstance(payload, bytes | bytearray):
        raise PayloadError(f"{kind}: payload is not bytes")
    if len(payload) > max_bytes:
        raise PayloadError(f"{kind}: payload of {len(payload)} bytes is too large")
    try:
        obj = strict_json(bytes(payload))
    except ValueError as exc:
        raise PayloadError(f"{kind}: {exc}") from exc
    validate(kind, obj)
    return obj
