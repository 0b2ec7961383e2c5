"""What leaves the terminal names a household only by its reference of the round.

Bundles carry the round's reference key encrypted; central keeps the key per regency and
round and a manifest that maps references back; events on the wire, the receipt QR and claims
sync use the reference; the paper shows the masked id; logs never echo an input value.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
from datetime import timedelta

import pytest
from support import REF_KEY, pay
from test_bundle import MODEL, NOW, households, make, store, templates

from edge.config import Config
from edge.enrolment.bundle import BundleSpec, build_bundle
from edge.enrolment.refkeys import MANIFEST_FORMAT, manifest, ref_key_for, write_manifest
from edge.errors import AlreadyPaid, BundleError
from edge.events import canonical, event_hash, receipt_payload
from edge.mqtt.claims import ClaimsSync
from edge.mqtt.client import BrokerSettings
from edge.mqtt.consumer import Consumer, DeviceRegistry
from edge.mqtt.store import EventStore
from edge.payout.receipts import ReceiptDesk
from edge.privacy import household_ref, mask_id

HID = "KPM-3171-0001-0001"
NIK = "3171014508900042"
NAME = "SITI AMINAH RAHAYU"


# -- the key travels inside the bundle, encrypted ----------------------------------------------


def test_bundle_carries_the_round_key_encrypted(tmp_path, central_key, central_pem, identity):
    central = (central_key, central_pem)
    key = ref_key_for(tmp_path / "ref_keys", "3171", "2026-12")
    blob = make(central, identity, ref_key=key)
    b = store(tmp_path, central, identity).install(blob)
    assert b.ref_key == key
    assert b.household_ref(HID) == household_ref(key, "2026-12", HID)
    # Neither the key nor a reference is readable in the (signed, not secret) bundle body.
    body = base64.b64decode(json.loads(blob)["body"])
    assert base64.b64encode(key) not in body and key not in body
    assert b.household_ref(HID).encode() not in body


def test_a_bundle_without_a_round_key_is_refused(tmp_path, central_key, central_pem, identity):
    blob = make((central_key, central_pem), identity)
    body = json.loads(base64.b64decode(json.loads(blob)["body"]))
    del body["templates"]["ref_key"]
    raw = canonical(body)
    resigned = {
        "format": "bansos.bundle/1",
        "body": base64.b64encode(raw).decode(),
        "sig": base64.b64encode(central_key.sign(raw)).decode(),
    }
    with pytest.raises(BundleError, match="no household reference key"):
        store(tmp_path, (central_key, central_pem), identity).install(json.dumps(resigned).encode())


def test_central_keeps_one_key_per_regency_and_round(tmp_path):
    folder = tmp_path / "ref_keys"
    a = ref_key_for(folder, "3171", "2026-12")
    assert ref_key_for(folder, "3171", "2026-12") == a  # the next build of the round reuses it
    assert len(a) == 32
    assert ref_key_for(folder, "3172", "2026-12") != a
    assert ref_key_for(folder, "3171", "2027-01") != a
    assert stat.S_IMODE((folder / "3171_2026-12.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [
        "3171_2026-12.key",
        "3171_2027-01.key",
        "3172_2026-12.key",
    ]
    with pytest.raises(BundleError):
        ref_key_for(folder, "3171", "../../etc/passwd")


def test_manifest_maps_references_back_to_households(tmp_path, identity, central_key):
    key = ref_key_for(tmp_path, "3171", "2026-12")
    spec = BundleSpec(
        device_id="edge-test-0001",
        round_id="2026-12",
        point_name="Pos",
        regency="3171",
        model_id=MODEL[0],
        model_sha256=MODEL[1],
        valid_from=NOW,
        valid_until=NOW + timedelta(days=30),
        bundle_id="b-7",
        ref_key=key,
    )
    labels, m = templates()
    build_bundle(
        spec,
        households(),
        labels,
        m,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
    )
    doc = manifest(spec, households())
    assert doc["format"] == MANIFEST_FORMAT and doc["bundle_id"] == "b-7"
    assert doc["round_id"] == "2026-12" and doc["regency"] == "3171"
    rows = {h["household_ref"]: h for h in doc["households"]}
    assert rows[household_ref(key, "2026-12", HID)]["household_id"] == HID
    assert set(doc["households"][0]) == {
        "household_id",
        "household_ref",
        "regency",
        "amount",
        "masked_name",
        "members",
    }
    write_manifest(tmp_path / "m.json", doc)
    assert json.loads((tmp_path / "m.json").read_text()) == doc
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o600


# -- what leaves the terminal ------------------------------------------------------------------


def test_event_and_receipt_qr_carry_the_reference_only(ledger):
    ev = pay(ledger, HID)
    wire = canonical(ev)
    assert HID.encode() not in wire and b"0001-0001" not in wire
    assert ev["household_ref"] == household_ref(REF_KEY, "2026-12", HID)
    assert "household_id" not in ev
    qr = receipt_payload(ev)
    assert qr.startswith("BSR2|") and HID not in qr and ev["household_ref"] in qr
    # The terminal itself still knows who it paid: for uniqueness and for the paper.
    assert ledger.household_of(ev["event_id"]) == HID
    assert ledger.is_paid(HID, "2026-12")["event_id"] == ev["event_id"]


def test_receipt_paper_shows_the_masked_id(ledger):
    class Paper:
        enabled = True

    desk = ReceiptDesk(Config(), Paper(), ledger, lambda hid: "S*** A***" if hid == HID else None)
    r = desk.receipt_for(pay(ledger, HID))
    assert r.masked_household == mask_id(HID) == "KPM-3171-****-0001"
    assert r.masked_name == "S*** A***" and HID not in r.qr_payload


def test_claims_sync_matches_by_reference_across_terminals(
    make_ledger, make_identity, tmp_path, registry_of
):
    ids = {d: make_identity() for d in ("edge-a01", "edge-b01")}
    a = make_ledger(tmp_path / "a.sqlite", ids["edge-a01"], "edge-a01", "3171")
    b = make_ledger(tmp_path / "b.sqlite", ids["edge-b01"], "edge-b01", "3171")
    ev = pay(a, HID)
    registry = registry_of({d: ("3171", i) for d, i in ids.items()})
    sync = ClaimsSync(b, "edge-b01", "3171", registry=registry)
    assert sync.handle("bansos/v1/3171/edge-a01/event", canonical(ev)) is True
    ref = household_ref(REF_KEY, "2026-12", HID)
    assert b.is_paid(HID, "2026-12", ref)["device_id"] == "edge-a01"
    # A terminal with another round key (another regency's) would not recognise it.
    assert b.is_paid(HID, "2026-12", household_ref(bytes(32), "2026-12", HID)) is None
    with pytest.raises(AlreadyPaid):
        pay(b, HID)


def test_central_flags_a_double_payout_by_reference(tmp_path, make_ledger, make_identity):
    ids = {d: make_identity() for d in ("edge-a01", "edge-b01")}
    ledgers = [make_ledger(tmp_path / f"{d}.sqlite", i, d, "3171") for d, i in ids.items()]
    events = [pay(led, HID) for led in ledgers]  # paid at both while cut off from each other
    central = EventStore(tmp_path / "central.sqlite")
    registry = DeviceRegistry(keys={d: i.device_public_pem() for d, i in ids.items()})
    consumer = Consumer(BrokerSettings(tls=False), central, registry)
    try:
        for ev in events:
            assert consumer.handle(f"bansos/v1/3171/{ev['device_id']}/event", canonical(ev))
        [double] = central.anomalies("double_payout")
        assert double["event_id"] == events[1]["event_id"]
    finally:
        central.close()


# -- logs never echo input values --------------------------------------------------------------


def _poisoned(ev: dict) -> list[dict]:
    """Events whose fields carry a household id, a NIK and a name where they do not belong."""
    out = []
    for field, value in (
        ("household_ref", NIK),
        ("household_ref", HID),
        ("round_id", NAME * 5),
        ("device_id", f"x-{NIK}"),
        ("model_id", NAME * 10),
        ("household_id", HID),
        ("note", NAME),
        ("outcome", NIK),
        ("amount", NIK),
    ):
        bad = {**ev, field: value}
        bad["hash"] = event_hash(bad)
        out.append(bad)
    return out


def test_bad_inputs_never_reach_the_logs(tmp_path, make_ledger, make_identity, caplog, registry_of):
    caplog.set_level(logging.DEBUG)
    ids = {d: make_identity() for d in ("edge-a01", "edge-b01")}
    a = make_ledger(tmp_path / "a.sqlite", ids["edge-a01"], "edge-a01", "3171")
    b = make_ledger(tmp_path / "b.sqlite", ids["edge-b01"], "edge-b01", "3171")
    ev = pay(a, HID)
    sync = ClaimsSync(
        b, "edge-b01", "3171", registry=registry_of({d: ("3171", i) for d, i in ids.items()})
    )
    central = EventStore(tmp_path / "central.sqlite")
    registry = DeviceRegistry(keys={d: i.device_public_pem() for d, i in ids.items()})
    consumer = Consumer(BrokerSettings(tls=False), central, registry)
    try:
        topic = "bansos/v1/3171/edge-a01/event"
        for bad in _poisoned(ev):
            payload = canonical(bad)
            assert sync.handle(topic, payload) is False
            assert consumer.handle(topic, payload).startswith("rejected")
        # Refusals on the terminal name the household masked, never in full.
        b.record("no_match", household_id=NIK, round_id="2026-12", score=0.1)
        b.record("spoof", household_id=HID, round_id="2026-12")
    finally:
        central.close()
    text = caplog.text
    assert sync.rejected == len(_poisoned(ev)) and consumer.rejected == len(_poisoned(ev))
    assert "rejected" in text  # the refusals were logged ...
    for secret in (NIK, HID, NAME, NIK[4:12], "0001-0001"):
        assert secret not in text, secret  # ... without what was sent
