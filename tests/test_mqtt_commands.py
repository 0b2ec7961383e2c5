"""Signed commands: applied when valid; refused, reported and harmless otherwise."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from escpos_decode import split_slips
from mosquitto import Spy, broker_fixture, pki_fixture, wait_for  # noqa: F401
from support import REF_KEY, T0, pay

from edge.app import App
from edge.config import Config, parse_config
from edge.config.central import MqttConfig
from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle
from edge.enrolment.store import BundleStore
from edge.errors import CommandRefused
from edge.events import canonical, verify_receipt_payload
from edge.mqtt.actions import bundle_action
from edge.mqtt.commands import bundle_commands, sign_command
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.remote_config import apply_config_changes, floors_of
from edge.mqtt.reporter import Reporter
from edge.mqtt.schemas import errors

DEVICE = "edge-a01"
TOPIC = f"bansos/v1/3171/{DEVICE}/cmd/"
NOW = T0  # where the `clock` fixture stands
DEFAULT = Config()
# The ranges central signs into the bundle for remote threshold changes.
LIMITS = {"vision.match_threshold": (0.5, 0.9), "liveness.threshold": (0.5, 0.95)}


class Actions:
    """The app's actions, faked with a history of what ran."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.calls: list[tuple[str, dict]] = []

    def table(self) -> dict:
        return {
            "config": lambda a: self._run(
                "config",
                a,
                apply_config_changes(self.cfg, a["set"], limits=LIMITS, floors=floors_of(DEFAULT)),
            ),
            "reprint": lambda a: self._run("reprint", a, {"queued": a["event_id"]}),
            "health": lambda a: self._run("health", a, {"queued": True}),
            "bundle": lambda a: self._run("bundle", a, {"installed": a["bundle_id"]}),
            "explode": self._explode,
        }

    def _run(self, name: str, args: dict, out: dict) -> dict:
        self.calls.append((name, args))
        return out

    def _explode(self, args: dict) -> dict:
        self.calls.append(("explode", args))
        raise RuntimeError("printer jammed")


@pytest.fixture
def setup(tmp_path, central_pem, clock):
    cfg = Config()
    actions = Actions(cfg)
    proc = CommandProcessor(
        central_pem, DEVICE, tmp_path / "commands.sqlite", actions.table(), clock=clock
    )
    yield proc, actions, cfg, clock
    proc.close()


def cmd(central_key, name, args, **kw) -> bytes:
    kw.setdefault("issued_at", NOW - 10)
    return sign_command(central_key, DEVICE, name, args, **kw)


def check_result(result: dict) -> dict:
    assert errors("command_result", result) == [], errors("command_result", result)
    return result


def test_valid_config_command_is_applied(setup, central_key):
    proc, actions, cfg, _ = setup
    payload = cmd(
        central_key, "config", {"set": {"vision.match_threshold": 0.66, "flow.cooldown_s": 2}}
    )
    result = check_result(proc.handle(TOPIC + "config", payload))
    assert result["ok"] and result["status"] == "applied"
    assert result["command_id"] == json.loads(payload)["id"]
    assert cfg.vision.match_threshold == 0.66 and cfg.flow.cooldown_s == 2
    assert result["result"]["changed"]["vision.match_threshold"] == [
        DEFAULT.vision.match_threshold,
        0.66,
    ]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: p.replace(b"0.66", b"0.11"), "bad signature"),
        (
            lambda p: json.dumps({k: v for k, v in json.loads(p).items() if k != "sig"}).encode(),
            "unsigned",
        ),
        (lambda p: b"{not json", "unsigned"),
        (lambda p: p.replace(b'"sig":"', b'"sig":"AAAA'), "malformed"),
        (lambda p: json.dumps({**json.loads(p), "extra": 1}).encode(), "malformed"),
    ],
    ids=["tampered", "unsigned", "garbage", "bad-sig-encoding", "unknown-field"],
)
def test_bad_commands_are_refused_and_change_nothing(setup, central_key, mutate, reason):
    proc, actions, cfg, _ = setup
    payload = mutate(cmd(central_key, "config", {"set": {"vision.match_threshold": 0.66}}))
    result = check_result(proc.handle(TOPIC + "config", payload))
    assert not result["ok"] and result["status"] == "refused"
    assert reason in result["error"]
    assert cfg.vision.match_threshold == DEFAULT.vision.match_threshold and actions.calls == []


