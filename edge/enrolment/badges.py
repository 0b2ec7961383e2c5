"""Staff badges, reason cards and the override policy: what a supervised override rests on.

A **staff badge** is a QR card central signs for one staff member: badge id, staff id, role,
regency, issue date and expiry. The terminal checks it offline against central's public key,
as it checks a bundle, so a badge cannot be made or altered at the distribution point::

    BSTAFF1.<base64url canonical JSON body>.<base64url Ed25519 signature>

The signature covers ``bansos.badge/1`` + a newline + the body bytes, so a badge can never
pass for a bundle, a command or an event signed by the same key.

A **reason card** is a printed QR from a short fixed list (:data:`REASONS`), ``BREASON1:<code>``.
It is not signed: it only says *why*; the two badges say *who* may decide.

The **override policy** travels in the signed bundle body (``override_policy``): the limits
central sets for this terminal and round. No policy, no override.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.errors import BadgeError, KeyFileError
from edge.events import b64url, canonical, iso_utc, parse_iso_utc, unb64url
from edge.keys import load_ed25519_public, verify_ed25519

BADGE_PREFIX = "BSTAFF1"
REASON_PREFIX = "BREASON1:"
BADGE_DOMAIN = b"bansos.badge/1\n"
STAFF_ROLES = ("officer", "supervisor", "auditor")
# The refusals a supervised override may turn into a payout: the face could not be verified,
# while the claim itself (letter, round, entitlement, not yet paid) passed. Why the others
# never may is in docs/flow.md.
OVERRIDABLE = ("no_match", "poor_quality", "no_face")
_STAFF_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,31}$")
_REGENCY_RE = re.compile(r"^[0-9]{4}$")
_BADGE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
MAX_BADGE_TEXT = 600

# code -> (title on the card, one line of explanation), Bahasa Indonesia.
REASONS: dict[str, tuple[str, str]] = {
    "elderly": ("LANSIA", "Usia lanjut, wajah berubah"),
    "illness_injury": ("SAKIT / CEDERA", "Sakit atau cedera pada wajah"),
    "worn_features": ("CIRI WAJAH AUS", "Pekerja kasar, ciri wajah aus"),
    "face_changed": ("WAJAH BERUBAH", "Wajah berubah sejak pendaftaran"),
    "disability": ("DISABILITAS", "Tidak dapat menghadap kamera"),
}


@dataclass(frozen=True)
class Badge:
    """A verified staff badge."""

    badge_id: str
    staff_id: str
    role: str
    regency: str
    issued_at: datetime
    expires: datetime

    def as_event(self) -> dict:
        """What an event records of the badge (no name: a staff id is a work number)."""
        return {"staff_id": self.staff_id, "role": self.role, "badge_id": self.badge_id}


def issue_badge(
    central_key: ed25519.Ed25519PrivateKey,
    staff_id: str,
    role: str,
    regency: str,
    *,
    valid_days: float = 365.0,
    issued_at: datetime | None = None,
    badge_id: str | None = None,
) -> str:
    """The QR text of a new badge signed by central (central side, ``edge badge issue``)."""
    if not _STAFF_RE.match(staff_id):
        raise BadgeError("staff id must be 2-32 characters of A-Z, 0-9 and '-'")
    if role not in STAFF_ROLES:
        raise BadgeError(f"role must be one of {', '.join(STAFF_ROLES)}")
    if not _REGENCY_RE.match(regency):
        raise BadgeError("regency must be a 4-digit BPS code")
    if valid_days <= 0:
        raise BadgeError("a badge must be valid for some time")
    issued = issued_at or datetime.now(UTC)
    body = {
        "v": 1,
        "bid": badge_id or b64url(secrets.token_bytes(9)),
        "staff": staff_id,
        "role": role,
        "reg": regency,
        "iat": iso_utc(issued, "seconds"),
        "exp": iso_utc(issued + timedelta(days=valid_days), "seconds"),
    }
    raw = canonical(body)
    sig = central_key.sign(BADGE_DOMAIN + raw)
    return f"{BADGE_PREFIX}.{b64url(raw)}.{b64url(sig)}"


def is_badge_text(text: str | None) -> bool:
    """True when a QR text claims to be a staff badge (it may still be forged)."""
    return bool(text) and str(text).startswith(BADGE_PREFIX + ".")


def verify_badge(text: str, central_public: bytes | ed25519.Ed25519PublicKey, now: float) -> Badge:
    """Check a badge's signature, form and validity at ``now``; raise BadgeError saying why.

    Role, regency, revocation and age against a policy are :meth:`OverridePolicy.refuses`.
    """
    parts = (text or "").strip().split(".")
    if len(text or "") > MAX_BADGE_TEXT or len(parts) != 3 or parts[0] != BADGE_PREFIX:
        raise BadgeError("not a staff badge")
    try:
        raw, sig = unb64url(parts[1]), unb64url(parts[2])
        key = (
            central_public
            if isinstance(central_public, ed25519.Ed25519PublicKey)
            else load_ed25519_public(central_public)
        )
    except (binascii.Error, ValueError, KeyFileError) as exc:
        raise BadgeError("badge is unreadable") from exc
    if not verify_ed25519(key, sig, BADGE_DOMAIN + raw):
        raise BadgeError("badge signature does not verify: forged or altered")
    try:
        body = json.loads(raw)
        badge = Badge(
            badge_id=str(body["bid"]),
            staff_id=str(body["staff"]),
            role=str(body["role"]),
            regency=str(body["reg"]),
            issued_at=parse_iso_utc(body["iat"]),
            expires=parse_iso_utc(body["exp"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadgeError("signed badge body is malformed") from exc
    if body.get("v") != 1 or not _STAFF_RE.match(badge.staff_id):
        raise BadgeError("signed badge body is malformed")
    if not _BADGE_ID_RE.match(badge.badge_id):
        raise BadgeError("signed badge body is malformed")
    if now >= badge.expires.timestamp():
        raise BadgeError(f"badge expired on {iso_utc(badge.expires, 'seconds')}")
    if now < badge.issued_at.timestamp():
        raise BadgeError("badge is not valid yet")
    return badge


def reason_text(code: str) -> str:
    """The QR text of a reason card."""
    if code not in REASONS:
        raise BadgeError(f"unknown override reason {code!r}")
    return REASON_PREFIX + code


def is_reason_text(text: str | None) -> bool:
    return bool(text) and str(text).startswith(REASON_PREFIX)


def parse_reason(text: str) -> str:
    """The reason code of a reason card; BadgeError for a code not on the fixed list."""
    code = (text or "").strip()[len(REASON_PREFIX) :]
    if not is_reason_text(text) or code not in REASONS:
        raise BadgeError("not a reason card of the fixed list")
    return code


# -- the policy central signs into the bundle -------------------------------------------------


@dataclass(frozen=True)
class OverridePolicy:
    """Central's limits on supervised overrides at one terminal (``override_policy``).

    Counts are of ``accepted_override`` events in this terminal's ledger. ``max_share`` applies
    once the terminal has made ``share_after`` payouts in the round (before that, one override
    among three payouts would already read 33 %). ``revoked`` holds badge ids or staff ids.
    ``evidence_key`` is central's X25519 public key (raw, base64) for sealed face crops.
    """

    roles: tuple[str, ...]
    max_per_staff_per_day: int
    max_per_terminal_per_round: int
    max_share: float
    share_after: int = 20
    max_badge_age_days: float = 365.0
    revoked: frozenset[str] = frozenset()
    refusals: tuple[str, ...] = OVERRIDABLE
    evidence_key: bytes | None = None

    def refuses(self, badge: Badge, regency: str, now: float) -> str | None:
        """Why this policy refuses ``badge`` at a terminal of ``regency``, or None."""
        if badge.badge_id in self.revoked or badge.staff_id in self.revoked:
            return "badge revoked"
        if badge.regency != regency:
            return "badge of another regency"
        if badge.role not in self.roles:
            return f"role {badge.role} may not override"
        if now - badge.issued_at.timestamp() > self.max_badge_age_days * 86400:
            return "badge older than the policy allows"
        return None

    def as_body(self) -> dict:
        """The JSON form signed into the bundle body."""
        body: dict = {
            "roles": list(self.roles),
            "max_per_staff_per_day": self.max_per_staff_per_day,
            "max_per_terminal_per_round": self.max_per_terminal_per_round,
            "max_share": self.max_share,
            "share_after": self.share_after,
            "max_badge_age_days": self.max_badge_age_days,
            "revoked": sorted(self.revoked),
            "refusals": list(self.refusals),
        }
        if self.evidence_key is not None:
            body["evidence_key"] = base64.b64encode(self.evidence_key).decode()
        return body


def parse_policy(obj: object) -> OverridePolicy | None:
    """The policy from a bundle body's ``override_policy`` (None: overrides are off).

    Raises ValueError naming the first field that is wrong: a bundle with a malformed policy
    is refused as a whole rather than run with limits nobody signed.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValueError("override_policy must be an object")
    known = set(OverridePolicy.__dataclass_fields__)
    stray = sorted(set(obj) - known)
    if stray:
        raise ValueError(f"override_policy: unknown field {stray[0]}")
    roles = tuple(obj.get("roles") or ())
    if not roles or any(r not in STAFF_ROLES for r in roles):
        raise ValueError(f"override_policy.roles must list roles of {', '.join(STAFF_ROLES)}")
    refusals = tuple(obj.get("refusals", OVERRIDABLE))
    if any(r not in OVERRIDABLE for r in refusals):
        raise ValueError(f"override_policy.refusals may only list {', '.join(OVERRIDABLE)}")
    key = obj.get("evidence_key")
    evidence_key = base64.b64decode(key, validate=True) if key is not None else None
    if evidence_key is not None and len(evidence_key) != 32:
        raise ValueError("override_policy.evidence_key must be a 32-byte X25519 key")
    policy = OverridePolicy(
        roles=roles,
        max_per_staff_per_day=_count(obj, "max_per_staff_per_day"),
        max_per_terminal_per_round=_count(obj, "max_per_terminal_per_round"),
        max_share=float(obj["max_share"]) if "max_share" in obj else -1.0,
        share_after=_count(obj, "share_after", 20),
        max_badge_age_days=float(obj.get("max_badge_age_days", 365.0)),
        revoked=frozenset(str(x) for x in obj.get("revoked", ())),
        refusals=refusals,
        evidence_key=evidence_key,
    )
    if not 0.0 <= policy.max_share <= 1.0:
        raise ValueError("override_policy.max_share must be between 0 and 1")
    if policy.max_badge_age_days <= 0:
        raise ValueError("override_policy.max_badge_age_days must be positive")
    return policy


