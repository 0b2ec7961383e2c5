"""The rules of a signed event, in one place.

Canonical form, event hash, the device signature over it, the time format, the list of
outcomes, the earliest believable clock and the receipt record. Pure functions over event
dicts, used by the ledger (which writes events), ``edge audit`` (which checks a ledger file or
an exported stream), MQTT claims sync and the consumer (which check what terminals report),
signed commands and enrolment bundles (which share the canonical form and the time format).
Ed25519 itself stays in :mod:`edge.keys`. Event fields are listed in docs/design.md and
docs/ledger.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.errors import KeyFileError, LedgerError
from edge.keys import load_ed25519_public, verify_ed25519

SCHEMA = "bansos.event/1"
GENESIS = "0" * 64
# Every decision the terminal can record. edge/schemas/event.v1.json, Outcome in
# edge/payout/decision.py and the slip wording in edge/devices/receipt.py list the same words;
# tests/test_events.py keeps them in step.
OUTCOMES = (
    "accepted",
    "no_face",
    "poor_quality",
    "no_match",
    "spoof",
    "not_entitled",
    "wrong_round",
    "already_paid",
    "duplicate_face",
    "bad_qr",
    "too_many_attempts",
    "accepted_override",
    "override_refused",
)
# Bounds of the integers in an event, so every reader can hold them (a JSON number above
# 2**53 loses precision in JavaScript; 2**63 overflows SQLite and PostgreSQL bigint).
# event.v1.json says the same; tests/test_adversarial.py keeps them in step.
SEQ_MAX = 2**53 - 1
# Rupiah: no bansos payout comes near a billion; anything above is a typo or an attack.
AMOUNT_MAX = 1_000_000_000
# The outcomes that pay: a payout row (unique per household and round), a receipt and its
# signature. ``accepted_override`` is a payout two staff members supervised (edge/payout/
# override.py); ``override_refused`` records an override that was tried and refused.
PAYOUT_OUTCOMES = ("accepted", "accepted_override")


def is_payout(outcome: object) -> bool:
    """True for the outcomes that pay out (see :data:`PAYOUT_OUTCOMES`)."""
    return str(outcome) in PAYOUT_OUTCOMES


REQUIRED = ("schema", "event_id", "device_id", "boot_session", "seq", "ts", "kind", "outcome")
RECEIPT_PREFIX = "BSR2"  # 2: household_ref instead of the full household_id

# The earliest wall-clock time anything may be signed at: the ledger refuses events and
# ClockGuard distrusts the clock before it. A Pi has no battery-backed clock and boots at 1970
# (or at fake-hwclock's last saved time) until NTP answers. Why 2025: this software did not
# exist before then, so no genuine event is older, and a floor as late as that catches more
# unset clocks than an earlier one would.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC).timestamp()


def canonical(obj: object) -> bytes:
    """The canonical JSON bytes every hash and signature is computed over.

    Sorted keys, no spaces, UTF-8 (not ASCII escapes): events, commands, command results and
    bundle bodies all use it, and central must produce the same bytes to verify them.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(data: bytes) -> Any:
    """Parse JSON that must have a canonical form: UTF-8, no NaN or Infinity, no lone
    surrogates (``"\\ud800"`` is valid JSON text but cannot be encoded again, so it would
    break hashes, signatures and every database downstream), no NUL characters (PostgreSQL text
    cannot hold them), nothing nested beyond what the parser can recurse into.

    Raises ValueError naming the problem, never echoing the input.
    """
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        text = json.dumps(obj, ensure_ascii=False)
        text.encode("utf-8")
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    except UnicodeEncodeError as exc:
        raise ValueError("contains a lone surrogate") from exc
    except ValueError as exc:  # not UTF-8, JSONDecodeError, NaN, thousands of digits
        raise ValueError(f"not JSON ({exc.__class__.__name__})") from exc
    if "\\u0000" in text:
        raise ValueError("contains a NUL character")
    return obj


