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
from typing import Any

import numpy as np

from edge.config import Config
from edge.errors import AlreadyPaid, ClaimError
from edge.payout.claim import decode_claim
from edge.privacy import mask_id
from edge.vision.matcher import Gallery
from edge.vision.qr import QrReader

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """Every decision the terminal can take; refusals are recorded like payouts.

    Named members for :data:`edge.events.OUTCOMES`, which owns the list (the ledger refuses
    any other word); tests/test_events.py checks that both, the event schema and the slip
    wording agree. Written out rather than built from the tuple so type checkers see members.
    """

    ACCEPTED = "accepted"
    NO_FACE = "no_face"
    POOR_QUALITY = "poor_quality"
    NO_MATCH = "no_match"
    SPOOF = "spoof"
    NOT_ENTITLED = "not_entitled"
    WRONG_ROUND = "wrong_round"
    ALREADY_PAID = "already_paid"
    DUPLICATE_FACE = "duplicate_face"
    BAD_QR = "bad_qr"


@dataclass
class Decision:
    """What was decided and the ledger event that records it."""

    outcome: Outcome
    reason: str
    event: dict[str, Any]
    household_id: str | None = None
    round_id: str | None = None
    amount: int | None = None
    score: float | None = None
    liveness: float | None = None


class State(enum.StrEnum):
    IDLE = "idle"
    CAPTURE = "capture"


@dataclass
class _Capture:
    deadline: float
    household_id: str | None
    round_id: str | None
    embeddings: list[np.ndarray] = field(default_factory=list)
    faces_seen: int = 0
    quality_reasons: list[str] = field(default_factory=list)


class BundleView:
    """The current bundle with its gallery, rebuilt only when the bundle changes."""

    def __init__(self, provider: Callable[[], Any]) -> None:
        self._provider = provider
        self._bundle_id: str | None = None
        self.bundle: Any = None
        self.gallery = Gallery()

    def refresh(self) -> Any:
        bundle = self._provider()
        bundle_id = bundle.bundle_id if bundle is not None else None
        if bundle_id != self._bundle_id:
            self.bundle, self._bundle_id = bundle, bundle_id
            if bundle is None:
                self.gallery = Gallery()
            else:
                labels, matrix = bundle.templates()
                self.gallery = Gallery.from_matrix(labels, matrix)
                log.info("bundle %s active: %d templates", bundle_id, len(labels))
        return self.bundle


def household_of(label: str) -> str:
    """Gallery labels are ``household/member``."""
    return label.split("/", 1)[0]


