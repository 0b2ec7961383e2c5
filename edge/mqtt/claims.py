"""Claims sync: payouts made at other terminals of this regency are refused here too.

Every terminal subscribes to ``{prefix}/{regency}/+/event``. An accepted payout from another
terminal is written with ``ledger.record_remote_payout``; from then on ``Ledger.record`` refuses
that household and round as already paid. The terminal does not hold the other terminals'
public keys, so a remote payout is trusted because the broker only lets a device publish under
its own topic (ACL by the certificate's CN); central still verifies every signature and flags
double payouts that happened while terminals were cut off from each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge.errors import PayloadError
from edge.events import check_event, is_payout
from edge.mqtt.schemas import parse
from edge.mqtt.topics import DEFAULT_PREFIX, split

log = logging.getLogger(__name__)


class ClaimsSync:
    """Records the accepted payouts that other terminals of the regency publish."""

    def __init__(
        self,
        ledger,
        device_id: str,
        regency: str,
        prefix: str = DEFAULT_PREFIX,
        device_keys: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._device_id = device_id
        self._regency = regency
        self._prefix = prefix
        # Optional: when central ships the regency's device keys, signatures are checked too.
        self._device_keys = device_keys
        self.recorded = 0
        self.rejected = 0

    def handle(self, topic: str, payload: bytes) -> bool:
        """Process one message from the regency's event topics; True when a payout was stored."""
        where = split(topic, self._prefix)
        if where is None or where[2] != "event" or where[0] != self._regency:
            return False
        if where[1] == self._device_id:
            return False
        try:
            event = parse("event", payload)
        except PayloadError as exc:
            self.rejected += 1
            log.warning("claims sync: malformed event from %s: %s", where[1], exc)
            return False
        if not is_payout(event["outcome"]):
            return False
        if event["device_id"] != where[1] or event["regency"] != self._regency:
            self.rejected += 1
            log.warning("claims sync: event on %s names another device or regency", topic)
            return False
        key = self._device_keys(event["device_id"]) if self._device_keys else None
        problem = check_event(event, key)
        if problem:
            self.rejected += 1
            log.warning("claims sync: event %s refused: %s", event["event_id"], problem)
            return False
        stored = bool(self._ledger.record_remote_payout(event))
        if stored:
            self.recorded += 1
            log.info("claims sync: payout %s from %s recorded", event["event_id"], where[1])
        return stored
