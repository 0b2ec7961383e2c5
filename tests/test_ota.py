"""Side-by-side install on a fake root, from real releases built from this repository.

Three releases are built once per session with pip (the wheelhouse holds this project only;
the installed venvs find the dependencies through a .pth to this interpreter's site-packages):
0.1.0 the code as it is, 0.2.0 the same with the version bumped, 0.3.0 whose selftest fails.
"""

from __future__ import annotations

import json
import os
import site
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ota_support import copy_checkout
from support import ROOT

from edge.errors import ReleaseError
from edge.ota.deploy import (
    PAUSED,
    SWITCH,
    FakeService,
    command_selftest,
    file_handshake,
    venv_deploy,
)
from edge.ota.install import Installer, PowerCut, ledger_layout, read_manifest
from edge.ota.release import build_release, generate_release_key, verify_tree

FAILING_SELFTEST = (
    "edge/ops/selftest.py",
    (
        '            ("health", self.check_health),',
        '            ("health", lambda: (FAIL, "deliberately broken release")),',
    ),
)


# 0.2.0 also changes a unit file, which must travel with it (and back on a rollback).
NEW_UNIT = ("systemd/edge.service", ("[Unit]\n", "[Unit]\n# release 0.2.0\n"))


@pytest.fixture(scope="session")
def releases(tmp_path_factory, models_dir):
    """{version: artefact} of three real releases, and the release public key."""
    tmp = tmp_path_factory.mktemp("releases")
    key = tmp / "release.pem"
    pub = generate_release_key(key)
    out = {}
    for version, patches in (
        ("0.1.0", None),
        ("0.2.0", dict([NEW_UNIT])),
        ("0.3.0", dict([FAILING_SELFTEST])),
    ):
        src = copy_checkout(tmp / f"src-{version}", version=version, patches=patches)
        out[version] = build_release(src, key, tmp / "dist", version=version, models_dir=models_dir)
    return out, pub


CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


def real_deploy():
    return venv_deploy(with_pip=False, extra_paths=tuple(site.getsitepackages()))


def quick_deploy(release_dir: Path, manifest: dict) -> None:
    """A stand-in venv (the power-cut tests are about links and the journal, not pip)."""
    (release_dir / "venv" / "bin").mkdir(parents=True)
    (release_dir / "venv" / "bin" / "edge").write_text(manifest["version"])


def passing(_dir: Path) -> tuple[bool, str]:
    return True, "ok"


def failing(_dir: Path) -> tuple[bool, str]:
    return False, "SELFTEST FAIL camera"


