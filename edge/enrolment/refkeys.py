"""Central's household reference keys, one per regency and round, and the bundle manifest.

Every terminal of a regency must compute the same :func:`edge.privacy.household_ref` for a
household in a round (claims sync matches payouts by it), so the key is made once per regency
and round and kept by central; each bundle of that regency and round carries it, encrypted for
its terminal. The manifest is central's own list of who is who in a bundle (full household id
beside its reference): it never goes to a terminal, and the dashboard maps references back to
households with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edge.enrolment.bundle import BundleSpec, Household
from edge.enrolment.bundle_crypto import REF_KEY_BYTES
from edge.errors import BundleError
from edge.events import iso_utc
from edge.fsutil import write_atomic
from edge.privacy import household_ref

MANIFEST_FORMAT = "bansos.manifest/1"  # edge.central.manifest reads it
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def ref_key_for(folder: Path | str, regency: str, round_id: str) -> bytes:
    """The reference key of ``regency`` and ``round_id``, made (32 random bytes) on first use.

    Kept as ``<folder>/<regency>_<round_id>.key`` (mode 0600). Losing it means the next bundle
    of the round gets another key and the regency's terminals stop recognising each other's
    payouts until all of them have the new bundle: keep the folder with central's private key.
    """
    for what, value in (("regency", regency), ("round id", round_id)):
        if not _NAME.fullmatch(value):
            raise BundleError(f"{what} is not usable in a key file name")
    path = Path(folder) / f"{regency}_{round_id}.key"
    if not path.exists():
        # Written whole under another name, then linked: two builds at once cannot end up
        # with two keys, since link() fails when the name exists and the loser reads the file.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.new")
        write_atomic(tmp, os.urandom(REF_KEY_BYTES), 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) != REF_KEY_BYTES:
        raise BundleError(f"{path}: not a {REF_KEY_BYTES}-byte reference key")
    return key


def manifest(spec: BundleSpec, households: list[Household]) -> dict:
    """The manifest of a bundle built from ``spec`` and ``households`` (JSON-ready).

    ``{"format", "bundle_id", "device_id", "round_id", "regency", "point_name", "valid_from",
    "valid_until", "households": [{"household_id", "household_ref", "regency", "amount",
    "masked_name", "members"}]}``; give ``spec`` its ``bundle_id`` so both name the same bundle.
    """
    return {
        "format": MANIFEST_FORMAT,
        "bundle_id": spec.bundle_id,
        "device_id": spec.device_id,
        "round_id": spec.round_id,
        "regency": spec.regency,
        "point_name": spec.point_name,
        "valid_from": iso_utc(spec.valid_from, "seconds"),
        "valid_until": iso_utc(spec.valid_until, "seconds"),
        "households": [
            {
                "household_id": h.household_id,
                "household_ref": household_ref(spec.ref_key, spec.round_id, h.household_id),
                "regency": h.regency,
                "amount": int(h.amount),
                "masked_name": h.masked_name,
                "members": len(h.members),
            }
            for h in households
        ],
    }


def write_manifest(path: Path | str, doc: dict) -> None:
    """Write a manifest readable by central's user only: it lists full household ids."""
    write_atomic(Path(path), json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n")
