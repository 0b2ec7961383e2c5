"""A small ESC/POS decoder for tests: what would a printer make of these bytes?

It understands the commands our printer module sends (and fails loudly on anything else):
ESC @, ESC E, ESC a, ESC !, ESC t, ESC d, GS !, GS V, GS ( k (QR), DLE EOT, text and LF.
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

    @property
    def texts(self) -> list[str]:
        return [ln.text for ln in self.lines]


def decode(data: bytes, codepage: str = "cp437") -> Decoded:
    """Decode an ESC/POS byte stream into lines, QR payloads, cuts and status queries."""
    out = Decoded()
    align, bold, tall = "left", False, False
    buf = bytearray()
    qr_store = b""
    qr_size = 3
    i = 0

    def flush_line() -> None:
        nonlocal buf
        out.lines.append(PrintedLine(buf.decode(codepage), align, bold, tall))
        out.order.append("text")
        buf = bytearray()

    n = len(data)
    while i < n:
        b = data[i]
        if b == LF:
            flush_line()
            i += 1
        elif b == ESC:
            cmd = data[i + 1]
            if cmd == ord("@"):
                align, bold, tall = "left", False, False
                out.inits += 1
                i += 2
            elif cmd == ord("E"):
                bold = bool(data[i + 2] & 1)
                i += 3
            elif cmd == ord("a"):
                align = _ALIGN[data[i + 2]]
                i += 3
            elif cmd == ord("!"):
                mode = data[i + 2]
                bold = bool(mode & 0x08)  # ESC ! sets every print mode at once
                tall = bool(mode & 0x10)
                i += 3
            elif cmd == ord("t"):
                i += 3  # code page select; text here is ASCII
            elif cmd == ord("d"):
                out.feeds += data[i + 2]
                i += 3
            else:
                raise ValueError(f"unknown ESC {cmd:#x} at {i}")
        elif b == GS:
            cmd = data[i + 1]
            if cmd == ord("V"):
                mode = data[i + 2]
                i += 4 if mode in (65, 66) else 3
                out.cuts += 1
                out.order.append("cut")
            elif cmd == ord("!"):
                tall = bool(data[i + 2] & 0x0F)
                i += 3
            elif cmd == ord("(") and data[i + 2] == ord("k"):
                length = data[i + 3] | (data[i + 4] << 8)
                body = data[i + 5 : i + 5 + length]
                cn, fn = body[0], body[1]
                if cn != ord("1"):
                    raise ValueError("GS ( k for a symbol other than QR")
                if fn == ord("C"):
                    qr_size = body[2]
                elif fn == ord("P"):
                    qr_store = bytes(body[3:])  # after cn, fn, m
                elif fn == ord("Q"):
                    out.qr.append(qr_store.decode("utf-8"))
                    out.qr_size.append(qr_size)
                    out.order.append("qr")
                i += 5 + length
            else:
                raise ValueError(f"unknown GS {cmd:#x} at {i}")
        elif b == DLE and i + 1 < n and data[i + 1] == 0x04:
            out.status_queries.append(data[i + 2])
            i += 3
        elif b < 0x20:
            raise ValueError(f"unexpected control byte {b:#x} at {i}")
        else:
            buf.append(b)
            i += 1
    if buf:
        flush_line()
    return out


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
