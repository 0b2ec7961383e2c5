"""The QR code on a recipient's invitation letter: which household claims for which round.

Payload (text, all in the QR alphanumeric set so the code stays small and robust)::

    BANSOS/1:<round_id>:<household_id>:<check>

``check`` is 8 hex digits of CRC-32 over ``bansos-claim/1|<round_id>|<household_id>``. The QR
code's own error correction repairs most damage; the check value catches what it cannot (a
code typed by hand, a partly re-printed letter) and any other program's QR that happens to
share the layout. It is not a secret: the claim only says *who claims*; the face decides.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ClaimError

PREFIX = "BANSOS"
VERSION = 1
# Used with fullmatch: "$" would also accept a trailing newline.
_ID_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{2,39}")
_ROUND_RE = re.compile(r"[0-9]{4}-[0-9]{2}[A-Z0-9-]{0,16}")


@dataclass(frozen=True)
class Claim:
    """A decoded invitation: the household that claims and the round it claims for."""

    household_id: str
    round_id: str


def _check(household_id: str, round_id: str) -> str:
    data = f"bansos-claim/{VERSION}|{round_id}|{household_id}".encode()
    return f"{zlib.crc32(data):08X}"


def validate_household_id(household_id: str) -> str:
    """Return the id if it fits the claim alphabet (A-Z, 0-9, dash); raise ClaimError otherwise."""
    if not isinstance(household_id, str) or not _ID_RE.fullmatch(household_id):
        raise ClaimError("household id must be 3-40 characters of A-Z, 0-9 and '-'")
    return household_id


def validate_round_id(round_id: str) -> str:
    """Return the round id if it looks like ``YYYY-MM`` (optionally a suffix); else ClaimError."""
    if not isinstance(round_id, str) or not _ROUND_RE.fullmatch(round_id):
        raise ClaimError("round id must look like YYYY-MM (e.g. 2026-12)")
    return round_id


def encode_claim(household_id: str, round_id: str) -> str:
    """The QR text of an invitation letter."""
    validate_household_id(household_id)
    validate_round_id(round_id)
    return f"{PREFIX}/{VERSION}:{round_id}:{household_id}:{_check(household_id, round_id)}"


def decode_claim(text: str) -> Claim:
    """Parse a QR text; raise ClaimError saying why it is refused (never echoing the text)."""
    if not isinstance(text, str) or not text.strip():
        raise ClaimError("empty QR payload")
    text = text.strip()
    head, sep, rest = text.partition(":")
    if not sep or not head.startswith(PREFIX + "/"):
        raise ClaimError("not a bansos invitation code")
    version = head[len(PREFIX) + 1 :]
    if version != str(VERSION):
        raise ClaimError(f"unsupported invitation code version {version[:8]!r}")
    parts = rest.split(":")
    if len(parts) != 3:
        raise ClaimError("malformed invitation code (expected round, household and check)")
    round_id, household_id, check = parts
    validate_round_id(round_id)
    validate_household_id(household_id)
    if check.upper() != _check(household_id, round_id):
        raise ClaimError("check value mismatch: misread or altered invitation code")
    return Claim(household_id=household_id, round_id=round_id)


def render_claim_png(household_id: str, round_id: str, path: Path | str, box_size: int = 8) -> Path:
    """Write the invitation's QR code as a PNG (error correction M, quiet zone of 4 modules)."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=4)
    qr.add_data(encode_claim(household_id, round_id))
    qr.make(fit=True)
    img = qr.make_image(fill_color="black", back_color="white")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(str(path))
    return path
