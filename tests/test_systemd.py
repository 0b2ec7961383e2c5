"""The systemd unit: `systemd-analyze verify`, the security exposure score, and W^X compatibility."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import unavailable

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edge.service"
EXEC_PATH = "/opt/edge/venv/bin/edge"
MAX_EXPOSURE = 3.0


@pytest.fixture
def systemd_analyze() -> str:
    """The systemd-analyze binary: skipped without it, a failure on CI (.ci/run installs it)."""
    found = shutil.which("systemd-analyze")
    if found is None:
        unavailable("systemd-analyze", "apt-get install systemd")
    return found


needs_analyze = pytest.mark.usefixtures("systemd_analyze")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value given to it, across sections (our unit never repeats a key by section)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verify(unit_dir: Path, name: str = "edge.service") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit_dir / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_dir,
    )


def installed_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart pointing at this venv's real `edge`, everything else unchanged.

    On a build machine /opt/edge/venv does not exist and verify rightly says so; pointing the
    copy at an existing executable keeps every other check of verify meaningful.
    """
    edge_bin = Path(sys.executable).parent / "edge"
    assert edge_bin.is_file(), f"{edge_bin} missing: pip install -e . first"
    text = UNIT.read_text()
    assert text.count(EXEC_PATH) == 1
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "edge.service").write_text(text.replace(EXEC_PATH, str(edge_bin)) + extra)
    return unit_dir


