"""Masking of identifiers and names for logs, screens and receipts.

Logs and receipts never carry a full name or a national id number; household ids in logs are
masked too, so a log file handed to a technician does not list who collected aid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_KEEP_TAIL = 4


def _stars(n: int) -> str:
    return "*" * max(n, 4)


def mask_id(s: str | None) -> str:
    """Mask the middle of an identifier, keeping its prefix and last four characters.

    ``KPM-3171-0815-0042`` becomes ``KPM-3171-****-0042``; an id without dashes (e.g. a NIK)
    keeps only its last four digits: ``3171010101900042`` becomes ``************0042``.
    """
    if not s:
        return "-"
    parts = str(s).split("-")
    if len(parts) >= 3:
        # The scheme prefix and the regency code are public; the middle identifies the person.
        keep_head = 2 if len(parts) >= 4 else 1
        middle = [_stars(len(p)) for p in parts[keep_head:-1]]
        return "-".join(parts[:keep_head] + middle + [parts[-1]])
    s = str(s)
    if len(s) <= _KEEP_TAIL:
        return _stars(len(s))
    return "*" * (len(s) - _KEEP_TAIL) + s[-_KEEP_TAIL:]


def mask_name(name: str | None) -> str:
    """Keep the first word of a name and the initials of the others: ``SITI A*** R***``.

    A one-word name keeps only its initial, since the first word would otherwise be all of it.
    """
    words = re.split(r"\s+", (name or "").strip().upper())
    words = [w for w in words if w]
    if not words:
        return "-"
    if len(words) == 1:
        return words[0][0] + "***"
    return " ".join([words[0]] + [w[0] + "***" for w in words[1:]])


def household_ref(ref_key: bytes, round_id: str, household_id: str) -> str:
    """The pseudonymous reference of a household in one round: what travels on the wire.

    ``h_`` + base64url of the first 16 bytes of HMAC-SHA256(ref_key, round_id NUL household_id).
    ``ref_key`` is secret to central and the terminals of one regency (it comes inside the
    signed, encrypted enrolment bundle), so the broker, a log or a photographed receipt QR does
    not reveal who collected, while central (which made the key) maps it back, and every
    terminal of the regency computes the same reference for claims sync. Household ids are
    low-entropy (a NIK is a birth date and a region), which is why a plain hash would not do.
    """
    if len(ref_key) < 16:
        raise ValueError("ref_key must be at least 16 bytes")
    mac = hmac.new(ref_key, f"{round_id}\0{household_id}".encode(), hashlib.sha256).digest()
    return "h_" + base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()
