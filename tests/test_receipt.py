"""Receipt layout: text columns, WIB time, rupiah, refusal words, PNG with a readable QR."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.devices.receipt import (
    COLUMNS,
    DOTS,
    REFUSAL_WORDS,
    Receipt,
    Refusal,
    example_receipt,
    format_rupiah,
    format_wib,
    render_text,
)
from edge.devices.receipt_png import render_png


@pytest.mark.parametrize(
    ("amount", "text"),
    [(300000, "Rp 300.000"), (0, "Rp 0"), (1250, "Rp 1.250"), (2400000, "Rp 2.400.000")],
)
def test_rupiah(amount, text):
    assert format_rupiah(amount) == text


def test_wib_is_utc_plus_7_across_midnight():
    assert format_wib("2026-01-31T17:30:00Z") == ("1 Februari 2026", "00:30:00 WIB")
    assert format_wib(datetime(2026, 8, 17, 3, 0, tzinfo=UTC)) == (
        "17 Agustus 2026",
        "10:00:00 WIB",
    )
    assert format_wib(0.0) == ("1 Januari 1970", "07:00:00 WIB")


def test_receipt_text_fits_32_columns_and_carries_every_field():
    r = example_receipt()
    text = render_text(r)
    lines = text.splitlines()
    assert all(len(line) <= COLUMNS for line in lines)
    assert lines[0].strip() == "BUKTI PENYALURAN BANSOS"
    for needle in (
        r.point_name,
        "23 November 2026",
        "10:15:42 WIB",
        r.round_id,
        r.masked_name,
        r.masked_household,
        "Rp 300.000",
        r.device_id,
        "[QR]",
    ):
        assert needle in text, needle
    # the event id wraps but nothing of it is lost
    assert r.event_id in "".join(line.strip() for line in lines)
    assert "CETAK ULANG" not in text and "CETAK ULANG" in render_text(r, reprint=True)


def test_long_values_wrap_instead_of_overflowing():
    r = Receipt(
        point_name="Balai Desa Sukamaju Kecamatan Cibinong Kabupaten Bogor",
        device_id="edge-" + "x" * 50,
        ts="2026-03-01T00:00:00Z",
        round_id="2026-T1",
        masked_name="MUHAMMAD R*** S*** W*** K***",
        masked_household="KPM-3201-****-9999",
        amount=600000,
        event_id="e" * 36,
        qr_payload="p",
    )
    text = render_text(r)
    assert all(len(line) <= COLUMNS for line in text.splitlines())
    assert "Sukamaju" in text and "Bogor" in text
    assert "x" * 20 in text


def test_refusal_slip_words_and_no_personal_data():
    slip = Refusal(
        "Titik Salur Demo", "edge-demo-0001", "2026-11-23T03:00:00Z", "already_paid", "e-9"
    )
    text = render_text(slip)
    assert "SUDAH DIAMBIL" in text and "e-9" in text
    assert "Nama" not in text and "KPM" not in text and "Rp" not in text
    for outcome, (words, _reason) in REFUSAL_WORDS.items():
        assert len(words) <= COLUMNS, outcome
        t = render_text(Refusal("T", "edge-demo-0001", 0.0, outcome, "e"))
        assert words in t
    assert "DITOLAK" in render_text(Refusal("T", "edge-demo-0001", 0.0, "something_new", "e"))


def test_png_is_paper_width_and_its_qr_reads_back(tmp_path):
    r = example_receipt()
    path = render_png(r, tmp_path / "r.png")
    img = Image.open(path)
    assert img.width == DOTS and img.height > 600
    grey = np.asarray(img.convert("L"))
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(grey)
    assert text == r.qr_payload
    # black ink on white paper, with the text area actually drawn
    assert grey[:200].min() == 0 and np.median(grey) == 255


def test_cli_receipt_writes_png_and_text(tmp_path, capsys):
    from edge.__main__ import main

    out = tmp_path / "sample.png"
    assert main(["receipt", "--png", str(out), "--text"]) == 0
    printed = capsys.readouterr().out
    assert "BUKTI PENYALURAN BANSOS" in printed and "Rp 300.000" in printed
    assert Image.open(out).width == DOTS
    assert main(["receipt", "--refusal", "already_paid"]) == 0
    assert "SUDAH DIAMBIL" in capsys.readouterr().out


def test_from_ledger_event():
    event = {
        "event_id": "0d6c3c1e-6b8f-4a53-9a53-3c4b1a0f9e21",
        "device_id": "edge-demo-0001",
        "ts": "2026-11-23T09:00:00Z",
        "outcome": "accepted",
        "round_id": "2026-T4",
        "amount": 600000,
    }
    r = Receipt.from_event(
        event,
        point_name="Titik A",
        masked_name="BUDI S***",
        masked_household="KPM-3171-****-0001",
        qr_payload="x",
    )
    text = render_text(r)
    assert "Rp 600.000" in text and "16:00:00 WIB" in text and "2026-T4" in text
    slip = Refusal.from_event({**event, "outcome": "no_match"}, point_name="Titik A")
    assert "WAJAH TIDAK COCOK" in render_text(slip)
