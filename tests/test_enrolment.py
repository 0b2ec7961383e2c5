"""Enrolment from CSV + photos: quality refusals, 1:N duplicates, a report without names."""

from __future__ import annotations

import base64
import csv
import json
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from support import REF_KEY

from edge.enrolment.bundle import BundleSpec, build_bundle
from edge.enrolment.roster import enrol, read_csv
from edge.enrolment.store import BundleStore
from edge.errors import EnrolmentError

HEADER = ["household_id", "member_id", "role", "name", "regency", "photos", "amount"]
BASES = np.random.default_rng(7).normal(size=(10, 128)).astype(np.float32)


class FakeEngine:
    """Stands in for FaceEngine: the identity is painted into the image's top-left pixel.

    Red channel of pixel (0, 0) = identity index, green = photo variant (small noise), and an
    image darker than 30 on average has "poor quality". Every call is kept in ``calls``.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, rgb):
        ident, variant = int(rgb[0, 0, 0]), int(rgb[0, 0, 1])
        self.calls.append((ident, variant))
        if rgb.mean() < 30:
            return None, "poor quality: too dark"
        if ident >= len(BASES):
            return None, "no face found"
        noise = np.random.default_rng(variant).normal(scale=0.15, size=128)
        return (BASES[ident] + noise).astype(np.float32), "ok"


def photo(path, ident, variant=0, dark=False):
    img = np.full((64, 64, 3), 10 if dark else 128, np.uint8)
    img[0, 0] = (ident, variant, 0)
    cv2.imwrite(str(path), img[:, :, ::-1])


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)


@pytest.fixture()
def enrolment(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "a1.png", 0, 1)
    photo(photos / "a2.png", 0, 2)
    photo(photos / "b1.png", 1, 1)
    photo(photos / "b2.png", 1, 2, dark=True)
    photo(photos / "c1.png", 2, 1)
    photo(photos / "d1.png", 0, 3)  # household D's recipient is household A's recipient
    photo(photos / "e1.png", 3, 1)
    photo(photos / "e2.png", 3, 2, dark=True)
    photo(photos / "f1.png", 99, 1)  # no face
    (photos / "broken.jpg").write_bytes(b"not an image")
    rows = [
        [
            "KPM-3171-0001-0001",
            "M1",
            "recipient",
            "Siti Aminah Rahayu",
            "3171",
            "a1.png;a2.png",
            "",
        ],
        ["KPM-3171-0001-0001", "M2", "representative", "Budi Santoso", "", "c1.png", ""],
        [
            "KPM-3171-0001-0002",
            "M1",
            "recipient",
            "Dewi Lestari",
            "3172",
            "b1.png;b2.png",
            "450000",
        ],
        ["KPM-3171-0001-0003", "M1", "recipient", "Agus Salim", "3171", "d1.png", ""],
        ["KPM-3171-0001-0004", "M1", "representative", "Rina Wati", "3171", "e1.png;e2.png", ""],
        [
            "KPM-3171-0001-0005",
            "M1",
            "recipient",
            "Joko Widodo",
            "3171",
            "f1.png;broken.jpg;x.png;../a1.png",
            "",
        ],
        ["bad id!", "M1", "recipient", "Nama Salah", "3171", "a1.png", ""],
        ["KPM-3171-0001-0001", "M1", "recipient", "Siti Lagi", "3171", "a1.png", ""],
        ["KPM-3171-0001-0006", "M1", "boss", "Tono", "3171", "a1.png", ""],
        ["KPM-3171-0001-0007", "M1", "recipient", "Tini", "3171", "", ""],
        ["KPM-3171-0001-0008", "M1", "recipient", "Tanu", "31", "a1.png", ""],
        ["KPM-3171-0001-0009", "M1", "recipient", "Tinu", "3171", "a1.png", "-5"],
    ]
    write_csv(tmp_path / "hh.csv", rows)
    return tmp_path, photos, rows


def run(tmp_path, photos, engine=None, progress=None):
    rows, invalid = read_csv(tmp_path / "hh.csv")
    result = enrol(
        rows,
        photos,
        engine or FakeEngine(),
        amount=300_000,
        duplicate_threshold=0.7,
        default_regency="3171",
        progress=progress,
    )
    result.report[:0] = invalid
    return result


def test_invalid_rows_reported(enrolment):
    tmp_path, _, _ = enrolment
    rows, invalid = read_csv(tmp_path / "hh.csv")
    assert len(rows) == 6
    reasons = [r.reason for r in invalid]
    assert len(invalid) == 6 and all(r.status == "invalid" for r in invalid)
    assert any("household id" in r for r in reasons)
    assert "member listed twice" in reasons
    assert any("role must be" in r for r in reasons)
    assert "no photo listed" in reasons
    assert any("regency" in r for r in reasons)
    assert any("amount" in r for r in reasons)


def test_missing_columns(tmp_path):
    (tmp_path / "x.csv").write_text("household_id,name\nKPM-1-2,X\n")
    with pytest.raises(EnrolmentError, match="missing column"):
        read_csv(tmp_path / "x.csv")
    with pytest.raises(EnrolmentError, match="cannot read"):
        read_csv(tmp_path / "nope.csv")


def test_enrol_refuses_poor_and_duplicate_faces(enrolment):
    tmp_path, photos, _ = enrolment
    engine = FakeEngine()
    ticks: list[tuple[int, int]] = []
    result = run(tmp_path, photos, engine, progress=lambda d, t: ticks.append((d, t)))
    by_id = {h.household_id: h for h in result.households}
    assert set(by_id) == {"KPM-3171-0001-0001", "KPM-3171-0001-0002", "KPM-3171-0001-0004"}
    a = by_id["KPM-3171-0001-0001"]
    assert a.masked_name == "SITI A*** R***" and a.amount == 300_000 and a.regency == "3171"
    assert [(m.member_id, m.role) for m in a.members] == [
        ("M1", "recipient"),
        ("M2", "representative"),
    ]
    assert by_id["KPM-3171-0001-0002"].amount == 450_000
    assert by_id["KPM-3171-0001-0002"].regency == "3172"
    assert result.labels == [
        "KPM-3171-0001-0001/M1",
        "KPM-3171-0001-0001/M1",
        "KPM-3171-0001-0001/M2",
        "KPM-3171-0001-0002/M1",
        "KPM-3171-0001-0004/M1",
    ]
    assert result.matrix.shape == (5, 128) and result.matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.matrix, axis=1), 1.0, atol=1e-5)

    lines = [(r.household_id, r.photo, r.status, r.reason) for r in result.report]
    dup = [x for x in lines if x[2] == "duplicate"]
    assert len(dup) == 1 and dup[0][0] == "KPM-3171-0001-0003"
    assert "KPM-3171-0001-0001" in dup[0][3]
    refused = {(x[0], x[1]): x[3] for x in lines if x[2] == "refused"}
    assert refused[("KPM-3171-0001-0002", "#2")] == "poor quality: too dark"
    assert refused[("KPM-3171-0001-0005", "#1")] == "no face found"
    assert refused[("KPM-3171-0001-0005", "#2")] == "not a readable image"
    assert refused[("KPM-3171-0001-0005", "#3")] == "photo file not found"
    assert refused[("KPM-3171-0001-0005", "#4")] == "photo path leaves the photo folder"
    assert refused[("KPM-3171-0001-0005", "-")] == "no usable photo"
    assert any(x[2] == "warning" and x[0] == "KPM-3171-0001-0004" for x in lines)
    # Every readable photo went through the engine once; the progress bar reached the end.
    assert len(engine.calls) == 9
    assert ticks[-1] == (12, 12) and [d for d, _ in ticks] == list(range(1, 13))


def test_report_carries_no_names(enrolment):
    tmp_path, photos, rows = enrolment
    result = run(tmp_path, photos)
    result.write_report_csv(tmp_path / "report.csv")
    text = result.report_text() + (tmp_path / "report.csv").read_text()
    for row in rows:
        for word in row[3].split():
            assert word not in text, "a name leaked into the report"
    assert "a1.png" not in text  # photo file names may contain names too
    assert "enrolled: 3 households, 4 members, 5 templates" in result.report_text()
    assert "duplicates: 1" in result.report_text()


def test_same_person_in_one_household_is_not_a_duplicate(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    photo(photos / "a.png", 4, 1)
    photo(photos / "b.png", 4, 2)
    write_csv(
        tmp_path / "hh.csv",
        [
            ["KPM-3171-0002-0001", "M1", "recipient", "X Y", "3171", "a.png", ""],
            ["KPM-3171-0002-0001", "M2", "representative", "X Y", "3171", "b.png", ""],
        ],
    )
    result = run(tmp_path, photos)
    assert len(result.labels) == 2 and not [r for r in result.report if r.status == "duplicate"]


def test_enrolment_to_installed_bundle(enrolment, central_key, central_pem, identity, clock):
    tmp_path, photos, _ = enrolment
    result = run(tmp_path, photos)
    now = datetime.fromtimestamp(clock(), UTC)
    spec = BundleSpec(
        device_id="edge-test-0001",
        round_id="2026-12",
        point_name="Balai Desa",
        regency="3171",
        model_id="m",
        model_sha256="s",
        valid_from=now - timedelta(hours=1),
        valid_until=now + timedelta(days=30),
        ref_key=REF_KEY,
    )
    blob = build_bundle(
        spec,
        result.households,
        result.labels,
        result.matrix,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
    )
    store = BundleStore(tmp_path / "state", central_pem, identity, "m", "s", clock=clock)
    bundle = store.install(blob)
    labels, matrix = bundle.templates()
    assert labels == result.labels and np.array_equal(matrix, result.matrix)
    assert bundle.households["KPM-3171-0001-0002"].amount == 450_000
    body = base64.b64decode(json.loads(blob)["body"]).decode()
    assert "SITI A*** R***" in body  # only masked names enter the bundle
    assert "Aminah" not in body and "Rahayu" not in body and "Siti" not in body
