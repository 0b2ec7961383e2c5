"""Releases across the fleet at central (issue 15): the running version and the update in hand
from health and status, stored in ``c_terminals``, listed per terminal and summed per version
within the user's scope. Every test runs on SQLite and on a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import json

import pytest
from central_world import World
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from starlette.testclient import TestClient

from edge.central import fleet
from edge.central import queries as q
from edge.central.auth import User, add_user
from edge.central.health import HealthMonitor
from edge.central.store import CentralStore
from edge.central.web import create_app
from edge.mqtt.client import BrokerSettings

PASSWORD = "correct horse battery"
NATIONAL = User("nat", "national")
JAKSEL = User("jaksel", "regency", "3171")
DKI = User("dki", "province", "31")
# device -> regency
PLACES = {
    "edge-a01": "3171",
    "edge-a02": "3171",
    "edge-b01": "3171",
    "edge-c01": "3172",
    "edge-d01": "3273",
}


@pytest.fixture(params=["sqlite", "pg"])
def dsn(request, tmp_path) -> str:
    if request.param == "pg":
        return request.getfixturevalue("pg_dsn")
    return str(tmp_path / "central.sqlite")


@pytest.fixture
def store(dsn):
    s = CentralStore(dsn)
    yield s
    s.close()


def health(device_id: str, version: str | None = "1.2.0", update: dict | None = None) -> dict:
    report = {
        "schema": "bansos.health/1",
        "device_id": device_id,
        "regency": PLACES[device_id],
        "ts": "2026-12-01T08:00:00Z",
        "uptime_s": 100.0,
        "outbox_depth": 0,
        "last_seq": 0,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None,
        "faults": [],
        "update": update,
    }
    if version is not None:
        report["version"] = version
    return report


def report(store: CentralStore, body: dict, leaf: str = "health") -> None:
    """Through the monitor, as a broker would deliver it (schema-checked)."""
    monitor = HealthMonitor(BrokerSettings(tls=False), store)
    topic = f"bansos/v1/{PLACES[body['device_id']]}/{body['device_id']}/{leaf}"
    assert monitor.handle(topic, json.dumps(body).encode())


def by_device(store: CentralStore, user: User = NATIONAL) -> dict:
    return {t["device_id"]: t for t in q.terminals(store, user, q.Filters())}


def test_health_and_status_name_the_release_and_the_update_in_hand(store):
    status = {
        "schema": "bansos.status/1",
        "device_id": "edge-a01",
        "state": "online",
        "ts": "2026-12-01T07:59:00Z",
        "version": "1.1.0",
    }
    report(store, status, "status")
    a01 = by_device(store)["edge-a01"]
    assert a01["version"] == "1.1.0" and a01["ota"] is None
    staged = {"version": "1.2.0", "state": "staged", "received": 10, "size": 10, "error": None}
    report(store, health("edge-a01", "1.1.0", staged))
    assert by_device(store)["edge-a01"]["ota"] == {
        "version": "1.2.0",
        "state": "staged",
        "error": None,
    }
    rolled = {"version": "1.2.0", "state": "rolled_back", "error": "health check: camera"}
    report(store, health("edge-a01", "1.1.0", rolled))
    a01 = by_device(store)["edge-a01"]
    assert a01["version"] == "1.1.0" and a01["ota"]["state"] == "rolled_back"
    assert a01["ota"]["error"] == "health check: camera"
    # Nothing in hand any more: the old verdict goes; a daemon that names no version (older
    # than releases) keeps the one its status named.
    report(store, health("edge-a01", None, None))
    a01 = by_device(store)["edge-a01"]
    assert a01["version"] == "1.1.0" and a01["ota"] is None
    # An offline will without a version keeps it too; the next online names the new release.
    del status["version"]
    report(store, {**status, "state": "offline"}, "status")
    assert by_device(store)["edge-a01"]["version"] == "1.1.0"
    report(store, {**status, "version": "1.2.0"}, "status")
    assert by_device(store)["edge-a01"]["version"] == "1.2.0"


def fleet_of_five(store: CentralStore) -> None:
    """3171: two on 1.2.0 (one updating), one rolled back to 1.1.0; 3172 failed; 3273 old."""
    report(store, health("edge-a01", "1.2.0", {"version": "1.2.0", "state": "confirmed"}))
    report(store, health("edge-a02", "1.2.0", {"version": "1.3.0", "state": "downloading"}))
    rolled = {"version": "1.2.0", "state": "rolled_back", "error": "health check failed"}
    report(store, health("edge-b01", "1.1.0", rolled))
    failed = {"version": "1.2.0", "state": "failed", "error": "signature"}
    report(store, health("edge-c01", "1.1.0", failed))
    report(store, health("edge-d01", None))


def test_versions_across_the_fleet_count_terminals_and_list_the_troubled(store):
    fleet_of_five(store)
    every = fleet.versions(store, NATIONAL, q.Filters())
    assert every["versions"] == [
        {"version": "1.1.0", "terminals": 2},
        {"version": "1.2.0", "terminals": 2},
        {"version": None, "terminals": 1},
    ]
    assert every["updating"] == 1
    assert [(t["device_id"], t["state"]) for t in every["trouble"]] == [
        ("edge-b01", "rolled_back"),
        ("edge-c01", "failed"),
    ]
    assert every["trouble"][1] == {
        "device_id": "edge-c01",
        "regency": "3172",
        "version": "1.1.0",
        "update_version": "1.2.0",
        "state": "failed",
        "error": "signature",
    }
    # The filters narrow it like every other page.
    bandung = fleet.versions(store, NATIONAL, q.Filters(province="32"))
    assert bandung["versions"] == [{"version": None, "terminals": 1}] and not bandung["trouble"]


def test_a_regency_user_sees_the_versions_of_their_regency_only(store):
    fleet_of_five(store)
    mine = fleet.versions(store, JAKSEL, q.Filters())
    assert mine["versions"] == [
        {"version": "1.2.0", "terminals": 2},
        {"version": "1.1.0", "terminals": 1},
    ]
    assert [t["device_id"] for t in mine["trouble"]] == ["edge-b01"]
    assert set(by_device(store, JAKSEL)) == {"edge-a01", "edge-a02", "edge-b01"}
    province = fleet.versions(store, DKI, q.Filters())
    assert sum(v["terminals"] for v in province["versions"]) == 4
    assert [t["device_id"] for t in province["trouble"]] == ["edge-b01", "edge-c01"]
    # Asking for another regency or province is refused, not answered empty.
    for user, f in ((JAKSEL, q.Filters(province="31", regency="3172")), (DKI, q.Filters("", "32"))):
        with pytest.raises(q.Forbidden):
            fleet.versions(store, user, f)


def test_a_store_from_before_releases_gains_the_columns_and_keeps_its_rows(dsn):
    old = CentralStore(dsn)
    old.record_status("3171", {"device_id": "edge-a01", "state": "online"}, now=1e9)
    for column in ("version", "update_version", "update_state", "update_error"):
        old.execute(f"ALTER TABLE c_terminals DROP COLUMN {column}")
    old.close()
    for _ in range(2):  # the migration runs again harmlessly on every start
        store = CentralStore(dsn)
        report(store, health("edge-a01", "1.2.0", {"version": "1.2.0", "state": "confirmed"}))
        a01 = by_device(store)["edge-a01"]
        store.close()
        assert a01["status"] == "online" and a01["version"] == "1.2.0"
        assert a01["ota"]["state"] == "confirmed"


def test_the_terminals_page_shows_versions_in_the_users_scope(store):
    fleet_of_five(store)
    add_user(store, "nat", PASSWORD, "national")
    add_user(store, "jaksel", PASSWORD, "regency", "3171")

    def page(username: str, path: str) -> str:
        client = TestClient(create_app(store, "test-secret"))
        client.post("/login", data={"username": username, "password": PASSWORD})
        r = client.get(path)
        assert r.status_code == 200, r.text[:300]
        return r.text

    nat = page("nat", "/terminals")
    assert 'data-version="1.1.0"><div class="v">2<' in nat
    assert '<td class="bad">1.2.0 failed</td><td>signature</td>' in nat
    assert '<span class="bad" title="health check failed">1.2.0 rolled back</span>' in nat
    assert '<span class="ok" title="">1.2.0 confirmed</span>' in nat
    mine = page("jaksel", "/terminals")
    assert 'data-version="1.1.0"><div class="v">1<' in mine
    assert "edge-c01" not in mine and "signature" not in mine
    terminal = page("jaksel", "/terminal/edge-b01")
    assert '<div class="v">1.1.0</div><div class="l">running version' in terminal
    assert "1.2.0 rolled back" in terminal


def test_a_consumer_writing_through_the_central_store_records_heads_and_versions(dsn, tmp_path):
    """``edge consume`` on central's database: the head book's writes take the device lock."""
    world = World(CentralStore(dsn), tmp_path)
    try:
        world.terminal("edge-b01", register=False)
        topic = "bansos/v1/3171/edge-b01/health"
        payload = json.dumps(health("edge-b01", "1.1.0")).encode()
        assert not world.consumer.heads.observe(topic, payload).startswith("rejected")
        assert world.consumer.handle_health(topic, payload) == "fleet"
        assert [(f["device_id"], f["version"]) for f in world.store.fleet()] == [
            ("edge-b01", "1.1.0")
        ]
    finally:
        world.close()