def _count(obj: dict, name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if type(value) is not int or value < 0:
        raise ValueError(f"override_policy.{name} must be a non-negative integer")
    return value


# -- printing cards ---------------------------------------------------------------------------


def qr_image(text: str, box_size: int = 8):
    """A PIL image of ``text`` as a QR code (error correction M, quiet zone of 4 modules)."""
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=4)
    qr.add_data(text)
    qr.make(fit=True)
    return qr.make_image(fill_color="black", back_color="white").convert("RGB")


def _card(text: str, title: str, caption: str):
    """A printable card: the QR with a title above and a caption below."""
    from PIL import Image, ImageDraw, ImageFont

    code = qr_image(text)
    font = ImageFont.load_default(size=28)
    small = ImageFont.load_default(size=20)
    width = max(code.width, 480)
    card = Image.new("RGB", (width, code.height + 110), "white")
    card.paste(code, ((width - code.width) // 2, 60))
    draw = ImageDraw.Draw(card)
    draw.text((width // 2, 30), title, fill="black", font=font, anchor="mm")
    draw.text((width // 2, code.height + 80), caption, fill="black", font=small, anchor="mm")
    return card


def render_reason_cards(out_dir: Path | str) -> list[Path]:
    """One PNG per reason card and all of them in ``reason-cards.pdf`` (one card a page)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, pages = [], []
    for code, (title, caption) in REASONS.items():
        card = _card(reason_text(code), f"ALASAN: {title}", caption)
        path = out / f"reason-{code}.png"
        card.save(path)
        paths.append(path)
        pages.append(card)
    pdf = out / "reason-cards.pdf"
    pages[0].save(pdf, save_all=True, append_images=pages[1:], resolution=150.0)
    paths.append(pdf)
    return paths


def render_badge_png(text: str, path: Path | str, staff_id: str, role: str) -> Path:
    """A printable badge card: the signed QR with the staff id and role under it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _card(text, "KARTU PETUGAS BANSOS", f"{staff_id} ({role})").save(path)
    return path
