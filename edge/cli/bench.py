"""`edge bench`: the benchmark suite of bench/ (a source checkout; not part of the wheel)."""

from __future__ import annotations

import argparse
import logging

from edge.errors import EdgeError

log = logging.getLogger(__name__)


def _run(args: argparse.Namespace) -> int:
    try:
        from bench.__main__ import run_from_args
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("bench"):
            raise EdgeError(
                "`edge bench` needs the source checkout (bench/): run it from the repository"
            ) from None
        raise
    return run_from_args(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edge bench`."""
    p = sub.add_parser(
        "bench", help="measure speed, memory and accuracy, side by side with face_recognition"
    )
    try:
        from bench.__main__ import add_arguments
    except ModuleNotFoundError:
        # Outside a checkout the command still shows, and explains itself when run.
        p.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_arguments(p)
    p.set_defaults(func=_run)
