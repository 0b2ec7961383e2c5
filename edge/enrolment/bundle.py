"""Enrolment bundle: what a terminal knows about the households it may pay.

A bundle is made centrally (or by ``edge bundle build`` for a pilot) for one terminal, one
distribution point and one round. On disk it is a small JSON envelope::

    {"format": "bansos.bundle/1", "body": "<base64 body>", "sig": "<base64 Ed25519>"}

``sig`` is central's Ed25519 signature over the exact body bytes, so nothing inside can change
without breaking it. The body (canonical JSON) holds the metadata, the households and their
members in clear (ids, masked names, amounts: no biometrics), and the face templates encrypted
for this one device: a random AES-256-GCM content key encrypts the float32 template matrix,
and is itself wrapped with a key derived (HKDF-SHA256) from X25519 between a one-off central
key and the device's bundle key. The same content key encrypts the round's household
reference key (``ref_key``, shared by the terminals of one regency and round; see
:func:`edge.privacy.household_ref`). Templates and key are decrypted only in memory. Format
details are in docs/ledger.md; the template encryption is :mod:`edge.enrolment.bundle_crypto`.
"""

from __future__ import annotations

import binascii
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.enrolment.badges import OverridePolicy, parse_policy
from edge.enrolment.bundle_body import DIM, check_body, check_limits
from edge.enrolment.bundle_crypto import REF_KEY_BYTES, decrypt_templates, encrypt_templates
from edge.errors import BundleError, KeyFileError
from edge.events import b64, canonical, iso_utc, parse_iso_utc, strict_json, unb64
from edge.keys import DeviceIdentity, fingerprint, load_central_public_key, verify_ed25519
from edge.privacy import household_ref

log = logging.getLogger(__name__)

FORMAT = "bansos.bundle/1"


@dataclass(frozen=True)
class Member:
    """A person allowed to collect for a household."""

    member_id: str
    role: str


@dataclass(frozen=True)
class Household:
    """One household (KPM) entitled to a payout in this bundle's round."""

    household_id: str
    masked_name: str
    regency: str
    amount: int
    members: list[Member] = field(default_factory=list)


