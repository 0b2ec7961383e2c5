"""Receipt printer: real serial transport over a pseudo-terminal, file and Dummy transports."""

from __future__ import annotations

import os
import select
import threading

import pytest
import serial
from escpos_decode import decode

from edge.config.devices import PrinterConfig
from edge.devices.printer import (
    FileTransport,
    Printer,
    PrinterStatus,
    make_printer,
    profile_58mm,
)
from edge.devices.receipt import Line, Refusal, example_receipt, receipt_blocks
from edge.errors import DeviceError

PAPER_BYTE = {"ok": 0x12, "low": 0x1E, "out": 0x72}  # DLE EOT 4 answers (near-end / end bits)


class FakeSerialPrinter:
    """The printer's side of a pty: keeps every byte received and answers DLE EOT like a
    real 58 mm printer, unless told to be silent (switched off, TX not wired)."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty survives between opens by the printer
        self.received = bytearray()
        self.answering = True
        self.reading = True  # False: a jammed printer that stops taking bytes
        self.online = True
        self.paper = "ok"
        self.paper_after: str | None = None  # paper state to switch to once a cut arrives
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._scan = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready or not self.reading:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            with self._arrived:
                self.received += chunk
                self._arrived.notify_all()
            self._answer()

    def _answer(self) -> None:
        data = bytes(self.received)
        while True:
            i = data.find(b"\x10\x04", self._scan)
            if i < 0 or i + 2 >= len(data):
                if b"\x1dV" in data[self._scan :] and self.paper_after:
                    self.paper = self.paper_after
                return
            if b"\x1dV" in data[self._scan : i] and self.paper_after:
                self.paper = self.paper_after
            self._scan = i + 3
            if not self.answering:
                continue
            n = data[i + 2]
            if n == 1:
                os.write(self.master, bytes([0x12 if self.online else 0x1A]))
            elif n == 4:
                os.write(self.master, bytes([PAPER_BYTE[self.paper]]))

    def wait_for(self, marker: bytes, timeout: float = 10.0) -> bool:
        """Wait until ``marker`` has arrived (``timeout`` only guards against a hang)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: marker in self.received, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        os.close(self.master)
        os.close(self._slave)


class PortHistory:
    """Wraps the printer's open pyserial port: every call goes through, and each read is kept
    as (bytes asked, timeout in force, bytes got). A read that got fewer bytes than it asked
    for waited its whole timeout, so the history bounds how long an operation could wait
    without measuring wall time on a busy machine."""

    def __init__(self, port: serial.Serial) -> None:
        self._port = port
        self.reads: list[tuple[int, float | None, bytes]] = []

    def read(self, size: int = 1) -> bytes:
        got = self._port.read(size)
        self.reads.append((size, self._port.timeout, got))
        return got

    def waits(self) -> list[float | None]:
        """The timeouts waited out in full, oldest first; cleared for the next operation."""
        out = [timeout for size, timeout, got in self.reads if len(got) < size]
        self.reads.clear()
        return out

    def __getattr__(self, name: str):
        return getattr(self._port, name)


def watch_port(printer: Printer) -> PortHistory:
    """Put a :class:`PortHistory` between the open serial transport and its port."""
    port = PortHistory(printer.transport.device)
    printer.transport.device = port
    return port


@pytest.fixture
def fake_printer():
    fake = FakeSerialPrinter()
    yield fake
    fake.close()


def _serial(fake: FakeSerialPrinter, tmp_path, **kw):
    cfg = PrinterConfig(kind="serial", port=fake.port, baudrate=115200, timeout_s=0.3, **kw)
    return make_printer(cfg, tmp_path)


