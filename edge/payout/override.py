"""The supervised override: two staff badges and a reason card turn a face refusal into a payout.

Some recipients never match (the very old, worn features, injuries). After a refusal of a
claimed household that the bundle's signed ``override_policy`` lets staff override (by default
``no_match``, ``poor_quality``, ``no_face``), or after a staff member shows a badge first, the
terminal waits for two *different* staff badges signed by central and then one reason card::

    refusal (overridable) -> ARMED --badge--> SECOND --badge--> REASON --card--> accepted_override
    badge while idle -> CLAIM --letter, capture, overridable refusal--> SECOND (or REASON)

A badge that is forged, expired, revoked, of another regency or of a role the policy does not
allow, the same badge or staff member twice, a step not taken in time, or an override past
one of the policy's limits ends the attempt with an ``override_refused`` event. Both outcomes
go through the same ledger as any payout (the payouts table keeps one payout per household and
round) and carry an ``override`` block: the staff, the reason, and the refusal's event id and
outcome. Docs: docs/flow.md (states, why some refusals are never overridable).

:class:`SupervisedOverride` is called by ``PayoutFlow`` from two places: each QR text read
while idle (:meth:`on_qr`) and each decision the flow took (:meth:`after`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.enrolment.badges import (
    Badge,
    OverridePolicy,
    is_badge_text,
    is_reason_text,
    parse_reason,
    verify_badge,
)
from edge.errors import AlreadyPaid, BadgeError
from edge.events import parse_iso_utc
from edge.payout.decision import Decision, Outcome
from edge.ports import BundleProvider, RecordingLedger
from edge.privacy import mask_id

if TYPE_CHECKING:
    from edge.config.payout import OverrideConfig
    from edge.payout.evidence import EvidenceStore
    from edge.ports import Bundle

log = logging.getLogger(__name__)

# A card held in front of the camera is read on many frames, and the reader misses it on some:
# only after it was out of sight this long does the same card count as shown again.
SHOWN_AGAIN_S = 1.5
DAY_S = 86400.0


class OverrideLedger(RecordingLedger, Protocol):
    """What the override needs of the ledger: record, and the counts its limits are about."""

    def events_with(self, outcome: str, round_id: str | None = None) -> list[dict]: ...

    def payout_count(self, round_id: str) -> int: ...


class Step(enum.StrEnum):
    """Where an override stands; the LED guides staff through the last three."""

    NONE = "none"
    ARMED = "armed"  # an overridable refusal: a first badge may start the override
    CLAIM = "claim"  # staff started with a badge: the letter and the capture come next
    SECOND = "second"  # one badge accepted: the second staff member's badge is awaited
    REASON = "reason"  # two badges: the reason card is awaited


@dataclass(frozen=True)
class _Refusal:
    """The refusal being overridden, and what the override event repeats of it."""

    event: dict
    outcome: str
    household_id: str
    household_ref: str | None
    round_id: str
    amount: int
    crop: np.ndarray | None = field(default=None, repr=False)


class SupervisedOverride:
    """The override state machine; decisions it takes are recorded through ``ledger``.

    ``central_public`` (PEM) verifies badges; ``bundles`` gives the active bundle (its regency
    and ``override_policy``); ``clock`` is monotonic (step timeouts), ``wall`` the wall clock
    (badge expiry, the per-day limit). ``evidence``, when given, keeps the crop of each
    accepted override sealed to the policy's ``evidence_key``.
    """

    def __init__(
        self,
        cfg: OverrideConfig,
        ledger: OverrideLedger,
        central_public: bytes,
        bundles: BundleProvider,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        evidence: EvidenceStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.central_public = central_public
        self.bundles = bundles
        self.clock = clock
        self.wall = wall
        self.evidence = evidence
        # The card last read, and when: kept across attempts, so a card still held up after
        # its override ended does not start the next one.
        self._held: str | None = None
        self._held_at = -1e9
        self._reset()

    def _reset(self) -> None:
        self.step = Step.NONE
        self._refusal: _Refusal | None = None
        self._badges: list[Badge] = []
        self._deadline = 0.0

    @property
    def wants_crop(self) -> bool:
        """True when the flow should keep a capture's crop for sealed evidence."""
        return self.evidence is not None

    @property
    def guide(self) -> str | None:
        """The step staff are guided through (LED pattern ``override_<step>``), or None."""
        return str(self.step) if self.step in (Step.CLAIM, Step.SECOND, Step.REASON) else None

    # -- entry points ------------------------------------------------------------------------

    def on_qr(self, text: str | None, now: float) -> tuple[bool, Decision | None]:
        """Offer a QR text read while the flow is idle (None: no code in the frame).

        Returns (consumed, decision): a consumed text is not a claim; the decision, if any,
        is already recorded.
        """
        if self.step is not Step.NONE and now >= self._deadline:
            return True, self._expire()
        if text is None:
            return False, None
        if is_badge_text(text):
            return True, self._on_badge(text, now)
        if is_reason_text(text):
            return True, self._on_reason(text, now)
        if self.step is Step.ARMED:
            self._reset()  # the next recipient's letter: no one asked for an override
        # Mid-override the letter shown again is ignored; otherwise it is the flow's claim.
        return self.step in (Step.SECOND, Step.REASON), None

    def after(self, decision: Decision, bundle: Bundle | None, crop: np.ndarray | None) -> None:
        """Arm for (or, after a staff start, continue with) an overridable refusal."""
        if self.evidence is not None:
            self.evidence.purge()  # retention holds even on a terminal that makes no overrides
        started = self.step is Step.CLAIM
        refusal = self._overridable(decision, bundle, crop)
        if refusal is None:
            if started:
                log.info("override ended: the claim was %s", decision.outcome)
            self._reset()
            return
        badges = self._badges if started else []
        self._reset()
        self._refusal, self._badges = refusal, badges
        self.step = {0: Step.ARMED, 1: Step.SECOND}.get(len(badges), Step.REASON)
        self._deadline = self.clock() + self.cfg.step_timeout_s

    # -- steps -------------------------------------------------------------------------------

    def _overridable(
        self, decision: Decision, bundle: Bundle | None, crop: np.ndarray | None
    ) -> _Refusal | None:
        if not self.cfg.enabled or bundle is None or bundle.override_policy is None:
            return None
        hid, rnd = decision.household_id, decision.round_id
        household = bundle.households.get(hid) if hid else None
        if str(decision.outcome) not in bundle.override_policy.refusals or household is None:
            return None
        if rnd != bundle.round_id:
            return None
        assert hid is not None
        ref = bundle.household_ref(hid)
        return _Refusal(
            decision.event, str(decision.outcome), hid, ref, rnd, household.amount, crop
        )

    def _policy(self) -> tuple[Bundle | None, OverridePolicy | None]:
        bundle = self.bundles()
        return bundle, bundle.override_policy if bundle is not None else None

    def _seen_again(self, text: str, now: float) -> bool:
        """True while the same card is still being held up (read again on later frames)."""
        held = text == self._held and now - self._held_at < SHOWN_AGAIN_S
        self._held, self._held_at = text, now
        return held

    def _on_badge(self, text: str, now: float) -> Decision | None:
        if self._seen_again(text, now) or len(self._badges) >= 2:
            return None  # two badges are all an override takes; a third changes nothing
        if not self.cfg.enabled:
            return self._refuse("overrides are off on this terminal")
        bundle, policy = self._policy()
        if bundle is None or policy is None:
            return self._refuse("no override policy in the bundle")
        try:
            badge = verify_badge(text, self.central_public, self.wall())
        except BadgeError as exc:
            return self._refuse(str(exc))
        why = policy.refuses(badge, bundle.regency, self.wall())
        if why is None and any(b.badge_id == badge.badge_id for b in self._badges):
            why = "the same badge shown twice"
        elif why is None and any(b.staff_id == badge.staff_id for b in self._badges):
            why = "the same staff member twice"
        if why is not None:
            return self._refuse(why, badge)
        self._badges.append(badge)
        self.step = {
            Step.NONE: Step.CLAIM,
            Step.ARMED: Step.SECOND,
            Step.SECOND: Step.REASON,
        }.get(self.step, self.step)
        self._deadline = self.clock() + self.cfg.step_timeout_s
        log.info("override: badge %d of 2 accepted (%s)", len(self._badges), self.step)
        return None

    def _on_reason(self, text: str, now: float) -> Decision | None:
        if self._seen_again(text, now) or self.step is not Step.REASON:
            return None  # a reason card before two badges means nothing yet
        try:
            reason = parse_reason(text)
        except BadgeError as exc:
            return self._refuse(str(exc))
        bundle, policy = self._policy()
        assert self._refusal is not None
        if policy is None or bundle is None:
            return self._refuse("no override policy in the bundle", reason=reason)
        why = self._over_limit(policy, self._refusal.round_id)
        if why is not None:
            return self._refuse(why, reason=reason)
        return self._pay(reason, policy)

    def _expire(self) -> Decision | None:
        if not self._badges:
            self._reset()  # nobody started anything: nothing to record
            return None
        return self._refuse("timed out waiting for the next step")

    # -- limits ------------------------------------------------------------------------------

    def _over_limit(self, policy: OverridePolicy, round_id: str) -> str | None:
        """Which of central's limits this override would break, or None."""
        this_round = self.ledger.events_with(str(Outcome.ACCEPTED_OVERRIDE), round_id)
        if len(this_round) >= policy.max_per_terminal_per_round:
            return "terminal override limit for this round reached"
        payouts = self.ledger.payout_count(round_id) + 1
        if payouts >= policy.share_after and (len(this_round) + 1) / payouts > policy.max_share:
            return "overrides would exceed their share of payouts"
        since = self.wall() - DAY_S
        recent = [
            s.get("staff_id")
            for ev in self.ledger.events_with(str(Outcome.ACCEPTED_OVERRIDE))
            if parse_iso_utc(ev["ts"]).timestamp() >= since
            for s in (ev.get("override") or {}).get("staff", [])
        ]
        for badge in self._badges:
            if recent.count(badge.staff_id) >= policy.max_per_staff_per_day:
                return f"staff {badge.staff_id} reached the daily override limit"
        return None

    # -- recording ---------------------------------------------------------------------------

    def _block(self, reason: str | None, extra: Badge | None = None) -> dict:
        r = self._refusal
        staff = self._badges + ([extra] if extra is not None else [])
        return {
            "staff": [b.as_event() for b in staff[:2]],
            "reason": reason,
            "overrides": r.event["event_id"] if r else None,
            "refusal": r.outcome if r else None,
        }

    def _record(self, outcome: Outcome, block: dict) -> dict:
        r = self._refusal
        ev = r.event if r else {}
        return self.ledger.record(
            str(outcome),
            household_id=r.household_id if r else None,
            household_ref=r.household_ref if r else None,
            round_id=r.round_id if r else None,
            amount=r.amount if r and outcome is Outcome.ACCEPTED_OVERRIDE else None,
            score=ev.get("score"),
            threshold=ev.get("threshold"),
            liveness=ev.get("liveness"),
            model_id=ev.get("model_id"),
            bundle_id=ev.get("bundle_id"),
            override=block,
        )

    def _decision(self, outcome: Outcome, why: str, event: dict) -> Decision:
        # Events carry only the household's reference; the decision names the household.
        hid = self._refusal.household_id if self._refusal else None
        self._reset()
        return Decision(
            outcome,
            why,
            event,
            household_id=hid,
            round_id=event.get("round_id"),
            amount=event.get("amount"),
            score=event.get("score"),
            liveness=event.get("liveness"),
        )

    def _refuse(
        self, why: str, badge: Badge | None = None, *, reason: str | None = None
    ) -> Decision:
        block = self._block(reason, badge)
        block["refused"] = why[:200]
        event = self._record(Outcome.OVERRIDE_REFUSED, block)
        log.warning("override refused (%s), seq %s", why, event.get("seq"))
        return self._decision(Outcome.OVERRIDE_REFUSED, why, event)

    def _pay(self, reason: str, policy: OverridePolicy) -> Decision:
        r = self._refusal
        assert r is not None
        block = self._block(reason)
        sealed = self.evidence is not None and r.crop is not None and policy.evidence_key
        if sealed:
            block["evidence"] = True
        try:
            event = self._record(Outcome.ACCEPTED_OVERRIDE, block)
        except AlreadyPaid:
            # Another terminal's payout arrived (claims sync) during the override.
            return self._refuse("already collected this round", reason=reason)
        if sealed and self.evidence is not None and r.crop is not None and policy.evidence_key:
            self.evidence.keep(event["event_id"], r.crop, policy.evidence_key)
        log.info(
            "override paid household %s (overrides %s, reason %s), seq %s",
            mask_id(r.household_id),
            r.outcome,
            reason,
            event.get("seq"),
        )
        return self._decision(Outcome.ACCEPTED_OVERRIDE, f"supervised override: {reason}", event)
