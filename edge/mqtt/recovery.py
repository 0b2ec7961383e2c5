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
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from edge.mqtt.commands import MAX_RESEND, sign_command
from edge.mqtt.heads import chunks, lag_rows, missing_spans, subtract
from edge.mqtt.leader import Leadership
from edge.mqtt.schemas import parse
from edge.mqtt.store import EventStore
from edge.mqtt.topics import DEFAULT_PREFIX, Topics, split
from edge.registry import message_problem

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
            spans = subtract(
                missing_spans(self._store, device_id, row["head_seq"]), opened.get(device_id, [])
            )
            wanted = [c for s in spans for c in chunks(s, self.policy.max_range)][:room]
            failures = self._failures(device_id)
            for lo, hi in wanted:
                if not self._request(row, lo, hi, failures, now):
                    return asked
                asked += 1
        self.asked += asked
        return asked

    def _request(self, row: dict, lo: int, hi: int, failures: int, now: float) -> bool:
        device_id = row["device_id"]
        command_id = str(uuid.uuid4())
        payload = sign_command(
            self._key, device_id, "resend", {"from_seq": lo, "to_seq": hi}, command_id=command_id
        )
        topic = Topics(row["regency"], device_id, self._prefix).command("resend")
        due = now + self.policy.backoff(failures)
        # Recorded before it is sent: the terminal's answer can come back before publish returns.
        self._store.write(
            lambda sql, *a: sql(
                "INSERT INTO resends VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, NULL, NULL)", a
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
        if not self._publish(topic, payload):
            # Not connected: forget it, the next step asks again.
            self._store.write(
                lambda sql, cid: sql("DELETE FROM resends WHERE command_id = ?", (cid,)), command_id
            )
            return False
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
            "arrived, done_at, asked_by, answer, resent FROM resends"
        )
        params: tuple = ()
        if device_id:
            sql, params = sql + " WHERE device_id = ?", (device_id,)
        keys = (
            "command_id device_id from_seq to_seq attempt asked_at due_at status arrived "
            "done_at asked_by answer resent"
        ).split()
        return [
            dict(zip(keys, r, strict=True))
            for r in self._store.query(sql + " ORDER BY asked_at, from_seq", params)
        ]


def record_answer(
    store: EventStore, registry, topic: str, payload: bytes, prefix: str = DEFAULT_PREFIX
) -> str:
    """Record a terminal's signed answer to a ``resend`` command; never raises.

    A terminal that re-sends fewer events than asked for lacks events it once reported (its
    ``last_seq`` said they existed): a ``resend_short`` anomaly, for someone to look at.
    """
    try:
        answer = parse("command_result", payload)
        where = split(topic, prefix)
        if where is None or where[1] != answer["device_id"]:
            return "ignored: wrong topic"
        problem = message_problem(registry.lookup(answer["device_id"]), answer)
        if problem is not None:
            return f"ignored: {problem}"
        resent = answer["result"].get("resent") if answer["ok"] else None
        return store.write(_answer, answer, resent if type(resent) is int else None)
    except Exception as exc:  # junk on a result topic must not stall the consumer
        log.warning("resend answer on %s not recorded: %s", topic, exc.__class__.__name__)
        return f"ignored: {exc.__class__.__name__}"


def _answer(sql, answer: dict, resent: int | None) -> str:
    row = sql(
        "SELECT device_id, from_seq, to_seq FROM resends WHERE command_id = ?",
        (answer["command_id"],),
    ).fetchone()
    if row is None or row[0] != answer["device_id"]:
        return "ignored: not a command this store asked"
    sql(
        "UPDATE resends SET answer = ?, resent = ? WHERE command_id = ?",
        (answer["status"], resent, answer["command_id"]),
    )
    device_id, lo, hi = row
    if resent is not None and resent < hi - lo + 1:
        detail = f"asked for seq {lo}..{hi}, the device re-sent {resent}: its ledger lacks events"
        sql(
            "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, event_id) DO NOTHING",
            ("resend_short", f"{device_id}@{lo}-{hi}", device_id, detail, time.time()),
        )
        log.warning("device %s: %s", device_id, detail)
        return "recorded: short"
    return "recorded"
