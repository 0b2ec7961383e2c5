"""Device heads at central: recorded from health and status, and a cut or forked chain caught.

Every test runs on SQLite and on a throw-away PostgreSQL. Reports are fed to the consumer as
paho would hand them over (topic, payload, retain flag); no broker is needed here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from support import T0, FakeClock, pay

from edge.__main__ import main
from edge.events import canonical, iso_utc, sign_head
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry, resend_requests
from edge.mqtt.heads import HeadBook, head_seqs
from edge.mqtt.store import EventStore

DEVICE = "edge-h01"
REGENCY = "3171"
ROUND = "2026-11"
BASE = f"bansos/v1/{REGENCY}/{DEVICE}"


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.sqlite'}"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def central(dsn, tmp_path, make_identity, make_ledger):
    """A terminal's identity and ledger, and a consumer (no broker) that knows its key."""
    keys = tmp_path / "keys"
    identity = make_identity(keys)
    ledger = make_ledger(tmp_path / "h01.sqlite", identity, DEVICE, REGENCY)
    store = EventStore(dsn)
    consumer = Consumer(
        BrokerSettings(tls=False),
        store,
        DeviceRegistry(keys={DEVICE: identity.device_public_pem()}),
    )
    yield consumer, store, ledger, identity
    store.close()


def head_of(ledger, identity, ts: float) -> dict:
    """The ledger's current head, signed as the terminal signs it."""
    seq, digest = ledger._head()
    return sign_head(DEVICE, seq, digest, iso_utc(ts), identity.sign)


def health(last_seq: int | None, head: dict | None = None, ts: float = T0, **extra) -> bytes:
    body = {
        "schema": "bansos.health/1",
        "device_id": DEVICE,
        "regency": REGENCY,
        "ts": iso_utc(ts),
        "uptime_s": 1.0,
        "outbox_depth": 0,
        "last_seq": last_seq,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None,
        "faults": [],
        **extra,
    }
    if head is not None:
        body["head"] = head
    return canonical(body)


def status(head: dict | None, state: str = "online", ts: float = T0) -> bytes:
    body = {"schema": "bansos.status/1", "device_id": DEVICE, "state": state, "ts": iso_utc(ts)}
    if head is not None:
        body["head"] = head
    return canonical(body)


def feed(consumer, events) -> list[str]:
    return [consumer.handle(f"{BASE}/event", canonical(e)) for e in events]


def kinds(store) -> list[str]:
    return sorted(a["kind"] for a in store.anomalies())


def test_heads_from_health_and_status_are_recorded_and_drive_resends(central, central_key):
    consumer, store, ledger, identity = central
    events = [ledger.record("no_match", score=0.1) for _ in range(6)]
    feed(consumer, events[:3])  # events 4..6 were lost on the way: no gap shows it
    assert store.gaps() == {}
    assert resend_requests(store, central_key) == []
    assert consumer.heads.observe(f"{BASE}/health", health(6)) == "recorded"
    assert head_seqs(store) == {DEVICE: (REGENCY, 6)}
    [(topic, payload)] = resend_requests(store, central_key)
    assert topic == f"{BASE}/cmd/resend"
    assert json.loads(payload)["args"] == {"from_seq": 4, "to_seq": 6}
    # A signed head on a status message moves the head too, and is kept as a checkpoint.
    more = [ledger.record("no_face") for _ in range(2)]
    head = head_of(ledger, identity, T0 + 10)
    assert consumer.heads.observe(f"{BASE}/status", status(head)) == "recorded"
    [row] = store.query("SELECT last_seq, signed_seq, signed_hash, state, seen_at FROM heads")
    assert row[:4] == (8, 8, more[-1]["hash"], "online") and row[4] > 0
    assert store.query("SELECT seq, hash FROM checkpoints") == [(8, more[-1]["hash"])]
    [lag] = store.lag()
    assert (lag["head_seq"], lag["stored"], lag["missing"]) == (8, 3, 5)
    feed(consumer, events[3:] + more)
    assert store.lag()[0]["missing"] == 0 and store.anomalies() == []


def test_bad_reports_are_rejected_and_never_raise(central, make_identity):
    consumer, store, ledger, identity = central
    ledger.record("no_face")
    forged = sign_head(DEVICE, 1, ledger._head()[1], iso_utc(T0), make_identity().sign)
    cases = {
        f"{BASE}/health": [
            health(1, forged),
            health(1, {**head_of(ledger, identity, T0), "seq": 2}),
            health(1, {"seq": 1}),
            health(1, regency="3172"),
            b"\xff{",
            b"[1, 2]",
            b'{"last_seq": "\\ud800"}',
            b"[" * 100_000,
        ],
        "bansos/v1/3171/edge-zz9/health": [health(1)],  # another device's topic
    }
    for topic, payloads in cases.items():
        for payload in payloads:
            assert consumer.heads.observe(topic, payload).startswith("rejected: "), payload[:40]
    assert store.rejected_count() == 9
    assert store.query("SELECT COUNT(*) FROM heads") == [(0,)]
    assert consumer.heads.observe("bansos/v1/3171/edge-h01/event", b"{}").startswith("ignored")


