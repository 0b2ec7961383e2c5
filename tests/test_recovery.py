"""The recovery loop without a broker: a fake wire carries central's signed commands to a real
CommandProcessor on the terminal side, whose resend action feeds the consumer again.

Clocks are fake (starting at the real time, because the store stamps events with it), so
back-off and limits are checked to the second.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from support import FakeClock, wait_for

from edge.events import canonical, iso_utc
from edge.keys import public_pem
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.heads import HeadBook
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.recovery import Recovery, RecoveryPolicy, record_answer
from edge.mqtt.store import EventStore

REGENCY = "3171"


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.sqlite'}"
    return request.getfixturevalue("pg_dsn")


class Terminal:
    """A ledger, and the terminal's real command checks in front of a resend action that
    hands the events straight to the consumer (as the broker would)."""

    def __init__(self, device_id, ledger, consumer, central_pem, state, clock, identity):
        self.identity = identity
        self.device_id = device_id
        self.ledger = ledger
        self.consumer = consumer
        self.answering = True
        self.results: list[dict] = []
        self.answers: list[str] = []
        self.processor = CommandProcessor(
            central_pem, device_id, state, {"resend": self._resend}, clock=clock
        )

    def _resend(self, args: dict) -> dict:
        sent = 0
        for ev in self.ledger.events():
            if args["from_seq"] <= ev["seq"] <= args["to_seq"]:
                topic = f"bansos/v1/{REGENCY}/{self.device_id}/event"
                assert self.consumer.handle(topic, canonical(ev)) in ("stored", "duplicate")
                sent += 1
        return {"resent": sent}

    def deliver(self, topic: str, payload: bytes) -> None:
        if not self.answering:
            return
        result = self.processor.handle(topic, payload)
        self.results.append(result)
        # Signed and published on .../cmd/resend/result, as the Reporter does.
        result["sig"] = base64.b64encode(self.identity.sign(canonical(result))).decode()
        self.answers.append(
            record_answer(
                self.consumer._store, self.consumer._registry, topic + "/result", canonical(result)
            )
        )


class Wire:
    """The broker, as far as central's commands go: keeps every one (a fake with history)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.terminals: dict[str, Terminal] = {}
        self.sent: list[tuple[float, str, dict]] = []
        self.connected = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if not self.connected:
            return False

        cmd = json.loads(payload)
        self.sent.append((self.clock.t, topic, cmd))
        self.terminals[cmd["device_id"]].deliver(topic, payload)
        return True

    def spans(self, device_id: str | None = None) -> list[tuple[int, int]]:
        return [
            (c["args"]["from_seq"], c["args"]["to_seq"])
            for _, _, c in self.sent
            if device_id in (None, c["device_id"])
        ]


@pytest.fixture
def world(dsn, tmp_path, make_identity, make_ledger, central_key):
    clock = FakeClock(time.time())
    store = EventStore(dsn)
    registry = DeviceRegistry()
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    consumer.heads = HeadBook(store, registry, clock=clock)
    wire = Wire(clock)
    central_pem = public_pem(central_key.public_key())

    def terminal(device_id: str) -> Terminal:
        identity = make_identity()
        registry.add(device_id, identity.device_public_pem())
        ledger = make_ledger(tmp_path / f"{device_id}.sqlite", identity, device_id, REGENCY)
        state = tmp_path / device_id
        state.mkdir()
        t = Terminal(device_id, ledger, consumer, central_pem, state, clock, identity)
        wire.terminals[device_id] = t
        return t

    def recovery(**policy) -> Recovery:
        defaults = {"settle_s": 5, "backoff_s": 10, "backoff_max_s": 80, "max_range": 10}
        return Recovery(
            store, wire, central_key, RecoveryPolicy(**{**defaults, **policy}), clock=clock
        )

    yield consumer, store, wire, terminal, recovery, clock
    store.close()


