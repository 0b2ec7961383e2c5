"""``edge audit``: verify a ledger file (or an exported event stream) without the device.

Beyond :func:`verify_events` (hashes, signatures, chain, sequence gaps) a ledger file is
cross-checked against itself: every accepted event has its payout row and the reverse, no
payout row was removed, the head sequence number in ``meta`` matches the last event (so
deleting the newest events shows), and SQLite's own integrity check passes.
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
    event_hash,
    is_payout,
    receipt_signature_ok,
    signature_ok,
)
from edge.keys import load_ed25519_public
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
        outcome = str(ev.get("outcome"))
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


def audit_ledger(path: Path | str, device_public_pem: bytes | None = None) -> AuditReport:
    """Verify a ledger file; without ``device_public_pem`` the key stored in the ledger is used.

    The stored key proves only that the ledger is self-consistent: whoever can rewrite the file
    can re-sign it with a key of their own. Pass the key registered at provisioning to prove the
    events came from that device.
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
