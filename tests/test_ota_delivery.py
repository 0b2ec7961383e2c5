"""Delivery of a release: the update command, HTTPS with a pinned CA and resume, chunks over
MQTT, the daemon's hand-over at a safe moment, staged rollouts and the fleet's versions."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
import time

import pytest
from mosquitto import Pki, broker_fixture, pki_fixture, wait_for  # noqa: F401
from ota_support import HttpsServer, copy_checkout, fake_wheelhouse, tiny_models
from pg import pg_cluster_fixture, pg_dsn_fixture  # noqa: F401
from support import T0, FakeClock

from edge.cli.mqtt import print_summary
from edge.config import parse_config
from edge.errors import ReleaseError
from edge.keys import DeviceIdentity
from edge.mqtt.client import BrokerSettings
from edge.mqtt.commands import sign_command
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.schemas import validate
from edge.mqtt.store import EventStore
from edge.ota import rollout
from edge.ota.agent import PAUSE_MAX_S, REQUEST, UpdateAgent
from edge.ota.deploy import PAUSED, SWITCH
from edge.ota.fetch import https_fetch
from edge.ota.release import build_release, generate_release_key, verify_release

DEVICE = "edge-3171-0042"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A release key, releases 0.2.0 and 0.3.0 (stand-in wheels) and a test CA."""
    tmp = tmp_path_factory.mktemp("delivery")
    key = tmp / "release.pem"
    pub = generate_release_key(key)
    models = tiny_models(tmp / "models")
    arts = {}
    for version in ("0.2.0", "0.3.0"):
        src = copy_checkout(tmp / f"src-{version}", version=version)
        arts[version] = build_release(
            src, key, tmp / "dist", models_dir=models, wheelhouse=fake_wheelhouse
        )
    return {"key": key, "pub": pub, "arts": arts, "pki": Pki(tmp / "pki"), "tmp": tmp}


@pytest.fixture
def server(kit):
    srv = HttpsServer(
        kit["pki"].server_cert, kit["pki"].server_key, kit["arts"]["0.2.0"].read_bytes()
    )
    yield srv
    srv.close()


@pytest.fixture
def cfg(tmp_path, kit, central_pem):
    (tmp_path / "release.pub").write_bytes(kit["pub"])
    (tmp_path / "central.pub").write_bytes(central_pem)
    return parse_config(
        {
            "device": {"id": DEVICE, "regency": "3171", "state_dir": str(tmp_path / "state")},
            "bundle": {"central_public_key": str(tmp_path / "central.pub")},
            "ota": {
                "release_public_key": str(tmp_path / "release.pub"),
                "ca_file": str(kit["pki"].ca_file),
                "apply_wait_s": 60,
            },
        }
    )


