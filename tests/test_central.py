"""Central's store: entitlements, counters kept by triggers, queries within a user's scope.

SQLite here (fast); the same behaviour on a real PostgreSQL is in test_central_pg.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from central_world import AMOUNT, ROUND, World, household
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import REF_KEY, ref_of

from edge.central import queries as q
from edge.central.auth import User
from edge.central.health import HealthMonitor
from edge.central.manifest import load_manifest, manifest_from_bundle, register_manifest
from edge.central.store import CentralStore
from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle
from edge.errors import BundleError, CentralError
from edge.keys import public_pem
from edge.mqtt.client import BrokerSettings

NATIONAL = User("nat", "national")
JAKSEL = User("jaksel", "regency", "3171")
DKI = User("dki", "province", "31")


@pytest.fixture
def world(tmp_path):
    w = World(CentralStore(tmp_path / "central.sqlite"), tmp_path)
    yield w
    w.close()


def recount(store: CentralStore) -> dict:
    """The counters recomputed from scratch, to hold the incremental ones against."""
    out = {}
    for round_id, device_id, entitled, collected in store.rows(
        "SELECT round_id, device_id, COUNT(*), COUNT(collected_event) FROM c_entitlements "
        "GROUP BY round_id, device_id"
    ):
        out[(round_id, device_id)] = {"entitled": entitled, "collected": collected}
    for round_id, device_id, paid, amount in store.rows(
        "SELECT round_id, device_id, COUNT(*), SUM(amount) FROM events "
        "WHERE outcome = 'accepted' GROUP BY round_id, device_id"
    ):
        out.setdefault((round_id, device_id), {"entitled": 0, "collected": 0})
        out[(round_id, device_id)].update(paid=paid, paid_amount=amount)
    return out


def cells(store: CentralStore) -> dict:
    rows = store.rows(
        "SELECT round_id, device_id, entitled, collected, paid, paid_amount FROM c_cells"
    )
    out = {}
    for round_id, device_id, entitled, collected, paid, amount in rows:
        out[(round_id, device_id)] = {"entitled": entitled, "collected": collected}
        if paid:
            out[(round_id, device_id)].update(paid=paid, paid_amount=amount)
    return out


def test_progress_at_every_level_follows_each_payout(world):
    world.all_terminals()
    f = q.Filters(ROUND)
    assert q.progress(world.store, NATIONAL, f)["total"] == {
        "entitled": 15,
        "collected": 0,
        "paid": 0,
        "amount": 0,
        "due": 15 * AMOUNT,
        "share": 0.0,
    }
    world.pay("edge-a01", 1)
    world.pay("edge-a02", 1)
    world.pay("edge-c01", 2)
    national = q.progress(world.store, NATIONAL, f)
    assert national["level"] == "province"
    assert {r["key"]: (r["entitled"], r["collected"]) for r in national["rows"]} == {
        "31": (13, 3),
        "32": (2, 0),
    }
    assert national["total"]["amount"] == 3 * AMOUNT and national["total"]["share"] == 20.0
    regencies = q.progress(world.store, NATIONAL, q.Filters(ROUND, "31"))["rows"]
    assert [(r["key"], r["collected"], r["entitled"]) for r in regencies] == [
        ("3171", 2, 9),
        ("3172", 1, 4),
    ]
    points = q.progress(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))["rows"]
    assert [(r["key"], r["collected"], r["terminals"]) for r in points] == [
        ("Balai Desa Cipete", 0, 1),
        ("Kantor Pos Tebet", 2, 2),
    ]
    devices = q.progress(world.store, NATIONAL, q.Filters(ROUND, "31", "3171", "Kantor Pos Tebet"))
    assert [(r["key"], r["collected"], r["share"]) for r in devices["rows"]] == [
        ("edge-a01", 1, 25.0),
        ("edge-a02", 1, 50.0),
    ]
    [hour] = q.timeline(world.store, NATIONAL, f)
    assert hour["paid"] == 3 and hour["hour"].startswith("2026-11-30T")
    assert q.timeline(world.store, NATIONAL, q.Filters(ROUND, device_id="edge-a02"))[0]["paid"] == 1
    assert cells(world.store) == recount(world.store)


def test_double_payout_and_refusals_are_counted_but_collect_once(world):
    world.all_terminals()
    first = world.pay("edge-a01", 1)
    # The same household again at another terminal (claims sync was cut off): paid twice,
    # collected once, and the store's anomaly names both events.
    second = world.pay("edge-a02", 0, hh=household("edge-a01", 1))
    world.refuse("edge-a01", "no_match")
    world.refuse("edge-a01", "spoof")
    world.refuse("edge-c01", "no_match")
    total = q.progress(world.store, NATIONAL, q.Filters(ROUND))["total"]
    assert (total["collected"], total["paid"], total["amount"]) == (1, 2, 2 * AMOUNT)
    [alert] = q.anomalies(world.store, NATIONAL)
    assert alert["kind"] == "double_payout" and alert["event_id"] == second["event_id"]
    assert first["event_id"] in alert["detail"] and alert["regency"] == "3171"
    assert q.summary_counts(world.store, NATIONAL, q.Filters(ROUND))["alerts"] == 1
    assert q.summary_counts(world.store, NATIONAL, q.Filters(ROUND, "31", "3172"))["alerts"] == 0
    ref = q.refusals(world.store, NATIONAL, q.Filters(ROUND))
    assert ref["refused"] == {"no_match": 2, "spoof": 1} and ref["devices"] == {}
    ref = q.refusals(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))
    assert ref["refused"] == {"no_match": 1, "spoof": 1}
    assert ref["devices"]["edge-a01"]["outcomes"] == {"accepted": 1, "no_match": 1, "spoof": 1}
    # Each refusal links to its events: the terminal's events of that outcome.
    [spoof] = q.device_events(world.store, NATIONAL, "edge-a01", "spoof")
    assert spoof["outcome"] == "spoof"
    assert cells(world.store) == recount(world.store)


def test_a_manifest_registered_after_the_payouts_links_them(world):
    world.terminal("edge-b01", register=False)
    world.pay("edge-b01", 2)
    world.pay("edge-b01", 3)
    assert q.progress(world.store, NATIONAL, q.Filters(ROUND))["total"]["entitled"] == 0
    assert register_manifest(world.store, world.manifest("edge-b01")) == 3
    # Registering again (a re-sent manifest) changes nothing.
    register_manifest(world.store, world.manifest("edge-b01"))
    [row] = q.progress(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))["rows"]
    assert (row["key"], row["entitled"], row["collected"], row["paid"]) == (
        "Balai Desa Cipete",
        3,
        2,
        2,
    )
    visits = q.home_visits(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))
    assert [v["household"] for v in visits] == ["KPM-3171-****-0001"]
    assert cells(world.store) == recount(world.store)


def test_household_ref_matches_the_pseudonym_the_terminal_sends(world):
    world.terminal("edge-d01")
    # The terminal sends only the household's reference; the manifest maps it back.
    ev = world.pay("edge-d01", 1)
    assert "household_id" not in ev and ev["household_ref"] == ref_of(household("edge-d01", 1))
    total = q.progress(world.store, NATIONAL, q.Filters(ROUND))["total"]
    assert (total["entitled"], total["collected"]) == (2, 1)
    [left] = q.home_visits(world.store, NATIONAL, q.Filters(ROUND, "32", "3273"))
    assert left["household"] == "KPM-3273-****-0002"


def test_a_regency_user_sees_only_their_regency(world):
    world.all_terminals()
    world.pay("edge-a01", 1)
    world.pay("edge-c01", 1)
    world.pay("edge-c02", 1, hh=household("edge-c01", 1))  # a double payout in 3172
    rows = q.progress(world.store, JAKSEL, q.Filters(ROUND))["rows"]
    assert [r["key"] for r in rows] == ["31"] and rows[0]["entitled"] == 9
    assert [r["key"] for r in q.progress(world.store, DKI, q.Filters(ROUND, "31"))["rows"]] == [
        "3171",
        "3172",
    ]
    for f in (q.Filters(ROUND, "31", "3172"), q.Filters(ROUND, "32", "3273")):
        with pytest.raises(q.Forbidden):
            q.progress(world.store, JAKSEL, f)
    with pytest.raises(q.Forbidden):
        q.progress(world.store, DKI, q.Filters(ROUND, "32"))
    assert q.anomalies(world.store, JAKSEL) == [] and len(q.anomalies(world.store, DKI)) == 1
    assert {t["device_id"] for t in q.terminals(world.store, JAKSEL, q.Filters())} == {"edge-a01"}
    assert set(q.refusals(world.store, JAKSEL, q.Filters())["devices"]) == {"edge-a01"}
    with pytest.raises(q.Forbidden):
        q.device_events(world.store, JAKSEL, "edge-c01")
    with pytest.raises(q.Forbidden):
        q.timeline(world.store, JAKSEL, q.Filters(ROUND, device_id="edge-c01"))
    [c01] = q.device_events(world.store, NATIONAL, "edge-c01", "accepted")[-1:]
    with pytest.raises(q.Forbidden):
        q.event_detail(world.store, JAKSEL, c01["event_id"])
    with pytest.raises(q.Forbidden):
        q.home_visits(world.store, JAKSEL, q.Filters(ROUND, "31", "3172"))


def test_household_ids_are_masked_unless_the_user_may_see_them(world):
    world.terminal("edge-a01")
    ev = world.pay("edge-a01", 1)
    [shown] = q.device_events(world.store, JAKSEL, "edge-a01")
    assert shown["household"] == "KPM-3171-****-0001"
    assert q.event_detail(world.store, JAKSEL, ev["event_id"])["event"]["household"] == (
        "KPM-3171-****-0001"
    )
    officer = User("visit", "regency", "3171", show_ids=True)
    visits = q.home_visits(world.store, officer, q.Filters(ROUND, "31", "3171"))
    assert visits[0] == {
        "point": "Kantor Pos Tebet",
        "household": household("edge-a01", 2),
        "name": "WARGA 2 D***",
        "amount": AMOUNT,
        "device_id": "edge-a01",
    }
    masked = q.home_visits(world.store, JAKSEL, q.Filters(ROUND, "31", "3171"))
    assert masked[0]["household"] == "KPM-3171-****-0002" and masked[0]["name"] == ""


def test_health_and_status_reports_feed_the_terminal_page(world):
    world.terminal("edge-a01")
    world.pay("edge-a01", 1)
    monitor = HealthMonitor(BrokerSettings(tls=False), world.store)
    health = {
        "schema": "bansos.health/1",
        "device_id": "edge-a01",
        "regency": "3171",
        "ts": "2026-12-01T08:00:00Z",
        "uptime_s": 100.0,
        "outbox_depth": 7,
        "last_seq": 9,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": 51.0,
        "faults": ["printer"],
        "clock": {"ok": False, "reason": "clock moved"},
    }
    topic = "bansos/v1/3171/edge-a01/"
    assert monitor.handle(topic + "health", json.dumps(health).encode())
    status = {
        "schema": "bansos.status/1",
        "device_id": "edge-a01",
        "state": "offline",
        "ts": "2026-12-01T08:00:00Z",
    }
    assert monitor.handle(topic + "status", json.dumps(status).encode())
    # Reports for another terminal's topic, and junk, are dropped.
    assert not monitor.handle("bansos/v1/3171/edge-a02/health", json.dumps(health).encode())
    assert not monitor.handle(topic + "health", b"{")
    [t] = q.terminals(world.store, NATIONAL, q.Filters())
    assert (t["outbox_depth"], t["last_seq"], t["reported_seq"], t["behind"]) == (7, 1, 9, 8)
    assert t["clock_trusted"] is False and t["faults"] == ["printer"] and not t["online"]
    counts = q.summary_counts(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))
    assert counts == {"terminals": 1, "offline": 1, "faulty": 1, "alerts": 0}
    status["state"] = "online"
    monitor.handle(topic + "status", json.dumps(status).encode())
    assert q.terminals(world.store, NATIONAL, q.Filters())[0]["online"]
    # Silent for longer than OFFLINE_AFTER_S counts as offline, whatever the last status said.
    later = t["last_seen"] + q.OFFLINE_AFTER_S + 3600
    assert not q.terminals(world.store, NATIONAL, q.Filters(), now=later)[0]["online"]


def test_the_change_token_moves_with_events_and_health(world):
    world.terminal("edge-a01")
    before = world.store.change_token()
    world.pay("edge-a01", 1)
    after_event = world.store.change_token()
    assert after_event != before
    world.store.record_status("3171", {"device_id": "edge-a01", "state": "online"}, now=2e9)
    assert world.store.change_token() != after_event


def test_manifests_from_files_and_signed_bundles(
    tmp_path, world, central_key, central_pem, identity
):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(world.manifest("edge-a01")))
    assert load_manifest(path)["device_id"] == "edge-a01"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CentralError):
        load_manifest(path)
    bad = world.manifest("edge-a01")
    del bad["households"][0]["household_id"]
    with pytest.raises(CentralError):
        register_manifest(world.store, bad)

    blob = _bundle(central_key, identity)
    manifest = manifest_from_bundle(blob, central_pem)
    assert (manifest["device_id"], manifest["regency"], manifest["point_name"]) == (
        "edge-a01",
        "3171",
        "Kantor Pos Tebet",
    )
    assert manifest["households"] == [
        {
            "household_id": "KPM-3171-0001-0001",
            "household_ref": None,  # the bundle's key is encrypted to its terminal
            "amount": AMOUNT,
            "masked_name": "SITI A***",
        }
    ]
    # With central's own copy of the round's reference key, the references are known.
    keys = tmp_path / "ref_keys"
    keys.mkdir()
    (keys / f"3171_{ROUND}.key").write_bytes(REF_KEY)
    [h] = manifest_from_bundle(blob, central_pem, keys)["households"]
    assert h["household_ref"] == ref_of("KPM-3171-0001-0001")
    path.write_bytes(blob)
    with pytest.raises(CentralError):
        load_manifest(path)  # a bundle needs central's key to be trusted
    assert load_manifest(path, central_pem)["bundle_id"] == manifest["bundle_id"]
    rogue = public_pem(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BundleError):
        manifest_from_bundle(blob, rogue)


def _bundle(central_key, identity) -> bytes:
    spec = BundleSpec(
        device_id="edge-a01",
        round_id=ROUND,
        point_name="Kantor Pos Tebet",
        regency="3171",
        model_id="m",
        model_sha256="0" * 64,
        valid_from=datetime(2026, 11, 1, tzinfo=UTC),
        valid_until=datetime(2027, 1, 1, tzinfo=UTC),
        ref_key=REF_KEY,
    )
    hh = Household("KPM-3171-0001-0001", "SITI A***", "3171", AMOUNT, [Member("m1", "recipient")])
    matrix = np.ones((1, 128), np.float32) / np.sqrt(128)
    return build_bundle(
        spec,
        [hh],
        ["KPM-3171-0001-0001/m1"],
        matrix,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
    )


COUNTER_TABLES = {
    "c_cells": "round_id, device_id",
    "c_timeline": "round_id, level, key, hour",
    "c_outcomes": "device_id, outcome",
    "c_flagged": "event_id",
    "c_entitlements": "round_id, household_id",
}


def snapshot(store: CentralStore) -> dict:
    tables = {
        t: store.rows(f"SELECT * FROM {t} ORDER BY {key}") for t, key in COUNTER_TABLES.items()
    }
    tables["c_terminals"] = store.rows(
        "SELECT device_id, regency, last_event_seq FROM c_terminals ORDER BY device_id"
    )
    return tables


def test_a_rebuild_from_scratch_gives_what_the_trigger_kept(world):
    for device_id in ("edge-a01", "edge-a02", "edge-c01", "edge-d01"):
        world.terminal(device_id)
    world.pay("edge-a01", 1)
    world.pay("edge-a02", 0, hh=household("edge-a01", 1))
    world.pay("edge-c01", 2)
    world.refuse("edge-d01", "spoof")
    world.terminal("edge-b01", register=False)
    world.pay("edge-b01", 1)
    kept = snapshot(world.store)
    assert kept["c_cells"] and kept["c_timeline"] and kept["c_outcomes"]
    world.store.rebuild()
    assert snapshot(world.store) == kept


def test_central_installed_on_a_store_with_events_counts_them_once(tmp_path, world):
    from edge.mqtt.store import EventStore

    world.terminal("edge-a01", register=False)
    events = [world.pay("edge-a01", n, feed=False) for n in (1, 2)]
    events.append(world.ledgers["edge-a01"].record("no_match", score=0.1))
    plain = EventStore(tmp_path / "before.sqlite")
    for ev in events:
        assert plain.add(ev)
    plain.close()
    store = CentralStore(tmp_path / "before.sqlite")
    try:
        assert cells(store) == recount(store)
        assert q.refusals(store, NATIONAL, q.Filters())["refused"] == {"no_match": 1}
        register_manifest(store, world.manifest("edge-a01"))
        total = q.progress(store, NATIONAL, q.Filters(ROUND))["total"]
        assert (total["entitled"], total["collected"], total["paid"]) == (4, 2, 2)
        # Opening it again does not count anything twice.
        CentralStore(tmp_path / "before.sqlite").close()
        assert q.progress(store, NATIONAL, q.Filters(ROUND))["total"] == total
    finally:
        store.close()


def test_an_override_pays_collects_and_is_listed(world):
    """``accepted_override`` (an officer's override of a refusal) counts as a payout and is
    listed with its event. Stored directly: the event schema gets the outcome separately."""
    world.terminal("edge-a01")
    event = {
        "event_id": "0b5e3a1e-0000-4000-8000-000000000001",
        "device_id": "edge-a01",
        "regency": "3171",
        "seq": 1,
        "ts": "2026-12-01T09:30:00.000Z",
        "outcome": "accepted_override",
        "household_ref": ref_of(household("edge-a01", 3)),
        "round_id": ROUND,
        "amount": AMOUNT,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    assert world.store.add(event)
    [row] = q.progress(world.store, NATIONAL, q.Filters(ROUND, "31", "3171"))["rows"]
    assert (row["collected"], row["paid"], row["amount"]) == (1, 1, AMOUNT)
    assert q.overrides(world.store, NATIONAL) == [
        {
            "event_id": event["event_id"],
            "device_id": "edge-a01",
            "regency": "3171",
            "ts": event["ts"],
        }
    ]
    assert q.overrides(world.store, User("x", "regency", "3172")) == []
    assert q.refusals(world.store, NATIONAL, q.Filters())["totals"] == {"accepted_override": 1}
