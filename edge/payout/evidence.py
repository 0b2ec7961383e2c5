"""Sealed evidence of a supervised override: the face crop, readable by central only.

Off by default (``override.evidence``). When on, the aligned face crop of the capture an
override paid out despite is JPEG-encoded and sealed to central's X25519 evidence key (from
the signed override policy): a fresh ephemeral X25519 key, HKDF-SHA256 over the shared
secret, AES-256-GCM with the event id as associated data. The ephemeral private key is
dropped at once, so the terminal cannot read its own evidence back; whoever copies the SD card
gets ciphertext. Files are kept ``retention_days`` and leave the terminal only when central
asks for one with the signed ``evidence`` command.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import CommandRefused
from edge.fsutil import write_atomic

log = logging.getLogger(__name__)

FORMAT = "bansos.evidence/1"
ALG = "X25519-HKDF-SHA256-A256GCM"
_INFO = b"bansos.evidence/1 sealed face crop"
_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _raw(key: x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kek(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_INFO).derive(
        shared
    )


def seal(data: bytes, recipient_public: bytes, event_id: str) -> dict:
    """Encrypt ``data`` so only the holder of ``recipient_public``'s private key reads it."""
    eph = x25519.X25519PrivateKey.generate()
    epk = _raw(eph.public_key())
    shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_public))
    nonce = os.urandom(12)
    ciphertext = AESGCM(_kek(shared, epk, recipient_public)).encrypt(nonce, data, event_id.encode())
    return {
        "format": FORMAT,
        "alg": ALG,
        "event_id": event_id,
        "epk": base64.b64encode(epk).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }


def open_sealed(sealed: dict, private_key: x25519.X25519PrivateKey) -> bytes:
    """Central side: the plaintext of :func:`seal` (raises on a wrong key or altered box)."""
    epk = base64.b64decode(sealed["epk"])
    shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(epk))
    kek = _kek(shared, epk, _raw(private_key.public_key()))
    return AESGCM(kek).decrypt(
        base64.b64decode(sealed["nonce"]),
        base64.b64decode(sealed["ciphertext"]),
        str(sealed["event_id"]).encode(),
    )


def generate_evidence_key(path: Path | str) -> str:
    """Central side: make an X25519 evidence key at ``path`` (0600); return its public base64,
    the ``evidence_key`` of the override policy."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists; refusing to overwrite a key")
    key = x25519.X25519PrivateKey.generate()
    write_atomic(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return base64.b64encode(_raw(key.public_key())).decode()


class EvidenceStore:
    """Sealed crops under ``folder``, one file per override event, kept ``retention_days``."""

    def __init__(
        self, folder: Path, retention_days: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.folder = Path(folder)
        self.retention_s = retention_days * 86400.0
        self._clock = clock

    def _path(self, event_id: str) -> Path:
        if not _ID_RE.match(event_id):
            raise CommandRefused("evidence: event id is not a UUID")
        return self.folder / f"{event_id}.json"

    def keep(self, event_id: str, crop: np.ndarray, recipient_public: bytes) -> bool:
        """Seal and store the crop of an override; False (logged) when it could not be."""
        import cv2

        ok, jpeg = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            log.warning("evidence for %s not kept: the crop did not encode", event_id)
            return False
        sealed = seal(jpeg.tobytes(), recipient_public, event_id)
        sealed["sealed_at"] = self._clock()
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._path(event_id), json.dumps(sealed).encode())
        except OSError as exc:
            log.warning("evidence for %s not kept: %s", event_id, exc)
            return False
        self.purge()
        return True

    def purge(self) -> int:
        """Delete evidence past its retention; returns how many files went."""
        if not self.folder.is_dir():
            return 0
        gone = 0
        horizon = self._clock() - self.retention_s
        for path in self.folder.glob("*.json"):
            try:
                if _sealed_at(path) < horizon:
                    path.unlink()
                    gone += 1
            except OSError as exc:
                log.warning("evidence purge: %s: %s", path.name, exc)
        if gone:
            log.info("evidence: %d sealed crop(s) past retention deleted", gone)
        return gone

    def get(self, event_id: str) -> dict | None:
        """The sealed box of an event, or None when none is kept (or it expired)."""
        self.purge()
        path = self._path(event_id)
        if not path.is_file():
            return None
        return json.loads(path.read_bytes())

    def command(self, args: dict) -> dict:
        """The ``evidence`` command's action: the sealed box, for central only to open."""
        sealed = self.get(str(args.get("event_id", "")))
        if sealed is None:
            raise CommandRefused("evidence: none kept for this event (off, expired or unknown)")
        sealed.pop("sealed_at", None)
        return {"evidence": sealed}


def _sealed_at(path: Path) -> float:
    # An unreadable file counts as sealed at 0: it goes at the next purge.
    try:
        return float(json.loads(path.read_bytes()).get("sealed_at", 0.0))
    except (ValueError, AttributeError, TypeError):
        return 0.0
