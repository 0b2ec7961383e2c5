"""What the ledger tells about one household: past outcomes and the local full id of an event.

A mixin of :class:`edge.ledger.store.Ledger` (it shares the connection and the lock). The
``household_id`` column of the ``events`` table is the terminal's local note of who claimed:
the signed event itself carries only the pseudonymous ``household_ref`` (docs/ledger.md).
"""

from __future__ import annotations

import sqlite3
import threading


class ClaimHistory:
    """Reads of the ``events`` table by household."""

    _conn: sqlite3.Connection
    _lock: threading.RLock

    def count_outcomes(
        self, household_id: str, round_id: str, outcomes: tuple[str, ...], since: str | None
    ) -> int:
        """How many events of this household and round have one of ``outcomes``.

        ``since`` (ISO 8601 UTC as the ledger writes it) counts only events at or after it;
        the ledger's timestamps all have one format, so text order is time order.
        """
        if not outcomes:
            return 0
        marks = ", ".join("?" * len(outcomes))
        sql = (
            "SELECT COUNT(*) FROM events WHERE household_id = ? AND round_id = ?"
            f" AND outcome IN ({marks}) AND ts >= ?"
        )
        with self._lock:
            row = self._conn.execute(
                sql, (household_id, round_id, *outcomes, since or "")
            ).fetchone()
        return int(row[0])

    def household_of(self, event_id: str) -> str | None:
        """The full household id this terminal noted for an event (for the staff display and
        the masked id on a receipt), or None when the event names none or was pruned."""
        with self._lock:
            row = self._conn.execute(
                "SELECT household_id FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row[0] if row else None
