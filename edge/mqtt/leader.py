"""Which one of several consumers sharing a database does a singleton job (recovery).

On PostgreSQL the leader holds a session advisory lock on a connection of its own: the lock
lives exactly as long as that connection, so a crashed leader frees it for the next consumer
at once. On SQLite (consumers on one host) it holds a lease row that it renews every step and
that another consumer takes over once it has run out.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.mqtt.store import EventStore
from edge.mqtt.store_schema import lock_key

log = logging.getLogger(__name__)


class Leadership:
    """Which one of several consumers sharing a database runs the recovery loop."""

    def __init__(self, store: EventStore, holder: str, lease_s: float, name: str = "recovery"):
        self._store = store
        self._holder = holder
        self._lease_s = lease_s
        self._name = name
        self._conn: Any = None  # PostgreSQL: the connection whose session holds the lock
        self.leader = False

    def acquire(self, now: float) -> bool:
        """True when this holder leads now (taking or renewing the lock or lease)."""
        try:
            self.leader = self._pg() if self._store.postgres else self._lease(now)
        except Exception as exc:  # a database hiccup costs one step, not the loop
            log.warning("recovery leadership check failed: %s", exc)
            self._drop()
            self.leader = False
        return self.leader

    def _pg(self) -> bool:
        if self._conn is not None and self.leader:
            self._conn.execute("SELECT 1")  # still connected, so still holding the lock
            return True
        if self._conn is None:
            import psycopg

            self._conn = psycopg.connect(str(self._store.dsn), autocommit=True)
        # Session-level, not per transaction: the lock lives exactly as long as this
        # connection, so a crashed leader frees it for the next consumer at once.
        row = self._conn.execute(
            "SELECT pg_try_advisory_lock(%s::bigint)", (lock_key(f"lead:{self._name}"),)
        ).fetchone()
        return bool(row and row[0])

    def _lease(self, now: float) -> bool:
        def take(sql):
            sql(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "holder = excluded.holder, until = excluded.until "
                "WHERE leases.holder = excluded.holder OR leases.until < ?",
                (self._name, self._holder, now + self._lease_s, now),
            )
            return sql("SELECT holder FROM leases WHERE name = ?", (self._name,)).fetchone()

        row = self._store.write(take)
        return bool(row and row[0] == self._holder)

    def release(self) -> None:
        """Give up leadership (a clean stop), so another consumer takes over at once."""
        if self.leader and self._conn is not None:
            try:  # at once: a closed connection frees the lock only when its backend exits
                self._conn.execute(
                    "SELECT pg_advisory_unlock(%s::bigint)", (lock_key(f"lead:{self._name}"),)
                )
            except Exception as exc:
                log.warning("could not release the recovery lock: %s", exc)
        if self.leader and not self._store.postgres:
            try:
                self._store.write(
                    lambda sql: sql(
                        "DELETE FROM leases WHERE name = ? AND holder = ?",
                        (self._name, self._holder),
                    )
                )
            except Exception as exc:
                log.warning("could not release the recovery lease: %s", exc)
        self._drop()
        self.leader = False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already gone; closing is all that was left to do
                pass
            self._conn = None
