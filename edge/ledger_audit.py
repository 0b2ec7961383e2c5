"""``edge audit``: verify a ledger file (or an exported event stream) without the device.

Beyond :func:`verify_events` (hashes, signatures, chain, sequence gaps) a ledger file is
cross-checked against itself: every accepted event has its payout row and the reverse, no
payout row was removed, the head sequence number in ``meta`` matches the last event (so
deleting the newest events shows), and SQLite's own integrity check passes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from edge.errors import LedgerError
from edge.ledger_events import AuditReport, verify_events
from edge.privacy import mask_id


def _open_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise LedgerError(f"{path}: no such ledger file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: not a readable ledger: {exc}") from None
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
                except ValueError:
                    raise LedgerError(f"{path}:{n}: not JSON") from None
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