@pytest.fixture
def terminal(tmp_path, make_identity):
    """A fake root and state dir, with a config the releases' own selftest can run with."""
    root, state = tmp_path / "opt-edge", tmp_path / "state"
    make_identity(state / "keys")
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""\
        [device]
        id = "edge-3171-0042"
        regency = "3171"
        state_dir = "{state}"
        [models]
        dir = "{root}/current/models"
        [camera]
        kind = "folder"
        [signals]
        kind = "mock"
        [printer]
        kind = "file"
        """)
    )
    return {"root": root, "state": state, "config": config}


def installer(terminal, pub, **kw) -> Installer:
    kw.setdefault("service", FakeService())
    kw.setdefault("selftest", passing)
    kw.setdefault("deploy", quick_deploy)
    return Installer(terminal["root"], terminal["state"], pub, **kw)


def running(terminal) -> str:
    return (terminal["root"] / "current").resolve().name


def states(inst: Installer) -> list[str]:
    return [h["state"] for h in inst.journal()["history"]]


def edge_version(terminal) -> str:
    out = subprocess.run(
        [str(terminal["root"] / "venv" / "bin" / "edge"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=CLEAN_ENV,  # no PYTHONPATH: the release's own code, as under systemd
    )
    return out.stdout.strip()


# -- full update and rollback with the real code -------------------------------------------------


def test_full_update_with_the_new_releases_own_selftest(releases, terminal):
    arts, pub = releases
    first = installer(terminal, pub, deploy=real_deploy())
    assert first.apply(arts["0.1.0"])["state"] == "confirmed"
    assert edge_version(terminal) == "edge 0.1.0"

    service = FakeService()
    selftest = command_selftest(terminal["config"], timeout_s=60)
    inst = installer(terminal, pub, deploy=real_deploy(), service=service, selftest=selftest)
    entry = inst.apply(arts["0.2.0"])
    assert entry["state"] == "confirmed", entry
    assert running(terminal) == "0.2.0"
    assert (terminal["root"] / "previous").resolve().name == "0.2.0"
    # edge.service's ExecStart (<root>/venv/bin/edge) now runs the new code.
    assert edge_version(terminal) == "edge 0.2.0"
    assert service.history == ["stop", "start"]
    assert states(inst)[-6:] == [
        "unpacking",
        "unpacked",
        "switching",
        "switched",
        "testing",
        "confirmed",
    ]
    # Side by side: the old release is still there to go back to.
    assert (terminal["root"] / "releases" / "0.1.0" / "venv").is_dir()
    # ... until the next one confirms: two releases on the card, never more.
    installer(terminal, pub).apply(arts["0.3.0"])
    assert sorted(p.name for p in (terminal["root"] / "releases").iterdir()) == ["0.2.0", "0.3.0"]
    verify_tree(terminal["root"] / "current", read_manifest(terminal["root"] / "current"))


def test_a_failing_selftest_switches_back(releases, terminal):
    arts, pub = releases
    assert installer(terminal, pub, deploy=real_deploy()).apply(arts["0.1.0"])["state"] == (
        "confirmed"
    )
    service = FakeService()
    selftest = command_selftest(terminal["config"], timeout_s=60)
    inst = installer(terminal, pub, deploy=real_deploy(), service=service, selftest=selftest)
    entry = inst.apply(arts["0.3.0"])
    assert entry["state"] == "rolled_back"
    assert entry["error"].startswith("selftest failed: SELFTEST FAIL")
    assert running(terminal) == "0.1.0" and edge_version(terminal) == "edge 0.1.0"
    # The failed release never ran as the daemon: stopped once, the old one started again.
    assert service.history == ["stop", "start"]
    assert states(inst)[-3:] == ["testing", "rolling_back", "rolled_back"]


def test_no_ready_within_the_confirm_time_switches_back(releases, terminal):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    answers = iter([False, True])  # the new one never gets READY, the old one does
    service = FakeService(ready=lambda: next(answers))
    entry = installer(terminal, pub, service=service).apply(arts["0.2.0"])
    assert entry["state"] == "rolled_back" and "READY" in entry["error"]
    assert running(terminal) == "0.1.0"
    assert service.history == ["stop", "start-failed", "start"]


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_artefact_changes_nothing(releases, terminal, tmp_path, damage):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    data = bytearray(arts["0.2.0"].read_bytes())
    if damage == "tampered":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    bad = tmp_path / "bansos-edge-0.2.0.tar"
    bad.write_bytes(bytes(data))
    service = FakeService()
    inst = installer(terminal, pub, service=service)
    with pytest.raises(ReleaseError):
        inst.apply(bad, version="0.2.0")
    assert running(terminal) == "0.1.0" and service.history == []
    assert inst.journal()["state"] == "failed" and inst.journal()["version"] == "0.2.0"
    assert not (terminal["root"] / "releases" / "0.2.0").exists()


def test_downgrade_and_reinstall_are_refused(releases, terminal):
    arts, pub = releases
    inst = installer(terminal, pub)
    inst.apply(arts["0.2.0"])
    for version in ("0.1.0", "0.2.0"):
        with pytest.raises(ReleaseError, match="not newer than the running 0.2.0"):
            inst.apply(arts[version], version=version)
    assert running(terminal) == "0.2.0"


def test_another_release_key_is_refused(releases, terminal, central_pem):
    arts, _pub = releases
    with pytest.raises(ReleaseError, match="signature"):
        installer(terminal, central_pem).apply(arts["0.1.0"])
    assert not (terminal["root"] / "current").exists()


# -- power cuts ------------------------------------------------------------------------------------


class CutAt:
    """A cut hook: records every step, raises PowerCut at step number ``at`` (None: never)."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.seen: list[str] = []

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        if self.at is not None and len(self.seen) - 1 == self.at:
            raise PowerCut(name)


UPDATE_STEPS = [
    "unpacking",
    "extracted",
    "deployed",
    "unpacked",
    "stopped",
    "switching",
    "link-current-made",
    "switched",
    "testing",
    "selftested",
    "link-previous-made",
    "confirmed",
]
ROLLBACK_STEPS = [*UPDATE_STEPS[:10], "rolling_back", "link-current-made", "rolled_back"]


