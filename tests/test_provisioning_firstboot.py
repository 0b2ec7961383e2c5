"""provisioning/firstboot.py on a card laid out by `provision --root`: the steps, markers that
survive a power cut half way, failure in the journal, the wheelhouse on the card or a stick."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_provisioning import kit, provision  # noqa: F401  (kit is a fixture)
from test_provisioning_images import fake_wheelhouse, image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import firstboot  # noqa: E402


class PowerCut(BaseException):
    """The power goes: nothing after this point of the step happens."""


class Recorder:
    """Runs nothing; keeps every command, and cuts the power at the first one containing
    ``cut_at`` (once)."""

    def __init__(self, cut_at: str | None = None, fail_at: str | None = None) -> None:
        self.commands: list[str] = []
        self.cut_at, self.fail_at = cut_at, fail_at

    def __call__(self, cmd) -> None:
        line = " ".join(map(str, cmd))
        self.commands.append(line)
        if self.cut_at and self.cut_at in line:
            self.cut_at = None
            raise PowerCut(line)
        if self.fail_at and self.fail_at in line:
            raise subprocess.CalledProcessError(1, list(cmd))


@pytest.fixture
def card(tmp_path, kit):  # noqa: F811
    _, rootfs = image(tmp_path, "bookworm")
    wh = fake_wheelhouse(tmp_path / "wh")
    res = provision(
        tmp_path, kit, "--model", "pi4", "--printer-port", "uart", "--wheelhouse", str(wh)
    )
    assert res.returncode == 0, res.stderr
    return rootfs


def steps_run(rec: Recorder) -> list[str]:
    kinds = {
        "systemd-sysusers": "user",
        "-m venv": "venv",
        "--require-hashes": "packages",
        "provision.py": "terminal",
        "systemctl enable": "enable",
    }
    return [k for line in rec.commands for key, k in kinds.items() if key in line]


def test_first_boot_runs_every_step_in_order(card):
    rec = Recorder()
    ran = firstboot.FirstBoot(card, rec).run_all()
    assert ran == list(firstboot.STEPS)
    assert steps_run(rec) == ["user", "venv", "packages", "terminal", "enable"]
    pip = [c for c in rec.commands if " -m pip install " in c]
    wh = card / "opt/edge/wheelhouse"
    assert all("--no-index" in c and f"--find-links {wh}" in c for c in pip)
    assert pip[1].endswith(str(wh / "bansos_edge-0.1.0-py3-none-any.whl"))
    provision_cmd = next(c for c in rec.commands if "provision.py" in c)
    assert "--device-id edge-3171-0007" in provision_cmd and "--no-system" in provision_cmd
    assert "--model pi4" in provision_cmd and "--printer-port uart" in provision_cmd
    assert rec.commands[-1] == "systemctl start --no-block edge.service"
    assert (card / "var/lib/edge-firstboot/all.done").is_file()
    # The unit's condition now keeps it from running again; run anyway, nothing happens.
    again = Recorder()
    assert firstboot.FirstBoot(card, again).run_all() == [] and again.commands == []


def test_power_cut_half_way_resumes_at_the_interrupted_step(card):
    first = Recorder(cut_at="--require-hashes")
    with pytest.raises(PowerCut):
        firstboot.FirstBoot(card, first).run_all()
    assert steps_run(first) == ["user", "venv", "packages"]
    assert not (card / "var/lib/edge-firstboot/packages.done").exists()
    # A half-made venv from a cut during its step is made again from scratch.
    (card / "opt/edge/venv/bin").mkdir(parents=True)
    second = Recorder()
    ran = firstboot.FirstBoot(card, second).run_all()
    assert ran == ["packages", "terminal", "enable"]
    assert steps_run(second) == ["packages", "terminal", "enable"]


def test_cut_during_venv_removes_the_half_made_venv(card):
    with pytest.raises(PowerCut):
        firstboot.FirstBoot(card, Recorder(cut_at="-m venv")).run_all()
    half = card / "opt/edge/venv/bin"
    half.mkdir(parents=True)
    (half / "python").write_text("half written")
    rec = Recorder()
    firstboot.FirstBoot(card, rec).run_all()
    assert steps_run(rec)[0] == "venv" and not (half / "python").exists()


def test_failure_goes_to_the_journal_and_fails_the_unit(card, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_FIRSTBOOT_ROOT", str(card))
    rc = firstboot.main([], runner=Recorder(fail_at="--require-hashes"))
    assert rc == 1
    err = capsys.readouterr().err
    # <3> is priority err for journald (SyslogLevelPrefix=yes); OnFailure= then blinks the LED
    assert "<3>edge-firstboot: failed:" in err and "systemctl start edge-firstboot" in err
    assert (card / "var/lib/edge-firstboot/venv.done").is_file()
    assert not (card / "var/lib/edge-firstboot/all.done").exists()


def test_wheelhouse_from_a_usb_stick_labelled_bansos(card):
    import shutil

    stick = card / "stick-content"
    shutil.move(card / "opt/edge/wheelhouse", stick / "bansos-wheelhouse")
    (card / "dev/disk/by-label").mkdir(parents=True)
    (card / "dev/disk/by-label/BANSOS").write_text("")
    mount_point = card / "run/edge-firstboot/usb"

    class Mounter(Recorder):
        def __call__(self, cmd) -> None:
            super().__call__(cmd)
            if cmd[0] == "mount":  # what mount would show: the stick's folders
                shutil.copytree(stick, mount_point, dirs_exist_ok=True)

    rec = Mounter()
    firstboot.FirstBoot(card, rec).run_all()
    assert f"mount -o ro {card}/dev/disk/by-label/BANSOS {mount_point}" in rec.commands
    pip = [c for c in rec.commands if "--no-index" in c]
    assert pip and all(str(mount_point / "bansos-wheelhouse") in c for c in pip)


def test_no_wheelhouse_anywhere_is_a_clear_failure(card, monkeypatch, capsys):
    import shutil

    shutil.rmtree(card / "opt/edge/wheelhouse")
    monkeypatch.setenv("EDGE_FIRSTBOOT_ROOT", str(card))
    assert firstboot.main([], runner=Recorder()) == 1
    assert "no wheelhouse" in capsys.readouterr().err


def test_firstboot_units_verify(tmp_path):
    import shutil

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        from support import unavailable

        unavailable("systemd-analyze", "apt-get install systemd")
    for unit in ("edge-firstboot.service", "edge-firstboot-led.service"):
        shutil.copy(ROOT / "systemd" / unit, tmp_path / unit)
    res = subprocess.run(
        [analyze, "verify", str(tmp_path / "edge-firstboot.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = (ROOT / "systemd/edge-firstboot.service").read_text()
    assert "ConditionPathExists=!/var/lib/edge-firstboot/all.done" in text
    assert "OnFailure=edge-firstboot-led.service" in text and "Before=edge.service" in text
