"""A small ESC/POS decoder for tests: what would a printer make of these bytes?

It understands the commands our printer module sends (and fails loudly on anything else):
ESC @, ESC E, ESC a, ESC !, ESC t, ESC d, GS !, GS V, GS ( k (QR), GS v 0 (raster image),
DLE EOT, text and LF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ESC, GS, DLE, LF = 0x1B, 0x1D, 0x10, 0x0A
_ALIGN = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}


@dataclass
class PrintedLine:
    text: str
    align: str
    bold: bool
    tall: bool


@dataclass
class Decoded:
    lines: list[PrintedLine] = field(default_factory=list)
    qr: list[str] = field(default_factory=list)  # payloads actually printed (GS ( k fn 81)
    qr_size: list[int] = field(default_factory=list)
    cuts: int = 0
    inits: int = 0
    status_queries: list[int] = field(default_factory=list)  # DLE EOT n
    feeds: int = 0
    order: list[str] = field(default_factory=list)  # "text", "qr", "cut" as they came
    # GS v 0 raster images: rows of 0/1 dots (1 = black), as the printer would burn them
    images: list[list[list[int]]] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [ln.text for ln in self.lines]


class _Decoder:
    """The printer's state while a stream is read: one small handler per command.

    Each handler takes the offset of its command's first byte and returns the offset after it;
    a stream cut off inside a command raises ``IndexError`` (``_decode_cut_off`` relies on it).
    """

    def __init__(self, data: bytes, codepage: str) -> None:
        self.data = data
        self.codepage = codepage
        self.out = Decoded()
        self.align, self.bold, self.tall = "left", False, False
        self.buf = bytearray()
        self.qr_store = b""
        self.qr_size = 3

    def run(self) -> Decoded:
        i, n = 0, len(self.data)
        while i < n:
            i = self.step(i)
        if self.buf:
            self.flush_line()
        return self.out

    def flush_line(self) -> None:
        line = PrintedLine(self.buf.decode(self.codepage), self.align, self.bold, self.tall)
        self.out.lines.append(line)
        self.out.order.append("text")
        self.buf = bytearray()

    def step(self, i: int) -> int:
        b = self.data[i]
        if b == LF:
            self.flush_line()
            return i + 1
        if b == ESC:
            return self.command(self.ESC_COMMANDS, "ESC", i)
        if b == GS:
            return self.command(self.GS_COMMANDS, "GS", i)
        if b == DLE and i + 1 < len(self.data) and self.data[i + 1] == 0x04:
            self.out.status_queries.append(self.data[i + 2])  # DLE EOT n
            return i + 3
        if b < 0x20:
            raise ValueError(f"unexpected control byte {b:#x} at {i}")
        self.buf.append(b)
        return i + 1

    def command(self, table: dict, prefix: str, i: int) -> int:
        cmd = self.data[i + 1]
        handler = table.get(cmd)
        if handler is None:
            raise ValueError(f"unknown {prefix} {cmd:#x} at {i}")
        return handler(self, i)

    # -- ESC x ------------------------------------------------------------------------------

    def esc_init(self, i: int) -> int:
        self.align, self.bold, self.tall = "left", False, False
        self.out.inits += 1
        return i + 2

    def esc_bold(self, i: int) -> int:
        self.bold = bool(self.data[i + 2] & 1)
        return i + 3

    def esc_align(self, i: int) -> int:
        self.align = _ALIGN[self.data[i + 2]]
        return i + 3

    def esc_mode(self, i: int) -> int:
        mode = self.data[i + 2]
        self.bold = bool(mode & 0x08)  # ESC ! sets every print mode at once
        self.tall = bool(mode & 0x10)
        return i + 3

    def esc_codepage(self, i: int) -> int:
        return i + 3  # code page select; text here is ASCII

    def esc_feed(self, i: int) -> int:
        self.out.feeds += self.data[i + 2]
        return i + 3

    ESC_COMMANDS = {
        ord("@"): esc_init,
        ord("E"): esc_bold,
        ord("a"): esc_align,
        ord("!"): esc_mode,
        ord("t"): esc_codepage,
        ord("d"): esc_feed,
    }

    # -- GS x -------------------------------------------------------------------------------

    def gs_cut(self, i: int) -> int:
        mode = self.data[i + 2]
        self.out.cuts += 1
        self.out.order.append("cut")
        return i + (4 if mode in (65, 66) else 3)

    def gs_size(self, i: int) -> int:
        self.tall = bool(self.data[i + 2] & 0x0F)
        return i + 3

    def gs_paren(self, i: int) -> int:
        if self.data[i + 2] != ord("k"):
            raise ValueError(f"unknown GS {ord('('):#x} at {i}")
        length = self.data[i + 3] | (self.data[i + 4] << 8)
        self.symbol(self.data[i + 5 : i + 5 + length])
        return i + 5 + length

    def symbol(self, body: bytes) -> None:
        """GS ( k: only the QR functions the printer module sends (size, store, print)."""
        cn, fn = body[0], body[1]
        if cn != ord("1"):
            raise ValueError("GS ( k for a symbol other than QR")
        if fn == ord("C"):
            self.qr_size = body[2]
        elif fn == ord("P"):
            self.qr_store = bytes(body[3:])  # after cn, fn, m
        elif fn == ord("Q"):
            self.out.qr.append(self.qr_store.decode("utf-8"))
            self.out.qr_size.append(self.qr_size)
            self.out.order.append("qr")

    def gs_raster(self, i: int) -> int:
        """GS v 0 m xL xH yL yH d...: a bit image, xL+xH*256 bytes wide, yL+yH*256 dots high."""
        if self.data[i + 2] != ord("0"):
            raise ValueError(f"unknown GS v {self.data[i + 2]:#x} at {i}")
        width = self.data[i + 4] | (self.data[i + 5] << 8)
        height = self.data[i + 6] | (self.data[i + 7] << 8)
        start, end = i + 8, i + 8 + width * height
        if end > len(self.data):
            raise IndexError("raster image cut off")
        bits = self.data[start:end]
        rows = [
            [(bits[r * width + c // 8] >> (7 - c % 8)) & 1 for c in range(width * 8)]
            for r in range(height)
        ]
        self.out.images.append(rows)
        self.out.order.append("image")
        return end

    GS_COMMANDS = {ord("V"): gs_cut, ord("!"): gs_size, ord("("): gs_paren, ord("v"): gs_raster}


def decode(data: bytes, codepage: str = "cp437") -> Decoded:
    """Decode an ESC/POS byte stream into lines, QR payloads, cuts and status queries."""
    return _Decoder(data, codepage).run()


@dataclass
class Slip:
    """One slip of a spool: what was decoded and whether it came out whole (ends with its cut)."""

    decoded: Decoded
    whole: bool

    @property
    def texts(self) -> list[str]:
        return self.decoded.texts


def _decode_cut_off(chunk: bytes) -> Decoded:
    # A slip cut off mid-command: keep what decodes, dropping the broken command at the end.
    for end in range(len(chunk), max(len(chunk) - 300, 0), -1):
        try:
            return decode(chunk[:end])
        except (IndexError, ValueError):
            continue
    return Decoded()


def split_slips(data: bytes) -> list[Slip]:
    """The slips of a spool in order (each starts with ESC @), including a cut-off last part."""
    slips = []
    for part in data.split(b"\x1b@")[1:]:
        decoded = _decode_cut_off(b"\x1b@" + part)
        slips.append(Slip(decoded, bool(decoded.order) and decoded.order[-1] == "cut"))
    return slips
