"""Attempt limits: how often one household's letter may be tried in one round.

An impostor holding a household's invitation letter could otherwise stand in front of the
camera again and again (other faces, photos, masks) until one try slips past the match or the
liveness check. After ``flow.max_attempts_per_round`` failed verifications of the same
household in the same round, this terminal refuses the claim before any face is captured, with
its own recorded outcome (``too_many_attempts``), until an officer takes over.

The count is read from the ledger (the events of this household and round), not kept in
memory, so a restart or a power cut does not reset it. With ``flow.attempt_window_h`` set, only
failures inside that window count: a household is let in again after the window, which suits an
honest recipient who failed in bad light more than a fraudster with time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from edge.config import Config
from edge.events import iso_utc

# Failed verifications: a face was captured and judged, and it was not the household's. Poor
# quality and no face are not counted: they reveal nothing about the match, and counting them
# would lock out honest recipients whose only fault was the light or a wobbly phone stand.
COUNTED = ("no_match", "spoof", "duplicate_face")


class AttemptHistory(Protocol):
    """What the limit asks of the ledger."""

    def count_outcomes(
        self, household_id: str, round_id: str, outcomes: tuple[str, ...], since: str | None
    ) -> int: ...


class AttemptLimit:
    """Refuses a household whose failed attempts in a round reached the configured limit.

    ``cfg`` is read at each claim, since central may change the limit; ``clock`` is the wall
    clock the ledger stamps events with (the window is compared against event times).
    """

    def __init__(
        self, cfg: Config, ledger: AttemptHistory, clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.clock = clock

    def failures(self, household_id: str, round_id: str) -> int:
        """Failed verifications of this household in this round (inside the window, if set)."""
        window_h = self.cfg.flow.attempt_window_h
        since = iso_utc(self.clock() - window_h * 3600.0) if window_h > 0 else None
        return self.ledger.count_outcomes(household_id, round_id, COUNTED, since)

    def refusal(self, household_id: str, round_id: str) -> str | None:
        """Why this claim may not be tried again now, or None when it may."""
        limit = self.cfg.flow.max_attempts_per_round
        if limit <= 0:
            return None
        failed = self.failures(household_id, round_id)
        if failed < limit:
            return None
        window_h = self.cfg.flow.attempt_window_h
        within = f" in the last {window_h:g} h" if window_h > 0 else " this round"
        return f"{failed} failed verifications{within} (limit {limit}): an officer must check"
