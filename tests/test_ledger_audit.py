"""Audit finds every kind of tampering: edits, deletions, insertions, re-signing, truncation."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest
from support import REF_KEY

from edge.events import canonical, event_hash
from edge.ledger.audit import audit_ledger, read_event_stream
from edge.ledger.verify import verify_events
from edge.privacy import household_ref


@pytest.fixture()
def made(tmp_path, identity, make_ledger, clock):
    """A ledger of 6 events, closed, plus the raw connection an attacker would use."""
    path = tmp_path / "ledger.sqlite"
    clock.step = 1.0  # one second between decisions
    led = make_ledger(path)
    for i in range(6):
        outcome = "accepted" if i % 2 == 0 else "no_match"
        hid = f"KPM-3171-0001-000{i}"
        ref = household_ref(REF_KEY, "2026-12", hid)
        led.record(outcome, household_id=hid, household_ref=ref, round_id="2026-12", amount=300_000)
    led.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for trig in (
        "events_append_only_u",
        "events_append_only_d",
        "payouts_keep_u",
        "payouts_keep_d",
    ):
        conn.execute(f"DROP TRIGGER {trig}")
    yield path, identity, conn
    conn.close()


def body(conn, seq):
    return json.loads(conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0])


def put(conn, seq, ev):
    conn.execute("UPDATE events SET body = ? WHERE seq = ?", (canonical(ev).decode(), seq))


def test_untouched_ledger_passes(made):
    path, ident, _ = made
    report = audit_ledger(path, ident.device_public_pem())
    assert report.ok, report.summary()
    assert report.count == 6 and report.gaps == []


def test_edit_is_a_hash_mismatch(made):
    path, ident, conn = made
    ev = body(conn, 2)
    assert ev["outcome"] == "no_match"
    ev["outcome"] = "accepted"
    put(conn, 2, ev)
    report = audit_ledger(path, ident.device_public_pem())
    assert not report.ok
    assert any("seq 2: hash mismatch" in e for e in report.errors)


def test_edit_with_recomputed_hash_fails_signature_and_chain(made):
    path, ident, conn = made
    ev = body(conn, 2)
    ev["score"] = 0.99
    ev["hash"] = event_hash(ev)
    put(conn, 2, ev)
    errors = audit_ledger(path, ident.device_public_pem()).errors
    assert any("seq 2: bad signature" in e for e in errors)
    assert any("seq 3: chain broken" in e for e in errors)


def test_attacker_resigning_everything_with_own_key_is_caught_with_provisioned_key(
    made, make_identity
):
    path, ident, conn = made
    mallory = make_identity()
    prev = "0" * 64
    for seq in range(1, 7):
        ev = body(conn, seq)
        ev["prev_hash"] = prev
        if seq == 1:
            ev["amount"] = 900_000
        ev.pop("receipt_sig", None)
        ev["hash"] = event_hash(ev)
        ev["sig"] = base64.b64encode(mallory.sign(ev["hash"].encode())).decode()
        put(conn, seq, ev)
        prev = ev["hash"]
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'device_public_pem'",
        (mallory.device_public_pem().decode(),),
    )
    assert audit_ledger(path).ok  # self-consistent under the attacker's key ...
    report = audit_ledger(path, ident.device_public_pem())
    assert not report.ok  # ... but not under the key registered at provisioning
    assert sum("bad signature" in e for e in report.errors) == 6


def test_deleted_event_is_a_gap_and_a_broken_link(made):
    path, ident, conn = made
    conn.execute("DELETE FROM outbox WHERE seq = 4")
    conn.execute("DELETE FROM events WHERE seq = 4")
    report = audit_ledger(path, ident.device_public_pem())
    assert report.gaps == [(4, 4)]
    assert any("seq 5: chain broken" in e for e in report.errors)


def test_deleted_payout_row_is_found(made):
    path, ident, conn = made
    conn.execute("DELETE FROM payouts WHERE household_id = 'KPM-3171-0001-0002'")
    report = audit_ledger(path, ident.device_public_pem())
    assert any("accepted payout missing" in e for e in report.errors)


def test_deleted_newest_events_found_by_head(made):
    path, ident, conn = made
    conn.execute("DELETE FROM payouts WHERE household_id = 'KPM-3171-0001-0004'")
    conn.execute("DELETE FROM outbox WHERE seq >= 5")
    conn.execute("DELETE FROM receipts")
    conn.execute("DELETE FROM events WHERE seq >= 5")
    report = audit_ledger(path, ident.device_public_pem())
    assert (5, 6) in report.gaps
    assert any("events after seq 4 deleted" in e for e in report.errors)


def test_deleted_first_event(made):
    path, ident, conn = made
    conn.execute("DELETE FROM payouts WHERE household_id = 'KPM-3171-0001-0000'")
    conn.execute("DELETE FROM receipts")
    conn.execute("DELETE FROM outbox WHERE seq = 1")
    conn.execute("DELETE FROM events WHERE seq = 1")
    report = audit_ledger(path, ident.device_public_pem())
    assert any("does not start at seq 1" in e for e in report.errors)


def test_forged_receipt_signature_in_event(made):
    path, ident, conn = made
    ev = body(conn, 1)
    ev["amount"] = 900_000
    ev["hash"] = event_hash(ev)
    ev["sig"] = base64.b64encode(ident.sign(ev["hash"].encode())).decode()  # stolen key case
    put(conn, 1, ev)
    errors = audit_ledger(path, ident.device_public_pem()).errors
    assert any("seq 1: bad receipt signature" in e for e in errors)


@pytest.mark.parametrize(
    "field, value",
    [("receipt_sig", "A"), ("receipt_sig", 5), ("household_ref", "h|1"), ("sig", 5)],
)
def test_malformed_signature_fields_are_reported_not_raised(made, field, value):
    path, ident, conn = made
    ev = body(conn, 1)
    ev[field] = value
    if field != "sig":
        ev["hash"] = event_hash(ev)
        ev["sig"] = base64.b64encode(ident.sign(ev["hash"].encode())).decode()
    put(conn, 1, ev)
    report = audit_ledger(path, ident.device_public_pem())
    wanted = "seq 1: bad signature" if field == "sig" else "seq 1: bad receipt signature"
    assert wanted in report.errors


def test_stream_slice_and_swapped_order(made, tmp_path):
    path, ident, conn = made
    events = [body(conn, s) for s in range(1, 7)]
    assert verify_events(events[2:], ident.device_public_pem(), from_genesis=False).ok
    assert not verify_events(events[2:], ident.device_public_pem()).ok
    swapped = [events[0], events[2], events[1], *events[3:]]
    report = verify_events(swapped, ident.device_public_pem())
    assert any("out of order" in e for e in report.errors)
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(json.dumps(e) for e in reversed(events)) + "\n")
    assert verify_events(read_event_stream(stream), ident.device_public_pem()).ok


def test_garbage_key_and_malformed_event(identity):
    report = verify_events([{"seq": 1}], b"not a key")
    assert not report.ok and "device public key" in report.errors[0]
    report = verify_events([{"seq": 1}], identity.device_public_pem())
    assert any("malformed" in e for e in report.errors)
