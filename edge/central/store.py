"""The central store: the consumer's event store plus the dashboard's tables and triggers.

``CentralStore`` is an :class:`edge.mqtt.store.EventStore` (a consumer can write through it),
whose start-up also installs :mod:`edge.central.schema`. Opening any ``EventStore`` on a
database where central's triggers are installed keeps the counters too: the triggers live in
the database, not in this class.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from edge.central import schema
from edge.central.rebuild import rebuild_counters
from edge.mqtt.store import EventStore

log = logging.getLogger(__name__)


class CentralStore(EventStore):
    """Events, anomalies, entitlements, counters, terminal health and dashboard users."""

    def __init__(self, dsn: str | Path) -> None:
        super().__init__(dsn)

    @property
    def is_postgres(self) -> bool:
        """True on PostgreSQL (False: SQLite)."""
        return self._pg

    def _create_tables(self) -> None:
        super()._create_tables()
        if self._pg:
            found = "SELECT COUNT(*) FROM pg_trigger WHERE tgname = 'c_on_event'"
        else:
            found = (
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'c_on_event'"
            )
        first_install = not self._conn.execute(found).fetchone()[0]
        for sql in schema.TABLES:
            self._ddl(sql)
        for sql in schema.added_columns(self._columns(), self._pg):
            self._ddl(sql)
        for sql in schema.pg_triggers() if self._pg else schema.sqlite_triggers():
            self._ddl(sql)
        if first_install and self._conn.execute("SELECT 1 FROM events LIMIT 1").fetchone():
            # A consumer stored events before central was installed: count them once. On
            # PostgreSQL this runs in the DDL transaction, whose CREATE TRIGGER holds off
            # concurrent inserts until the counters are complete.
            log.warning("central installed on a store with events: counting them once")
            if self._pg:
                rebuild_counters(self._sql)
            else:
                self._transaction(rebuild_counters, self._sql)

    def rebuild(self) -> None:
        """Recount every counter from the events and entitlements (``edge central rebuild``)."""
        self.write(rebuild_counters)

    def _columns(self) -> dict[str, set[str]]:
        """The columns each table that ``schema.ADDED_COLUMNS`` extends has now (SQLite)."""
        if self._pg:
            return {}  # PostgreSQL's ADD COLUMN IF NOT EXISTS needs no look-up
        tables = {table for table, _, _ in schema.ADDED_COLUMNS}
        return {
            t: {row[1] for row in self._conn.execute(f"PRAGMA table_info({t})")} for t in tables
        }

    def _ddl(self, sql: str) -> None:
        # No parameters: psycopg then leaves the text alone (the trigger bodies hold no %).
        self._conn.execute(sql)

    # -- plumbing for the other central modules ----------------------------------------------

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one query (``?`` placeholders on both databases) and fetch every row."""
        return self._rows(sql, params)

    # ``write(fn, *args, device=None)`` is EventStore's: one transaction (with the device's lock
    # when named, which the consumer's head book asks for when it writes through this store).

    def execute(self, sql: str, params: tuple = ()) -> int:
        """One statement in its own transaction; returns the affected row count."""
        return self.write(lambda run: run(sql, params).rowcount)

    def change_token(self) -> tuple:
        """Cheap value that changes whenever an event or a health report arrives.

        The live feed polls it: PostgreSQL's ``c_changes`` sequence (bumped by the trigger),
        SQLite's largest rowid of ``events``; both with the newest terminal update.
        """
        if self._pg:
            sql = "SELECT (SELECT last_value FROM c_changes), (SELECT MAX(updated_at) FROM c_terminals)"
        else:
            sql = (
                "SELECT (SELECT MAX(rowid) FROM events), (SELECT MAX(updated_at) FROM c_terminals)"
            )
        return tuple(self._rows(sql)[0])

    # -- terminal health ---------------------------------------------------------------------

    def record_terminal_health(self, regency: str, report: dict, now: float | None = None) -> None:
        """Keep a terminal's latest ``health`` report (bansos.health/1) for the dashboard."""
        now = time.time() if now is None else now
        clock = report.get("clock")
        # edge.ops.health.Health: ``source`` names the time rule (edge/ops/clock.py); only NTP,
        # the RTC and central's signed time are verified ones. Older daemons send ``ok`` only.
        trusted = None
        if isinstance(clock, dict):
            source = clock.get("source")
            trusted = source in ("ntp", "rtc", "central") if source else clock.get("ok")
        faults = [str(f)[:64] for f in report.get("faults") or []][:32]
        # The update in hand (edge/ota); null or absent: none, so the old verdict is cleared.
        update = report.get("update")
        if not isinstance(update, dict):
            update = {}
        self.execute(
            "INSERT INTO c_terminals (device_id, province, regency, health_at, outbox_depth, "
            "reported_seq, clock_trusted, faults, updated_at, version, update_version, "
            "update_state, update_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET health_at = excluded.health_at, "
            "outbox_depth = excluded.outbox_depth, reported_seq = excluded.reported_seq, "
            "clock_trusted = excluded.clock_trusted, faults = excluded.faults, "
            "updated_at = excluded.updated_at, "
            # A daemon older than releases sends no version: keep one its status may have named.
            "version = COALESCE(excluded.version, c_terminals.version), "
            "update_version = excluded.update_version, update_state = excluded.update_state, "
            "update_error = excluded.update_error",
            (
                report["device_id"],
                regency[:2],
                regency,
                now,
                int(report.get("outbox_depth") or 0),
                report.get("last_seq"),
                None if trusted is None else int(bool(trusted)),
                json.dumps(faults),
                now,
                _text(report.get("version"), 64),
                _text(update.get("version"), 64),
                _text(update.get("state"), 32),
                _text(update.get("error"), 300),
            ),
        )

    def record_status(self, regency: str, status: dict, now: float | None = None) -> None:
        """Keep a terminal's latest presence (``online`` / ``offline``, bansos.status/1) and the
        release it names (``online`` carries the running ``version``)."""
        now = time.time() if now is None else now
        self.execute(
            "INSERT INTO c_terminals (device_id, province, regency, status, status_at, "
            "updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE "
            "SET status = excluded.status, status_at = excluded.status_at, "
            "updated_at = excluded.updated_at, "
            "version = COALESCE(excluded.version, c_terminals.version)",
            (
                status["device_id"],
                regency[:2],
                regency,
                status["state"],
                now,
                now,
                _text(status.get("version"), 64),
            ),
        )


def _text(value, limit: int) -> str | None:
    """A reported string cut to the schema's length (None stays None)."""
    return None if value is None else str(value)[:limit]
