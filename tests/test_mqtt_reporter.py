"""Reporter and consumer against a real Mosquitto with mutual TLS."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from mosquitto import Spy, broker_fixture, pki_fixture, wait_for  # noqa: F401
from support import REF_KEY, pay

from edge.config import parse_config
from edge.errors import AlreadyPaid
from edge.events import canonical
from edge.keys import DeviceIdentity, public_pem
from edge.ledger.store import Ledger
from edge.mqtt.client import make_client
from edge.mqtt.commands import sign_command
from edge.mqtt.consumer import Consumer, DeviceRegistry, resend_requests
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.remote_config import apply_config_changes
from edge.mqtt.reporter import Reporter
from edge.mqtt.schemas import errors
from edge.mqtt.store import EventStore
from edge.privacy import household_ref
from edge.registry import DeviceEntry, RegistryStore, sign_registry

REGENCY = "3171"
ROUND = "2026-11"


class Terminal:
    """One simulated terminal: config, identity, ledger and reporter (made by ``make_terminal``)."""

    def __init__(
        self,
        broker,
        state: Path,
        device_id: str,
        identity: DeviceIdentity,
        make_ledger,
        *,
        regency=REGENCY,
        cn=None,
        central_key=None,
    ):
        self.central_key = central_key
        self.device_id = device_id
        self.state = state
        self.cfg = parse_config(
            {
                "device": {"id": device_id, "regency": regency, "state_dir": str(self.state)},
                "mqtt": {**broker.mqtt_config(cn or device_id), "health_interval_s": 3600},
            }
        )
        self.identity = identity
        self._make_ledger = make_ledger
        self.ledger = self.open_ledger()
        self.reporter: Reporter | None = None
        self.actions: dict = {}

    def open_ledger(self) -> Ledger:
        return self._make_ledger(
            self.state / "ledger.sqlite", self.identity, self.device_id, self.cfg.device.regency
        )

    def start(self, **kw) -> Reporter:
        commands = None
        if self.central_key is not None:
            pem = public_pem(self.central_key.public_key())
            commands = CommandProcessor(pem, self.device_id, self.state, self.actions)
        self.reporter = Reporter(
            self.cfg, self.ledger, self.identity, commands, reconnect_max_s=1, **kw
        )
        self.reporter.start()
        return self.reporter

    def decide(self, n: int, start: int = 0) -> list[dict]:
        out = []
        for i in range(start, start + n):
            if i % 3 == 0:
                ev = pay(self.ledger, f"KPM-{self.device_id}-{i:05d}", ROUND, 600_000)
            else:
                ev = self.ledger.record("no_match", score=0.2, threshold=0.6)
            out.append(ev)
        if self.reporter:
            self.reporter.wake()
        return out

    def close(self) -> None:
        if self.reporter:
            self.reporter.stop()
        self.ledger.close()


@pytest.fixture
def central(request, broker, tmp_path):
    """A consumer (plain subscription, or in a shared group) storing into SQLite."""
    registry = DeviceRegistry()
    store = EventStore(f"sqlite:///{tmp_path / 'central.sqlite'}")
    consumer = Consumer(
        broker.settings("central"),
        store,
        registry,
        group=getattr(request, "param", "central"),
        client_id="central-1",
    )
    consumer.start()
    assert consumer.subscribed.wait(10)
    yield consumer, store, registry
    consumer.stop()
    store.close()


@pytest.fixture
def make_terminal(broker, tmp_path, make_identity, make_ledger):
    """Make a simulated terminal with its own identity, its ledger under ``tmp_path/<id>``."""

    def make(device_id: str, **kw) -> Terminal:
        return Terminal(broker, tmp_path / device_id, device_id, make_identity(), make_ledger, **kw)

    return make


@pytest.fixture
def terminal(make_terminal, central, central_key):
    t = make_terminal("edge-a01", central_key=central_key)
    central[2].add(t.device_id, t.identity.device_public_pem())
    yield t
    t.close()


def ledger_ids(ledger: Ledger) -> list[str]:
    return sorted(e["event_id"] for e in ledger.events())


def test_events_arrive_valid_and_marked_sent_on_puback(broker, central, terminal):
    consumer, store, _ = central
    spy = Spy(broker, ["bansos/v1/+/+/event", "bansos/v1/+/+/status", "bansos/v1/+/+/health"])
    reporter = terminal.start()
    assert wait_for(lambda: reporter.connected, 10)
    events = terminal.decide(12)
    assert wait_for(lambda: store.count() == 12 and terminal.ledger.outbox_depth() == 0, 10)
    assert sorted(store.event_ids()) == sorted(e["event_id"] for e in events)
    assert store.gaps() == {} and store.anomalies() == []
    # What went over the wire is the ledger's canonical event, in seq order, valid by schema.
    assert wait_for(lambda: len(spy.on("/event")) == 12, 5)
    wire = spy.on("/event")
    assert [e["seq"] for e in wire] == list(range(1, 13))
    assert wire == events
    assert all(errors("event", e) == [] for e in wire)
    status = spy.on("/status")
    assert status and status[-1]["state"] == "online" and errors("status", status[-1]) == []
    # One health report on connecting, then one on request with the app's fields.
    assert wait_for(lambda: spy.on("/health"), 5)
    assert errors("health", spy.on("/health")[0]) == []
    reporter.publish_health(
        {
            "model_id": "mobilefacenet-int8-abc",
            "faults": ["printer_paper_low"],
            "disk": {"free_ratio": 0.42},  # the app's own diagnostics ride along
        }
    )
    assert wait_for(lambda: any(h["faults"] for h in spy.on("/health")), 5)
    health = [h for h in spy.on("/health") if h["faults"]][-1]
    assert errors("health", health) == []
    assert health["outbox_depth"] == 0 and health["faults"] == ["printer_paper_low"]
    assert health["last_seq"] == 12 and health["model_id"] == "mobilefacenet-int8-abc"
    assert health["disk"] == {"free_ratio": 0.42}
    reporter.stop()
    # A clean stop leaves an explicit, retained `offline`.
    assert wait_for(lambda: spy.on("/status")[-1]["state"] == "offline", 5)
    assert errors("status", spy.on("/status")[-1]) == []
    spy.close()


def test_last_will_is_offline_when_the_terminal_vanishes(broker, terminal):
    spy = Spy(broker, ["bansos/v1/+/+/status"])
    reporter = terminal.start()
    assert wait_for(lambda: spy.on("/status") and spy.on("/status")[-1]["state"] == "online", 10)
    # Drop the socket without DISCONNECT: the broker publishes the will.
    reporter._client.socket().close()
    assert wait_for(lambda: spy.on("/status")[-1]["state"] == "offline", 10)
    assert spy.on("/status")[-1]["reason"] == "lost"
    spy.close()


def complete(store, ledger, broker, central_key) -> bool:
    """Wait until the store holds the whole ledger, asking for re-sends of any gap."""
    total = sum(1 for _ in ledger.events())
    assert wait_for(lambda: ledger.outbox_depth() == 0, 20)
    if wait_for(lambda: store.count() == total, 3):
        return True
    # Mosquitto 2.0 does not restore shared subscriptions after a restart, so events published
    # before the consumer re-subscribed are lost to the group: central finds the gaps and asks.
    spy = Spy(broker, [])
    heads = {ledger.device_id: total}
    for _ in range(3):
        for topic, payload in resend_requests(store, central_key, heads=heads):
            spy.publish(topic, payload)
        if wait_for(lambda: store.count() == total, 10):
            break
    spy.close()
    return store.count() == total


@pytest.mark.parametrize("central", [None, "central"], ids=["plain", "shared"], indirect=True)
def test_broker_outage_loses_nothing_and_stores_each_event_once(
    broker, central, terminal, central_key
):
    consumer, store, _ = central
    reporter = terminal.start()
    terminal.decide(20)
    assert wait_for(lambda: store.count() == 20, 10)
    broker.stop()
    assert wait_for(lambda: not reporter.connected, 10)
    terminal.decide(300, start=20)
    assert terminal.ledger.outbox_depth() == 300  # nothing acknowledged while the broker is down
    broker.start()
    assert complete(store, terminal.ledger, broker, central_key)
    assert sorted(store.event_ids()) == ledger_ids(terminal.ledger)
    assert store.gaps() == {} and store.anomalies() == []
    assert consumer.rejected == 0


def test_daemon_restart_resends_unacknowledged_rows_once(broker, central, terminal, tmp_path):
    consumer, store, _ = central
    reporter = terminal.start()
    terminal.decide(10)
    assert wait_for(lambda: terminal.ledger.outbox_depth() == 0, 10)
    # The daemon dies: stop it while the broker is away, with 50 decisions still unsent...
    broker.stop()
    terminal.decide(50, start=10)
    reporter.stop()
    terminal.ledger.close()
    # ...and some of them had reached the broker before the crash but were never marked sent.
    assert wait_for(lambda: not consumer.connected, 10)
    broker.start()
    assert consumer.subscribed.wait(10)
    ledger = terminal.ledger = terminal.open_ledger()
    pending = ledger.outbox(limit=1000)
    assert len(pending) == 50
    raw = make_client("edge-a01-crashed", broker.settings("edge-a01"))
    raw.connect(broker.settings().host, broker.port)
    raw.loop_start()
    for item in pending[:15]:
        raw.publish("bansos/v1/3171/edge-a01/event", item.payload, qos=1).wait_for_publish(5)
    raw.disconnect()
    raw.loop_stop()
    assert wait_for(lambda: store.count() == 25, 10)
    terminal.start()  # a new Reporter on the same ledger file
    assert complete(store, ledger, broker, terminal.central_key)
    assert sorted(store.event_ids()) == ledger_ids(ledger)
    assert consumer.duplicates >= 15  # re-sent by the new reporter, dropped by event_id
    assert store.gaps() == {} and store.anomalies() == []


def test_acl_refusal_keeps_rows_unsent(broker, central, make_terminal, caplog):
    _, store, registry = central
    # A terminal whose certificate names another device may not publish under this id.
    t = make_terminal("edge-a02", cn="edge-zz9")
    honest = make_terminal("edge-b01")
    registry.add(honest.device_id, honest.identity.device_public_pem())

    def refused() -> int:
        return sum("broker refused event" in r.getMessage() for r in caplog.records)

    try:
        reporter = t.start()
        assert wait_for(lambda: reporter.connected, 10)
        t.decide(3)
        assert wait_for(lambda: refused() == 3, 10)  # the broker answered each one: refused
        # Had the broker passed any of them on, it would reach central before this later one.
        honest.start()
        [allowed] = honest.decide(1)
        assert wait_for(lambda: store.count() > 0, 10)
        assert store.event_ids() == [allowed["event_id"]]
        assert t.ledger.outbox_depth() == 3 and reporter.acked == 0
    finally:
        t.close()
        honest.close()


def test_claims_sync_refuses_a_household_paid_elsewhere(
    broker, make_terminal, central_key, central_pem
):
    a = make_terminal("edge-a01")
    b = make_terminal("edge-b01")
    other = make_terminal("edge-c01", regency="3172")
    # Claims sync believes a synced payout only on the signed device registry's word.
    blob = sign_registry(
        central_key,
        [
            DeviceEntry(t.device_id, t.cfg.device.regency, t.identity.device_public_pem())
            for t in (a, b, other)
        ],
        version=1,
    )
    try:
        for t in (a, b, other):
            registry = RegistryStore(t.state / "registry.json", central_pem)
            registry.install(blob)
            t.start(registry=registry)
        assert wait_for(lambda: all(t.reporter.connected for t in (a, b, other)), 10)
        pay(a.ledger, "KPM-3171-0000-0042", ROUND, 6)
        a.ledger.record("no_match", household_id="KPM-3171-0000-0043", round_id=ROUND)
        a.reporter.wake()
        # Terminals of one regency share the round's reference key: b finds a's payout by it.
        ref = household_ref(REF_KEY, ROUND, "KPM-3171-0000-0042")
        assert wait_for(lambda: b.ledger.is_paid("KPM-3171-0000-0042", ROUND, ref) is not None, 10)
        paid = b.ledger.is_paid("KPM-3171-0000-0042", ROUND, ref)
        assert paid["where"] == "remote" and paid["device_id"] == "edge-a01"
        with pytest.raises(AlreadyPaid):
            pay(b.ledger, "KPM-3171-0000-0042", ROUND, 6)
        ref_43 = household_ref(REF_KEY, ROUND, "KPM-3171-0000-0043")
        assert b.ledger.is_paid("KPM-3171-0000-0043", ROUND, ref_43) is None
        # Another regency does not hear about it.
        assert other.ledger.is_paid("KPM-3171-0000-0042", ROUND, ref) is None
        assert a.ledger.stats()["remote_payouts"] == 0  # its own event does not come back
    finally:
        for t in (a, b, other):
            t.close()


def test_shared_subscription_splits_events_between_consumers(broker, tmp_path, make_terminal):
    registry = DeviceRegistry()
    stores = [EventStore(tmp_path / f"c{i}.sqlite") for i in range(2)]
    consumers = [
        Consumer(broker.settings("central"), s, registry, group="g1", client_id=f"c{i}")
        for i, s in enumerate(stores)
    ]
    for c in consumers:
        c.start()
    assert all(c.subscribed.wait(10) for c in consumers)
    t = make_terminal("edge-a01")
    registry.add(t.device_id, t.identity.device_public_pem())
    try:
        t.start()
        t.decide(60)
        assert wait_for(lambda: sum(s.count() for s in stores) >= 60, 15)
        ids = [set(s.event_ids()) for s in stores]
        assert ids[0] and ids[1], "both consumers should get a share"
        assert not ids[0] & ids[1], "an event went to both members of the group"
        assert ids[0] | ids[1] == set(ledger_ids(t.ledger))
    finally:
        t.close()
        for c, s in zip(consumers, stores, strict=True):
            c.stop()
            s.close()


def test_published_payloads_are_canonical_json(terminal):
    ev = terminal.ledger.record("spoof", liveness=0.1)
    item = terminal.ledger.outbox()[0]
    assert json.loads(item.payload) == ev
    assert errors("event", ev) == []


def test_commands_over_the_broker_are_applied_or_refused_and_answered(
    broker, terminal, central_key
):
    terminal.actions["config"] = lambda a: apply_config_changes(
        terminal.cfg, a["set"], limits={"liveness.threshold": (0.5, 0.9)}
    )
    reporter = terminal.start()
    spy = Spy(broker, ["bansos/v1/3171/edge-a01/cmd/+/result", "bansos/v1/3171/edge-a01/health"])
    assert wait_for(lambda: reporter.connected, 10)
    topic = reporter.topics.command("config")
    good = sign_command(central_key, "edge-a01", "config", {"set": {"liveness.threshold": 0.77}})
    tampered = good.replace(b"0.77", b"0.11")
    spy.publish(topic, tampered)
    spy.publish(topic, good)
    spy.publish(topic, good)  # replayed
    spy.publish(
        reporter.topics.command("health"), sign_command(central_key, "edge-a01", "health", {})
    )
    assert wait_for(lambda: len(spy.on("/result")) == 4, 10)
    results = spy.on("/result")
    assert [r["status"] for r in results] == ["refused", "applied", "refused", "applied"]
    assert [r["error"] for r in results][:3] == ["bad signature", None, "replayed command"]
    assert terminal.cfg.liveness.threshold == 0.77
    public = terminal.identity.device_public_pem()
    for r in results:
        assert errors("command_result", r) == []
        body = {k: v for k, v in r.items() if k != "sig"}
        key = serialization.load_pem_public_key(public)
        key.verify(base64.b64decode(r["sig"]), canonical(body))  # signed by device
    # The health command made a report right away.
    assert wait_for(lambda: any(h.get("reason") == "requested" for h in spy.on("/health")), 5)
    spy.close()


class FlakyStore:
    """An EventStore whose first ``failures`` writes fail (a locked or unreachable database)."""

    def __init__(self, store: EventStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.attempts = 0

    def add(self, event: dict) -> bool:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError("database is locked")
        return self.store.add(event)

    def reject(self, *args) -> None:
        self.store.reject(*args)


def test_consumer_acknowledges_only_what_it_stored(broker, tmp_path, make_terminal):
    registry = DeviceRegistry()
    store = EventStore(tmp_path / "central.sqlite")
    t = make_terminal("edge-a01")
    registry.add(t.device_id, t.identity.device_public_pem())
    flaky = FlakyStore(store, failures=3)  # every attempt of the first delivery fails
    first = Consumer(broker.settings("central"), flaky, registry, group=None, client_id="c-ack")
    first.start()
    try:
        assert first.subscribed.wait(10)
        t.start()
        t.decide(2)
        assert wait_for(lambda: first.unacked == 1 and first.stored == 1, 10)
        assert store.count() == 1
    finally:
        first.stop()
    # The same consumer session comes back: the broker re-delivers the unacknowledged event.
    again = Consumer(broker.settings("central"), store, registry, group=None, client_id="c-ack")
    again.start()
    try:
        assert wait_for(lambda: store.count() == 2, 10)
        assert sorted(store.event_ids()) == ledger_ids(t.ledger)
    finally:
        again.stop()
        t.close()
        store.close()
