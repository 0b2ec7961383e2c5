"""Central event store of the reference consumer: idempotent by ``event_id``.

SQLite by default (``sqlite:///path`` or a bare path); PostgreSQL when the DSN starts with
``postgresql://`` and psycopg 3 is installed (``pip install bansos-edge[pg]``). The same SQL
runs on both. Besides the events it keeps the anomalies central must look at: broken chains,
forked sequences, an event id reused with other content, and the same household paid twice in
one round. Households are known here only by their ``household_ref`` of the round (the bundle
manifest of ``edge bundle build`` maps a reference back to the household).

Several consumers may share one database. SQLite serialises writers (``BEGIN IMMEDIATE``); on
PostgreSQL each ``add`` takes transaction-scoped advisory locks on its device and on its
household and round, so the chain and double-payout checks see every committed event.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from edge.events import PAYOUT_OUTCOMES, canonical, is_payout
from edge.mqtt.heads import HEAD_TABLES, lag_rows
from edge.mqtt.store_schema import DDL_LOCK, TABLES, lock_key, pg_value

log = logging.getLogger(__name__)


class EventStore:
    """Stores verified events exactly once and records anomalies. Thread-safe."""

    def __init__(self, dsn: str | Path) -> None:
        dsn = str(dsn)
        self._lock = threading.Lock()
        self._pg = dsn.startswith(("postgresql://", "postgres://"))
        if self._pg:
            try:
                import psycopg
            except ImportError as exc:
                raise RuntimeError(
                    "PostgreSQL DSN given but psycopg is not installed "
                    "(pip install 'bansos-edge[pg]')"
                ) from exc
            self._psycopg = psycopg
            self._dsn = dsn
            self._conn = self._connect()
            with self._lock:
                self._transaction(self._create_tables)
        else:
            path = Path(dsn.removeprefix("sqlite:///") if dsn.startswith("sqlite:") else dsn)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Several consumers may share one file: WAL plus a generous busy timeout.
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._create_tables()

    def _connect(self):
        # Autocommit: reads need no transaction, and add() opens its own with BEGIN.
        return self._psycopg.connect(self._dsn, autocommit=True)

    def _create_tables(self) -> None:
        if self._pg:
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalog.
            self._sql("SELECT pg_advisory_xact_lock(?::bigint)", (DDL_LOCK,))
        for sql in TABLES + HEAD_TABLES:
            self._sql(sql)

    def _sql(self, sql: str, params: tuple = ()):
        if self._pg:
            sql = sql.replace("?", "%s")
            params = tuple(pg_value(v) for v in params)
        return self._conn.execute(sql, params)

    def _run(self, fn, *args):
        """Call ``fn`` under the lock; on PostgreSQL reconnect once if the server went away.

        Retrying is safe: ``add`` is idempotent and everything else only reads or appends to
        ``rejected``. A database that stays down raises, and the consumer leaves the message
        unacknowledged so the broker delivers it again.
        """
        with self._lock:
            try:
                return fn(*args)
            except Exception as exc:
                if not (self._pg and self._conn.closed):
                    raise
                log.warning("PostgreSQL connection lost (%s), reconnecting", exc)
                self._conn = self._connect()
                return fn(*args)

    def _transaction(self, fn, *args):
        self._sql("BEGIN" if self._pg else "BEGIN IMMEDIATE")
        try:
            result = fn(*args)
            self._sql("COMMIT")
        except BaseException:
            # A dead connection cannot roll back (the server already has); keep the real error.
            if not (self._pg and self._conn.closed):
                self._sql("ROLLBACK")
            raise
        return result

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._run(lambda: self._sql(sql, params).fetchall())

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def add(self, event: dict) -> bool:
        """Store a verified event; False when its ``event_id`` was already stored."""
        return self._run(self._transaction, self._add, event, time.time())

    def _add(self, event: dict, now: float) -> bool:
        accepted = is_payout(event.get("outcome"))
        if self._pg:
            # READ COMMITTED would let two consumers each miss the other's uncommitted event,
            # so the same household paid at two terminals would go unflagged. The locks make
            # the checks below see it; always device first, so two adds cannot deadlock.
            self._sql(
                "SELECT pg_advisory_xact_lock(?::bigint)", (lock_key(f"d:{event['device_id']}"),)
            )
            if accepted:
                claim = f"c:{event.get('household_ref')}\x1f{event.get('round_id')}"
                self._sql("SELECT pg_advisory_xact_lock(?::bigint)", (lock_key(claim),))
        new = self._insert(event, now)
        if new:
            self._check_chain(event, now)
            self._check_checkpoint(event, now)
            if accepted:
                self._check_double_payout(event, now)
        return new

    def _insert(self, ev: dict, now: float) -> bool:
        cur = self._sql(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (
                ev["event_id"],
                ev["device_id"],
                ev["regency"],
                ev["seq"],
                ev["ts"],
                ev.get("outcome"),
                ev.get("household_ref"),
                ev.get("round_id"),
                ev.get("amount"),
                ev["prev_hash"],
                ev["hash"],
                canonical(ev).decode(),
                now,
            ),
        )
        if cur.rowcount == 1:
            return True
        row = self._sql("SELECT hash FROM events WHERE event_id = ?", (ev["event_id"],)).fetchone()
        if row and row[0] != ev["hash"]:
            self._anomaly("id_conflict", ev, "event id reused with different content", now)
        return False

    def _check_chain(self, ev: dict, now: float) -> None:
        # Events of one device may arrive out of order (shared subscription, re-sends), so a new
        # event is checked against both neighbours that are already stored.
        rows = self._sql(
            "SELECT event_id, seq, prev_hash, hash FROM events "
            "WHERE device_id = ? AND seq BETWEEN ? AND ? AND event_id <> ?",
            (ev["device_id"], ev["seq"] - 1, ev["seq"] + 1, ev["event_id"]),
        ).fetchall()
        for other_id, seq, prev_hash, digest in rows:
            if seq == ev["seq"]:
                self._anomaly("seq_conflict", ev, f"seq {seq} also used by {other_id}", now)
            elif seq == ev["seq"] - 1 and digest != ev["prev_hash"]:
                self._anomaly("chain_break", ev, f"prev_hash does not match seq {seq}", now)
            elif seq == ev["seq"] + 1 and prev_hash != ev["hash"]:
                succ = {"event_id": other_id, "device_id": ev["device_id"]}
                self._anomaly("chain_break", succ, f"prev_hash does not match seq {ev['seq']}", now)

    def _check_checkpoint(self, ev: dict, now: float) -> None:
        # A signed head checkpoint at this seq is the device's own word for the event's hash:
        # a different event there means the chain was forked (or truncated and paid again).
        row = self._sql(
            "SELECT hash FROM checkpoints WHERE device_id = ? AND seq = ?",
            (ev["device_id"], ev["seq"]),
        ).fetchone()
        if row and row[0] != ev["hash"]:
            detail = f"seq {ev['seq']} differs from the device's signed head checkpoint"
            self._anomaly("head_fork", ev, detail, now)

    def _check_double_payout(self, ev: dict, now: float) -> None:
        rows = self._sql(
            "SELECT event_id, device_id FROM events WHERE household_ref = ? AND round_id = ? "
            "AND outcome IN (?, ?) AND event_id <> ?",
            (ev["household_ref"], ev["round_id"], *PAYOUT_OUTCOMES, ev["event_id"]),
        ).fetchall()
        for other_id, other_device in rows:
            where = "the same terminal" if other_device == ev["device_id"] else other_device
            self._anomaly("double_payout", ev, f"also paid by {other_id} at {where}", now)
            log.warning(
                "double payout in round %s: %s and %s", ev["round_id"], ev["event_id"], other_id
            )

    def _anomaly(self, kind: str, ev: dict, detail: str, now: float) -> None:
        self._sql(
            "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, event_id) DO NOTHING",
            (kind, ev["event_id"], ev.get("device_id"), detail, now),
        )

    # -- for edge.mqtt.heads and edge.mqtt.recovery ---------------------------------------

    @property
    def postgres(self) -> bool:
        """True on PostgreSQL (advisory locks), False on SQLite."""
        return self._pg

    @property
    def dsn(self) -> str | None:
        """The PostgreSQL DSN (a second connection holds the recovery leader's lock)."""
        return self._dsn if self._pg else None

    def write(self, fn, *args, device: str | None = None):
        """Run ``fn(sql, *args)`` in one transaction, ``sql(text, params)`` executing SQL.

        With ``device`` it holds that device's advisory lock on PostgreSQL, the one ``add``
        takes, so head and event checks of one device never interleave.
        """

        def body():
            if self._pg and device is not None:
                self._sql("SELECT pg_advisory_xact_lock(?::bigint)", (lock_key(f"d:{device}"),))
            return fn(self._sql, *args)

        return self._run(self._transaction, body)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read-only statement (``?`` placeholders on both backends)."""
        return self._rows(sql, params)

    def lag(self, silent_after_s: float = 900.0, now: float | None = None) -> list[dict]:
        """Per device: head, events missing and for how long, silence (dashboard rows)."""
        return lag_rows(self, silent_after_s, time.time() if now is None else now)

    def reject(self, topic: str, reason: str, body: bytes) -> None:
        """Keep a message that failed verification, for investigation."""
        row = (topic, reason, body[:65536].decode("utf-8", "replace"), time.time())
        self._run(self._sql, "INSERT INTO rejected VALUES (?, ?, ?, ?)", row)

    # -- reading --------------------------------------------------------------------------

    def count(self) -> int:
        """How many distinct events are stored."""
        return int(self._rows("SELECT COUNT(*) FROM events")[0][0])

    def event_ids(self) -> list[str]:
        """Every stored event id (tests and audits)."""
        return [r[0] for r in self._rows("SELECT event_id FROM events ORDER BY received_at")]

    def events(self, device_id: str) -> list[dict]:
        """One device's stored events in seq order (for ``edge.ledger.verify.verify_events``)."""
        rows = self._rows("SELECT body FROM events WHERE device_id = ? ORDER BY seq", (device_id,))
        return [json.loads(r[0]) for r in rows]

    def gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Missing sequence ranges per device (sequences start at 1)."""
        rows = self._rows(
            "SELECT device_id, seq, LAG(seq) OVER (PARTITION BY device_id ORDER BY seq) FROM events"
        )
        out: dict[str, list[tuple[int, int]]] = {}
        for device_id, seq, prev in rows:
            start = 1 if prev is None else prev + 1
            if seq > start:
                out.setdefault(device_id, []).append((start, seq - 1))
        return out

    def devices(self) -> dict[str, str]:
        """Device id -> regency of every device with stored events."""
        rows = self._rows("SELECT DISTINCT device_id, regency FROM events")
        return {r[0]: r[1] for r in rows}

    def record_health(self, report: dict) -> None:
        """Keep the versions of a terminal's health report (the newest by its ``ts``)."""
        update = report.get("update") or {}
        params = (
            report["device_id"],
            report["regency"],
            report.get("version"),
            update.get("version"),
            update.get("state"),
            (update.get("error") or None) and str(update["error"])[:200],
            report["ts"],
            time.time(),
        )
        self._run(
            lambda: self._sql(
                "INSERT INTO fleet (device_id, regency, version, update_version, update_state,"
                " update_error, ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET regency = excluded.regency,"
                " version = excluded.version, update_version = excluded.update_version,"
                " update_state = excluded.update_state, update_error = excluded.update_error,"
                " ts = excluded.ts, received_at = excluded.received_at"
                " WHERE excluded.ts >= fleet.ts",
                params,
            )
        )

    def fleet(self) -> list[dict]:
        """Every terminal that reported health: version and update state, by device id."""
        keys = ("device_id", "regency", "version", "update_version", "update_state", "error", "ts")
        rows = self._rows(
            "SELECT device_id, regency, version, update_version, update_state, update_error, ts"
            " FROM fleet ORDER BY device_id"
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def last_seq(self, device_id: str) -> int:
        """Highest stored sequence number of a device (0 when none)."""
        [row] = self._rows("SELECT MAX(seq) FROM events WHERE device_id = ?", (device_id,))
        return int(row[0] or 0)

    def anomalies(self, kind: str | None = None) -> list[dict]:
        """Recorded anomalies, oldest first."""
        sql = "SELECT kind, event_id, device_id, detail FROM anomalies"
        params: tuple = ()
        if kind:
            sql += " WHERE kind = ?"
            params = (kind,)
        rows = self._rows(sql + " ORDER BY at, event_id", params)
        return [
            dict(zip(("kind", "event_id", "device_id", "detail"), r, strict=True)) for r in rows
        ]

    def rejected_count(self) -> int:
        """How many messages failed verification."""
        return int(self._rows("SELECT COUNT(*) FROM rejected")[0][0])

    def summary(self) -> list[dict]:
        """Payouts (supervised overrides included) per regency and round: count and amount."""
        rows = self._rows(
            "SELECT regency, round_id, COUNT(*), COALESCE(SUM(amount), 0) FROM events "
            "WHERE outcome IN (?, ?) GROUP BY regency, round_id ORDER BY regency, round_id",
            PAYOUT_OUTCOMES,
        )
        return [
            {"regency": r[0], "round_id": r[1], "count": int(r[2]), "amount": int(r[3])}
            for r in rows
        ]

    def overrides(self) -> dict[str, dict[str, int]]:
        """Supervised overrides: ``per_device`` and ``per_staff`` (accepted), ``refused`` per
        device (attempts refused by a badge check or a limit)."""
        rows = self._rows(
            "SELECT outcome, device_id, body FROM events WHERE outcome IN (?, ?)",
            ("accepted_override", "override_refused"),
        )
        out: dict[str, dict[str, int]] = {"per_device": {}, "per_staff": {}, "refused": {}}
        for outcome, device_id, body in rows:
            if outcome == "override_refused":
                out["refused"][device_id] = out["refused"].get(device_id, 0) + 1
                continue
            out["per_device"][device_id] = out["per_device"].get(device_id, 0) + 1
            for staff in (json.loads(body).get("override") or {}).get("staff", []):
                sid = str(staff.get("staff_id"))
                out["per_staff"][sid] = out["per_staff"].get(sid, 0) + 1
        return out

    def outcome_counts(self) -> dict[str, int]:
        """Events per outcome, every regency together."""
        rows = self._rows("SELECT outcome, COUNT(*) FROM events GROUP BY outcome")
        return {str(r[0]): int(r[1]) for r in rows}
