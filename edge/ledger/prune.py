"""Retention: personal data leaves the terminal's storage once it is no longer needed.

``edge prune`` (daily, by ``systemd/edge-prune.timer``) applies ``[retention]``:

- **events** acknowledged by the broker and older than ``ledger_days`` lose their content: the
  row keeps only the chain fields (seq, event id, device, boot session, time, outcome,
  prev_hash, hash, sig) marked ``"pruned": true``, and its local ``household_id`` note is
  cleared. ``edge audit`` still checks every link and every signature of the chain; it can no
  longer recompute a pruned event's hash from its content, and says how many it met.
- **payouts** of past rounds (full household ids) are deleted with their events' content.
- **remote payouts** (claims sync) older than ``synced_days`` of past rounds are deleted.
- **debug crops** (``flow.store_debug_images``) older than ``debug_crops_days`` are deleted.

Never pruned: an event not yet acknowledged, a payout whose receipt is not printed, and
anything of a *live* round: the round of the installed bundle, or any round with an event
newer than the limit. A payout of the current round therefore stays, and so do the failed
attempts the attempt limit counts, and double collection stays impossible.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import LedgerError
from edge.events import canonical, iso_utc
from edge.ledger.schema import SCHEMA_SQL, connect

log = logging.getLogger(__name__)

DAY = 86400.0
# What a pruned event keeps: enough to follow the chain and check the device's signature.
STUB_FIELDS = (
    "schema", "event_id", "device_id", "boot_session", "seq", "ts", "kind", "outcome",
    "prev_hash", "hash", "sig",
)  # fmt: skip
_GUARDS = ("events_append_only_u", "payouts_keep_d")
BATCH = 500  # events per transaction: a concurrent payout waits milliseconds, not seconds


@dataclass
class PruneReport:
    """What one prune removed."""

    events: int = 0
    payouts: int = 0
    remote_payouts: int = 0
    crops: int = 0

    def summary(self) -> str:
        return (
            f"pruned: {self.events} event(s) to chain stubs, {self.payouts} payout(s), "
            f"{self.remote_payouts} synced payout(s), {self.crops} debug crop(s)"
        )


def stub(event: dict) -> dict:
    """The chain fields of an event, marked pruned (what stays of it after retention)."""
    return {**{k: event.get(k) for k in STUB_FIELDS}, "pruned": True}


def live_rounds(conn: sqlite3.Connection, cutoff: str, installed: Iterable[str]) -> set[str]:
    """Rounds nothing may be pruned of: installed bundles' rounds and recently active ones."""
    recent = conn.execute(
        "SELECT DISTINCT round_id FROM events WHERE ts >= ? AND round_id IS NOT NULL", (cutoff,)
    ).fetchall()
    return {r for (r,) in recent} | {r for r in installed if r}


def _prunable_events(conn: sqlite3.Connection, cutoff: str, keep: set[str]) -> list[tuple]:
    marks = ", ".join("?" * len(keep))
    skip_live = f" AND (e.round_id IS NULL OR e.round_id NOT IN ({marks}))" if keep else ""
    return conn.execute(
        "SELECT e.seq, e.event_id, e.body FROM events e JOIN outbox o ON o.seq = e.seq"
        " LEFT JOIN receipts r ON r.event_id = e.event_id"
        " WHERE o.sent_at IS NOT NULL AND e.ts < ?"
        " AND json_extract(e.body, '$.pruned') IS NULL"
        " AND (r.status IS NULL OR r.status = 'printed')" + skip_live + " ORDER BY e.seq LIMIT ?",
        (cutoff, *sorted(keep), BATCH),
    ).fetchall()


def _rewrite(conn: sqlite3.Connection, rows: list[tuple], report: PruneReport) -> None:
    """Inside the caller's transaction, with the append-only guards lifted."""
    for seq, event_id, body in rows:
        event = json.loads(body)
        conn.execute(
            "UPDATE events SET household_id = NULL, round_id = NULL, body = ? WHERE seq = ?",
            (canonical(stub(event)).decode(), seq),
        )
        if event.get("outcome") == "accepted":
            cur = conn.execute("DELETE FROM payouts WHERE event_id = ?", (event_id,))
            report.payouts += cur.rowcount
        report.events += 1


def prune_ledger(
    path: Path | str,
    *,
    ledger_days: float,
    synced_days: float,
    installed_rounds: Iterable[str] = (),
    now: float | None = None,
) -> PruneReport:
    """Apply retention to the ledger file at ``path`` (see the module doc); what went.

    Safe while the daemon runs: SQLite serialises the writers, the work is cut into short
    transactions of ``BATCH`` events so a payout never waits long for the file, and the
    append-only triggers are lifted only inside each of them, so no other writer ever sees
    them missing.
    """
    if not Path(path).is_file():
        raise LedgerError(f"{path}: no such ledger file")
    now = time.time() if now is None else now
    cutoff = iso_utc(now - ledger_days * DAY)
    report = PruneReport()
    conn = connect(path)
    try:
        conn.executescript(SCHEMA_SQL)  # an older file gets its index; the triggers exist
        keep = live_rounds(conn, cutoff, installed_rounds)
        while _transaction(conn, _prune_batch, cutoff, keep, report):
            pass
        report.remote_payouts = _transaction(
            conn, _prune_remote, iso_utc(now - synced_days * DAY), keep
        )
    finally:
        conn.close()
    if report.events or report.remote_payouts:
        log.info("%s", report.summary())
    return report


def _transaction(conn: sqlite3.Connection, fn, *args):
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _prune_batch(conn: sqlite3.Connection, cutoff: str, keep: set[str], report) -> bool:
    """One batch of events to stubs inside the caller's transaction; False when none was left."""
    rows = _prunable_events(conn, cutoff, keep)
    if not rows:
        return False
    for name in _GUARDS:
        conn.execute(f"DROP TRIGGER {name}")
    _rewrite(conn, rows, report)
    for statement in _guard_sql():
        conn.execute(statement)
    return True


def _guard_sql() -> list[str]:
    """The CREATE TRIGGER statements of the guards ``prune_ledger`` lifts, from SCHEMA_SQL
    (one definition of the guards, so the prune cannot put back a weaker one)."""
    found = re.findall(r"CREATE TRIGGER IF NOT EXISTS (\w+) .*?END;", SCHEMA_SQL, re.S)
    statements = re.findall(r"CREATE TRIGGER IF NOT EXISTS \w+ .*?END;", SCHEMA_SQL, re.S)
    out = [sql for name, sql in zip(found, statements, strict=True) if name in _GUARDS]
    if len(out) != len(_GUARDS):
        raise LedgerError("ledger schema lost an append-only guard")
    return out


def _prune_remote(conn: sqlite3.Connection, before: str, keep: set[str]) -> int:
    marks = ", ".join("?" * len(keep))
    skip_live = f" AND round_id NOT IN ({marks})" if keep else ""
    cur = conn.execute(
        "DELETE FROM remote_payouts WHERE received_at < ?" + skip_live, (before, *sorted(keep))
    )
    return cur.rowcount


def prune_crops(folder: Path | str, days: float, now: float | None = None) -> int:
    """Delete debug face crops older than ``days``; how many went."""
    now = time.time() if now is None else now
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    gone = 0
    for item in folder.glob("*.png"):
        try:
            if item.stat().st_mtime < now - days * DAY:
                item.unlink()
                gone += 1
        except FileNotFoundError:
            continue
    return gone
