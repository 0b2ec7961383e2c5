"""Ledger: durable payouts, no double payout, signed hash chain, outbox, receipts, audit."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from support import REF_KEY, pay

from edge.errors import AlreadyPaid, LedgerError
from edge.events import GENESIS, event_hash, receipt_payload, verify_receipt_payload
from edge.ledger.audit import audit_ledger, read_events
from edge.ledger.schema import RECEIPTS_COLUMNS, SCHEMA_SQL, ReceiptState
from edge.ledger.verify import verify_events
from edge.privacy import household_ref


def test_accepted_event_fields_and_signature(ledger, identity):
    ev = pay(ledger)
    assert ev["schema"] == "bansos.event/1"
    assert ev["seq"] == 1 and ev["prev_hash"] == GENESIS
    assert ev["device_id"] == "edge-test-0001" and ev["regency"] == "3171"
    assert ev["boot_session"] == ledger.boot_session
    assert ev["ts"].startswith("2026-11-30T") and ev["ts"].endswith("Z")
    assert ev["score"] == 0.8123 and ev["amount"] == 300_000
    assert ev["hash"] == event_hash(ev)
    report = verify_events([ev], identity.device_public_pem())
    assert report.ok, report.errors


def test_double_payout_refused_and_nothing_written(ledger):
    first = pay(ledger)
    with pytest.raises(AlreadyPaid) as info:
        pay(ledger)
    assert info.value.paid["event_id"] == first["event_id"]
    assert info.value.paid["where"] == "local"
    assert "KPM-3171-****-0001" in str(info.value)
    assert [e["seq"] for e in ledger.events()] == [1]
    assert ledger.outbox_depth() == 1
    # Another round, or another household, is a new payout.
    pay(ledger, round_id="2027-01")
    pay(ledger, "KPM-3171-0001-0002")
    assert ledger.stats()["payouts"] == 3


def test_payouts_unique_constraint_holds_even_bypassing_the_code(ledger, tmp_path):
    pay(ledger)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO payouts VALUES ('KPM-3171-0001-0001', '2026-12', 'x', 1, 't')")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.close()


def test_refusals_recorded_without_payout(ledger):
    ev = ledger.record(
        "no_match",
        household_id="KPM-3171-0001-0001",
        round_id="2026-12",
        amount=300_000,
        score=0.2,
        threshold=0.6,
    )
    assert ev["amount"] is None  # amount belongs to accepted payouts only
    assert "receipt_sig" not in ev
    assert ledger.is_paid("KPM-3171-0001-0001", "2026-12") is None
    ledger.record("bad_qr")
    assert ledger.outbox_depth() == 2
    with pytest.raises(ValueError):
        ledger.record("maybe")
    with pytest.raises(ValueError):
        ledger.record("accepted", household_id="KPM-3171-0001-0001")


def test_chain_across_reopen_and_boot_sessions(tmp_path, identity, make_ledger, clock):
    path = tmp_path / "l.sqlite"
    a = make_ledger(path)
    pay(a)
    a.record("no_face")
    a.close()
    clock.advance(100)
    b = make_ledger(path)
    assert b.boot_session != a.boot_session
    ev = b.record("spoof", household_id="KPM-3171-0001-0003", round_id="2026-12")
    events = list(b.events())
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert ev["prev_hash"] == events[1]["hash"]
    report = verify_events(events, identity.device_public_pem())
    assert report.ok and report.count == 3 and report.boot_sessions == 2
    b.close()


def test_ledger_refuses_other_device_or_key(tmp_path, make_ledger, make_identity):
    path = tmp_path / "l.sqlite"
    make_ledger(path).close()
    with pytest.raises(LedgerError, match="belongs to device"):
        make_ledger(path, device_id="edge-test-0002")
    with pytest.raises(LedgerError, match="another device key"):
        make_ledger(path, identity=make_identity())


def test_clock_before_the_floor_refused(ledger, clock):
    clock.set(86_400.0)  # 1970: Pi booted without RTC or NTP
    with pytest.raises(LedgerError, match="before 2025-01-01"):
        pay(ledger)
    assert list(ledger.events()) == []


def test_outbox_order_and_mark_sent(ledger):
    for i in range(5):
        ledger.record("no_match", household_id=f"KPM-3171-0001-000{i}", round_id="2026-12")
    items = ledger.outbox(limit=3)
    assert [i.seq for i in items] == [1, 2, 3]
    payload = json.loads(items[0].payload)
    assert payload["event_id"] == items[0].event_id and payload["hash"] == event_hash(payload)
    ledger.mark_sent(items[0].event_id)
    ledger.mark_sent(items[0].event_id)  # a duplicate PUBACK changes nothing
    ledger.mark_sent(items[2].event_id)
    assert [i.seq for i in ledger.outbox()] == [2, 4, 5]
    assert ledger.outbox_depth() == 3


def test_receipts_pending_until_printed(ledger):
    ev = pay(ledger)
    ev2 = pay(ledger, "KPM-3171-0001-0002")
    ref = ledger.record("no_match")
    assert [e["event_id"] for e in ledger.pending_receipts()] == [ev["event_id"], ev2["event_id"]]
    ledger.set_receipt(ev["event_id"], "printed")
    assert [e["event_id"] for e in ledger.pending_receipts()] == [ev2["event_id"]]
    ledger.set_receipt(ref["event_id"], "pending")  # a refusal slip waiting for paper
    assert len(ledger.pending_receipts()) == 2
    with pytest.raises(ValueError):
        ledger.set_receipt(ev["event_id"], "lost")
    with pytest.raises(LedgerError):
        ledger.set_receipt("no-such-event", "printed")


def test_remote_payouts_block_local_payout(ledger):
    remote = {
        "event_id": "0b8c1f5e-0000-4000-8000-000000000001",
        "device_id": "edge-other-0002",
        "outcome": "accepted",
        "household_ref": household_ref(REF_KEY, "2026-12", "KPM-3171-0001-0009"),
        "round_id": "2026-12",
        "ts": "2026-11-30T01:00:00.000Z",
    }
    assert ledger.record_remote_payout(remote) is True
    assert ledger.record_remote_payout(remote) is False
    ref = remote["household_ref"]
    # Another terminal's payout is known by its reference only: without it, it is not seen.
    assert ledger.is_paid("KPM-3171-0001-0009", "2026-12") is None
    paid = ledger.is_paid("KPM-3171-0001-0009", "2026-12", ref)
    assert paid["where"] == "remote" and paid["device_id"] == "edge-other-0002"
    with pytest.raises(AlreadyPaid, match="edge-other-0002"):
        pay(ledger, "KPM-3171-0001-0009")
    own = pay(ledger)
    assert ledger.record_remote_payout(own) is False  # our own payout echoed back
    with pytest.raises(LedgerError):
        ledger.record_remote_payout({**remote, "event_id": "x", "outcome": "no_match"})


def test_concurrent_threads_cannot_double_pay(ledger):
    results: list[str] = []

    def worker():
        try:
            pay(ledger, "KPM-3171-0001-0077")
            results.append("paid")
        except AlreadyPaid:
            results.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["paid"] + ["refused"] * 7


def test_two_connections_cannot_double_pay(tmp_path, make_ledger):
    path = tmp_path / "l.sqlite"
    a = make_ledger(path)
    b = make_ledger(path)
    pay(a)
    with pytest.raises(AlreadyPaid):
        pay(b)
    b.record("no_face")
    assert [e["seq"] for e in a.events()] == [1, 2]
    a.close()
    b.close()


def test_receipt_payload_verifies_offline_and_is_small(ledger, identity, make_identity):
    ev = pay(ledger)
    text = receipt_payload(ev)
    assert len(text) < 260
    fields = verify_receipt_payload(text, identity.device_public_pem())
    assert fields["event_id"] == ev["event_id"]
    assert fields["household_ref"] == ev["household_ref"]
    assert fields["household_ref"] == household_ref(REF_KEY, "2026-12", "KPM-3171-0001-0001")
    assert "KPM" not in text  # the QR names the household by its reference only
    assert fields["amount"] == 300_000 and fields["seq"] == 1
    forged = text.replace("|300000|", "|900000|")
    with pytest.raises(LedgerError, match="does not verify"):
        verify_receipt_payload(forged, identity.device_public_pem())
    with pytest.raises(LedgerError, match="does not verify"):
        verify_receipt_payload(text, make_identity().device_public_pem())
    with pytest.raises(LedgerError, match="not a bansos receipt"):
        verify_receipt_payload("hello", identity.device_public_pem())
    with pytest.raises(LedgerError):
        receipt_payload(ledger.record("no_face"))


def test_receipt_payload_fits_a_qr_for_58mm_paper(ledger):
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(receipt_payload(pay(ledger)))
    qr.make(fit=True)
    # 384 dots across 58 mm paper: version <= 12 (65 modules + quiet zone) gives >= 4 dots each.
    assert qr.version <= 12


def test_audit_clean_ledger(ledger, identity, make_identity, tmp_path):
    pay(ledger)
    ledger.record("no_match")
    pay(ledger, "KPM-3171-0001-0002")
    report = audit_ledger(tmp_path / "ledger.sqlite", identity.device_public_pem())
    assert report.ok, report.summary()
    assert report.count == 3 and report.outcomes == {"accepted": 2, "no_match": 1}
    stored = audit_ledger(tmp_path / "ledger.sqlite")
    assert stored.ok and stored.warnings
    other = audit_ledger(tmp_path / "ledger.sqlite", make_identity().device_public_pem())
    assert not other.ok


def test_no_templates_or_names_in_ledger(ledger, tmp_path):
    pay(ledger, "KPM-3171-0001-0001")
    ledger.close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "events", "payouts", "remote_payouts", "outbox", "receipts"}
    cols = {
        c[1]
        for t in tables
        for c in conn.execute(f"PRAGMA table_info({t})")  # noqa: S608 - fixed table names
    }
    assert not cols & {"embedding", "template", "name", "nik", "image"}
    conn.close()


def test_read_events_matches_ledger(ledger, tmp_path):
    pay(ledger)
    ledger.record("no_face")
    assert list(read_events(tmp_path / "ledger.sqlite")) == list(ledger.events())


def test_events_match_the_published_json_schema(ledger):
    import jsonschema

    from edge.config.base import PROJECT_ROOT

    schema_path = PROJECT_ROOT / "edge" / "schemas" / "event.v1.json"
    # The schema ships in the package: without it the install is broken, not the test moot.
    assert schema_path.is_file(), f"packaged event schema missing: {schema_path}"
    schema = json.loads(schema_path.read_text())
    pay(ledger)
    ledger.record("no_face")
    ledger.record("bad_qr", extra={"reason": "foreign code"})
    ledger.record("no_match", household_id="KPM-3171-0001-0002", round_id="2026-12", score=0.1)
    for item in ledger.outbox():
        jsonschema.validate(json.loads(item.payload), schema)


# The receipts table as the first release wrote it (ledger layout 1, no ledger_version in meta).
V1_RECEIPTS = """CREATE TABLE receipts (
    event_id TEXT PRIMARY KEY REFERENCES events (event_id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'printed')),
    updated TEXT NOT NULL
)"""


def make_layout_1(path) -> None:
    """Turn a ledger file back into layout 1, rows kept, as an older terminal would hold it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    rows = conn.execute("SELECT event_id, status, updated FROM receipts").fetchall()
    conn.execute("DROP TABLE receipts")
    conn.execute(V1_RECEIPTS)
    conn.executemany("INSERT INTO receipts VALUES (?, ?, ?)", rows)
    conn.execute("DELETE FROM meta WHERE key = 'ledger_version'")
    conn.execute("COMMIT")
    conn.close()