def report(consumer, t: Terminal, clock) -> None:
    """The terminal's health report: its last_seq."""
    body = {
        "schema": "bansos.health/1",
        "device_id": t.device_id,
        "regency": REGENCY,
        "ts": iso_utc(clock.t),
        "uptime_s": 1.0,
        "outbox_depth": 0,
        "last_seq": t.ledger.stats()["events"],
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None,
        "faults": [],
    }
    topic = f"bansos/v1/{REGENCY}/{t.device_id}/health"
    assert consumer.heads.observe(topic, canonical(body)) == "recorded"


def test_gaps_and_tail_are_asked_for_in_bounded_steps_until_stored(world):
    consumer, store, wire, terminal, recovery, clock = world
    t = terminal("edge-r01")
    events = [t.ledger.record("no_match", score=0.1) for _ in range(30)]
    for ev in events[:10]:
        if ev["seq"] not in (4, 5):
            consumer.handle(f"bansos/v1/{REGENCY}/edge-r01/event", canonical(ev))
    report(consumer, t, clock)
    loop = recovery()
    # Just noticed: events may still be in flight, so nothing is asked yet.
    assert loop.step()["asked"] == 0 and wire.sent == []
    clock.advance(5)
    # Two commands at most per device, ten seqs at most per command, the oldest first.
    assert loop.step()["asked"] == 2
    assert wire.spans() == [(4, 5), (11, 20)]
    assert all(r["ok"] and r["status"] == "applied" for r in t.results)
    clock.advance(1)
    assert loop.step() == {"leader": True, "asked": 1, "complete": 2, "expired": 0}
    assert wire.spans()[2:] == [(21, 30)]
    clock.advance(1)
    assert loop.step()["complete"] == 1
    # Everything is stored: nothing more is asked, however long the loop runs.
    for _ in range(5):
        clock.advance(30)
        assert loop.step()["asked"] == 0
    assert sorted(store.event_ids()) == sorted(e["event_id"] for e in events)
    log = loop.requests("edge-r01")
    assert [(r["from_seq"], r["to_seq"], r["status"], r["arrived"]) for r in log] == [
        (4, 5, "complete", 2),
        (11, 20, "complete", 10),
        (21, 30, "complete", 10),
    ]
    [lag] = store.lag()
    assert lag["missing"] == 0 and lag["behind_since"] is None
    # The terminal's signed answers are recorded next to what arrived.
    assert t.answers == ["recorded"] * 3
    assert [(r["answer"], r["resent"]) for r in log] == [
        ("applied", 2),
        ("applied", 10),
        ("applied", 10),
    ]


def test_a_terminal_that_cannot_resend_what_it_reported_is_flagged(world, make_identity):
    consumer, store, wire, terminal, recovery, clock = world
    t = terminal("edge-r05")
    for _ in range(5):
        t.ledger.record("no_face")
    report(consumer, t, clock)  # last_seq 5, but central got none of them...
    for _ in range(3):
        t.ledger.record("no_face")
    report(consumer, t, clock)  # ...then 8
    # The ledger loses its newest three (the attack of issue 12): ask, and only 5 come back.
    path = t.ledger.path
    t.ledger.close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER events_append_only_d")
    db.execute("DELETE FROM events WHERE seq > 5")
    db.commit()
    db.close()
    from edge.ledger.store import Ledger

    t.ledger = Ledger(path, t.identity, "edge-r05", REGENCY, clock=clock)
    loop = recovery()
    loop.step()
    clock.advance(5)
    assert loop.step()["asked"] == 1
    assert t.answers == ["recorded: short"] and store.count() == 5
    [flag] = store.anomalies("resend_short")
    assert flag["device_id"] == "edge-r05" and "re-sent 5" in flag["detail"]
    # Forged and junk answers change nothing.
    answer = {**t.results[0], "result": {"resent": 8}}
    answer["sig"] = base64.b64encode(make_identity().sign(canonical(answer))).decode()
    topic = "bansos/v1/3171/edge-r05/cmd/resend/result"
    assert record_answer(store, consumer._registry, topic, canonical(answer)).startswith("ignored")
    assert record_answer(store, consumer._registry, topic, b"\xff").startswith("ignored")
    assert [r["resent"] for r in loop.requests()] == [5]
    t.ledger.close()


