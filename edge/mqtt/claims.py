"""Claims sync: payouts made at other terminals of this regency are refused here too.

Every terminal subscribes to ``{prefix}/{regency}/+/event``. An accepted payout from another
terminal is written with ``ledger.record_remote_payout``; from then on ``Ledger.record`` refuses
that household and round as already paid. Payouts name the household by its ``household_ref``:
the terminals of a regency share the round's reference key (in their bundles), so each computes
the same reference for a claim, while the broker never sees a household id.

A synced payout turns a recipient away here, so it is believed only on central's word: the
device registry (:mod:`edge.registry`, signed by central) must list its device as active, in
this terminal's regency and the regency of the topic and the event, and the event's hash and
signature must check against the registered key. The broker's ACL (generated from the same
registry) is the first wall; this check is the second, for a broker that is misconfigured or
itself compromised. Without an installed registry nothing is synced: a payout another terminal
made offline-style is then caught by central as a double payout, which is recoverable, whereas
believing any publisher lets one stolen terminal turn away any recipient.
"""

from __future__ import annotations

import logging

from edge.errors import PayloadError, RegistryError
from edge.events import is_payout
from edge.mqtt.schemas import parse, safe_text
from edge.mqtt.topics import DEFAULT_PREFIX, split
from edge.registry import RegistryStore, event_problem

log = logging.getLogger(__name__)


class ClaimsSync:
    """Records the accepted payouts that other terminals of the regency publish.

    ``registry`` is the installed device registry (``state_dir/registry.json``), which central's
    retained registry messages update through :meth:`install_registry`; ``refusals`` keeps the
    last reasons a synced payout was refused (a history tests can read).
    """

    def __init__(
        self,
        ledger,
        device_id: str,
        regency: str,
        prefix: str = DEFAULT_PREFIX,
        registry: RegistryStore | None = None,
    ) -> None:
        self._ledger = ledger
        self._device_id = device_id
        self._regency = regency
        self._prefix = prefix
        self.registry = registry
        self._warned_no_registry = False
        self.recorded = 0
        self.rejected = 0
        self.refusals: list[str] = []

    def handle(self, topic: str, payload: bytes) -> bool:
        """Process one message from the regency's event topics; True when a payout was stored.

        Total: a message that cannot be read is counted and logged as rejected, never raised.
        """
        try:
            return self._handle(topic, payload)
        except Exception as exc:  # a poison message must not stop the reporter's worker
            self.rejected += 1
            log.warning(
                "claims sync: message on %s rejected: %s",
                safe_text(topic),
                exc.__class__.__name__,
            )
            return False

    def _handle(self, topic: str, payload: bytes) -> bool:
        where = split(topic, self._prefix)
        if where is None or where[2] != "event" or where[0] != self._regency:
            return False
        if where[1] == self._device_id:
            return False
        try:
            event = parse("event", payload)
        except PayloadError as exc:
            return self._refuse(f"malformed event: {exc}")
        if not is_payout(event["outcome"]):
            return False
        if event["device_id"] != where[1]:
            return self._refuse("event names another device than its topic")
        registry = self.registry.current() if self.registry is not None else None
        if registry is None:
            if not self._warned_no_registry:
                log.warning("claims sync: no device registry installed, synced payouts ignored")
                self._warned_no_registry = True
            return self._refuse("no device registry installed")
        problem = event_problem(
            registry.lookup(event["device_id"]),
            event,
            topic_regency=where[0],
            own_regency=self._regency,
        )
        if problem:
            return self._refuse(problem)
        stored = bool(self._ledger.record_remote_payout(event))
        if stored:
            self.recorded += 1
            log.info("claims sync: payout %s from %s recorded", event["event_id"], where[1])
        return stored

    def install_registry(self, payload: bytes) -> bool:
        """Install a registry central published; an older or forged one changes nothing."""
        if self.registry is None:
            return False
        try:
            return self.registry.install(bytes(payload))[1]
        except RegistryError as exc:
            log.warning("device registry from the broker refused: %s", exc)
            return False

    def registry_version(self) -> int | None:
        """Version of the installed registry (for health reports), or None."""
        current = self.registry.current() if self.registry is not None else None
        return current.version if current is not None else None

    def _refuse(self, why: str) -> bool:
        self.rejected += 1
        self.refusals = [*self.refusals[-63:], why]
        # The reason names devices and regencies, never households.
        log.warning("claims sync: payout refused: %s", why)
        return False
