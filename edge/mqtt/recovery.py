"""Central asks terminals for the events it lacks, until it holds them: the recovery loop.

An event the broker acknowledged can still be lost on the way to central: Mosquitto 2.0 does
not restore shared subscriptions after a restart, and a broker killed before its autosave
forgets sessions. The terminal has marked those events sent, so only central can notice. Every
``interval_s`` the loop compares the stored events with each device's head
(:mod:`edge.mqtt.heads`), and for what is missing, gaps and tails alike, sends the device a
signed ``resend`` command; the terminal publishes those events again from its ledger.

Limits keep it polite: a span is asked for only after it has been missing ``settle_s`` (events
in flight are not lost), at most ``max_range`` seqs per command, ``max_outstanding`` commands
per device and ``max_outstanding_total`` in all; a device that has been silent past
``silent_after_s`` is not asked (the broker would only queue the commands), and is reported
instead. Each command waits ``backoff_s`` for its events, doubling after every unanswered one
up to ``backoff_max_s``; after ``max_attempts`` unanswered in a row an anomaly says so and the
loop goes on asking at the slowest pace. The table ``resends`` records every command: range,
attempt, when, and how many of its events arrived (``asked`` -> ``complete`` or ``expired``).

With several consumers in a shared group, one leader runs the loop (:mod:`edge.mqtt.leader`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.mqtt.commands import MAX_RESEND, sign_command
from edge.mqtt.heads import lag_rows, missing_spans
from edge.mqtt.leader import Leadership
from edge.mqtt.store import EventStore
from edge.mqtt.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]


@dataclass
class RecoveryPolicy:
    """Timings and limits of the recovery loop (seconds, seqs, commands)."""

    interval_s: float = 5.0
    settle_s: float = 10.0
    backoff_s: float = 15.0
    backoff_max_s: float = 900.0
    max_range: int = 1000
    max_outstanding: int = 2
    max_outstanding_total: int = 200
    max_attempts: int = 8
    silent_after_s: float = 900.0
    lease_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_range <= MAX_RESEND:
            raise ValueError(f"max_range must be 1..{MAX_RESEND}")
        if min(self.interval_s, self.backoff_s, self.lease_s) <= 0:
            raise ValueError("interval_s, backoff_s and lease_s must be positive")

    def backoff(self, failures: int) -> float:
        """How long a command waits for its events after ``failures`` unanswered ones."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** min(failures, 30))


