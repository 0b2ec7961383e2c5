"""Issue 12, point 1, replayed against a real Mosquitto: one stolen terminal tries to turn away
a recipient of another regency by publishing a payout there.

Terminal ``edge-x`` (regency 3171) publishes an accepted payout for a household of regency
3172 on ``bansos/v1/3172/edge-x/event``. With the ACL generated from the device registry the
broker refuses it; with the ACL bypassed (the old, permissive one) claims sync at ``edge-b02``
refuses it on the registry's word. Either way the genuine household is still paid at edge-b02.
Also here: the registry reaches terminals as a retained message, and a broker killed with
SIGKILL keeps sessions and retained status (the documented autosave settings).
"""

from __future__ import annotations

import base64
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from mosquitto import ACL, Broker, Spy, pki_fixture, wait_for  # noqa: F401
from paho.mqtt.subscribeoptions import SubscribeOptions
from support import pay, ref_of

from edge.config import parse_config
from edge.events import canonical, check_head
from edge.mqtt.client import connect_async, make_client
from edge.mqtt.reporter import Reporter
from edge.mqtt.schemas import errors
from edge.registry import (
    DeviceEntry,
    RegistryStore,
    mosquitto_acl,
    open_registry,
    registry_topic,
    revoke,
    sign_registry,
)

ROUND = "2026-12"
VICTIM_HOUSEHOLD = "KPM-3172-0001-0001"
REGENCIES = {"edge-x": "3171", "edge-b02": "3172", "edge-b03": "3172"}


