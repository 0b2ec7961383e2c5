"""LED and buzzer patterns on gpiozero's MockFactory: pin histories, values and timing."""

from __future__ import annotations

import math
import time

import pytest

from edge.config.devices import SignalsConfig
from edge.devices.signals import (
    HISTORY,
    OUTCOME_HOLD_S,
    PATTERNS,
    FaultedSignals,
    Indicator,
    Signals,
    idle_pattern,
    make_signals,
    outcome_pattern,
)

R, G, B, BUZ = 17, 27, 22, 18
# gpiozero's own assert_states_and_times allows 0.05 s; two busy shared cores need a little more
TOL = 0.08


def _signals(factory, **kw) -> Signals:
    # kind "gpiozero" with no explicit factory: the real default path, on the swapped-in mock
    s = make_signals(SignalsConfig(kind="gpiozero", **kw))
    for p in (R, G, B, BUZ):
        factory.pin(p).clear_states()
    return s


def _timeline(pin, expected: list[tuple[float, bool]], prefix: bool = False) -> None:
    """Pin history equals ``expected`` (seconds since the previous change, value)."""
    states = [(round(t, 3), bool(v)) for t, v in pin.states]
    if prefix:
        states = states[: len(expected)]
    assert len(states) == len(expected), states
    for (t, v), (et, ev) in zip(states, expected, strict=True):
        assert v == ev, states
        assert math.isclose(t, et, abs_tol=TOL), states


def test_accepted_green_held_and_one_short_beep(mock_factory):
    s = _signals(mock_factory)
    s.show("accepted")
    # Non-blocking: show() is back before the 0.2 s beep has ended (the beep runs on gpiozero's
    # thread, so it may not even have started); a blocking beep would have switched it off.
    assert [v for _, v in mock_factory.pin(BUZ).states] in ([False], [False, True])
    assert mock_factory.pin(G).state  # the steady colour is set before show() returns
    time.sleep(0.4)
    _timeline(mock_factory.pin(G), [(0.0, False), (0.0, True)])
    _timeline(mock_factory.pin(R), [(0.0, False)])
    _timeline(mock_factory.pin(B), [(0.0, False)])
    _timeline(mock_factory.pin(BUZ), [(0.0, False), (0.0, True), (0.2, False)])
    s.close()


def test_refused_and_already_paid_beep_codes(mock_factory):
    s = _signals(mock_factory)
    s.show("refused")
    time.sleep(0.8)
    _timeline(mock_factory.pin(R), [(0.0, False), (0.0, True)])
    _timeline(
        mock_factory.pin(BUZ),
        [(0.0, False), (0.0, True), (0.2, False), (0.2, True), (0.2, False)],
    )
    mock_factory.pin(BUZ).clear_states()
    s.show("already_paid")  # yellow: red stays on, green joins
    time.sleep(0.7)
    assert mock_factory.pin(R).state and mock_factory.pin(G).state
    assert not mock_factory.pin(B).state
    _timeline(
        mock_factory.pin(BUZ),
        [(0.0, False), (0.0, True), (0.1, False), (0.1, True), (0.1, False), (0.1, True)]
        + [(0.1, False)],
    )
    s.close()


def test_busy_blinks_and_a_new_pattern_stops_the_blinking(mock_factory):
    s = _signals(mock_factory)
    s.show("busy")
    time.sleep(0.68)
    blue = mock_factory.pin(B)
    expected = [(0.0, False), (0.0, True), (0.15, False), (0.15, True), (0.15, False)]
    _timeline(blue, expected, prefix=True)
    assert len(mock_factory.pin(BUZ).states) == 1  # busy is silent

    s.show("ready")
    assert blue.state  # steady blue at once
    n = len(blue.states)
    time.sleep(0.4)
    assert len(blue.states) == n  # the blink thread is gone
    assert s.history == ["busy", "ready"]
    s.close()
    assert not blue.state


def test_spoof_fast_red_blink_with_long_beep(mock_factory):
    s = _signals(mock_factory)
    s.show("spoof")
    time.sleep(1.2)
    _timeline(mock_factory.pin(BUZ), [(0.0, False), (0.0, True), (1.0, False)])
    red = [(round(t, 3), v) for t, v in mock_factory.pin(R).states]
    assert len(red) >= 9  # ~10 Hz toggling for 1.2 s
    assert all(math.isclose(t, 0.1, abs_tol=TOL) for t, _ in red[2:8]), red
    s.close()


