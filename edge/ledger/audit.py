"""``edge audit``: verify a ledger file (or an exported event stream) without the device.

Beyond :func:`edge.ledger.verify.verify_events` (hashes, signatures, chain, sequence gaps) a
ledger file is cross-checked against itself: every accepted event has its payout row and the
reverse, no payout row was removed, the head sequence number in ``meta`` matches the last event,
and SQLite's own integrity check passes.

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
from pathlib import Path

from edge.errors import LedgerError
from edge.events import GENESIS, check_head, verify_receipt_payload
from edge.keys import DevicePublic
from edge.ledger.schema import receipt_notes
from edge.ledger.verify import AuditReport, verify_events
from edge.privacy import mask_id


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
