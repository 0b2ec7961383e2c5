"""What an attacker (or a broken central) can produce: signed bodies and events with any content.

The adversarial tests need inputs that pass the signature check and are wrong inside, which
the project's own builders refuse to make. These helpers sign whatever they are given.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import numpy as np
from support import REF_KEY

from edge.enrolment.bundle import BundleSpec, Household, Member, build_bundle, open_envelope
from edge.events import canonical, event_hash

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
MODEL = ("mobilefacenet-int8-0123456789ab", "ab" * 32)
DEVICE = "edge-test-0001"


def genuine_bundle(central_key, identity, limits=None) -> bytes:
    """A correct bundle for ``identity`` (two households, three templates)."""
    spec = BundleSpec(
        device_id=DEVICE,
        round_id="2026-12",
        point_name="Kantor Pos Menteng",
        regency="3171",
        model_id=MODEL[0],
        model_sha256=MODEL[1],
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
        issued_at=NOW - timedelta(hours=1),
        limits=limits,
        ref_key=REF_KEY,
    )
    households = [
        Household(
            "KPM-3171-0001-0001",
            "SITI A***",
            "3171",
            300_000,
            [Member("M1", "recipient"), Member("M2", "representative")],
        ),
        Household("KPM-3171-0001-0002", "BUDI S***", "3171", 300_000, [Member("M1", "recipient")]),
    ]
    labels = ["KPM-3171-0001-0001/M1", "KPM-3171-0001-0001/M2", "KPM-3171-0001-0002/M1"]
    matrix = np.eye(3, 128, dtype=np.float32)
    return build_bundle(
        spec,
        households,
        labels,
        matrix,
        central_key=central_key,
        device_bundle_public=identity.bundle_public_bytes(),
    )


def body_of(blob: bytes) -> dict:
    """The body dict of a bundle file (no checks)."""
    return json.loads(open_envelope(blob)[0])


def sign_body(body: object, central_key) -> bytes:
    """A bundle file whose body is ``body`` (any JSON value, or raw bytes), signed by central."""
    raw = body if isinstance(body, bytes) else _bytes(body)
    envelope = {
        "format": "bansos.bundle/1",
        "body": base64.b64encode(raw).decode(),
        "sig": base64.b64encode(central_key.sign(raw)).decode(),
    }
    return json.dumps(envelope).encode()


def _bytes(obj: object) -> bytes:
    # canonical() cannot encode a lone surrogate; an attacker just writes it as an escape.
    try:
        return canonical(obj)
    except UnicodeEncodeError:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def resign_event(event: dict, identity) -> dict:
    """``event`` with its hash and device signature made again (a device signs anything)."""
    ev = {k: v for k, v in event.items() if k not in ("hash", "sig")}
    try:
        ev["hash"] = event_hash(ev)
    except UnicodeEncodeError:
        ev["hash"] = hashlib.sha256(_bytes(ev)).hexdigest()
    ev["sig"] = base64.b64encode(identity.sign(ev["hash"].encode())).decode()
    return ev


def raw_event(event: dict) -> bytes:
    """JSON bytes of an event that may hold values canonical() cannot encode (lone surrogates),
    as an attacker would write them: with ASCII escapes."""
    return json.dumps(event, ensure_ascii=True).encode()
