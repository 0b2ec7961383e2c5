"""`edge run`: the terminal daemon."""

from __future__ import annotations

import argparse
import logging

from edge.config import load_config

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    logging.getLogger().setLevel(args.log_level or cfg.logging.level)
    # Imported here so `edge --help` and `edge check-config` work without the models.
    from edge.app import App

    app = App(cfg, exit_at_end=not args.keep_running)
    return app.run()


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edge run`."""
    p = sub.add_parser("run", help="run the terminal (camera -> decision -> ledger -> signals)")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep running when a video file or image folder ends (default: stop)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run)
