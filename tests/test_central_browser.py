"""The dashboard in a real browser (Debian's chromium through selenium and chromium-driver).

A real Mosquitto carries a terminal's payout to the reference consumer, which stores it; the
page that is already open shows it without a reload (server-sent events). Then drill-down and
the round filter, and a regency user kept to their regency.
"""

from __future__ import annotations

import shutil
import threading

import paho.mqtt.client as mqtt
import pytest
from central_world import ROUND, World, household
from mosquitto import Broker, free_port, pki_fixture, wait_for  # noqa: F401
from support import require_module, unavailable

from edge.central.auth import add_user
from edge.central.health import HealthMonitor
from edge.central.manifest import register_manifest
from edge.central.server import ServerThread
from edge.central.store import CentralStore
from edge.central.web import create_app
from edge.events import canonical
from edge.mqtt.client import connect_async, make_client
from edge.mqtt.consumer import Consumer

PASSWORD = "correct horse battery"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def site(tmp_path_factory, pki):
    """Broker, consumer, central store with a small country, and the dashboard on a port."""
    root = tmp_path_factory.mktemp("central-browser")
    broker = Broker(root / "broker", pki)
    broker.start()
    world = World(CentralStore(root / "central.sqlite"), root)
    world.all_terminals()
    next_round = world.manifest("edge-a01", "2027-01")
    register_manifest(world.store, next_round)
    world.pay("edge-a01", 1)
    world.pay("edge-c01", 1)
    add_user(world.store, "nat", PASSWORD, "national")
    add_user(world.store, "jaksel", PASSWORD, "regency", "3171")
    consumer = Consumer(broker.settings("central"), world.store, world.registry, group=None)
    consumer.start()
    assert consumer.subscribed.wait(10)
    monitor = HealthMonitor(broker.settings("central"), world.store)
    monitor.start()
    assert monitor.subscribed.wait(10)
    server = ServerThread(create_app(world.store, "browser-test", poll_s=0.25), port=free_port())
    server.start()
    yield world, broker, server, consumer
    server.stop()
    monitor.stop()
    consumer.stop()
    world.close()
    broker.stop()


@pytest.fixture(scope="module")
def browser():
    webdriver = require_module("selenium.webdriver", "pip install selenium")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        unavailable("chromium and chromium-driver", "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def login(driver, server, username: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(server.url + "login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "submit").click()
    assert wait_for(lambda: driver.find_elements(By.ID, "who"), 10), driver.page_source[:500]


def text(driver, element_id: str) -> str:
    """An element's visible text, read in one script call (the live page swaps its content,
    so a held element reference may go stale between find and read)."""
    script = "var e = document.getElementById(arguments[0]); return e ? e.innerText.trim() : ''"
    return driver.execute_script(script, element_id)


def publish_from_terminal(broker, world, event: dict, leaf: str = "event") -> None:
    """Send a message the way a terminal does: its own certificate, QoS 1, its own topic."""
    device_id = event["device_id"]
    done = threading.Event()
    client = make_client(f"{device_id}-browser-test", broker.settings(device_id))
    client.on_connect = lambda *a: done.set()
    connect_async(client, broker.settings(device_id), 0)
    client.loop_start()
    try:
        assert done.wait(10)
        topic = f"bansos/v1/{event['regency']}/{device_id}/{leaf}"
        info = client.publish(topic, canonical(event), qos=1)
        info.wait_for_publish(10)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_payout_reaching_the_broker_appears_on_the_open_page(site, browser):
    world, broker, server, consumer = site
    login(browser, server, "nat")
    browser.get(server.url + f"?round={ROUND}&regency=3171")
    assert text(browser, "collected") == "1"
    assert wait_for(lambda: text(browser, "live").startswith("live"), 10)
    # A marker in the page's JavaScript state: a reload would wipe it.
    browser.execute_script("window.__stillTheSamePage = true")
    event = world.pay("edge-a02", 1, feed=False)
    publish_from_terminal(broker, world, event)
    # "Within a few seconds of a payout reaching the broker."
    assert wait_for(lambda: text(browser, "collected") == "2", 5), text(browser, "collected")
    assert browser.execute_script("return window.__stillTheSamePage === true")
    assert int(browser.find_element("tag name", "body").get_attribute("data-updates")) >= 1
    assert consumer.stored >= 1
    assert "Rp 600.000" in text(browser, "amount")


