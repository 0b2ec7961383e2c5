"""Time the terminal can defend: which time each event is signed with, and why.

A Pi 4 has no battery-backed clock. After a power cut it boots at the time fake-hwclock saved
(behind the last signed event); after a clean shutdown and a three-day outage it boots three
days slow and nothing says so. Payouts must go on at a rural site where NTP may never answer,
so instead of trusting the wall clock or stopping, every event says where its time came from
(``extra.clock`` of the event), under rules an auditor can check (docs/operations.md, "Time"):

``ntp``      timesyncd synchronised the clock in this boot: ``ts`` is the wall clock.
``rtc``      a battery-backed RTC set the clock at boot (``hctosys``) and reads a believable
             time (not before the floor, not before the last trusted time): ``ts`` is the wall
             clock. A flat battery resets the RTC to 1970/2000, which fails these checks.
``central``  a time signed by central (command, bundle) anchored this boot:
             ``ts = anchor_ts + mono_s``, ``mono_s`` counted on the boot clock since.
``mono``     the wall clock moved away from an anchor trusted in this boot (``date -s``, a
             bad step): ``ts = anchor_ts + mono_s`` from that anchor, the wall clock ignored.
``carried``  a new boot with nothing trusted: the anchor is the later of the last trusted time
             and the last signed event, ``ts = anchor_ts + mono_s`` since this boot's first
             stamp. A lower bound of the true time; it never runs backwards.
``wall``     a terminal that has never had a trusted time nor signed anything: the wall clock
             as it is, flagged (the first run after provisioning, or a lab).

Whatever the source, a stamp is never earlier than the last signed event (``held`` is then
true). Payouts stop only when no rule gives a time at all: the clock is before the floor and
nothing was ever trusted or signed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.events import CLOCK_FLOOR, iso_utc

log = logging.getLogger(__name__)

TRUSTED = ("ntp", "rtc")
RTC_DIR = Path("/sys/class/rtc/rtc0")
ANCHOR_REFRESH_S = 600.0  # a trusted anchor is rewritten at most this often (SD card wear)
# systemd-timesyncd touches this file each time it synchronises (timedatectl's NTPSynchronized).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _boottime() -> float:
    """Seconds since boot, counting suspend (what the wall clock should have advanced by)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class ClockReading:
    ok: bool
    now: float
    reason: str  # "ok" or why the clock is not trusted for signing
    synced: bool  # NTP said so during this boot
    last_trusted: float | None
    # the rule that gives the time to sign with (edge/ops/clock.py): ntp, rtc, central, mono,
    # carried, wall; "none" when no rule does
    source: str = "wall"

    @property
    def now_iso(self) -> str:
        return iso_utc(self.now, timespec="seconds")


@dataclass(frozen=True)
class RtcReading:
    """The hardware clock: present, set the system clock at boot, and what it reads now."""

    present: bool
    hctosys: bool = False
    epoch: float | None = None


def read_rtc(root: Path = RTC_DIR) -> RtcReading:
    """/sys/class/rtc/rtc0: ``since_epoch`` fails to read while the RTC has no valid time."""
    if not root.is_dir():
        return RtcReading(False)
    try:
        hctosys = (root / "hctosys").read_text().strip() == "1"
    except OSError:
        hctosys = False
    try:
        epoch: float | None = float((root / "since_epoch").read_text().strip())
    except (OSError, ValueError):
        epoch = None
    return RtcReading(True, hctosys, epoch)


@dataclass(frozen=True)
class Stamp:
    """The time to sign with and the rule that gave it."""

    ts: float
    source: str
    anchor_ts: float
    mono_s: float
    held: bool = False  # raised to the last event's time so the chain never goes backwards

    @property
    def trusted(self) -> bool:
        return self.source in TRUSTED

    def as_event(self) -> dict:
        """What goes into an event (``extra.clock``): enough to re-check ``ts``."""
        note = {
            "source": self.source,
            "anchor_ts": iso_utc(self.anchor_ts),
            "mono_s": round(self.mono_s, 3),
        }
        if self.held:
            note["held"] = True
        return note


class NoTrustedTime(Exception):
    """No rule gives a time: before the floor, and nothing ever trusted or signed."""


