"""Receipt printer: python-escpos over a serial line, a USB printer, a file, or nothing.

Every transport is a small subclass of a python-escpos printer, so all output goes through the
one ``_raw(bytes)`` method python-escpos defines. Transports are opened explicitly by
``make_printer`` (never as a side effect of reading a property) and every operation is bounded
in time: a printer that is off, unplugged or out of paper raises ``DeviceError`` within about a
second, so a payout is never held up by paper.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from escpos.capabilities import Profile, get_profile
from escpos.constants import QR_ECLEVEL_M
from escpos.escpos import Escpos
from escpos.exceptions import Error as EscposError
from escpos.printer import Dummy, File, Serial

from edge.devices.receipt import (
    COLUMNS,
    DOTS,
    Block,
    Qr,
    Receipt,
    Refusal,
    diagnostic_blocks,
    qr_dot_size,
    receipt_blocks,
    refusal_blocks,
)
from edge.errors import DeviceError

log = logging.getLogger(__name__)

PAPER = {2: "ok", 1: "low", 0: "out"}
# The name udev gives the USB receipt printer (provisioning/boot.py udev_rule).
USB_PRINTER = "/dev/bansos-printer"


@dataclass(frozen=True)
class PrinterStatus:
    """``online``: the printer answered and is ready; ``paper``: ok | low | out | unknown."""

    online: bool
    paper: str


def profile_58mm(name: str = ""):
    """A python-escpos profile for a 58 mm head: 384 dots, 32 columns in font A.

    The generic profile is the base because it allows native QR and the cut command (printers
    without a cutter ignore GS V). The data is copied: python-escpos shares it between instances.
    """
    base = get_profile(name or "default")
    data = copy.deepcopy(base.profile_data)
    if not name:
        data["media"] = {"dpi": 203, "width": {"mm": 48, "pixels": DOTS}}
        data["fonts"]["0"]["columns"] = COLUMNS
    # python-escpos only accepts its own Profile class as an instance
    profile = Profile(columns=COLUMNS, features=data.get("features", {}))
    profile.profile_data = data
    return profile


class _Stream(Protocol):
    def close(self) -> None: ...


class _QuietClose:
    """Close without python-escpos' property side effects (reading ``device`` reopens it)."""

    # python-escpos' convention: False when closed, None while opening, else the open stream
    _device: Literal[False] | None | _Stream

    def close(self) -> None:
        dev = self._device
        self._device = False
        if dev:
            try:
                dev.close()
            except OSError:
                pass


class SerialTransport(_QuietClose, Serial):
    """pyserial-backed transport with bounded reads and writes.

    python-escpos' ``Serial`` reads 16 bytes per status query, which waits out the whole
    timeout even when the printer answered one byte, and has no write timeout, so a printer
    holding flow control would hang the caller. Both are bounded here.
    """

    def __init__(self, port: str, baudrate: int, timeout_s: float, **kwargs) -> None:
        super().__init__(devfile=port, baudrate=baudrate, timeout=timeout_s, dsrdtr=False, **kwargs)
        self.timeout_s = timeout_s

    def open(self, raise_not_found: bool = True) -> None:
        import serial

        self.close()
        try:
            self.device = serial.Serial(
                port=self.devfile,
                baudrate=self.baudrate,
                timeout=self.timeout_s,
                write_timeout=max(2.0, 4 * self.timeout_s),
                dsrdtr=False,
                rtscts=False,
                xonxoff=False,
            )
        except (ValueError, OSError) as exc:  # SerialException is an OSError
            self.device = False
            raise DeviceError(f"printer: cannot open {self.devfile}: {exc}") from exc

    def query_status(self, mode: bytes) -> bytes:
        # stale bytes from an earlier, late answer would be read as this answer
        self.device.reset_input_buffer()
        return super().query_status(mode)

    def _read(self) -> bytes:
        first = self.device.read(1)
        if not first:
            return b""
        return first + self.device.read(self.device.in_waiting)


