"""The ledger's outbox: events the broker has not acknowledged yet, in sequence order.

A mixin of :class:`edge.ledger.store.Ledger` (it shares the connection, lock and clock). The
store adds an outbox row in the transaction that writes each event; the reporter drains it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from edge.events import iso_utc
from edge.ledger.schema import OutboxItem


class Outbox:
    """What the reporter asks of the ledger: unsent events and their acknowledgement."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]

    def outbox(self, limit: int = 100) -> list[OutboxItem]:
        """Unsent events, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT o.seq, o.event_id, e.body FROM outbox o JOIN events e ON e.seq = o.seq "
                "WHERE o.sent_at IS NULL ORDER BY o.seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(seq, eid, body.encode()) for seq, eid, body in rows]

    def mark_sent(self, event_id: str) -> None:
        """The broker acknowledged this event (idempotent)."""
        with self._lock:
            self._conn.execute(
                "UPDATE outbox SET sent_at = ? WHERE event_id = ? AND sent_at IS NULL",
                (iso_utc(self._clock()), event_id),
            )

    def outbox_depth(self) -> int:
        """How many events wait for the broker."""
        with self._lock:
            return self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
            ).fetchone()[0]
