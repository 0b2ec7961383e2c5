"""``edge audit``: verify a ledger file (or an exported event stream) without the device.

Beyond :func:`verify_events` (hashes, signatures, chain, sequence gaps) a ledger file is
cross-checked against itself: every accepted event has its payout row and the reverse, no
payout row was removed, the head sequence number in ``meta`` matches the last event, and
SQLite's own integrity check passes.

None of that can see the newest events deleted by someone who also sets ``head_seq`` back: a
ledger is only proven whole up to a signed head checkpoint that left the terminal (health and
status messages, central's record) or a receipt in a recipient's hand. :func:`head_problems`
and :func:`receipt_problems` compare the ledger with one; without one the report says that
truncation cannot be excluded. Receipts are checked against the device registry
(:func:`check_receipt`): the key must be the one central registered for the receipt's device.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import KeyFileError, LedgerError
from edge.events import (
    GENESIS,
    REQUIRED,
    SCHEMA,
    check_head,
    event_hash,
    is_payout,
    receipt_signature_ok,
    signature_ok,
    verify_receipt_payload,
)
from edge.keys import DevicePublic, load_ed25519_public
from edge.ledger.override_audit import OverrideTally
from edge.ledger.schema import receipt_notes
from edge.privacy import mask_id


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
    # The newest seq a signed checkpoint from outside the ledger proved present (None: none).
    proven_to: int | None = None
    # Supervised overrides: accepted ones per device and per staff id, refused attempts.
    overrides: dict[str, int] = field(default_factory=dict)
    override_staff: dict[str, int] = field(default_factory=dict)
    override_refused: int = 0

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
        if self.overrides or self.override_refused:
            per = ", ".join(f"{d}={n}" for d, n in sorted(self.overrides.items()))
            staff = ", ".join(f"{s}={n}" for s, n in sorted(self.override_staff.items()))
            lines.append(f"overrides: {per or 'none'}; refused attempts: {self.override_refused}")
            lines.append(f"overrides by staff: {staff or 'none'}")
        lines += [f"GAP: seq {a}..{b} missing" for a, b in self.gaps]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.proven_to is None:
            lines.append(
                "NOTE: no signed head checkpoint given (--head or --receipt): deleting the "
                "newest events cannot be excluded"
            )
        else:
            lines.append(f"whole up to the signed checkpoint at seq {self.proven_to}")
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
    walk = _Walk(from_genesis)
    overrides = OverrideTally()
    for ev in events:
        report.count += 1
        where = f"seq {ev.get('seq')}"
        missing = [k for k in REQUIRED if k not in ev]
        if missing or not isinstance(ev.get("seq"), int):
            report.errors.append(f"{where}: malformed event (missing {', '.join(missing)})")
            continue
        problems = walk.tally(ev, report)
        problems += walk.identity_problems(ev)
        problems += _signature_problems(ev, key)
        problems += walk.link_problems(ev, report)
        report.errors += [f"{where}: {p}" for p in problems]
        overrides.add(ev)
    overrides.finish(report)
    report.boot_sessions = len(walk.sessions)
    return report


@dataclass
class _Walk:
    """What :func:`verify_events` remembers from the events already seen."""

    from_genesis: bool
    sessions: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    prev_seq: int | None = None
    prev_hash: str | None = None

    def tally(self, ev: dict, report: AuditReport) -> list[str]:
        """Count the event into the report; a stream that should start at genesis must."""
        problems = []
        if report.first_seq is None:
            report.first_seq = ev["seq"]
            if self.from_genesis and (ev["seq"] != 1 or ev.get("prev_hash") != GENESIS):
                problems.append("ledger does not start at seq 1 (head deleted)")
        report.last_seq = ev["seq"]
        self.sessions.add(str(ev.get("boot_session")))
        outcome = str(ev.get("outcome") or ev.get("kind"))  # a config event has no outcome
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        return problems

    def identity_problems(self, ev: dict) -> list[str]:
        """A schema this audit does not know, or an event id used twice."""
        problems = []
        if ev.get("schema") != SCHEMA:
            problems.append(f"unknown schema {ev.get('schema')!r}")
        if ev["event_id"] in self.event_ids:
            problems.append("duplicate event_id")
        self.event_ids.add(ev["event_id"])
        return problems

    def link_problems(self, ev: dict, report: AuditReport) -> list[str]:
        """Order and chain against the previous event; a skipped range goes to ``gaps``."""
        problems = []
        seq = ev["seq"]
        if self.prev_seq is not None:
            if seq <= self.prev_seq:
                problems.append(f"out of order after seq {self.prev_seq}")
            elif seq != self.prev_seq + 1:
                report.gaps.append((self.prev_seq + 1, seq - 1))
            if ev.get("prev_hash") != self.prev_hash:
                problems.append(
                    f"chain broken (prev_hash does not match seq {self.prev_seq}: "
                    "event deleted, inserted or edited)"
                )
        self.prev_seq, self.prev_hash = seq, ev.get("hash")
        return problems


def _signature_problems(ev: dict, key: Ed25519PublicKey) -> list[str]:
    """Hash, device signature and (for a payout) receipt signature of one event."""
    if ev.get("pruned") is True:
        # Retention (edge prune) kept only the chain fields: the links and the device's
        # signature of the hash still check, the content no longer can.
        return [] if signature_ok(ev, key) else ["bad signature"]
    problems = []
    if event_hash(ev) != ev.get("hash"):
        problems.append("hash mismatch (event edited)")
    elif not signature_ok(ev, key):
        problems.append("bad signature")
    if is_payout(ev.get("outcome")) and "receipt_sig" in ev:
        if not receipt_signature_ok(ev, key):
            problems.append("bad receipt signature")
    return problems


def _open_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise LedgerError(f"{path}: no such ledger file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: not a readable ledger: {exc}") from exc
    return conn


def ledger_device_id(path: Path | str) -> str:
    """The device id a ledger file's ``meta`` names (to find its key in the registry)."""
    conn = _open_ro(Path(path))
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
    finally:
        conn.close()
    return str(row[0]) if row else ""


