"""`edge audit`: a ledger file, an exported event stream or a receipt, checked without the device."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from edge.cli.payout import central_public_pem
from edge.config import load_config
from edge.errors import EdgeError, LedgerError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``audit``."""
    a = sub.add_parser("audit", help="verify a ledger's hash chain and signatures, or a receipt")
    a.add_argument("ledger", nargs="?", type=Path, help="ledger.sqlite or an events .jsonl file")
    a.add_argument("--device-pub", type=Path, help="device card or Ed25519 public PEM")
    a.add_argument(
        "--receipt",
        help="the text of a receipt's QR code: verified against the registry; with a LEDGER "
        "also a checkpoint the ledger must still hold",
    )
    a.add_argument(
        "--head",
        help="a signed head checkpoint (JSON, or a file of it, or a health/status message "
        "holding one): the ledger must reach it unchanged",
    )
    a.add_argument(
        "--registry",
        type=Path,
        help="signed device registry (default: state_dir/registry.json when present)",
    )
    a.add_argument("--central-pub", type=Path, help="central public key for --registry")
    a.set_defaults(func=cmd_audit)


def _audit_registry(args):
    """The verified device registry: ``--registry``, else the state dir's when one is there."""
    from edge.registry import FILE_NAME, open_registry

    cfg = load_config(args.config)
    path = args.registry
    if path is None:
        path = cfg.state_path / FILE_NAME
        if not path.is_file():
            return None
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read: {exc.strerror}") from exc
    return open_registry(blob, central_public_pem(cfg, args.central_pub))


def _read_head(text: str) -> dict:
    """A head checkpoint from JSON text or a file; a health or status message gives its own."""
    candidate = Path(text)
    try:
        if not text.lstrip().startswith("{") and candidate.is_file():
            text = candidate.read_text("utf-8")
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        raise EdgeError(f"--head: not a JSON head checkpoint or a file of one: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("head"), dict):
        doc = doc["head"]
    if not isinstance(doc, dict):
        raise EdgeError("--head: not a JSON object")
    return doc


def cmd_audit(args) -> int:
    from edge.keys import load_device_public
    from edge.ledger.audit import (
        audit_ledger,
        check_receipt,
        head_problems,
        ledger_device_id,
        read_event_stream,
    )
    from edge.ledger.verify import verify_events

    device = load_device_public(args.device_pub) if args.device_pub else None
    pem = device.sign_public_pem if device else None
    registry = _audit_registry(args) if args.receipt is not None or args.registry else None
    receipt = None
    if args.receipt is not None:
        try:
            receipt = check_receipt(args.receipt, registry=registry, device=device)
        except LedgerError as exc:
            print(f"receipt INVALID: {exc}")
            return 1
        print(f"receipt valid: signed by {receipt['device_id']} with its registered key")
        for k, v in receipt.items():
            print(f"  {k}: {v}")
        if args.ledger is None:
            return 0
    if args.ledger is None:
        raise EdgeError("give a LEDGER file or --receipt TEXT")
    head = _read_head(args.head) if args.head else None
    t0 = time.monotonic()
    if args.ledger.suffix in (".jsonl", ".json"):
        if pem is None:
            raise EdgeError("an event stream needs --device-pub")
        events = read_event_stream(args.ledger)
        report = verify_events(events, pem, from_genesis=False)
        if head is not None:
            device_id = str(events[0].get("device_id")) if events else ""
            head_problems(head, device_id, pem, events, report)
    else:
        if pem is None and registry is not None:
            entry = registry.lookup(ledger_device_id(args.ledger))
            pem = entry.public_pem if entry is not None else None
        report = audit_ledger(args.ledger, pem, head=head, receipt=receipt)
    print(report.summary())
    log.debug("audit took %.2f s", time.monotonic() - t0)
    return 0 if report.ok else 1
