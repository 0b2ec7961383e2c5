"""The dashboard over HTTP (Starlette's test client): login, scope, masking, exports.

The browser itself, and live updates from a real broker, are in test_central_browser.py.
"""

from __future__ import annotations

import csv
import io

import pytest
from central_world import ROUND, World, household
from starlette.testclient import TestClient

from edge.central.auth import add_user, authenticate
from edge.central.store import CentralStore
from edge.central.web import create_app
from edge.errors import CentralError

PASSWORD = "correct horse battery"


@pytest.fixture
def world(tmp_path):
    w = World(CentralStore(tmp_path / "central.sqlite"), tmp_path)
    w.all_terminals()
    w.pay("edge-a01", 1)
    w.pay("edge-c01", 1)
    w.pay("edge-c02", 1, hh=household("edge-c01", 1))  # a double payout in 3172
    w.refuse("edge-c01", "spoof")
    add_user(w.store, "nat", PASSWORD, "national")
    add_user(w.store, "jaksel", PASSWORD, "regency", "3171")
    add_user(w.store, "visit", PASSWORD, "regency", "3171", show_ids=True)
    yield w
    w.close()


def client_for(world, username: str | None) -> TestClient:
    client = TestClient(create_app(world.store, "test-secret"))
    if username:
        r = client.post("/login", data={"username": username, "password": PASSWORD})
        assert r.status_code == 200 and r.url.path == "/", r.text[:300]
    return client


