"""Issue 12, point 3: one signed command must not switch verification off, nor run twice.

Reproduces the review's attacks against the real CommandProcessor, the daemon's own config
action, a real ledger and a real ClockGuard: thresholds set to -1 and 0, liveness switched
off, a threshold moved outside the range central signed or below the calibrated value, a
command replayed after the clock went 30 days ahead and back, commands while the clock is
not trusted. Every applied change must be a signed, reported ledger event.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from support import T0

from edge.config import Config
from edge.events import CLOCK_FLOOR, check_event
from edge.ledger.audit import audit_ledger
from edge.mqtt.actions import terminal_actions
from edge.mqtt.commands import sign_command
from edge.mqtt.counter import CommandCounter
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.schemas import errors
from edge.ops.clock import RtcReading, TimeKeeper

DEVICE = "edge-test-0001"
TOPIC = f"bansos/v1/3171/{DEVICE}/cmd/"
DAY = 86400.0
LIMITS = {"vision.match_threshold": (0.5, 0.8), "liveness.threshold": (0.45, 0.9)}


class FakeBundles:
    """The bundle store as the config action sees it: the installed bundle and its limits."""

    def __init__(self, limits: dict | None) -> None:
        self.bundle = None if limits is None else SimpleNamespace(limits=limits)

    def current(self):
        return self.bundle


class FakeDesk:
    def reprint(self, event_id: str) -> bool:
        return True


@pytest.fixture
def terminal(tmp_path, central_pem, make_ledger, clock):
    """The daemon's command path: config action + ledger + counter state + clock guard."""
    cfg = Config()
    ledger = make_ledger()
    # The daemon's clock; NTP is switched on and off through timesyncd's flag file.
    flag = tmp_path / "ntp-synchronized"
    guard = TimeKeeper(
        tmp_path / "state",
        300.0,
        clock=clock,
        boottime=lambda: 1000.0,  # the boot clock stands still: wall-clock jumps show
        boot_id=lambda: "boot-1",
        sync_flag=flag,
        rtc=lambda: RtcReading(False),
    )

    def ntp(synced: bool) -> None:
        if synced:
            flag.touch()
            guard.stamp()  # anchors on the synchronised time, as signing an event does
        else:
            flag.unlink(missing_ok=True)

    ntp(True)

    def make(limits=LIMITS, path=tmp_path / "commands.sqlite", guarded=True):
        actions = terminal_actions(cfg, FakeBundles(limits), FakeDesk(), ledger)
        return CommandProcessor(
            central_pem, DEVICE, path, actions, clock=clock, clock_guard=guard if guarded else None
        )

    proc = make()
    yield SimpleNamespace(
        cfg=cfg, ledger=ledger, proc=proc, clock=clock, guard=guard, ntp=ntp, make=make
    )
    proc.close()


def config(central_key, clock, changes: dict, **kw) -> bytes:
    kw.setdefault("issued_at", clock.t - 10)
    return sign_command(central_key, DEVICE, "config", {"set": changes}, **kw)


def send(t, payload: bytes, name: str = "config") -> dict:
    result = t.proc.handle(TOPIC + name, payload)
    assert errors("command_result", result) == []
    return result


def config_events(ledger) -> list[dict]:
    return [e for e in ledger.events() if e["kind"] == "config"]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"vision.match_threshold": -1}, "would switch verification off"),
        ({"liveness.threshold": 0}, "would switch verification off"),
        ({"liveness.threshold": 0.0}, "would switch verification off"),
        ({"liveness.enabled": False}, "liveness cannot be switched off remotely"),
        ({"vision.match_threshold": 0.95}, "outside the range central signed (0.5..0.8)"),
        ({"vision.match_threshold": 0.52}, "below the calibrated 0.5412"),
        ({"liveness.threshold": 0.46}, "below the calibrated 0.5"),
        ({"vision.duplicate_threshold": 0.65}, "no range signed by central"),
        ({"vision.match_threshold": True}, "must be a finite number"),
        ({"flow.cooldown_s": 3600}, "outside 0..60"),
        ({"mqtt.health_interval_s": 0.01}, "outside 5..3600"),
        ({"flow.cooldown_s": 2, "liveness.threshold": 0}, "would switch verification off"),
    ],
)
def test_a_signed_command_cannot_loosen_verification(terminal, central_key, changes, reason):
    before = terminal.cfg.model_dump()
    result = send(terminal, config(central_key, terminal.clock, changes))
    assert result["status"] == "refused" and reason in result["error"], result["error"]
    assert terminal.cfg.model_dump() == before  # all or nothing
    assert config_events(terminal.ledger) == []


