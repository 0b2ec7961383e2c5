"""Invitation QR payload: encode, decode, refuse, and a real PNG read back by OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.errors import ClaimError
from edge.payout.claim import Claim, decode_claim, encode_claim, render_claim_png


def test_round_trip():
    text = encode_claim("KPM-3171-0815-0042", "2026-12")
    assert text.startswith("BANSOS/1:2026-12:KPM-3171-0815-0042:")
    assert decode_claim(text) == Claim("KPM-3171-0815-0042", "2026-12")
    assert decode_claim("  " + text + "\n") == Claim("KPM-3171-0815-0042", "2026-12")


def test_payload_fits_qr_alphanumeric_mode():
    text = encode_claim("KPM-3171-0815-0042", "2026-12")
    alnum = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    assert set(text) <= alnum


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        ("https://example.com/promo", "not a bansos"),
        ("BANSOS/2:2026-12:KPM-3171-0815-0042:00000000", "version"),
        ("BANSOS/1:2026-12:KPM-3171-0815-0042", "malformed"),
        ("BANSOS/1:december:KPM-3171-0815-0042:00000000", "round id"),
        ("BANSOS/1:2026-12:kpm 1:00000000", "household id"),
    ],
)
def test_refused_payloads(text, why):
    with pytest.raises(ClaimError, match=why):
        decode_claim(text)


def test_any_single_character_change_is_caught():
    text = encode_claim("KPM-3171-0815-0042", "2026-12")
    changed = 0
    for i, ch in enumerate(text):
        if ch in ":/":
            continue
        for repl in "0179AZ":
            if repl == ch:
                continue
            bad = text[:i] + repl + text[i + 1 :]
            with pytest.raises(ClaimError):
                decode_claim(bad)
            changed += 1
    assert changed > 100


def test_other_round_same_household_differs():
    a = encode_claim("KPM-3171-0815-0042", "2026-12")
    b = encode_claim("KPM-3171-0815-0042", "2027-01")
    assert a.rsplit(":", 1)[1] != b.rsplit(":", 1)[1]
    # Splicing one letter's check value onto another round is caught.
    spliced = b.rsplit(":", 1)[0] + ":" + a.rsplit(":", 1)[1]
    with pytest.raises(ClaimError, match="check value"):
        decode_claim(spliced)


def test_encode_refuses_bad_ids():
    with pytest.raises(ClaimError):
        encode_claim("kpm:1", "2026-12")
    with pytest.raises(ClaimError):
        encode_claim("KPM-1", "26-12")


def test_png_decodes_with_opencv(tmp_path):
    path = render_claim_png("KPM-3171-0815-0042", "2026-12", tmp_path / "inv.png")
    bgr = cv2.imread(str(path))
    assert bgr is not None
    text, points, _ = cv2.QRCodeDetector().detectAndDecode(bgr)
    assert points is not None
    assert decode_claim(text) == Claim("KPM-3171-0815-0042", "2026-12")


def test_png_decodes_when_held_small_in_a_camera_frame(tmp_path):
    path = render_claim_png("KPM-3201-0001-0007", "2026-12", tmp_path / "inv.png", box_size=4)
    qr = cv2.imread(str(path))
    frame = np.full((480, 640, 3), 170, np.uint8)
    y, x = 120, 260
    frame[y : y + qr.shape[0], x : x + qr.shape[1]] = qr
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(frame)
    assert decode_claim(text).household_id == "KPM-3201-0001-0007"