class Recovery:
    """The recovery loop over one EventStore; ``publish(topic, payload) -> sent``."""

    def __init__(
        self,
        store: EventStore,
        publish: Publish,
        central_private_key,
        policy: RecoveryPolicy | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._publish = publish
        self._key = central_private_key
        self.policy = policy or RecoveryPolicy()
        self._prefix = prefix
        self._clock = clock
        self.holder = holder or f"{os.uname().nodename}-{os.getpid()}-{id(self):x}"
        self.leadership = Leadership(store, self.holder, self.policy.lease_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.asked = 0
        self.completed = 0
        self.expired = 0

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`step` every ``interval_s`` on a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="recovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and hand leadership back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.leadership.release()

    def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # the next step starts from the database again
                log.exception("recovery step failed")
            if self._stop.wait(self.policy.interval_s):
                return

    def step(self) -> dict:
        """One pass: settle open requests, mark lag, raise silence alerts, ask for what is
        missing. Returns counts (``leader`` False when another consumer leads)."""
        now = self._clock()
        if not self.leadership.acquire(now):
            return {"leader": False, "asked": 0}
        done, expired = self._settle(now)
        rows = lag_rows(self._store, self.policy.silent_after_s, now)
        self._mark_behind(rows, now)
        self._alert_silent(rows)
        asked = self._ask(rows, now)
        return {"leader": True, "asked": asked, "complete": done, "expired": expired}

    # -- one step -----------------------------------------------------------------------------

    def _settle(self, now: float) -> tuple[int, int]:
        """Close requests whose events are all stored (complete) or whose wait is over."""
        open_rows = self._store.query(
            "SELECT command_id, device_id, from_seq, to_seq, due_at FROM resends "
            "WHERE status = 'asked'"
        )
        done = expired = 0
        for command_id, device_id, lo, hi, due in open_rows:
            [(arrived,)] = self._store.query(
                "SELECT COUNT(DISTINCT seq) FROM events WHERE device_id = ? AND seq BETWEEN ? AND ?",
                (device_id, lo, hi),
            )
            status = "asked"
            if int(arrived) >= hi - lo + 1:
                status, done = "complete", done + 1
            elif now >= due:
                status, expired = "expired", expired + 1
            self._store.write(
                lambda sql, *a: sql(
                    "UPDATE resends SET status = ?, arrived = ?, done_at = ? WHERE command_id = ?",
                    a,
                ),
                status,
                int(arrived),
                None if status == "asked" else now,
                command_id,
            )
            if status == "expired":
                log.info("resend %d..%d of %s unanswered (%d arrived)", lo, hi, device_id, arrived)
        self.completed += done
        self.expired += expired
        return done, expired

    def _mark_behind(self, rows: list[dict], now: float) -> None:
        """Keep ``heads.behind_since``: when a device started lacking events, cleared at 0."""
        for row in rows:
            behind = row["missing"] > 0
            if behind == (row["behind_since"] is not None):
                continue
            if behind:
                row["behind_since"] = now
            self._store.write(
                lambda sql, d, since, seen, reg: sql(
                    "INSERT INTO heads (device_id, regency, last_seq, seen_at, behind_since) "
                    "VALUES (?, ?, 0, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                    "behind_since = excluded.behind_since",
                    (d, reg, seen, since),
                ),
                row["device_id"],
                row["behind_since"] if behind else None,
                row["last_seen"],
                row["regency"],
                device=row["device_id"],
            )

    def _alert_silent(self, rows: list[dict]) -> None:
        for row in rows:
            if not row["silent"]:
                continue
            detail = f"silent for {row['silent_for_s']:.0f} s (last state {row['state']})"
            ref = f"{row['device_id']}@silent:{int(row['last_seen'])}"
            cur = self._store.write(
                lambda sql, *a: sql(
                    "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (kind, event_id) DO NOTHING",
                    a,
                ),
                "device_silent",
                ref,
                row["device_id"],
                detail,
                self._clock(),
            )
            if cur.rowcount == 1:
                log.warning("device %s is %s", row["device_id"], detail)

    def _ask(self, rows: list[dict], now: float) -> int:
        opened = self._open_requests()
        total = sum(len(v) for v in opened.values())
        asked = 0
        # The device that has lacked events longest goes first when the total limit bites.
        for row in sorted(rows, key=lambda r: -(r["missing_for_s"] or 0)):
            if row["missing"] <= 0 or row["silent"] or row["regency"] is None:
                continue
            if now - (row["behind_since"] or now) < self.policy.settle_s:
                continue
            device_id = row["device_id"]
            room = min(
                self.policy.max_outstanding - len(opened.get(device_id, [])),
                self.policy.max_outstanding_total - total - asked,
            )
            if room <= 0:
                continue
            spans = _subtract(
                missing_spans(self._store, device_id, row["head_seq"]), opened.get(device_id, [])
            )
            chunks = [c for s in spans for c in _chunks(s, self.policy.max_range)][:room]
            failures = self._failures(device_id)
            for lo, hi in chunks:
                if not self._request(row, lo, hi, failures, now):
                    return asked
                asked += 1
        self.asked += asked
        return asked

    def _request(self, row: dict, lo: int, hi: int, failures: int, now: float) -> bool:
        device_id = row["device_id"]
        command_id = _new_id()
        payload = sign_command(
            self._key, device_id, "resend", {"from_seq": lo, "to_seq": hi}, command_id=command_id
        )
        topic = Topics(row["regency"], device_id, self._prefix).command("resend")
        if not self._publish(topic, payload):
            return False  # not connected: the next step tries again
        due = now + self.policy.backoff(failures)
        self._store.write(
            lambda sql, *a: sql(
                "INSERT INTO resends VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)", a
            ),
            command_id,
            device_id,
            lo,
            hi,
            failures + 1,
            now,
            due,
            "asked",
            self.holder,
        )
        log.info("asked %s to resend %d..%d (attempt %d)", device_id, lo, hi, failures + 1)
        if failures + 1 == self.policy.max_attempts:
            self._store.write(
                lambda sql, *a: sql(
                    "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (kind, event_id) DO NOTHING",
                    a,
                ),
                "resend_unanswered",
                f"{device_id}@{lo}-{hi}",
                device_id,
                f"{failures} resend commands in a row brought nothing back",
                now,
            )
        return True

    def _open_requests(self) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for device_id, lo, hi in self._store.query(
            "SELECT device_id, from_seq, to_seq FROM resends WHERE status = 'asked'"
        ):
            out.setdefault(device_id, []).append((int(lo), int(hi)))
        return out

    def _failures(self, device_id: str) -> int:
        """Unanswered requests in a row (none of their events arrived), newest first."""
        rows = self._store.query(
            "SELECT status, arrived FROM resends WHERE device_id = ? AND status <> 'asked' "
            "ORDER BY asked_at DESC LIMIT 64",
            (device_id,),
        )
        n = 0
        for status, arrived in rows:
            if status != "expired" or arrived:
                break
            n += 1
        return n

    def requests(self, device_id: str | None = None) -> list[dict]:
        """What was asked and what arrived, oldest first (tests, dashboard, operators)."""
        sql = (
            "SELECT command_id, device_id, from_seq, to_seq, attempt, asked_at, due_at, status, "
            "arrived, done_at, asked_by FROM resends"
        )
        params: tuple = ()
        if device_id:
            sql, params = sql + " WHERE device_id = ?", (device_id,)
        keys = (
            "command_id device_id from_seq to_seq attempt asked_at due_at status arrived "
            "done_at asked_by"
        ).split()
        return [
            dict(zip(keys, r, strict=True))
            for r in self._store.query(sql + " ORDER BY asked_at, from_seq", params)
        ]


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _chunks(span: tuple[int, int], size: int) -> list[tuple[int, int]]:
    lo, hi = span
    return [(s, min(hi, s + size - 1)) for s in range(lo, hi + 1, size)]


def _subtract(spans: list[tuple[int, int]], covered: list[tuple[int, int]]):
    """The parts of ``spans`` that no ``covered`` range already asks for."""
    out = []
    for lo, hi in spans:
        pieces = [(lo, hi)]
        for c_lo, c_hi in covered:
            nxt = []
            for a, b in pieces:
                if c_hi < a or c_lo > b:
                    nxt.append((a, b))
                    continue
                if a < c_lo:
                    nxt.append((a, c_lo - 1))
                if b > c_hi:
                    nxt.append((c_hi + 1, b))
            pieces = nxt
        out.extend(pieces)
    return out