def test_thresholds_move_only_with_a_signed_range(tmp_path, terminal, central_key):
    no_limits = terminal.make(limits=None, path=tmp_path / "other.sqlite")
    try:
        result = no_limits.handle(
            TOPIC + "config", config(central_key, terminal.clock, {"vision.match_threshold": 0.7})
        )
    finally:
        no_limits.close()
    assert result["status"] == "refused" and "no range signed by central" in result["error"]
    assert terminal.cfg.vision.match_threshold == Config().vision.match_threshold


def test_an_applied_change_is_a_signed_reported_ledger_event(terminal, central_key, identity):
    payload = config(
        central_key, terminal.clock, {"vision.match_threshold": 0.7, "flow.cooldown_s": 2}
    )
    result = send(terminal, payload)
    assert result["status"] == "applied", result
    assert terminal.cfg.vision.match_threshold == 0.7 and terminal.cfg.flow.cooldown_s == 2
    [event] = config_events(terminal.ledger)
    sent = json.loads(payload)
    assert event["outcome"] is None and event["extra"] == {
        "changed": {"vision.match_threshold": [0.5412, 0.7], "flow.cooldown_s": [5.0, 2]},
        "command_id": sent["id"],
        "counter": sent["counter"],
    }
    assert errors("event", event) == [] and check_event(event, identity.device_public_pem()) is None
    # Reported like every event: it waits in the outbox for the broker.
    assert [item.event_id for item in terminal.ledger.outbox()] == [event["event_id"]]
    report = audit_ledger(terminal.ledger.path, identity.device_public_pem())
    assert report.ok and report.outcomes == {"config": 1}
    # Back down to the calibrated value is allowed: stricter and back, never laxer.
    assert send(terminal, config(central_key, terminal.clock, {"vision.match_threshold": 0.5412}))[
        "ok"
    ]


def test_nothing_changes_when_the_ledger_cannot_sign_the_change(tmp_path, terminal, central_key):
    # Without the clock guard, the ledger is the last line: it refuses to sign before the floor.
    unguarded = terminal.make(path=tmp_path / "unguarded.sqlite", guarded=False)
    terminal.clock.set(CLOCK_FLOOR - DAY)
    try:
        result = unguarded.handle(
            TOPIC + "config", config(central_key, terminal.clock, {"vision.match_threshold": 0.7})
        )
    finally:
        unguarded.close()
    assert result["status"] == "failed" and "refusing to sign" in result["error"]
    assert terminal.cfg.vision.match_threshold == Config().vision.match_threshold
    assert config_events(terminal.ledger) == []


def test_a_command_replayed_after_the_clock_went_30_days_ahead_and_back_is_refused(
    terminal, central_key
):
    """The review's replay: ids used to be purged by the device clock, so it ran twice."""
    clock = terminal.clock
    first = config(central_key, clock, {"flow.cooldown_s": 7})
    assert send(terminal, first)["status"] == "applied"
    clock.advance(30 * DAY)
    terminal.ntp(True)  # e.g. NTP vouched for the jump: commands are accepted again
    later = config(central_key, clock, {"flow.cooldown_s": 9})
    assert send(terminal, later)["status"] == "applied"
    clock.advance(-30 * DAY)
    terminal.ntp(True)
    again = send(terminal, first)
    assert again["status"] == "refused" and again["error"] == "replayed command"
    assert terminal.cfg.flow.cooldown_s == 9
    # Also across a restart: the highest counter is on disk.
    terminal.proc.close()
    terminal.proc = terminal.make()
    assert send(terminal, later)["error"] == "replayed command"
    assert len(config_events(terminal.ledger)) == 2


def test_an_older_counter_is_refused_even_when_never_seen(terminal, central_key):
    clock = terminal.clock
    old = config(central_key, clock, {"flow.cooldown_s": 3}, counter=10)
    new = config(central_key, clock, {"flow.cooldown_s": 4}, counter=11)
    assert send(terminal, new)["status"] == "applied"
    assert send(terminal, old)["error"] == "replayed command"
    assert terminal.proc.highest_counter() == 11 and terminal.cfg.flow.cooldown_s == 4


