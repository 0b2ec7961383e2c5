"""Time the terminal can defend (edge/ops/clock.py), on fake wall and boot clocks.

A Pi 4 has no RTC: after a power cut without network it boots at fake-hwclock's last save,
behind the last signed event; after a clean shutdown and a three-day outage it boots three days
slow. Neither may stop payouts, and neither may pass as a trusted time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import FakeClock

from edge.events import CLOCK_FLOOR, parse_iso_utc
from edge.ops.clock import NoTrustedTime, RtcReading, TimeKeeper, clock_rule_problem
from edge.ops.health import ClockGuard

T = datetime(2026, 12, 1, 7, 0, tzinfo=UTC).timestamp()  # a distribution morning, WIB 14:00
DAY = 86400.0


class Pi:
    """One terminal across boots: a wall clock, a boot clock, a boot id, NTP and RTC states."""

    def __init__(self, state: Path, rtc: RtcReading | None = None) -> None:
        self.state = state
        self.wall = FakeClock(T)
        self.boot = FakeClock(20.0)
        self.boot_n = 0
        self.flag = state / "synchronized"
        self.rtc = rtc or RtcReading(False)
        self.last_ts: float | None = None
        self.stamps = []

    def keeper(self) -> TimeKeeper:
        return TimeKeeper(
            self.state,
            300.0,
            clock=self.wall,
            boottime=self.boot,
            boot_id=lambda: f"boot-{self.boot_n}",
            sync_flag=self.flag,
            rtc=lambda: self.rtc,
        )

    def ntp(self, synced: bool) -> None:
        if synced:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)

    def sign(self, seconds_later: float = 0.0):
        """An event ``seconds_later`` on both clocks: its stamp, kept like the ledger does."""
        self.wall.advance(seconds_later)
        self.boot.advance(seconds_later)
        st = self.keeper().stamp(self.last_ts)
        assert self.last_ts is None or st.ts >= self.last_ts  # never before the last event
        self.last_ts = st.ts
        self.stamps.append(st)
        return st

    def power_cycle(self, off_s: float, wall_at_boot: float) -> None:
        """Power off for ``off_s``; the system clock comes back at ``wall_at_boot``."""
        self.boot_n += 1
        self.boot.set(15.0)  # seconds from power-on to the daemon's first stamp
        self.wall.set(wall_at_boot + 15.0)
        self.flag.unlink(missing_ok=True)  # /run is a tmpfs


@pytest.fixture
def pi(tmp_path) -> Pi:
    return Pi(tmp_path)


def test_power_cut_without_network_keeps_paying_on_carried_time(pi):
    pi.ntp(True)
    first = pi.sign()
    assert (first.source, first.ts) == ("ntp", T)
    pi.ntp(True)
    last = pi.sign(3600)  # an hour of payouts
    # Power cut: fake-hwclock saved at T + 1800 (hourly), so the Pi boots behind the last event.
    pi.power_cycle(off_s=600, wall_at_boot=T + 1800)
    st = pi.sign()
    assert st.source == "carried" and not st.trusted
    assert st.anchor_ts == last.ts and st.ts >= last.ts
    later = pi.sign(120)
    assert later.source == "carried" and later.ts == pytest.approx(last.ts + 120)
    assert later.mono_s == pytest.approx(120)
    reading = pi.keeper().check()
    assert reading.ok and reading.source == "carried" and "not verified" in reading.reason


def test_clean_shutdown_then_three_day_outage_is_not_taken_as_trusted(pi):
    pi.ntp(True)
    pi.sign()
    last = pi.sign(100)
    # Clean shutdown: fake-hwclock saves T+200; three days later the Pi boots at that time.
    pi.power_cycle(off_s=3 * DAY, wall_at_boot=T + 200)
    old = ClockGuard(pi.state / "old", clock=pi.wall, boottime=pi.boot, sync_flag=pi.flag)
    old.trust(T + 100)
    assert old.check().ok  # the fault: the old guard accepted a clock three days slow
    st = pi.sign()
    assert st.source == "carried" and st.anchor_ts == last.ts
    assert "not verified" in pi.keeper().check().reason
    # NTP answers later that day: the true time, trusted again, forward of every carried stamp.
    pi.wall.set(T + 3 * DAY + 5 * 3600)
    pi.ntp(True)
    back = pi.sign()
    assert back.source == "ntp" and back.ts == T + 3 * DAY + 5 * 3600 and back.ts > st.ts


def test_rtc_present_and_set_is_trusted(tmp_path):
    pi = Pi(tmp_path, RtcReading(True, hctosys=True, epoch=T))
    st = pi.sign()
    assert (st.source, st.ts, st.trusted) == ("rtc", T, True)
    pi.power_cycle(off_s=2 * DAY, wall_at_boot=T + 2 * DAY)
    pi.rtc = RtcReading(True, hctosys=True, epoch=T + 2 * DAY + 15)
    assert pi.sign().source == "rtc"


def test_rtc_with_a_flat_battery_is_not_trusted(tmp_path):
    reset = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
    pi = Pi(tmp_path, RtcReading(True, hctosys=True, epoch=T))
    last = pi.sign()
    # The battery died: the RTC (and with hctosys the system clock) restarts at 2000-01-01.
    pi.power_cycle(off_s=DAY, wall_at_boot=reset)
    pi.rtc = RtcReading(True, hctosys=True, epoch=reset + 15)
    st = pi.sign()
    assert st.source == "carried" and st.ts >= last.ts
    # A new terminal with a flat battery that never knew a time: no rule, payouts pause.
    fresh = Pi(tmp_path / "fresh", RtcReading(True, hctosys=True, epoch=reset))
    fresh.wall.set(reset)
    reading = fresh.keeper().check()
    assert not reading.ok and reading.source == "none" and "NTP" in reading.reason
    with pytest.raises(NoTrustedTime):
        fresh.keeper().stamp(None)


def test_clock_set_by_hand_within_a_boot_is_ignored(pi):
    pi.ntp(True)
    anchor = pi.sign()
    pi.ntp(False)  # e.g. timesyncd stopped; then someone sets the date an hour ahead
    pi.wall.advance(3600)
    st = pi.sign(60)
    assert st.source == "mono" and st.anchor_ts == anchor.ts
    assert st.ts == pytest.approx(T + 60)


def test_never_signs_before_the_last_event(pi):
    pi.ntp(True)
    pi.sign()
    pi.last_ts = T + 5  # an event already signed at T+5; NTP now says T+1
    st = pi.sign(1)
    assert st.held and st.ts == T + 5 and st.source == "ntp"


def test_central_time_moves_only_forward(pi):
    pi.wall.set(CLOCK_FLOOR - DAY)  # booted with no idea of the date
    keeper = pi.keeper()
    assert not keeper.check().ok
    assert keeper.offer_central(T)
    assert keeper.check().source == "central"
    assert not keeper.offer_central(T - 3600)  # older than what the rule already gives
    st = pi.sign(30)
    assert st.source == "central" and st.ts == pytest.approx(T + 30)


def test_events_carry_the_rule_and_an_auditor_can_recheck_it(tmp_path, identity, pi):
    from edge.ledger.store import Ledger

    keeper = pi.keeper()
    ledger = Ledger(tmp_path / "l.sqlite", identity, "edge-t", "3171", stamp=keeper.ledger_stamp)
    pi.ntp(True)
    ledger.record("no_face")
    pi.wall.advance(60)
    pi.boot.advance(60)
    ledger.record("no_face")
    pi.power_cycle(off_s=DAY, wall_at_boot=T - 600)  # fake-hwclock, behind
    ledger.record("no_face")
    pi.boot.advance(30)
    ledger.record("no_face")
    events = list(ledger.events())
    ledger.close()
    sources = [e["extra"]["clock"]["source"] for e in events]
    assert sources == ["ntp", "ntp", "carried", "carried"]
    times = [parse_iso_utc(e["ts"]).timestamp() for e in events]
    assert times == sorted(times)
    assert [clock_rule_problem(e) for e in events] == [None] * 4
    forged = {**events[3], "ts": events[2]["ts"]}
    assert clock_rule_problem(forged) is not None


def test_a_verified_bundle_time_anchors_a_terminal_with_no_clock(pi):
    """The installed bundle's issued_at (signed by central) is offered at each check."""
    pi.wall.set(CLOCK_FLOOR - DAY)
    keeper = pi.keeper()
    keeper.central_time = lambda: T - 3600  # issued an hour before the true time
    reading = keeper.check()
    assert reading.ok and reading.source == "central" and reading.now == T - 3600


def test_now_follows_the_rules_without_writing(pi):
    pi.ntp(True)
    pi.sign()
    pi.power_cycle(off_s=DAY, wall_at_boot=T - 7200)  # fake-hwclock, two hours behind
    keeper = pi.keeper()
    keeper.last_event = lambda: pi.last_ts
    before = (pi.state / "clock.json").read_bytes()
    assert keeper.now() == pytest.approx(T)  # carried from the last event, not T - 7200
    assert (pi.state / "clock.json").read_bytes() == before