class Client:
    """A bare MQTT client with a history of what it received and how the broker answered."""

    def __init__(self, broker: Broker, cn: str, session_expiry_s: int = 0) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, mqtt.ReasonCode] = {}
        self.granted: list[mqtt.ReasonCode] = []
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.client = make_client(
            f"{cn}-{id(self)}"[:60] if session_expiry_s == 0 else cn, broker.settings(cn)
        )
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.granted.extend(rcs)
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        connect_async(self.client, broker.settings(cn), session_expiry_s)
        self.client.loop_start()
        assert self.connected.wait(10), f"{cn} could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.session_present = flags.session_present
            self.connected.set()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert wait_for(lambda: info.mid in self.acks, 5)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> mqtt.ReasonCode:
        before = len(self.granted)
        self.client.subscribe([(topic, SubscribeOptions(qos=1))])
        assert wait_for(lambda: len(self.granted) > before, 5)
        return self.granted[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(make_identity):
    """The three terminals' identities."""
    return {device: make_identity() for device in REGENCIES}


@pytest.fixture
def registry_blob(fleet, central_key) -> bytes:
    entries = [DeviceEntry(d, REGENCIES[d], i.device_public_pem()) for d, i in fleet.items()]
    return sign_registry(central_key, entries, version=1)


def start_terminal(broker, tmp_path, device, identity, make_ledger, central_pem, blob=None):
    """A terminal's ledger and real reporter, with the registry installed (when given)."""
    state = tmp_path / device
    cfg = parse_config(
        {
            "device": {"id": device, "regency": REGENCIES[device], "state_dir": str(state)},
            "mqtt": {**broker.mqtt_config(device), "health_interval_s": 3600},
        }
    )
    ledger = make_ledger(state / "ledger.sqlite", identity, device, REGENCIES[device])
    registry = RegistryStore(state / "registry.json", central_pem)
    if blob is not None:
        registry.install(blob)
    reporter = Reporter(cfg, ledger, identity, None, reconnect_max_s=1, registry=registry)
    reporter.start()
    assert wait_for(lambda: reporter.connected, 10)
    return ledger, reporter, registry


def forged_payouts(make_ledger, tmp_path, identity) -> list[bytes]:
    """What the stolen edge-x can publish into regency 3172: the issue's garbage signature, and
    an event properly signed with edge-x's own (stolen) key but naming regency 3172."""
    ledger = make_ledger(tmp_path / "edge-x-forge.sqlite", identity, "edge-x", "3172")
    event = pay(ledger, VICTIM_HOUSEHOLD, ROUND)
    garbage = {**event, "sig": base64.b64encode(b"\0" * 64).decode()}
    return [canonical(garbage), canonical(event)]


def settle_with_a_genuine_payout(broker, tmp_path, fleet, make_ledger, central_pem, blob, victim):
    """edge-b03 pays another household of 3172 after the forgeries: once the victim has it,
    every earlier message on its regency topics has been handled."""
    ledger, reporter, _ = start_terminal(
        broker, tmp_path, "edge-b03", fleet["edge-b03"], make_ledger, central_pem, blob
    )
    try:
        pay(ledger, "KPM-3172-0001-0002", ROUND)
        reporter.wake()
        assert wait_for(
            lambda: (
                victim.is_paid("KPM-3172-0001-0002", ROUND, ref_of("KPM-3172-0001-0002"))
                is not None
            ),
            10,
        )
    finally:
        reporter.stop()


def test_generated_acl_refuses_the_cross_regency_forgery(
    tmp_path, pki, fleet, registry_blob, central_pem, make_ledger
):
    acl = mosquitto_acl(open_registry(registry_blob, central_pem))
    broker = Broker(tmp_path / "broker", pki, acl=acl)
    broker.start()
    attacker = None
    victim, reporter, _ = start_terminal(
        broker, tmp_path, "edge-b02", fleet["edge-b02"], make_ledger, central_pem, registry_blob
    )
    try:
        attacker = Client(broker, "edge-x")
        # edge-x may not even listen to regency 3172 (reads only its own regency's claims).
        attacker.subscribe("bansos/v1/3172/+/event")
        for payload in forged_payouts(make_ledger, tmp_path, fleet["edge-x"]):
            rc = attacker.publish("bansos/v1/3172/edge-x/event", payload)
            assert rc.is_failure and rc.getName() == "Not authorized"
        # Its own topic is still writable: the ACL confines, it does not cut off.
        assert not attacker.publish("bansos/v1/3171/edge-x/status", b"{}").is_failure
        settle_with_a_genuine_payout(
            broker, tmp_path, fleet, make_ledger, central_pem, registry_blob, victim
        )
        assert reporter.claims.rejected == 0  # nothing forged ever reached the terminal
        assert attacker.messages == []  # and 3172's payouts never reached edge-x
        assert victim.is_paid(VICTIM_HOUSEHOLD, ROUND, ref_of(VICTIM_HOUSEHOLD)) is None
        assert pay(victim, VICTIM_HOUSEHOLD, ROUND)["outcome"] == "accepted"
    finally:
        if attacker is not None:
            attacker.close()
        reporter.stop()
        broker.stop()


def test_with_the_acl_bypassed_claims_sync_refuses_it(
    tmp_path, pki, fleet, registry_blob, central_pem, make_ledger
):
    broker = Broker(tmp_path / "broker", pki, acl=ACL)  # the old ACL: any regency is writable
    broker.start()
    attacker = None
    victim, reporter, _ = start_terminal(
        broker, tmp_path, "edge-b02", fleet["edge-b02"], make_ledger, central_pem, registry_blob
    )
    try:
        attacker = Client(broker, "edge-x")
        for payload in forged_payouts(make_ledger, tmp_path, fleet["edge-x"]):
            assert not attacker.publish("bansos/v1/3172/edge-x/event", payload).is_failure
        settle_with_a_genuine_payout(
            broker, tmp_path, fleet, make_ledger, central_pem, registry_blob, victim
        )
        refusals = reporter.claims.refusals
        assert refusals == [
            "device is registered in regency 3171, not the event's 3172",
            "device is registered in regency 3171, not the event's 3172",
        ]
        assert victim.is_paid(VICTIM_HOUSEHOLD, ROUND, ref_of(VICTIM_HOUSEHOLD)) is None
        assert pay(victim, VICTIM_HOUSEHOLD, ROUND)["outcome"] == "accepted"
    finally:
        if attacker is not None:
            attacker.close()
        reporter.stop()
        broker.stop()


def test_registry_reaches_terminals_retained_and_never_goes_back(
    tmp_path, pki, fleet, registry_blob, central_key, central_pem, make_ledger
):
    """Central publishes the signed registry retained on bansos/v1/registry; a terminal that
    connects later installs it, takes a newer one (a revocation) and refuses a replayed older
    one; the forged device is then refused by claims sync."""
    v1 = open_registry(registry_blob, central_pem)
    broker = Broker(tmp_path / "broker", pki, acl=mosquitto_acl(v1))
    broker.start()
    central = Client(broker, "central")
    try:
        assert not central.publish(registry_topic(), registry_blob, retain=True).is_failure
        victim, reporter, registry = start_terminal(
            broker, tmp_path, "edge-b02", fleet["edge-b02"], make_ledger, central_pem
        )
        assert wait_for(lambda: registry.current() is not None, 10)
        assert registry.current().version == 1
        v2 = sign_registry(central_key, revoke(v1, "edge-b03"), version=2)
        central.publish(registry_topic(), v2, retain=True)
        assert wait_for(lambda: registry.current().version == 2, 10)
        central.publish(registry_topic(), registry_blob, retain=True)  # replay of version 1
        # A revoked terminal's payouts are no longer believed.
        b03 = make_ledger(tmp_path / "b03.sqlite", fleet["edge-b03"], "edge-b03", "3172")
        central.publish("bansos/v1/3172/edge-b03/event", canonical(pay(b03, "KPM-3172-0009-0001")))
        assert wait_for(lambda: reporter.claims.rejected == 1, 10)
        assert reporter.claims.refusals[-1].startswith("device revoked at ")
        assert registry.current().version == 2
        assert open_registry((tmp_path / "edge-b02" / "registry.json").read_bytes(), central_pem)
        reporter.stop()
    finally:
        central.close()
        broker.stop()


@pytest.mark.parametrize("save_on_change", [True, False], ids=["documented", "mosquitto-default"])
def test_broker_killed_with_sigkill_keeps_sessions_and_retained_status(
    tmp_path, pki, save_on_change
):
    """The documented autosave settings keep what a SIGKILL would otherwise lose; mosquitto's
    default (a save every 30 minutes) loses the session, its queued event and the status."""
    broker = Broker(tmp_path / "broker", pki, save_on_change=save_on_change)
    broker.start()
    try:
        consumer = Client(broker, "central", session_expiry_s=3600)
        consumer.subscribe("bansos/v1/+/+/event")
        consumer.close()
        device = Client(broker, "edge-a01")
        device.publish("bansos/v1/3171/edge-a01/status", b'{"state":"online"}', retain=True)
        device.publish("bansos/v1/3171/edge-a01/event", b'{"queued":"for central"}')
        device.close()
        # Mosquitto saves in its main loop right after a change, not before the PUBACK: a few
        # milliseconds of exposure remain (docs/security.md).
        time.sleep(0.2)
        broker.kill()
        broker.start()
        spy = Spy(broker, ["bansos/v1/+/+/status"])
        back = Client(broker, "central", session_expiry_s=3600)
        try:
            if not save_on_change:
                time.sleep(0.5)
                assert back.session_present is False and back.messages == []
                assert spy.on("/status") == []
                return
            assert wait_for(lambda: spy.on("/status") == [{"state": "online"}], 10)
            assert back.session_present is True
            assert wait_for(lambda: len(back.messages) == 1, 10)
            assert back.messages[0].payload == b'{"queued":"for central"}'
        finally:
            spy.close()
            back.close()
    finally:
        broker.stop()


def test_health_and_status_carry_a_signed_head_of_the_chain(
    tmp_path, pki, fleet, central_pem, make_ledger
):
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    spy = Spy(broker, ["bansos/v1/3172/edge-b02/status", "bansos/v1/3172/edge-b02/health"])
    identity = fleet["edge-b02"]
    ledger, reporter, _ = start_terminal(
        broker, tmp_path, "edge-b02", identity, make_ledger, central_pem
    )
    try:
        pay(ledger, VICTIM_HOUSEHOLD, ROUND)
        last = ledger.record("no_match", score=0.2, threshold=0.6)
        reporter.publish_health({"reason": "test"})
        assert wait_for(lambda: any(h.get("reason") == "test" for h in spy.on("/health")), 10)
        health = [h for h in spy.on("/health") if h.get("reason") == "test"][-1]
        status = spy.on("/status")[-1]
        assert errors("health", health) == [] and errors("status", status) == []
        assert (health["head"]["seq"], health["head"]["hash"]) == (2, last["hash"])
        assert check_head(health["head"], "edge-b02", identity.device_public_pem()) is None
        assert status["head"]["seq"] == 0  # online was said before the first payout
        assert check_head(status["head"], "edge-b02", identity.device_public_pem()) is None
        assert health["registry_version"] is None  # nothing installed on this terminal
    finally:
        reporter.stop()
        spy.close()
        broker.stop()