def receipts_sql(path) -> str:
    conn = sqlite3.connect(path)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'receipts'").fetchone()
    conn.close()
    return sql


def test_receipt_printing_state_and_cut_off_count(ledger):
    ev = pay(ledger)
    assert ledger.receipt_state(ev["event_id"]).status == "pending"
    ledger.set_receipt(ev["event_id"], "printing")
    assert ledger.pending_receipts() == [ev]  # not printed yet: still to print
    state = ledger.note_interrupted(ev["event_id"])
    assert (state.status, state.interrupted) == ("pending", 1)
    assert ledger.note_interrupted(ev["event_id"]).interrupted == 1  # only a 'printing' one
    ledger.set_receipt(ev["event_id"], "printed")
    assert ledger.receipt_state(ev["event_id"]).interrupted == 1  # the cut stays on record
    assert ledger.stats()["pending_receipts"] == 0
    assert ledger.stats()["interrupted_receipts"] == 1
    assert ledger.receipt_state(ledger.record("no_face")["event_id"]) is None
    assert ledger.event(ev["event_id"]) == ev and ledger.event("nope") is None


def test_a_layout_1_ledger_is_upgraded_in_place(tmp_path, identity, make_ledger):
    path = tmp_path / "ledger.sqlite"
    with make_ledger(path) as led:
        printed, waiting = pay(led), pay(led, "KPM-3171-0001-0002")
        led.set_receipt(printed["event_id"], "printed")
    make_layout_1(path)
    assert audit_ledger(path, identity.device_public_pem()).ok  # audit reads either layout
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK knows no 'printing'
        conn.execute("UPDATE receipts SET status = 'printing'")
    conn.close()

    with make_ledger(path) as led:
        assert led.receipt_state(printed["event_id"]) == ReceiptState("printed", 0)
        assert led.receipt_state(waiting["event_id"]) == ReceiptState("pending", 0)
        led.set_receipt(waiting["event_id"], "printing")
        assert led.note_interrupted(waiting["event_id"]).interrupted == 1
        pay(led, "KPM-3171-0001-0003")  # new payouts write the new table
    assert "'printing'" in receipts_sql(path) and "interrupted" in receipts_sql(path)
    conn = sqlite3.connect(path)
    assert dict(conn.execute("SELECT key, value FROM meta"))["ledger_version"] == "2"
    (fk_problems,) = conn.execute("SELECT COUNT(*) FROM pragma_foreign_key_check").fetchone()
    conn.close()
    assert fk_problems == 0
    report = audit_ledger(path, identity.device_public_pem())
    assert report.ok, report.summary()
    # Opening again changes nothing: the upgrade runs once.
    make_ledger(path).close()
    assert "interrupted" in receipts_sql(path)


