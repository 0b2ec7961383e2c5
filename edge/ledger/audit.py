"""``edge audit``: verify a ledger file (or an exported event stream) without the device.

Beyond :func:`verify_events` (hashes, signatures, chain, sequence gaps) a ledger file is
cross-checked against itself: every accepted event has its payout row and the reverse, no
payout row was removed, the head sequence number in ``meta`` matches the last event (so
deleting the newest events shows), and SQLite's own integrity check passes.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import KeyFileError, LedgerError
from edge.events import GENESIS, REQUIRED, SCHEMA, event_hash, receipt_message, unb64url
from edge.keys import load_ed25519_public, verify_ed25519
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
            if not verify_ed25519(key, unb64url(ev["receipt_sig"]), receipt_message(ev)):
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
        "WHERE e.outcome = 'accepted' AND p.event_id IS NULL"
    ):
        report.errors.append(f"seq {seq}: accepted payout missing from the payouts table")
    for hh, rnd in q(
        "SELECT p.household_id, p.round_id FROM payouts p "
        "LEFT JOIN events e ON e.event_id = p.event_id "
        "WHERE e.event_id IS NULL OR e.outcome != 'accepted' "
        "OR e.household_id IS NOT p.household_id OR e.round_id IS NOT p.round_id"
    ):
        report.errors.append(f"payout row {mask_id(hh)}/{rnd} has no matching accepted event")
    devices = [row[0] for row in q("SELECT DISTINCT json_extract(body, '$.device_id') FROM events")]
    if any(d != meta.get("device_id") for d in devices):
        report.errors.append(f"events from other devices in this ledger: {devices}")
    report.warnings += receipt_notes(conn)  # cut-off slips: noted, not tampering
