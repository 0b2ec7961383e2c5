"""Receipts after a decision: print, or keep pending and print when the printer is back.

A printer that is offline or out of paper never blocks or undoes a payout: the payout is already
committed in the ledger before anything here runs; the receipt is marked pending there, so a
restart does not forget it either. Before the first byte of a slip goes out the ledger marks
it ``printing`` (fsynced), so a slip cut off by a power loss is found at the next start: it is
counted and printed again marked as a reprint, never as a second original.

:meth:`ReceiptDesk.reprint` is the one way to print a receipt again (MQTT ``reprint`` command,
staff): by event id, from the ledger, marked "CETAK ULANG".
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge.config import Config
from edge.devices.receipt import Receipt, Refusal
from edge.errors import CommandRefused, DeviceError
from edge.events import is_payout, receipt_payload
from edge.ledger.schema import ReceiptState
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
        self.last_receipt: Receipt | None = None  # the last payout receipt printed whole
        self.faulted = False
        # The frame loop prints while the MQTT thread may reprint; one slip at a time also
        # means a receipt found 'printing' while holding this lock was left by a dead process.
        self._lock = threading.Lock()

    def receipt_for(self, event: dict[str, Any]) -> Receipt:
        """The receipt of an accepted payout event, with masked name and household id.

        The event names the household by its reference only; the full id (masked on paper,
        for the recipient and the officer) is the ledger's local note.
        """
        hid = self.ledger.household_of(event["event_id"]) or ""
        return Receipt.from_event(
            event,
            point_name=self.cfg.device.point_name,
            masked_name=self.names(hid) or "-",
            masked_household=mask_id(hid),
            qr_payload=receipt_payload(event),
        )

    def _send(self, receipt: Receipt, *, reprint: bool) -> bool:
        if not self.printer.enabled:
            return False  # printer.kind = none: receipts stay pending for a later reprint
        try:
            self.printer.print_receipt(receipt, reprint=reprint)
        except DeviceError as exc:
            if not self.faulted:
                log.warning("printer fault, receipt %s kept pending: %s", receipt.event_id, exc)
            self.faulted = True
            return False
        self.faulted = False
        return True

    def _print_unprinted(self, event: dict[str, Any], *, reprint: bool) -> bool:
        """Print a receipt not yet printed whole, its progress kept in the ledger."""
        if not self.printer.enabled:
            return False
        event_id = event["event_id"]
        receipt = self.receipt_for(event)
        self.ledger.set_receipt(event_id, "printing")  # on disk before the first byte
        if not self._send(receipt, reprint=reprint):
            # The printer reported the failure (offline, out of paper): print again later.
            self.ledger.set_receipt(event_id, "pending")
            return False
        self.ledger.set_receipt(event_id, "printed")
        self.last_receipt = receipt
        return True

    def _recover(self, event_id: str, state: ReceiptState) -> ReceiptState:
        if state.status != "printing":
            return state
        # Under self._lock no print of ours is under way: the process that started this one
        # died mid-slip (power cut, kill). Part of it, or all, may be on paper.
        state = self.ledger.note_interrupted(event_id)
        log.warning(
            "receipt %s was cut off while printing (%d time(s)); it prints again as a reprint",
            event_id,
            state.interrupted,
        )
        return state

    def handle(self, event: dict[str, Any]) -> bool:
        """Print the receipt (accepted) or a refusal slip (when configured); True if printed."""
        if not is_payout(event["outcome"]):
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
        with self._lock:
            return self._print_unprinted(event, reprint=False)

    def retry_pending(self) -> int:
        """Print receipts left pending by a printer fault or a restart; returns how many.

        A receipt whose printing was cut off (left ``printing`` by a process that died) is
        counted in the ledger and printed marked as a reprint: the first slip may be on paper.
        """
        done = 0
        with self._lock:
            for event, state in self.ledger.receipts_to_print():
                state = self._recover(event["event_id"], state)
                if not self._print_unprinted(event, reprint=state.interrupted > 0):
                    break
                done += 1
        if done:
            log.info("printed %d pending receipt(s)", done)
        return done

    def reprint(self, event_id: str) -> bool:
        """Print the receipt of this accepted payout again, marked "CETAK ULANG".

        Returns True if it printed, False if the printer could not (the fault is logged).
        Raises :class:`CommandRefused` when the id is not a payout in this terminal's ledger.
        A receipt not yet printed whole is settled by the reprint: no unmarked copy follows.
        """
        with self._lock:
            event = self.ledger.event(event_id)
            if event is None:
                raise CommandRefused(f"no event {event_id} in this terminal's ledger")
            if not is_payout(event["outcome"]):
                raise CommandRefused(
                    f"event {event_id} is not a payout ({event['outcome']}): it has no receipt"
                )
            if event.get("pruned"):
                raise CommandRefused(f"payout {event_id} is past retention: only its hash is kept")
            state = self.ledger.receipt_state(event_id)
            if state is not None and state.status != "printed":
                self._recover(event_id, state)
                return self._print_unprinted(event, reprint=True)
            printed = self._send(self.receipt_for(event), reprint=True)
        if printed:
            log.info("receipt %s reprinted", event_id)
        return printed
