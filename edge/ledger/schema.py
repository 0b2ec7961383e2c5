"""Ledger storage: the SQLite schema, durability settings and small value types.

Split from :mod:`edge.ledger.store` so the table layout can be read (and audited) on its own.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

RECEIPT_STATUSES = ("pending", "printed")

SCHEMA_SQL = """
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
CREATE TABLE IF NOT EXISTS receipts (
    event_id TEXT PRIMARY KEY REFERENCES events (event_id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'printed')),
    updated TEXT NOT NULL
);
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
class OutboxItem:
    """An event waiting for the broker's acknowledgement."""

    seq: int
    event_id: str
    payload: bytes


def num(x) -> float | None:
    # Rounded so the canonical JSON stays short and identical in every language that reads it.
    return None if x is None else round(float(x), 4)


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a ledger database with the durability settings every writer must use."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is fsynced before it returns, so a power cut cannot lose a payout.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
