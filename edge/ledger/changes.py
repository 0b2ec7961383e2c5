"""Config changes made by signed commands, as signed ledger events.

A mixin of :class:`edge.ledger.store.Ledger`. A remote ``config`` command changes how the
terminal decides (its thresholds), so the change goes into the same hash chain as the
decisions it affects: an event of kind ``config`` with no outcome, whose ``extra`` names each
key with its old and new value, the command's id and its counter. It leaves through the
outbox like every event, so central hears of every change, and ``edge audit`` shows when the
rules changed between two payouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge.events import iso_utc

log = logging.getLogger(__name__)

KIND = "config"
# The decision fields a config event leaves empty (it decides nothing).
_EMPTY = (
    "household_ref",
    "round_id",
    "amount",
    "score",
    "threshold",
    "liveness",
    "model_id",
    "bundle_id",
)


class ConfigEvents:
    """Writes ``config`` events through the ledger's own transaction and chain."""

    _lock: Any
    _clock: Callable[[], float]
    _check_clock: Callable[[float], None]
    _commit: Callable[..., dict]

    def record_config(
        self,
        changed: dict[str, list],
        *,
        command_id: str | None = None,
        counter: int | None = None,
    ) -> dict:
        """Record an applied config change (``{key: [old, new]}``) as a signed event."""
        now = self._clock()
        self._check_clock(now)
        fields: dict[str, Any] = {"outcome": None, **dict.fromkeys(_EMPTY)}
        extra = {"changed": changed, "command_id": command_id, "counter": counter}
        with self._lock:
            event = self._commit(fields, None, iso_utc(now), extra, kind=KIND)
        log.info("recorded seq %s: config change of %s", event["seq"], ", ".join(sorted(changed)))
        return event