@needs_analyze
def test_verify_is_clean(tmp_path):
    res = verify(installed_copy(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


@needs_analyze
def test_verify_of_the_original_only_misses_the_device_binary(tmp_path):
    unit_dir = tmp_path / "orig"
    unit_dir.mkdir()
    shutil.copy(UNIT, unit_dir / "edge.service")
    res = verify(unit_dir)
    complaints = [line for line in res.stderr.splitlines() if line.strip()]
    if Path(EXEC_PATH).exists():  # running on a provisioned device
        assert complaints == []
    else:
        # The wording varies between systemd versions; the subject must not.
        assert complaints and all(EXEC_PATH in line for line in complaints), complaints


@needs_analyze
def test_verify_catches_mistakes(tmp_path):
    # The check has teeth: a typo in a key or a bad value shows up on stderr.
    res = verify(installed_copy(tmp_path, extra="ProtectSystm=strict\n"))
    assert "Unknown key" in res.stderr and "ProtectSystm" in res.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path):
    unit_dir = installed_copy(tmp_path)
    res = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--no-pager",
            str(unit_dir / "edge.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_dir,
    )
    m = re.search(r"Overall exposure level for edge\.service:\s*([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, res.stdout
    # The documented score must be the real one.
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert f"exposure level {score:.1f}" in ops, f"update docs/operations.md: score is {score:.1f}"


def test_unit_has_the_agreed_shape():
    s = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure"
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["ExecStart"] == f"{EXEC_PATH} --config /etc/edge/config.toml run"
    assert one["User"] == "edge"
    assert set(one["SupplementaryGroups"].split()) >= {"gpio", "video", "dialout"}
    assert one["StateDirectory"] == "edge" and one["ConfigurationDirectory"] == "edge"
    assert one["ProtectSystem"] == "strict" and one["ReadWritePaths"] == "/var/lib/edge"
    assert one["NoNewPrivileges"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["DevicePolicy"] == "closed"
    # PrivateDevices would hide the camera, the GPIO chips and the UART.
    assert "PrivateDevices" not in s
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    for dev in (
        "char-video4linux",
        "char-media",
        "char-dma_heap",
        "char-gpiochip",
        "/dev/gpiomem",
        "/dev/serial0",
        "/dev/ttyAMA0",
        "/dev/ttyS0",
        "char-ttyUSB",
    ):
        assert dev in allowed
    assert set(one["RestrictAddressFamilies"].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert one["CapabilityBoundingSet"] == ""
    assert "@system-service" in s["SystemCallFilter"]


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, json, mmap, sys
    from pathlib import Path
    import numpy as np
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): the kernel's form of
    # MemoryDenyWriteExecute=yes, available since Linux 6.3.
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        print("UNSUPPORTED"); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("NOT ENFORCED"); sys.exit(0)
    except OSError:
        pass
    import cv2, cryptography.hazmat.primitives.asymmetric.ed25519 as ed
    from edge.vision.runtime import make_interpreter
    models = Path(sys.argv[1])
    manifest = json.loads((models / "manifest.json").read_text())["models"]
    for name in ("detector", "embedder_int8", "embedder_dynamic"):
        interp = make_interpreter((models / manifest[name]["file"]).read_bytes(), threads=2)
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
        interp.invoke()
    ed.Ed25519PrivateKey.generate().sign(b"probe")
    cv2.QRCodeDetector().detectAndDecode(np.zeros((120, 160, 3), np.uint8))
    print("OK")
    """
)


@pytest.mark.slow
def test_models_run_without_writable_executable_memory(models_dir):
    """MemoryDenyWriteExecute=yes is safe: LiteRT/XNNPACK inference works under W^X."""
    res = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE, str(models_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    verdict = res.stdout.strip().splitlines()[-1]
    if verdict == "UNSUPPORTED":
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert verdict == "OK", res.stdout + res.stderr


PT_GNU_STACK, PF_X = 0x6474E551, 0x1


def executable_stack(path: Path) -> bool:
    """Whether an ELF file asks for an executable stack (PT_GNU_STACK with PF_X), as
    ``readelf -l`` shows it. Read here so the check needs no binutils (.ci/run has none)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = f.read(48 if wide else 36)  # the rest of the ELF header
        if wide:
            (phoff,) = struct.unpack_from(order + "Q", header, 16)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 38)
        else:
            (phoff,) = struct.unpack_from(order + "I", header, 12)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 26)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            entry = f.read(phentsize)
            if struct.unpack_from(order + "I", entry, 0)[0] == PT_GNU_STACK:
                (flags,) = struct.unpack_from(order + "I", entry, 4 if wide else 24)
                return bool(flags & PF_X)
    return False


def test_the_stack_check_sees_an_executable_stack(tmp_path):
    """The reader is right on a real library and on one patched to ask for an executable
    stack, so the check below can fail."""
    import cv2

    lib = min(Path(cv2.__file__).parent.rglob("*.so*"), key=lambda p: p.stat().st_size)
    assert not executable_stack(lib)
    data = bytearray(lib.read_bytes())
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(order + ("Q" if wide else "I"), data, 32 if wide else 28)[0]
    phentsize, phnum = struct.unpack_from(order + "HH", data, 54 if wide else 42)
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from(order + "I", data, at)[0] == PT_GNU_STACK:
            flags_at = at + (4 if wide else 24)
            struct.pack_into(order + "I", data, flags_at, PF_X | 0x4 | 0x2)  # RWE
    patched = tmp_path / "patched.so"
    patched.write_bytes(bytes(data))
    assert executable_stack(patched)
    assert not executable_stack(UNIT)  # not an ELF file at all


def test_no_bundled_library_needs_an_executable_stack():
    """An executable-stack library would need mprotect(PROT_EXEC), which the filter refuses."""
    import ai_edge_litert
    import cv2

    offenders = [
        lib.name
        for pkg in (ai_edge_litert, cv2)
        for lib in Path(pkg.__file__).parent.rglob("*.so*")
        if executable_stack(lib)
    ]
    assert offenders == []


FIRSTBOOT_DONE = "/var/lib/edge-firstboot/all.done"
FIRSTBOOT_ARGS = "/opt/edge/provisioning/firstboot.json"


def test_the_daemon_waits_for_first_boot():
    s = unit_settings(UNIT.read_text())
    assert "edge-firstboot.service" in " ".join(s["After"]).split()
    assert sorted(s["ConditionPathExists"]) == sorted([f"|{FIRSTBOOT_DONE}", f"|!{FIRSTBOOT_ARGS}"])
    # The first-boot unit's own condition names the same marker firstboot.py writes.
    firstboot = unit_settings((ROOT / "systemd" / "edge-firstboot.service").read_text())
    assert firstboot["ConditionPathExists"] == [f"!{FIRSTBOOT_DONE}"]


@needs_analyze
@pytest.mark.parametrize(
    ("files", "starts"),
    [
        ((FIRSTBOOT_ARGS,), False),  # a card whose first boot failed or has not run
        ((FIRSTBOOT_ARGS, FIRSTBOOT_DONE), True),  # first boot completed
        ((), True),  # provisioned on the Pi itself: no first boot at all
    ],
)
def test_the_daemon_does_not_start_before_first_boot_completed(tmp_path, files, starts):
    """The unit's own conditions, evaluated by systemd on a copy of the paths under tmp_path
    (systemd-analyze condition reads the real root, so the paths are moved, not the root)."""
    for rel in files:
        (tmp_path / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel.lstrip("/")).write_text("")
    conditions = [
        "ConditionPathExists=" + re.sub(r"(\|!?)/", rf"\g<1>{tmp_path}/", value)
        for value in unit_settings(UNIT.read_text())["ConditionPathExists"]
    ]
    run = subprocess.run(
        ["systemd-analyze", "condition", *conditions], capture_output=True, text=True, timeout=30
    )
    assert (run.returncode == 0) is starts, run.stdout + run.stderr
