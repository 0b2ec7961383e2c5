"""Device identity and the central key.

Every terminal makes its own keys at provisioning; private keys never leave ``keys_dir``:

- ``device_ed25519.pem``: signs every ledger event and receipt;
- ``bundle_x25519.pem``: central wraps each enrolment bundle's content key to it;
- ``tls_key.pem`` (EC P-256) + ``tls.csr``: the client certificate for mutual TLS to the broker.

Central (or a pilot's laptop) holds one Ed25519 key that signs bundles and commands.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import NameOID

from edge.errors import KeyFileError
from edge.fsutil import write_atomic

log = logging.getLogger(__name__)

SIGN_KEY_FILE = "device_ed25519.pem"
BUNDLE_KEY_FILE = "bundle_x25519.pem"
TLS_KEY_FILE = "tls_key.pem"
TLS_CSR_FILE = "tls.csr"
CARD_FILE = "device.pub.json"


def _pem_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_private(path: Path, kind: type):
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot load private key: {exc}") from exc
    if not isinstance(key, kind):
        raise KeyFileError(f"{path}: wrong key type {type(key).__name__}")
    return key


def fingerprint(public_raw: bytes) -> str:
    """Short sha256 fingerprint (hex, 16 chars) of a raw public key, for display and binding."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class DeviceIdentity:
    """The terminal's Ed25519 signing key and X25519 bundle key."""

    def __init__(
        self, sign_key: ed25519.Ed25519PrivateKey, bundle_key: x25519.X25519PrivateKey
    ) -> None:
        self._sign = sign_key
        self._bundle = bundle_key

    @classmethod
    def load_or_create(cls, keys_dir: Path | str) -> DeviceIdentity:
        """Load the keys from ``keys_dir``, making any that are missing (files mode 0600)."""
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sign_path = keys_dir / SIGN_KEY_FILE
        bundle_path = keys_dir / BUNDLE_KEY_FILE
        if sign_path.exists():
            sign = _load_private(sign_path, ed25519.Ed25519PrivateKey)
        else:
            sign = ed25519.Ed25519PrivateKey.generate()
            write_atomic(sign_path, _pem_private(sign))
            log.info("made device signing key in %s", keys_dir)
        if bundle_path.exists():
            bundle = _load_private(bundle_path, x25519.X25519PrivateKey)
        else:
            bundle = x25519.X25519PrivateKey.generate()
            write_atomic(bundle_path, _pem_private(bundle))
            log.info("made device bundle key in %s", keys_dir)
        for p in (sign_path, bundle_path):
            if p.stat().st_mode & 0o077:
                log.warning("key file %s is readable by others; fixing mode to 0600", p.name)
                os.chmod(p, 0o600)
        return cls(sign, bundle)

    @classmethod
    def generate(cls) -> DeviceIdentity:
        """A throw-away identity in memory (tests, simulations)."""
        return cls(ed25519.Ed25519PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def device_public_pem(self) -> bytes:
        """Ed25519 public key (SubjectPublicKeyInfo PEM) that verifies events and receipts."""
        return public_pem(self._sign.public_key())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        return self._sign.sign(data)

    def bundle_public_bytes(self) -> bytes:
        """Raw 32-byte X25519 public key that central encrypts bundles to."""
        return self._bundle.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def bundle_exchange(self, peer_public_raw: bytes) -> bytes:
        """X25519 shared secret with a bundle's ephemeral key (the private key stays inside)."""
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public_raw)
        return self._bundle.exchange(peer)

    def sign_fingerprint(self) -> str:
        raw = self._sign.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return fingerprint(raw)

    def bundle_fingerprint(self) -> str:
        return fingerprint(self.bundle_public_bytes())

    def card(self, device_id: str) -> dict:
        """The public "device card" central needs: device id and both public keys, no secrets."""
        return {
            "device_id": device_id,
            "sign_public_pem": self.device_public_pem().decode(),
            "sign_fingerprint": self.sign_fingerprint(),
            "bundle_public": base64.b64encode(self.bundle_public_bytes()).decode(),
            "bundle_fingerprint": self.bundle_fingerprint(),
        }