def test_receipt_over_serial_pty_decodes_to_text_qr_and_cut(fake_printer, tmp_path):
    printer = _serial(fake_printer, tmp_path)
    r = example_receipt()
    assert printer.status() == PrinterStatus(True, "ok")
    printer.print_receipt(r)
    # It returned after the printer answered its last status query: every byte is in.
    assert b"\x1dV" in fake_printer.received
    printer.close()

    out = decode(bytes(fake_printer.received))
    expected = [
        (b.text.strip(), b.align, b.bold, b.tall) for b in receipt_blocks(r) if isinstance(b, Line)
    ]
    assert [(x.text, x.align, x.bold, x.tall) for x in out.lines] == expected
    assert out.qr == [r.qr_payload]
    assert out.cuts == 1 and out.order[-1] == "cut"
    # checked before and after: 2 queries (online, paper) each time
    assert out.status_queries[:2] == [1, 4] and len(out.status_queries) >= 4
    texts = "\n".join(out.texts)
    assert "BUKTI PENYALURAN BANSOS" in texts
    assert "Rp 300.000" in texts
    assert "WIB" in texts and "2026-T4" in texts


def test_silent_printer_is_offline_quickly_and_print_raises(fake_printer, tmp_path):
    fake_printer.answering = False
    printer = _serial(fake_printer, tmp_path)
    port = watch_port(printer)
    st = printer.status()
    assert st == PrinterStatus(False, "unknown")
    # Quickly: one unanswered query, waited out once for the configured 0.3 s, then it gives up.
    assert port.waits() == [0.3]
    with pytest.raises(DeviceError, match="offline"):
        printer.print_receipt(example_receipt())
    assert port.waits() == [0.3]
    assert b"\x1dV" not in fake_printer.received  # nothing printed
    # the printer comes back: the same object prints without a restart
    fake_printer.answering = True
    printer.print_receipt(example_receipt())
    assert port.waits() == []  # an answering printer is never waited out
    assert fake_printer.wait_for(b"\x1dV")
    assert decode(bytes(fake_printer.received)).cuts == 1
    printer.close()


def test_paper_states_and_paper_out_during_print(fake_printer, tmp_path):
    printer = _serial(fake_printer, tmp_path)
    fake_printer.paper = "low"
    assert printer.status() == PrinterStatus(True, "low")
    printer.print_diagnostic(["kamera: ok"])  # low paper still prints
    fake_printer.paper = "out"
    with pytest.raises(DeviceError, match="out of paper"):
        printer.print_receipt(example_receipt())
    fake_printer.paper = "ok"
    fake_printer.paper_after = "out"  # runs out while this slip is printing
    with pytest.raises(DeviceError, match="out of paper after"):
        printer.print_receipt(example_receipt())
    printer.close()


def test_status_queries_off_prints_without_asking(fake_printer, tmp_path):
    fake_printer.answering = False
    printer = _serial(fake_printer, tmp_path, status_queries=False)
    assert printer.status() == PrinterStatus(True, "unknown")
    printer.print_refusal(Refusal("Titik A", "edge-demo-0001", 0.0, "already_paid", "e-1"))
    assert fake_printer.wait_for(b"\x1dV")
    out = decode(bytes(fake_printer.received))
    assert out.status_queries == []
    assert "SUDAH DIAMBIL" in out.texts
    printer.close()


def test_jammed_printer_times_out_instead_of_hanging(fake_printer, tmp_path):
    printer = _serial(fake_printer, tmp_path, status_queries=False)
    fake_printer.reading = False
    assert printer.transport.device.write_timeout == 2.0  # every write has a bound
    with pytest.raises(DeviceError, match="failed") as failed:
        printer.print_diagnostic([f"baris {i}" for i in range(20000)])
    # It gave up because a write ran into that bound, not because the printer let go.
    assert isinstance(failed.value.__cause__, serial.SerialTimeoutException)
    fake_printer.reading = True
    printer.print_diagnostic(["pulih"])  # reopened and printing again
    assert fake_printer.wait_for(b"pulih")
    printer.close()


