"""What the payout flow decides: the outcome words and the decision that records one.

Shared by the flow that takes decisions (:mod:`edge.payout.flow`), the supervised override that
takes them after a refusal (:mod:`edge.payout.override`), and the daemon that signals and prints
them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


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
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    ACCEPTED_OVERRIDE = "accepted_override"
    OVERRIDE_REFUSED = "override_refused"


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