class FileTransport(_QuietClose, File):
    """Appends ESC/POS bytes to a file (a spool for the demo, or a /dev/usb/lp0 device).

    ``fsync`` is the call that forces a finished slip to disk (``os.fsync``; a test passes a
    fake with history).
    """

    _device: Literal[False] | None | BinaryIO

    def __init__(self, *args, fsync: Callable[[int], None] = os.fsync, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fsync = fsync

    def sync(self) -> None:
        """Force the bytes written so far onto the disk: a slip in a spool file survives a
        power cut like the ledger entry that says it was printed."""
        dev = self._device
        if not dev:
            return
        dev.flush()
        try:
            self._fsync(dev.fileno())
        except OSError as exc:
            # A printer device node (/dev/usb/lp0) has nothing to sync; the bytes are sent.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise

    def open(self, raise_not_found: bool = True) -> None:
        self.close()
        try:
            Path(self.devfile).parent.mkdir(parents=True, exist_ok=True)
            # append: python-escpos' "wb" would erase earlier receipts at every start
            self._device = open(self.devfile, "ab")  # noqa: SIM115
        except OSError as exc:
            self._device = False
            raise DeviceError(f"printer: cannot open {self.devfile}: {exc.strerror}") from exc


class UsbTransport(FileTransport):
    """A USB receipt printer through the kernel's usblp driver (``/dev/usb/lp0``, linked by udev
    to ``/dev/bansos-printer``): writes like a file, and reads DLE EOT answers back, since
    usblp is bidirectional, within ``timeout_s``.
    """

    def __init__(self, *args, timeout_s: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_s = timeout_s

    def open(self, raise_not_found: bool = True) -> None:
        self.close()
        try:
            self._device = open(self.devfile, "r+b", buffering=0)  # noqa: SIM115
        except OSError as exc:
            self._device = False
            raise DeviceError(f"printer: cannot open {self.devfile}: {exc.strerror}") from exc

    def _read(self) -> bytes:
        import select

        dev = self._device
        if not dev:
            return b""
        ready, _, _ = select.select([dev], [], [], self.timeout_s)
        return os.read(dev.fileno(), 16) if ready else b""


class Printer:
    """A receipt printer over one python-escpos transport (``None`` for kind "none").

    The printer's profile: ``qr`` "native" sends the QR as a GS ( k command the printer
    renders; "image" renders it here and sends a raster image (GS v 0), for printers without
    native QR. ``status_queries`` off: no DLE EOT queries, for printers that never answer them
    (they would look offline for ever).
    """

    def __init__(
        self,
        transport: Escpos | None,
        kind: str,
        status_queries: bool = True,
        qr: str = "native",
    ) -> None:
        self.transport = transport
        self.kind = kind
        self.status_queries = status_queries
        self.qr_native = qr != "image"
        self._open = False
        # the payout loop prints while a health reporter may ask for status: one at a time
        self._lock = threading.RLock()

    @property
    def enabled(self) -> bool:
        """False for kind "none": the app should not wait for receipts."""
        return self.transport is not None

    def open(self) -> bool:
        """Open the transport; False (logged) when it is absent. Safe to call again."""
        if self.transport is None:
            return False
        if isinstance(self.transport, Dummy):
            self._open = True
            return True
        try:
            self.transport.open()
        except DeviceError as exc:
            log.warning("%s", exc)
            self._open = False
            return False
        self._open = True
        return True

    def _ensure_open(self) -> Escpos:
        if self.transport is None:
            raise DeviceError("printer: none configured (printer.kind = none)")
        if not self._open and not self.open():
            raise DeviceError("printer: not connected")
        return self.transport

    def status(self) -> PrinterStatus:
        """Ask the printer whether it is online and has paper; bounded by the serial timeout."""
        with self._lock:
            return self._status()

    def _status(self) -> PrinterStatus:
        if self.transport is None:
            return PrinterStatus(False, "unknown")
        if not self._open and not self.open():
            return PrinterStatus(False, "unknown")
        queryable = isinstance(self.transport, SerialTransport | UsbTransport)
        if isinstance(self.transport, FileTransport) and not (queryable and self.status_queries):
            writable = os.access(self.transport.devfile, os.W_OK)
            return PrinterStatus(writable, "unknown")
        if not queryable or not self.status_queries:
            return PrinterStatus(True, "unknown")
        try:
            if not self.transport.is_online():
                return PrinterStatus(False, "unknown")
            return PrinterStatus(True, PAPER.get(self.transport.paper_status(), "unknown"))
        except OSError as exc:
            log.warning("printer: status query failed: %s", exc)
            self._drop()
            return PrinterStatus(False, "unknown")

    def _check_ready(self, when: str) -> PrinterStatus:
        st = self.status()
        if not st.online:
            raise DeviceError(f"printer: offline {when} printing")
        if st.paper == "out":
            raise DeviceError(f"printer: out of paper {when} printing")
        if st.paper == "low":
            log.warning("printer: paper low")
        return st

    def _drop(self) -> None:
        # a transport that failed mid-write is closed so the next job reopens it cleanly
        self._open = False
        if self.transport is not None:
            try:
                self.transport.close()
            except (OSError, EscposError):
                pass

    def _emit(self, p: Escpos, blocks: list[Block]) -> None:
        p.hw("INIT")  # ESC @: whatever a half-printed earlier slip left set is cleared
        style = ("left", False, False)
        for b in blocks:
            if isinstance(b, Qr):
                p.set(align="center")
                p.qr(b.payload, ec=QR_ECLEVEL_M, size=qr_dot_size(b.payload), native=self.qr_native)
                p.set(align="left")
                style = ("left", style[1], style[2])
                continue
            want = (b.align, b.bold, b.tall)
            if want[2] != style[2]:
                # ESC ! also clears bold, so bold is sent again after a size change
                p.set(normal_textsize=not b.tall, double_height=b.tall)
                style = (style[0], False, b.tall)
            if want[1] != style[1]:
                p.set(bold=b.bold)
            if want[0] != style[0]:
                p.set(align=b.align)
            style = want
            p.textln(b.text.strip() if b.align == "center" else b.text.rstrip())
        p.cut()

    def print_blocks(self, blocks: list[Block], what: str = "slip") -> None:
        """Check, print, cut, check again; any failure is a ``DeviceError``."""
        with self._lock:
            self._print_blocks(blocks, what)

    def _print_blocks(self, blocks: list[Block], what: str) -> None:
        transport = self._ensure_open()
        self._check_ready("before")
        try:
            self._emit(transport, blocks)
            if isinstance(transport, UsbTransport):
                pass  # unbuffered writes to the device: nothing to flush or sync
            elif isinstance(transport, FileTransport):
                transport.sync()
            else:
                dev = transport._device  # not .device: that property reopens as a side effect
                if dev and hasattr(dev, "flush"):
                    dev.flush()  # serial: waits until every byte has left the port
        except (OSError, EscposError, ValueError) as exc:
            self._drop()
            raise DeviceError(f"printer: {what} failed: {exc}") from exc
        # paper can run out mid-slip: then the slip is incomplete and must stay pending
        self._check_ready("after")
        log.info("printer: %s printed", what)

    def print_receipt(self, r: Receipt, *, reprint: bool = False) -> None:
        """Print a payout receipt, marked "CETAK ULANG" when ``reprint``; raises
        ``DeviceError`` if it may not have come out whole.

        Which receipt to print again, and whether it is a reprint, is decided by
        ``edge.payout.receipts.ReceiptDesk`` from the ledger, not here.
        """
        self.print_blocks(receipt_blocks(r, reprint=reprint), "receipt")

    def print_refusal(self, r: Refusal) -> None:
        """Print a refusal slip (no personal data on it)."""
        self.print_blocks(refusal_blocks(r), "refusal slip")

    def print_diagnostic(self, lines: list[str]) -> None:
        """Print a technician's slip with the given lines."""
        self.print_blocks(diagnostic_blocks(lines), "diagnostic slip")

    def close(self) -> None:
        """Close the transport."""
        with self._lock:
            self._drop()


def make_printer(cfg, state_dir: str | Path) -> Printer:
    """Build and open the printer chosen by ``cfg.printer`` (a PrinterConfig).

    A printer that is absent at start-up is logged, not fatal: the terminal can still pay out
    (receipts wait as pending) and the transport is reopened at the next status or print.
    """
    profile = profile_58mm(getattr(cfg, "profile", ""))
    queries, qr = getattr(cfg, "status_queries", True), getattr(cfg, "qr", "native")
    timeout_s = getattr(cfg, "timeout_s", 0.5)
    if cfg.kind == "serial":
        transport = SerialTransport(cfg.port, cfg.baudrate, timeout_s, profile=profile)
        printer = Printer(transport, "serial", queries, qr)
    elif cfg.kind == "usb":
        path = str(cfg.path or USB_PRINTER)
        usb = UsbTransport(devfile=path, profile=profile, timeout_s=timeout_s)
        printer = Printer(usb, "usb", queries, qr)
    elif cfg.kind == "file":
        path = cfg.path or str(Path(state_dir) / "receipts.bin")
        printer = Printer(FileTransport(devfile=path, profile=profile), "file", False, qr)
    elif cfg.kind == "dummy":
        printer = Printer(Dummy(profile=profile), "dummy", queries, qr)
    else:
        printer = Printer(None, "none")
    printer.open()
    return printer
