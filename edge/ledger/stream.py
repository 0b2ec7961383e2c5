"""Reads of the ledger's event stream: every event in order, one by id, those of an outcome.

A mixin of :class:`edge.ledger.store.Ledger` (it shares the connection and the lock). The
stream is what audits, receipts and the override's limits read; writing it is the store's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator


class EventStream:
    """Reads of the ``events`` and ``payouts`` tables."""

    _conn: sqlite3.Connection
    _lock: threading.RLock

    def events(self) -> Iterator[dict]:
        """Every event in sequence order (read in pages so writers are not blocked)."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 500", (last,)
                ).fetchall()
            if not rows:
                return
            for seq, body in rows:
                last = seq
                yield json.loads(body)

    def event(self, event_id: str) -> dict | None:
        """The event with this id, or None if this ledger has none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def events_with(self, outcome: str, round_id: str | None = None) -> list[dict]:
        """The events of one outcome (optionally one round), in sequence order."""
        sql, params = "SELECT body FROM events WHERE outcome = ?", [outcome]
        if round_id is not None:
            sql, params = sql + " AND round_id = ?", [*params, round_id]
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [json.loads(r[0]) for r in rows]

    def payout_count(self, round_id: str) -> int:
        """Payouts this terminal made in ``round_id`` (accepted and supervised overrides)."""
        with self._lock:
            return self._conn.execute(
                "SELECT COUNT(*) FROM payouts WHERE round_id = ?", (round_id,)
            ).fetchone()[0]