def read_events(path: Path | str) -> Iterator[dict]:
    """Events of a ledger file in sequence order, parsed from their stored canonical JSON."""
    conn = _open_ro(Path(path))
    try:
        for (body,) in conn.execute("SELECT body FROM events ORDER BY seq"):
            yield json.loads(body)
    finally:
        conn.close()


def read_event_stream(path: Path | str) -> list[dict]:
    """Events from a JSON Lines file (one event per line, e.g. exported from the consumer)."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError as exc:
                    raise LedgerError(f"{path}:{n}: not JSON") from exc
    return sorted(events, key=lambda e: e.get("seq", 0) if isinstance(e.get("seq"), int) else 0)


def audit_ledger(
    path: Path | str,
    device_public_pem: bytes | None = None,
    *,
    head: dict | None = None,
    receipt: dict | None = None,
) -> AuditReport:
    """Verify a ledger file; without ``device_public_pem`` the key stored in the ledger is used.

    The stored key proves only that the ledger is self-consistent: whoever can rewrite the file
    can re-sign it with a key of their own. Pass the key registered at provisioning to prove the
    events came from that device. ``head`` (a signed head checkpoint) and ``receipt`` (a
    verified receipt record) are checkpoints from outside the file: see :func:`head_problems`.
    """
    path = Path(path)
    conn = _open_ro(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        pem = device_public_pem
        if pem is None:
            pem = meta.get("device_public_pem", "").encode()
        report = verify_events(read_events(path), pem)
        if device_public_pem is None:
            report.warnings.append(
                "signatures checked against the key stored in the ledger itself; "
                "pass --device-pub to check against the provisioned device key"
            )
        elif meta.get("device_public_pem", "").encode().strip() != device_public_pem.strip():
            report.errors.append("ledger meta holds a different device key than the one given")
        _cross_check(conn, meta, report)
        if head is not None:
            head_problems(head, meta.get("device_id", ""), pem, read_events(path), report)
        if receipt is not None:
            receipt_problems(receipt, read_events(path), report)
    finally:
        conn.close()
    return report


def _cross_check(conn: sqlite3.Connection, meta: dict, report: AuditReport) -> None:
    q = conn.execute
    (check,) = q("PRAGMA integrity_check").fetchone()
    if check != "ok":
        report.errors.append(f"sqlite integrity check: {check}")
    head = int(meta.get("head_seq", "0") or 0)
    last = q("SELECT MAX(seq) FROM events").fetchone()[0] or 0
    if head > last:
        report.errors.append(f"events after seq {last} deleted (ledger head was seq {head})")
        report.gaps.append((last + 1, head))
    elif head < last:
        report.errors.append(f"ledger head says seq {head} but events go to seq {last}")
    for (seq,) in q(
        "SELECT e.seq FROM events e LEFT JOIN payouts p ON p.event_id = e.event_id "
        "WHERE e.outcome IN ('accepted', 'accepted_override') AND p.event_id IS NULL"
        " AND json_extract(e.body, '$.pruned') IS NULL"
    ):
        report.errors.append(f"seq {seq}: accepted payout missing from the payouts table")
    for hh, rnd in q(
        "SELECT p.household_id, p.round_id FROM payouts p "
        "LEFT JOIN events e ON e.event_id = p.event_id "
        "WHERE e.event_id IS NULL OR e.outcome NOT IN ('accepted', 'accepted_override') "
        "OR e.household_id IS NOT p.household_id OR e.round_id IS NOT p.round_id"
    ):
        report.errors.append(f"payout row {mask_id(hh)}/{rnd} has no matching accepted event")
    devices = [row[0] for row in q("SELECT DISTINCT json_extract(body, '$.device_id') FROM events")]
    if any(d != meta.get("device_id") for d in devices):
        report.errors.append(f"events from other devices in this ledger: {devices}")
    report.warnings += receipt_notes(conn)  # cut-off slips: noted, not tampering
    (pruned,) = q("SELECT COUNT(*) FROM events WHERE json_extract(body, '$.pruned')").fetchone()
    if pruned:
        report.warnings.append(f"{pruned} event(s) pruned by retention: chain and signatures only")


# -- checkpoints from outside the ledger ------------------------------------------------------


def head_problems(
    head: dict,
    device_id: str,
    device_public_pem: bytes,
    events: Iterable[dict],
    report: AuditReport,
) -> None:
    """Compare a chain with a signed head checkpoint of ``device_id``; problems go to ``report``.

    The chain must reach the checkpoint's seq and hold the checkpoint's hash there: shorter
    means the newest events were deleted; another hash at that seq means the ledger was cut
    back and written again (the same seq re-used, e.g. to pay a household a second time).
    """
    problem = check_head(head, device_id, device_public_pem)
    if problem:
        report.errors.append(f"head checkpoint: {problem}")
        return
    seq, ts = head["seq"], head["ts"]
    found = GENESIS if seq == 0 else None
    last = 0
    for ev in events:
        if isinstance(ev.get("seq"), int):
            last = max(last, ev["seq"])
            if ev["seq"] == seq:
                found = ev.get("hash")
    if last < seq:
        report.errors.append(
            f"ledger ends at seq {last}, but the device signed a head at seq {seq} ({ts}): "
            "the newest events were deleted"
        )
    elif found != head["hash"]:
        report.errors.append(
            f"seq {seq} differs from the device's signed head of {ts}: the chain was cut back "
            "and written again after that checkpoint (forked)"
        )
    else:
        report.proven_to = max(report.proven_to or 0, seq)


def receipt_problems(receipt: dict, events: Iterable[dict], report: AuditReport) -> None:
    """A verified receipt record (``check_receipt``) is a checkpoint too: its event must be in
    the chain, at its seq, with its id."""
    seq = receipt["seq"]
    match = next((ev for ev in events if ev.get("seq") == seq), None)
    if match is None:
        report.errors.append(f"the receipt's event (seq {seq}) is missing from the ledger")
        return
    # The event id is under the receipt signature and the event's own hash: the same id at the
    # same seq of a verified chain is the same event.
    if match.get("event_id") != receipt.get("event_id"):
        report.errors.append(
            f"seq {seq} in the ledger is not the event on the receipt: the chain was cut back "
            "and written again after it was printed"
        )
        return
    report.proven_to = max(report.proven_to or 0, seq)


def check_receipt(text: str, *, registry=None, device: DevicePublic | None = None) -> dict:
    """Verify a receipt QR against the key registered for the device it names; its fields.

    ``registry`` (an :class:`edge.registry.Registry`) gives the key of the receipt's
    ``device_id`` and refuses an unknown or revoked device; without it, ``device`` must be that
    device's card (which names its id). A bare public key is refused: it does not say whose it
    is, and any key verifies what that key signed. Raises LedgerError.
    """
    parts = (text or "").strip().split("|")
    device_id = parts[2] if len(parts) > 2 else ""
    if registry is not None:
        entry = registry.lookup(device_id)
        if entry is None:
            raise LedgerError("the receipt names a device that is not in the registry")
        if entry.revoked:
            raise LedgerError(
                f"device {device_id} was revoked at {entry.revoked_at}: its signature proves "
                "nothing any more; check central's record of the payout"
            )
        if device is not None and device.sign_public_pem.strip() != entry.public_pem.strip():
            raise LedgerError(f"the key given is not the one registered for {device_id}")
        pem = entry.public_pem
    elif device is not None and device.device_id:
        if device.device_id != device_id:
            raise LedgerError(
                f"the receipt names another device than the card ({device.device_id})"
            )
        pem = device.sign_public_pem
    else:
        raise LedgerError(
            "a bare public key does not say which device it belongs to: give the device "
            "registry (--registry) or the device's card (--device-pub card.json)"
        )
    return verify_receipt_payload(text, pem)
