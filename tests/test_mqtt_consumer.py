"""The reference consumer's checks and store, fed directly (no broker needed)."""

from __future__ import annotations

import json
import shutil

import pytest
from support import pay

from edge.__main__ import main
from edge.events import canonical, event_hash
from edge.keys import write_card
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry, resend_requests
from edge.mqtt.schemas import errors
from edge.mqtt.store import EventStore

ROUND = "2026-11"


def topic(ev: dict) -> str:
    return f"bansos/v1/{ev['regency']}/{ev['device_id']}/event"


@pytest.fixture
def world(tmp_path, make_identity, make_ledger):
    """Two terminals of regency 3171 and one of 3172, a registry and a consumer."""
    ids = {d: make_identity() for d in ("edge-a01", "edge-b01", "edge-c01")}
    regency = {"edge-a01": "3171", "edge-b01": "3171", "edge-c01": "3172"}
    ledgers = {d: make_ledger(tmp_path / f"{d}.sqlite", ids[d], d, regency[d]) for d in ids}
    registry = DeviceRegistry(keys={d: i.device_public_pem() for d, i in ids.items()})
    store = EventStore(tmp_path / "central.sqlite")
    consumer = Consumer(BrokerSettings(tls=False), store, registry)
    yield ledgers, consumer, store
    store.close()


def feed(consumer, events) -> list[str]:
    return [consumer.handle(topic(e), canonical(e)) for e in events]


def test_valid_events_are_stored_once(world):
    ledgers, consumer, store = world
    a = ledgers["edge-a01"]
    evs = [pay(a, f"H{i}", ROUND, 600_000) for i in range(5)]
    evs.append(a.record("spoof", liveness=0.05))
    assert feed(consumer, evs) == ["stored"] * 6
    assert feed(consumer, evs[:2]) == ["duplicate"] * 2
    assert store.count() == 6 and store.gaps() == {} and store.anomalies() == []
    # What the store keeps is exactly the device's signed event.
    assert store.events("edge-a01") == evs


def test_tampered_forged_foreign_and_malformed_events_are_rejected(
    world, make_identity, make_ledger
):
    ledgers, consumer, store = world
    ev = pay(ledgers["edge-a01"], "H1", ROUND, 600_000)
    richer = {**ev, "amount": 6_000_000}
    rehashed = {**richer, "hash": event_hash(richer)}
    cases = {
        "hash does not match": canonical(richer),
        "bad signature": canonical(rehashed),
        "additional properties": canonical({**ev, "note": "x"}),
        "not JSON": b"\xff{",
    }
    for reason, payload in cases.items():
        assert reason.lower() in consumer.handle(topic(ev), payload).lower(), reason
    # An event posted under another terminal's topic, and a terminal nobody registered.
    assert "topic" in consumer.handle("bansos/v1/3171/edge-b01/event", canonical(ev))
    stranger = make_ledger(
        ledgers["edge-a01"].path.with_name("x.sqlite"), make_identity(), "edge-x01"
    )
    sev = stranger.record("no_face")
    stranger.close()
    assert consumer.handle(topic(sev), canonical(sev)) == "rejected: unknown device"
    assert store.count() == 0 and store.rejected_count() == 6 and consumer.rejected == 6


def test_out_of_order_arrival_is_fine_and_gaps_are_reported(world, central_key):
    ledgers, consumer, store = world
    a = ledgers["edge-a01"]
    evs = [a.record("no_match", score=0.1) for _ in range(10)]
    feed(consumer, reversed([e for e in evs if e["seq"] not in (3, 4, 8)]))
    assert store.gaps() == {"edge-a01": [(3, 4), (8, 8)]}
    assert store.anomalies() == []
    reqs = resend_requests(store, central_key, heads={"edge-a01": 12})
    assert [t for t, _ in reqs] == ["bansos/v1/3171/edge-a01/cmd/resend"] * 3
    spans = [(json.loads(p)["args"]["from_seq"], json.loads(p)["args"]["to_seq"]) for _, p in reqs]
    assert spans == [(3, 4), (8, 8), (11, 12)]
    assert all(errors("command", json.loads(p)) == [] for _, p in reqs)
    feed(consumer, [e for e in evs if e["seq"] in (3, 4, 8)])
    assert store.gaps() == {} and store.anomalies() == []


