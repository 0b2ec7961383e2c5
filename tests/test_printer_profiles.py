"""Printer profiles and the USB transport: native or image QR, DLE EOT on or off, usblp.

A USB printer (usblp, /dev/usb/lp0) is bidirectional like a tty: a pty in raw mode stands in
for it, with the fake printer of test_printer answering DLE EOT on the other side.
"""

from __future__ import annotations

import tty

import cv2
import numpy as np
import pytest
from escpos_decode import decode
from test_printer import FakeSerialPrinter

from edge.config.devices import PrinterConfig
from edge.devices.printer import PrinterStatus, UsbTransport, make_printer
from edge.devices.receipt import example_receipt


@pytest.fixture
def usb_printer():
    fake = FakeSerialPrinter()
    tty.setraw(fake._slave)  # usblp passes bytes through untouched: no echo, no CRLF
    yield fake
    fake.close()


def _decode_raster_qr(rows: list[list[int]]) -> str:
    img = np.where(np.array(rows, dtype=np.uint8) == 1, 0, 255).astype(np.uint8)
    img = cv2.copyMakeBorder(img, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=255)
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(img)
    return text


def test_native_qr_profile_sends_gs_paren_k(tmp_path):
    printer = make_printer(PrinterConfig(kind="dummy", qr="native"), tmp_path)
    r = example_receipt()
    printer.print_receipt(r)
    out = decode(printer.transport.output)
    assert out.qr == [r.qr_payload] and out.images == []


def test_image_qr_profile_sends_a_raster_that_scans(tmp_path):
    """For printers without GS ( k: the QR arrives as a GS v 0 image a phone can still read."""
    printer = make_printer(PrinterConfig(kind="dummy", qr="image"), tmp_path)
    r = example_receipt()
    printer.print_receipt(r)
    raw = printer.transport.output
    assert b"\x1d(k" not in raw
    out = decode(raw)
    assert out.qr == [] and len(out.images) == 1
    assert len(out.images[0][0]) <= 384  # fits the 58 mm head
    assert _decode_raster_qr(out.images[0]) == r.qr_payload
    assert out.cuts == 1 and "BUKTI PENYALURAN BANSOS" in out.texts


def test_usb_printer_with_status_queries(usb_printer, tmp_path):
    cfg = PrinterConfig(kind="usb", path=usb_printer.port, timeout_s=0.3)
    printer = make_printer(cfg, tmp_path)
    assert isinstance(printer.transport, UsbTransport)
    assert printer.status() == PrinterStatus(True, "ok")
    usb_printer.paper = "low"
    assert printer.status() == PrinterStatus(True, "low")
    r = example_receipt()
    printer.print_receipt(r)
    assert usb_printer.wait_for(b"\x1dV")
    printer.close()
    out = decode(bytes(usb_printer.received))
    assert out.qr == [r.qr_payload] and out.cuts == 1
    assert out.status_queries[:2] == [1, 4]


def test_usb_printer_that_never_answers_with_queries_off(usb_printer, tmp_path):
    """A cheap printer without DLE EOT: with queries on it looks offline; off, it prints."""
    usb_printer.answering = False
    asking = make_printer(PrinterConfig(kind="usb", path=usb_printer.port, timeout_s=0.2), tmp_path)
    assert asking.status() == PrinterStatus(False, "unknown")
    asking.close()
    before = len(usb_printer.received)
    cfg = PrinterConfig(kind="usb", path=usb_printer.port, status_queries=False, qr="image")
    printer = make_printer(cfg, tmp_path)
    assert printer.status() == PrinterStatus(True, "unknown")
    printer.print_receipt(example_receipt())
    assert usb_printer.wait_for(b"\x1dV")
    printer.close()
    out = decode(bytes(usb_printer.received[before:]))
    assert out.status_queries == [] and len(out.images) == 1


def test_missing_usb_printer_is_offline_not_fatal(tmp_path):
    printer = make_printer(PrinterConfig(kind="usb", path=str(tmp_path / "lp0")), tmp_path)
    assert printer.status() == PrinterStatus(False, "unknown")
