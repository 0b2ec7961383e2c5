"""`edge prune`: apply the retention policy (``[retention]``) to the ledger and debug crops."""

from __future__ import annotations

import argparse
import logging

from edge.config import load_config
from edge.errors import BundleError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edge prune`."""
    p = sub.add_parser(
        "prune",
        help="drop personal data past its retention: old acknowledged events (chain kept), "
        "payouts of past rounds, synced payouts, debug face crops",
    )
    p.set_defaults(func=cmd_prune)


def installed_rounds(state_dir) -> list[str]:
    """The round of the installed bundle, read without verifying it: keeping a round's data
    because of an unverified file errs on the side of keeping, never of deleting."""
    from edge.enrolment.bundle import read_metadata

    path = state_dir / "bundles" / "current.bundle"
    if not path.exists():
        return []
    try:
        return [str(read_metadata(path.read_bytes()).get("round_id") or "")]
    except (BundleError, OSError) as exc:
        log.warning("installed bundle unreadable, no round kept for it: %s", exc)
        return []


def cmd_prune(args: argparse.Namespace) -> int:
    from edge.ledger.prune import prune_crops, prune_ledger

    cfg = load_config(args.config)
    ret = cfg.retention
    ledger = cfg.state_path / "ledger.sqlite"
    report = prune_crops(cfg.state_path / "debug", ret.debug_crops_days)
    if ledger.exists():
        found = prune_ledger(
            ledger,
            ledger_days=ret.ledger_days,
            synced_days=ret.synced_days,
            installed_rounds=installed_rounds(cfg.state_path),
        )
        found.crops = report
        print(found.summary())
    else:
        print(f"no ledger at {ledger}; pruned {report} debug crop(s)")
    return 0
