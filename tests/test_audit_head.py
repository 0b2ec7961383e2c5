"""Issue 12, point 2, replayed: the newest events deleted and ``head_seq`` set back.

Without a checkpoint from outside the ledger nothing can see it (the audit says so); a signed
head checkpoint the terminal sent earlier (health, status), or a receipt the recipient holds,
catches both the cut and the daemon paying the same household again under the same seq.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from support import DEVICE_ID, pay, ref_of

from edge.__main__ import main
from edge.devices.receipt import COLUMNS, Receipt, render_text
from edge.events import receipt_payload, sign_head
from edge.keys import DevicePublic, write_card
from edge.ledger.audit import audit_ledger, check_receipt, head_problems
from edge.ledger.verify import verify_events

HH1, HH2, HH3 = "KPM-3171-0001-0001", "KPM-3171-0001-0002", "KPM-3171-0001-0003"


@pytest.fixture
def before(tmp_path, identity, make_ledger):
    """A ledger of three events and what left the terminal: a head checkpoint in a health
    message and HH2's receipt."""
    path = tmp_path / "ledger.sqlite"
    with make_ledger(path) as ledger:
        pay(ledger, HH1)
        paid = pay(ledger, HH2)
        ledger.record("no_match", household_id=HH3, round_id="2026-12", score=0.2)
        head = ledger.signed_head()
    health = {"schema": "bansos.health/1", "device_id": DEVICE_ID, "head": head}
    return path, head, health, receipt_payload(paid)


def cut_last_two(path) -> None:
    """What someone with the SD card does: drop the triggers, delete seq 2 and 3, set the
    unsigned head_seq back so the ledger agrees with itself."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        DROP TRIGGER events_append_only_d;
        DROP TRIGGER payouts_keep_d;
        DELETE FROM receipts WHERE event_id IN (SELECT event_id FROM events WHERE seq > 1);
        DELETE FROM payouts WHERE event_id IN (SELECT event_id FROM events WHERE seq > 1);
        DELETE FROM outbox WHERE seq > 1;
        DELETE FROM events WHERE seq > 1;
        UPDATE meta SET value = '1' WHERE key = 'head_seq';
        """
    )
    conn.close()


def test_truncation_is_invisible_without_a_checkpoint_and_caught_with_one(
    before, identity, make_ledger
):
    path, head, _, receipt = before
    pem = identity.device_public_pem()
    assert audit_ledger(path, pem, head=head).ok
    cut_last_two(path)

    alone = audit_ledger(path, pem)
    assert alone.ok  # the finding: the ledger agrees with itself
    assert "deleting the newest events cannot be excluded" in alone.summary()

    report = audit_ledger(path, pem, head=head)
    assert not report.ok
    assert report.errors == [
        f"ledger ends at seq 1, but the device signed a head at seq 3 ({head['ts']}): "
        "the newest events were deleted"
    ]
    card = DevicePublic(DEVICE_ID, identity.device_public_pem(), None)
    record = check_receipt(receipt, device=card)
    by_receipt = audit_ledger(path, pem, receipt=record)
    assert by_receipt.errors == ["the receipt's event (seq 2) is missing from the ledger"]

    # The daemon restarts on the cut ledger and pays HH2 again, under the same seq 2.
    with make_ledger(path) as again:
        repaid = pay(again, HH2)
        again.record("no_match", household_id=HH3, round_id="2026-12", score=0.2)
    assert repaid["seq"] == 2
    assert audit_ledger(path, pem).ok  # still consistent on its own
    forked = audit_ledger(path, pem, head=head)
    assert forked.errors == [
        f"seq 3 differs from the device's signed head of {head['ts']}: the chain was cut back "
        "and written again after that checkpoint (forked)"
    ]
    assert audit_ledger(path, pem, receipt=record).errors == [
        "seq 2 in the ledger is not the event on the receipt: the chain was cut back and "
        "written again after it was printed"
    ]


def test_a_checkpoint_not_signed_by_the_device_proves_nothing(before, identity, rogue_key):
    path, head, _, _ = before
    pem = identity.device_public_pem()
    forged = sign_head(DEVICE_ID, 99, "ab" * 32, head["ts"], rogue_key.sign)
    assert audit_ledger(path, pem, head=forged).errors == [
        "head checkpoint: head signature does not verify"
    ]
    other_device = sign_head("edge-other", head["seq"], head["hash"], head["ts"], identity.sign)
    assert not audit_ledger(path, pem, head=other_device).ok
    assert audit_ledger(path, pem, head={**head, "seq": True}).errors == [
        "head checkpoint: head seq is not a non-negative integer"
    ]


def test_a_stream_is_checked_against_a_checkpoint_too(before, identity, make_ledger):
    path, head, _, _ = before
    with make_ledger(path) as ledger:
        events = list(ledger.events())
    pem = identity.device_public_pem()
    report = verify_events(events[:2], pem)
    head_problems(head, DEVICE_ID, pem, events[:2], report)
    assert report.errors[0].startswith("ledger ends at seq 2, but the device signed a head")
    report = verify_events(events, pem)
    head_problems(head, DEVICE_ID, pem, events, report)
    assert report.ok and report.proven_to == 3


def test_edge_audit_takes_the_head_from_a_health_message(before, tmp_path, identity, capsys):
    path, _, health, receipt = before
    card = tmp_path / "card.json"
    write_card(identity, DEVICE_ID, card)
    msg = tmp_path / "health.json"
    msg.write_text(json.dumps(health))
    assert main(["audit", str(path), "--device-pub", str(card), "--head", str(msg)]) == 0
    assert "whole up to the signed checkpoint at seq 3" in capsys.readouterr().out
    cut_last_two(path)
    assert main(["audit", str(path), "--device-pub", str(card)]) == 0
    assert "cannot be excluded" in capsys.readouterr().out
    head_json = json.dumps(health["head"])
    assert main(["audit", str(path), "--device-pub", str(card), "--head", head_json]) == 1
    assert "the newest events were deleted" in capsys.readouterr().out
    assert main(["audit", str(path), "--device-pub", str(card), "--receipt", receipt]) == 1
    out = capsys.readouterr().out
    assert "receipt valid" in out and "seq 2) is missing from the ledger" in out


def test_the_receipt_prints_where_its_payout_sits_in_the_chain(before, make_ledger):
    path, _, _, _ = before
    with make_ledger(path) as ledger:
        paid = next(e for e in ledger.events() if e.get("household_ref") == ref_of(HH2))
    slip = Receipt.from_event(
        paid, point_name="Pos", masked_name="S*** A***", masked_household="KPM-****", qr_payload="q"
    )
    lines = render_text(slip).splitlines()
    assert all(len(line) <= COLUMNS for line in lines)
    [line] = [line for line in lines if line.startswith("Rantai")]
    assert line.endswith(f"#2 {paid['hash'][:12]}")
