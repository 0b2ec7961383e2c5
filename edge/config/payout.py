"""How a claim becomes a decision, and the supervised override after a refusal."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import Section


class FlowConfig(Section):
    """The payout flow: how a claim becomes a decision."""

    mode: Literal["qr", "identify"] = Field(
        default="qr", description="qr: claim by invitation QR then 1:1; identify: 1:N only"
    )
    capture_timeout_s: float = Field(
        default=6.0, gt=0, description="Longest capture window after a claim, in seconds"
    )
    good_frames: int = Field(default=3, ge=1, description="Good face frames fused for a decision")
    cooldown_s: float = Field(
        default=5.0, ge=0, description="Pause after a decision before the same face starts again"
    )
    store_debug_images: bool = Field(
        default=False, description="Keep face images for debugging (personal data: off by default)"
    )
    max_attempts_per_round: int = Field(
        default=5,
        ge=0,
        description="Failed verifications (no match, spoof, duplicate face) of one household in "
        "one round before its letter is refused as too_many_attempts; 0: no limit",
    )
    attempt_window_h: float = Field(
        default=0.0,
        ge=0,
        description="Only failures within this many hours count towards the limit (a cool-down "
        "after which the household may try again); 0: the whole round",
    )


class OverrideConfig(Section):
    """Supervised override: two staff badges and a reason card after a face refusal.

    The limits (roles, counts, share, badge age, revocations) are central's, signed into the
    bundle's ``override_policy``; only timing and the optional evidence are set here.
    """

    enabled: bool = Field(
        default=True, description="Offer overrides when the bundle carries a policy"
    )
    step_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Longest wait for the next badge or card, seconds"
    )
    evidence: bool = Field(
        default=False,
        description="Keep the face crop of each override sealed to central (personal data)",
    )
    evidence_retention_days: float = Field(
        default=30.0, gt=0, le=365, description="Days a sealed crop is kept before deletion"
    )
