"""The rules of a signed event: one list of outcomes everywhere, stable bytes, intact checks."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from support import REF_KEY, T0

from edge.devices.receipt import REFUSAL_WORDS, Receipt, Refusal, render_text
from edge.errors import LedgerError
from edge.events import (
    CLOCK_FLOOR,
    OUTCOMES,
    PAYOUT_OUTCOMES,
    SCHEMA,
    canonical,
    check_event,
    event_hash,
    iso_utc,
    parse_iso_utc,
    receipt_signature_ok,
    sign_receipt,
    signature_ok,
)
from edge.keys import DeviceIdentity, load_ed25519_public
from edge.mqtt.schemas import schema, validate
from edge.ops.health import ClockGuard
from edge.payout.decision import Outcome
from edge.privacy import household_ref


def signed(ident: DeviceIdentity, **fields) -> dict:
    """A schema-valid payout event sealed as the ledger seals one: receipt_sig, hash, sig."""
    event = {
        "schema": SCHEMA,
        "event_id": "5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15",
        "device_id": "edge-test-0001",
        "regency": "3171",
        "boot_session": "0c6f3a7e-1d2b-4c5a-8e9f-123456789abc",
        "seq": 7,
        "ts": iso_utc(T0),
        "kind": "decision",
        "outcome": "accepted",
        "household_ref": household_ref(REF_KEY, "2026-12", "KPM-3171-0001-0001"),
        "round_id": "2026-12",
        "amount": 300_000,
        "score": 0.8123,
        "threshold": 0.5,
        "liveness": 0.97,
        "model_id": None,
        "bundle_id": None,
        "prev_hash": "0" * 64,
        **fields,
    }
    event["receipt_sig"] = sign_receipt(event, ident.sign)
    event["hash"] = event_hash(event)
    event["sig"] = base64.b64encode(ident.sign(event["hash"].encode())).decode()
    return event


# -- one list of outcomes -----------------------------------------------------------------------


def test_schema_flow_ledger_and_slips_list_the_same_outcomes():
    [enum] = [
        alt["enum"] for alt in schema("event")["properties"]["outcome"]["oneOf"] if "enum" in alt
    ]
    assert tuple(enum) == OUTCOMES
    assert tuple(o.value for o in Outcome) == OUTCOMES
    # An accepted payout gets the payout receipt; every refusal has its own words on the slip.
    assert set(REFUSAL_WORDS) == set(OUTCOMES) - set(PAYOUT_OUTCOMES)


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_every_outcome_prints_its_own_words(outcome):
    when = datetime(2026, 11, 30, tzinfo=UTC)
    if outcome in PAYOUT_OUTCOMES:
        slip = Receipt("Pos", "edge-test-0001", when, "2026-12", "S***", "KPM-****", 1, "e", "q")
        assert "BUKTI PENYALURAN BANSOS" in render_text(slip)
        return
    text = render_text(Refusal("Pos", "edge-test-0001", when, outcome, "e"))
    words, reason = REFUSAL_WORDS[outcome]
    assert words in text and "DITOLAK" not in text  # not the fallback for an unknown outcome
    assert reason.split()[0] in text


# -- canonical form and hash --------------------------------------------------------------------


def test_canonical_form_is_stable_bytes():
    a = {"seq": 1, "amount": 300000, "note": "Jalan Kebon Sirih Nº 5", "score": 0.8123, "x": None}
    b = dict(reversed(list(a.items())))
    expected = (
        '{"amount":300000,"note":"Jalan Kebon Sirih Nº 5","score":0.8123,"seq":1,"x":null}'
    ).encode()
    assert canonical(a) == canonical(b) == expected  # sorted, no spaces, UTF-8 not \\u escapes


def test_event_hash_is_pinned_and_leaves_out_hash_and_sig():
    ev = {
        "schema": SCHEMA,
        "event_id": "00000000-0000-4000-8000-000000000001",
        "seq": 1,
        "ts": "2026-11-29T08:13:20.000Z",
        "outcome": "accepted",
        "household_id": "KPM-1",
        "amount": 300000,
        "score": 0.8123,
        "note": "Jalan Kebon Sirih Nº 5",
    }
    # Central recomputes this in another language: the value must never drift.
    pinned = "0140f878e5530c242e71ab648612cee5b75137f5a88e90c93a143b5cfd0095fe"
    assert event_hash(ev) == pinned == hashlib.sha256(canonical(ev)).hexdigest()
    assert event_hash({**ev, "hash": "ab" * 32, "sig": "x"}) == pinned
    assert event_hash({**ev, "amount": 300001}) != pinned
    assert event_hash({**ev, "receipt_sig": "x"}) != pinned  # the receipt signature is covered


# -- time -----------------------------------------------------------------------------------------


def test_time_format_keeps_each_wire_format():
    assert iso_utc(T0) == "2026-11-30T00:53:20.000Z"  # events, commands, health messages
    assert iso_utc(T0 + 0.9999) == "2026-11-30T00:53:20.999Z"  # truncated, never rounded up
    assert iso_utc(0.0009) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(T0 + 0.5, "seconds") == "2026-11-30T00:53:20Z"  # bundles, clock readings
    wib = datetime(2026, 11, 30, 7, 53, 20, tzinfo=timezone(timedelta(hours=7)))
    assert iso_utc(wib, "seconds") == "2026-11-30T00:53:20Z"


def test_time_round_trip():
    for t in (T0, T0 + 0.123, CLOCK_FLOOR):
        back = parse_iso_utc(iso_utc(t))
        assert back.tzinfo is not None and back.timestamp() == pytest.approx(t, abs=1e-3)
        assert iso_utc(back) == iso_utc(t)
    assert parse_iso_utc("2026-11-30T00:53:20") == datetime(2026, 11, 30, 0, 53, 20, tzinfo=UTC)
    assert parse_iso_utc("2026-11-30T07:53:20+07:00").timestamp() == T0
    with pytest.raises(ValueError):
        parse_iso_utc("30/11/2026")


# -- signatures -----------------------------------------------------------------------------------


def test_an_intact_event_passes_with_a_pem_or_a_key(identity):
    ev = signed(identity)
    validate("event", ev)  # the same event the MQTT contract carries
    pem = identity.device_public_pem()
    assert check_event(ev, pem) is None and check_event(ev, pem.decode()) is None
    key = load_ed25519_public(pem)
    assert signature_ok(ev, key) and receipt_signature_ok(ev, key)


def test_a_tampered_event_is_refused(identity, make_identity):
    ev = signed(identity)
    pem = identity.device_public_pem()
    edited = {**ev, "amount": 3_000_000}
    assert check_event(edited, pem) == "hash does not match the event"
    assert check_event(edited, None) == "hash does not match the event"  # no key: hash only
    rehashed = {**edited, "hash": event_hash(edited)}
    assert check_event(rehashed, None) is None
    assert check_event(rehashed, pem) == "bad signature"
    other = make_identity().device_public_pem()
    assert check_event(ev, other) == "bad signature"
    assert not receipt_signature_ok(ev, other)
    assert not receipt_signature_ok(rehashed, pem)  # amount changed under the receipt signature


@pytest.mark.parametrize(
    "field, value",
    [("sig", "not base64!"), ("sig", 5), ("sig", None), ("receipt_sig", "A"), ("receipt_sig", 5)],
)
def test_a_malformed_signature_is_false_not_an_exception(identity, field, value):
    ev = {**signed(identity), field: value}
    pem = identity.device_public_pem()
    if field == "sig":
        assert not signature_ok(ev, pem) and check_event(ev, pem) == "bad signature"
    else:
        assert not receipt_signature_ok(ev, pem)


def test_an_unusable_key_is_a_bad_signature_not_an_exception(identity):
    ev = signed(identity)
    assert check_event(ev, b"-----BEGIN PUBLIC KEY-----\nnope\n") == "bad signature"
    assert not receipt_signature_ok(ev, b"junk")
    assert not receipt_signature_ok({**ev, "household_ref": "h|1"}, identity.device_public_pem())


# -- one clock floor -----------------------------------------------------------------------------


def test_ledger_and_clock_guard_share_one_floor(tmp_path, clock, ledger):
    assert iso_utc(CLOCK_FLOOR, "seconds") == "2025-01-01T00:00:00Z"
    clock.set(CLOCK_FLOOR - 1)  # a Pi that booted without RTC, one second short of the floor
    guard = ClockGuard(tmp_path, clock=clock, sync_flag=tmp_path / "no-flag")
    assert not guard.check().ok
    with pytest.raises(LedgerError, match="before 2025-01-01"):
        ledger.record("no_face")
    clock.set(CLOCK_FLOOR)
    assert guard.check().ok
    assert ledger.record("no_face")["ts"] == "2025-01-01T00:00:00.000Z"


def test_head_checkpoint_verifies_only_for_its_device_and_values(identity):
    from edge.events import check_head, sign_head

    head = sign_head("edge-a", 7, "ab" * 32, "2026-12-01T08:00:00.000Z", identity.sign)
    pem = identity.device_public_pem()
    assert check_head(head, "edge-a", pem) is None
    assert check_head(head, "edge-b", pem) == "head signature does not verify"
    assert check_head({**head, "seq": 6}, "edge-a", pem) == "head signature does not verify"
    assert check_head({**head, "seq": True}, "edge-a", pem) is not None
    assert check_head({**head, "extra": 1}, "edge-a", pem) is not None
    other = DeviceIdentity.generate()
    assert check_head(head, "edge-a", other.device_public_pem()) is not None