class TimeKeeper:
    """Gives each event its time (:meth:`stamp`) and keeps the anchor in ``clock.json``.

    Seams for tests: ``clock`` (wall), ``boottime`` (CLOCK_BOOTTIME), ``boot_id``, ``sync_flag``
    (timesyncd's flag file) and ``rtc`` (a callable returning :class:`RtcReading`).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        max_skew_s: float = 300.0,
        *,
        floor: float = CLOCK_FLOOR,
        clock: Callable[[], float] = time.time,
        boottime: Callable[[], float] | None = None,
        boot_id: Callable[[], str] | None = None,
        sync_flag: Path | None = None,
        rtc: Callable[[], RtcReading] = read_rtc,
    ) -> None:
        self.path = Path(state_dir) / "clock.json"
        self.max_skew_s = max_skew_s
        self.floor = floor
        self._clock = clock
        self._boottime = boottime or _boottime
        self._boot_id = boot_id or _boot_id
        self._sync_flag = sync_flag or TIMESYNC_FLAG
        self._rtc = rtc
        # The last signed event's time (the daemon sets Ledger.last_ts), for check().
        self.last_event: Callable[[], float | None] = lambda: None
        # The newest time central signed that this terminal verified (the installed bundle's
        # issued_at; the daemon sets it): offered at each check, see offer_central.
        self.central_time: Callable[[], float | None] = lambda: None

    # -- the anchor file ----------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def _anchor(self, wall: float, source: str) -> dict:
        return {
            "wall": wall,
            "boottime": self._boottime(),
            "boot_id": self._boot_id(),
            "source": source,
        }

    def trust(self, wall: float | None = None, source: str = "central") -> None:
        """Anchor this boot at ``wall`` (a time signed by central, say); kept across restarts."""
        wall = self._clock() if wall is None else float(wall)
        data = self._load()
        data["anchor"] = self._anchor(wall, source)
        data["trusted"] = {"wall": wall, "source": source}
        self._save(data)
        log.info("clock anchored by %s at %s", source, iso_utc(wall, "seconds"))

    # -- the rules ----------------------------------------------------------------------------

    def _ntp_synced(self) -> bool:
        try:
            # the flag lives on /run (tmpfs): it exists only after a sync in this boot
            return self._sync_flag.stat().st_mtime >= self.floor
        except OSError:
            return False

    def _rtc_believable(self, now: float, last_trusted: float | None) -> bool:
        rtc = self._rtc()
        if not (rtc.present and rtc.hctosys and rtc.epoch is not None):
            return False
        if rtc.epoch < self.floor or abs(now - rtc.epoch) > self.max_skew_s:
            return False  # flat battery (reset to 1970/2000), or the system clock moved since
        return last_trusted is None or rtc.epoch >= last_trusted - self.max_skew_s

    def trusted_source(self, now: float) -> str | None:
        """ "ntp" or "rtc" when the wall clock itself can be trusted now, else None."""
        if now < self.floor:
            return None
        if self._ntp_synced():
            return "ntp"
        last = self._load().get("trusted", {}).get("wall")
        return "rtc" if self._rtc_believable(now, last) else None

    def stamp(self, last_ts: float | None = None, *, save: bool = True) -> Stamp:
        """The time for the next event, never before ``last_ts`` (the last signed event's).

        ``save`` False only looks: no anchor is written (health readings).
        """
        now = self._clock()
        source = self.trusted_source(now)
        if source is not None:
            if save:
                self._remember_trusted(now, source)
            st = Stamp(now, source, now, 0.0)
        else:
            st = self._derived(last_ts, save)
        if last_ts is not None and st.ts < last_ts:
            st = Stamp(last_ts, st.source, st.anchor_ts, st.mono_s, held=True)
        return st

    def _remember_trusted(self, now: float, source: str) -> None:
        data = self._load()
        anchor = data.get("anchor", {})
        fresh = (
            anchor.get("boot_id") == self._boot_id()
            and anchor.get("source") == source
            and now - float(anchor.get("wall", 0)) < ANCHOR_REFRESH_S
        )
        if not fresh:
            data["anchor"] = self._anchor(now, source)
            data["trusted"] = {"wall": now, "source": source}
            self._save(data)

    def _derived(self, last_ts: float | None, save: bool = True) -> Stamp:
        data = self._load()
        anchor = data.get("anchor")
        bt = self._boottime()
        if anchor and anchor.get("boot_id") == self._boot_id():
            mono = bt - float(anchor["boottime"])
            src = anchor.get("source", "carried")
            source = "mono" if src in TRUSTED else src  # central, carried stay as they are
            return Stamp(float(anchor["wall"]) + mono, source, float(anchor["wall"]), mono)
        known = [t for t in (data.get("trusted", {}).get("wall"), last_ts) if t is not None]
        if known:
            base = max(float(t) for t in known)
            if save:
                data["anchor"] = self._anchor(base, "carried")
                self._save(data)
                log.warning("clock not trusted: carrying on from %s", iso_utc(base, "seconds"))
            return Stamp(base, "carried", base, 0.0)
        now = self._clock()
        if now < self.floor:
            raise NoTrustedTime(
                f"clock {iso_utc(max(now, 0), 'seconds')} is before "
                f"{iso_utc(self.floor, 'seconds')} and no time was ever trusted: connect to NTP "
                "once, or fit an RTC"
            )
        return Stamp(now, "wall", now, 0.0)

    def now(self) -> float:
        """The time by these rules, nothing written (e.g. a bundle's validity window); the wall
        clock when no rule applies."""
        try:
            return self.stamp(self.last_event(), save=False).ts
        except NoTrustedTime:
            return self._clock()

    def ledger_stamp(self, last_ts: float | None) -> tuple[float, dict]:
        """For :class:`edge.ledger.store.Ledger`: the time and the ``extra.clock`` note."""
        st = self.stamp(last_ts)
        return st.ts, st.as_event()

    def offer_central(self, issued: float) -> bool:
        """A time signed by central (a verified command's ``issued_at``): anchor on it when the
        wall clock is not trusted and it is later than what the rules give now. Central's time
        is a lower bound (it was signed before it arrived), so it only ever moves time forward.
        """
        last = self.last_event()
        if self.trusted_source(self._clock()) is not None:
            return False
        try:
            current = self.stamp(last, save=False).ts
        except NoTrustedTime:
            current = None
        if current is not None and issued <= current:
            return False
        self.trust(issued, "central")
        return True

    def check(self) -> ClockReading:
        """A :class:`edge.ops.health.ClockReading`: ok while some rule gives a time."""
        central = self.central_time()
        if central is not None:
            self.offer_central(central)
        now = self._clock()
        trusted = self._load().get("trusted", {}).get("wall")
        synced = self._ntp_synced()
        try:
            st = self.stamp(self.last_event(), save=False)
        except NoTrustedTime as exc:
            return ClockReading(False, now, str(exc), synced, trusted, source="none")
        if st.trusted:
            return ClockReading(True, st.ts, "ok", synced, trusted, source=st.source)
        reason = (
            f"{st.source}: not verified, {iso_utc(st.anchor_ts, 'seconds')} + {st.mono_s:.0f} s"
        )
        return ClockReading(True, st.ts, reason, synced, trusted, source=st.source)


def clock_rule_problem(event: dict) -> str | None:
    """What an auditor checks of one event's ``extra.clock`` (None when the rule holds):
    ntp/rtc/wall times are their own anchor; central/mono/carried times are
    ``anchor_ts + mono_s`` (to the millisecond), unless ``held`` at the previous event's time."""
    from edge.events import parse_iso_utc

    note = (event.get("extra") or {}).get("clock")
    if not isinstance(note, dict):
        return "no clock note"
    ts = parse_iso_utc(event["ts"]).timestamp()
    anchor = parse_iso_utc(note["anchor_ts"]).timestamp()
    if note.get("held"):
        return None if ts >= anchor + note["mono_s"] - 0.002 else "held below its own rule"
    if note["source"] in (*TRUSTED, "wall"):
        return None if note["mono_s"] == 0 and abs(ts - anchor) < 0.002 else "anchor is not ts"
    if abs(ts - (anchor + note["mono_s"])) > 0.002:
        return f"ts is not anchor_ts + mono_s ({note['source']})"
    return None
