"""Attempt limits: a household's letter tried too often is refused, recorded, reported, shown.

The flow runs on the real ledger with the scripted engine of test_flow.py: person 30 is an
impostor holding household H1's letter, person 10 is H1's real recipient.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_flow import H1, H2, ROUND, FakeEngine, FakeLiveness, face_frame, feed, make_bundle
from test_flow import qr_frames as qr_frames  # noqa: F401 - the fixture, used by name below

from edge.config import Config
from edge.devices.receipt import Refusal, render_text
from edge.devices.signals import PATTERNS, Indicator, Signals
from edge.ledger.verify import verify_events
from edge.mqtt.schemas import validate
from edge.payout.attempts import COUNTED
from edge.payout.decision import Outcome
from edge.payout.flow import PayoutFlow

IMPOSTOR, RECIPIENT = 30, 10


def make_rig(ledger, clock, *, limit: int = 3, window_h: float = 0.0):
    cfg = Config()
    cfg.flow.good_frames = 3
    cfg.liveness.min_frames = 3
    cfg.flow.max_attempts_per_round = limit
    cfg.flow.attempt_window_h = window_h
    bundles = SimpleNamespace(current=make_bundle())
    flow = PayoutFlow(cfg, FakeEngine(), lambda: bundles.current, ledger, FakeLiveness(), clock)
    flow.attempts.clock = clock  # the window is measured on the ledger's (fake) wall clock
    return SimpleNamespace(flow=flow, ledger=ledger, clock=clock, cfg=cfg)


def attempt(rig, qr, person: int) -> list[Outcome]:
    """One try at the counter: show the letter, then the face; past the cool-down after."""
    decisions = feed(rig, [qr] + [face_frame(person)] * 3)
    rig.clock.advance(rig.cfg.flow.cooldown_s + 1)
    return [d.outcome for d in decisions]


def test_impostor_is_stopped_after_the_limit_before_any_face(ledger, clock, qr_frames, identity):
    rig = make_rig(ledger, clock, limit=3)
    qr = qr_frames(H1)
    tries = [attempt(rig, qr, IMPOSTOR) for _ in range(3)]
    assert tries == [[Outcome.NO_MATCH]] * 3
    engine_calls = rig.flow.engine.calls
    [locked] = feed(rig, [qr])
    assert locked.outcome is Outcome.TOO_MANY_ATTEMPTS
    assert "3 failed verifications" in locked.reason
    assert rig.flow.engine.calls == engine_calls  # refused before the camera looked at anyone
    assert not rig.flow.busy
    # Even the real recipient now needs the officer: the letter is what is locked.
    rig.clock.advance(10)
    assert attempt(rig, qr, RECIPIENT) == [Outcome.TOO_MANY_ATTEMPTS]
    # Another household is not affected.
    assert attempt(rig, qr_frames(H2), 20) == [Outcome.ACCEPTED]

    # Recorded like any decision: signed, chained, waiting in the outbox for the broker, and
    # valid against the MQTT event schema.
    events = list(ledger.events())
    assert verify_events(events, identity.device_public_pem()).ok
    refusal = next(e for e in events if e["outcome"] == "too_many_attempts")
    validate("event", refusal)
    assert refusal["household_ref"] == rig.flow.view.refresh().bundle.household_ref(H1)
    assert refusal["event_id"] in {item.event_id for item in ledger.outbox()}
    assert ledger.is_paid(H1, ROUND) is None


def test_the_count_survives_a_restart(make_ledger, clock, qr_frames, tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = make_rig(make_ledger(path), clock, limit=2)
    qr = qr_frames(H1)
    assert [attempt(first, qr, IMPOSTOR) for _ in range(2)] == [[Outcome.NO_MATCH]] * 2
    first.ledger.close()
    # A new process, a new flow, nothing in memory: the ledger still knows.
    again = make_rig(make_ledger(path), clock, limit=2)
    assert attempt(again, qr, IMPOSTOR) == [Outcome.TOO_MANY_ATTEMPTS]


def test_the_window_lets_the_household_try_again_later(ledger, clock, qr_frames):
    rig = make_rig(ledger, clock, limit=2, window_h=4.0)
    qr = qr_frames(H1)
    assert [attempt(rig, qr, IMPOSTOR) for _ in range(2)] == [[Outcome.NO_MATCH]] * 2
    assert attempt(rig, qr, RECIPIENT) == [Outcome.TOO_MANY_ATTEMPTS]
    clock.advance(3 * 3600)  # still inside the window
    assert attempt(rig, qr, RECIPIENT) == [Outcome.TOO_MANY_ATTEMPTS]
    clock.advance(1.5 * 3600)  # the failures are now older than four hours
    assert attempt(rig, qr, RECIPIENT) == [Outcome.ACCEPTED]


def test_only_failed_verifications_count(ledger, clock, qr_frames):
    rig = make_rig(ledger, clock, limit=1)
    qr = qr_frames(H1)
    # Nobody in front of the camera, then a blurred face: neither says anything about a match.
    rig.cfg.flow.capture_timeout_s = 0.15  # closes within the three frames of a try
    assert attempt(rig, qr, 0) == [Outcome.NO_FACE]
    assert attempt(rig, qr, 200) == [Outcome.POOR_QUALITY]
    rig.cfg.flow.capture_timeout_s = 6.0
    assert attempt(rig, qr, RECIPIENT) == [Outcome.ACCEPTED]
    assert set(COUNTED) == {"no_match", "spoof", "duplicate_face"}


def test_spoof_and_duplicate_face_count_too_and_zero_means_no_limit(ledger, clock, qr_frames):
    rig = make_rig(ledger, clock, limit=2)
    qr = qr_frames(H1)
    rig.flow.liveness.live = False
    assert attempt(rig, qr, RECIPIENT) == [Outcome.SPOOF]
    rig.flow.liveness.live = True
    assert attempt(rig, qr, 20) == [Outcome.DUPLICATE_FACE]  # H2's face on H1's letter
    assert attempt(rig, qr, RECIPIENT) == [Outcome.TOO_MANY_ATTEMPTS]
    rig.cfg.flow.max_attempts_per_round = 0
    assert attempt(rig, qr, RECIPIENT) == [Outcome.ACCEPTED]


def test_failures_count_per_household_and_round(ledger):
    for _ in range(3):
        ledger.record("no_match", household_id=H1, round_id=ROUND, score=0.1)
    ledger.record("spoof", household_id=H1, round_id="2027-01")
    ledger.record("no_match", household_id=H2, round_id=ROUND)
    assert ledger.count_outcomes(H1, ROUND, COUNTED, None) == 3
    assert ledger.count_outcomes(H1, "2027-01", COUNTED, None) == 1
    assert ledger.count_outcomes(H2, ROUND, ("spoof",), None) == 0
    assert ledger.count_outcomes(H1, ROUND, COUNTED, "2999-01-01T00:00:00.000Z") == 0


@pytest.mark.parametrize("limit", [-1])
def test_a_negative_limit_is_a_config_error(limit):
    from edge.config import parse_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="flow.max_attempts_per_round"):
        parse_config({"flow": {"max_attempts_per_round": limit}})


def test_led_buzzer_and_slip_show_the_lock(clock):
    signals = Signals()
    led = Indicator(signals, lambda: 5.0, clock)
    led.outcome("too_many_attempts")
    assert signals.current == "too_many_attempts"
    pattern = PATTERNS["too_many_attempts"]
    assert pattern.beep is not None and pattern.beep[2] == 3  # three long beeps: see the officer
    assert pattern != PATTERNS["refused"] and pattern != PATTERNS["spoof"]
    slip = render_text(Refusal("Pos Uji", "edge-test-0001", clock(), "too_many_attempts", "e-1"))
    assert "BATAS PERCOBAAN" in slip and "Hubungi petugas" in slip
    assert H1 not in slip