def test_signed_by_another_key_is_refused(setup, rogue_key):
    proc, actions, cfg, _ = setup
    result = proc.handle(TOPIC + "health", cmd(rogue_key, "health", {}))
    assert result["status"] == "refused" and result["error"] == "bad signature"
    assert actions.calls == []


def test_replay_is_refused_even_after_a_restart(setup, central_key, central_pem, tmp_path):
    proc, actions, cfg, clock = setup
    payload = cmd(central_key, "reprint", {"event_id": "0" * 8 + "-0000-4000-8000-" + "0" * 12})
    assert proc.handle(TOPIC + "reprint", payload)["ok"]
    assert proc.handle(TOPIC + "reprint", payload)["error"] == "replayed command"
    proc.close()
    again = CommandProcessor(
        central_pem, DEVICE, tmp_path / "commands.sqlite", actions.table(), clock=clock
    )
    assert check_result(again.handle(TOPIC + "reprint", payload))["error"] == "replayed command"
    again.close()
    assert [c[0] for c in actions.calls] == ["reprint"]


@pytest.mark.parametrize(
    "issued, reason",
    [(NOW - 8 * 86400, "command expired"), (NOW + 3600, "command issued in the future")],
)
def test_commands_outside_the_time_window_are_refused(setup, central_key, issued, reason):
    proc, actions, _, _ = setup
    result = proc.handle(TOPIC + "health", cmd(central_key, "health", {}, issued_at=issued))
    assert result["error"] == reason and actions.calls == []


def test_unknown_foreign_and_misrouted_commands_are_refused(setup, central_key):
    proc, actions, cfg, _ = setup
    unknown = cmd(central_key, "selfdestruct", {})
    assert proc.handle(TOPIC + "selfdestruct", unknown)["error"] == "unknown command: selfdestruct"
    foreign = sign_command(central_key, "edge-b99", "health", {}, issued_at=NOW)
    assert proc.handle(TOPIC + "health", foreign)["error"] == "command is for another device"
    misrouted = cmd(central_key, "health", {})
    assert (
        proc.handle(TOPIC + "reprint", misrouted)["error"]
        == "command name does not match its topic"
    )
    bad_args = cmd(central_key, "reprint", {"event_id": "x", "also": 1})
    assert proc.handle(TOPIC + "reprint", bad_args)["error"].startswith("malformed command")
    assert actions.calls == []


def test_config_keys_outside_the_allow_list_or_bad_values_change_nothing(setup, central_key):
    proc, actions, cfg, _ = setup
    r = proc.handle(TOPIC + "config", cmd(central_key, "config", {"set": {"mqtt.host": 1}}))
    assert r["status"] == "refused" and "not allowed" in r["error"]
    r = proc.handle(
        TOPIC + "config",
        cmd(central_key, "config", {"set": {"flow.cooldown_s": 3.25, "vision.match_threshold": 7}}),
    )
    # The action refuses a value the config schema rejects, and applies neither key.
    assert r["status"] == "refused" and "vision.match_threshold" in r["error"]
    assert cfg.flow.cooldown_s == DEFAULT.flow.cooldown_s
    assert cfg.vision.match_threshold == DEFAULT.vision.match_threshold
    with pytest.raises(CommandRefused):
        apply_config_changes(cfg, {"device.id": "edge-evil"})


def test_failing_action_is_reported_as_failed(setup, central_key):
    proc, actions, _, _ = setup
    r = check_result(proc.handle(TOPIC + "explode", cmd(central_key, "explode", {})))
    assert r["status"] == "failed" and "printer jammed" in r["error"]


def test_chunked_bundle_is_reassembled_then_installed(setup, central_key):
    proc, actions, _, _ = setup
    blob = os.urandom(300_000)
    parts = bundle_commands(central_key, DEVICE, "b-2026-11", blob, 100_000, issued_at=NOW)
    assert len(parts) == 3
    # Sent in counter order, as MQTT delivers one topic's QoS 1 messages.
    results = [proc.handle(TOPIC + "bundle", p) for p in parts]
    assert [r["status"] for r in results] == ["partial", "partial", "applied"]
    assert all(errors("command_result", r) == [] for r in results)
    [(name, args)] = actions.calls
    assert args["blob"] == blob and args["sha256"] == hashlib.sha256(blob).hexdigest()


