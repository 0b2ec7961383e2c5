"""What a signed bundle body must hold, checked after its signature and before anything uses it.

Central's signature proves who wrote a body, not that it is sane: a bug or a compromised
build step at central could sign an amount of -300000, two households under one id, or a
template label naming nobody (which used to crash identify mode much later). Every rule here
raises :class:`edge.errors.BundleError` with the first problem found, so a malformed body is
refused like a forged one and the terminal keeps its last good bundle. Errors name fields and
positions, never values (household ids are personal data).
"""

from __future__ import annotations

import math
import re
from typing import Any

from edge.errors import BundleError, ClaimError
from edge.events import AMOUNT_MAX
from edge.payout.claim import validate_household_id, validate_round_id

DIM = 128
ROLES = ("recipient", "representative")
MAX_HOUSEHOLDS = 100_000
MAX_MEMBERS = 32
# Config keys whose remote range a bundle may sign (see edge.mqtt.remote_config). Each is a score
# in (0, 1]; moving it the wrong way weakens verification, so central states the range.
LIMIT_KEYS = ("vision.match_threshold", "vision.duplicate_threshold", "liveness.threshold")

# fullmatch everywhere: "$" would also accept a trailing newline.
MEMBER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
BUNDLE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
REGENCY_RE = re.compile(r"[0-9]{4}")


def _text(value: Any, where: str, limit: int = 128) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise BundleError(f"{where} must be printable text of 1 to {limit} characters")
    return value


def _match(value: Any, pattern: re.Pattern[str], where: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BundleError(f"{where} is malformed")
    return value


def _amount(value: Any, where: str) -> int:
    # bool is an int in Python: `true` must not pay out Rp 1.
    if type(value) is not int or not 1 <= value <= AMOUNT_MAX:
        raise BundleError(f"{where} must be a whole number of rupiah from 1 to {AMOUNT_MAX}")
    return value


def check_members(members: Any, where: str) -> set[str]:
    """The member ids of one household's ``members`` list; BundleError when malformed."""
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise BundleError(f"{where}.members must be a list of at most {MAX_MEMBERS}")
    seen: set[str] = set()
    for j, m in enumerate(members):
        at = f"{where}.members[{j}]"
        if not isinstance(m, dict) or set(m) != {"member_id", "role"}:
            raise BundleError(f"{at} must have exactly member_id and role")
        mid = _match(m["member_id"], MEMBER_ID_RE, f"{at}.member_id")
        if m["role"] not in ROLES:
            raise BundleError(f"{at}.role must be one of {', '.join(ROLES)}")
        if mid in seen:
            raise BundleError(f"{at}.member_id is a duplicate")
        seen.add(mid)
    return seen


def check_households(households: Any) -> dict[str, set[str]]:
    """household id -> member ids, for a valid ``households`` list; else BundleError."""
    if not isinstance(households, list) or len(households) > MAX_HOUSEHOLDS:
        raise BundleError(f"households must be a list of at most {MAX_HOUSEHOLDS}")
    known: dict[str, set[str]] = {}
    keys = {"household_id", "masked_name", "regency", "amount", "members"}
    for i, h in enumerate(households):
        at = f"households[{i}]"
        if not isinstance(h, dict) or set(h) != keys:
            raise BundleError(f"{at} must have exactly {', '.join(sorted(keys))}")
        try:
            hid = validate_household_id(h["household_id"])
        except ClaimError as exc:
            raise BundleError(f"{at}.household_id is not in the claim alphabet") from exc
        if hid in known:
            raise BundleError(f"{at}.household_id is a duplicate")
        _text(h["masked_name"], f"{at}.masked_name", 64)
        _match(h["regency"], REGENCY_RE, f"{at}.regency")
        _amount(h["amount"], f"{at}.amount")
        known[hid] = check_members(h["members"], at)
    return known


def check_labels(labels: Any, known: dict[str, set[str]]) -> list[str]:
    """Template labels, each ``<household_id>/<member_id>`` of a member in the bundle."""
    if not isinstance(labels, list):
        raise BundleError("templates.labels must be a list")
    for i, label in enumerate(labels):
        hid, sep, mid = label.partition("/") if isinstance(label, str) else ("", "", "")
        if not sep or mid not in known.get(hid, ()):
            raise BundleError(f"templates.labels[{i}] names no household member of this bundle")
    return labels


def check_limits(limits: Any) -> dict[str, tuple[float, float]]:
    """The signed remote-config ranges: ``{key: {"min": x, "max": y}}``, 0 < min <= max <= 1."""
    if limits is None:
        return {}
    if not isinstance(limits, dict):
        raise BundleError("limits must be an object")
    out = {}
    for key, span in limits.items():
        if key not in LIMIT_KEYS:
            raise BundleError(f"limits: {str(key)[:40]!r} is not a key central may bound")
        if not isinstance(span, dict) or set(span) != {"min", "max"}:
            raise BundleError(f"limits.{key} must have exactly min and max")
        lo, hi = span["min"], span["max"]
        if not all(_is_number(v) for v in (lo, hi)) or not 0 < lo <= hi <= 1:
            raise BundleError(f"limits.{key} must satisfy 0 < min <= max <= 1")
        out[key] = (float(lo), float(hi))
    return out


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def check_body(b: Any) -> None:
    """Raise BundleError naming the first rule a signed body breaks (the whole body)."""
    if not isinstance(b, dict):
        raise BundleError("signed bundle body is not an object")
    _match(b.get("bundle_id"), BUNDLE_ID_RE, "bundle_id")
    try:
        validate_round_id(b.get("round_id"))  # type: ignore[arg-type]
    except ClaimError as exc:
        raise BundleError("round_id must look like YYYY-MM") from exc
    _text(b.get("point_name"), "point_name", 64)
    _match(b.get("regency"), REGENCY_RE, "regency")
    model, dev, tpl = b.get("model"), b.get("device"), b.get("templates")
    if not isinstance(model, dict) or not isinstance(dev, dict) or not isinstance(tpl, dict):
        raise BundleError("model, device and templates must be objects")
    _text(model.get("id"), "model.id")
    _text(model.get("sha256"), "model.sha256")
    _text(dev.get("id"), "device.id", 63)
    known = check_households(b.get("households"))
    if tpl.get("dim") != DIM or type(tpl.get("dim")) is not int:
        raise BundleError(f"templates.dim must be {DIM}")
    check_labels(tpl.get("labels"), known)
    check_limits(b.get("limits"))
