"""The device registry: which terminals exist, in which regency, with which key, signed by central.

A terminal's word is only worth its signature, and a signature only says something once we know
whose key it is. The registry is that list, issued by central and signed with central's Ed25519
key (the key that signs bundles and commands), in the canonical form of :mod:`edge.events`::

    {"schema": "bansos.registry/1", "version": 7, "issued_at": "2026-12-01T08:00:00.000Z",
     "devices": [{"device_id": "edge-a01", "regency": "3171", "public_pem": "-----BEGIN...",
                  "status": "active", "revoked_at": null}, ...],
     "sig": "<base64 Ed25519 over the canonical form without sig>"}

``version`` only goes up: a terminal keeps the newest registry it has verified and refuses an
older one, so a replayed registry cannot un-revoke a stolen terminal. Claims sync, central's
consumer and ``edge audit --receipt`` all look a device up here (:func:`event_problem`), and the
broker's ACL is generated from it (:func:`mosquitto_acl`). Shipping: see docs/security.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import KeyFileError, RegistryError
from edge.events import canonical, check_event, iso_utc, parse_iso_utc
from edge.fsutil import write_atomic
from edge.keys import load_ed25519_public, verify_ed25519

log = logging.getLogger(__name__)

SCHEMA = "bansos.registry/1"
FILE_NAME = "registry.json"
# A national fleet is tens of thousands of terminals at ~250 bytes each; anything far larger
# is not a registry and is refused before parsing.
MAX_BYTES = 32 * 1024 * 1024
MAX_VERSION = 2**53 - 1
DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{2,62}")
REGENCY = re.compile(r"[0-9]{4}")
_BODY_KEYS = {"schema", "version", "issued_at", "devices"}
_DEVICE_KEYS = {"device_id", "regency", "public_pem", "status", "revoked_at"}


@dataclass(frozen=True)
class DeviceEntry:
    """One terminal: its id, regency, Ed25519 public key and whether it is revoked.

    ``regency`` is None only for entries of the old unsigned consumer registry (a folder of
    PEM files), which knows keys but not places.
    """

    device_id: str
    regency: str | None
    public_pem: bytes
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_json(self) -> dict:
        return {
            "device_id": self.device_id,
            "regency": self.regency,
            "public_pem": self.public_pem.decode("ascii"),
            "status": "revoked" if self.revoked else "active",
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class Registry:
    """A verified registry; ``blob`` is the signed document as it arrived (to store or forward)."""

    version: int
    issued_at: str
    devices: Mapping[str, DeviceEntry]
    blob: bytes

    def lookup(self, device_id: str) -> DeviceEntry | None:
        """The device's entry, or None when central never registered it."""
        return self.devices.get(device_id)

    def active(self) -> list[DeviceEntry]:
        """Devices not revoked, by id."""
        return [d for _, d in sorted(self.devices.items()) if not d.revoked]


# -- central: build and sign -----------------------------------------------------------------


def sign_registry(
    central_key: Ed25519PrivateKey,
    devices: Iterable[DeviceEntry],
    version: int,
    issued_at: float | None = None,
) -> bytes:
    """The signed registry document (canonical JSON bytes) for ``devices`` at ``version``."""
    entries = sorted(devices, key=lambda d: d.device_id)
    body = {
        "schema": SCHEMA,
        "version": version,
        "issued_at": iso_utc(time.time() if issued_at is None else issued_at),
        "devices": [d.as_json() for d in entries],
    }
    _check_body(body)  # central must not sign what a terminal would refuse
    body["sig"] = base64.b64encode(central_key.sign(canonical(body))).decode("ascii")
    return canonical(body)


def revoke(registry: Registry, device_id: str, at: float | None = None) -> list[DeviceEntry]:
    """The registry's devices with ``device_id`` revoked from ``at`` (default now)."""
    entry = registry.lookup(device_id)
    if entry is None:
        raise RegistryError(f"device {device_id} is not in registry version {registry.version}")
    when = iso_utc(time.time() if at is None else at)
    return [
        DeviceEntry(d.device_id, d.regency, d.public_pem, when) if d.device_id == device_id else d
        for d in registry.devices.values()
    ]


# -- everyone: verify and read ---------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise RegistryError("registry has a duplicate JSON key")
    return dict(pairs)


