"""Receipt layout for a 58 mm printer (32 columns, 384 dots), in Bahasa Indonesia.

One layout feeds three renderers: the ESC/POS printer (``edge.devices.printer``), plain text
(``render_text``, exactly the columns the paper shows) and a PNG (``receipt_png.render_png``,
for docs and for a screen). The layout is a list of blocks so the three cannot drift apart; this
module stays free of Pillow.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from edge.events import parse_iso_utc

COLUMNS = 32
DOTS = 384
WIB = timezone(timedelta(hours=7), "WIB")

_MONTHS = (
    "Januari", "Februari", "Maret", "April", "Mei", "Juni",
    "Juli", "Agustus", "September", "Oktober", "November", "Desember",
)  # fmt: skip

# What a recipient reads on a refusal slip. Wording is neutral on purpose: a slip must not
# tell a fraudster which check caught them (spoof) nor shame an honest recipient.
REFUSAL_WORDS: dict[str, tuple[str, str]] = {
    "already_paid": ("SUDAH DIAMBIL", "Bantuan tahap ini sudah disalurkan."),
    "no_match": ("WAJAH TIDAK COCOK", "Wajah tidak sesuai data penerima."),
    "spoof": ("VERIFIKASI GAGAL", "Verifikasi wajah tidak berhasil."),
    "not_entitled": ("TIDAK TERDAFTAR", "Tidak terdaftar di titik salur ini."),
    "wrong_round": ("TAHAP TIDAK SESUAI", "Undangan bukan untuk tahap ini."),
    "duplicate_face": ("PERLU PEMERIKSAAN", "Data perlu diperiksa petugas."),
    "bad_qr": ("KODE QR TIDAK SAH", "Kode QR undangan tidak dikenali."),
    "no_face": ("WAJAH TIDAK TERLIHAT", "Wajah tidak terdeteksi kamera."),
    "poor_quality": ("FOTO KURANG JELAS", "Gambar wajah kurang jelas."),
    "too_many_attempts": ("BATAS PERCOBAAN", "Terlalu banyak percobaan. Hubungi petugas."),
    "override_refused": ("PENGECUALIAN GAGAL", "Pengecualian tidak dapat diproses."),
}
# A payout two staff members supervised (edge/payout/override.py) says so on its receipt.
OVERRIDE_MARK = "PENGECUALIAN DIAWASI"


# Under the title of every slip printed again (a staff or central reprint, or after a slip was
# cut off by a power loss): the QR is the same signed record, so the mark tells copies apart.
REPRINT_MARK = "** CETAK ULANG **"


@dataclass(frozen=True)
class Receipt:
    """A payout receipt. Only masked personal data ever reaches this object.

    ``ts`` is a UTC datetime, an ISO 8601 string (``...Z``) or epoch seconds; it prints in WIB.
    ``qr_payload`` is the signed record (``edge.events.receipt_payload``) printed as a QR code.
    ``chain`` is where the payout sits in the terminal's hash chain, ``#seq`` and the first 12
    hex digits of the event hash: a checkpoint in the recipient's hand that a later ledger
    cut back and rewritten cannot match (``edge audit --receipt``, docs/security.md).
    """

    point_name: str
    device_id: str
    ts: datetime | str | float
    round_id: str
    masked_name: str
    masked_household: str
    amount: int
    event_id: str
    qr_payload: str
    chain: str = ""
    # A supervised override: the two staff ids (already masked) and the reason's title.
    override: tuple[str, str, str] | None = None
    # "representative" when an enrolled representative collected for the household.
    collected_by: str | None = None

    @classmethod
    def from_event(
        cls,
        event: dict,
        *,
        point_name: str,
        masked_name: str,
        masked_household: str,
        qr_payload: str,
    ) -> Receipt:
        """Build from a ledger event (device_id, ts, round_id, amount, event_id), e.g. to
        print a pending receipt or a reprint after a restart."""
        return cls(
            point_name=point_name,
            device_id=event["device_id"],
            ts=event["ts"],
            round_id=event.get("round_id") or "-",
            masked_name=masked_name,
            masked_household=masked_household,
            amount=int(event.get("amount") or 0),
            event_id=event["event_id"],
            qr_payload=qr_payload,
            chain=chain_mark(event),
            override=override_lines(event.get("override")),
            collected_by=(event.get("extra") or {}).get("collected_by"),
        )


@dataclass(frozen=True)
class Refusal:
    """A refusal slip: no name and no household id, only what happened and when."""

    point_name: str
    device_id: str
    ts: datetime | str | float
    outcome: str
    event_id: str

    @classmethod
    def from_event(cls, event: dict, *, point_name: str) -> Refusal:
        """Build from a ledger decision event."""
        return cls(point_name, event["device_id"], event["ts"], event["outcome"], event["event_id"])


@dataclass(frozen=True)
class Line:
    """One printed line of at most ``COLUMNS`` characters."""

    text: str
    align: str = "left"  # left | center | right
    bold: bool = False
    tall: bool = False  # double height, same width: keeps the 32-column grid


@dataclass(frozen=True)
class Qr:
    """A QR code printed natively by the printer (GS ( k)."""

    payload: str


Block = Line | Qr


def to_datetime(ts: datetime | str | float) -> datetime:
    """Normalise a timestamp to an aware UTC datetime."""
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, UTC)
    return parse_iso_utc(ts.strip())


def format_rupiah(amount: int) -> str:
    """``300000`` -> ``Rp 300.000`` (Indonesian thousands separator)."""
    sign = "-" if amount < 0 else ""
    return f"Rp {sign}{abs(int(amount)):,}".replace(",", ".")


def format_wib(ts: datetime | str | float) -> tuple[str, str]:
    """(date, time) in Western Indonesia Time, e.g. ("23 November 2026", "23:10:05 WIB")."""
    local = to_datetime(ts).astimezone(WIB)
    return f"{local.day} {_MONTHS[local.month - 1]} {local.year}", local.strftime("%H:%M:%S WIB")


def qr_matrix(payload: str) -> list[list[bool]]:
    """QR modules (error correction M, no quiet zone) as the printer will draw them."""
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(payload)
    qr.make(fit=True)
    return qr.get_matrix()


def qr_dot_size(payload: str) -> int:
    """Dots per QR module so the code fills most of the paper width (1..8)."""
    modules = len(qr_matrix(payload))
    # 4-module quiet zone each side; 8 dots a module is already ~1 mm, ample for phone cameras
    return max(1, min(8, DOTS // (modules + 8)))


def _rule(ch: str = "-") -> Line:
    return Line(ch * COLUMNS)


def _wrap(text: str, width: int = COLUMNS) -> list[str]:
    # break_on_hyphens keeps ids like KPM-3171-****-0042 or UUIDs readable when they must wrap
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=True) or [""]


def _field(label: str, value: str, bold: bool = False, tall: bool = False) -> list[Line]:
    """``Label   : value`` with the value wrapped under itself when too long."""
    head = f"{label:<8}: "
    width = COLUMNS - len(head)
    parts = _wrap(value, width)
    out = [Line(head + parts[0], bold=bold, tall=tall)]
    out += [Line(" " * len(head) + p, bold=bold, tall=tall) for p in parts[1:]]
    return out


def _centered(text: str, bold: bool = False, tall: bool = False) -> list[Line]:
    return [Line(p, align="center", bold=bold, tall=tall) for p in _wrap(text)]


def _header(title: str, point_name: str, ts: datetime | str | float) -> list[Line]:
    day, clock = format_wib(ts)
    return [
        *_centered(title, bold=True),
        *_centered(point_name),
        _rule(),
        *_field("Tanggal", day),
        *_field("Waktu", clock),
    ]


def chain_mark(event: dict) -> str:
    """``#seq hash[:12]`` of an event: short enough for one 58 mm line, long enough to compare."""
    seq, digest = event.get("seq"), str(event.get("hash") or "")
    return f"#{seq} {digest[:12]}" if seq is not None and digest else ""


def _footer(device_id: str, event_id: str) -> list[Line]:
    return [
        *_field("Terminal", device_id),
        Line("ID Transaksi:"),
        *[Line(p) for p in _wrap(event_id)],
    ]


def override_lines(block: dict | None) -> tuple[str, str, str] | None:
    """(staff 1, staff 2, reason title) of an event's ``override`` block, staff ids masked."""
    if not block:
        return None
    from edge.enrolment.badges import REASONS
    from edge.privacy import mask_id

    staff = [mask_id(s.get("staff_id")) for s in block.get("staff", [])] + ["-", "-"]
    reason = str(block.get("reason") or "-")
    return staff[0], staff[1], REASONS.get(reason, (reason, ""))[0]


def receipt_blocks(r: Receipt, reprint: bool = False) -> list[Block]:
    """The payout receipt as blocks, top to bottom (the printer adds the cut)."""
    blocks: list[Block] = [*_header("BUKTI PENYALURAN BANSOS", r.point_name, r.ts)]
    marks = [REPRINT_MARK] if reprint else []
    marks += [OVERRIDE_MARK] if r.override else []
    for i, mark in enumerate(marks):
        blocks.insert(1 + i, Line(mark, align="center", bold=True))
    blocks += [
        *_field("Tahap", r.round_id),
        *_field("Nama", r.masked_name),
        *_field("No. KPM", r.masked_household),
    ]
    if r.collected_by == "representative":
        blocks += _field("Oleh", "PERWAKILAN KELUARGA")
    if r.override:
        blocks += [
            *_field("Petugas", f"{r.override[0]} / {r.override[1]}"),
            *_field("Alasan", r.override[2]),
        ]
    blocks += [
        _rule(),
        *_field("Jumlah", format_rupiah(r.amount), bold=True, tall=True),
        _rule(),
        *_footer(r.device_id, r.event_id),
        *(_field("Rantai", r.chain) if r.chain else []),
        Line(""),
        Qr(r.qr_payload),
        *_centered("Pindai untuk memeriksa keaslian"),
        *_centered("Simpan bukti ini"),
    ]
    return blocks


def refusal_blocks(r: Refusal) -> list[Block]:
    """The refusal slip as blocks."""
    words, reason = REFUSAL_WORDS.get(r.outcome, ("DITOLAK", "Penyaluran tidak dapat diproses."))
    return [
        *_header("PENYALURAN BANSOS", r.point_name, r.ts),
        _rule(),
        *_centered(words, bold=True, tall=True),
        *_centered(reason),
        _rule(),
        *_footer(r.device_id, r.event_id),
        Line(""),
        *_centered("Silakan hubungi petugas"),
    ]


def diagnostic_blocks(lines: list[str], ts: datetime | str | float | None = None) -> list[Block]:
    """A technician's slip: free text lines wrapped to the paper width."""
    day, clock = format_wib(ts if ts is not None else datetime.now(UTC))
    blocks: list[Block] = [
        *_centered("DIAGNOSTIK TERMINAL", bold=True),
        Line(f"{day} {clock}"),
        _rule(),
    ]
    for text in lines:
        blocks += [Line(p) for p in _wrap(str(text))]
    return blocks


def blocks_for(item: Receipt | Refusal, reprint: bool = False) -> list[Block]:
    """Blocks for either kind of slip."""
    if isinstance(item, Receipt):
        return receipt_blocks(item, reprint=reprint)
    return refusal_blocks(item)


def _place(line: Line) -> str:
    text = line.text[:COLUMNS]
    if line.align == "center":
        return text.center(COLUMNS).rstrip()
    if line.align == "right":
        return text.rjust(COLUMNS)
    return text


def blocks_to_text(blocks: list[Block]) -> str:
    """Plain text of the blocks as the columns fall on paper; a QR shows as a marker line."""
    out = []
    for b in blocks:
        if isinstance(b, Qr):
            out.append("[QR]".center(COLUMNS).rstrip())
        else:
            out.append(_place(b))
    return "\n".join(out) + "\n"


def render_text(item: Receipt | Refusal, reprint: bool = False) -> str:
    """The slip as 32-column text, line for line what the printer prints."""
    return blocks_to_text(blocks_for(item, reprint=reprint))


def example_receipt() -> Receipt:
    """Sample data for docs and `edge receipt`: fictitious, already masked."""
    return Receipt(
        point_name="Kantor Pos Cikini, Jakarta Pusat",
        device_id="edge-demo-0001",
        ts="2026-11-23T03:15:42Z",
        round_id="2026-T4",
        masked_name="SITI A*** R***",
        masked_household="KPM-3171-****-0042",
        amount=300000,
        event_id="5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15",
        qr_payload="bansos.rcpt/1:EXAMPLE-ONLY:5b1f0c2e-8d4a-4c7e-9a31-2f6d8e0b7c15",
        chain="#1287 9f3c2a7be041",
    )
