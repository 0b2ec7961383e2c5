"""Health readings of the terminal: free disk, clock sanity, CPU temperature, power, uptime.

Used by the periodic MQTT health report, `edge health` and `edge selftest`. Every reading works
off a Pi too (absent sensors read as None), so the same code runs in CI.

The clock matters more than it looks: every payout carries a signed timestamp, and a Pi has no
battery-backed clock. After a power cut it boots at the time fake-hwclock saved, which can be
days behind, until NTP answers. :class:`ClockGuard` refuses signing when the clock is before a
floor date or has moved away from the last time we had reason to trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from edge.events import CLOCK_FLOOR, iso_utc
from edge.ops.clock import TIMESYNC_FLAG, ClockReading, TimeKeeper, _boot_id, _boottime

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 256 * 1024 * 1024
MIN_FREE_RATIO = 0.05
MAX_CPU_TEMP_C = 80.0  # the Pi 4 firmware starts throttling at 80-85 °C
THERMAL_ROOT = Path("/sys/class/thermal")
THROTTLED_FILE = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


def _iso(ts: float) -> str:
    # Whole seconds: these readings and refusals are read by people.
    return iso_utc(ts, timespec="seconds")


@dataclass(frozen=True)
class DiskReading:
    path: str
    free_bytes: int
    total_bytes: int
    ok: bool

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def disk_free(path: str | os.PathLike[str]) -> DiskReading:
    """Free space of the file system holding ``path`` (the nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    usage = shutil.disk_usage(p)
    ok = usage.free >= MIN_FREE_BYTES and usage.free >= MIN_FREE_RATIO * usage.total
    return DiskReading(str(path), usage.free, usage.total, ok)


class ClockGuard:
    """Decides whether the wall clock may be used to sign events.

    The guard keeps, in ``state_dir/clock.json``, the last wall time it trusted together with
    the boot id and the time since boot at that moment. Within the same boot the wall clock must
    have advanced like the boot clock (within ``max_skew_s``); across a reboot it must not be
    earlier than that last trusted time. A trusted time comes from NTP (timesyncd's flag file)
    or from :meth:`trust` (e.g. a signed timestamp from central).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        max_skew_s: float = 300.0,
        *,
        floor: float = CLOCK_FLOOR,
        clock=time.time,
        boottime=_boottime,
        boot_id=_boot_id,
        sync_flag: Path = TIMESYNC_FLAG,
    ) -> None:
        self.path = Path(state_dir) / "clock.json"
        self.max_skew_s = max_skew_s
        self.floor = floor
        self._clock = clock
        self._boottime = boottime
        self._boot_id = boot_id
        self._sync_flag = sync_flag

    def _load(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data.get("wall"), int | float) else None
        except (OSError, ValueError, AttributeError):
            return None

    def trust(self, wall: float | None = None) -> None:
        """Record ``wall`` (default: now) as a trusted time, e.g. after NTP or a signed timestamp."""
        wall = self._clock() if wall is None else wall
        record = {"wall": wall, "boot_id": self._boot_id(), "boottime": self._boottime()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def _synced_this_boot(self) -> bool:
        try:
            flag_mtime = self._sync_flag.stat().st_mtime
        except OSError:
            return False
        # The flag lives on /run (tmpfs), so it only exists after a sync in this boot.
        return flag_mtime >= self.floor

    def check(self) -> ClockReading:
        """Read the clock and say whether signing with it is allowed (and why not)."""
        now = self._clock()
        synced = self._synced_this_boot()
        if now < self.floor:
            return ClockReading(
                False, now, f"clock {_iso(now)} is before {_iso(self.floor)}", synced, None
            )
        last = self._load()
        if synced:
            # NTP vouches for the present: adopt it as the new reference (not on every call:
            # the state directory is on an SD card).
            if last is None or last.get("boot_id") != self._boot_id() or now - last["wall"] > 600:
                self.trust(now)
            return ClockReading(True, now, "ok", True, now)
        if last is None:
            return ClockReading(True, now, "ok", False, None)
        last_wall = float(last["wall"])
        if last.get("boot_id") == self._boot_id() and isinstance(last.get("boottime"), int | float):
            expected = last_wall + (self._boottime() - float(last["boottime"]))
            drift = now - expected
            if abs(drift) > self.max_skew_s:
                return ClockReading(
                    False,
                    now,
                    f"clock moved {drift:+.0f} s since it was last trusted",
                    False,
                    last_wall,
                )
        elif now < last_wall - self.max_skew_s:
            return ClockReading(
                False,
                now,
                f"clock {_iso(now)} is before the last trusted time {_iso(last_wall)}",
                False,
                last_wall,
            )
        return ClockReading(True, now, "ok", False, last_wall)


def cpu_temperature(root: Path = THERMAL_ROOT) -> float | None:
    """CPU temperature in °C from the kernel's thermal zones; None where there are none."""
    zones = sorted(root.glob("thermal_zone*"))
    # Prefer the zone the Pi calls cpu-thermal; otherwise the first that reads.
    zones.sort(key=lambda z: _read(z / "type") not in ("cpu-thermal", "x86_pkg_temp"))
    for zone in zones:
        raw = _read(zone / "temp")
        if raw is None:
            continue
        try:
            return int(raw) / 1000.0
        except ValueError:
            continue
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def throttled(path: Path = THROTTLED_FILE) -> int | None:
    """The Pi firmware's throttle bits (bit 0 under-voltage now, bit 16 since boot); None off a Pi."""
    raw = _read(path)
    try:
        return int(raw, 16) if raw is not None else None
    except ValueError:
        return None


def uptime_s() -> float:
    """Seconds since the system booted."""
    return _boottime()


_PROCESS_START = time.monotonic()


@dataclass
class Health:
    """One set of readings; ``problems`` says in words what is wrong (empty when healthy)."""

    disk: DiskReading
    clock: ClockReading
    cpu_temp_c: float | None
    throttled: int | None
    uptime_s: float
    process_uptime_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        """Plain data for the MQTT health message and `edge health`."""
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "disk": {**asdict(self.disk), "free_ratio": round(self.disk.free_ratio, 4)},
            "clock": {
                "ok": self.clock.ok,
                "utc": self.clock.now_iso,
                "reason": self.clock.reason,
                "ntp_synced": self.clock.synced,
                "last_trusted": _iso(self.clock.last_trusted) if self.clock.last_trusted else None,
                "source": self.clock.source,
            },
            "cpu_temp_c": self.cpu_temp_c,
            "throttled": self.throttled,
            "uptime_s": round(self.uptime_s, 1),
            "process_uptime_s": round(self.process_uptime_s, 1),
        }