def assert_whole(terminal) -> str:
    """``current`` is a whole, verified release with its venv; its version."""
    current = terminal["root"] / "current"
    assert current.is_dir() and not (current / ".incomplete").exists()
    verify_tree(current, read_manifest(current))
    assert (current / "venv" / "bin" / "edge").is_file()
    assert (terminal["root"] / "venv" / "bin" / "edge").is_file()
    return current.resolve().name


@pytest.mark.parametrize(
    "target, selftest, steps",
    [("0.2.0", passing, UPDATE_STEPS), ("0.3.0", failing, ROLLBACK_STEPS)],
    ids=["update", "rollback"],
)
def test_a_power_cut_at_each_step_leaves_a_working_release(
    releases, tmp_path, make_identity, target, selftest, steps
):
    arts, pub = releases
    whole = CutAt()
    base = {"root": tmp_path / "probe/opt", "state": tmp_path / "probe/state"}
    installer(base, pub).apply(arts["0.1.0"])
    installer(base, pub, cut=whole, selftest=selftest).apply(arts[target])
    assert whole.seen == steps  # the list below covers every step there is

    for at, step in enumerate(steps):
        term = {"root": tmp_path / f"{at}/opt", "state": tmp_path / f"{at}/state"}
        installer(term, pub).apply(arts["0.1.0"])
        with pytest.raises(PowerCut):
            installer(term, pub, cut=CutAt(at), selftest=selftest).apply(arts[target])
        # The machine comes back: edge-recover.service runs before the daemon.
        service = FakeService()
        entry = installer(term, pub, service=service).recover()
        version = assert_whole(term)
        assert entry["state"] in ("confirmed", "rolled_back", "failed"), (step, entry)
        # Only a confirmed update stays; anything cut short runs the release known to work.
        assert version == ("0.2.0" if entry["state"] == "confirmed" else "0.1.0"), step
        assert not list((term["root"] / "releases").glob("*/.incomplete")), step
        # ... and the next attempt goes through.
        if version == "0.1.0":
            again = installer(term, pub).apply(arts["0.2.0"])
            assert again["state"] == "confirmed", (step, again)
            assert assert_whole(term) == "0.2.0"
        # Recovery is idempotent: a second boot changes nothing.
        assert installer(term, pub).recover()["state"] == installer(term, pub).journal()["state"]


def test_the_onfailure_rollback_of_a_confirmed_release_does_nothing(releases, terminal):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    installer(terminal, pub).apply(arts["0.2.0"])
    service = FakeService()
    assert installer(terminal, pub, service=service).recover(start_service=True)["state"] == (
        "confirmed"
    )
    assert running(terminal) == "0.2.0" and service.history == ["start"]


# -- the ledger across a rollback ------------------------------------------------------------------


def test_rollback_refused_when_the_ledger_moved_to_a_layout_the_old_code_lacks(
    releases, terminal, make_ledger
):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    ledger_path = terminal["state"] / "ledger.sqlite"

    def selftest_that_migrates(_dir: Path) -> tuple[bool, str]:
        # The new release opened (and moved forward) the ledger before its check failed.
        make_ledger(ledger_path).close()
        conn = sqlite3.connect(ledger_path)
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'ledger_version'")
        conn.commit()
        conn.close()
        return False, "SELFTEST FAIL printer"

    service = FakeService()
    inst = installer(terminal, pub, service=service, selftest=selftest_that_migrates)
    entry = inst.apply(arts["0.2.0"])
    assert entry["state"] == "rollback_refused"
    assert "ledger layout 3 is newer than 0.1.0 knows (2)" in entry["error"]
    assert running(terminal) == "0.2.0" and service.history == ["stop", "start"]
    assert ledger_layout(ledger_path) == 3


PAYOUT_SCRIPT = """
import json, sys
from edge.keys import DeviceIdentity
from edge.ledger.store import Ledger
state = sys.argv[1]
led = Ledger(state + "/ledger.sqlite", DeviceIdentity.load_or_create(state + "/keys"),
             "edge-3171-0042", "3171")
if sys.argv[2] == "pay":
    led.record("accepted", household_id="KPM-3171-0001-0001", household_ref="ref-0001",
               round_id="2026-12", amount=300000)
print(json.dumps({"paid": led.is_paid("KPM-3171-0001-0001", "2026-12") is not None,
                  "events": led.stats()["events"]}))
led.close()
"""


