"""The receipt rows of the ledger: whether each payout's slip is pending, printing or printed.

A mixin of :class:`edge.ledger.store.Ledger`, kept apart because it is the one part of the
ledger that follows the printer rather than the decision: it shares the ledger's connection,
lock and clock, and each call is its own fsynced commit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable

from edge.errors import LedgerError
from edge.events import iso_utc
from edge.ledger.schema import RECEIPT_STATUSES, ReceiptState


class ReceiptRows:
    """Receipt status per accepted event; see docs/ledger.md for the power-cut rules."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]

    def set_receipt(self, event_id: str, status: str) -> None:
        """Record where the receipt of an event stands: pending, printing or printed.

        Each call is its own fsynced commit: ``printing`` is on disk before the caller sends the
        first byte to the printer, so a slip cut off by a power loss is found at restart.
        """
        if status not in RECEIPT_STATUSES:
            raise ValueError(f"receipt status must be one of {RECEIPT_STATUSES}")
        now = iso_utc(self._clock())
        with self._lock:
            if not self._conn.execute(
                "SELECT 1 FROM events WHERE event_id = ?", (event_id,)
            ).fetchone():
                raise LedgerError(f"no event {event_id}")
            self._conn.execute(
                "INSERT INTO receipts (event_id, status, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (event_id) DO UPDATE SET status = excluded.status, "
                "updated = excluded.updated",
                (event_id, status, now),
            )

    def receipt_state(self, event_id: str) -> ReceiptState | None:
        """Where this event's receipt stands, or None if it has no receipt."""
        with self._lock:
            row = self._conn.execute(
                "SELECT status, interrupted FROM receipts WHERE event_id = ?", (event_id,)
            ).fetchone()
        return ReceiptState(*row) if row else None

    def note_interrupted(self, event_id: str) -> ReceiptState:
        """A receipt left ``printing`` by a process that died: count the cut-off slip and make
        the receipt pending again (to be printed marked as a reprint)."""
        with self._lock:
            self._conn.execute(
                "UPDATE receipts SET status = 'pending', interrupted = interrupted + 1, "
                "updated = ? WHERE event_id = ? AND status = 'printing'",
                (iso_utc(self._clock()), event_id),
            )
        state = self.receipt_state(event_id)
        if state is None:
            raise LedgerError(f"no receipt for event {event_id}")
        return state

    def receipts_to_print(self) -> list[tuple[dict, ReceiptState]]:
        """Events whose receipt is not printed yet (pending, or cut off while printing) with
        where each stands, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT e.body, r.status, r.interrupted FROM receipts r "
                "JOIN events e ON e.event_id = r.event_id "
                "WHERE r.status IN ('pending', 'printing') ORDER BY e.seq"
            ).fetchall()
        return [(json.loads(body), ReceiptState(status, cuts)) for body, status, cuts in rows]

    def pending_receipts(self) -> list[dict]:
        """Events whose receipt has not been printed yet (e.g. paper ran out), oldest first."""
        return [event for event, _ in self.receipts_to_print()]