def test_central_counters_only_grow_per_device_across_restarts(tmp_path):
    path = tmp_path / "central.counters.sqlite"
    counters = CommandCounter(path)
    a = [counters.next("edge-a01") for _ in range(3)]
    b = counters.next("edge-b02")
    counters.close()
    reopened = CommandCounter(path)
    after = reopened.next("edge-a01")
    reopened.close()
    assert a == sorted(set(a)) and after > a[-1] and b > 0


def test_the_edge_command_signer_uses_its_counter_file(tmp_path, central_key):
    counters = CommandCounter(tmp_path / "c.sqlite")
    first = json.loads(sign_command(central_key, DEVICE, "health", {}, counter=counters))
    second = json.loads(sign_command(central_key, DEVICE, "health", {}, counter=counters))
    counters.close()
    assert second["counter"] > first["counter"] >= 1
    assert errors("command", first) == []
    # A counter above what JSON numbers hold exactly is refused by the schema.
    assert errors("command", {**first, "counter": 2**53})


def test_unsigned_ranges_in_a_forged_bundle_never_reach_the_action(terminal, central_key, T=T0):
    """The limits come from the installed (verified) bundle only, never from the command."""
    args = {"set": {"vision.match_threshold": 0.3}, "limits": {"vision.match_threshold": [0, 1]}}
    payload = sign_command(central_key, DEVICE, "config", args, issued_at=T - 10)
    result = send(terminal, payload)
    assert result["status"] == "refused" and result["error"].startswith("malformed command")


@pytest.fixture
def slow_pi(tmp_path, central_pem, make_ledger):
    """The daemon's real clock (TimeKeeper) on a terminal with neither NTP nor RTC, whose last
    trusted time was three days ago: it signs on carried time, which nobody verified."""
    from support import FakeClock

    from edge.ops.clock import RtcReading, TimeKeeper

    wall, boot, boot_id = FakeClock(T0), FakeClock(100.0), ["boot-1"]
    keeper = TimeKeeper(
        tmp_path / "state",
        300.0,
        clock=wall,
        boottime=boot,
        boot_id=lambda: boot_id[0],
        sync_flag=tmp_path / "no-ntp",
        rtc=lambda: RtcReading(False),
    )
    keeper.trust(T0, "ntp")
    boot_id[0] = "boot-2"  # a power cut: the Pi comes back at its last trusted time
    actions = terminal_actions(Config(), FakeBundles(LIMITS), FakeDesk(), make_ledger())
    proc = CommandProcessor(
        central_pem, DEVICE, tmp_path / "c.sqlite", actions, clock=wall, clock_guard=keeper
    )
    yield SimpleNamespace(proc=proc, keeper=keeper, wall=wall)
    proc.close()


def test_a_clock_days_slow_anchors_on_the_signed_time_of_a_command(slow_pi, central_key):
    true_now = T0 + 3 * DAY
    assert slow_pi.keeper.check().source == "carried"
    payload = sign_command(
        central_key, DEVICE, "config", {"set": {"flow.cooldown_s": 7}}, issued_at=true_now - 5
    )
    result = slow_pi.proc.handle(TOPIC + "config", payload)
    # Before: refused as "issued in the future" until NTP answered, which may be never.
    assert result["status"] == "applied", result
    reading = slow_pi.keeper.check()
    assert reading.source == "central" and reading.now >= true_now - 5


def test_commands_are_refused_while_the_clock_is_not_trusted(slow_pi, central_key, tmp_path):
    """An unverified clock ahead of central's signed time judges no command; NTP ends that."""
    # The last event was signed two days ahead (a clock set wrong by hand, then carried on).
    slow_pi.keeper.last_event = lambda: T0 + 2 * DAY
    assert slow_pi.keeper.check().source == "carried"
    payload = sign_command(
        central_key, DEVICE, "config", {"set": {"flow.cooldown_s": 7}}, issued_at=T0
    )
    result = slow_pi.proc.handle(TOPIC + "config", payload)
    assert result["status"] == "refused" and "clock is not trusted" in result["error"], result
    # Not counted as applied: once NTP vouches for the clock, the same command runs.
    (tmp_path / "no-ntp").touch()
    assert slow_pi.proc.handle(TOPIC + "config", payload)["status"] == "applied"