def test_a_failed_upgrade_leaves_the_old_layout_whole(tmp_path, make_ledger):
    path = tmp_path / "ledger.sqlite"
    with make_ledger(path) as led:
        ev = pay(led)
    make_layout_1(path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE receipts_v2 (x)")  # in the way of the rebuild
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="receipts_v2"):
        make_ledger(path)
    assert receipts_sql(path) == V1_RECEIPTS
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT event_id, status FROM receipts").fetchall() == [
        (ev["event_id"], "pending")
    ]
    assert "ledger_version" not in dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()


def test_a_half_made_layout_1_file_is_upgraded_too(tmp_path, make_ledger):
    """An older release cut off after making its tables, before its first commit of meta."""
    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        SCHEMA_SQL.replace(f"CREATE TABLE IF NOT EXISTS receipts {RECEIPTS_COLUMNS}", V1_RECEIPTS)
    )
    conn.close()
    assert receipts_sql(path) == V1_RECEIPTS
    with make_ledger(path) as led:
        ev = pay(led)
        led.set_receipt(ev["event_id"], "printing")
    assert "'printing'" in receipts_sql(path)


def test_a_ledger_from_a_newer_release_is_refused_untouched(tmp_path, make_ledger):
    path = tmp_path / "ledger.sqlite"
    make_ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'ledger_version'")
    conn.commit()
    conn.close()
    before = receipts_sql(path)
    with pytest.raises(LedgerError, match="version 3 is unknown"):
        make_ledger(path)
    assert receipts_sql(path) == before


def test_audit_notes_cut_off_receipts(ledger, identity, tmp_path):
    done, waiting, now = (pay(ledger, f"KPM-3171-0001-000{i}") for i in range(3))
    for ev in (done, waiting, now):
        ledger.set_receipt(ev["event_id"], "printing")
    for ev in (done, waiting):
        ledger.note_interrupted(ev["event_id"])
    ledger.set_receipt(done["event_id"], "printed")
    pay(ledger, "KPM-3171-0001-0009")  # pending, never started: nothing to note
    report = audit_ledger(tmp_path / "ledger.sqlite", identity.device_public_pem())
    assert report.ok  # a cut-off slip is no tampering: noted, not failed
    assert report.warnings == [
        "seq 1: receipt printing cut off 1 time(s); printed again marked CETAK ULANG",
        "seq 2: receipt printing cut off 1 time(s); not printed since",
        "seq 3: receipt printing started, not finished",
    ]
    assert "warning: seq 2: receipt printing cut off" in report.summary()