def test_bundle_chunks_redelivered_out_of_order_still_install(setup, central_key):
    proc, actions, _, _ = setup
    blob = os.urandom(300_000)
    parts = bundle_commands(central_key, DEVICE, "b-2026-12", blob, 100_000, issued_at=NOW)
    # A reconnect redelivers the first chunk after the others: a strict counter would drop it
    # as a replay and the bundle would never complete.
    results = [proc.handle(TOPIC + "bundle", p) for p in (parts[1], parts[2], parts[0])]
    assert [r["status"] for r in results] == ["partial", "partial", "applied"]
    [(name, args)] = actions.calls
    assert args["blob"] == blob


def test_bundle_with_a_wrong_digest_is_refused(setup, central_key):
    proc, actions, _, _ = setup
    blob = b"x" * 1000
    args = {
        "bundle_id": "b1",
        "sha256": hashlib.sha256(b"other").hexdigest(),
        "chunk": 0,
        "chunks": 1,
        "data": base64.b64encode(blob).decode(),
    }
    r = proc.handle(TOPIC + "bundle", cmd(central_key, "bundle", args))
    assert r["status"] == "refused" and "sha256" in r["error"] and actions.calls == []


def test_sign_command_output_is_canonical_and_valid(central_key):
    payload = sign_command(central_key, DEVICE, "health", {})
    body = json.loads(payload)
    assert canonical(body) == payload and errors("command", body) == []


def test_reporter_from_config_enables_commands_only_with_a_central_key(
    tmp_path, central_key, central_pem, identity, make_ledger
):
    key_file = tmp_path / "central.pub"
    key_file.write_bytes(central_pem)
    ledger = make_ledger(device_id=DEVICE)
    base = {"device": {"id": DEVICE, "state_dir": str(tmp_path)}, "mqtt": {"tls": False}}
    try:
        plain = Reporter.from_config(parse_config(base), ledger, identity)
        assert plain._commands is None
        cfg = parse_config({**base, "bundle": {"central_public_key": str(key_file)}})
        reporter = Reporter.from_config(cfg, ledger, identity, {"reprint": lambda a: {}})
        ev = ledger.record("no_face")
        payload = sign_command(central_key, DEVICE, "resend", {"from_seq": 1, "to_seq": 1})
        result = reporter._commands.handle(TOPIC + "resend", payload)
        # The reporter's own resend action ran (publishing into paho's queue while offline).
        assert result["status"] == "applied" and result["result"] == {"resent": 1}
        assert ev["seq"] == 1
    finally:
        ledger.close()