def event_hash(event: dict) -> str:
    """sha256 hex of the canonical form without ``hash`` and ``sig``."""
    body = {k: v for k, v in event.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


# -- time -------------------------------------------------------------------------------------


def iso_utc(t: float | datetime, timespec: str = "milliseconds") -> str:
    """UTC ISO 8601 with a ``Z``: ``2026-12-01T08:00:00.123Z`` (epoch seconds or a datetime).

    Events, commands and health messages use milliseconds (truncated, not rounded); bundle
    dates and clock readings use ``timespec="seconds"``. A naive datetime is taken as local
    time, as :meth:`datetime.astimezone` does.
    """
    dt = t.astimezone(UTC) if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return dt.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso_utc(text: str) -> datetime:
    """An aware datetime from ISO 8601 text; no offset means UTC. Raises ValueError."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# -- signature --------------------------------------------------------------------------------

# The consumer checks every event it receives against a handful of device keys: parse each
# PEM once.
_device_key = lru_cache(maxsize=4096)(load_ed25519_public)


def _key(device_public: bytes | str | ed25519.Ed25519PublicKey) -> ed25519.Ed25519PublicKey:
    if isinstance(device_public, ed25519.Ed25519PublicKey):
        return device_public
    return _device_key(device_public)


def signature_ok(event: dict, device_public: bytes | str | ed25519.Ed25519PublicKey) -> bool:
    """True when ``sig`` is the device's Ed25519 signature of the event's ``hash``.

    The signed bytes are the hex digest as ASCII (not the raw digest). This does not recompute
    the hash: use :func:`check_event` for both. An unusable key or signature is just False.
    """
    try:
        key = _key(device_public)
        sig = unb64(event.get("sig") or "")
        message = str(event.get("hash") or "").encode()
    except (KeyFileError, binascii.Error, ValueError, TypeError):
        return False
    return verify_ed25519(key, sig, message)


def check_event(
    event: dict, device_public: bytes | str | ed25519.Ed25519PublicKey | None
) -> str | None:
    """Why ``event`` is not intact (hash, then signature when a key is given), or None."""
    if event_hash(event) != event.get("hash"):
        return "hash does not match the event"
    if device_public is not None and not signature_ok(event, device_public):
        return "bad signature"
    return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Strict decoding: Python's decoders skip characters outside the alphabet (urlsafe always,
# standard without validate=True) and accept non-zero padding bits, so one signature could be
# written many ways. Only the one canonical spelling is accepted; anything else is
# binascii.Error (a ValueError).
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_DIGITS = re.compile(r"[0-9]{1,16}")


def unb64(text: str) -> bytes:
    """Standard base64 with padding, strictly: junk, wrong padding or non-zero spare bits raise."""
    if not isinstance(text, str) or not text.isascii():
        raise binascii.Error("base64 text must be ASCII")
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode() != text:
        raise binascii.Error("base64 text is not in canonical form")
    return data


def unb64url(text: str) -> bytes:
    """Unpadded base64url, strictly: junk characters, padding or non-zero spare bits raise."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise binascii.Error("not unpadded base64url text")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url(data) != text:
        raise binascii.Error("base64url text is not in canonical form")
    return data


# -- receipt record ---------------------------------------------------------------------------
#
# The event signature covers ~20 fields (hashes, uuids, scores): too much for a QR on a 58 mm
# receipt. So an accepted event also carries ``receipt_sig``, a signature over just the fields
# a person checking the receipt cares about; it is inside the event's hash, so the chain
# covers it too.

# The household is named by its pseudonymous reference (edge.privacy.household_ref): a receipt
# photographed or thrown away does not tell who collected; the paper shows the masked id.
_RECEIPT_FIELDS = ("event_id", "device_id", "seq", "ts", "household_ref", "round_id", "amount")


def receipt_message(event: dict) -> bytes:
    """The bytes ``receipt_sig`` signs: the receipt fields joined by ``|``."""
    values = [str(event.get(k) if event.get(k) is not None else "") for k in _RECEIPT_FIELDS]
    for v in values:
        if "|" in v:
            raise LedgerError("receipt field contains '|'")
    return "|".join([RECEIPT_PREFIX] + values).encode()


def sign_receipt(event: dict, sign) -> str:
    """``receipt_sig`` for an event, with ``sign(bytes) -> bytes`` the device's signer."""
    return b64url(sign(receipt_message(event)))


def receipt_signature_ok(
    event: dict, device_public: bytes | str | ed25519.Ed25519PublicKey
) -> bool:
    """True when the event's ``receipt_sig`` is the device's signature of its receipt fields."""
    try:
        key = _key(device_public)
        sig = unb64url(event["receipt_sig"])
        message = receipt_message(event)
    except (KeyFileError, LedgerError, KeyError, binascii.Error, ValueError, TypeError):
        return False
    return verify_ed25519(key, sig, message)


def receipt_payload(event: dict) -> str:
    """Compact signed record for the receipt QR (~210 characters), verifiable offline.

    ``BSR2|event_id|device_id|seq|ts|household_ref|round_id|amount|sig`` (sig base64url).
    """
    if not event.get("receipt_sig"):
        raise LedgerError("event has no receipt signature (only accepted payouts have receipts)")
    return receipt_message(event).decode() + "|" + event["receipt_sig"]


def verify_receipt_payload(text: str, device_public_pem: bytes) -> dict:
    """Check a receipt QR against the device's public key; return its fields or raise.

    Raises LedgerError for anything that is not a genuine record (never another exception
    for any input text); KeyFileError when ``device_public_pem`` is not a key.
    """
    # A genuine record is short printable ASCII: refuse anything else before touching it.
    if not isinstance(text, str) or len(text) > 1024 or not text.isascii():
        raise LedgerError("not a bansos receipt record")
    parts = text.strip().split("|")
    if len(parts) != len(_RECEIPT_FIELDS) + 2 or parts[0] != RECEIPT_PREFIX:
        raise LedgerError("not a bansos receipt record")
    if not all(p.isprintable() for p in parts):
        raise LedgerError("not a bansos receipt record")
    fields = dict(zip(_RECEIPT_FIELDS, parts[1:-1], strict=True))
    message = "|".join(parts[:-1]).encode()
    try:
        sig = unb64url(parts[-1])
    except ValueError as exc:
        raise LedgerError("receipt signature is not base64") from exc
    key: ed25519.Ed25519PublicKey = load_ed25519_public(device_public_pem)
    if not verify_ed25519(key, sig, message):
        raise LedgerError("receipt signature does not verify: forged, altered or another device")
    out: dict = dict(fields)
    # int() would also take "+1", " 1" or "1_0": only plain digits within the event bounds.
    if not _DIGITS.fullmatch(fields["seq"]) or (
        fields["amount"] and not _DIGITS.fullmatch(fields["amount"])
    ):
        raise LedgerError("receipt record has a non-numeric seq or amount")
    out["seq"] = int(fields["seq"])
    out["amount"] = int(fields["amount"]) if fields["amount"] else None
    if out["seq"] > SEQ_MAX or (out["amount"] or 0) > AMOUNT_MAX:
        raise LedgerError("receipt record has a seq or amount out of range")
    return out


# -- head checkpoint --------------------------------------------------------------------------
#
# An unsigned ``head_seq`` row proves nothing: whoever holds the SD card can delete the newest
# events and set it back. A head checkpoint is the device's signature over "my chain ended at
# seq N with hash H at time T"; once one has left the terminal (health, status, receipt),
# central and ``edge audit`` can prove that a later chain which is shorter, or differs at N,
# was cut or forked. The device alone cannot prove it to itself: see docs/security.md.

HEAD_SCHEMA = "bansos.head/1"


def head_message(device_id: str, seq: int, hash_: str, ts: str) -> bytes:
    """The bytes a head checkpoint signs (domain-separated from events and commands)."""
    return canonical(
        {"schema": HEAD_SCHEMA, "device_id": device_id, "seq": seq, "hash": hash_, "ts": ts}
    )


def sign_head(device_id: str, seq: int, hash_: str, ts: str, sign) -> dict:
    """A head checkpoint ``{"seq", "hash", "ts", "sig"}``; ``sign(bytes) -> bytes``."""
    sig = b64url(sign(head_message(device_id, seq, hash_, ts)))
    return {"seq": seq, "hash": hash_, "ts": ts, "sig": sig}


def check_head(
    head: object, device_id: str, device_public: bytes | str | ed25519.Ed25519PublicKey
) -> str | None:
    """Why ``head`` is not a valid checkpoint of ``device_id``'s chain, or None."""
    if not isinstance(head, dict) or set(head) != {"seq", "hash", "ts", "sig"}:
        return "head checkpoint must have exactly seq, hash, ts and sig"
    seq, hash_, ts, sig = head["seq"], head["hash"], head["ts"], head["sig"]
    if type(seq) is not int or not 0 <= seq < 2**53:
        return "head seq is not a non-negative integer"
    if not isinstance(hash_, str) or len(hash_) != 64 or set(hash_) - set("0123456789abcdef"):
        return "head hash is not a sha256 hex digest"
    if not isinstance(ts, str) or not isinstance(sig, str):
        return "head ts and sig must be strings"
    try:
        key = _key(device_public)
        raw = unb64url(sig)
    except (KeyFileError, binascii.Error, ValueError, TypeError):
        return "head signature is unreadable"
    if not verify_ed25519(key, raw, head_message(device_id, seq, hash_, ts)):
        return "head signature does not verify"
    return None
