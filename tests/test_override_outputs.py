"""What an override leaves behind: LED and buzzer pins, the receipt bytes, the audit, central's
store and claims sync, and the sealed evidence only central can open."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from escpos_decode import decode
from support import DEVICE_ID, REGENCY, ROUND, T0, FakeClock, pay, ref_of, wait_for
from test_flow import H1, H2, make_bundle
from test_override import POLICY, override, refuse
from test_override import rig as rig  # noqa: F401  (fixtures)
from test_override import staff as staff  # noqa: F401

from edge.__main__ import main
from edge.config import Config
from edge.config.devices import PrinterConfig
from edge.devices.printer import make_printer
from edge.devices.signals import GpioSignals, Indicator
from edge.errors import CommandRefused
from edge.ledger.audit import audit_ledger
from edge.ledger.verify import verify_events
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.commands import sign_command
from edge.mqtt.processor import CommandProcessor
from edge.mqtt.schemas import validate
from edge.mqtt.store import EventStore
from edge.payout.decision import Outcome
from edge.payout.evidence import EvidenceStore, generate_evidence_key, open_sealed
from edge.payout.receipts import ReceiptDesk

STAFF = [
    {"staff_id": "PTG-0001", "role": "officer", "badge_id": "badge-0001"},
    {"staff_id": "PTG-0002", "role": "supervisor", "badge_id": "badge-0002"},
]


def override_events(ledger, household=H1, staff=STAFF):
    """A refusal and its override, written by the real ledger."""
    ref = ref_of(household)
    refusal = ledger.record(
        "no_match", household_id=household, household_ref=ref, round_id=ROUND, score=0.31
    )
    block = {
        "staff": staff,
        "reason": "elderly",
        "overrides": refusal["event_id"],
        "refusal": "no_match",
    }
    paid = ledger.record(
        "accepted_override",
        household_id=household,
        household_ref=ref,
        round_id=ROUND,
        amount=300_000,
        score=0.31,
        override=block,
    )
    return refusal, paid


# -- LED and buzzer ---------------------------------------------------------------------------


def test_each_step_lights_and_beeps_on_the_pins(mock_factory):
    signals = GpioSignals(17, 27, 22, 18, pin_factory=mock_factory)
    red, green, blue, buzzer = (mock_factory.pin(n) for n in (17, 27, 22, 18))
    clock = FakeClock(T0)
    indicator = Indicator(signals, cooldown_s=lambda: 0.0, clock=clock)
    try:
        indicator.refresh(busy=False, faults=[], online=True, guide="second")
        # Yellow (red and green, no blue) blinking, and one short beep: badge one was taken.
        assert wait_for(lambda: red.state and green.state and not blue.state)
        assert wait_for(lambda: not red.state and not green.state)
        assert any(s.state for s in buzzer.states)
        buzzer.clear_states()
        indicator.refresh(busy=False, faults=[], online=True, guide="reason")
        assert signals.current == "override_reason"
        assert wait_for(lambda: sum(s.state for s in buzzer.states) >= 2)  # two beeps
        indicator.refresh(busy=False, faults=[], online=True, guide="claim")
        assert wait_for(lambda: blue.state and not red.state)  # yellow and blue in turn
        assert wait_for(lambda: red.state and green.state and not blue.state)
        indicator.outcome("accepted_override")
        assert signals.current == "accepted"
        assert wait_for(lambda: green.state and not red.state and not blue.state)
        indicator.refresh(busy=False, faults=[], online=True, guide=None)
        assert signals.current == "accepted"  # the outcome is held for the recipient
        clock.advance(3.1)
        indicator.refresh(busy=False, faults=[], online=True, guide=None)
        assert signals.current == "ready"
    finally:
        signals.close()


# -- the receipt ------------------------------------------------------------------------------


def test_the_override_receipt_says_so_in_real_escpos_bytes(ledger):
    _, paid = override_events(ledger)
    printer = make_printer(PrinterConfig(kind="dummy"), "unused")
    desk = ReceiptDesk(Config(), printer, ledger, lambda hid: "SITI A***")
    assert desk.handle(paid)
    out = decode(printer.transport.output)
    assert "PENGECUALIAN DIAWASI" in out.texts
    assert "Petugas : ****0001 / ****0002" in out.texts
    assert "Alasan  : LANSIA" in out.texts
    assert "BUKTI PENYALURAN BANSOS" in out.texts and out.cuts == 1
    assert all("PTG-0001" not in t for t in out.texts)  # staff ids are masked
    assert len(out.qr) == 1 and all(len(t) <= 32 for t in out.texts)
    assert ledger.receipt_state(paid["event_id"]).status == "printed"
    printer.transport.clear()
    assert desk.reprint(paid["event_id"])
    again = decode(printer.transport.output)
    assert "** CETAK ULANG **" in again.texts and "PENGECUALIAN DIAWASI" in again.texts


def test_an_ordinary_receipt_has_no_override_mark(ledger):
    paid = pay(ledger)
    printer = make_printer(PrinterConfig(kind="dummy"), "unused")
    ReceiptDesk(Config(), printer, ledger, lambda hid: "S***").handle(paid)
    assert "PENGECUALIAN DIAWASI" not in decode(printer.transport.output).texts


# -- edge audit -------------------------------------------------------------------------------


def test_audit_counts_and_flags_overrides(ledger, identity, capsys):
    override_events(ledger)
    pay(ledger, "3171000000000777")
    report = audit_ledger(ledger.path, identity.device_public_pem())
    assert report.ok, report.summary()
    assert report.overrides == {DEVICE_ID: 1}
    assert report.override_staff == {"PTG-0001": 1, "PTG-0002": 1}
    assert any(
        "FLAG edge-test-0001: overrides are 50% of its payouts" in w for w in report.warnings
    )
    assert main(["audit", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert "overrides: edge-test-0001=1; refused attempts: 0" in out
    assert "overrides by staff: PTG-0001=1, PTG-0002=1" in out


def test_audit_flags_a_busy_staff_member_and_refuses_one_man_overrides(ledger, identity):
    for i in range(4):
        override_events(ledger, f"317100000000010{i}")
    lone = [STAFF[0], STAFF[0]]
    override_events(ledger, "3171000000000200", lone)
    report = audit_ledger(ledger.path, identity.device_public_pem())
    assert any("FLAG staff PTG-0001: 5 overrides on" in w for w in report.warnings)
    assert any("two different staff members" in e for e in report.errors)


def test_audit_refuses_an_override_of_another_households_refusal(ledger, identity):
    refusal, _ = override_events(ledger)
    ledger.record(
        "accepted_override",
        household_id="3171000000000999",
        household_ref=ref_of("3171000000000999"),
        round_id=ROUND,
        amount=1,
        override={
            "staff": STAFF,
            "reason": "elderly",
            "overrides": refusal["event_id"],
            "refusal": "no_match",
        },
    )
    report = verify_events(list(ledger.events()), identity.device_public_pem())
    assert any("another household's refusal" in e for e in report.errors)


# -- central's store and claims sync ----------------------------------------------------------


def test_consumer_store_counts_overrides_per_terminal_and_staff(
    tmp_path, ledger, make_ledger, make_identity, capsys
):
    from edge.cli.mqtt import print_summary

    refusal, paid = override_events(ledger)
    other = make_ledger(tmp_path / "b.sqlite", make_identity(), "edge-test-0002")
    attempt = other.record(
        "override_refused",
        override={"staff": [], "reason": None, "overrides": None, "refusal": None,
                  "refused": "badge expired on 2026-01-01T00:00:00Z"},
    )  # fmt: skip
    double = pay(other, H1)  # the same household paid again elsewhere
    store = EventStore(tmp_path / "central.sqlite")
    try:
        for ev in (refusal, paid, attempt, double):
            validate("event", ev)
            assert store.add(ev)
        assert store.overrides() == {
            "per_device": {DEVICE_ID: 1},
            "per_staff": {"PTG-0001": 1, "PTG-0002": 1},
            "refused": {"edge-test-0002": 1},
        }
        assert [r["count"] for r in store.summary()] == [2]  # overrides are payouts
        assert [a["kind"] for a in store.anomalies()] == ["double_payout"]
        print_summary(store)
    finally:
        store.close()
    out = capsys.readouterr().out
    assert f"OVERRIDES terminal {DEVICE_ID}: 1" in out and "OVERRIDES staff PTG-0002: 1" in out
    assert "OVERRIDES refused edge-test-0002: 1" in out


def test_an_override_elsewhere_is_a_payout_for_claims_sync(
    tmp_path, ledger, make_ledger, make_identity, identity, registry_of
):
    there = make_identity()
    other = make_ledger(tmp_path / "b.sqlite", there, "edge-test-0002")
    _, paid = override_events(other)
    registry = registry_of({DEVICE_ID: (REGENCY, identity), "edge-test-0002": (REGENCY, there)})
    sync = ClaimsSync(ledger, DEVICE_ID, REGENCY, registry=registry)
    assert sync.handle(f"bansos/v1/{REGENCY}/edge-test-0002/event", json.dumps(paid).encode())
    assert ledger.is_paid(H1, ROUND, ref_of(H1))["where"] == "remote"


# -- sealed evidence --------------------------------------------------------------------------


@pytest.fixture
def evidence_key(tmp_path):
    path = tmp_path / "central-evidence.pem"
    public = base64.b64decode(generate_evidence_key(path))
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, x25519.X25519PrivateKey)
    return path, public, private


def test_override_crop_is_sealed_for_central_only(rig, staff, tmp_path, evidence_key, clock):  # noqa: F811
    path, public, private = evidence_key
    store = EvidenceStore(tmp_path / "evidence", retention_days=30, clock=clock)
    rig.override.evidence = store
    rig.bundles.current = replace(
        rig.bundles.current, override_policy=replace(POLICY, evidence_key=public)
    )
    refuse(rig)
    [paid] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert paid.outcome is Outcome.ACCEPTED_OVERRIDE and paid.event["override"]["evidence"]
    event_id = paid.event["event_id"]
    box = store.get(event_id)
    assert set(box) == {"format", "alg", "event_id", "epk", "nonce", "ciphertext", "sealed_at"}
    assert (tmp_path / "evidence" / f"{event_id}.json").stat().st_mode & 0o077 == 0
    jpeg = open_sealed(box, private)
    face = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert face.shape == (112, 112, 3)
    # Another key (the terminal holds none that fits) cannot open it; nor can a moved box.
    with pytest.raises(InvalidTag):
        open_sealed(box, x25519.X25519PrivateKey.generate())
    with pytest.raises(InvalidTag):
        open_sealed({**box, "event_id": paid.event["override"]["overrides"]}, private)
    # Sent only when central asks, with a signed command; answered on the result topic.
    result = store.command({"event_id": event_id})
    assert open_sealed(result["evidence"], private) == jpeg
    # The CLI opens what central received.
    (tmp_path / "box.json").write_text(json.dumps(result))
    assert main(["badge", "open-evidence", "--key", str(path), str(tmp_path / "box.json"),
                 "--out", str(tmp_path / "face.jpg")]) == 0  # fmt: skip
    assert (tmp_path / "face.jpg").read_bytes() == jpeg
    # Past the retention limit it is gone.
    clock.advance(31 * 86400)
    refuse(rig, H2)  # any decision purges
    assert not (tmp_path / "evidence" / f"{event_id}.json").exists()
    assert store.get(event_id) is None and store.purge() == 0
    with pytest.raises(CommandRefused, match="none kept"):
        store.command({"event_id": event_id})


def test_no_evidence_by_default(rig, staff, tmp_path):  # noqa: F811
    assert not rig.override.wants_crop and Config().override.evidence is False
    refuse(rig)
    [paid] = override(rig, staff("PTG-0001"), staff("PTG-0002"))
    assert "evidence" not in paid.event["override"]
    assert not list(tmp_path.rglob("*.jpg")) and not (tmp_path / "evidence").exists()


def test_evidence_command_is_signed_and_answered_on_the_result(
    tmp_path, central_key, central_pem, evidence_key, clock
):
    _, public, private = evidence_key
    store = EvidenceStore(tmp_path / "ev", 30, clock=clock)
    event_id = "5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15"
    assert store.keep(event_id, np.full((112, 112, 3), 90, np.uint8), public)
    proc = CommandProcessor(
        central_pem, DEVICE_ID, tmp_path / "cmd", {"evidence": store.command}, clock=clock
    )
    try:
        ask = sign_command(central_key, DEVICE_ID, "evidence", {"event_id": event_id}, issued_at=T0)
        result = proc.handle(f"bansos/v1/{REGENCY}/{DEVICE_ID}/cmd/evidence", ask)
        validate("command_result", result)
        assert result["ok"] and open_sealed(result["result"]["evidence"], private)
        unknown = sign_command(
            central_key, DEVICE_ID, "evidence", {"event_id": "0" * 8 + event_id[8:]}, issued_at=T0
        )
        refused = proc.handle(f"bansos/v1/{REGENCY}/{DEVICE_ID}/cmd/evidence", unknown)
        assert not refused["ok"] and "none kept" in refused["error"]
        bad = sign_command(central_key, DEVICE_ID, "evidence", {"event_id": "../x"}, issued_at=T0)
        assert not proc.handle(f"bansos/v1/{REGENCY}/{DEVICE_ID}/cmd/evidence", bad)["ok"]
    finally:
        proc.close()
    assert make_bundle().override_policy is None  # the default bundle offers no override


def test_evidence_store_survives_a_bad_folder_and_purges_junk(tmp_path, evidence_key, clock):
    _, public, _ = evidence_key
    crop = np.zeros((112, 112, 3), np.uint8)
    (tmp_path / "taken").write_text("a file where the folder should be")
    blocked = EvidenceStore(tmp_path / "taken", 30, clock=clock)
    assert blocked.keep("5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15", crop, public) is False
    store = EvidenceStore(tmp_path / "ev", 30, clock=clock)
    assert store.keep("5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15", crop, public)
    (tmp_path / "ev" / "0b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15.json").write_text("{not json")
    assert store.purge() == 1  # unreadable: counts as sealed long ago
    assert store.get("5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15") is not None