@dataclass(frozen=True)
class DevicePublic:
    """What central knows about a terminal (read from its card or a bare PEM)."""

    device_id: str | None
    sign_public_pem: bytes
    bundle_public: bytes | None


def write_card(identity: DeviceIdentity, device_id: str, path: Path) -> None:
    """Write the device card (public keys only) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity.card(device_id), indent=2) + "\n")


def load_device_public(path: Path | str) -> DevicePublic:
    """Read a device card (JSON from ``edge keys show --out``) or a bare Ed25519 public PEM."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if raw.lstrip().startswith(b"{"):
        try:
            card = json.loads(raw)
            pem = card["sign_public_pem"].encode()
            bundle = base64.b64decode(card["bundle_public"]) if card.get("bundle_public") else None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a device card: {exc}") from exc
        load_ed25519_public(pem)
        if bundle is not None and len(bundle) != 32:
            raise KeyFileError(f"{path}: bundle_public is not a 32-byte X25519 key")
        return DevicePublic(card.get("device_id"), pem, bundle)
    load_ed25519_public(raw)
    return DevicePublic(None, raw, None)


def load_ed25519_public(pem: bytes | str) -> ed25519.Ed25519PublicKey:
    """Parse an Ed25519 public key PEM, raising KeyFileError with one clear line otherwise."""
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a public key PEM: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def load_central_public_key(pem: bytes | str) -> ed25519.Ed25519PublicKey:
    """The central Ed25519 public key (``bundle.central_public_key`` in the config)."""
    return load_ed25519_public(pem)


def verify_ed25519(public_pem: bytes | ed25519.Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    """True when ``sig`` is a valid Ed25519 signature of ``data``."""
    if isinstance(public_pem, ed25519.Ed25519PublicKey):
        key = public_pem
    else:
        key = load_ed25519_public(public_pem)
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def generate_central_key(path: Path | str) -> bytes:
    """Make a central Ed25519 key at ``path`` (0600) and its public PEM at ``<path>.pub``.

    Returns the public PEM. For a pilot; a national deployment keeps this key in an HSM.
    """
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"{path}: exists; refusing to overwrite a central key")
    key = ed25519.Ed25519PrivateKey.generate()
    write_atomic(path, _pem_private(key))
    pub = public_pem(key.public_key())
    path.with_name(path.name + ".pub").write_bytes(pub)
    return pub


def load_central_private_key(path: Path | str) -> ed25519.Ed25519PrivateKey:
    """The central signing key made by :func:`generate_central_key`."""
    return _load_private(Path(path), ed25519.Ed25519PrivateKey)


def make_tls_key_and_csr(keys_dir: Path | str, device_id: str) -> bytes:
    """Make (or reuse) the device's EC P-256 TLS key and return a CSR PEM with CN=device id.

    The key stays in ``keys_dir/tls_key.pem``; the CSR (also written to ``tls.csr``) goes to
    the central CA, which returns the client certificate for mutual TLS to the broker.
    """
    keys_dir = Path(keys_dir)
    key_path = keys_dir / TLS_KEY_FILE
    if key_path.exists():
        key = _load_private(key_path, ec.EllipticCurvePrivateKey)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_atomic(key_path, _pem_private(key))
        log.info("made device TLS key in %s", keys_dir)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    (keys_dir / TLS_CSR_FILE).write_bytes(pem)
    return pem


def load_central_public_pem(
    path: Path | None, *, key: str = "bundle.central_public_key"
) -> bytes | None:
    """Central's public key PEM (signs bundles and commands) from the file ``path``.

    ``None`` (nothing configured) gives ``None``: the caller warns and runs without verifying
    bundles or commands. A configured file that cannot be read or is not an Ed25519 public key
    raises KeyFileError naming ``key`` (the config key or option that named the file).
    """
    if path is None:
        return None
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    try:
        load_ed25519_public(pem)
    except KeyFileError as exc:
        raise KeyFileError(f"{key}: {path}: {exc}") from exc
    return pem
