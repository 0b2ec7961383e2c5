"""Receipts after a decision: print, or keep pending and print when the printer is back.

A printer that is offline or out of paper never blocks or undoes a payout: the payout is already
committed in the ledger before anything here runs; the receipt is marked pending there, so a
restart does not forget it either.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.config import Config
from edge.devices.receipt import Receipt, Refusal
from edge.errors import DeviceError
from edge.events import receipt_payload
from edge.ports import NameLookup, Printer, ReceiptLedger
from edge.privacy import mask_id

log = logging.getLogger(__name__)


class ReceiptDesk:
    """Turns recorded events into printed receipts, with a durable pending list."""

    def __init__(
        self, cfg: Config, printer: Printer, ledger: ReceiptLedger, names: NameLookup
    ) -> None:
        self.cfg = cfg
        self.printer = printer
        self.ledger = ledger
        # names(household_id) -> masked display name from the active bundle, or None
        self.names = names
        self.last_receipt: Receipt | None = None
        self.faulted = False

    def receipt_for(self, event: dict[str, Any]) -> Receipt:
        hid = event["household_id"]
        return Receipt.from_event(
            event,
            point_name=self.cfg.device.point_name,
            masked_name=self.names(hid) or "-",
            masked_household=mask_id(hid),
            qr_payload=receipt_payload(event),
        )

    def _print(self, receipt: Receipt) -> bool:
        if not self.printer.enabled:
            return False  # printer.kind = none: receipts stay pending for a later reprint
        try:
            self.printer.print_receipt(receipt)
        except DeviceError as exc:
            if not self.faulted:
                log.warning("printer fault, receipt %s kept pending: %s", receipt.event_id, exc)
            self.faulted = True
            return False
        self.faulted = False
        return True

    def handle(self, event: dict[str, Any]) -> bool:
        """Print the receipt (accepted) or a refusal slip (when configured); True if printed."""
        if event["outcome"] != "accepted":
            if not self.cfg.printer.refusal_slip:
                return True
            slip = Refusal.from_event(event, point_name=self.cfg.device.point_name)
            try:
                self.printer.print_refusal(slip)
            except DeviceError as exc:
                log.warning("refusal slip not printed: %s", exc)
                return False
            return True
        # The ledger marked this receipt pending in the payout's own transaction.
        receipt = self.receipt_for(event)
        self.last_receipt = receipt
        if not self._print(receipt):
            return False
        self.ledger.set_receipt(event["event_id"], "printed")
        return True

    def retry_pending(self) -> int:
        """Print receipts left pending by a printer fault or a restart; returns how many."""
        done = 0
        for event in self.ledger.pending_receipts():
            receipt = self.receipt_for(event)
            if not self._print(receipt):
                break
            self.ledger.set_receipt(event["event_id"], "printed")
            self.last_receipt = receipt
            done += 1
        if done:
            log.info("printed %d pending receipt(s)", done)
        return done

    def reprint_last(self) -> bool:
        """Reprint the last payout receipt (staff button or MQTT command)."""
        if self.last_receipt is None:
            # After a restart: the newest payout in the ledger.
            last = None
            for event in self.ledger.events():
                if event["outcome"] == "accepted":
                    last = event
            if last is None:
                return False
            self.last_receipt = self.receipt_for(last)
        return self._print(self.last_receipt)