def test_missing_serial_port_is_offline_not_fatal(tmp_path):
    cfg = PrinterConfig(kind="serial", port=str(tmp_path / "ttyNOPE"), timeout_s=0.2)
    printer = make_printer(cfg, tmp_path)
    assert printer.status() == PrinterStatus(False, "unknown")
    with pytest.raises(DeviceError):
        printer.print_receipt(example_receipt())


def test_dummy_refusal_diagnostic_and_reprint_mark():
    printer = make_printer(PrinterConfig(kind="dummy"), "unused")
    dummy = printer.transport
    printer.print_refusal(Refusal("Titik A", "edge-demo-0001", 0.0, "spoof", "e-2"))
    out = decode(dummy.output)
    assert "VERIFIKASI GAGAL" in out.texts
    assert out.qr == [] and out.cuts == 1
    dummy.clear()

    printer.print_diagnostic(["kamera: ok", "antrean: 3 peristiwa", "x" * 40])
    out = decode(dummy.output)
    assert "DIAGNOSTIK TERMINAL" in out.texts and "antrean: 3 peristiwa" in out.texts
    assert all(len(t) <= 32 for t in out.texts)
    dummy.clear()

    r = example_receipt()
    printer.print_receipt(r)
    printer.print_receipt(r, reprint=True)
    out = decode(dummy.output)
    assert out.cuts == 2 and out.qr == [r.qr_payload, r.qr_payload]
    assert out.texts.count("** CETAK ULANG **") == 1
    # the mark is on the second slip, right under the title
    second = out.texts[out.texts.index("BUKTI PENYALURAN BANSOS", 1) :]
    assert second[1] == "** CETAK ULANG **"


class FsyncHistory:
    """Stands in for os.fsync: keeps what the file held each time it was forced to disk."""

    def __init__(self, path) -> None:
        self.path = path
        self.synced: list[bytes] = []

    def __call__(self, fd: int) -> None:
        os.fstat(fd)  # a real, open descriptor
        self.synced.append(self.path.read_bytes())


def test_file_printer_forces_each_whole_slip_to_disk(tmp_path):
    path = tmp_path / "receipts.bin"
    history = FsyncHistory(path)
    transport = FileTransport(devfile=str(path), profile=profile_58mm(), fsync=history)
    printer = Printer(transport, "file")
    printer.print_receipt(example_receipt())
    printer.print_refusal(Refusal("Titik A", "edge-demo-0001", 0.0, "spoof", "e-2"))
    printer.close()
    assert len(history.synced) == 2  # once per slip
    first, both = history.synced
    assert decode(first).cuts == 1 and decode(first).qr == [example_receipt().qr_payload]
    assert both.startswith(first) and decode(both).cuts == 2
    assert both == path.read_bytes()  # nothing written after the last sync


def test_file_printer_to_a_device_node_that_cannot_sync(tmp_path):
    # /dev/null, like /dev/usb/lp0, refuses fsync (EINVAL): the slip still counts as sent.
    printer = make_printer(PrinterConfig(kind="file", path="/dev/null"), tmp_path)
    printer.print_receipt(example_receipt())
    printer.close()


def test_file_printer_appends_and_reports_unknown_paper(tmp_path):
    printer = make_printer(PrinterConfig(kind="file"), tmp_path)
    assert printer.status() == PrinterStatus(True, "unknown")
    printer.print_receipt(example_receipt())
    printer.close()
    printer = make_printer(PrinterConfig(kind="file"), tmp_path)  # a restart must not erase
    printer.print_receipt(example_receipt())
    printer.close()
    out = decode((tmp_path / "receipts.bin").read_bytes())
    assert out.cuts == 2 and len(out.qr) == 2


def test_none_printer_refuses_to_print(tmp_path):
    printer = make_printer(PrinterConfig(kind="none"), tmp_path)
    assert not printer.enabled
    assert printer.status() == PrinterStatus(False, "unknown")
    with pytest.raises(DeviceError, match="none"):
        printer.print_receipt(example_receipt())
