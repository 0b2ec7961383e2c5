"""Receipts never block or undo a payout: offline printer -> pending in the ledger -> printed later."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import pay

from edge.config import Config
from edge.errors import CommandRefused, DeviceError
from edge.events import verify_receipt_payload
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
def setup(tmp_path: Path, ledger, identity):
    printer = FlakyPrinter()
    desk = ReceiptDesk(Config(), printer, ledger, lambda hid: "S*** A***")
    return desk, printer, ledger, identity, tmp_path


def test_offline_printer_keeps_receipt_pending_then_prints(setup):
    desk, printer, ledger, identity, _ = setup
    printer.online = False
    event = pay(ledger, HID)
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


def test_pending_receipt_survives_a_restart(setup, make_ledger):
    desk, printer, ledger, identity, tmp = setup
    printer.online = False
    event = pay(ledger, HID)
    desk.handle(event)
    ledger.close()
    with make_ledger(tmp / "ledger.sqlite") as reopened:
        fresh = ReceiptDesk(Config(), FlakyPrinter(), reopened, lambda hid: None)
        assert fresh.retry_pending() == 1
        assert fresh.printer.printed[0][0].event_id == event["event_id"]
        assert fresh.printer.printed[0][1] is False  # never printed before: the original
        assert reopened.pending_receipts() == []
        assert fresh.reprint(event["event_id"]) is True
        assert [(r.event_id, marked) for r, marked in fresh.printer.printed] == [
            (event["event_id"], False),
            (event["event_id"], True),
        ]


def test_reprint_prints_the_asked_event_marked_as_a_reprint(setup):
    desk, printer, ledger, *_ = setup
    first = pay(ledger, "3171000000000001")
    latest = pay(ledger, "3171000000000002")
    desk.handle(first)
    desk.handle(latest)
    assert desk.reprint(first["event_id"]) is True
    receipt, marked = printer.printed[-1]
    assert receipt.event_id == first["event_id"] and marked is True
    assert receipt.qr_payload == printer.printed[0][0].qr_payload  # the same signed record
    assert ledger.receipt_state(first["event_id"]).status == "printed"


def test_reprint_refuses_an_unknown_event_or_a_refusal(setup):
    desk, printer, ledger, *_ = setup
    refusal = ledger.record("no_match", household_id=HID, round_id="2026-12", score=0.1)
    unknown = "0b8c1f5e-0000-4000-8000-000000000001"
    with pytest.raises(CommandRefused, match=f"no event {unknown}"):
        desk.reprint(unknown)
    with pytest.raises(CommandRefused, match="not a payout"):
        desk.reprint(refusal["event_id"])
    assert printer.printed == []


def test_reprint_of_a_receipt_still_pending_settles_it(setup):
    """A marked copy stands in for the original, so no unmarked one follows it later."""
    desk, printer, ledger, *_ = setup
    printer.online = False
    event = pay(ledger, HID)
    assert desk.handle(event) is False
    assert desk.reprint(event["event_id"]) is False  # still offline: stays pending
    assert [e["event_id"] for e in ledger.pending_receipts()] == [event["event_id"]]
    printer.online = True
    assert desk.reprint(event["event_id"]) is True
    assert ledger.pending_receipts() == [] and desk.retry_pending() == 0
    assert [marked for _, marked in printer.printed] == [True]


class PowerCut(BaseException):
    """The process dies: nothing after it runs (not an error anyone could catch)."""


class DyingPrinter(FlakyPrinter):
    """Loses power after sending part of the next receipt; reads the ledger as it starts."""

    def __init__(self, ledger_path: Path) -> None:
        super().__init__()
        self.ledger_path = ledger_path
        self.seen_status: list[str] = []
        self.cut_off: list[str] = []

    def print_receipt(self, r, *, reprint: bool = False) -> None:
        # Another connection sees what a restart would see: the start must be committed.
        conn = sqlite3.connect(self.ledger_path)
        (status,) = conn.execute(
            "SELECT status FROM receipts WHERE event_id = ?", (r.event_id,)
        ).fetchone()
        conn.close()
        self.seen_status.append(status)
        self.cut_off.append(r.event_id)
        raise PowerCut


def test_power_cut_while_printing_reprints_marked_and_records_the_cut(setup, make_ledger):
    _, _, ledger, identity, tmp = setup
    dying = DyingPrinter(tmp / "ledger.sqlite")
    desk = ReceiptDesk(Config(), dying, ledger, lambda hid: None)
    event = pay(ledger, HID)
    with pytest.raises(PowerCut):
        desk.handle(event)
    assert dying.seen_status == ["printing"]  # on disk before the first byte went out
    ledger.close()

    with make_ledger(tmp / "ledger.sqlite") as reopened:
        printer = FlakyPrinter()
        restarted = ReceiptDesk(Config(), printer, reopened, lambda hid: None)
        assert [e["event_id"] for e in reopened.pending_receipts()] == [event["event_id"]]
        assert restarted.retry_pending() == 1
        [(receipt, marked)] = printer.printed
        assert receipt.event_id == event["event_id"]
        assert marked is True, "a second unmarked original of a cut-off slip"
        state = reopened.receipt_state(event["event_id"])
        assert state.status == "printed" and state.interrupted == 1
        assert reopened.stats()["interrupted_receipts"] == 1
        assert restarted.retry_pending() == 0  # printed once, not again at every retry


def test_a_cut_during_the_reprint_itself_is_counted_again(setup, make_ledger):
    _, _, ledger, identity, tmp = setup
    path = tmp / "ledger.sqlite"
    event = pay(ledger, HID)
    with pytest.raises(PowerCut):  # the original is cut off
        ReceiptDesk(Config(), DyingPrinter(path), ledger, lambda h: None).handle(event)
    ledger.close()
    with make_ledger(path) as second_boot:
        desk = ReceiptDesk(Config(), DyingPrinter(path), second_boot, lambda h: None)
        with pytest.raises(PowerCut):  # and so is the reprint at the next start
            desk.retry_pending()
        assert second_boot.receipt_state(event["event_id"]).interrupted == 1
    with make_ledger(path) as third_boot:
        printer = FlakyPrinter()
        assert ReceiptDesk(Config(), printer, third_boot, lambda h: None).retry_pending() == 1
        assert [marked for _, marked in printer.printed] == [True]
        state = third_boot.receipt_state(event["event_id"])
        assert state.status == "printed" and state.interrupted == 2


def test_refusal_slip_only_when_configured(setup):
    desk, printer, ledger, *_ = setup
    refusal = ledger.record("no_match", household_id=HID, round_id="2026-12", score=0.1)
    assert desk.handle(refusal) is True and printer.refusals == []
    desk.cfg.printer.refusal_slip = True
    assert desk.handle(refusal) is True
    assert printer.refusals[0].outcome == "no_match"
    assert ledger.pending_receipts() == []  # refusals never wait for a printer
