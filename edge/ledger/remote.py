"""Payouts other terminals reported (claims sync), kept so this terminal refuses them too.

A mixin of :class:`edge.ledger.store.Ledger`: it shares the ledger's connection, lock and clock.
The double-payout check in ``Ledger.record`` reads these rows beside the local payouts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from edge.errors import LedgerError
from edge.events import canonical, is_payout, iso_utc
from edge.privacy import mask_id

log = logging.getLogger(__name__)


class RemotePayouts:
    """The ``remote_payouts`` table."""

    device_id: str
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]

    def record_remote_payout(self, event: dict) -> bool:
        """Remember a payout another terminal reported; False if already known (or our own)."""
        try:
            event_id = str(event["event_id"])
            household_id = str(event["household_id"])
            round_id = str(event["round_id"])
        except (KeyError, TypeError) as exc:
            raise LedgerError("remote payout lacks event_id, household_id or round_id") from exc
        if not is_payout(event.get("outcome")):
            raise LedgerError("remote event is not an accepted payout")
        if event.get("device_id") == self.device_id:
            return False
        with self._lock:
            if self._conn.execute(
                "SELECT 1 FROM events WHERE event_id = ?", (event_id,)
            ).fetchone():
                return False
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO remote_payouts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    household_id,
                    round_id,
                    event.get("device_id"),
                    event.get("ts"),
                    iso_utc(self._clock()),
                    canonical(event).decode(),
                ),
            )
            added = cur.rowcount == 1
            local = self._conn.execute(
                "SELECT event_id FROM payouts WHERE household_id = ? AND round_id = ?",
                (household_id, round_id),
            ).fetchone()
        if added and local:
            # Both terminals paid while partitioned: central flags the conflict; we keep both.
            log.warning(
                "household %s round %s paid here and at %s",
                mask_id(household_id),
                round_id,
                event.get("device_id"),
            )
        return added
