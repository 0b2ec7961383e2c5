"""The idle frame of the default "qr" flow: OpenCV's QR detector on a 640x480 camera frame.

While nobody claims, every frame goes through ``cv2.QRCodeDetector.detectAndDecode`` (as
edge.payout.flow does), so this is the terminal's steady CPU cost when idle. Timed on a frame with a
face photo and no code, and on the same frame with an invitation QR pasted in; the same with
OpenCV's ArUco-based QR detector for comparison.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import Context, require_module
from bench.stats import summarise_ms


def _frame(ctx: Context) -> np.ndarray:
    """A 640x480 grey frame from a test photo (a plain texture when no photo is at hand)."""
    canvas = np.full((480, 640), 128, np.uint8)
    photos = ctx.photos
    if photos is not None and photos.photos:
        img = cv2.imread(str(photos.path(photos.photos[0])), cv2.IMREAD_GRAYSCALE)
        if img is not None:
            s = min(400 / img.shape[1], 480 / img.shape[0])
            img = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)))
            canvas[: img.shape[0], : img.shape[1]] = img
    return canvas


def _time(det, grey: np.ndarray, n: int) -> tuple[list[float], bool]:
    found = bool(det.detectAndDecode(grey)[0])
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        det.detectAndDecode(grey)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out, found


def run(ctx: Context) -> dict:
    """Milliseconds per idle frame without and with a QR code in view."""
    claim = require_module("edge.payout.claim", "LEDGER")
    n = 20 if ctx.opts.quick else 100
    grey = _frame(ctx)
    det = cv2.QRCodeDetector()
    empty, _ = _time(det, grey, n)
    with tempfile.TemporaryDirectory() as tmp:
        png = claim.render_claim_png("KPM-3171-0000-0042", "2026-11", Path(tmp) / "qr.png", 4)
        qr = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if qr is None:
        raise RuntimeError(f"cannot read back the claim QR written to {png.name}")
    side = min(220, qr.shape[0])
    qr = cv2.resize(qr, (side, side), interpolation=cv2.INTER_NEAREST)
    with_qr = grey.copy()
    with_qr[20 : 20 + side, 640 - side - 20 : 620] = qr
    code, decoded = _time(det, with_qr, n)
    out = {
        "status": "ok",
        "frame": "640x480 grey",
        "detector": "cv2.QRCodeDetector (as edge.payout.flow)",
        "no_code_ms": summarise_ms(empty),
        "with_code_ms": summarise_ms(code),
        "decoded": decoded,
    }
    # The ArUco-based detector of OpenCV >= 4.8 rejects a frame without a code much sooner.
    if hasattr(cv2, "QRCodeDetectorAruco"):
        aruco = cv2.QRCodeDetectorAruco()
        a_empty, _ = _time(aruco, grey, n)
        a_code, a_decoded = _time(aruco, with_qr, n)
        out["aruco"] = {
            "no_code_ms": summarise_ms(a_empty),
            "with_code_ms": summarise_ms(a_code),
            "decoded": a_decoded,
        }
    return out
