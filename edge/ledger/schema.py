"""Ledger storage: the SQLite schema, durability settings and small value types.

Split from :mod:`edge.ledger.store` so the table layout can be read (and audited) on its own.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.errors import LedgerError

log = logging.getLogger(__name__)

# pending: to print; printing: committed before the first byte goes out, so a slip cut off by a
# power loss is found at the next start; printed: came out whole.
RECEIPT_STATUSES = ("pending", "printing", "printed")
# meta "ledger_version": the table layout. Absent means 1 (receipts were pending or printed).
LEDGER_VERSION = 2

# One definition for new ledgers and for the migration that rebuilds an older table.
RECEIPTS_COLUMNS = """(
    event_id TEXT PRIMARY KEY REFERENCES events (event_id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'printing', 'printed')),
    updated TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0 CHECK (interrupted >= 0)
)"""

SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    outcome TEXT NOT NULL,
    household_id TEXT,
    round_id TEXT,
    hash TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payouts (
    household_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE REFERENCES events (event_id),
    amount INTEGER,
    ts TEXT NOT NULL,
    UNIQUE (household_id, round_id)
);
CREATE INDEX IF NOT EXISTS events_claim ON events (household_id, round_id);
-- household_id: the household_ref the reporting terminal sent (the full id only in reports
-- from before references), compared with the reference this terminal computes.
CREATE TABLE IF NOT EXISTS remote_payouts (
    event_id TEXT PRIMARY KEY,
    household_id TEXT NOT NULL,
    round_id TEXT NOT NULL,
    device_id TEXT,
    ts TEXT,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS remote_payouts_claim ON remote_payouts (household_id, round_id);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY REFERENCES events (seq),
    event_id TEXT NOT NULL UNIQUE,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS receipts {RECEIPTS_COLUMNS};
CREATE TRIGGER IF NOT EXISTS events_append_only_u BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_d BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS payouts_keep_u BEFORE UPDATE ON payouts
    BEGIN SELECT RAISE(ABORT, 'payouts are permanent'); END;
CREATE TRIGGER IF NOT EXISTS payouts_keep_d BEFORE DELETE ON payouts
    BEGIN SELECT RAISE(ABORT, 'payouts are permanent'); END;
"""


@dataclass(frozen=True)
class ReceiptState:
    """Where a payout receipt stands: ``status`` (one of ``RECEIPT_STATUSES``) and how many
    times its printing was cut off by a stop (each cut-off slip is on paper, incomplete)."""

    status: str
    interrupted: int


@dataclass(frozen=True)
class OutboxItem:
    """An event waiting for the broker's acknowledgement."""

    seq: int
    event_id: str
    payload: bytes


def num(x) -> float | None:
    # Rounded so the canonical JSON stays short and identical in every language that reads it.
    return None if x is None else round(float(x), 4)


CACHE_KIB = 512  # page cache per connection


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a ledger database with the durability settings every writer must use."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is fsynced before it returns, so a power cut cannot lose a payout.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # SQLite's default page cache (2 MB) fills as the ledger grows and stays resident; the
    # daemon reads a few index pages per decision, which the OS file cache also holds.
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return conn


def _has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def layout_version(conn: sqlite3.Connection, meta: dict[str, str]) -> int:
    """The layout a ledger file has: ``meta`` says, else the receipts table shows it.

    A file written before versions were kept has no ``ledger_version``; neither has one whose
    first start was cut short after the tables were made, so the table itself decides.
    """
    if "ledger_version" in meta:
        try:
            return int(meta["ledger_version"])
        except ValueError as exc:
            raise LedgerError(
                f"meta ledger_version {meta['ledger_version']!r} is no number"
            ) from exc
    return 2 if _has_column(conn, "receipts", "interrupted") else 1


def _receipts_printing_state(conn: sqlite3.Connection) -> None:
    # SQLite cannot alter a CHECK constraint: the table is rebuilt under its own name. No other
    # table refers to receipts, so foreign keys stay on and nothing else has to move.
    conn.execute(f"CREATE TABLE receipts_v2 {RECEIPTS_COLUMNS}")
    conn.execute(
        "INSERT INTO receipts_v2 (event_id, status, updated)"
        " SELECT event_id, status, updated FROM receipts"
    )
    conn.execute("DROP TABLE receipts")
    conn.execute("ALTER TABLE receipts_v2 RENAME TO receipts")


# version -> the step that brings a ledger from it to the next version
MIGRATIONS = {1: _receipts_printing_state}


def migrate(conn: sqlite3.Connection, version: int) -> int:
    """Bring a ledger from ``version`` to ``LEDGER_VERSION`` inside the caller's transaction.

    Forward only: a file from a newer release (or with a version this code does not know) is
    refused rather than written in a layout its own software would not expect.
    """
    if not 1 <= version <= LEDGER_VERSION:
        raise LedgerError(
            f"ledger layout version {version} is unknown to this software (knows 1 to "
            f"{LEDGER_VERSION}): update the software rather than downgrade a ledger"
        )
    while version < LEDGER_VERSION:
        MIGRATIONS[version](conn)
        version += 1
    return version


def receipt_notes(conn: sqlite3.Connection) -> list[str]:
    """One line per payout whose receipt printing was cut off (for ``edge audit``).

    Works on a read-only file of any layout version: before version 2 nothing was noted.
    """
    if not _has_column(conn, "receipts", "interrupted"):
        return []
    rows = conn.execute(
        "SELECT e.seq, r.interrupted, r.status FROM receipts r"
        " JOIN events e ON e.event_id = r.event_id"
        " WHERE r.interrupted > 0 OR r.status = 'printing' ORDER BY e.seq"
    ).fetchall()
    notes = []
    for seq, cuts, status in rows:
        if status == "printing":
            # Either being printed as the file was read or cut off by a stop not yet recovered.
            earlier = f" ({cuts} earlier cut(s))" if cuts else ""
            notes.append(f"seq {seq}: receipt printing started, not finished{earlier}")
            continue
        after = "printed again marked CETAK ULANG" if status == "printed" else "not printed since"
        notes.append(f"seq {seq}: receipt printing cut off {cuts} time(s); {after}")
    return notes


def init_meta(conn: sqlite3.Connection, path: Path, fresh: dict[str, str]) -> None:
    """Inside the caller's transaction: write ``fresh`` into an empty ``meta`` table, or check
    that an existing ledger belongs to this device and key; then bring its layout up to date.

    The upgrade shares the opening transaction, so a power cut mid-upgrade leaves the old
    layout whole.
    """
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    if not meta:
        conn.executemany("INSERT INTO meta VALUES (?, ?)", fresh.items())
    elif meta.get("device_id") != fresh["device_id"]:
        raise LedgerError(
            f"{path}: ledger belongs to device {meta.get('device_id')}, not {fresh['device_id']}"
        )
    elif meta.get("device_public_pem") != fresh["device_public_pem"]:
        raise LedgerError(
            f"{path}: ledger was signed with another device key; "
            "restore the keys or start a new ledger"
        )
    found = layout_version(conn, meta)
    version = migrate(conn, found)
    if meta.get("ledger_version") != str(version):
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('ledger_version', ?)", (str(version),))
    if found != version and meta:
        log.info("ledger layout upgraded from version %s to %s", found, version)
