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

log = logging.getLogger(__name__)


class RemotePayouts:
    """The ``remote_payouts`` table, keyed by the reported ``household_ref`` and round."""

    device_id: str
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]

    def record_remote_payout(self, event: dict) -> bool:
        """Remember a payout another terminal reported; False if already known (or our own)."""
        try:
            event_id = str(event["event_id"])
            household_ref = str(event["household_ref"])
            round_id = str(event["round_id"])
        except (KeyError, TypeError) as exc:
            raise LedgerError("remote payout lacks event_id, household_ref or round_id") from exc
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
                    household_ref,
                    round_id,
                    event.get("device_id"),
                    event.get("ts"),
                    iso_utc(self._clock()),
                    canonical(event).decode(),
                ),
            )
            added = cur.rowcount == 1
            local = self._conn.execute(
                "SELECT p.event_id FROM payouts p JOIN events e ON e.event_id = p.event_id"
                " WHERE p.round_id = ? AND json_extract(e.body, '$.household_ref') = ?",
                (round_id, household_ref),
            ).fetchone()
        if added and local:
            # Both terminals paid while partitioned: central flags the conflict; we keep both.
            log.warning(
                "payout %s here and %s at %s for one household in round %s",
                local[0],
                event_id,
                event.get("device_id"),
                round_id,
            )
        return added
