"""Representatives: a household member enrolled as representative collects with a face match,
so no override is needed. End to end: roster CSV -> signed, encrypted bundle -> installed ->
the payout flow on real QR codes -> the ledger event and the printed receipt."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from escpos_decode import decode
from support import REF_KEY
from test_flow import PEOPLE, FakeEngine, FakeLiveness, face_frame
from test_override import card, feed

from edge.config import Config
from edge.config.devices import PrinterConfig
from edge.devices.printer import make_printer
from edge.enrolment.bundle import BundleSpec, build_bundle
from edge.enrolment.roster import enrol, read_csv
from edge.enrolment.store import BundleStore
from edge.payout.claim import encode_claim
from edge.payout.decision import Outcome
from edge.payout.flow import PayoutFlow
from edge.payout.receipts import ReceiptDesk

ROUND = "2026-12"
GRANDMA, GRANDSON, NEIGHBOUR = 10, 30, 20  # who is in a photo or frame (test_flow's people)
HH_A, HH_C = "3171000000000011", "3171000000000013"


@pytest.fixture
def pilot(tmp_path, central_key, central_pem, identity, ledger, clock):
    """A roster with a representative, enrolled, signed, installed, and a flow over it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, who in (("grandma", GRANDMA), ("grandson", GRANDSON), ("neighbour", NEIGHBOUR)):
        np.save(photos / f"{name}.npy", np.array([who]))
        (photos / f"{name}.png").write_bytes(b"stand-in")  # load() below reads the .npy
    rows = [
        ["household_id", "member_id", "role", "name", "regency", "photos"],
        [HH_A, "M1", "recipient", "Siti Aminah", "3171", "grandma.png"],
        [HH_A, "M2", "representative", "Budi Santoso", "3171", "grandson.png"],
        # A recipient who cannot come and has no usable photo: the representative only.
        [HH_C, "M1", "recipient", "Agus Salim", "3171", "missing.png"],
        [HH_C, "M2", "representative", "Rina Wati", "3171", "neighbour.png"],
    ]
    with open(tmp_path / "roster.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    read, invalid = read_csv(tmp_path / "roster.csv")
    assert not invalid
    result = enrol(
        read,
        photos,
        lambda rgb: (PEOPLE[int(rgb[0, 0, 0])], "ok"),
        amount=300_000,
        duplicate_threshold=0.7,
        default_regency="3171",
        load=lambda path: np.full((4, 4, 3), int(np.load(path.with_suffix(".npy"))[0]), np.uint8),
    )
    now = datetime.fromtimestamp(clock(), UTC)
    spec = BundleSpec(
        "edge-test-0001", ROUND, "Balai Desa", "3171", FakeEngine.model_id, "0" * 64,
        now - timedelta(hours=1), now + timedelta(days=30), ref_key=REF_KEY,
    )  # fmt: skip
    blob = build_bundle(
        spec,
        result.households,
        result.labels,
        result.matrix,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
    )
    store = BundleStore(
        tmp_path / "state", central_pem, identity, FakeEngine.model_id, "0" * 64, clock=clock
    )
    bundle = store.install(blob)
    cfg = Config()
    cfg.flow.good_frames, cfg.liveness.min_frames = 3, 3
    flow = PayoutFlow(cfg, FakeEngine(), store.current, ledger, FakeLiveness(), clock=clock)
    return SimpleNamespace(flow=flow, clock=clock, ledger=ledger, bundle=bundle, cfg=cfg)


def claim(pilot, household, who):
    pilot.clock.advance(10)  # past the cool-down of the last letter
    return feed(pilot, [card(encode_claim(household, ROUND))] + [face_frame(who)] * 3)


def test_the_bundle_carries_the_representative(pilot):
    roles = {m.member_id: m.role for m in pilot.bundle.households[HH_A].members}
    assert roles == {"M1": "recipient", "M2": "representative"}
    labels, _ = pilot.bundle.templates()
    assert f"{HH_A}/M2" in labels and f"{HH_C}/M2" in labels and f"{HH_C}/M1" not in labels


def test_a_representative_collects_without_an_override(pilot):
    [paid] = claim(pilot, HH_A, GRANDSON)
    assert paid.outcome is Outcome.ACCEPTED and paid.amount == 300_000
    assert paid.reason == "verified (representative)"
    assert paid.event["extra"] == {"collected_by": "representative"}
    [twice] = claim(pilot, HH_A, GRANDMA)  # the recipient comes too: one payout per household
    assert twice.outcome is Outcome.ALREADY_PAID
    printer = make_printer(PrinterConfig(kind="dummy"), "unused")
    ReceiptDesk(pilot.cfg, printer, pilot.ledger, lambda hid: "SITI A***").handle(paid.event)
    texts = decode(printer.transport.output).texts
    assert "Oleh    : PERWAKILAN KELUARGA" in texts and "PENGECUALIAN DIAWASI" not in texts


def test_the_recipient_collects_as_before_and_strangers_do_not(pilot):
    [paid] = claim(pilot, HH_A, GRANDMA)
    assert paid.outcome is Outcome.ACCEPTED and "extra" not in paid.event
    [refused] = claim(pilot, HH_C, GRANDSON)  # A's representative is nobody of C's
    assert refused.outcome is Outcome.DUPLICATE_FACE


def test_a_household_enrolled_through_its_representative_only(pilot):
    [paid] = claim(pilot, HH_C, NEIGHBOUR)
    assert paid.outcome is Outcome.ACCEPTED
    assert paid.event["extra"] == {"collected_by": "representative"}