def facts(path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- HTTPS ---------------------------------------------------------------------------------------


def test_https_download_resumes_with_a_range_request(kit, server, tmp_path):
    art = kit["arts"]["0.2.0"]
    size = art.stat().st_size
    dest = tmp_path / "part"
    server.cut_next_after(size // 3)
    with pytest.raises(ReleaseError):
        https_fetch(server.url, dest, size, kit["pki"].ca_file)
    assert dest.stat().st_size == size // 3  # kept for the next try
    seen = []
    https_fetch(server.url, dest, size, kit["pki"].ca_file, progress=seen.append)
    assert dest.read_bytes() == art.read_bytes()
    assert server.ranges == [None, f"bytes={size // 3}-"]
    assert seen[-1] == size and seen[0] > size // 3


def test_a_server_ignoring_range_is_read_again_from_the_start(kit, server, tmp_path):
    art = kit["arts"]["0.2.0"]
    dest = tmp_path / "part"
    dest.write_bytes(b"x" * 1000)  # not even the right bytes: a full read replaces them
    server.httpd.honour_range = False
    https_fetch(server.url, dest, art.stat().st_size, kit["pki"].ca_file)
    assert dest.read_bytes() == art.read_bytes()


def test_only_https_with_the_pinned_ca(kit, tmp_path):
    other = Pki(tmp_path / "other-ca")  # a valid certificate, from a CA we do not pin
    srv = HttpsServer(other.server_cert, other.server_key, b"data")
    try:
        with pytest.raises(ReleaseError, match="CERTIFICATE_VERIFY_FAILED"):
            https_fetch(srv.url, tmp_path / "p", 4, kit["pki"].ca_file)
    finally:
        srv.close()
    with pytest.raises(ReleaseError, match="https only"):
        https_fetch("http://127.0.0.1:1/x", tmp_path / "p", 4, kit["pki"].ca_file)
    with pytest.raises(ReleaseError, match="ota.ca_file"):
        https_fetch("https://127.0.0.1:1/x", tmp_path / "p", 4, None)


# -- the daemon's agent --------------------------------------------------------------------------


def test_https_update_staged_then_handed_over_between_captures(kit, server, cfg):
    clock = FakeClock(100.0)
    agent = UpdateAgent(cfg, running="0.1.0", monotonic=clock)
    art = kit["arts"]["0.2.0"]
    result = agent.action({"version": "0.2.0", **facts(art), "url": server.url})
    assert result["state"] == "downloading"
    assert wait_for(lambda: agent.state.get("state") == "staged"), agent.state
    ota = cfg.state_path / "ota"
    assert (ota / art.name).read_bytes() == art.read_bytes()
    assert agent.health()["update"] == {
        "version": "0.2.0",
        "state": "staged",
        "received": art.stat().st_size,
        "size": art.stat().st_size,
        "error": None,
    }
    assert agent.poll(busy=True) is None and not (ota / REQUEST).exists()  # a capture runs
    assert agent.poll(busy=False) is None  # asked; payouts go on while the installer unpacks
    request = json.loads((ota / REQUEST).read_text())
    assert request == {"version": "0.2.0", "artefact": art.name, "id": agent.state["request_id"]}
    assert agent.poll(busy=False) is None and not (ota / PAUSED).exists()
    (ota / SWITCH).write_text("{}")  # the installer is ready to switch
    assert agent.poll(busy=True) is None and not (ota / PAUSED).exists()  # not mid-capture
    assert agent.poll(busy=False) == "update" and (ota / PAUSED).exists()
    assert agent.poll(busy=False) == "update"  # claims stay paused until the daemon is stopped
    # The daemon was never stopped: claims resume, and central hears why.
    clock.advance(PAUSE_MAX_S + 1)
    assert agent.poll(busy=False) is None
    assert agent.state["state"] == "failed" and "did not stop" in agent.state["error"]
    assert not (ota / REQUEST).exists() and not (ota / PAUSED).exists()


def test_an_unanswered_request_is_given_up(kit, server, cfg):
    clock = FakeClock(100.0)
    agent = UpdateAgent(cfg, running="0.1.0", monotonic=clock)
    agent.action({"version": "0.2.0", **facts(kit["arts"]["0.2.0"]), "url": server.url})
    assert wait_for(lambda: agent.state.get("state") == "staged")
    assert agent.poll(busy=False) is None and agent.state["state"] == "requested"
    clock.advance(cfg.ota.apply_wait_s + 1)
    assert agent.poll(busy=False) is None
    assert agent.state["state"] == "failed" and "did not start" in agent.state["error"]
    assert agent.health()["update"]["state"] == "failed"


def test_after_the_restart_the_installers_verdict_is_reported(kit, cfg):
    ota = cfg.state_path / "ota"
    ota.mkdir(parents=True)
    art = kit["arts"]["0.2.0"]
    (ota / art.name).write_bytes(art.read_bytes())
    asked = {"state": "requested", "version": "0.2.0", "request_id": "r-2", **facts(art)}
    (ota / "download.json").write_text(json.dumps(asked))
    # The verdict on an earlier request for the same version is not this one's.
    stale = {"state": "failed", "version": "0.2.0", "request": "r-1", "error": "old"}
    (ota / "journal.json").write_text(json.dumps(stale))
    assert UpdateAgent(cfg, running="0.1.0").state["state"] == "staged"  # asked again
    (ota / "download.json").write_text(json.dumps(asked))
    journal = {"state": "rolled_back", "version": "0.2.0", "request": "r-2"}
    journal["error"] = "selftest failed: camera"
    (ota / "journal.json").write_text(json.dumps(journal))
    agent = UpdateAgent(cfg, running="0.1.0")
    assert agent.news
    health = agent.health()
    assert health["version"] == "0.1.0"
    assert health["update"]["state"] == "rolled_back"
    assert health["update"]["error"] == "selftest failed: camera"
    assert not (ota / art.name).exists()
    report = {
        "schema": "bansos.health/1",
        "device_id": DEVICE,
        "regency": "3171",
        "ts": "2026-12-01T08:00:00Z",
        "uptime_s": 1.0,
        "outbox_depth": 0,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None,
        "faults": [],
        **health,
    }
    validate("health", report)
    status = {"schema": "bansos.status/1", "device_id": DEVICE, "state": "online"}
    validate("status", {**status, "ts": "2026-12-01T08:00:00Z", "version": "0.1.0"})


def test_a_bad_download_is_refused(kit, server, cfg, tmp_path):
    agent = UpdateAgent(cfg, running="0.1.0")
    art = kit["arts"]["0.2.0"]
    wrong = {**facts(art), "sha256": "0" * 64}
    agent.action({"version": "0.2.0", **wrong, "url": server.url})
    assert wait_for(lambda: agent.state.get("state") == "failed")
    assert "sha256" in agent.state["error"]
    # Signed, but by a key the terminal does not trust as the release key.
    rogue = tmp_path / "rogue.pem"
    generate_release_key(rogue)
    src = copy_checkout(tmp_path / "src", version="0.4.0")
    forged = build_release(
        src,
        rogue,
        tmp_path / "d",
        models_dir=tiny_models(tmp_path / "m"),
        wheelhouse=fake_wheelhouse,
    )
    server.httpd.blob = forged.read_bytes()
    agent.action({"version": "0.4.0", **facts(forged), "url": server.url})
    assert wait_for(lambda: agent.state.get("state") == "failed")
    assert "signature" in agent.state["error"]
    assert not list((cfg.state_path / "ota").glob("bansos-edge-*"))


# -- the command over MQTT -----------------------------------------------------------------------


@pytest.fixture
def processor(cfg, central_pem):
    clock = FakeClock(T0)
    agent = UpdateAgent(cfg, running="0.1.0")
    proc = CommandProcessor(
        central_pem, DEVICE, cfg.state_path, {"update": agent.action}, clock=clock
    )
    yield proc, agent, clock
    proc.close()
    agent.close()


def topic(name: str = "update") -> str:
    return f"bansos/v1/3171/{DEVICE}/cmd/{name}"


def test_chunks_over_mqtt_in_any_order_survive_a_restart(kit, processor, cfg, central_key):
    proc, agent, clock = processor
    release = verify_release(kit["arts"]["0.2.0"], kit["pub"])
    payloads = [
        p
        for _t, p in rollout.update_commands(
            central_key, release, {DEVICE: "3171"}, chunk_bytes=4096, issued_at=T0
        )
    ]
    assert len(payloads) > 3
    random.Random(7).shuffle(payloads)
    half = len(payloads) // 2
    for p in payloads[:half]:
        result = proc.handle(topic(), p)
        assert result["ok"] and result["result"]["state"] == "downloading", result
    # The daemon restarts half way: the chunks already written are kept.
    agent2 = UpdateAgent(cfg, running="0.1.0")
    proc.register("update", agent2.action, replace=True)
    # A chunk delivered again (out of counter order) is written again, harmlessly.
    again = proc.handle(topic(), payloads[0])
    assert again["ok"] and again["result"]["state"] == "downloading", again
    for p in payloads[half:]:
        result = proc.handle(topic(), p)
        assert result["ok"], result
    assert result["result"]["state"] == "staged"
    assert (cfg.state_path / "ota" / release.path.name).read_bytes() == release.path.read_bytes()


def test_update_commands_refused(kit, processor, central_key, rogue_key, tmp_path):
    proc, agent, clock = processor
    art = kit["arts"]["0.2.0"]
    base = {"version": "0.2.0", **facts(art), "url": "https://central.example/r.tar"}

    def send(args, key=central_key, name="update"):
        return proc.handle(topic(name), sign_command(key, DEVICE, name, args, issued_at=T0))

    assert "not newer than the running 0.1.0" in send({**base, "version": "0.1.0"})["error"]
    assert "not newer" in send({**base, "version": "0.0.9"})["error"]
    assert "exceeds ota.max_bytes" in send({**base, "size": 1 << 40})["error"]
    assert send({**base, "url": "http://central.example/r.tar"})["error"].startswith("malformed")
    assert send(base, key=rogue_key)["error"] == "bad signature"
    both = {**base, "chunk": 0, "chunks": 1, "chunk_bytes": 4096, "data": ""}
    assert send(both)["error"].startswith("malformed")  # a url or chunks, never both
    payload = sign_command(central_key, DEVICE, "update", base, issued_at=T0)
    assert proc.handle(topic(), payload)["status"] == "applied"
    assert proc.handle(topic(), payload)["error"] == "replayed command"
    agent.close()


def test_no_release_key_no_updates(tmp_path, central_pem, central_key):
    cfg = parse_config({"device": {"id": DEVICE, "state_dir": str(tmp_path)}})
    agent = UpdateAgent(cfg, running="0.1.0")
    proc = CommandProcessor(central_pem, DEVICE, tmp_path, {"update": agent.action})
    args = {"version": "0.2.0", "size": 10, "sha256": "a" * 64, "url": "https://x.example/r"}
    result = proc.handle(topic(), sign_command(central_key, DEVICE, "update", args))
    assert result["error"] == "no release key configured (ota.release_public_key)"
    assert agent.health() == {"version": "0.1.0", "update": None}
    proc.close()


# -- staged rollouts and the fleet ---------------------------------------------------------------


def test_stages_by_devices_regency_and_a_stable_percentage():
    fleet = {f"edge-{r}-{i:04d}": r for r in ("3171", "3201") for i in range(500)}
    assert rollout.select(fleet, devices=["edge-3171-0001", "nope"]) == {"edge-3171-0001": "3171"}
    assert set(rollout.select(fleet, regency="3201").values()) == {"3201"}
    five = rollout.select(fleet, percent=5)
    twenty = rollout.select(fleet, percent=20)
    assert 20 <= len(five) <= 80 and 130 <= len(twenty) <= 270
    assert set(five) <= set(twenty)  # widening keeps the first terminals in
    assert rollout.select(fleet, percent=5) == five  # the same on every run
    both = rollout.select(fleet, regency="3171", percent=20)
    assert both == {d: r for d, r in twenty.items() if r == "3171"}


def test_url_rollout_is_one_signed_command_per_terminal(kit, central_key, central_pem):
    release = verify_release(kit["arts"]["0.3.0"], kit["pub"])
    targets = {"edge-3171-0001": "3171", "edge-3201-0002": "3201"}
    msgs = rollout.update_commands(central_key, release, targets, url="https://c.example/r.tar")
    assert [t for t, _ in msgs] == [
        "bansos/v1/3171/edge-3171-0001/cmd/update",
        "bansos/v1/3201/edge-3201-0002/cmd/update",
    ]
    cmd = json.loads(msgs[0][1])
    assert cmd["device_id"] == "edge-3171-0001"
    assert cmd["args"] == {
        "version": "0.3.0",
        **facts(release.path),
        "url": "https://c.example/r.tar",
    }
    validate("command", cmd)


def health_of(device: str, regency: str, version: str, update=None, ts="2026-12-01T08:00:00Z"):
    return {
        "schema": "bansos.health/1",
        "device_id": device,
        "regency": regency,
        "ts": ts,
        "uptime_s": 5.0,
        "outbox_depth": 0,
        "model_id": None,
        "bundle_id": None,
        "temperature_c": None,
        "faults": [],
        "version": version,
        "update": update,
    }


def test_the_consumer_shows_versions_across_the_fleet(tmp_path):
    store = EventStore(tmp_path / "central.sqlite")
    known = ("edge-3171-0001", "edge-3171-0002", "edge-3201-0001", "edge-3171-0009")
    keys = {d: DeviceIdentity.generate().device_public_pem() for d in known}
    consumer = Consumer(BrokerSettings(tls=False), store, DeviceRegistry(keys=keys))

    def send(report):
        where = f"bansos/v1/{report['regency']}/{report['device_id']}/health"
        return consumer.handle_health(where, json.dumps(report).encode())

    failed = {"version": "0.3.0", "state": "rolled_back", "error": "selftest failed: camera"}
    assert send(health_of("edge-3171-0001", "3171", "0.3.0")) == "fleet"
    assert send(health_of("edge-3171-0002", "3171", "0.2.0", failed)) == "fleet"
    assert send(health_of("edge-3201-0001", "3201", "0.2.0")) == "fleet"
    # An older report arriving late does not undo a newer one.
    late = health_of("edge-3171-0001", "3171", "0.2.0", ts="2026-12-01T07:00:00Z")
    assert send(late) == "fleet"
    spoof = health_of("edge-3171-0009", "3171", "9.9.9")
    where = "bansos/v1/3171/edge-3171-0001/health"
    assert consumer.handle_health(where, json.dumps(spoof).encode()).startswith("ignored")
    stranger = health_of("edge-9999-0001", "9999", "6.6.6")
    assert send(stranger) == "ignored: unknown or revoked device"
    out = io.StringIO()
    print_summary(store, out)
    text = out.getvalue()
    assert "versions (3 terminals): 0.2.0=2, 0.3.0=1" in text
    assert "UPDATE edge-3171-0002 0.2.0 -> 0.3.0 rolled_back: selftest failed: camera" in text
    store.close()


def test_release_chunk_commands_are_schema_checked(central_key):
    args = {"version": "0.2.0", "size": 10, "sha256": "a" * 64, "chunk": 0, "chunks": 1}
    good = {**args, "chunk_bytes": 1024, "data": base64.b64encode(b"x" * 10).decode()}
    validate("command", json.loads(sign_command(central_key, DEVICE, "update", good)))
    with pytest.raises(Exception, match="command"):
        validate("command", json.loads(sign_command(central_key, DEVICE, "update", args)))


def test_hand_over_to_the_root_installer_and_back(kit, server, cfg, tmp_path, monkeypatch, capsys):
    """Daemon stages and requests; `edge release apply` (edge-update.service) installs; the
    restarted daemon reports the verdict."""
    from edge.__main__ import main
    from edge.cli import release as release_cli
    from edge.ota.deploy import FakeService, file_handshake
    from edge.ota.install import Installer

    agent = UpdateAgent(cfg, running="0.1.0")
    art = kit["arts"]["0.2.0"]
    agent.action({"version": "0.2.0", **facts(art), "url": server.url})
    assert wait_for(lambda: agent.state.get("state") == "staged")
    assert agent.poll(busy=False) is None and (cfg.state_path / "ota" / REQUEST).exists()
    service = FakeService()
    paused = []
    looping = threading.Event()

    def daemon_loop():  # the daemon's frame loop, as far as the update goes
        while not looping.is_set():
            if agent.poll(busy=False):
                paused.append(True)
            time.sleep(0.02)

    def quick(release_dir, manifest):
        (release_dir / "venv").mkdir()

    def fakes(cfg_, args, boot=False):
        inst = Installer(
            tmp_path / "opt",
            cfg_.state_path,
            kit["pub"],
            service=service,
            selftest=lambda d: (True, "ok"),
            deploy=quick,
            wait_idle=file_handshake(cfg_.state_path / "ota", 10)
            if args.action == "apply"
            else None,
        )
        return inst

    # The one seam the CLI has no flag for: systemd and pip are replaced by fakes.
    monkeypatch.setattr(release_cli, "make_installer", fakes)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{cfg.state_path}"\n'
        f'[ota]\nroot = "{tmp_path / "opt"}"\n'
    )
    loop = threading.Thread(target=daemon_loop)
    loop.start()
    try:
        assert main(["--config", str(config), "release", "apply"]) == 0
    finally:
        looping.set()
        loop.join(5)
    assert paused  # claims paused before the daemon was stopped
    assert capsys.readouterr().out.strip() == "confirmed 0.2.0"
    assert not (cfg.state_path / "ota" / PAUSED).exists()
    assert not (cfg.state_path / "ota" / REQUEST).exists()  # taken: no second run
    assert service.history == ["stop", "start"]
    assert main(["--config", str(config), "release", "apply"]) == 0  # nothing requested
    assert "no install was requested" in capsys.readouterr().err
    assert main(["--config", str(config), "release", "status"]) == 0
    journal = json.loads(capsys.readouterr().out)
    assert journal["state"] == "confirmed" and journal["request"] == agent.state["request_id"]
    restarted = UpdateAgent(cfg, running="0.2.0")
    assert restarted.news and restarted.health()["update"]["state"] == "confirmed"
    agent.close()
    # A technician's offline install of the same kind of artefact, then a boot's recovery.
    newer = str(kit["arts"]["0.3.0"])
    assert main(["--config", str(config), "release", "install", newer]) == 0
    assert capsys.readouterr().out.strip() == "confirmed 0.3.0"
    assert main(["--config", str(config), "release", "install", newer]) == 1  # not newer
    assert "not newer than the running 0.3.0" in capsys.readouterr().err
    assert main(["--config", str(config), "release", "recover", "--boot"]) == 0
    assert (tmp_path / "opt" / "current").resolve().name == "0.3.0"


def test_rollout_cli_stages_and_publishes(kit, tmp_path, capsys, broker, central_key):
    """`edge release rollout`: the fleet from the consumer's database, a stage, signed commands
    on each chosen terminal's update topic."""
    from cryptography.hazmat.primitives import serialization
    from mosquitto import Spy

    from edge.__main__ import main

    db = tmp_path / "central.sqlite"
    store = EventStore(db)
    for device, regency in (("edge-3171-0001", "3171"), ("edge-3171-0002", "3171")):
        store.record_health(health_of(device, regency, "0.1.0"))
    store.record_health(health_of("edge-3201-0001", "3201", "0.1.0"))
    store.close()
    key = tmp_path / "central.pem"
    key.write_bytes(
        central_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = tmp_path / "release.pub"
    pub.write_bytes(kit["pub"])
    art = kit["arts"]["0.3.0"]
    s = broker.settings("central")
    base = ["release", "rollout", str(art), "--pub", str(pub), "--central-key", str(key)]
    base += ["--db", f"sqlite:///{db}", "--broker", s.host, "--port", str(s.port), "--tls"]
    base += ["--ca", s.ca_file, "--cert", s.cert_file, "--key", s.key_file]
    assert main([*base, "--regency", "3171", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "release 0.3.0 to 2 of 3 terminal(s)" in out and "edge-3201-0001" not in out

    spy = Spy(broker, ["bansos/v1/+/+/cmd/update"])
    try:
        url = "https://releases.example/0.3.0.tar"
        assert main([*base, "--devices", "edge-3201-0001", "--url", url]) == 0
        assert wait_for(lambda: spy.on("/cmd/update"), timeout=10)
        (cmd,) = spy.on("/cmd/update")
        assert cmd["device_id"] == "edge-3201-0001" and cmd["args"]["url"] == url
        assert cmd["args"]["version"] == "0.3.0"
    finally:
        spy.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fleet_versions_on_both_store_backends(request, tmp_path, backend):
    dsn = (
        f"sqlite:///{tmp_path / 'c.sqlite'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_dsn")
    )
    store = EventStore(dsn)
    try:
        update = {"version": "0.3.0", "state": "downloading", "received": 10, "size": 99}
        store.record_health(health_of("edge-3171-0001", "3171", "0.2.0", update))
        later = {**update, "state": "confirmed"}
        store.record_health(
            health_of("edge-3171-0001", "3171", "0.3.0", later, ts="2026-12-01T09:00:00Z")
        )
        store.record_health(health_of("edge-3171-0001", "3171", "0.1.0", ts="2026-12-01T01:00:00Z"))
        assert store.fleet() == [
            {
                "device_id": "edge-3171-0001",
                "regency": "3171",
                "version": "0.3.0",
                "update_version": "0.3.0",
                "update_state": "confirmed",
                "error": None,
                "ts": "2026-12-01T09:00:00Z",
            }
        ]
    finally:
        store.close()
