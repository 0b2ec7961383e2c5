"""Receipts never block or undo a payout: offline printer -> pending in the ledger -> printed later."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import Config
from edge.errors import DeviceError
from edge.events import verify_receipt_payload
from edge.keys import DeviceIdentity
from edge.ledger.store import Ledger
from edge.payout.receipts import ReceiptDesk

HID = "3171000000000042"


class FlakyPrinter:
    """A printer that can be unplugged; keeps every receipt it printed."""

    enabled = True

    def __init__(self) -> None:
        self.online = True
        self.printed: list = []
        self.refusals: list = []

    def print_receipt(self, r, *, reprint: bool = False) -> None:
        if not self.online:
            raise DeviceError("printer: offline before printing")
        self.printed.append((r, reprint))

    def print_refusal(self, r) -> None:
        if not self.online:
            raise DeviceError("printer: offline before printing")
        self.refusals.append(r)


@pytest.fixture
def setup(tmp_path: Path):
    identity = DeviceIdentity.load_or_create(tmp_path / "keys")
    ledger = Ledger(tmp_path / "ledger.sqlite", identity, "edge-test-0001", "3171")
    printer = FlakyPrinter()
    desk = ReceiptDesk(Config(), printer, ledger, lambda hid: "S*** A***")
    yield desk, printer, ledger, identity, tmp_path
    ledger.close()


def pay(ledger: Ledger, hid: str = HID) -> dict:
    return ledger.record("accepted", household_id=hid, round_id="2026-12", amount=300_000)


def test_offline_printer_keeps_receipt_pending_then_prints(setup):
    desk, printer, ledger, identity, _ = setup
    printer.online = False
    event = pay(ledger)
    assert desk.handle(event) is False
    assert desk.faulted
    assert [e["event_id"] for e in ledger.pending_receipts()] == [event["event_id"]]
    assert ledger.is_paid(HID, "2026-12")  # the payout stands regardless of the printer

    assert desk.retry_pending() == 0  # still offline: nothing printed, nothing lost
    printer.online = True
    assert desk.retry_pending() == 1
    assert not desk.faulted and ledger.pending_receipts() == []
    receipt, reprint = printer.printed[0]
    assert not reprint and receipt.amount == 300_000 and receipt.event_id == event["event_id"]
    assert HID not in receipt.masked_household
    record = verify_receipt_payload(receipt.qr_payload, identity.device_public_pem())
    assert record["event_id"] == event["event_id"]


def test_pending_receipt_survives_a_restart(setup):
    desk, printer, ledger, identity, tmp = setup
    printer.online = False
    event = pay(ledger)
    desk.handle(event)
    ledger.close()
    with Ledger(tmp / "ledger.sqlite", identity, "edge-test-0001", "3171") as reopened:
        fresh = ReceiptDesk(Config(), FlakyPrinter(), reopened, lambda hid: None)
        assert fresh.retry_pending() == 1
        assert fresh.printer.printed[0][0].event_id == event["event_id"]
        assert reopened.pending_receipts() == []
        assert fresh.reprint_last() is True
        assert len(fresh.printer.printed) == 2


def test_reprint_after_restart_uses_the_ledger(setup):
    desk, printer, ledger, *_ = setup
    pay(ledger, "3171000000000001")
    latest = pay(ledger, "3171000000000002")
    assert desk.reprint_last() is True
    assert printer.printed[-1][0].event_id == latest["event_id"]


def test_refusal_slip_only_when_configured(setup):
    desk, printer, ledger, *_ = setup
    refusal = ledger.record("no_match", household_id=HID, round_id="2026-12", score=0.1)
    assert desk.handle(refusal) is True and printer.refusals == []
    desk.cfg.printer.refusal_slip = True
    assert desk.handle(refusal) is True
    assert printer.refusals[0].outcome == "no_match"
    assert ledger.pending_receipts() == []  # refusals never wait for a printer