def test_filters_and_drill_down(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    world, broker, server, consumer = site
    login(browser, server, "nat")
    browser.get(server.url)
    # The newest round is shown first; choose the one under way.
    assert Select(browser.find_element(By.ID, "round")).first_selected_option.text == "2027-01"
    Select(browser.find_element(By.ID, "round")).select_by_value(ROUND)
    assert wait_for(lambda: f"round {ROUND}" in text(browser, "content"), 5)
    browser.find_element(By.LINK_TEXT, "31 DKI Jakarta").click()
    assert wait_for(lambda: "3172 Jakarta Timur" in browser.page_source, 5)
    browser.find_element(By.LINK_TEXT, "3171 Jakarta Selatan").click()
    assert wait_for(lambda: "Balai Desa Cipete" in browser.page_source, 5)
    browser.find_element(By.LINK_TEXT, "Kantor Pos Tebet").click()
    assert wait_for(lambda: browser.find_elements(By.LINK_TEXT, "edge-a01"), 5)
    rows = browser.find_elements(By.CSS_SELECTOR, "#progress tbody tr")
    assert [r.get_attribute("data-key") for r in rows] == ["edge-a01", "edge-a02"]
    # The round filter keeps the place: round 2027-01 has only edge-a01's manifest.
    Select(browser.find_element(By.ID, "round")).select_by_value("2027-01")
    assert wait_for(lambda: "round 2027-01" in text(browser, "content"), 5)
    rows = browser.find_elements(By.CSS_SELECTOR, "#progress tbody tr")
    assert [r.get_attribute("data-key") for r in rows] == ["edge-a01"]
    assert text(browser, "entitled") == "4" and text(browser, "collected") == "0"
    browser.find_element(By.LINK_TEXT, "edge-a01").click()
    assert wait_for(lambda: "Terminal edge-a01" in browser.page_source, 5)
    # The breadcrumb leads back up.
    browser.get(server.url + f"?round={ROUND}&regency=3171&point=Kantor+Pos+Tebet")
    browser.find_element(By.CSS_SELECTOR, "#crumbs a[href*='province=31']").click()
    assert wait_for(lambda: "3172 Jakarta Timur" in browser.page_source, 5)


def test_a_regency_user_cannot_see_another_regency(site, browser):
    world, broker, server, consumer = site
    login(browser, server, "jaksel")
    browser.get(server.url)
    page = browser.page_source
    assert "Kantor Pos Tebet" in page and "3172" not in page and "Jatinegara" not in page
    browser.get(server.url + f"?round={ROUND}&regency=3172")
    assert "outside your scope" in text(browser, "error")
    browser.get(server.url + "terminals")
    assert "edge-a01" in browser.page_source and "edge-c01" not in browser.page_source
    browser.get(server.url + "terminal/edge-c01")
    assert "outside your scope" in text(browser, "error")
    browser.get(server.url + f"homevisit?round={ROUND}")
    assert household("edge-a01", 2) not in browser.page_source
    assert "KPM-3171-****-0002" in browser.page_source


def test_a_health_report_updates_the_open_terminal_page(site, browser):
    from selenium.webdriver.common.by import By

    world, broker, server, consumer = site
    login(browser, server, "nat")
    browser.get(server.url + "terminals")
    assert wait_for(lambda: text(browser, "live").startswith("live"), 10)
    browser.execute_script("window.__stillTheSamePage = true")
    report = {
        "schema": "bansos.health/1",
        "device_id": "edge-b01",
        "regency": "3171",
        "ts": "2026-12-02T08:00:00Z",
        "uptime_s": 3600.0,
        "outbox_depth": 12,
        "last_seq": 40,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": 48.5,
        "faults": ["printer"],
        "clock": {"ok": False},
        "version": "1.1.0",
        "update": {"version": "1.2.0", "state": "rolled_back", "error": "health check failed"},
    }
    publish_from_terminal(broker, world, report, "health")

    def row() -> str:
        found = browser.find_elements(By.CSS_SELECTOR, "#terminals tr[data-device='edge-b01']")
        return browser.execute_script("return arguments[0].innerText", found[0]) if found else ""

    assert wait_for(lambda: "printer" in row(), 5), row()
    assert "12" in row() and "not trusted" in row() and "40 missing" in row()
    assert "1.1.0" in row() and "1.2.0 rolled back" in row()
    assert browser.execute_script("return window.__stillTheSamePage === true")
    browser.get(server.url + "terminal/edge-b01")
    assert text(browser, "version").startswith("1.1.0\nrunning version; update: 1.2.0 rolled back")
