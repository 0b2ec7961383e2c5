"""Issue 17 with a real Mosquitto: a broker outage while a terminal holds a backlog ends with
every ledger event stored exactly once at central, with no manual step.

The broker goes down (SIGTERM, or SIGKILL with no final save) while the terminal keeps
deciding; it comes back and the terminal reconnects and drains its outbox *before* the
consumers return. Mosquitto 2.0 does not restore shared subscriptions, so the shared group
never sees that backlog; after a kill, even a plain subscription may be gone. Two central
deployments run side by side, each with its own database: a consumer in a shared group and a
plain one. Both must end complete, through the terminal's health reports (heads) and the
recovery loop's signed resend commands alone.
"""

from __future__ import annotations

import json

import pytest
from mosquitto import broker_fixture, pki_fixture, wait_for  # noqa: F401
from support import pay

from edge.config import parse_config
from edge.keys import public_pem
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.recovery import RecoveryPolicy
from edge.mqtt.reporter import Reporter
from edge.mqtt.store import EventStore

DEVICE = "edge-g01"
REGENCY = "3171"
# Short timings for a test; production defaults are in RecoveryPolicy.
POLICY = RecoveryPolicy(interval_s=0.5, settle_s=2, backoff_s=4, backoff_max_s=10, max_range=25)
BOUND_S = 45


@pytest.fixture
def terminal(broker, tmp_path, make_identity, make_ledger, central_key):
    """A terminal with a real ledger and Reporter that answers signed commands."""
    identity = make_identity()
    state = tmp_path / DEVICE
    cfg = parse_config(
        {
            "device": {"id": DEVICE, "regency": REGENCY, "state_dir": str(state)},
            "mqtt": {**broker.mqtt_config(DEVICE), "health_interval_s": 1.0},
        }
    )
    ledger = make_ledger(state / "ledger.sqlite", identity, DEVICE, REGENCY)
    pem = public_pem(central_key.public_key())
    commands = CommandProcessor(pem, DEVICE, state, {})
    reporter = Reporter(cfg, ledger, identity, commands, reconnect_max_s=1)
    yield reporter, ledger, identity
    reporter.stop()


class Central:
    """One central deployment: a database and its consumer, which can be restarted."""

    def __init__(self, broker, tmp_path, registry, central_key, group: str | None) -> None:
        self.name = group or "plain"
        self.store = EventStore(tmp_path / f"central-{self.name}.sqlite")
        self._args = (broker.settings("central"), self.store, registry)
        self._key = central_key
        self._group = group
        self.consumer: Consumer | None = None

    def start(self) -> None:
        self.consumer = Consumer(
            *self._args,
            group=self._group,
            client_id=f"central-{self.name}",
            reconnect_max_s=1,
            central_key=self._key,
            recovery=POLICY,
        )
        self.consumer.start()
        assert self.consumer.subscribed.wait(10)

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None

    def holds(self, ledger) -> bool:
        return sorted(self.store.event_ids()) == sorted(e["event_id"] for e in ledger.events())


def decide(ledger, reporter, n: int, start: int) -> None:
    for i in range(start, start + n):
        if i % 3 == 0:
            pay(ledger, f"KPM-3171-0000-{i:04d}", "2026-11", 600_000)
        else:
            ledger.record("no_match", score=0.2, threshold=0.6)
    reporter.wake()