@dataclass
class Bundle:
    """A verified bundle; templates are held decrypted in memory only."""

    bundle_id: str
    round_id: str
    point_name: str
    regency: str
    issued_at: datetime
    valid_from: datetime
    valid_until: datetime
    model_id: str
    model_sha256: str
    device_id: str
    households: dict[str, Household]
    # Signed ranges for remote threshold changes: key -> (min, max); edge.mqtt.remote_config.
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Central's limits on supervised overrides (edge/enrolment/badges.py); None: no overrides.
    override_policy: OverridePolicy | None = None
    _labels: list[str] = field(repr=False, default_factory=list)
    _matrix: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, DIM), np.float32))
    ref_key: bytes = field(repr=False, default=b"")

    def household_ref(self, household_id: str) -> str | None:
        """The household's pseudonymous reference in this round (None without a ref key)."""
        return household_ref(self.ref_key, self.round_id, household_id) if self.ref_key else None

    def templates(self) -> tuple[list[str], np.ndarray]:
        """Labels ``"<household_id>/<member_id>"`` (repeated for several photos), float32 Nx128."""
        return list(self._labels), self._matrix.copy()

    def is_valid_at(self, t: float) -> bool:
        return self.valid_from.timestamp() <= t <= self.valid_until.timestamp()

    def summary(self) -> dict:
        """Metadata for display and logs (no names, no templates)."""
        return {
            "bundle_id": self.bundle_id,
            "round_id": self.round_id,
            "point_name": self.point_name,
            "regency": self.regency,
            "issued_at": iso_utc(self.issued_at, "seconds"),
            "valid_from": iso_utc(self.valid_from, "seconds"),
            "valid_until": iso_utc(self.valid_until, "seconds"),
            "model_id": self.model_id,
            "device_id": self.device_id,
            "households": len(self.households),
            "members": sum(len(h.members) for h in self.households.values()),
            "templates": len(self._labels),
        }


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle is for: one terminal, one distribution point, one round, one model.

    ``bundle_id`` defaults to a new UUID4 and ``issued_at`` to now; a newer ``issued_at``
    replaces an installed bundle of the same round. ``limits`` (key -> (min, max), keys from
    ``bundle_body.LIMIT_KEYS``) is the range inside which a signed ``config`` command may move that
    threshold on the terminal; without it the threshold cannot be changed remotely. ``ref_key``: the round's household
    reference key, the same for every terminal of the regency (:mod:`edge.enrolment.refkeys`
    keeps it).
    """

    device_id: str
    round_id: str
    point_name: str
    regency: str
    model_id: str
    model_sha256: str
    valid_from: datetime
    valid_until: datetime
    # No default on purpose: a fresh random key per bundle would quietly split a regency's
    # terminals, each unable to see the others' payouts (edge.enrolment.refkeys.ref_key_for).
    ref_key: bytes = field(repr=False)
    bundle_id: str | None = None
    issued_at: datetime | None = None
    limits: dict[str, tuple[float, float]] | None = None


def build_bundle(
    spec: BundleSpec,
    households: list[Household],
    labels: list[str],
    matrix: np.ndarray,
    *,
    central_key: ed25519.Ed25519PrivateKey,
    device_bundle_public: bytes,
    override_policy: OverridePolicy | None = None,
) -> bytes:
    """Make a signed bundle whose templates only ``device_bundle_public`` can decrypt.

    ``labels[i]`` (``"<household_id>/<member_id>"``) names the member row ``i`` of the Nx128
    ``matrix`` belongs to.
    """
    matrix = _checked_templates(households, labels, matrix)
    if len(spec.ref_key) != REF_KEY_BYTES:
        raise BundleError(f"ref_key must be {REF_KEY_BYTES} bytes")
    if spec.valid_until <= spec.valid_from:
        raise BundleError("valid_until must be after valid_from")
    bundle_id = spec.bundle_id or str(uuid.uuid4())
    body = {
        "format": FORMAT,
        "bundle_id": bundle_id,
        "round_id": spec.round_id,
        "point_name": spec.point_name,
        "regency": spec.regency,
        "issued_at": iso_utc(spec.issued_at or datetime.now(UTC), "seconds"),
        "valid_from": iso_utc(spec.valid_from, "seconds"),
        "valid_until": iso_utc(spec.valid_until, "seconds"),
        "model": {"id": spec.model_id, "sha256": spec.model_sha256},
        "device": {"id": spec.device_id, "bundle_key": fingerprint(device_bundle_public)},
        "households": [_household_body(h) for h in households],
        "templates": encrypt_templates(
            labels, matrix, bundle_id, device_bundle_public, spec.ref_key
        ),
    }
    if override_policy is not None:
        body["override_policy"] = override_policy.as_body()
    if spec.limits:
        body["limits"] = {k: {"min": lo, "max": hi} for k, (lo, hi) in spec.limits.items()}
    check_body(body)  # central signs only what a terminal would accept
    body_bytes = canonical(body)
    envelope = {
        "format": FORMAT,
        "body": b64(body_bytes),
        "sig": b64(central_key.sign(body_bytes)),
    }
    return json.dumps(envelope, indent=1).encode() + b"\n"


def _checked_templates(
    households: list[Household], labels: list[str], matrix: np.ndarray
) -> np.ndarray:
    """The template matrix as little-endian float32, or BundleError when it cannot be used."""
    matrix = np.ascontiguousarray(matrix, dtype="<f4")
    if matrix.ndim != 2 or matrix.shape[1] != DIM or matrix.shape[0] != len(labels):
        raise BundleError(f"templates must be {len(labels)}x{DIM}, got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise BundleError("templates contain NaN or infinity")
    known = {f"{h.household_id}/{m.member_id}" for h in households for m in h.members}
    stray = [lab for lab in labels if lab not in known]
    if stray:
        raise BundleError(f"{len(stray)} template label(s) name no household member")
    return matrix


def _household_body(h: Household) -> dict:
    return {
        "household_id": h.household_id,
        "masked_name": h.masked_name,
        "regency": h.regency,
        "amount": int(h.amount),
        "members": [{"member_id": m.member_id, "role": m.role} for m in h.members],
    }


def open_envelope(blob: bytes) -> tuple[bytes, bytes | None]:
    """Split a bundle file into body bytes and signature (None when unsigned); no checks."""
    try:
        env = json.loads(blob)
        if env.get("format") != FORMAT:
            raise BundleError(f"not a {FORMAT} bundle (format {str(env.get('format'))[:32]!r})")
        body = unb64(env["body"])
        sig = unb64(env["sig"]) if env.get("sig") else None
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BundleError("not a bundle file (unreadable envelope)") from exc
    return body, sig


def read_metadata(blob: bytes) -> dict:
    """The body of a bundle without its encrypted templates, unverified (for ``inspect``)."""
    body, sig = open_envelope(blob)
    try:
        meta = strict_json(body)
        tpl = meta.pop("templates", {}) or {}
        meta["template_count"] = len(tpl.get("labels", []))
        meta["signed"] = sig is not None
    except (ValueError, AttributeError, TypeError) as exc:
        raise BundleError("bundle body is not a JSON object") from exc
    return meta


def verify_and_open(
    blob: bytes,
    central_public_pem: bytes,
    identity: DeviceIdentity,
    model_id: str,
    model_sha256: str,
    now: float,
    device_id: str | None,
) -> Bundle:
    """Verify a bundle for this terminal at time ``now`` and decrypt its templates in memory.

    Raises BundleError naming the first reason it cannot be used: unsigned, not signed by
    central, malformed, for another device or model, not yet valid or expired.
    """
    body_bytes, sig = open_envelope(blob)
    if sig is None:
        raise BundleError("bundle is unsigned")
    try:
        central = load_central_public_key(central_public_pem)
    except KeyFileError as exc:
        raise BundleError(f"central public key: {exc}") from exc
    if not verify_ed25519(central, sig, body_bytes):
        raise BundleError("bundle signature does not verify: tampered or not signed by central")
    try:
        return _open_body(body_bytes, identity, model_id, model_sha256, now, device_id)
    except BundleError:
        raise
    except Exception as exc:  # total: a signed body no rule foresaw is refused, not a crash
        raise BundleError(f"signed bundle body is malformed ({exc.__class__.__name__})") from exc


def _date(body: dict, key: str) -> datetime:
    try:
        return parse_iso_utc(body[key])
    except (KeyError, AttributeError, ValueError) as exc:  # missing, not text, not a time
        raise BundleError(f"{key} is not an ISO 8601 time") from exc


def _open_body(
    body_bytes: bytes,
    identity: DeviceIdentity,
    model_id: str,
    model_sha256: str,
    now: float,
    device_id: str | None,
) -> Bundle:
    """The checks of :func:`verify_and_open` after the signature, then decryption."""
    try:
        b = strict_json(body_bytes)
    except ValueError as exc:
        raise BundleError(f"signed bundle body is malformed: {exc}") from exc
    if not isinstance(b, dict) or b.get("format") != FORMAT:
        found = b.get("format") if isinstance(b, dict) else None
        raise BundleError(f"unsupported bundle format {str(found)[:32]!r}")
    check_body(b)
    dev, model = b["device"], b["model"]
    valid_from, valid_until = _date(b, "valid_from"), _date(b, "valid_until")
    issued_at = _date(b, "issued_at")
    if valid_until <= valid_from:
        raise BundleError("valid_until must be after valid_from")
    if dev.get("bundle_key") != identity.bundle_fingerprint() or (
        device_id is not None and dev.get("id") != device_id
    ):
        raise BundleError(f"bundle is for another device ({dev.get('id')})")
    if model.get("id") != model_id or model.get("sha256") != model_sha256:
        raise BundleError(
            f"bundle templates are for model {model.get('id')}, this terminal runs {model_id}"
        )
    if now < valid_from.timestamp():
        raise BundleError(f"bundle not valid before {iso_utc(valid_from, 'seconds')}")
    if now > valid_until.timestamp():
        raise BundleError(f"bundle expired on {iso_utc(valid_until, 'seconds')}")
    try:
        policy = parse_policy(b.get("override_policy"))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BundleError(f"signed bundle body is malformed: {exc}") from exc
    labels, matrix, ref_key = decrypt_templates(b, identity)
    return Bundle(
        bundle_id=b["bundle_id"],
        round_id=b["round_id"],
        point_name=b["point_name"],
        regency=b["regency"],
        issued_at=issued_at,
        valid_from=valid_from,
        valid_until=valid_until,
        model_id=model["id"],
        model_sha256=model["sha256"],
        device_id=dev["id"],
        households=_households(b),
        limits=check_limits(b.get("limits")),
        override_policy=policy,
        _labels=labels,
        _matrix=matrix,
        ref_key=ref_key,
    )


def _households(body: dict) -> dict[str, Household]:
    # The body passed check_body: every key is there with the right type.
    households = {}
    for h in body["households"]:
        members = [Member(m["member_id"], m["role"]) for m in h["members"]]
        households[h["household_id"]] = Household(
            h["household_id"], h["masked_name"], h["regency"], h["amount"], members
        )
    return households
