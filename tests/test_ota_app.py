"""The daemon with a real broker: an ``update`` command from central is fetched over HTTPS,
checked, handed over between captures (claims pause), and reported in status and health."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from mosquitto import Spy, broker_fixture, pki_fixture, wait_for  # noqa: F401
from ota_support import HttpsServer, copy_checkout, fake_wheelhouse, tiny_models

from edge import __version__, demo
from edge.config.central import MqttConfig
from edge.keys import load_central_private_key
from edge.mqtt.commands import sign_command
from edge.ota.release import build_release, generate_release_key


@pytest.mark.slow
def test_daemon_takes_an_update_and_pauses_claims_for_the_install(
    tmp_path: Path, broker, pki, engine, models_dir
):
    key = tmp_path / "release.pem"
    (tmp_path / "release.pub").write_bytes(generate_release_key(key))
    src = copy_checkout(tmp_path / "src", version="99.0.0")
    art = build_release(
        src,
        key,
        tmp_path / "dist",
        models_dir=tiny_models(tmp_path / "m"),
        wheelhouse=fake_wheelhouse,
    )
    data = art.read_bytes()
    server = HttpsServer(pki.server_cert, pki.server_key, data)

    state, _ = demo.build_pilot(tmp_path / "pilot", engine, with_shared=False)
    cfg = demo.demo_config(state, tmp_path / "gone", liveness=False, models_dir=str(models_dir))
    cfg.mqtt = MqttConfig(**broker.mqtt_config(cfg.device.id))
    cfg.mqtt.health_interval_s = 0.5
    cfg.ota.release_public_key = tmp_path / "release.pub"
    cfg.ota.ca_file = pki.ca_file
    spy = Spy(
        broker, ["bansos/v1/+/+/health", "bansos/v1/+/+/status", "bansos/v1/+/+/cmd/+/result"]
    )
    app = demo.App(cfg, exit_at_end=False)
    runner = threading.Thread(target=app.run)
    runner.start()
    try:
        assert wait_for(lambda: app.online, timeout=20)
        status = [s for s in spy.on("/status") if s["state"] == "online"]
        assert status and status[-1]["version"] == __version__
        central = load_central_private_key(tmp_path / "pilot/central/central_private.pem")
        args = {
            "version": "99.0.0",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "url": server.url,
        }
        topic = f"bansos/v1/{cfg.device.regency}/{cfg.device.id}/cmd/update"
        spy.publish(topic, sign_command(central, cfg.device.id, "update", args))
        assert wait_for(lambda: spy.on("/result"), timeout=10)
        assert spy.on("/result")[0]["ok"], spy.on("/result")
        # Handed to the installer; payouts go on while it unpacks.
        request = cfg.state_path / "ota" / "request.json"
        assert wait_for(request.exists, timeout=20)
        assert json.loads(request.read_text())["version"] == "99.0.0"
        assert app.flow.paused is None
        # The installer is ready to switch: no capture runs (no camera here), claims pause.
        (cfg.state_path / "ota" / "switch").write_text("{}")
        assert wait_for(lambda: app.flow.paused == "update", timeout=5)
        assert (cfg.state_path / "ota" / "paused").exists()
        assert "clock" not in app.faults()  # waiting for the installer is no fault

        def reported():
            return [
                h for h in spy.on("/health") if (h.get("update") or {}).get("state") == "requested"
            ]

        assert wait_for(reported, timeout=10), spy.on("/health")[-1]
        health = reported()[-1]
        assert health["version"] == __version__ and health["update"]["version"] == "99.0.0"
    finally:
        app.stop_event.set()
        runner.join(30)
        spy.close()
        server.close()
