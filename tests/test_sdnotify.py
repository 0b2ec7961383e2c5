"""sd_notify against a real AF_UNIX datagram socket, and the daemon speaking it under a fake systemd."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from support import wait_for

from edge.ops import sdnotify

ROOT = Path(__file__).resolve().parent.parent


class FakeSystemd:
    """A notify socket that keeps every datagram it received, in order."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edge-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # sun_path is limited to 108 bytes, so not under pytest's long tmp_path.
            self._dir = tempfile.TemporaryDirectory(prefix="sdn")
            self.address = os.path.join(self._dir.name, "notify")
            self.sock.bind(self.address)
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        msg = data.decode()
        self.messages.append(msg)
        return msg

    def drain(self) -> None:
        """Keep every datagram already queued, without waiting for more."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass

    def first(self, predicate) -> str | None:
        """The first message received so far that satisfies ``predicate``."""
        return next((msg for msg in self.messages if predicate(msg)), None)

    def wait_for(self, predicate, timeout: float, alive=lambda: True) -> str | None:
        """Receive until a message satisfies ``predicate``, the time is up or ``alive()`` fails."""

        def settled() -> bool:
            self.drain()
            return self.first(predicate) is not None or not alive()

        wait_for(settled, timeout)
        self.drain()
        return self.first(predicate)

    def close(self) -> None:
        self.sock.close()
        if hasattr(self, "_dir"):
            self._dir.cleanup()


@pytest.fixture
def fake_systemd(monkeypatch):
    fake = FakeSystemd()
    monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
    yield fake
    fake.close()


def test_nothing_happens_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_helpers_send_the_documented_assignments(fake_systemd):
    assert sdnotify.ready()
    assert sdnotify.status("ready: 12 households\nround R1")
    assert sdnotify.watchdog()
    assert sdnotify.stopping()
    got = [fake_systemd.receive(1.0) for _ in range(4)]
    assert got == ["READY=1", "STATUS=ready: 12 households round R1", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_socket_name(monkeypatch):
    fake = FakeSystemd(abstract=True)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
        assert sdnotify.status("abstract works")
        assert fake.receive(1.0) == "STATUS=abstract works"
    finally:
        fake.close()


def test_unreachable_socket_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sdnotify.watchdog_interval() is None


def test_process_age_from_the_kernel_start_time():
    # Field 22 (start time in ticks after boot) follows a command name holding ") (" and spaces.
    fields = ["S"] + ["0"] * 18 + ["12345"] + ["0"] * 30
    stat = "4242 (edge (run) x) " + " ".join(fields)
    assert sdnotify.process_age_s(stat, boottime=150.0, ticks_per_s=100) == pytest.approx(26.55)
    # The real process: older than this test's own start-up work, and never negative.
    assert sdnotify.process_age_s() > 0.0


def test_process_age_without_proc_is_a_lower_bound():
    assert sdnotify.process_age_s("garbage", boottime=1.0) >= 0.0


def _write_frames(folder: Path, n: int = 4) -> None:
    """A few synthetic frames (no faces needed: the daemon must run and ping regardless)."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        img = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"frame_{i:03d}.png")


@pytest.mark.slow
def test_daemon_notifies_systemd(request, tmp_path):
    """`edge run` under a fake systemd: READY, STATUS, WATCHDOG, then STOPPING on SIGTERM."""
    models_dir = request.getfixturevalue("models_dir")
    frames = tmp_path / "frames"
    _write_frames(frames)
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[device]
state_dir = "{state}"
[models]
dir = "{models_dir}"
[camera]
kind = "folder"
source = "{frames}"
loop = true
fps = 10.0
[signals]
kind = "mock"
[printer]
kind = "file"
[mqtt]
enabled = false
"""
    )
    fake = FakeSystemd(abstract=True)
    env = dict(os.environ, NOTIFY_SOCKET=fake.address, WATCHDOG_USEC="2000000")
    env.pop("WATCHDOG_PID", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(cfg), "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        if not fake.wait_for(lambda m: "READY=1" in m.splitlines(), 90, alive):
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"no READY=1 ({fake.messages}); daemon said:\n{out.decode()[-3000:]}")
        assert fake.wait_for(lambda m: m.startswith("STATUS="), 10), fake.messages
        # WatchdogSec=2 s: pings must come at least once a second or so, more than once.
        assert fake.wait_for(lambda m: "WATCHDOG=1" in m.splitlines(), 5), fake.messages
        n_before = sum("WATCHDOG=1" in m for m in fake.messages)
        time.sleep(2.5)
        while fake.receive(0.05) is not None:
            pass
        assert sum("WATCHDOG=1" in m for m in fake.messages) > n_before, fake.messages
        proc.send_signal(signal.SIGTERM)
        assert fake.wait_for(lambda m: "STOPPING=1" in m.splitlines(), 15), fake.messages
        seen_stopping = time.monotonic() - started
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
        # The ready line counts from the process start, which lies inside what this test saw
        # (the kernel's start time has 10 ms ticks). The line is logged after READY=1 and
        # STATUS= are sent, so only STOPPING=1 is sure to come after it: bounding by the time
        # READY=1 was seen raced the daemon's next few statements.
        said = re.search(rb"ready in ([0-9.]+) s", out)
        assert said, out.decode(errors="replace")[-2000:]
        assert 0.0 < float(said.group(1)) <= seen_stopping + 0.02
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        fake.close()
