"""Entitlement manifests: who may collect how much, where, in which round, registered at central.

A manifest (``bansos.manifest/1``) is the clear part of what central put into a bundle::

    {"format": "bansos.manifest/1", "round_id": "2026-12", "device_id": "edge-a01",
     "regency": "3171", "point_name": "Kantor Pos Tebet", "bundle_id": "...",
     "households": [{"household_id": "KPM-3171-0001-0001", "household_ref": "h_...",
                     "amount": 300000, "masked_name": "SITI A***"}, ...]}

``household_ref`` (the keyed pseudonym of :func:`edge.privacy.household_ref`) is optional:
events are matched to an entitlement by ``household_ref`` or ``household_id``, whichever the
terminal sent. A household may override ``device_id``, ``point_name`` and ``regency``, so one
manifest can cover a whole round. A signed bundle file is accepted as well: its body lists the
same households (ids, masked names, amounts) and is checked against central's key first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge.central.store import CentralStore
from edge.enrolment.refkeys import MANIFEST_FORMAT
from edge.errors import BundleError, CentralError
from edge.keys import verify_ed25519

log = logging.getLogger(__name__)

# The format `edge bundle build` writes beside each bundle (edge.enrolment.refkeys.manifest).
FORMAT = MANIFEST_FORMAT


def manifest_from_bundle(
    blob: bytes, central_public_pem: bytes, ref_keys: Path | str | None = None
) -> dict:
    """The manifest of a bundle file, after checking central's signature on it.

    The bundle's reference key travels encrypted to its terminal, so central computes each
    household's reference from its own copy in ``ref_keys`` (the folder `edge bundle build`
    keeps them in); without it the households have no reference, and payouts (which name only
    references) cannot be matched to them.
    """
    from edge.enrolment.bundle import open_envelope
    from edge.enrolment.refkeys import ref_key_for
    from edge.privacy import household_ref

    body_bytes, sig = open_envelope(blob)
    if sig is None or not verify_ed25519(central_public_pem, sig, body_bytes):
        raise BundleError("bundle signature does not verify with central's key")
    body = json.loads(body_bytes)
    key = ref_key_for(ref_keys, body["regency"], body["round_id"]) if ref_keys else None
    for h in body.get("households", []):
        if key is not None:
            h["household_ref"] = household_ref(key, body["round_id"], h["household_id"])
    return {
        "format": FORMAT,
        "round_id": body["round_id"],
        "device_id": body["device"]["id"],
        "regency": body["regency"],
        "point_name": body["point_name"],
        "bundle_id": body["bundle_id"],
        "households": [
            {k: h.get(k) for k in ("household_id", "household_ref", "amount", "masked_name")}
            for h in body.get("households", [])
        ],
    }


def load_manifest(
    path: Path | str, central_public_pem: bytes | None = None, ref_keys: Path | None = None
) -> dict:
    """Read a manifest file, or a bundle file (then ``central_public_pem`` is required, and
    ``ref_keys`` gives the households their references: :func:`manifest_from_bundle`)."""
    blob = Path(path).read_bytes()
    try:
        doc = json.loads(blob)
    except ValueError as exc:
        raise CentralError(f"{path}: not JSON") from exc
    if isinstance(doc, dict) and doc.get("format") == "bansos.bundle/1":
        if central_public_pem is None:
            raise CentralError(f"{path}: a bundle; pass central's public key to register it")
        return manifest_from_bundle(blob, central_public_pem, ref_keys)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CentralError(f"{path}: not a {FORMAT} manifest")
    return doc


def _rows(manifest: dict) -> list[tuple]:
    """Entitlement rows (round, household, ref, province, regency, point, device, amount, ...)."""
    top = {k: manifest.get(k) for k in ("round_id", "device_id", "regency", "point_name")}
    rows = []
    for n, h in enumerate(manifest.get("households") or []):
        item = {**top, **{k: v for k, v in h.items() if v is not None}}
        missing = [
            k for k in ("round_id", "device_id", "regency", "household_id") if not item.get(k)
        ]
        if missing or not isinstance(item.get("amount"), int) or item["amount"] < 0:
            raise CentralError(f"manifest household #{n}: missing or bad {missing or ['amount']}")
        regency = str(item["regency"])
        rows.append(
            (
                str(item["round_id"]),
                str(item["household_id"]),
                item.get("household_ref"),
                regency[:2],
                regency,
                str(item.get("point_name") or "-"),
                str(item["device_id"]),
                int(item["amount"]),
                item.get("masked_name"),
                manifest.get("bundle_id"),
            )
        )
    return rows


def register_manifest(store: CentralStore, manifest: dict) -> int:
    """Register a manifest's entitlements; returns how many households it lists.

    Idempotent: registering it again (or a newer bundle moving a household to another
    terminal) updates the rows. Payouts that reached central before the manifest are linked
    now, and the counters of every terminal cell the manifest touches are recounted from the
    entitlements: the one place that counts in bulk, once per manifest, never per page.
    """
    if manifest.get("format") not in (FORMAT, None):
        raise CentralError(f"not a {FORMAT} manifest")
    rows = _rows(manifest)
    if rows:
        store.write(_register, rows)
    log.info("registered %d entitlement(s) of round %s", len(rows), manifest.get("round_id"))
    return len(rows)


def _register(sql, rows: list[tuple]) -> None:
    cells = set()
    for row in rows:
        round_id, household_id = row[0], row[1]
        before = sql(
            "SELECT device_id FROM c_entitlements WHERE round_id = ? AND household_id = ?",
            (round_id, household_id),
        ).fetchone()
        if before:
            cells.add((round_id, before[0]))
        cells.add((round_id, row[6]))
        sql(
            "INSERT INTO c_entitlements (round_id, household_id, household_ref, province, "
            "regency, point, device_id, amount, masked_name, bundle_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (round_id, household_id) DO UPDATE "
            "SET household_ref = excluded.household_ref, province = excluded.province, "
            "regency = excluded.regency, point = excluded.point, device_id = excluded.device_id, "
            "amount = excluded.amount, masked_name = excluded.masked_name, "
            "bundle_id = excluded.bundle_id",
            row,
        )
        _link_earlier_payout(sql, round_id, household_id, row[2])
    for round_id, device_id in sorted(cells):
        _recount_cell(sql, round_id, device_id)


def _link_earlier_payout(sql, round_id: str, household_id: str, ref: str | None) -> None:
    keys = [household_id] + ([ref] if ref else [])
    marks = ", ".join("?" for _ in keys)
    first = sql(
        f"SELECT event_id, ts, device_id FROM events WHERE round_id = ? AND household_ref IN "
        f"({marks}) AND outcome IN ('accepted', 'accepted_override') ORDER BY ts, event_id "
        "LIMIT 1",
        (round_id, *keys),
    ).fetchone()
    if first:
        sql(
            "UPDATE c_entitlements SET collected_event = ?, collected_at = ?, "
            "collected_device = ? WHERE round_id = ? AND household_id = ? "
            "AND collected_event IS NULL",
            (*first, round_id, household_id),
        )


def _recount_cell(sql, round_id: str, device_id: str) -> None:
    row = sql(
        "SELECT MIN(province), MIN(regency), MIN(point), COUNT(*), COALESCE(SUM(amount), 0), "
        "COUNT(collected_event), COALESCE(SUM(CASE WHEN collected_event IS NULL THEN 0 "
        "ELSE amount END), 0) FROM c_entitlements WHERE round_id = ? AND device_id = ?",
        (round_id, device_id),
    ).fetchone()
    province, regency, point, entitled, entitled_amount, collected, collected_amount = row
    if not entitled:
        sql(
            "UPDATE c_cells SET entitled = 0, entitled_amount = 0, collected = 0, "
            "collected_amount = 0 WHERE round_id = ? AND device_id = ?",
            (round_id, device_id),
        )
        return
    sql(
        "INSERT INTO c_cells (round_id, device_id, province, regency, point, entitled, "
        "entitled_amount, collected, collected_amount) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (round_id, device_id) DO UPDATE SET province = excluded.province, "
        "regency = excluded.regency, point = excluded.point, entitled = excluded.entitled, "
        "entitled_amount = excluded.entitled_amount, collected = excluded.collected, "
        "collected_amount = excluded.collected_amount",
        (
            round_id,
            device_id,
            province,
            regency,
            point,
            entitled,
            entitled_amount,
            collected,
            collected_amount,
        ),
    )
