"""The central event store on both backends: SQLite and a throw-away PostgreSQL.

The store is fed directly with ledger events (it trusts its caller to have verified them),
except for the CLI and the end-to-end test, which go through the consumer and a real Mosquitto.
"""

from __future__ import annotations

import json
import threading

import pytest
from mosquitto import broker_fixture, pki_fixture, wait_for  # noqa: F401
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from support import pay

from edge.__main__ import main
from edge.config import parse_config
from edge.events import canonical
from edge.mqtt.consumer import Consumer, DeviceRegistry, resend_requests
from edge.mqtt.reporter import Reporter
from edge.mqtt.store import EventStore

ROUND = "2026-11"
REGENCY = {"edge-a01": "3171", "edge-b01": "3171", "edge-c01": "3172"}


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request, tmp_path) -> str:
    """A DSN of an empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.sqlite'}"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def store(dsn):
    s = EventStore(dsn)
    yield s
    s.close()


@pytest.fixture
def ledgers(tmp_path, make_identity, make_ledger):
    """Three terminals: two in regency 3171, one in 3172."""
    return {
        d: make_ledger(tmp_path / f"{d}.sqlite", make_identity(), d, r) for d, r in REGENCY.items()
    }


def test_the_same_event_twice_is_stored_once(store, ledgers):
    a = ledgers["edge-a01"]
    evs = [pay(a, f"H{i}", ROUND) for i in range(3)] + [a.record("spoof", liveness=0.05)]
    assert [store.add(e) for e in evs] == [True] * 4
    assert [store.add(e) for e in evs] == [False] * 4
    assert store.count() == 4 and store.anomalies() == []
    assert sorted(store.event_ids()) == sorted(e["event_id"] for e in evs)
    # The stored body is the signed event exactly: types (int, None, float) survive the trip.
    assert store.events("edge-a01") == evs
    assert store.devices() == {"edge-a01": "3171"}
    assert store.last_seq("edge-a01") == 4 and store.last_seq("edge-zz9") == 0
    assert store.outcome_counts() == {"accepted": 3, "spoof": 1}
    # An event id that comes back with other content is kept out and flagged.
    assert store.add({**evs[0], "hash": "f" * 64}) is False
    [flag] = store.anomalies("id_conflict")
    assert flag["event_id"] == evs[0]["event_id"] and flag["device_id"] == "edge-a01"
    assert store.events("edge-a01") == evs


def test_gaps_out_of_order_and_resend_requests(store, ledgers, central_key):
    a = ledgers["edge-a01"]
    evs = [a.record("no_match", score=0.1) for _ in range(10)]
    for ev in reversed([e for e in evs if e["seq"] not in (1, 4, 5, 9)]):
        assert store.add(ev)
    assert store.gaps() == {"edge-a01": [(1, 1), (4, 5), (9, 9)]}
    assert store.anomalies() == []
    reqs = resend_requests(store, central_key, heads={"edge-a01": 12})
    spans = [(json.loads(p)["args"]["from_seq"], json.loads(p)["args"]["to_seq"]) for _, p in reqs]
    assert spans == [(1, 1), (4, 5), (9, 9), (11, 12)]
    for ev in evs:
        store.add(ev)
    assert store.gaps() == {} and store.anomalies() == [] and store.count() == 10


def test_double_payout_at_two_terminals_in_one_round_is_flagged(store, ledgers):
    ev_a = pay(ledgers["edge-a01"], "H7", ROUND)
    ev_b = pay(ledgers["edge-b01"], "H7", ROUND)
    other_round = pay(ledgers["edge-b01"], "H7", "2026-12")
    refused = ledgers["edge-c01"].record("already_paid", household_id="H7", round_id=ROUND)
    for ev in (ev_a, ev_b, other_round, refused):
        assert store.add(ev)
    [flag] = store.anomalies("double_payout")
    assert flag["event_id"] == ev_b["event_id"] and flag["device_id"] == "edge-b01"
    assert ev_a["event_id"] in flag["detail"] and "edge-a01" in flag["detail"]
    assert store.anomalies() == [flag]


def test_chain_break_and_sequence_conflict(store, ledgers):
    a = ledgers["edge-a01"]
    e1, e2, e3, e4 = (a.record("no_face") for _ in range(4))
    store.add(e1)
    # seq 2 does not follow seq 1's hash: flagged on arrival.
    bad2 = {**e2, "prev_hash": "0" * 64}
    store.add(bad2)
    assert [x["event_id"] for x in store.anomalies("chain_break")] == [e2["event_id"]]
    # seq 4 first, then a seq 3 whose hash is not what seq 4 points to: the successor is flagged.
    store.add(e4)
    store.add({**e3, "hash": "1" * 64})
    breaks = store.anomalies("chain_break")
    assert {x["event_id"] for x in breaks} == {e2["event_id"], e4["event_id"]}
    # Another event with seq 4 (a restored ledger copy): a sequence conflict.
    fork = {**e4, "event_id": "00000000-0000-4000-8000-000000000004", "hash": "2" * 64}
    store.add(fork)
    [conflict] = store.anomalies("seq_conflict")
    assert conflict["event_id"] == fork["event_id"] and e4["event_id"] in conflict["detail"]


def test_summary_totals_per_regency_and_round(store, dsn, ledgers, capsys):
    for i in range(3):
        pay(ledgers["edge-a01"], f"A{i}", ROUND, 600_000)
    pay(ledgers["edge-b01"], "B0", ROUND, 300_000)
    pay(ledgers["edge-c01"], "C0", "2026-12", 200_000)
    ledgers["edge-c01"].record("no_match")
    for led in ledgers.values():
        for ev in led.events():
            store.add(ev)
    assert store.summary() == [
        {"regency": "3171", "round_id": ROUND, "count": 4, "amount": 2_100_000},
        {"regency": "3172", "round_id": "2026-12", "count": 1, "amount": 200_000},
    ]
    assert main(["consume", "--summary", "--db", dsn]) == 0
    out = capsys.readouterr().out
    assert "3171     2026-11" in out and "2,100,000" in out and "2,300,000" in out
    assert "no_match=1" in out


def test_nul_characters_are_stored_not_refused(store, ledgers):
    # PostgreSQL text cannot hold NUL. Refused, these would fail on every redelivery: junk from
    # the wire, and a household id read from a QR card (the schema does not forbid NUL there).
    store.reject("bansos/v1/3171/edge-a01/event", "not JSON: \x00", b"\x00\xff{junk")
    assert store.rejected_count() == 1
    ev = pay(ledgers["edge-a01"], "H\x00")
    assert store.add(ev) and store.add(ev) is False
    assert store.events("edge-a01") == [ev]  # the signed body keeps it exactly


def test_concurrent_consumers_still_see_every_double_payout(dsn, ledgers):
    # Two consumers (two connections) store the two halves of each double payout at the same
    # moment; neither may miss the other's event.
    n = 40
    firsts = [pay(ledgers["edge-a01"], f"H{i}", ROUND) for i in range(n)]
    seconds = [pay(ledgers["edge-b01"], f"H{i}", ROUND) for i in range(n)]
    stores = [EventStore(dsn), EventStore(dsn)]
    barrier = threading.Barrier(2)

    def run(s: EventStore, evs: list[dict]) -> None:
        for ev in evs:
            barrier.wait(5)
            s.add(ev)

    threads = [
        threading.Thread(target=run, args=a) for a in zip(stores, (firsts, seconds), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert stores[0].count() == 2 * n
        # Whichever half of a pair came second is flagged, and only that one.
        flagged = {a["event_id"] for a in stores[0].anomalies("double_payout")}
        for first, second in zip(firsts, seconds, strict=True):
            assert len({first["event_id"], second["event_id"]} & flagged) == 1
        assert len(flagged) == n
    finally:
        for s in stores:
            s.close()


def test_postgresql_connection_loss_is_survived(pg_dsn, ledgers):
    import psycopg

    a = ledgers["edge-a01"]
    e1, e2 = pay(a, "H1"), pay(a, "H2")
    store = EventStore(pg_dsn)
    try:
        assert store.add(e1)
        # The server drops the consumer's session (restart, failover, idle timeout).
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert store.add(e2) and store.add(e1) is False
        assert store.count() == 2 and store.anomalies() == []
    finally:
        store.close()


def test_terminal_to_postgresql_through_mosquitto_stores_each_event_once(
    broker, pg_dsn, tmp_path, identity, make_ledger
):
    """Ledger -> Reporter -> Mosquitto (mutual TLS) -> Consumer -> PostgreSQL."""
    device = "edge-a01"
    cfg = parse_config(
        {
            "device": {"id": device, "regency": "3171", "state_dir": str(tmp_path / device)},
            "mqtt": {**broker.mqtt_config(device), "health_interval_s": 3600},
        }
    )
    ledger = make_ledger(tmp_path / device / "ledger.sqlite", identity, device)
    store = EventStore(pg_dsn)
    registry = DeviceRegistry(keys={device: identity.device_public_pem()})
    consumer = Consumer(broker.settings("central"), store, registry, client_id="central-pg")
    consumer.start()
    reporter = Reporter(cfg, ledger, identity, None, reconnect_max_s=1)
    try:
        assert consumer.subscribed.wait(10)
        reporter.start()
        events = [
            pay(ledger, f"KPM-{i:03d}", ROUND, 600_000) if i % 3 == 0 else ledger.record("no_match")
            for i in range(30)
        ]
        reporter.wake()
        assert wait_for(lambda: store.count() == 30 and ledger.outbox_depth() == 0, 15)
        # Every event once, byte-for-byte the ledger's, with nothing missing or flagged.
        assert sorted(store.event_ids()) == sorted(e["event_id"] for e in events)
        assert store.events(device) == events
        assert store.gaps() == {} and store.anomalies() == [] and store.rejected_count() == 0
        assert store.summary() == [
            {"regency": "3171", "round_id": ROUND, "count": 10, "amount": 6_000_000}
        ]
        # A re-delivery (e.g. after a lost PUBACK) is a duplicate, not a second row.
        stored, dupes = consumer.stored, consumer.duplicates
        reporter.stop()
        topic = f"bansos/v1/3171/{device}/event"
        assert consumer.handle(topic, canonical(events[0])) == "duplicate"
        assert consumer.stored == stored == 30 and consumer.duplicates == dupes + 1
        assert store.count() == 30
    finally:
        reporter.stop()
        consumer.stop()
        store.close()
        ledger.close()
