"""Reconciliation of one round in one regency: a CSV of payouts and a summary signed by central.

The CSV lists every payout event central stored (one row per event, in terminal and sequence
order). The summary (``bansos.reconciliation/1``) gives the totals and, per terminal, the number
of payouts, their amount, the first and last sequence number and ``events_sha256``: sha256 of
the payout events' hashes joined by newlines in sequence order. It carries the CSV's sha256
and central's Ed25519 signature over its canonical form.

An auditor checks it with :func:`verify_summary`: the signature with central's public key, the
CSV against its hash, and each terminal's own ledger file (``edge audit`` verifies the ledger
itself) against its line of the summary. A payout missing at central, or present only at
central, changes the count and the digest.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.central.schema import PAYOUTS
from edge.central.store import CentralStore
from edge.events import canonical, iso_utc
from edge.keys import verify_ed25519

FORMAT = "bansos.reconciliation/1"
COLUMNS = ("event_id", "device_id", "seq", "ts", "outcome", "household", "amount", "hash")
_PAYOUT_SQL = ", ".join(f"'{o}'" for o in PAYOUTS)


def payout_rows(store: CentralStore, round_id: str, regency: str) -> list[tuple]:
    """The payout events of a round in a regency, by terminal and sequence number."""
    devices = [
        r[0]
        for r in store.rows(
            "SELECT device_id FROM c_cells WHERE round_id = ? AND regency = ? ORDER BY device_id",
            (round_id, regency),
        )
    ]
    rows: list[tuple] = []
    for device_id in devices:
        rows += store.rows(
            "SELECT e.event_id, e.device_id, e.seq, e.ts, e.outcome, "
            "COALESCE(c.household_id, e.household_ref), e.amount, e.hash "
            "FROM events e LEFT JOIN c_entitlements c "
            "ON c.round_id = e.round_id AND c.household_ref = e.household_ref "
            f"WHERE e.device_id = ? AND e.round_id = ? AND e.outcome IN ({_PAYOUT_SQL}) "
            "AND e.regency = ? ORDER BY e.seq",
            (device_id, round_id, regency),
        )
    return rows


def payouts_csv(rows: list[tuple], household=lambda h: h) -> bytes:
    """The CSV (UTF-8, header row); ``household`` masks the household column if needed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow((*r[:5], household(r[5]), *r[6:]))
    return buf.getvalue().encode()


def device_lines(rows) -> list[dict]:
    """Per terminal: payouts, amount, first/last seq and the digest of the event hashes.

    ``rows`` are (device_id, seq, amount, hash) in sequence order per terminal.
    """
    out: dict[str, dict] = {}
    hashes: dict[str, list[str]] = {}
    for device_id, seq, amount, digest in rows:
        line = out.setdefault(
            device_id, {"device_id": device_id, "payouts": 0, "amount": 0, "first_seq": seq}
        )
        line["payouts"] += 1
        line["amount"] += int(amount or 0)
        line["last_seq"] = seq
        hashes.setdefault(device_id, []).append(digest)
    for device_id, line in out.items():
        line["events_sha256"] = hashlib.sha256("\n".join(hashes[device_id]).encode()).hexdigest()
    return [out[d] for d in sorted(out)]


def build_summary(
    store: CentralStore, round_id: str, regency: str, key: Ed25519PrivateKey, now: float
) -> tuple[dict, bytes]:
    """The signed summary and the CSV it covers."""
    rows = payout_rows(store, round_id, regency)
    data = payouts_csv(rows)
    [ent] = store.rows(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0), COUNT(collected_event) FROM c_entitlements "
        "WHERE round_id = ? AND regency = ?",
        (round_id, regency),
    )
    summary = {
        "format": FORMAT,
        "round_id": round_id,
        "regency": regency,
        "generated_at": iso_utc(now, "seconds"),
        "entitled": int(ent[0]),
        "entitled_amount": int(ent[1]),
        "collected": int(ent[2]),
        "not_collected": int(ent[0]) - int(ent[2]),
        "payouts": len(rows),
        "amount": sum(int(r[6] or 0) for r in rows),
        "csv_sha256": hashlib.sha256(data).hexdigest(),
        "devices": device_lines((r[1], r[2], r[6], r[7]) for r in rows),
    }
    summary["sig"] = base64.b64encode(key.sign(canonical(summary))).decode()
    return summary, data


def verify_summary(
    summary: dict,
    central_public_pem: bytes,
    csv_bytes: bytes | None = None,
    ledgers: list[Path] | None = None,
) -> list[str]:
    """Problems found (empty: the summary is central's and agrees with what was given)."""
    problems = []
    body = {k: v for k, v in summary.items() if k != "sig"}
    try:
        sig = base64.b64decode(summary.get("sig", ""), validate=True)
    except ValueError:
        sig = b""
    if summary.get("format") != FORMAT or not verify_ed25519(
        central_public_pem, sig, canonical(body)
    ):
        return ["signature: not a summary signed by this central key"]
    if csv_bytes is not None and hashlib.sha256(csv_bytes).hexdigest() != summary["csv_sha256"]:
        problems.append("csv: does not match csv_sha256 of the summary")
    lines = {d["device_id"]: d for d in summary["devices"]}
    for path in ledgers or []:
        problems += _check_ledger(path, summary, lines)
    return problems


def _check_ledger(path: Path, summary: dict, lines: dict[str, dict]) -> list[str]:
    from edge.ledger.audit import read_events

    events = [
        e
        for e in read_events(path)
        if e.get("outcome") in PAYOUTS
        and e.get("round_id") == summary["round_id"]
        and e.get("regency") == summary["regency"]
    ]
    if not events:
        return [f"{path}: no payout of round {summary['round_id']} in this ledger"]
    [mine] = device_lines((e["device_id"], e["seq"], e.get("amount"), e["hash"]) for e in events)
    theirs = lines.get(mine["device_id"])
    if theirs is None:
        return [f"{mine['device_id']}: {mine['payouts']} payout(s) in its ledger, none at central"]
    diffs = [
        k
        for k in ("payouts", "amount", "first_seq", "last_seq", "events_sha256")
        if mine[k] != theirs[k]
    ]
    if diffs:
        detail = ", ".join(f"{k} ledger {mine[k]} vs central {theirs[k]}" for k in diffs[:3])
        return [f"{mine['device_id']}: {detail}"]
    return []


def write_files(summary: dict, data: bytes, out_dir: Path) -> tuple[Path, Path]:
    """Write ``reconciliation-<round>-<regency>.csv`` and ``.json`` into ``out_dir``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"reconciliation-{summary['round_id']}-{summary['regency']}"
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    csv_path.write_bytes(data)
    json_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", "utf-8")
    return csv_path, json_path
