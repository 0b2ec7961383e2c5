"""The daemon reporting to a real Mosquitto over mutual TLS: every decision arrives once, signed,
and the broker's retained status follows the terminal."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mosquitto import Spy, broker_fixture, pki_fixture, wait_for  # noqa: F401

from edge import demo
from edge.config import Config
from edge.config.central import MqttConfig
from edge.errors import BundleError, CommandRefused
from edge.ledger.verify import verify_events
from edge.mqtt.actions import terminal_actions


class FakeDesk:
    """Remembers which receipts it was asked to reprint; only event "e-1" exists."""

    def __init__(self) -> None:
        self.reprinted: list[str] = []

    def reprint(self, event_id: str) -> bool:
        self.reprinted.append(event_id)
        return event_id == "e-1"


class FakeBundles:
    """Installs any blob except b"bad"."""

    def __init__(self) -> None:
        self.installed: list[bytes] = []

    def install(self, blob: bytes):
        if blob == b"bad":
            raise BundleError("signature does not verify")
        self.installed.append(blob)
        return SimpleNamespace(bundle_id="b-2", round_id="2026-12", households={"h": None})


def test_terminal_actions_reprint_by_event_id_configure_and_install():
    cfg, desk, bundles = Config(), FakeDesk(), FakeBundles()
    actions = terminal_actions(cfg, bundles, desk)
    assert set(actions) == {"bundle", "config", "reprint"}
    assert actions["reprint"]({"event_id": "e-1"}) == {"printed": True}
    assert actions["reprint"]({"event_id": "e-404"}) == {"printed": False}
    assert desk.reprinted == ["e-1", "e-404"]
    changed = actions["config"]({"set": {"flow.cooldown_s": 9.0}})
    assert changed == {"changed": {"flow.cooldown_s": [5.0, 9.0]}} and cfg.flow.cooldown_s == 9.0
    with pytest.raises(CommandRefused):
        actions["config"]({"set": {"device.id": "someone-else"}})
    assert actions["bundle"]({"blob": b"ok"})["bundle_id"] == "b-2"
    with pytest.raises(CommandRefused, match="bundle refused"):
        actions["bundle"]({"blob": b"bad"})
    assert bundles.installed == [b"ok"]


@pytest.mark.slow
def test_daemon_reports_every_decision(tmp_path: Path, broker, engine, models_dir, make_identity):
    state, photos = demo.build_pilot(tmp_path / "pilot", engine, with_shared=False)
    demo.photo_script(tmp_path / "frames", photos)
    cfg = demo.demo_config(state, tmp_path / "frames", liveness=False, models_dir=str(models_dir))
    # The whole section at once: key by key, `enabled` would meet TLS without its files.
    cfg.mqtt = MqttConfig(**broker.mqtt_config(cfg.device.id))
    spy = Spy(broker, ["bansos/v1/+/+/event", "bansos/v1/+/+/status"])
    app = demo.App(cfg, exit_at_end=False)
    runner = threading.Thread(target=app.run)
    runner.start()
    try:
        assert wait_for(lambda: len(spy.on("/event")) >= 5, timeout=90), spy.on("/event")
        assert wait_for(lambda: app.ledger.outbox_depth() == 0, timeout=10)
    finally:
        app.stop_event.set()
        runner.join(30)
    events = spy.on("/event")
    assert [e["outcome"] for e in events] == [
        "accepted",
        "already_paid",
        "duplicate_face",
        "bad_qr",
        "wrong_round",
    ]
    assert len({e["event_id"] for e in events}) == 5
    assert all(e["device_id"] == cfg.device.id for e in events)
    identity = make_identity(state / "keys")
    assert verify_events(events, identity.device_public_pem()).ok
    assert wait_for(lambda: spy.on("/status") and spy.on("/status")[-1]["state"] == "offline")
    assert spy.on("/status")[0]["state"] == "online"
    spy.close()


@pytest.mark.slow
def test_camera_fault_is_signalled_and_reported(tmp_path: Path, broker, engine, models_dir):
    """A camera that is not there: the LED says fault and central hears of it at once."""
    state, _ = demo.build_pilot(tmp_path / "pilot", engine, with_shared=False)
    cfg = demo.demo_config(state, tmp_path / "gone", liveness=False, models_dir=str(models_dir))
    # The whole section at once: key by key, `enabled` would meet TLS without its files.
    cfg.mqtt = MqttConfig(**broker.mqtt_config(cfg.device.id))
    spy = Spy(broker, ["bansos/v1/+/+/health"])
    app = demo.App(cfg, exit_at_end=False)
    runner = threading.Thread(target=app.run)
    runner.start()
    try:
        # The fault comes before the broker connection; the report made at connection (or the
        # one queued by the fault, when already connected) names it.
        reported = wait_for(
            lambda: any("camera" in h.get("faults", []) for h in spy.on("/health")), timeout=20
        )
        assert reported, spy.on("/health")
        assert wait_for(lambda: app.signals.current == "fault", timeout=5)
    finally:
        app.stop_event.set()
        runner.join(30)
        spy.close()