def test_unanswered_requests_back_off_and_are_flagged(world):
    consumer, store, wire, terminal, recovery, clock = world
    t = terminal("edge-r02")
    for _ in range(3):
        t.ledger.record("no_face")
    t.answering = False  # e.g. commands disabled on the terminal
    loop = recovery(max_outstanding=1, max_attempts=4, silent_after_s=10_000)
    for _ in range(400):
        report(consumer, t, clock)  # the terminal is alive and keeps saying it holds 3
        loop.step()
        clock.advance(1)
    asked_at = [when - wire.sent[0][0] for when, _, _ in wire.sent]
    # 10 s for the first answer, doubling up to the 80 s cap.
    assert asked_at[:7] == [0, 10, 30, 70, 150, 230, 310]
    assert set(wire.spans()) == {(1, 3)}
    attempts = [r["attempt"] for r in loop.requests()]
    assert attempts[:5] == [1, 2, 3, 4, 5]
    [flag] = store.anomalies("resend_unanswered")
    assert flag["device_id"] == "edge-r02"
    # Then the terminal answers: the next request completes and the asking stops.
    t.answering = True
    for _ in range(100):
        loop.step()
        clock.advance(1)
    assert store.count() == 3 and loop.requests()[-1]["status"] == "complete"
    assert store.lag()[0]["missing"] == 0


def test_silent_devices_are_flagged_not_asked_and_limits_hold(world):
    consumer, store, wire, terminal, recovery, clock = world
    quiet, busy = terminal("edge-r03"), terminal("edge-r04")
    for t in (quiet, busy):
        for _ in range(50):
            t.ledger.record("no_face")
        report(consumer, t, clock)
    loop = recovery(silent_after_s=60, max_outstanding=3, max_outstanding_total=4)
    wire.connected = False  # central itself is cut off: nothing is recorded as asked
    clock.advance(10)
    loop.step()
    clock.advance(10)
    assert loop.step()["asked"] == 0 and loop.requests() == []
    wire.connected = True
    busy.answering = quiet.answering = False
    assert loop.step()["asked"] == 4  # the total limit, though each device may have 3
    assert {d: len(wire.spans(d)) for d in ("edge-r03", "edge-r04")} in (
        {"edge-r03": 3, "edge-r04": 1},
        {"edge-r03": 1, "edge-r04": 3},
    )
    # Only busy keeps reporting; quiet falls silent: alerted once, and no longer asked.
    for _ in range(120):
        clock.advance(1)
        report(consumer, busy, clock)
        loop.step()
    silent = store.anomalies("device_silent")
    assert [a["device_id"] for a in silent] == ["edge-r03"]
    last_quiet = max(when for when, _, c in wire.sent if c["device_id"] == "edge-r03")
    assert last_quiet <= clock.t - 60
    last_busy = max(when for when, _, c in wire.sent if c["device_id"] == "edge-r04")
    assert last_busy > last_quiet + 30


def test_one_leader_per_database_and_takeover(world, dsn, central_key):
    consumer, store, wire, terminal, recovery, clock = world
    others = [EventStore(dsn) for _ in range(2)]
    try:
        policy = RecoveryPolicy(lease_s=30)
        loops = [
            Recovery(s, wire, central_key, policy, holder=f"c{i}", clock=clock)
            for i, s in enumerate(others)
        ]
        assert [lp.step()["leader"] for lp in loops] == [True, False]
        assert [lp.step()["leader"] for lp in loops] == [True, False]  # renewing is not taking
        loops[0].stop()  # a clean stop hands over at once
        assert loops[1].step()["leader"] is True
        assert loops[0].step()["leader"] is False
        # The leader dies without a word: PostgreSQL frees the lock with its connection,
        # SQLite's lease runs out.
        loops[1].leadership._drop()
        if not store.postgres:
            assert loops[0].step()["leader"] is False
            clock.advance(31)
        # (PostgreSQL frees it when the dead connection's backend has exited: soon, not now.)
        assert wait_for(lambda: loops[0].step()["leader"], 10)
    finally:
        for s in others:
            s.close()