class PayoutFlow:
    """Feed frames in; get a Decision out whenever one was taken and recorded."""

    def __init__(
        self,
        cfg: Config,
        engine: Any,
        bundles: Callable[[], Any],
        ledger: Any,
        liveness: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.view = BundleView(bundles)
        self.ledger = ledger
        self.liveness = liveness if cfg.liveness.enabled else None
        self.clock = clock
        self.state = State.IDLE
        self._capture: _Capture | None = None
        self._qr = None
        # Cool-down memory: the claim text (qr mode) or fused face (identify mode) last decided.
        self._last_key: str | None = None
        self._last_vec: np.ndarray | None = None
        self._last_at = -1e9
        # Set by the app while the terminal must not sign (e.g. the clock is not trusted):
        # claims are not taken, so nothing is decided that could not be recorded honestly.
        self.paused: str | None = None
        # Only with flow.store_debug_images: the last aligned face crop of a capture, which
        # the app writes next to the decision's event id. Off by default (personal data).
        self.debug_crop: np.ndarray | None = None

    @property
    def busy(self) -> bool:
        return self.state is State.CAPTURE

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
        if text is None or self._cooling(text, now):
            return None
        self._last_key, self._last_at = text, now
        try:
            claim = decode_claim(text)
        except ClaimError as exc:
            return self._decide(Outcome.BAD_QR, str(exc))
        hid, rnd = claim.household_id, claim.round_id
        bundle = self.view.refresh()
        if bundle is None:
            return self._decide(Outcome.NOT_ENTITLED, "no enrolment bundle installed", hid, rnd)
        if rnd != bundle.round_id:
            return self._decide(
                Outcome.WRONG_ROUND, f"bundle is for round {bundle.round_id}", hid, rnd
            )
        household = bundle.households.get(hid)
        if household is None:
            return self._decide(Outcome.NOT_ENTITLED, "household not in this bundle", hid, rnd)
        if self.ledger.is_paid(hid, rnd):
            return self._decide(Outcome.ALREADY_PAID, "already collected this round", hid, rnd)
        self._start_capture(now, hid, rnd)
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
        self._start_capture(now, None, None)
        return self._capturing(rgb, now, result)

    def _start_capture(self, now: float, hid: str | None, rnd: str | None) -> None:
        self.state = State.CAPTURE
        self.debug_crop = None
        self._capture = _Capture(now + self.cfg.flow.capture_timeout_s, hid, rnd)
        if self.liveness is not None:
            self.liveness.reset()

    # -- capture -----------------------------------------------------------------------------

    def _enough(self, cap: _Capture) -> bool:
        if len(cap.embeddings) < self.cfg.flow.good_frames:
            return False
        return self.liveness is None or self.liveness.frames >= self.cfg.liveness.min_frames

    def _capturing(self, rgb: np.ndarray, now: float, result: Any = None) -> Decision | None:
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
                if self.cfg.flow.store_debug_images:
                    self.debug_crop = result.aligned
                if self.liveness is not None:
                    # The engine already ran the face mesh for alignment: reuse it.
                    self.liveness.update(rgb, result.face, mesh=getattr(result, "mesh", None))
        if self._enough(cap):
            return self._match(cap)
        if now < cap.deadline:
            return None
        if cap.embeddings:
            return self._match(cap)
        hid, rnd = cap.household_id, cap.round_id
        if cap.faces_seen == 0:
            return self._decide(Outcome.NO_FACE, "no face in the capture window", hid, rnd)
        reasons = ", ".join(cap.quality_reasons) or "quality gates"
        return self._decide(Outcome.POOR_QUALITY, reasons, hid, rnd)

    # -- decision ----------------------------------------------------------------------------

    def _match(self, cap: _Capture) -> Decision:
        vec = self.engine.fuse(cap.embeddings)
        self._last_vec = vec
        hid, rnd = cap.household_id, cap.round_id
        live_score = None
        if self.liveness is not None:
            live = self.liveness.result()
            live_score = float(live.score)
            if live.signals.get("insufficient"):
                # The window closed before liveness had enough good frames: the recipient
                # looked away or moved out, which is not evidence of an attack.
                return self._decide(
                    Outcome.POOR_QUALITY,
                    "too few good frames to check liveness",
                    hid,
                    rnd,
                    liveness=live_score,
                )
            if not live.live:
                return self._decide(
                    Outcome.SPOOF, "liveness below threshold", hid, rnd, liveness=live_score
                )
        bundle = self.view.refresh()
        if bundle is None:
            return self._decide(Outcome.NOT_ENTITLED, "no enrolment bundle installed", hid, rnd)
        gallery = self.view.gallery
        threshold = self.cfg.vision.match_threshold
        top = gallery.search(vec, k=3)
        if hid is None:
            # Identify mode: the best household above the threshold claims the payout.
            if not top or top[0][1] < threshold:
                best = top[0][1] if top else None
                return self._decide(Outcome.NO_MATCH, "no enrolled face matches", score=best)
            hid, rnd = household_of(top[0][0]), bundle.round_id
            if self.ledger.is_paid(hid, rnd):
                return self._decide(
                    Outcome.ALREADY_PAID, "already collected this round", hid, rnd, score=top[0][1]
                )
        household = bundle.households[hid]
        score = max(
            (gallery.verify(vec, f"{hid}/{m.member_id}") for m in household.members), default=-1.0
        )
        other = next((s for lab, s in top if household_of(lab) != hid), None)
        if other is not None and other >= self.cfg.vision.duplicate_threshold and other > score:
            return self._decide(
                Outcome.DUPLICATE_FACE,
                "face matches another household better",
                hid,
                rnd,
                score=score,
                liveness=live_score,
            )
        if score < threshold:
            return self._decide(
                Outcome.NO_MATCH, "face does not match", hid, rnd, score=score, liveness=live_score
            )
        return self._decide(
            Outcome.ACCEPTED,
            "verified",
            hid,
            rnd,
            score=score,
            liveness=live_score,
            amount=household.amount,
        )

    def _decide(
        self,
        outcome: Outcome,
        reason: str,
        hid: str | None = None,
        rnd: str | None = None,
        *,
        score: float | None = None,
        liveness: float | None = None,
        amount: int | None = None,
    ) -> Decision:
        self.state, self._capture = State.IDLE, None
        self._last_at = self.clock()
        bundle = self.view.bundle
        common = dict(
            household_id=hid,
            round_id=rnd,
            score=None if score is None else round(float(score), 4),
            threshold=self.cfg.vision.match_threshold if score is not None else None,
            liveness=None if liveness is None else round(float(liveness), 4),
            model_id=getattr(self.engine, "model_id", None),
            bundle_id=bundle.bundle_id if bundle is not None else None,
        )
        try:
            event = self.ledger.record(
                str(outcome), amount=amount if outcome is Outcome.ACCEPTED else None, **common
            )
        except AlreadyPaid:
            # Another terminal's payout arrived (claims sync) while this one was capturing.
            outcome, reason, amount = Outcome.ALREADY_PAID, "already collected this round", None
            event = self.ledger.record(str(outcome), **common)
        log.info(
            "decision %s household=%s score=%s liveness=%s reason=%s seq=%s",
            outcome,
            mask_id(hid) if hid else "-",
            common["score"],
            common["liveness"],
            reason,
            event.get("seq"),
        )
        return Decision(
            outcome,
            reason,
            event,
            household_id=hid,
            round_id=rnd,
            amount=amount if outcome is Outcome.ACCEPTED else None,
            score=common["score"],
            liveness=common["liveness"],
        )