def run_with(terminal, release: str, action: str) -> dict:
    python = terminal["root"] / "releases" / release / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", PAYOUT_SCRIPT, str(terminal["state"]), action],
        capture_output=True,
        text=True,
        cwd=terminal["root"],
        env=CLEAN_ENV,
    )
    assert out.returncode == 0, out.stderr[-800:]
    return json.loads(out.stdout)


def test_a_rollback_keeps_the_payouts_the_newer_release_recorded(releases, terminal):
    arts, pub = releases
    installer(terminal, pub, deploy=real_deploy()).apply(arts["0.1.0"])

    def selftest_after_a_payout(release_dir: Path) -> tuple[bool, str]:
        # The new release took a payout with its own code, then something else failed.
        assert run_with(terminal, release_dir.name, "pay") == {"paid": True, "events": 1}
        return False, "SELFTEST FAIL camera"

    inst = installer(terminal, pub, deploy=real_deploy(), selftest=selftest_after_a_payout)
    assert inst.apply(arts["0.2.0"])["state"] == "rolled_back"
    assert running(terminal) == "0.1.0"
    # The older code reads the ledger the newer one wrote: the household stays paid.
    assert run_with(terminal, "0.1.0", "read") == {"paid": True, "events": 1}


def test_an_artefact_swapped_during_the_install_is_refused(releases, terminal, tmp_path):
    """The artefact sits in the daemon's folder: what is extracted must be what was verified."""
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    staged = tmp_path / "bansos-edge-0.2.0.tar"
    staged.write_bytes(arts["0.2.0"].read_bytes())

    def swap(step: str) -> None:
        if step == "unpacking":  # after the first check, before the files are written
            staged.write_bytes(arts["0.3.0"].read_bytes())

    service = FakeService()
    with pytest.raises(ReleaseError, match="changed while"):
        installer(terminal, pub, cut=swap, service=service).apply(staged, version="0.2.0")
    assert running(terminal) == "0.1.0" and service.history == []
    installer(terminal, pub).recover()
    assert not (terminal["root"] / "releases" / "0.2.0").exists()


def test_a_failed_venv_build_leaves_the_running_release(releases, terminal):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])

    def broken(release_dir: Path, manifest: dict) -> None:
        raise ReleaseError("install from the wheelhouse failed: no matching distribution")

    service = FakeService()
    inst = installer(terminal, pub, deploy=broken, service=service)
    with pytest.raises(ReleaseError):
        inst.apply(arts["0.2.0"], version="0.2.0")
    assert inst.journal()["state"] == "failed" and "wheelhouse" in inst.journal()["error"]
    assert running(terminal) == "0.1.0" and service.history == []
    inst.recover()
    assert not (terminal["root"] / "releases" / "0.2.0").exists()
    assert installer(terminal, pub).apply(arts["0.2.0"])["state"] == "confirmed"


def test_unit_files_switch_with_the_release_and_back(releases, terminal, tmp_path):
    arts, pub = releases
    units = tmp_path / "etc-systemd-system"
    service = FakeService()
    installer(terminal, pub, unit_dir=units, service=service).apply(arts["0.1.0"])
    assert sorted(p.name for p in units.iterdir()) == [
        "edge-firstboot-led.service",
        "edge-firstboot.service",
        "edge-prune.service",
        "edge-prune.timer",
        "edge-recover.service",
        "edge-rollback.service",
        "edge-update.path",
        "edge-update.service",
        "edge.service",
    ]
    assert "# release 0.2.0" not in (units / "edge.service").read_text()
    service.history.clear()
    entry = installer(terminal, pub, unit_dir=units, service=service, selftest=failing).apply(
        arts["0.2.0"]
    )
    assert entry["state"] == "rolled_back"
    # New units read before the trial, the old ones back before the old release starts.
    assert service.history == ["stop", "reload", "reload", "start"]
    assert "# release 0.2.0" not in (units / "edge.service").read_text()
    installer(terminal, pub, unit_dir=units).apply(arts["0.2.0"])
    assert "# release 0.2.0" in (units / "edge.service").read_text()


# -- a terminal provisioned before releases --------------------------------------------------------


def legacy_terminal(base: Path) -> dict:
    """A root laid out as provisioning made it: a real venv (running this checkout's code) and
    a real models folder, no releases."""
    root = base / "opt"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    site_dir = next((root / "venv" / "lib").glob("python*/site-packages"))
    (site_dir / "zz-test.pth").write_text("\n".join([str(ROOT), *site.getsitepackages()]) + "\n")
    (root / "models").mkdir()
    (root / "models" / "marker").write_text("provisioned models")
    return {"root": root, "state": base / "state"}