def open_registry(blob: bytes, central_public_pem: bytes) -> Registry:
    """Verify central's signature on ``blob``, then its content; raise RegistryError otherwise."""
    if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_BYTES:
        raise RegistryError(f"registry is not a byte string of at most {MAX_BYTES} bytes")
    try:
        doc = json.loads(bytes(blob), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise RegistryError("registry is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("sig"), str):
        raise RegistryError("registry is unsigned")
    sig_text = doc.pop("sig")
    try:
        sig = base64.b64decode(sig_text, validate=True)
        message = canonical(doc)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise RegistryError("registry signature is not base64, or the body not UTF-8") from exc
    try:
        key = load_ed25519_public(central_public_pem)
    except KeyFileError as exc:
        raise RegistryError(f"central public key: {exc}") from exc
    if base64.b64encode(sig).decode("ascii") != sig_text or not verify_ed25519(key, sig, message):
        raise RegistryError("registry signature does not verify: not signed by central")
    devices = _check_body(doc)
    return Registry(doc["version"], doc["issued_at"], devices, bytes(blob))


def _check_body(body: dict) -> dict[str, DeviceEntry]:
    """The entries of a signed body, or RegistryError naming the first thing wrong."""
    if set(body) != _BODY_KEYS or body["schema"] != SCHEMA:
        raise RegistryError(f"not a {SCHEMA} document")
    version = body["version"]
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise RegistryError("registry version must be an integer from 1")
    _check_time(body["issued_at"], "issued_at")
    if not isinstance(body["devices"], list):
        raise RegistryError("registry devices must be a list")
    out: dict[str, DeviceEntry] = {}
    for n, item in enumerate(body["devices"]):
        entry = _check_device(item, n)
        if entry.device_id in out:
            raise RegistryError(f"device {entry.device_id} listed twice")
        out[entry.device_id] = entry
    return out


def _check_time(value: object, what: str) -> None:
    try:
        if not isinstance(value, str) or not value.isascii() or len(value) > 40:
            raise ValueError(what)
        parse_iso_utc(value)
    except ValueError as exc:
        raise RegistryError(f"registry {what} is not an ISO 8601 time") from exc


def _check_device(item: object, n: int) -> DeviceEntry:
    where = f"registry device #{n}"
    if not isinstance(item, dict) or set(item) != _DEVICE_KEYS:
        raise RegistryError(f"{where} must have exactly {', '.join(sorted(_DEVICE_KEYS))}")
    device_id, regency, pem = item["device_id"], item["regency"], item["public_pem"]
    if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
        raise RegistryError(f"{where}: device_id is not a device id")
    if not isinstance(regency, str) or not REGENCY.fullmatch(regency):
        raise RegistryError(f"{where} ({device_id}): regency is not a 4-digit BPS code")
    if not isinstance(pem, str) or not pem.isascii():
        raise RegistryError(f"{where} ({device_id}): public_pem is not PEM text")
    try:
        load_ed25519_public(pem.encode("ascii"))
    except KeyFileError as exc:
        raise RegistryError(f"{where} ({device_id}): {exc}") from exc
    status, revoked_at = item["status"], item["revoked_at"]
    if status == "active" and revoked_at is None:
        return DeviceEntry(device_id, regency, pem.encode("ascii"))
    if status == "revoked":
        _check_time(revoked_at, f"revoked_at of {device_id}")
        return DeviceEntry(device_id, regency, pem.encode("ascii"), revoked_at)
    raise RegistryError(f"{where} ({device_id}): status must be active (no revoked_at) or revoked")


def event_problem(
    entry: DeviceEntry | None,
    event: dict,
    *,
    topic_regency: str | None = None,
    own_regency: str | None = None,
) -> str | None:
    """Why ``event`` may not be believed on the registry's word, or None when it may.

    Unknown and revoked devices are refused; so is a device registered in another regency than
    the event names, the topic it came on, or (for claims sync) the terminal's own regency;
    then the hash and the signature are checked against the registered key.
    """
    if entry is None:
        return "unknown device"
    if entry.revoked:
        return f"device revoked at {entry.revoked_at}"
    if entry.regency is not None:
        for claimed, what in (
            (event.get("regency"), "the event"),
            (topic_regency, "the topic"),
            (own_regency, "this terminal"),
        ):
            if claimed is not None and claimed != entry.regency:
                return f"device is registered in regency {entry.regency}, not {what}'s {claimed}"
    return check_event(event, entry.public_pem)


def message_problem(entry: DeviceEntry | None, message: dict) -> str | None:
    """Why ``message`` (a command result: ``sig`` is base64 Ed25519 over the canonical form
    without ``sig``) was not signed by ``entry``'s device, or None when it was."""
    if entry is None:
        return "unknown device"
    if entry.revoked:
        return f"device revoked at {entry.revoked_at}"
    body = {k: v for k, v in message.items() if k != "sig"}
    try:
        sig = base64.b64decode(str(message.get("sig") or ""), validate=True)
        signed = canonical(body)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "signature unreadable"
    return None if verify_ed25519(entry.public_pem, sig, signed) else "bad signature"


def mosquitto_acl(
    registry: Registry, prefix: str = "bansos/v1", central_user: str = "central"
) -> str:
    """A Mosquitto ``acl_file`` from the registry (usernames are the certificates' CNs).

    Each active terminal writes only its own event, status, health and command-result topics,
    and reads only its own commands, its own regency's events (claims sync) and the registry.
    A revoked terminal gets no line at all: with an ``acl_file``, Mosquitto denies what is not
    granted. Central reads and writes everything.
    """
    lines = [
        f"# generated from device registry version {registry.version} ({registry.issued_at})",
        "# by `edge registry acl`; regenerate after every registry change",
        f"user {central_user}",
        f"topic readwrite {prefix}/#",
        "",
    ]
    for d in registry.active():
        base = f"{prefix}/{d.regency}/{d.device_id}"
        lines += [
            f"user {d.device_id}",
            f"topic write {base}/event",
            f"topic write {base}/status",
            f"topic write {base}/health",
            f"topic write {base}/cmd/+/result",
            f"topic read {base}/cmd/+",
            f"topic read {prefix}/{d.regency}/+/event",
            f"topic read {prefix}/registry",
            "",
        ]
    return "\n".join(lines)


def registry_topic(prefix: str = "bansos/v1") -> str:
    """The retained topic central publishes the signed registry on."""
    return f"{prefix}/registry"


class RegistryStore:
    """The installed registry, one file: install after verification, never an older version.

    Terminals keep it in ``state_dir/registry.json``; central's consumer may point at the file
    central signs. ``lookup`` re-reads the file when it changed on disk (looked at no more than
    every ``reload_s``), so a new device or a revocation needs no restart. Thread-safe.
    """

    def __init__(self, path: Path | str, central_public_pem: bytes, reload_s: float = 5.0):
        self.path = Path(path)
        self._central = central_public_pem
        self._reload_s = reload_s
        self._lock = threading.Lock()
        self._current: Registry | None = None
        self._loaded_at = 0.0
        self._stamp: tuple[int, int] | None = None
        self._load()

    def _load(self) -> None:
        self._loaded_at = time.monotonic()
        try:
            st = self.path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size)
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("device registry %s unreadable: %s", self.path, exc.strerror)
            return
        try:
            reg = open_registry(blob, self._central)
        except RegistryError as exc:
            # Tampered on disk: trust nothing rather than a file anyone with the card can edit.
            log.error("device registry %s refused: %s", self.path, exc)
            return
        if self._current is None or reg.version >= self._current.version:
            self._current = reg

    def current(self) -> Registry | None:
        """The newest verified registry, or None when none is installed."""
        with self._lock:
            return self._current

    def lookup(self, device_id: str) -> DeviceEntry | None:
        """The device's entry in the current registry (the file re-read when it changed)."""
        with self._lock:
            if time.monotonic() - self._loaded_at > self._reload_s:
                self._loaded_at = time.monotonic()
                try:
                    st = self.path.stat()
                except OSError:
                    st = None
                if st is not None and (st.st_mtime_ns, st.st_size) != self._stamp:
                    self._load()
            return self._current.lookup(device_id) if self._current else None

    def install(self, blob: bytes) -> tuple[Registry, bool]:
        """Verify and keep ``blob``; ``(registry, True)`` when it replaced the installed one.

        The same version again is a no-op; an older version, or the same version with other
        content, is refused with RegistryError and the installed registry stays.
        """
        reg = open_registry(blob, self._central)
        with self._lock:
            cur = self._current
            if cur is not None and reg.version < cur.version:
                raise RegistryError(
                    f"registry version {reg.version} is older than the installed {cur.version}"
                )
            if cur is not None and reg.version == cur.version:
                if reg.devices != cur.devices:
                    raise RegistryError(
                        f"registry version {reg.version} differs from the installed one"
                    )
                return cur, False
            write_atomic(self.path, reg.blob, mode=0o644)
            st = self.path.stat()
            self._current, self._stamp = reg, (st.st_mtime_ns, st.st_size)
        log.info("device registry version %d installed (%d devices)", reg.version, len(reg.devices))
        return reg, True
