"""The central event store's tables, and what differs between SQLite and PostgreSQL.

:class:`edge.mqtt.store.EventStore` runs the same SQL on both; the differences it needs are
here: advisory-lock keys, the lock that serialises table creation, and PostgreSQL's refusal of
NUL in text. The device heads' own tables are :data:`edge.mqtt.heads.HEAD_TABLES`.
"""

from __future__ import annotations

import hashlib

TABLES = (
    """CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        regency TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts TEXT NOT NULL,
        outcome TEXT,
        household_ref TEXT,
        round_id TEXT,
        amount BIGINT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_device_seq ON events (device_id, seq)",
    "CREATE INDEX IF NOT EXISTS events_claim ON events (household_ref, round_id)",
    """CREATE TABLE IF NOT EXISTS anomalies (
        kind TEXT NOT NULL,
        event_id TEXT NOT NULL,
        device_id TEXT,
        detail TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (kind, event_id))""",
    # The newest health report per terminal: running version and the update in hand, so
    # central can watch a rollout (`edge consume --summary`, `edge release rollout`).
    """CREATE TABLE IF NOT EXISTS fleet (
        device_id TEXT PRIMARY KEY,
        regency TEXT NOT NULL,
        version TEXT,
        update_version TEXT,
        update_state TEXT,
        update_error TEXT,
        ts TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rejected (
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        body TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL)""",
)


# Any fixed number: serialises the CREATE TABLEs of consumers that start at the same moment.
DDL_LOCK = 0x62616E736F73


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (Python's hash() is salted)."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def pg_value(value):
    """``value`` as PostgreSQL can store it (NUL becomes U+FFFD in text)."""
    # PostgreSQL's text type cannot hold NUL, which SQLite takes; schema-valid events (free-form
    # household ids) and junk in the rejected table may carry one. Refusing it would leave the
    # message unacknowledged for ever, so it is stored as U+FFFD like other undecodable input.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value
