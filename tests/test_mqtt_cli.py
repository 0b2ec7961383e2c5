"""`edge consume` and `edge command` against a real broker."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from mosquitto import broker_fixture, pki_fixture, wait_for  # noqa: F401
from support import pay

from edge.__main__ import main
from edge.config import parse_config
from edge.keys import DeviceIdentity
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.reporter import Reporter
from edge.mqtt.store import EventStore
from edge.registry import DeviceEntry, sign_registry


def tls_args(broker, cn: str) -> list[str]:
    s = broker.settings(cn)
    return ["--broker", s.host, "--port", str(s.port), "--tls", "--ca", s.ca_file,
            "--cert", s.cert_file, "--key", s.key_file]  # fmt: skip


def test_consume_stores_verified_events_then_summarises(
    broker, tmp_path, capsys, identity, make_ledger
):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "edge-a01.pem").write_bytes(identity.device_public_pem())
    ledger = make_ledger(device_id="edge-a01")
    for i in range(4):
        pay(ledger, f"H{i}", "2026-11", 250_000)
    ledger.record("no_match")
    cfg = parse_config(
        {
            "device": {"id": "edge-a01", "state_dir": str(tmp_path)},
            "mqtt": broker.mqtt_config("edge-a01"),
        }
    )
    reporter = Reporter(cfg, ledger, identity)
    db = f"sqlite:///{tmp_path / 'central.sqlite'}"
    # Central ran before: its persistent session holds the group's subscription, so the broker
    # queues what the terminal sends while `edge consume` is not running (no race on who is
    # first, which a timer would only make likely).
    earlier = EventStore(tmp_path / "earlier.sqlite")
    before = Consumer(broker.settings("central"), earlier, DeviceRegistry(), client_id="c-cli")
    before.start()
    assert before.subscribed.wait(10)
    before.stop()
    earlier.close()
    reporter.start()
    try:
        assert wait_for(lambda: ledger.outbox_depth() == 0, 10)  # all five with the broker
        argv = ["consume", *tls_args(broker, "central"), "--db", db, "--registry", str(registry)]
        assert main([*argv, "--client-id", "c-cli", "--duration", "4"]) == 0
    finally:
        reporter.stop()
        ledger.close()
    assert "stored 5, duplicates 0, rejected 0" in capsys.readouterr().out
    store = EventStore(db)
    assert store.count() == 5
    store.close()
    assert main(["consume", "--summary", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "3171     2026-11" in out and "1,000,000" in out


def test_command_cli_sends_a_signed_command_and_prints_the_result(
    broker, tmp_path, capsys, central_key, central_pem, identity, make_ledger
):
    key_file = tmp_path / "central.pem"
    key_file.write_bytes(
        central_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ledger = make_ledger(device_id="edge-a01")
    cfg = parse_config(
        {
            "device": {"id": "edge-a01", "state_dir": str(tmp_path)},
            "mqtt": broker.mqtt_config("edge-a01"),
        }
    )
    commands = CommandProcessor(central_pem, "edge-a01", tmp_path, {})
    reporter = Reporter(cfg, ledger, identity, commands)
    reporter.start()
    try:
        assert wait_for(lambda: reporter.connected, 10)
        base = ["command", *tls_args(broker, "central"), "--central-key", str(key_file)]
        base += ["--device", "edge-a01", "--regency", "3171", "--timeout", "10"]
        assert main([*base, "health"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["status"] == "applied" and result["name"] == "health"
        assert main([*base, "selfdestruct"]) == 1
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["error"] == "unknown command: selfdestruct"
        # With the signed device registry each result's signature is checked too.
        pub = tmp_path / "central.pub"
        pub.write_bytes(central_pem)
        checked = [*base, "--central-pub", str(pub), "--registry"]
        for version, key in ((1, identity), (2, DeviceIdentity.generate())):
            entry = DeviceEntry("edge-a01", "3171", key.device_public_pem())
            reg = tmp_path / f"registry-{version}.json"
            reg.write_bytes(sign_registry(central_key, [entry], version))
            assert main([*checked, str(reg), "health"]) == (0 if key is identity else 1)
        assert "result not from edge-a01: bad signature" in capsys.readouterr().err
    finally:
        reporter.stop()
        commands.close()
        ledger.close()