def legacy_works(term: dict) -> str:
    out = subprocess.run(
        [
            str(term["root"] / "venv" / "bin" / "python"),
            "-c",
            "import edge; print(edge.__version__)",
        ],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_provisioned_terminal_is_adopted_so_it_can_roll_back(releases, tmp_path):
    arts, pub = releases
    term = legacy_terminal(tmp_path)
    assert legacy_works(term) == "0.1.0"
    inst = installer(term, pub, selftest=failing)
    entry = inst.apply(arts["0.2.0"])
    assert entry["state"] == "rolled_back"
    assert running(term) == "0.1.0+provisioned"
    # The unit's ExecStart and the config's models.dir still name the same paths.
    assert legacy_works(term) == "0.1.0"
    assert (term["root"] / "models" / "marker").read_text() == "provisioned models"
    assert states(inst)[:4] == ["unpacking", "unpacked", "adopting", "confirmed"]
    again = installer(term, pub).apply(arts["0.2.0"])
    assert again["state"] == "confirmed" and running(term) == "0.2.0"
    assert (term["root"] / "models" / "manifest.json").is_file()  # the release's models now


def test_a_power_cut_during_adoption_leaves_the_provisioned_code_running(releases, tmp_path):
    arts, pub = releases
    probe = CutAt()
    installer(legacy_terminal(tmp_path / "probe"), pub, cut=probe).apply(arts["0.2.0"])
    steps = probe.seen[: probe.seen.index("switching")]
    assert steps[steps.index("stopped") + 1 :] == [
        "adopting",
        "moved-venv",
        "moved-models",
        "link-current-made",
        "link-previous-made",
        "link-venv-made",
        "link-models-made",
        "confirmed",
    ]
    for at in range(steps.index("stopped"), len(steps)):
        term = legacy_terminal(tmp_path / str(at))
        with pytest.raises(PowerCut):
            installer(term, pub, cut=CutAt(at)).apply(arts["0.2.0"])
        installer(term, pub).recover()
        assert legacy_works(term) == "0.1.0", steps[at]
        assert (term["root"] / "models" / "marker").is_file(), steps[at]
        # Either still the provisioned layout (cut before the adoption began) or adopted whole.
        if (term["root"] / "current").exists() or steps[at] != "stopped":
            assert running(term) == "0.1.0+provisioned", steps[at]
        assert not list((term["root"] / "releases").glob("*/.incomplete")), steps[at]


def test_no_switch_without_the_daemons_pause(releases, terminal):
    arts, pub = releases
    installer(terminal, pub).apply(arts["0.1.0"])
    service = FakeService()
    inst = installer(terminal, pub, service=service, wait_idle=lambda: False)
    with pytest.raises(ReleaseError, match="did not pause"):
        inst.apply(arts["0.2.0"], version="0.2.0", request="r-1")
    journal = inst.journal()
    assert (journal["state"], journal["request"]) == ("failed", "r-1")
    assert running(terminal) == "0.1.0" and service.history == []


def test_file_handshake_waits_for_the_pause(tmp_path):
    from support import FakeClock

    clock = FakeClock(0.0)
    naps = []

    def sleep(s):
        naps.append(s)
        clock.advance(s)
        if len(naps) == 3:
            (tmp_path / PAUSED).write_text("{}")  # the daemon answers on its third turn

    assert file_handshake(tmp_path, 10, sleep=sleep, clock=clock)()
    assert (tmp_path / SWITCH).exists() and len(naps) == 3
    (tmp_path / PAUSED).unlink()
    assert not file_handshake(tmp_path, 1, sleep=clock.advance, clock=clock)()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root, as the installer has")
def test_the_shared_ota_folder_stays_the_daemons(releases, terminal):
    arts, pub = releases
    terminal["state"].mkdir(parents=True, exist_ok=True)
    os.chown(terminal["state"], 4242, 4243)  # the edge user owns its state dir
    installer(terminal, pub).apply(arts["0.1.0"])  # a technician's install, before any start
    ota = terminal["state"] / "ota"
    assert (ota.stat().st_uid, ota.stat().st_gid) == (4242, 4243)
    assert oct(ota.stat().st_mode & 0o777) == "0o700"