def collect(cfg, guard: ClockCheck | None = None) -> Health:
    """Take every reading for the terminal configured by ``cfg`` (an ``edge.config.Config``)."""
    state = Path(cfg.device.state_dir)
    guard = guard or TimeKeeper(state, cfg.device.max_clock_skew_s)
    disk = disk_free(state)
    clock = guard.check()
    temp = cpu_temperature()
    thr = throttled()
    problems = []
    if not disk.ok:
        problems.append(f"low disk: {disk.free_bytes // (1024 * 1024)} MB free")
    if not clock.ok:
        problems.append(f"clock not trusted: {clock.reason}")
    if temp is not None and temp >= MAX_CPU_TEMP_C:
        problems.append(f"CPU hot: {temp:.0f} °C")
    if thr is not None and thr & 0x1:
        problems.append("under-voltage: check the power supply")
    for p in problems:
        log.warning("health: %s", p)
    return Health(disk, clock, temp, thr, uptime_s(), time.monotonic() - _PROCESS_START, problems)


class ClockCheck(Protocol):
    """Says whether the wall clock may sign events now (:class:`ClockGuard`)."""

    def check(self) -> ClockReading: ...


class Pausable(Protocol):
    """Something that stops taking claims while paused (the payout flow)."""

    @property
    def busy(self) -> bool:
        """A capture is running."""
        ...

    def pause(self, reason: str | None) -> None:
        """Pause for ``reason``, or resume with None."""
        ...


class ClockPause:
    """The daemon's clock policy: payouts pause while the wall clock cannot be trusted for
    signing (see :class:`ClockGuard`), and resume once it can.

    ``guard`` is a :class:`ClockGuard`, ``flow`` the payout flow. The clock is read only between captures:
    a recipient already in front of the camera is decided on the clock that took the claim,
    and a check that waits for the capture to end costs at most one capture window.
    """

    def __init__(self, guard: ClockCheck, flow: Pausable) -> None:
        self.guard = guard
        self._flow = flow
        self.reason: str | None = None

    def check(self) -> ClockReading | None:
        """Read the clock and pause or resume the flow on a change; None while it is busy."""
        if self._flow.busy:
            return None
        reading = self.guard.check()
        reason = None if reading.ok else reading.reason
        if reason != self.reason:
            if reason:
                log.error("clock not trusted, payouts paused: %s", reason)
            else:
                log.info("clock trusted again, payouts resumed")
            self.reason = reason
            self._flow.pause(reason)
        return reading