def test_a_real_bundle_arrives_in_chunks_and_a_forged_one_is_refused(
    tmp_path, central_key, central_pem, identity, rogue_key, clock
):
    model = ("mobilefacenet-int8-0123456789ab", "ab" * 32)
    now = datetime.fromtimestamp(clock(), UTC)

    def make(key, bundle_id):
        vec = np.eye(1, 128, dtype=np.float32)
        spec = BundleSpec(
            device_id=DEVICE,
            round_id="2026-11",
            point_name="Titik Salur Uji",
            regency="3171",
            model_id=model[0],
            model_sha256=model[1],
            valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(days=30),
            bundle_id=bundle_id,
            ref_key=REF_KEY,
        )
        return build_bundle(
            spec,
            [Household("KPM-1", "SITI A***", "3171", 300_000, [Member("M1", "recipient")])],
            ["KPM-1/M1"],
            vec,
            central_key=key,
            device_bundle_public=identity.bundle_public_bytes(),
        )

    store = BundleStore(tmp_path, central_pem, identity, *model, device_id=DEVICE, clock=clock)
    proc = CommandProcessor(
        central_pem, DEVICE, tmp_path, {"bundle": bundle_action(store)}, clock=clock
    )
    try:
        blob = make(central_key, "b-good")
        parts = bundle_commands(
            central_key, DEVICE, "b-good", blob, chunk_bytes=max(1, len(blob) // 3), issued_at=NOW
        )
        results = [proc.handle(TOPIC + "bundle", p) for p in parts]
        assert results[-1]["status"] == "applied", results[-1]
        assert results[-1]["result"] == {
            "bundle_id": "b-good",
            "round_id": "2026-11",
            "households": 1,
        }
        # Commands signed by central, but the bundle inside is signed by someone else.
        forged = make(rogue_key, "b-forged")
        [r] = [
            proc.handle(TOPIC + "bundle", p)
            for p in bundle_commands(central_key, DEVICE, "b-forged", forged, issued_at=NOW)
        ]
        assert r["status"] == "refused" and r["error"].startswith("bundle refused")
        assert store.current().bundle_id == "b-good"
    finally:
        proc.close()


def test_reprint_over_the_broker_prints_that_receipt_marked(
    tmp_path, broker, central_key, central_pem, models_dir, make_identity, make_ledger
):
    """Central asks the running daemon for one receipt again: the real command path (broker,
    signature check, the app's action) prints that event's receipt, marked as a reprint, and
    refuses ids that are no payout of this terminal."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys" / "central_public.pem").write_bytes(central_pem)
    cfg = Config()
    cfg.device.state_dir = state
    cfg.bundle.central_public_key = state / "keys" / "central_public.pem"
    cfg.models.dir = str(models_dir)
    cfg.liveness.enabled = False
    cfg.camera.kind, cfg.camera.source = "folder", str(tmp_path / "no-frames")
    cfg.mqtt = MqttConfig(**broker.mqtt_config(cfg.device.id))
    identity = make_identity(state / "keys")  # on disk: the daemon signs with these keys
    ledger_path = state / "ledger.sqlite"
    with make_ledger(ledger_path, identity, cfg.device.id, cfg.device.regency) as ledger:
        first, latest = (pay(ledger, hid) for hid in ("KPM-3171-0001-0001", "KPM-3171-0001-0002"))
        refusal = ledger.record("no_match", household_id="KPM-3171-0001-0003", score=0.2)
    unknown = "0b8c1f5e-0000-4000-8000-000000000001"

    app = App(cfg, exit_at_end=False)
    base = app.reporter.topics.base
    spy = Spy(broker, [f"{base}/cmd/+/result", f"{base}/health"])
    runner = threading.Thread(target=app.run)
    runner.start()
    try:
        # The health report made on connection follows the command subscription.
        assert wait_for(lambda: spy.on("/health"), timeout=20), "daemon never reported"
        assert wait_for(lambda: app.ledger.pending_receipts() == [], timeout=10)
        commands = {
            event_id: sign_command(central_key, cfg.device.id, "reprint", {"event_id": event_id})
            for event_id in (first["event_id"], unknown, refusal["event_id"])
        }
        for payload in commands.values():
            spy.publish(app.reporter.topics.command("reprint"), payload)
        assert wait_for(lambda: len(spy.on("/result")) == 3, timeout=15), spy.on("/result")
    finally:
        app.stop_event.set()
        runner.join(30)
        spy.close()

    by_id = {r["command_id"]: check_result(r) for r in spy.on("/result")}
    results = {eid: by_id[json.loads(p)["id"]] for eid, p in commands.items()}
    assert results[first["event_id"]]["status"] == "applied"
    assert results[first["event_id"]]["result"] == {"printed": True}
    assert results[unknown]["status"] == "refused"
    assert results[unknown]["error"] == f"no event {unknown} in this terminal's ledger"
    assert results[refusal["event_id"]]["status"] == "refused"
    assert "not a payout" in results[refusal["event_id"]]["error"]

    slips = split_slips((state / "receipts.bin").read_bytes())
    assert [s.whole for s in slips] == [True, True, True]  # two originals at start, one copy
    records = [verify_receipt_payload(s.decoded.qr[0], identity.device_public_pem()) for s in slips]
    assert [r["event_id"] for r in records] == [e["event_id"] for e in (first, latest, first)]
    assert ["** CETAK ULANG **" in s.texts for s in slips] == [False, False, True]
    assert slips[2].texts[1] == "** CETAK ULANG **"  # right under the title
