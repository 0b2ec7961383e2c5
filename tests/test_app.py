"""The whole daemon end to end: real models, a signed bundle, a scripted camera folder, mock GPIO
pins and a printer writing real ESC/POS bytes to a file. This is what `make run` shows."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from edge import demo
from edge.config import Config
from edge.config.central import MqttConfig
from edge.devices.receipt import REFUSAL_WORDS
from edge.events import verify_receipt_payload
from edge.ledger.verify import verify_events
from edge.ops import sdnotify
from edge.ops.clock import RtcReading
from tests.escpos_decode import decode

pytestmark = pytest.mark.slow


def run_app(cfg) -> SimpleNamespace:
    """Run the daemon over its scripted camera; the decisions as a listener saw them."""
    app = demo.App(cfg)
    decisions: list = []
    app.on_decision(decisions.append)
    app.run()
    return SimpleNamespace(app=app, decisions=decisions, state=cfg.state_path)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory, engine, models_dir):
    root = tmp_path_factory.mktemp("demo")
    state, photos = demo.build_pilot(root, engine, with_shared=False)
    demo.photo_script(root / "frames", photos)
    cfg = demo.demo_config(state, root / "frames", liveness=False, models_dir=str(models_dir))
    cfg.printer.refusal_slip = True
    return run_app(cfg)


def test_decisions_of_the_photo_script(photo_run):
    assert [str(d.outcome) for d in photo_run.decisions] == [
        "accepted",
        "already_paid",
        "duplicate_face",
        "bad_qr",
        "wrong_round",
    ]
    assert photo_run.decisions[0].score >= photo_run.app.cfg.vision.match_threshold
    assert photo_run.app.decided == 5


def test_ledger_has_one_payout_and_verifies(photo_run, make_identity, make_ledger):
    app, state = photo_run.app, photo_run.state
    identity = make_identity(state / "keys")  # the daemon's own keys, as it left them
    ledger = make_ledger(state / "ledger.sqlite", identity, app.cfg.device.id)
    events = list(ledger.events())
    assert ledger.outbox_depth() == len(events) == 5
    assert ledger.pending_receipts() == []
    assert [e["outcome"] for e in events].count("accepted") == 1
    report = verify_events(events, identity.device_public_pem())
    assert report.ok, report.errors


def test_receipt_bytes_decode_to_a_verifiable_receipt(photo_run, make_identity):
    state = photo_run.state
    printed = decode((state / "receipts.bin").read_bytes())
    assert len(printed.qr) == 1  # one payout receipt; refusal slips carry no QR
    identity = make_identity(state / "keys")
    record = verify_receipt_payload(printed.qr[0], identity.device_public_pem())
    accepted = photo_run.decisions[0].event
    assert record["event_id"] == accepted["event_id"]
    text = "\n".join(printed.texts)
    assert "Rp 300.000" in text
    assert REFUSAL_WORDS["already_paid"][0] in text
    # Neither the full household id nor the unmasked demo name may be printed.
    assert demo.ASTRONAUT_HH not in text and "WARGA DEMO" not in text


def test_no_face_image_is_stored_by_default(photo_run):
    images = [
        p for p in photo_run.state.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    ]
    assert images == []


def test_debug_option_keeps_the_aligned_crop(tmp_path, engine, models_dir):
    state, photos = demo.build_pilot(tmp_path / "pilot", engine, with_shared=False)
    script = demo.FrameScript(tmp_path / "frames")
    script.shot(demo.qr_frame(demo.encode_claim(demo.ASTRONAUT_HH, demo.ROUND)), 3)
    script.shot(photos[demo.ASTRONAUT_HH], 8)
    cfg = demo.demo_config(state, tmp_path / "frames", liveness=False, models_dir=str(models_dir))
    cfg.flow.store_debug_images = True
    [decision] = run_app(cfg).decisions
    crop = state / "debug" / f"{decision.event['event_id']}.png"
    assert crop.is_file() and crop.stat().st_mode & 0o777 == 0o600


def test_ready_line_tells_the_time_since_the_process_started(tmp_path, models_dir, caplog):
    """Start-up counts from the process start (as systemd does), not from the end of start-up."""
    cfg = demo.demo_config(tmp_path / "state", tmp_path / "frames", liveness=False)
    cfg.models.dir = str(models_dir)
    cfg.bundle.central_public_key = None  # no pilot was built: nothing to verify bundles with
    demo.FrameScript(tmp_path / "frames").pause(0.2)
    before = sdnotify.process_age_s()
    with caplog.at_level("INFO", logger="edge.app"):
        run_app(cfg)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready in")]
    reported = float(re.match(r"ready in ([0-9.]+) s", line).group(1))
    assert reported >= round(before, 2)


def test_signals_followed_each_decision(photo_run):
    shown = photo_run.app.signals.history
    assert shown[0] == "ready" and shown[-1] == "off"
    for pattern in ("accepted", "already_paid", "refused", "busy"):
        assert pattern in shown


def test_missing_tls_certificate_pays_out_offline(tmp_path, engine, models_dir, caplog):
    """A terminal provisioned before its client certificate arrived still pays out: the events
    wait in the outbox, the LED says no network, and the log says why."""
    root = tmp_path / "demo"
    state, photos = demo.build_pilot(root, engine, with_shared=False)
    demo.photo_script(root / "frames", photos)
    cfg = demo.demo_config(state, root / "frames", liveness=False, models_dir=str(models_dir))
    missing = tmp_path / "not-yet-issued"
    cfg.mqtt = MqttConfig(
        enabled=True,
        host="127.0.0.1",
        tls=True,
        cert_file=missing / "device.crt",
        key_file=missing / "tls_key.pem",
    )
    with caplog.at_level("ERROR", logger="edge.app"):
        run = run_app(cfg)
    assert [str(d.outcome) for d in run.decisions][0] == "accepted"
    assert run.app.reporter is None and run.app.online is False
    assert "no_network" in run.app.signals.history
    assert any("mqtt not started" in r.getMessage() for r in caplog.records)


def test_clock_with_no_rule_pauses_payouts_until_a_time_is_anchored(tmp_path, models_dir):
    """Payouts stop only when no time rule applies (edge/ops/clock.py): a clock before the floor
    on a terminal that never trusted a time nor signed an event. The LED says fault; a time
    signed by central anchors the boot and payouts resume."""
    from edge.events import CLOCK_FLOOR

    cfg = Config()
    cfg.models.dir = str(models_dir)
    cfg.device.state_dir = str(tmp_path / "state")
    cfg.camera.kind, cfg.camera.source = "folder", str(tmp_path / "frames")
    cfg.liveness.enabled = False
    demo.FrameScript(tmp_path / "frames").pause(0.2)
    app = demo.App(cfg)
    keeper = app.time_keeper
    keeper._clock = lambda: CLOCK_FLOOR - 86400  # booted at fake-hwclock's image date
    keeper._sync_flag = tmp_path / "no-ntp"
    keeper._rtc = lambda: RtcReading(False)
    app.clock_pause.check()
    assert app.flow.paused and "clock" in app.flow.paused
    app._refresh_signal()
    assert app.signals.current == "fault"
    assert "clock" in app.health()["faults"]
    assert keeper.offer_central(CLOCK_FLOOR + 3600)  # a verified command's issued_at
    app.clock_pause.check()
    assert not app.flow.paused
    assert app.clock_guard.check().source == "central"
    app.close()


def test_missing_or_corrupt_model_stops_start_up_with_one_line(tmp_path, models_dir):
    import shutil
    import subprocess
    import sys

    broken = tmp_path / "models"
    shutil.copytree(models_dir, broken)
    target = broken / "face_detection_short_range.tflite"
    target.write_bytes(target.read_bytes()[:1000])
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models]\ndir = "{broken}"\n[device]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[camera]\nsource = "{tmp_path}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge: error:")]
    assert len(errors) == 1
    assert "detector" in errors[0] and "make models" in errors[0]
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # nothing opened before the check


def test_live_video_accepted_and_held_up_photo_refused(
    tmp_path, engine, models_dir, face_video, faces_dir
):
    """Liveness on: the real clip of a live face is paid, a still photo of the next recipient is
    refused as a spoof, and neither decision needs staff to do anything."""
    state, _ = demo.build_pilot(tmp_path / "pilot", engine, with_shared=True)
    demo.video_script(tmp_path / "frames")
    cfg = demo.demo_config(state, tmp_path / "frames", liveness=True, models_dir=str(models_dir))
    run = run_app(cfg)
    assert [str(d.outcome) for d in run.decisions] == ["accepted", "spoof"]
    live, still = run.decisions
    assert live.household_id == demo.VIDEO_HH and live.liveness >= cfg.liveness.threshold
    assert still.household_id == demo.STILL_HH and still.liveness < cfg.liveness.threshold
    assert "spoof" in run.app.signals.history