@pytest.mark.parametrize("outage", ["restart", "sigkill", "restart-live"])
def test_outage_with_backlog_ends_with_every_event_stored_once(
    broker, tmp_path, terminal, central_key, outage
):
    reporter, ledger, identity = terminal
    registry = DeviceRegistry(keys={DEVICE: identity.device_public_pem()})
    centrals = [Central(broker, tmp_path, registry, central_key, g) for g in ("central", None)]
    try:
        for c in centrals:
            c.start()
        reporter.start()
        decide(ledger, reporter, 10, 0)
        assert wait_for(lambda: all(c.store.count() == 10 for c in centrals), 15)
        wait_for(lambda: False, 1.5)  # let the broker autosave the sessions, as it would
        # The outage: the broker goes, the terminal keeps deciding, the consumers stay away.
        broker.kill() if outage == "sigkill" else broker.stop()
        live = outage == "restart-live"  # the consumers' own reconnects race the terminal's
        for c in centrals:
            if not live:
                c.stop()
        assert wait_for(lambda: not reporter.connected, 10)
        decide(ledger, reporter, 60, 10)
        broker.start()
        # The terminal is back first and hands its backlog to the broker...
        assert wait_for(lambda: ledger.outbox_depth() == 0, 20)
        # ...and only then do the consumers return.
        for c in centrals:
            if not live:
                c.start()
        assert wait_for(lambda: all(c.holds(ledger) for c in centrals), BOUND_S), [
            (c.name, c.store.count(), c.store.lag()) for c in centrals
        ]
        unanswered = "SELECT COUNT(*) FROM resends WHERE answer IS NULL"
        wait_for(lambda: all(c.store.query(unanswered) == [(0,)] for c in centrals), 5)
    finally:
        for c in centrals:
            c.stop()
    for c in centrals:
        assert c.store.count() == 70, c.name  # exactly once: event_id is the key
        assert c.store.gaps() == {} and c.store.anomalies("seq_conflict") == []
        assert [r["missing"] for r in c.store.lag()] == [0]
    shared, plain = centrals
    spans = {c.name: c.store.query("SELECT from_seq, to_seq FROM resends") for c in centrals}
    assert all(hi - lo < POLICY.max_range for v in spans.values() for lo, hi in v)
    if outage == "restart":
        # A clean stop saved the plain subscription: its session queued the backlog, while the
        # shared group lost all of it to the broker and got it back by asking.
        assert spans["plain"] == []
        assert {s for lo, hi in spans["central"] for s in range(lo, hi + 1)} == set(range(11, 71))
        # ...and the terminal's signed answers came back through the broker and were recorded.
        answers = "SELECT answer, resent, to_seq - from_seq + 1 FROM resends"
        assert all(a == "applied" and n == m for a, n, m in shared.store.query(answers))
    elif outage == "sigkill":
        # After a kill either may have lost it; a resend one asked for reaches both.
        assert spans["plain"] or spans["central"]
    for c in centrals:
        c.store.close()


def test_request_resend_command_line_asks_for_the_missing_tail(
    broker, tmp_path, make_identity, make_ledger, central_key
):
    """`edge consume --request-resend` uses the heads the consumer recorded, not only gaps."""
    from cryptography.hazmat.primitives import serialization
    from mosquitto import Spy

    from edge.__main__ import main
    from edge.events import canonical, iso_utc

    identity = make_identity()
    ledger = make_ledger(tmp_path / "l.sqlite", identity, DEVICE, REGENCY)
    events = [ledger.record("no_face") for _ in range(5)]
    db = tmp_path / "central.sqlite"
    store = EventStore(db)
    consumer = Consumer(
        broker.settings("central"),
        store,
        DeviceRegistry(keys={DEVICE: identity.device_public_pem()}),
    )
    consumer.handle(f"bansos/v1/{REGENCY}/{DEVICE}/event", canonical(events[0]))
    report = {
        "schema": "bansos.health/1", "device_id": DEVICE, "regency": REGENCY,
        "ts": iso_utc(1_796_000_000), "uptime_s": 1, "outbox_depth": 0, "last_seq": 5,
        "model_id": None, "bundle_id": None, "temperature_c": None, "faults": [],
    }  # fmt: skip
    assert consumer.heads.observe(f"bansos/v1/{REGENCY}/{DEVICE}/health", canonical(report))
    store.close()
    key = tmp_path / "central.pem"
    key.write_bytes(
        central_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    spy = Spy(broker, [f"bansos/v1/{REGENCY}/{DEVICE}/cmd/resend"])
    s = broker.settings("central")
    tls = ["--broker", s.host, "--port", str(s.port), "--tls", "--ca", s.ca_file,
           "--cert", s.cert_file, "--key", s.key_file]  # fmt: skip
    try:
        argv = ["consume", *tls, "--db", f"sqlite:///{db}", "--central-key", str(key)]
        assert main([*argv, "--request-resend"]) == 0
        assert wait_for(lambda: spy.on("/cmd/resend"), 10)
        [cmd] = spy.on("/cmd/resend")
        assert cmd["args"] == {"from_seq": 2, "to_seq": 5} and cmd["device_id"] == DEVICE
        # With the key, a running `edge consume` runs the recovery loop: its first step marks
        # the device as behind (asking waits for settle_s).
        registry = tmp_path / "registry.json"
        registry.write_text(json.dumps({DEVICE: identity.device_public_pem().decode()}))
        assert main([*argv, "--registry", str(registry), "--no-group", "--duration", "1"]) == 0
        store = EventStore(db)
        [(since,)] = store.query("SELECT behind_since FROM heads")
        store.close()
        assert since is not None
    finally:
        spy.close()
