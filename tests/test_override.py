"""The supervised override on the real flow, real ledger and real QR codes of badges and cards.

The face engine is test_flow's scripted fake (a frame's first pixel says who stands there); the
badges are signed by the session's central key and read by the real QR reader.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from support import T0, pay, ref_of
from test_flow import H1, H2, POOR, FakeEngine, FakeLiveness, face_frame, make_bundle

from edge.config import Config
from edge.enrolment.badges import OverridePolicy, issue_badge, qr_image, reason_text
from edge.ledger.verify import verify_events
from edge.mqtt.schemas import validate
from edge.payout.claim import encode_claim
from edge.payout.decision import Outcome
from edge.payout.flow import PayoutFlow
from edge.payout.override import Step, SupervisedOverride

ROUND = "2026-12"
ISSUED = datetime.fromtimestamp(T0, UTC) - timedelta(days=10)
POLICY = OverridePolicy(
    roles=("officer", "supervisor"),
    max_per_staff_per_day=5,
    max_per_terminal_per_round=5,
    max_share=1.0,
    share_after=0,
)
BLANK = face_frame(0)  # nothing in view: no face, no code
STRANGER = 30  # a face enrolled nowhere: no_match for any claim

_frames: dict[str, np.ndarray] = {}


def card(text: str) -> np.ndarray:
    """A card (letter, badge, reason) held up to the camera: its QR on white."""
    if text not in _frames:
        _frames[text] = np.asarray(qr_image(text, box_size=4), dtype=np.uint8)
    return _frames[text]


@pytest.fixture
def staff(central_key):
    """Badge texts by name, signed by central (or not) as each test needs."""

    def make(staff_id="PTG-0001", role="officer", regency="3171", key=None, **kw):
        kw.setdefault("issued_at", ISSUED)
        return issue_badge(key or central_key, staff_id, role, regency, **kw)

    return make


@pytest.fixture
def rig(ledger, clock, central_pem, identity):
    cfg = Config()
    cfg.flow.cooldown_s = 5.0
    cfg.override.step_timeout_s = 30.0
    cfg.flow.good_frames = 3
    cfg.liveness.min_frames = 3
    bundles = SimpleNamespace(current=replace(make_bundle(), override_policy=POLICY))

    def provider():
        return bundles.current

    override = SupervisedOverride(
        cfg.override, ledger, central_pem, provider, clock=clock, wall=clock
    )
    flow = PayoutFlow(
        cfg, FakeEngine(), provider, ledger, FakeLiveness(), clock=clock, override=override
    )
    return SimpleNamespace(
        flow=flow, override=override, ledger=ledger, clock=clock, bundles=bundles, cfg=cfg,
        identity=identity,
    )  # fmt: skip


def feed(rig, frames, step: float = 0.1):
    decisions = []
    for frame in frames:
        rig.clock.advance(step)
        d = rig.flow.on_frame(frame)
        if d is not None:
            decisions.append(d)
    return decisions


def show(text: str, frames: int = 3) -> list[np.ndarray]:
    """A card shown for a few frames, then taken away for two seconds."""
    return [card(text)] * frames + [BLANK] * 20


def refuse(rig, household=H1, face=STRANGER):
    """A claim whose face does not match: the refusal an override may follow."""
    [decision] = feed(rig, [card(encode_claim(household, ROUND))] + [face_frame(face)] * 3)
    return decision


def override(rig, first, second, reason="elderly"):
    return feed(rig, show(first) + show(second) + show(reason_text(reason)))


def test_two_staff_and_a_reason_pay_a_refused_household(rig, staff):
    refusal = refuse(rig)
    assert refusal.outcome is Outcome.NO_MATCH and rig.override.step is Step.ARMED
    a, b = staff("PTG-0001"), staff("PTG-0002", "supervisor")
    [paid] = override(rig, a, b, "illness_injury")
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE and paid.amount == 300_000
    ev = paid.event
    assert ev["outcome"] == "accepted_override" and ev["household_ref"] == ref_of(H1)
    block = ev["override"]
    assert [s["staff_id"] for s in block["staff"]] == ["PTG-0001", "PTG-0002"]
    assert [s["role"] for s in block["staff"]] == ["officer", "supervisor"]
    assert block["reason"] == "illness_injury" and block["refusal"] == "no_match"
    assert block["overrides"] == refusal.event["event_id"]
    # The scores the refusal saw travel with the override.
    assert ev["score"] == refusal.event["score"] and ev["liveness"] == refusal.event["liveness"]
    assert ev["threshold"] == refusal.event["threshold"] and ev["receipt_sig"]
    validate("event", ev)
    # Same ledger as any payout: the payout row, the chain, one payout per household and round.
    assert rig.ledger.is_paid(H1, ROUND)["event_id"] == ev["event_id"]
    rig.clock.advance(10)
    [again] = feed(rig, [card(encode_claim(H1, ROUND))])
    assert again.outcome is Outcome.ALREADY_PAID
    events = list(rig.ledger.events())
    assert verify_events(events, rig.identity.device_public_pem()).ok
    assert rig.override.step is Step.NONE and rig.ledger.outbox_depth() == 3


def test_led_guide_follows_each_step(rig, staff):
    refuse(rig)
    seen = []
    for frame in show(staff("PTG-0001")) + show(staff("PTG-0002")):
        feed(rig, [frame])
        seen.append(rig.override.guide)
    assert seen[0] == "second" and seen[-1] == "reason"
    assert None not in seen  # no gap between the steps for the LED to fall back to idle


@pytest.mark.parametrize(
    ("frames", "outcome"),
    [([face_frame(POOR)] * 80, Outcome.POOR_QUALITY), ([BLANK] * 80, Outcome.NO_FACE)],
)
def test_poor_quality_and_no_face_are_overridable(rig, staff, frames, outcome):
    [refusal] = feed(rig, [card(encode_claim(H2, ROUND))] + frames)
    assert refusal.outcome is outcome
    [paid] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE
    assert paid.event["override"]["refusal"] == str(outcome)
    assert paid.event["score"] is None  # no face was matched: nothing to report


def test_refusals_that_are_never_overridable(rig, staff):
    """duplicate_face, spoof, wrong_round, not_entitled, already_paid: badges do not pay."""
    a, b = staff("PTG-0001"), staff("PTG-0002")
    cases = [
        [card(encode_claim(H1, ROUND))] + [face_frame(20)] * 3,  # H2's face: duplicate_face
        [card(encode_claim(H1, "2027-01"))],  # wrong_round
        [card(encode_claim("3171000000000099", ROUND))],  # not_entitled
    ]
    for frames in cases:
        rig.clock.advance(10)
        [refusal] = feed(rig, frames)
        assert rig.override.step is Step.NONE, refusal.outcome
    rig.clock.advance(10)
    rig.flow.liveness.live = False
    [spoof] = feed(rig, [card(encode_claim(H1, ROUND))] + [face_frame(10)] * 3)
    assert spoof.outcome is Outcome.SPOOF and rig.override.step is Step.NONE
    # Badges now only start an override, which the next spoof ends without a payout.
    assert override(rig, a, b) == []
    assert rig.override.step is Step.CLAIM
    rig.clock.advance(10)
    [again] = feed(rig, [card(encode_claim(H1, ROUND))] + [face_frame(10)] * 3)
    assert again.outcome is Outcome.SPOOF and rig.override.step is Step.NONE
    outcomes = [e["outcome"] for e in rig.ledger.events()]
    assert "accepted_override" not in outcomes and rig.ledger.is_paid(H1, ROUND) is None


def test_staff_may_start_before_the_claim(rig, staff):
    feed(rig, show(staff("PTG-0001")))
    assert rig.override.step is Step.CLAIM and rig.override.guide == "claim"
    refusal = refuse(rig, H2)
    assert refusal.outcome is Outcome.NO_MATCH and rig.override.step is Step.SECOND
    [paid] = feed(rig, show(staff("PTG-0002")) + show(reason_text("disability")))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE and paid.household_id == H2


def test_a_staff_start_ends_when_the_face_matches_after_all(rig, staff):
    feed(rig, show(staff("PTG-0001")))
    [ok] = feed(rig, [card(encode_claim(H1, ROUND))] + [face_frame(10)] * 3)
    assert ok.outcome is Outcome.ACCEPTED and rig.override.step is Step.NONE


def test_a_badge_held_still_is_one_badge_even_when_a_read_is_missed(rig, staff):
    refuse(rig)
    a = staff("PTG-0001")
    assert feed(rig, [card(a)] * 3 + [BLANK] + [card(a)] * 3 + [BLANK] * 20) == []
    assert rig.override.step is Step.SECOND


def test_the_same_badge_shown_twice_is_refused_and_recorded(rig, staff):
    refusal = refuse(rig)
    a = staff("PTG-0001")
    [refused] = feed(rig, show(a) + show(a))
    assert refused.outcome is Outcome.OVERRIDE_REFUSED
    block = refused.event["override"]
    assert block["refused"] == "the same badge shown twice"
    assert block["overrides"] == refusal.event["event_id"] and len(block["staff"]) == 2
    validate("event", refused.event)
    assert rig.ledger.is_paid(H1, ROUND) is None and rig.override.step is Step.NONE


def test_one_person_with_two_badges_is_refused(rig, staff):
    refuse(rig)
    [refused] = feed(rig, show(staff("PTG-0001")) + show(staff("PTG-0001", "supervisor")))
    assert refused.event["override"]["refused"] == "the same staff member twice"


@pytest.mark.parametrize(
    ("badge", "why"),
    [
        (dict(valid_days=5), "expired"),
        (dict(key="rogue"), "forged"),
        (dict(regency="3273"), "badge of another regency"),
        (dict(role="auditor"), "role auditor may not override"),
        (dict(staff_id="PTG-0666"), "badge revoked"),
        (dict(badge_id="lost-badge-1"), "badge revoked"),
        (dict(issued_at=ISSUED - timedelta(days=400), valid_days=900), "older than the policy"),
    ],
)
def test_bad_second_badges_are_refused_and_recorded(rig, staff, rogue_key, badge, why):
    rig.bundles.current = replace(
        rig.bundles.current,
        override_policy=replace(POLICY, revoked=frozenset({"PTG-0666", "lost-badge-1"})),
    )
    refuse(rig)
    if badge.get("key") == "rogue":
        badge = {**badge, "key": rogue_key}
    [refused] = feed(rig, show(staff("PTG-0001")) + show(staff(**{"staff_id": "X-2", **badge})))
    assert refused.outcome is Outcome.OVERRIDE_REFUSED
    assert why in refused.event["override"]["refused"]
    assert rig.ledger.is_paid(H1, ROUND) is None
    validate("event", refused.event)


def test_a_bad_first_badge_is_refused_too(rig, staff):
    refuse(rig)
    [refused] = feed(rig, show(staff(valid_days=1)))
    assert "expired" in refused.event["override"]["refused"]
    assert refused.event["override"]["staff"] == []  # an unverified badge names nobody


def test_steps_time_out_and_an_abandoned_override_is_recorded(rig, staff):
    refuse(rig)
    feed(rig, [BLANK] * 10, step=5.0)  # nobody came: the chance passes unrecorded
    assert rig.override.step is Step.NONE
    assert [e["outcome"] for e in rig.ledger.events()] == ["no_match"]
    rig.clock.advance(10)
    refuse(rig)
    feed(rig, show(staff("PTG-0001")))
    [timed_out] = feed(rig, [BLANK] * 10, step=5.0)
    assert timed_out.event["override"]["refused"] == "timed out waiting for the next step"


def test_the_next_recipient_disarms_but_a_letter_mid_override_is_ignored(rig, staff):
    refuse(rig, H1)
    rig.clock.advance(10)
    [ok] = feed(rig, [card(encode_claim(H2, ROUND))] + [face_frame(20)] * 3)
    assert ok.outcome is Outcome.ACCEPTED and rig.override.step is Step.NONE
    rig.clock.advance(10)
    refuse(rig, H1)
    feed(rig, show(staff("PTG-0001")))
    assert feed(rig, [card(encode_claim(H1, ROUND))] * 3) == []
    assert rig.override.step is Step.SECOND and not rig.flow.busy


def test_a_reason_card_before_two_badges_means_nothing(rig, staff):
    refuse(rig)
    assert feed(rig, show(reason_text("elderly")) + show(staff("PTG-0001"))) == []
    assert rig.override.step is Step.SECOND


def test_without_a_policy_badges_are_refused(rig, staff):
    rig.bundles.current = make_bundle()
    refuse(rig)
    assert rig.override.step is Step.NONE
    [refused] = feed(rig, show(staff("PTG-0001")))
    assert refused.event["override"]["refused"] == "no override policy in the bundle"


def test_a_payout_elsewhere_during_the_override_wins(rig, staff, make_ledger, make_identity):
    refuse(rig)
    other = make_ledger(rig.ledger.path.parent / "o.sqlite", make_identity(), "edge-test-0002")
    assert rig.ledger.record_remote_payout(pay(other, H1, ROUND))
    [refused] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert refused.event["override"]["refused"] == "already collected this round"


# -- central's limits -------------------------------------------------------------------------


def limit(rig, **kw):
    rig.bundles.current = replace(rig.bundles.current, override_policy=replace(POLICY, **kw))


def test_terminal_limit_per_round(rig, staff):
    limit(rig, max_per_terminal_per_round=1)
    refuse(rig, H1)
    [first] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    refuse(rig, H2)
    [second] = override(rig, staff("PTG-0003"), staff("PTG-0004"))
    assert first.outcome is Outcome.ACCEPTED_OVERRIDE
    assert second.outcome is Outcome.OVERRIDE_REFUSED
    assert second.event["override"]["refused"] == "terminal override limit for this round reached"
    assert second.event["override"]["reason"] == "elderly"  # the card was shown: recorded


def test_staff_limit_per_day_rolls_over(rig, staff):
    limit(rig, max_per_staff_per_day=1)
    refuse(rig, H1)
    override(rig, staff("PTG-0001"), staff("PTG-0002"))
    refuse(rig, H2)
    [refused] = override(rig, staff("PTG-0003"), staff("PTG-0001"))
    assert refused.event["override"]["refused"] == "staff PTG-0001 reached the daily override limit"
    rig.clock.advance(86400)  # a day later the same officer may supervise again
    refuse(rig, H2)
    [paid] = override(rig, staff("PTG-0003"), staff("PTG-0001"))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE


def test_share_of_payouts(rig, staff):
    limit(rig, max_share=0.3, share_after=1)
    refuse(rig, H1)
    [refused] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert refused.event["override"]["refused"] == "overrides would exceed their share of payouts"
    for i in range(3):  # three ordinary payouts: one override in four is 25 %
        pay(rig.ledger, f"3171000000009{i:03d}", ROUND)
    refuse(rig, H1)
    [paid] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE


def test_share_is_not_judged_on_the_first_payouts(rig, staff):
    limit(rig, max_share=0.3, share_after=20)
    refuse(rig, H1)
    [paid] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE


def test_override_off_in_the_config(rig, staff):
    rig.cfg.override.enabled = False
    refuse(rig)
    assert rig.override.step is Step.NONE
    [refused] = feed(rig, show(staff("PTG-0001")))
    assert refused.outcome is Outcome.OVERRIDE_REFUSED


def test_two_badges_before_the_claim_leave_only_the_reason(rig, staff):
    feed(rig, show(staff("PTG-0001")) + show(staff("PTG-0002")) + show(staff("PTG-0003")))
    assert rig.override.step is Step.CLAIM
    refuse(rig, H2)
    assert rig.override.step is Step.REASON and rig.override.guide == "reason"
    [paid] = feed(rig, show(reason_text("face_changed")))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE
    assert len(paid.event["override"]["staff"]) == 2


def test_a_third_badge_changes_nothing(rig, staff):
    refuse(rig)
    feed(rig, show(staff("PTG-0001")) + show(staff("PTG-0002")))
    assert feed(rig, show(staff("PTG-0003"))) == [] and rig.override.step is Step.REASON
    [paid] = feed(rig, show(reason_text("elderly")))
    staff_ids = [s["staff_id"] for s in paid.event["override"]["staff"]]
    assert staff_ids == ["PTG-0001", "PTG-0002"]


def test_a_reason_card_not_on_the_list_is_refused(rig, staff):
    refuse(rig)
    feed(rig, show(staff("PTG-0001")) + show(staff("PTG-0002")))
    [refused] = feed(rig, show("BREASON1:friend_of_the_officer"))
    assert refused.event["override"]["refused"] == "not a reason card of the fixed list"
    assert rig.ledger.is_paid(H1, ROUND) is None


def test_a_policy_withdrawn_during_the_override_refuses_it(rig, staff):
    refuse(rig)
    feed(rig, show(staff("PTG-0001")) + show(staff("PTG-0002")))
    rig.bundles.current = make_bundle()  # central installs a bundle without overrides
    [refused] = feed(rig, show(reason_text("elderly")))
    assert refused.event["override"]["refused"] == "no override policy in the bundle"
    assert refused.event["override"]["reason"] == "elderly"
