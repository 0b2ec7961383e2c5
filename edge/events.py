"""The rules of a signed event: canonical form, hash, signature, the receipt record.

Pure functions over event dicts, shared by the ledger (which writes events), ``edge audit``
(which checks a ledger file or an exported stream), MQTT claims sync and the consumer (which
check what terminals report). Event fields are listed in docs/design.md and docs/ledger.md.
"""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.errors import LedgerError
from edge.keys import load_ed25519_public, verify_ed25519

SCHEMA = "bansos.event/1"
GENESIS = "0" * 64
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
)
REQUIRED = ("schema", "event_id", "device_id", "boot_session", "seq", "ts", "kind", "outcome")
RECEIPT_PREFIX = "BSR1"


def canonical(obj: dict) -> bytes:
    """The canonical JSON bytes every hash and signature is computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: dict) -> str:
    """sha256 hex of the canonical form without ``hash`` and ``sig``."""
    body = {k: v for k, v in event.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical(body)).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- receipt record ---------------------------------------------------------------------------
#
# The event signature covers ~20 fields (hashes, uuids, scores): too much for a QR on a 58 mm
# receipt. So an accepted event also carries ``receipt_sig``, a signature over just the fields
# a person checking the receipt cares about; it is inside the event's hash, so the chain
# covers it too.

_RECEIPT_FIELDS = ("event_id", "device_id", "seq", "ts", "household_id", "round_id", "amount")


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


def receipt_payload(event: dict) -> str:
    """Compact signed record for the receipt QR (~210 characters), verifiable offline.

    ``BSR1|event_id|device_id|seq|ts|household_id|round_id|amount|sig`` (sig base64url).
    """
    if not event.get("receipt_sig"):
        raise LedgerError("event has no receipt signature (only accepted payouts have receipts)")
    return receipt_message(event).decode() + "|" + event["receipt_sig"]


def verify_receipt_payload(text: str, device_public_pem: bytes) -> dict:
    """Check a receipt QR against the device's public key; return its fields or raise."""
    parts = (text or "").strip().split("|")
    if len(parts) != len(_RECEIPT_FIELDS) + 2 or parts[0] != RECEIPT_PREFIX:
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
    try:
        out["seq"] = int(fields["seq"])
        out["amount"] = int(fields["amount"]) if fields["amount"] else None
    except ValueError as exc:
        raise LedgerError("receipt record has a non-numeric seq or amount") from exc
    return out
