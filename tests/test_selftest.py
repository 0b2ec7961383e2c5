"""`edge selftest` against the fakes (folder camera, mock pins, file printer) and edge.ops.health."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import FakeClock

from edge.__main__ import main
from edge.config import parse_config
from edge.ops.health import ClockGuard, Health, collect, cpu_temperature, disk_free, throttled
from edge.ops.selftest import FAIL, PASS, SIGNAL_CYCLE, SKIP, WARN, run_selftest

T2026 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def make_cfg(tmp_path: Path, models_dir: Path | str = "/nonexistent", **sections):
    data = {
        "device": {"id": "edge-3171-0042", "regency": "3171", "state_dir": str(tmp_path / "state")},
        "models": {"dir": str(models_dir)},
        "camera": {"kind": "folder"},
        "signals": {"kind": "mock"},
        "printer": {"kind": "file"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


# -- selftest ----------------------------------------------------------------------------------


def test_selftest_passes_on_the_fakes(tmp_path, models_dir, mock_factory, make_identity):
    cfg = make_cfg(tmp_path, models_dir)
    make_identity(cfg.state_path / "keys")
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, camera_timeout=20)
    by_name = {c.name: c for c in report.checks}
    for name in ("models", "camera", "signals", "keys", "ledger", "printer"):
        assert by_name[name].status == PASS, report.render()
    assert "test image" in by_name["camera"].detail and "face found" in by_name["camera"].detail
    assert by_name["ledger"].detail == "0 events verified"
    assert by_name["broker"].status == SKIP  # mqtt off by default
    assert report.ok and report.render().startswith("SELFTEST PASS edge-3171-0042")
    # The red LED pin went on and off during the cycle (fault/spoof/refused are red).
    red = mock_factory.pin(cfg.signals.red_pin)
    assert any(s.state for s in red.states) and not red.state
    # The diagnostic slip reached the file printer with the facts a technician needs.
    slip = (cfg.state_path / "receipts.bin").read_bytes().decode("ascii", "replace")
    model_id = by_name["models"].detail.split()[-1]
    for text in ("device edge-3171-0042", "edge 0.1.0", "model:\n" + model_id, "PASS camera"):
        assert text in slip


def test_missing_parts_fail_clearly_without_crashing(tmp_path, mock_factory):
    # Models absent, no keys: those checks fail with a reason, the rest still run.
    cfg = make_cfg(tmp_path, tmp_path / "no-models")
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=False)
    by_name = {c.name: c for c in report.checks}
    names = [c.name for c in report.checks]
    assert names[:8] == [
        "health", "models", "camera", "signals", "keys", "ledger", "bundle", "broker",
    ]  # fmt: skip
    # then the hardware matrix rows that apply (edge/ops/hardware.py), the printer last
    assert names[8] == "board" and names[-1] == "printer"
    assert by_name["models"].status == FAIL and by_name["models"].detail
    assert by_name["camera"].status == FAIL
    assert "frame(s)" in by_name["camera"].detail  # the camera itself worked
    assert by_name["signals"].status == PASS
    assert by_name["keys"].status == FAIL and "run provisioning" in by_name["keys"].detail
    assert not (cfg.state_path / "keys").exists()  # selftest never makes keys
    assert by_name["ledger"].status == FAIL and by_name["bundle"].status == FAIL
    assert by_name["printer"].status == PASS  # online, slip skipped
    assert not report.ok
    verdict = report.render().splitlines()[0]
    assert verdict.startswith("SELFTEST FAIL edge-3171-0042: models, camera, keys")
    assert len(report.render().splitlines()) == 1 + len(report.checks)


def test_tampered_ledger_fails(tmp_path, mock_factory, make_identity, make_ledger):
    cfg = make_cfg(tmp_path)
    identity = make_identity(cfg.state_path / "keys")
    path = cfg.state_path / "ledger.sqlite"
    with make_ledger(path, identity, cfg.device.id, cfg.device.regency) as ledger:
        for outcome in ("no_face", "no_match", "no_face"):
            ledger.record(outcome)
    conn = sqlite3.connect(path)
    # An attacker with the file drops the append-only triggers first.
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    body = conn.execute("SELECT body FROM events WHERE seq = 2").fetchone()[0]
    conn.execute(
        "UPDATE events SET body = ? WHERE seq = 2", (body.replace("no_match", "accepted"),)
    )
    conn.commit()
    conn.close()
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=False)
    ledger_check = report.get("ledger")
    assert ledger_check.status == FAIL and ledger_check.detail.startswith("3 events")


def test_intact_ledger_and_bundle_warning(tmp_path, mock_factory, make_identity, make_ledger):
    cfg = make_cfg(tmp_path)
    identity = make_identity(cfg.state_path / "keys")
    path = cfg.state_path / "ledger.sqlite"
    with make_ledger(path, identity, cfg.device.id, cfg.device.regency) as ledger:
        ledger.record("no_face")
        ledger.record("bad_qr")
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=False)
    assert report.get("ledger").status == PASS
    assert report.get("ledger").detail == "2 events verified"


def test_camera_without_a_face_fails(tmp_path, mock_factory):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(img).save(frames / f"{i}.png")
    cfg = make_cfg(tmp_path, camera={"source": str(frames)})
    report = run_selftest(
        cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=False, camera_timeout=5
    )
    cam = report.get("camera")
    assert cam.status == FAIL and cam.detail.startswith("folder: 1 frame(s) 320x240")


def test_offline_printer_and_unreachable_broker(tmp_path, mock_factory):
    cfg = make_cfg(
        tmp_path,
        printer={"kind": "serial", "port": str(tmp_path / "no-such-tty")},
        # Port 9 on localhost: nothing listens there, so the connection is refused at once.
        mqtt={"enabled": True, "host": "127.0.0.1", "port": 9, "tls": False},
    )
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=True)
    assert report.get("printer").status == FAIL and "offline" in report.get("printer").detail
    broker = report.get("broker")
    assert broker.status == WARN and "127.0.0.1:9 unreachable" in broker.detail


def test_signal_cycle_shows_every_pattern(tmp_path, mock_factory):
    cfg = make_cfg(tmp_path)
    report = run_selftest(cfg, dwell=0.0, pin_factory=mock_factory, print_receipt=False)
    assert report.get("signals").detail.startswith(f"{len(SIGNAL_CYCLE)} patterns on mock")
    buzzer = mock_factory.pin(cfg.signals.buzzer_pin)
    assert len(buzzer.states) > 1  # the buzzer was driven, not only the LED


def test_cli_exit_code_and_verdict(tmp_path, capsys):
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(
        f'[device]\nid = "edge-3171-0042"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[models]\ndir = "{tmp_path / "none"}"\n[signals]\nkind = "log"\n'
    )
    code = main(["--config", str(cfg_file), "selftest", "--no-print", "--dwell", "0"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0].startswith("SELFTEST FAIL edge-3171-0042")
    assert any(line.split()[:2] == ["PASS", "signals"] for line in out[1:])


# -- health ------------------------------------------------------------------------------------


@pytest.fixture
def boot() -> FakeClock:
    """CLOCK_BOOTTIME: seconds since this boot, which setting the wall clock does not move."""
    return FakeClock(100.0)


def make_guard(
    state: Path, wall: FakeClock, boot: FakeClock, boot_id: str = "boot-a", flag: Path | None = None
) -> ClockGuard:
    """A ClockGuard on fake clocks: ``wall`` is the shared ``clock`` fixture set by the test."""
    return ClockGuard(
        state,
        300.0,
        clock=wall,
        boottime=boot,
        boot_id=lambda: boot_id,
        sync_flag=flag or state / "no-flag",
    )


def test_clock_before_floor_is_refused(tmp_path, clock, boot):
    clock.set(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    reading = make_guard(tmp_path, clock, boot).check()
    assert not reading.ok and "before 2025-01-01" in reading.reason


def test_clock_jump_within_a_boot_is_refused(tmp_path, clock, boot):
    clock.set(T2026)
    guard = make_guard(tmp_path, clock, boot)
    guard.trust()
    clock.advance(3600)  # an hour later, both clocks agree
    boot.advance(3600)
    assert guard.check().ok
    clock.advance(-7200)  # someone sets the clock back two hours
    boot.advance(10)
    reading = guard.check()
    assert not reading.ok and "moved -72" in reading.reason


def test_clock_behind_last_trusted_after_reboot_is_refused(tmp_path, clock, boot):
    clock.set(T2026)
    make_guard(tmp_path, clock, boot).trust()
    # Power cut; the Pi boots days behind (fake-hwclock saved an old time).
    boot.set(20.0)
    clock.set(T2026 - 3 * 86400)
    reading = make_guard(tmp_path, clock, boot, "boot-b").check()
    assert not reading.ok and "before the last trusted time" in reading.reason
    # Later than the last trusted time is fine across a reboot (the device was off a while).
    clock.set(T2026 + 10 * 86400)
    assert make_guard(tmp_path, clock, boot, "boot-b").check().ok


def test_ntp_sync_refreshes_the_trusted_time(tmp_path, clock, boot):
    flag = tmp_path / "synchronized"
    flag.touch()
    clock.set(T2026)
    reading = make_guard(tmp_path, clock, boot, flag=flag).check()
    assert reading.ok and reading.synced
    saved = json.loads((tmp_path / "clock.json").read_text())
    assert saved["wall"] == T2026 and saved["boot_id"] == "boot-a"


def test_disk_and_sensors(tmp_path):
    d = disk_free(tmp_path / "not" / "yet" / "made")
    assert d.total_bytes > 0 and 0 <= d.free_ratio <= 1
    zones = tmp_path / "thermal"
    for i, (kind, milli) in enumerate((("gpu-thermal", "39000"), ("cpu-thermal", "61234"))):
        (zones / f"thermal_zone{i}").mkdir(parents=True)
        (zones / f"thermal_zone{i}" / "type").write_text(kind + "\n")
        (zones / f"thermal_zone{i}" / "temp").write_text(milli + "\n")
    assert cpu_temperature(zones) == pytest.approx(61.234)
    assert cpu_temperature(tmp_path / "none") is None
    (tmp_path / "throttled").write_text("50005\n")
    assert throttled(tmp_path / "throttled") == 0x50005
    assert throttled(tmp_path / "absent") is None


def test_collect_reports_problems(tmp_path, clock, boot):
    cfg = make_cfg(tmp_path)
    clock.set(datetime(2001, 1, 1, tzinfo=UTC).timestamp())
    health = collect(cfg, guard=make_guard(tmp_path, clock, boot))
    assert isinstance(health, Health) and not health.ok
    assert any(p.startswith("clock not trusted") for p in health.problems)
    data = health.as_dict()
    assert data["ok"] is False and data["clock"]["ok"] is False
    assert data["disk"]["free_bytes"] > 0 and data["uptime_s"] > 0
    json.dumps(data)  # the MQTT health message must serialise


def test_health_cli(tmp_path, capsys):
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[device]\nstate_dir = "{tmp_path / "state"}"\n')
    code = main(["--config", str(cfg_file), "health"])
    data = json.loads(capsys.readouterr().out)
    assert code == (0 if data["ok"] else 1)
    assert set(data) >= {"disk", "clock", "cpu_temp_c", "uptime_s"}
    assert data["disk"]["path"] == str(tmp_path / "state")