def test_pages_need_a_login_and_a_right_password(world):
    anon = client_for(world, None)
    r = anon.get("/alerts", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert anon.get("/stream").status_code == 401
    r = anon.post("/login", data={"username": "nat", "password": "wrong password"})
    assert r.status_code == 401 and "wrong username or password" in r.text
    r = anon.post("/login", data={"username": "nobody", "password": PASSWORD})
    assert r.status_code == 401
    # Passwords are stored as argon2id hashes, never in clear.
    [(stored,)] = world.store.rows("SELECT password_hash FROM c_users WHERE username = 'nat'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert authenticate(world.store, "nat", PASSWORD).role == "national"
    # After login, back to the page asked for, but never to another site.
    for target, landed in (("/alerts", "/alerts"), ("//evil.example/x", "/"), ("/\\evil", "/")):
        r = anon.post(
            "/login",
            params={"next": target},
            data={"username": "nat", "password": PASSWORD},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == landed
    nat = client_for(world, "nat")
    assert "bansos_central" in nat.cookies
    r = nat.post("/logout", follow_redirects=False)
    assert r.status_code == 303
    assert nat.get("/", follow_redirects=False).status_code == 303


def test_drill_down_from_the_country_to_a_terminal(world):
    nat = client_for(world, "nat")
    page = nat.get("/").text
    assert "31 DKI Jakarta" in page and "32 Jawa Barat" in page
    assert 'href="/?round=2026-12&amp;province=31"' in page
    page = nat.get("/", params={"round": ROUND, "province": "31"}).text
    assert "3171 Jakarta Selatan" in page and "3172 Jakarta Timur" in page
    page = nat.get("/", params={"round": ROUND, "regency": "3171"}).text
    assert "Kantor Pos Tebet" in page and "Balai Desa Cipete" in page
    page = nat.get("/", params={"round": ROUND, "regency": "3171", "point": "Kantor Pos Tebet"})
    assert 'href="/terminal/edge-a01?round=2026-12"' in page.text
    page = nat.get("/terminal/edge-c01", params={"outcome": "spoof"}).text
    assert "spoof" in page and "Newest spoof events" in page
    # Names from manifests are text, never markup.
    from edge.central.manifest import register_manifest

    manifest = world.manifest("edge-b01")
    manifest["point_name"] = "<script>alert(1)</script>"
    register_manifest(world.store, manifest)
    page = nat.get("/", params={"round": ROUND, "regency": "3171"}).text
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The partial a live page fetches is the content alone.
    partial = nat.get("/", headers={"X-Partial": "1"}).text
    assert "<html" not in partial and 'id="progress"' in partial


def test_a_regency_user_cannot_see_another_regency(world):
    jaksel = client_for(world, "jaksel")
    page = jaksel.get("/").text
    assert "Kantor Pos Tebet" in page and "Jatinegara" not in page and "3172" not in page
    for params in ({"regency": "3172"}, {"province": "32"}, {"regency": "3273"}):
        r = jaksel.get("/", params=params)
        assert r.status_code == 403 and "outside your scope" in r.text
    assert jaksel.get("/terminal/edge-c01").status_code == 403
    assert jaksel.get("/homevisit", params={"regency": "3172"}).status_code == 403
    assert jaksel.get("/export/payouts.csv", params={"regency": "3172"}).status_code == 403
    alerts = jaksel.get("/alerts").text
    assert "double_payout" not in alerts and "edge-c0" not in alerts
    assert "edge-c0" not in jaksel.get("/terminals").text
    # Naming a foreign terminal in the progress page's filters leaks nothing either.
    assert jaksel.get("/", params={"device": "edge-c01"}).status_code == 403
    assert jaksel.get("/", params={"round": ROUND, "device": "edge-c01"}).status_code == 403
    c01_event = world.store.rows("SELECT event_id FROM events WHERE device_id = 'edge-c01'")[0][0]
    assert jaksel.get(f"/event/{c01_event}").status_code == 403
    # The national user sees what was hidden.
    nat = client_for(world, "nat")
    assert "double_payout" in nat.get("/alerts").text
    assert nat.get(f"/event/{c01_event}").status_code == 200


def test_ids_are_masked_unless_the_account_may_see_them(world):
    full = household("edge-a01", 2)
    jaksel = client_for(world, "jaksel")
    page = jaksel.get("/homevisit", params={"round": ROUND, "regency": "3171"}).text
    assert "KPM-3171-****-0002" in page and full not in page and "WARGA" not in page
    assert full not in jaksel.get("/terminal/edge-a01").text
    visit = client_for(world, "visit")
    page = visit.get("/homevisit", params={"round": ROUND, "regency": "3171"}).text
    assert full in page and "WARGA 2 D***" in page
    r = visit.get("/homevisit.csv", params={"round": ROUND, "regency": "3171"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv")
    # 4 + 2 + 3 households in 3171, one collected.
    assert len(rows) == 8 and full in {row["household"] for row in rows}
    assert household("edge-a01", 1) not in r.text


def test_the_reconciliation_csv_follows_the_users_scope_and_masking(world):
    jaksel = client_for(world, "jaksel")
    r = jaksel.get("/export/payouts.csv", params={"round": ROUND, "regency": "3171"})
    [row] = list(csv.DictReader(io.StringIO(r.text)))
    assert row["device_id"] == "edge-a01" and row["household"] == "KPM-3171-****-0001"
    assert row["amount"] == "300000"


def test_user_rules(world):
    for role, scope in (
        ("regency", "31"),
        ("province", "3171"),
        ("national", "31"),
        ("boss", None),
    ):
        with pytest.raises(CentralError):
            add_user(world.store, "x", PASSWORD, role, scope)
    with pytest.raises(CentralError):
        add_user(world.store, "x", "short", "national")


def test_edge_central_serve_runs_the_dashboard(tmp_path):
    """The command itself: a process serving the login page, its session secret kept."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from mosquitto import free_port
    from support import ROOT, wait_for

    port = free_port()
    secret = tmp_path / "session.key"
    cmd = [
        sys.executable,
        "-m",
        "edge",
        "central",
        "serve",
        "--db",
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        "--http-port",
        str(port),
        "--secret-file",
        str(secret),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/login"

        def up() -> bool:
            try:
                return urllib.request.urlopen(url, timeout=1).status == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        assert wait_for(up, 20, 0.2)
        assert "Log in" in urllib.request.urlopen(url).read().decode()
        assert secret.stat().st_mode & 0o077 == 0 and len(secret.read_text()) >= 32
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"dashboard: http://127.0.0.1:{port}/" in err


def test_one_poll_of_the_store_serves_every_open_page():
    """The live feed asks the store once per interval, however many pages are waiting."""
    import asyncio

    from edge.central.server import ChangeFeed

    class Store:
        def __init__(self) -> None:
            self.token = 0
            self.calls = 0

        def change_token(self) -> tuple:
            self.calls += 1
            return (self.token,)

    async def scenario(store: Store) -> list[int]:
        feed = ChangeFeed(store, poll_s=0.05)
        seen = await feed.current()
        waiters = [asyncio.create_task(feed.wait(seen, timeout=5)) for _ in range(50)]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters)  # nothing changed: everyone still waits
        store.token = 1
        versions = await asyncio.gather(*waiters)
        assert await feed.wait(versions[0], timeout=0.2) == versions[0]  # quiet: times out
        return versions

    store = Store()
    versions = asyncio.run(scenario(store))
    assert versions == [1] * 50
    # About one query per 50 ms over ~0.6 s, not one per waiting page.
    assert store.calls < 25