def test_same_household_paid_at_two_terminals_is_flagged(world):
    ledgers, consumer, store = world
    # Both terminals were cut off from each other, so claims sync could not stop the second.
    ev_a = pay(ledgers["edge-a01"], "H7", ROUND, 600_000)
    ev_b = pay(ledgers["edge-b01"], "H7", ROUND, 600_000)
    other_round = pay(ledgers["edge-b01"], "H7", "2026-12", 1)
    feed(consumer, [ev_a, ev_b, other_round])
    [flag] = store.anomalies("double_payout")
    assert flag["event_id"] == ev_b["event_id"] and ev_a["event_id"] in flag["detail"]
    assert "edge-a01" in flag["detail"]


def test_a_forked_ledger_shows_as_a_sequence_conflict(world, tmp_path, make_identity, make_ledger):
    _, consumer, store = world
    keys = tmp_path / "keys-f01"
    identity = make_identity(keys)
    consumer._registry.add("edge-f01", identity.device_public_pem())
    a = make_ledger(tmp_path / "f01.sqlite", identity, "edge-f01")
    feed(consumer, [a.record("no_face") for _ in range(3)])
    # Someone restores an old copy of the ledger (keys included) and keeps paying from it.
    a.close()
    shutil.copy(tmp_path / "f01.sqlite", tmp_path / "restored.sqlite")
    a = make_ledger(tmp_path / "f01.sqlite", identity, "edge-f01")
    ev4 = a.record("no_face")
    a.close()
    restored = make_ledger(tmp_path / "restored.sqlite", make_identity(keys), "edge-f01")
    fork4 = pay(restored, "H9", ROUND, 1)
    restored.close()
    assert ev4["seq"] == fork4["seq"] == 4
    assert feed(consumer, [ev4, fork4]) == ["stored", "stored"]
    [conflict] = store.anomalies("seq_conflict")
    assert conflict["event_id"] == fork4["event_id"] and ev4["event_id"] in conflict["detail"]


def test_summary_totals_per_regency_and_round(world, tmp_path, capsys):
    ledgers, consumer, store = world
    for i in range(3):
        pay(ledgers["edge-a01"], f"A{i}", ROUND, 600_000)
    pay(ledgers["edge-b01"], "B0", ROUND, 300_000)
    pay(ledgers["edge-c01"], "C0", "2026-12", 200_000)
    ledgers["edge-c01"].record("no_match")
    for led in ledgers.values():
        feed(consumer, list(led.events()))
    assert store.summary() == [
        {"regency": "3171", "round_id": ROUND, "count": 4, "amount": 2_100_000},
        {"regency": "3172", "round_id": "2026-12", "count": 1, "amount": 200_000},
    ]
    db = f"sqlite:///{tmp_path / 'central.sqlite'}"
    assert main(["consume", "--summary", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "3171     2026-11" in out and "2,100,000" in out and "2,300,000" in out
    assert "no_match=1" in out


def test_registry_reads_pem_files_and_device_cards(tmp_path, make_identity):
    a, b = make_identity(), make_identity()
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "edge-a01.pem").write_bytes(a.device_public_pem())
    write_card(b, "edge-b01", tmp_path / "reg" / "card-b.json")
    reg = DeviceRegistry(tmp_path / "reg")
    assert reg.get("edge-a01") == a.device_public_pem()
    assert reg.get("edge-b01") == b.device_public_pem()
    assert reg.get("edge-c01") is None
    flat = tmp_path / "keys.json"
    flat.write_text(json.dumps({"edge-a01": a.device_public_pem().decode()}))
    assert DeviceRegistry(flat).get("edge-a01") == a.device_public_pem()
