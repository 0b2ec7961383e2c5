"""The claim-to-payout state machine.

One frame at a time: wait for a claim (the QR code of the invitation letter, or a face in
identify mode), capture until enough good faces are seen or the window closes, check liveness,
match, decide, and record the decision in the ledger in one durable transaction. Signalling,
printing and reporting happen after `on_frame` returns, so nothing outside the ledger can turn a
recorded payout into a lost or a double one.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge.config import Config
from edge.errors import AlreadyPaid, ClaimError
from edge.payout.attempts import AttemptLimit
from edge.payout.bundle_view import ActiveBundle, BundleView
from edge.payout.claim import decode_claim
from edge.payout.decision import Decision, Outcome
from edge.ports import (
    Bundle,
    BundleProvider,
    CropSink,
    DecisionLedger,
    Engine,
    FaceAnalysis,
    Liveness,
)
from edge.privacy import mask_id
from edge.vision.qr import QrReader

log = logging.getLogger(__name__)


class OverrideHook(Protocol):
    """The supervised override (edge/payout/override.py), seen from the flow."""

    @property
    def wants_crop(self) -> bool: ...

    def on_qr(self, text: str | None, now: float) -> tuple[bool, Decision | None]: ...

    def after(self, decision: Decision, bundle: Bundle | None, crop: np.ndarray | None) -> None: ...


class State(enum.StrEnum):
    IDLE = "idle"
    CAPTURE = "capture"


@dataclass(frozen=True)
class _Claim:
    """Who claims, for which round, judged against which bundle (fixed when the claim is taken)."""

    household_id: str | None
    round_id: str | None
    active: ActiveBundle

    @property
    def household_ref(self) -> str | None:
        """The household's pseudonym on the wire, when the bundle is for the claimed round."""
        bundle = self.active.bundle
        if bundle is None or self.household_id is None or self.round_id != bundle.round_id:
            return None
        return bundle.household_ref(self.household_id)


@dataclass
class _Capture:
    deadline: float
    # The claim holds the bundle the capture started with: a bundle installed (or expired)
    # meanwhile applies from the next claim on, so a capture never mixes two bundles.
    claim: _Claim
    embeddings: list[np.ndarray] = field(default_factory=list)
    faces_seen: int = 0
    quality_reasons: list[str] = field(default_factory=list)
    crop: np.ndarray | None = None  # the last aligned face, kept only for a CropSink


@dataclass(frozen=True)
class _Evidence:
    """What a capture adds to a decision besides the match score."""

    liveness: float | None
    crop: np.ndarray | None


def household_of(label: str) -> str:
    """Gallery labels are ``household/member``."""
    return label.split("/", 1)[0]