def test_separate_active_low_leds(mock_factory):
    s = _signals(mock_factory, led_kind="separate", active_high=False)
    s.show("already_paid")
    time.sleep(0.05)
    # active low: a lit LED is a low pin
    assert not mock_factory.pin(R).state
    assert not mock_factory.pin(G).state
    assert mock_factory.pin(B).state
    s.show("off")
    assert mock_factory.pin(R).state and mock_factory.pin(G).state
    s.close()


def test_every_pattern_runs_and_off_silences(mock_factory):
    s = _signals(mock_factory)
    for name in PATTERNS:
        s.show(name)
    s.show("fault")
    time.sleep(0.1)
    s.show("off")
    assert not any(mock_factory.pin(p).state for p in (R, G, B, BUZ))
    assert s.history == [*PATTERNS, "fault", "off"]
    with pytest.raises(ValueError):
        s.show("party")
    s.close()


def test_mock_kind_makes_its_own_factory_and_log_kind_only_records():
    s = make_signals(SignalsConfig(kind="mock"))
    s.show("accepted")
    assert s.led.value == (0, 1, 0)
    s.close()
    log_only = make_signals(SignalsConfig(kind="log"))
    log_only.show("no_network")
    assert log_only.history == ["no_network"] and log_only.current == "no_network"
    log_only.close()


def test_pins_in_use_is_a_reported_fault(mock_factory):
    first = make_signals(SignalsConfig(kind="gpiozero"))
    second = make_signals(SignalsConfig(kind="gpiozero", buzzer_pin=5))
    # a second user of the same pins gets no LED, not a crash: the reason is kept for health
    assert isinstance(second, FaultedSignals) and "GPIO" in second.fault
    second.show("fault")
    assert second.history == ["fault"]
    first.close()


def test_histories_are_bounded():
    """A daemon shows patterns for months: neither its history nor mock pins may grow."""
    s = make_signals(SignalsConfig(kind="mock"))
    for _ in range(HISTORY):
        s.show("busy")
        s.show("ready")
    assert len(s.history) == HISTORY and s.history[-2:] == ["busy", "ready"]
    blue = s.led.pin_factory.pin(B)
    assert 0 < len(blue.states) <= HISTORY
    s.close()


def test_outcome_patterns():
    assert outcome_pattern("accepted") == "accepted"
    assert outcome_pattern("already_paid") == "already_paid"
    assert outcome_pattern("spoof") == "spoof"
    for refusal in ("no_match", "duplicate_face", "bad_qr", "no_face", "wrong_round"):
        assert outcome_pattern(refusal) == "refused"
    assert idle_pattern([], online=True) == "ready"
    assert idle_pattern([], online=False) == "no_network"
    assert idle_pattern(["printer"], online=False) == "fault"


def test_indicator_holds_an_outcome_then_goes_idle(clock):
    cooldown = [2.0]
    s = Signals()
    led = Indicator(s, cooldown_s=lambda: cooldown[0], clock=clock)
    led.refresh(busy=False, faults=[], online=True)
    led.refresh(busy=True, faults=[], online=True)
    led.refresh(busy=True, faults=[], online=True)  # no restart of the blinking
    led.outcome("no_match")
    led.outcome("bad_qr")  # a second refusal beeps again
    clock.advance(OUTCOME_HOLD_S - 0.1)
    led.refresh(busy=False, faults=[], online=True)
    assert s.current == "refused"
    clock.advance(0.1)
    led.refresh(busy=False, faults=["camera"], online=True)
    assert s.history == ["ready", "busy", "refused", "refused", "fault"]
    cooldown[0] = 10.0  # central lengthened the cool-down: the outcome stays as long
    led.outcome("accepted")
    clock.advance(9.9)
    led.refresh(busy=False, faults=[], online=False)
    assert s.current == "accepted"
    clock.advance(0.1)
    led.refresh(busy=False, faults=[], online=False)
    assert s.current == "no_network"
    led.outcome("spoof")
    led.refresh(busy=True, faults=[], online=True)  # the next recipient's capture
    assert s.history[-2:] == ["spoof", "busy"]
