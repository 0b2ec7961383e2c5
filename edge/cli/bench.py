"""`edge bench`: the benchmark suite of bench/ (a source checkout; not part of the wheel)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.errors import EdgeError

log = logging.getLogger(__name__)

# bench/ sits beside edge/ in a checkout (an editable install); a wheel does not ship it.
CHECKOUT = Path(__file__).resolve().parents[2]


def _import_bench():
    if (CHECKOUT / "bench" / "__init__.py").is_file() and str(CHECKOUT) not in sys.path:
        sys.path.append(str(CHECKOUT))
    from bench import __main__ as bench_main

    return bench_main


def _run(args: argparse.Namespace) -> int:
    try:
        bench_main = _import_bench()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("bench"):
            raise EdgeError(
                "`edge bench` needs a source checkout with bench/ (make bench)"
            ) from exc
        raise
    return bench_main.run_from_args(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edge bench`."""
    p = sub.add_parser(
        "bench", help="measure speed, memory and accuracy, side by side with face_recognition"
    )
    try:
        add_arguments = _import_bench().add_arguments
    except ModuleNotFoundError:
        # Outside a checkout the command still shows, and explains itself when run.
        p.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_arguments(p)
    p.set_defaults(func=_run)