class PayoutFlow:
    """Feed frames in; get a Decision out whenever one was taken and recorded.

    ``crops`` (optional) receives the aligned face of each decided capture with the event id
    (flow.store_debug_images); without it no face image is kept in memory past a capture.
    """

    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        bundles: BundleProvider,
        ledger: DecisionLedger,
        liveness: Liveness | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        crops: CropSink | None = None,
        override: OverrideHook | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.view = BundleView(bundles)
        self.ledger = ledger
        self.liveness = liveness if cfg.liveness.enabled else None
        self.clock = clock
        self.crops = crops
        self.attempts = AttemptLimit(cfg, ledger)
        self.override = override
        self.state = State.IDLE
        self._capture: _Capture | None = None
        self._qr: QrReader | None = None
        # Cool-down memory: the claim text (qr mode) or fused face (identify mode) last decided.
        self._last_key: str | None = None
        self._last_vec: np.ndarray | None = None
        self._last_at = -1e9
        # Set (see pause()) while the terminal must not sign, e.g. the clock is not trusted:
        # claims are not taken, so nothing is decided that could not be recorded honestly.
        self.paused: str | None = None

    @property
    def busy(self) -> bool:
        return self.state is State.CAPTURE

    def pause(self, reason: str | None) -> None:
        """Stop taking claims for ``reason``, or take them again (None); a capture runs on."""
        self.paused = reason

    # -- frame entry point -------------------------------------------------------------------

    def on_frame(self, rgb: np.ndarray) -> Decision | None:
        """Advance the state machine by one frame."""
        now = self.clock()
        if self.state is State.IDLE:
            if self.paused:
                return None
            if self.cfg.flow.mode == "qr":
                return self._idle_qr(rgb, now)
            return self._idle_identify(rgb, now)
        return self._capturing(rgb, now)

    # -- idle --------------------------------------------------------------------------------

    def _read_qr(self, rgb: np.ndarray) -> str | None:
        if self._qr is None:
            self._qr = QrReader()
        return self._qr.read(rgb)

    def _cooling(self, key: str, now: float) -> bool:
        return key == self._last_key and now - self._last_at < self.cfg.flow.cooldown_s

    def _idle_qr(self, rgb: np.ndarray, now: float) -> Decision | None:
        text = self._read_qr(rgb)
        if self.override is not None:
            # Staff badges and reason cards are the override's, never claims.
            consumed, decision = self.override.on_qr(text, now)
            if consumed:
                return decision
        if text is None or self._cooling(text, now):
            return None
        self._last_key, self._last_at = text, now
        active = self.view.refresh()
        try:
            decoded = decode_claim(text)
        except ClaimError as exc:
            return self._decide(Outcome.BAD_QR, str(exc), _Claim(None, None, active))
        hid, rnd, bundle = decoded.household_id, decoded.round_id, active.bundle
        claim = _Claim(hid, rnd, active)
        if bundle is None:
            return self._decide(Outcome.NOT_ENTITLED, "no enrolment bundle installed", claim)
        if rnd != bundle.round_id:
            return self._decide(
                Outcome.WRONG_ROUND, f"bundle is for round {bundle.round_id}", claim
            )
        if hid not in bundle.households:
            return self._decide(Outcome.NOT_ENTITLED, "household not in this bundle", claim)
        if self.ledger.is_paid(hid, rnd, claim.household_ref):
            return self._decide(Outcome.ALREADY_PAID, "already collected this round", claim)
        too_many = self.attempts.refusal(hid, rnd)
        if too_many:
            return self._decide(Outcome.TOO_MANY_ATTEMPTS, too_many, claim)
        self._start_capture(now, claim)
        log.info("claim for %s round %s: capturing", mask_id(hid), rnd)
        return None

    def _idle_identify(self, rgb: np.ndarray, now: float) -> Decision | None:
        result = self.engine.analyse(rgb)
        if result is None or result.embedding is None:
            return None
        if (
            self._last_vec is not None
            and now - self._last_at < self.cfg.flow.cooldown_s
            and float(self._last_vec @ result.embedding) >= self.cfg.vision.match_threshold
        ):
            return None
        self._start_capture(now, _Claim(None, None, self.view.refresh()))
        return self._capturing(rgb, now, result)

    def _start_capture(self, now: float, claim: _Claim) -> None:
        self.state = State.CAPTURE
        self._capture = _Capture(now + self.cfg.flow.capture_timeout_s, claim)
        if self.liveness is not None:
            self.liveness.reset()

    # -- capture -----------------------------------------------------------------------------

    def _enough(self, cap: _Capture) -> bool:
        if len(cap.embeddings) < self.cfg.flow.good_frames:
            return False
        return self.liveness is None or self.liveness.frames >= self.cfg.liveness.min_frames

    def _capturing(
        self, rgb: np.ndarray, now: float, result: FaceAnalysis | None = None
    ) -> Decision | None:
        cap = self._capture
        assert cap is not None
        if result is None:
            result = self.engine.analyse(rgb)
        if result is not None:
            cap.faces_seen += 1
            if result.embedding is None:
                cap.quality_reasons = list(result.quality.reasons)
            else:
                cap.embeddings.append(result.embedding)
                if self.crops is not None or (self.override and self.override.wants_crop):
                    cap.crop = result.aligned
                if self.liveness is not None:
                    # The engine already ran the face mesh for alignment: reuse it.
                    self.liveness.update(rgb, result.face, mesh=result.mesh)
        if self._enough(cap):
            return self._match(cap)
        if now < cap.deadline:
            return None
        if cap.embeddings:
            return self._match(cap)
        if cap.faces_seen == 0:
            return self._decide(Outcome.NO_FACE, "no face in the capture window", cap.claim)
        reasons = ", ".join(cap.quality_reasons) or "quality gates"
        return self._decide(Outcome.POOR_QUALITY, reasons, cap.claim)

    # -- decision ----------------------------------------------------------------------------

    def _match(self, cap: _Capture) -> Decision:
        vec = self.engine.fuse(cap.embeddings)
        self._last_vec = vec
        claim, seen = cap.claim, _Evidence(None, cap.crop)
        if self.liveness is not None:
            live = self.liveness.result()
            seen = _Evidence(float(live.score), cap.crop)
            if live.signals.get("insufficient"):
                # The window closed before liveness had enough good frames: the recipient
                # looked away or moved out, which is not evidence of an attack.
                why = "too few good frames to check liveness"
                return self._decide(Outcome.POOR_QUALITY, why, claim, seen=seen)
            if not live.live:
                return self._decide(Outcome.SPOOF, "liveness below threshold", claim, seen=seen)
        if claim.active.bundle is None:
            why = "no enrolment bundle installed"
            return self._decide(Outcome.NOT_ENTITLED, why, claim, seen=seen)
        top = claim.active.gallery.search(vec, k=3)
        if claim.household_id is None:
            found = self._identify(claim, top, seen)
            if isinstance(found, Decision):
                return found
            claim = found
        return self._verify(claim, vec, top, seen)

    def _identify(
        self, claim: _Claim, top: list[tuple[str, float]], seen: _Evidence
    ) -> _Claim | Decision:
        """Identify mode: the best household above the threshold claims the payout."""
        bundle = claim.active.bundle
        assert bundle is not None
        if not top or top[0][1] < self.cfg.vision.match_threshold:
            best = top[0][1] if top else None
            why = "no enrolled face matches"
            return self._decide(Outcome.NO_MATCH, why, claim, score=best, seen=seen)
        hid = household_of(top[0][0])
        found = _Claim(hid, bundle.round_id, claim.active)
        if self.ledger.is_paid(hid, bundle.round_id, found.household_ref):
            why = "already collected this round"
            return self._decide(Outcome.ALREADY_PAID, why, found, score=top[0][1], seen=seen)
        return found

    def _verify(
        self, claim: _Claim, vec: np.ndarray, top: list[tuple[str, float]], seen: _Evidence
    ) -> Decision:
        """1:1 against the claimed household's members, and no better match elsewhere."""
        hid, bundle, gallery = claim.household_id, claim.active.bundle, claim.active.gallery
        assert hid is not None and bundle is not None
        household = bundle.households.get(hid)
        if household is None:  # a gallery label without its household: refuse, never raise
            why = "household not in this bundle"
            return self._decide(Outcome.NOT_ENTITLED, why, claim, seen=seen)
        scores = [(gallery.verify(vec, f"{hid}/{m.member_id}"), m.role) for m in household.members]
        score, role = max(scores, default=(-1.0, ""))
        # A representative enrolled for the household collects like its recipient; the event
        # says so, for central and the receipt.
        extra = {"collected_by": role} if role == "representative" else None
        other = next((s for lab, s in top if household_of(lab) != hid), None)
        if other is not None and other >= self.cfg.vision.duplicate_threshold and other > score:
            outcome, why = Outcome.DUPLICATE_FACE, "face matches another household better"
        elif score < self.cfg.vision.match_threshold:
            outcome, why = Outcome.NO_MATCH, "face does not match"
        else:
            outcome, why = Outcome.ACCEPTED, "verified" + (f" ({role})" if extra else "")
        amount, extra = household.amount, extra if outcome is Outcome.ACCEPTED else None
        return self._decide(outcome, why, claim, score=score, seen=seen, amount=amount, extra=extra)

    def _decide(
        self,
        outcome: Outcome,
        reason: str,
        claim: _Claim,
        *,
        score: float | None = None,
        seen: _Evidence | None = None,
        amount: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Decision:
        self.state, self._capture = State.IDLE, None
        self._last_at = self.clock()
        hid, rnd = claim.household_id, claim.round_id
        score = None if score is None else round(float(score), 4)
        liveness = None if seen is None or seen.liveness is None else round(seen.liveness, 4)
        amount = amount if outcome is Outcome.ACCEPTED else None
        try:
            event = self._record(outcome, claim, amount, score, liveness, extra)
        except AlreadyPaid:
            # Another terminal's payout arrived (claims sync) while this one was capturing.
            outcome, reason, amount = Outcome.ALREADY_PAID, "already collected this round", None
            event = self._record(outcome, claim, None, score, liveness)
        log.info(
            "decision %s household=%s score=%s liveness=%s reason=%s seq=%s",
            outcome,
            mask_id(hid) if hid else "-",
            score,
            liveness,
            reason,
            event.get("seq"),
        )
        crop = seen.crop if seen is not None else None
        if crop is not None and self.crops is not None:
            self.crops.keep(event["event_id"], crop)
        decision = Decision(
            outcome,
            reason,
            event,
            household_id=hid,
            round_id=rnd,
            amount=amount,
            score=score,
            liveness=liveness,
        )
        if self.override is not None:
            self.override.after(decision, claim.active.bundle, crop)
        return decision

    def _record(
        self,
        outcome: Outcome,
        claim: _Claim,
        amount: int | None,
        score: float | None,
        liveness: float | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self.ledger.record(
            str(outcome),
            household_id=claim.household_id,
            household_ref=claim.household_ref,
            round_id=claim.round_id,
            amount=amount,
            score=score,
            threshold=self.cfg.vision.match_threshold if score is not None else None,
            liveness=liveness,
            model_id=self.engine.model_id,
            bundle_id=claim.active.bundle_id,
            extra=extra,
        )