@pytest.mark.parametrize("central_had_tail", [True, False], ids=["tail-stored", "tail-lost"])
def test_truncated_and_repaid_ledger_is_caught(central, tmp_path, central_had_tail):
    """Issue 12: delete the newest events, set the head back, pay the same households again."""
    consumer, store, ledger, identity = central
    events = [pay(ledger, f"KPM-3171-0000-{i:04d}", ROUND, 600_000) for i in range(10)]
    feed(consumer, events if central_had_tail else events[:8])
    clock = FakeClock(T0 + 60)
    assert consumer.heads.observe(f"{BASE}/health", health(10, head_of(ledger, identity, clock())))
    # The attacker, holding the SD card: drop the append-only triggers, delete seq 9 and 10
    # with their payouts and outbox rows, restart the daemon.
    path = ledger.path
    ledger.close()
    shutil.copy(path, tmp_path / "before.sqlite")
    db = sqlite3.connect(path)
    for name in ("events_append_only_d", "payouts_keep_d"):
        db.execute(f"DROP TRIGGER {name}")
    cut = [e["event_id"] for e in events[8:]]
    db.execute("DELETE FROM outbox WHERE event_id IN (?, ?)", cut)
    db.execute("DELETE FROM payouts WHERE event_id IN (?, ?)", cut)
    db.execute("DELETE FROM events WHERE seq > 8")
    db.commit()
    db.close()
    clock.advance(60)
    from edge.ledger.store import Ledger

    ledger = Ledger(path, identity, DEVICE, REGENCY, clock=clock)
    try:
        # The restarted daemon reports its (shorter) chain: a signed head that went back.
        outcome = consumer.heads.observe(
            f"{BASE}/health", health(8, head_of(ledger, identity, clock()))
        )
        assert outcome == "recorded: rollback"
        assert kinds(store) == ["head_rollback"]
        # ...then pays the same two households again under seq 9 and 10.
        repaid = [pay(ledger, f"KPM-3171-0000-{i:04d}", ROUND, 600_000) for i in (8, 9)]
        assert [e["seq"] for e in repaid] == [9, 10]
        feed(consumer, repaid)
        clock.advance(60)
        outcome = consumer.heads.observe(
            f"{BASE}/health", health(10, head_of(ledger, identity, clock()))
        )
        assert outcome == "recorded: fork"
    finally:
        ledger.close()
    found = kinds(store)
    assert "head_rollback" in found and "head_fork" in found
    forks = [a for a in store.anomalies("head_fork")]
    # Seq 10 paid again: the event itself and the new signed head both contradict the old head.
    assert repaid[1]["event_id"] in {a["event_id"] for a in forks}
    assert any(a["event_id"].startswith(f"{DEVICE}@10:") for a in forks)
    if central_had_tail:
        assert {"seq_conflict", "double_payout"} <= set(found)
    # The honest chain stays untouched: the stored head remains the higher signed one.
    [(signed_seq, signed_hash)] = store.query("SELECT signed_seq, signed_hash FROM heads")
    assert (signed_seq, signed_hash) == (10, events[-1]["hash"])


def test_stale_heads_are_not_rollbacks(central):
    consumer, store, ledger, identity = central
    for _ in range(3):
        ledger.record("no_face")
    old = head_of(ledger, identity, T0)
    ledger.record("no_face")
    new = head_of(ledger, identity, T0 + 30)
    assert consumer.heads.observe(f"{BASE}/health", health(4, new, ts=T0 + 30)) == "recorded"
    # The broker replays the retained status of long ago, and a shared group handles an older
    # health report after a newer one: both lower, neither evidence.
    assert consumer.heads.observe(f"{BASE}/status", status(old), retained=True) == "recorded"
    assert consumer.heads.observe(f"{BASE}/health", health(3, old)) == "recorded"
    assert store.anomalies() == []
    assert head_seqs(store) == {DEVICE: (REGENCY, 4)}


def test_lag_and_silence_in_rows_and_summary(central, dsn, capsys):
    consumer, store, ledger, _ = central
    events = [ledger.record("no_match", score=0.1) for _ in range(10)]
    feed(consumer, [e for e in events if e["seq"] not in (4, 5)])
    book = HeadBook(store, consumer._registry, clock=lambda: T0)
    book.observe(f"{BASE}/health", health(14))
    received = store.query("SELECT MAX(received_at) FROM events")[0][0]
    [row] = store.lag(silent_after_s=600, now=T0 + 120)
    assert (row["head_seq"], row["stored"], row["missing"]) == (14, 8, 6)
    assert row["missing_for_s"] == 120.0
    assert row["silent"] is False and row["regency"] == REGENCY
    assert row["last_seen"] == max(received, T0)
    # Much later, nothing heard: silent.
    [row] = store.lag(silent_after_s=600, now=received + 3600)
    assert row["silent"] is True and row["silent_for_s"] >= 3599
    assert main(["consume", "--summary", "--db", dsn, "--silent-after", "0"]) == 0
    out = capsys.readouterr().out
    assert f"LAG {DEVICE}: 6 of 14 event(s) missing" in out
    assert f"SILENT {DEVICE}" in out and f"GAP {DEVICE}: seq 4..5 missing" in out


def test_heads_are_believed_only_from_the_signed_registry(
    dsn, tmp_path, make_ledger, identity, make_identity, registry_of
):
    """With central's signed registry, a report of a device registered in another regency, or
    revoked, is rejected; the registered device's signed head is recorded."""
    ledger = make_ledger(tmp_path / "h01.sqlite", identity, DEVICE, REGENCY)
    store = EventStore(dsn)
    try:
        consumer = Consumer(
            BrokerSettings(tls=False),
            store,
            registry_of({DEVICE: (REGENCY, identity), "edge-x": ("3172", make_identity())}),
        )
        ledger.record("no_match", score=0.1)
        head = head_of(ledger, identity, T0)
        assert consumer.heads.observe(f"{BASE}/health", health(1, head)) == "recorded"
        elsewhere = health(1).replace(DEVICE.encode(), b"edge-x")
        assert consumer.heads.observe(f"bansos/v1/{REGENCY}/edge-x/health", elsewhere).startswith(
            "rejected"
        )
        assert head_seqs(store) == {DEVICE: (REGENCY, 1)}
    finally:
        store.close()
