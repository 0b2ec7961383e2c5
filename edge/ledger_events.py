"""Ledger events: canonical form, hash chain, signatures, audit and the receipt record.

Pure functions over event dicts, shared by the ledger (which writes events), ``edge audit``
(which checks a ledger file or an exported stream) and the MQTT consumer (which checks what
terminals report). Event fields are listed in docs/design.md and docs/ledger.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.errors import LedgerError
from edge.keys import KeyFileError, load_ed25519_public, verify_ed25519

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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AuditReport:
    """Result of verifying an event stream: every problem found, not just the first."""

    count: int = 0
    errors: list[str] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    boot_sessions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.gaps

    def summary(self) -> str:
        """A few lines for a person: counts, then each problem."""
        lines = [
            f"events: {self.count} (seq {self.first_seq}..{self.last_seq}), "
            f"boot sessions: {self.boot_sessions}",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
        ]
        lines += [f"GAP: seq {a}..{b} missing" for a, b in self.gaps]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_events(
    events: Iterable[dict], device_public_pem: bytes, *, from_genesis: bool = True
) -> AuditReport:
    """Verify hashes, signatures, chain links and sequence numbers of events in seq order.

    An edited event shows as a hash mismatch (or a bad signature if the hash was recomputed);
    a deleted one as a sequence gap plus a broken chain link; an inserted or reordered one as a
    broken link. ``from_genesis=False`` accepts a stream that starts mid-ledger (a slice).
    """
    report = AuditReport()
    try:
        key = load_ed25519_public(device_public_pem)
    except KeyFileError as exc:
        report.errors.append(f"device public key: {exc}")
        return report
    sessions: set[str] = set()
    prev_seq: int | None = None
    prev_hash: str | None = None
    seen_ids: set[str] = set()
    for ev in events:
        report.count += 1
        seq = ev.get("seq")
        where = f"seq {seq}"
        missing = [k for k in REQUIRED if k not in ev]
        if missing or not isinstance(seq, int):
            report.errors.append(f"{where}: malformed event (missing {', '.join(missing)})")
            continue
        if report.first_seq is None:
            report.first_seq = seq
            if from_genesis and (seq != 1 or ev.get("prev_hash") != GENESIS):
                report.errors.append(f"{where}: ledger does not start at seq 1 (head deleted)")
        report.last_seq = seq
        sessions.add(str(ev.get("boot_session")))
        outcome = str(ev.get("outcome"))
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        if ev.get("schema") != SCHEMA:
            report.errors.append(f"{where}: unknown schema {ev.get('schema')!r}")
        if ev["event_id"] in seen_ids:
            report.errors.append(f"{where}: duplicate event_id")
        seen_ids.add(ev["event_id"])
        computed = event_hash(ev)
        if ev.get("hash") != computed:
            report.errors.append(f"{where}: hash mismatch (event edited)")
        else:
            try:
                sig = base64.b64decode(ev.get("sig") or "", validate=True)
            except ValueError:
                sig = b""
            if not verify_ed25519(key, sig, computed.encode()):
                report.errors.append(f"{where}: bad signature")
        if outcome == "accepted" and "receipt_sig" in ev:
            if not verify_ed25519(key, _unb64url(ev["receipt_sig"]), receipt_message(ev)):
                report.errors.append(f"{where}: bad receipt signature")
        if prev_seq is not None:
            if seq <= prev_seq:
                report.errors.append(f"{where}: out of order after seq {prev_seq}")
            elif seq != prev_seq + 1:
                report.gaps.append((prev_seq + 1, seq - 1))
            if ev.get("prev_hash") != prev_hash:
                report.errors.append(
                    f"{where}: chain broken (prev_hash does not match seq {prev_seq}: "
                    "event deleted, inserted or edited)"
                )
        prev_seq, prev_hash = seq, ev.get("hash")
    report.boot_sessions = len(sessions)
    return report


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
    return _b64url(sign(receipt_message(event)))


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
        sig = _unb64url(parts[-1])
    except ValueError:
        raise LedgerError("receipt signature is not base64") from None
    key: ed25519.Ed25519PublicKey = load_ed25519_public(device_public_pem)
    if not verify_ed25519(key, sig, message):
        raise LedgerError("receipt signature does not verify: forged, altered or another device")
    out: dict = dict(fields)
    try:
        out["seq"] = int(fields["seq"])
        out["amount"] = int(fields["amount"]) if fields["amount"] else None
    except ValueError:
        raise LedgerError("receipt record has a non-numeric seq or amount") from None
    return out
