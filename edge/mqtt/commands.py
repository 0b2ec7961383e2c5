"""Signed commands from central: what one is, and how central makes and signs it.

A command is a ``bansos.command/1`` JSON object signed with central's Ed25519 key (the same
key that signs enrolment bundles), addressed to one terminal and carrying a replay
``counter`` larger than that terminal's last (:class:`CommandCounter`). Large enrolment
bundles travel in chunks, each a separately signed command (:func:`bundle_commands`). The
terminal's side, which checks a command and runs it, is :mod:`edge.mqtt.processor`; the
actions it runs are :mod:`edge.mqtt.actions`.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge.errors import KeyFileError
from edge.events import canonical, iso_utc
from edge.mqtt.counter import CommandCounter, fallback_counter

COMMAND_NAMES = ("bundle", "config", "reprint", "health", "resend", "evidence", "update")
# The largest resend range a terminal accepts; central splits longer gaps.
MAX_RESEND = 10000
CHUNK_BYTES = 128 * 1024


def sign_command(
    central_private_key: Ed25519PrivateKey | bytes,
    device_id: str,
    name: str,
    args: dict,
    *,
    issued_at: float | None = None,
    command_id: str | None = None,
    counter: int | CommandCounter | None = None,
) -> bytes:
    """Build and sign one command for ``device_id`` (central side and tests).

    ``counter`` is the command's replay counter, or a :class:`CommandCounter` to allocate it
    from; None takes central's microsecond clock (one signer only).
    """
    key = _signing_key(central_private_key)
    if isinstance(counter, CommandCounter):
        counter = counter.next(device_id)
    body = {
        "schema": "bansos.command/1",
        "id": command_id or str(uuid.uuid4()),
        "device_id": device_id,
        "name": name,
        "issued_at": iso_utc(time.time() if issued_at is None else issued_at),
        "counter": fallback_counter() if counter is None else counter,
        "args": args,
    }
    body["sig"] = base64.b64encode(key.sign(canonical(body))).decode("ascii")
    return canonical(body)


def _signing_key(key: Ed25519PrivateKey | bytes) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    loaded = load_pem_private_key(key, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"expected an Ed25519 private key, got {type(loaded).__name__}")
    return loaded


def bundle_commands(
    central_private_key: Ed25519PrivateKey | bytes,
    device_id: str,
    bundle_id: str,
    blob: bytes,
    chunk_bytes: int = CHUNK_BYTES,
    issued_at: float | None = None,
    counter: CommandCounter | None = None,
) -> list[bytes]:
    """Split an enrolment bundle blob into signed ``bundle`` commands, one per chunk, with
    increasing counters (send them in this order)."""
    digest = hashlib.sha256(blob).hexdigest()
    parts = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    return [
        sign_command(
            central_private_key,
            device_id,
            "bundle",
            {
                "bundle_id": bundle_id,
                "sha256": digest,
                "chunk": i,
                "chunks": len(parts),
                "data": base64.b64encode(part).decode("ascii"),
            },
            issued_at=issued_at,
            counter=counter,
        )
        for i, part in enumerate(parts)
    ]
