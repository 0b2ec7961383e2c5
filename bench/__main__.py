"""``python -m bench [--quick] [--json OUT]``: the whole benchmark suite (also ``edge bench``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Only light imports here: `edge --help` loads this module to list the bench options.
from bench.common import SECTION_NAMES, Options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options, shared by ``python -m bench`` and ``edge bench``."""
    p.add_argument("--quick", action="store_true", help="small subset, about a minute (smoke test)")
    p.add_argument("--json", type=Path, help="write the result here (also bench/out/latest-*.json)")
    p.add_argument(
        "--faces", type=Path, help="test photos (default: EDGE_FACES_DIR or ../shared/faces)"
    )
    p.add_argument("--models", type=Path, help="models folder (default: the config's models.dir)")
    p.add_argument("--per-source", type=int, help="photos per source (default: all; quick: 6)")
    p.add_argument(
        "--only",
        action="append",
        choices=SECTION_NAMES,
        help="run only this section (repeatable)",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not create .venv-bench; the face_recognition section is then skipped if absent",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin one-thread runs to one CPU (best on an otherwise idle machine)",
    )
    p.add_argument(
        "--out-dir", type=Path, help="where JSON and scratch files go (default bench/out)"
    )


def options_from_args(args: argparse.Namespace) -> Options:
    """Options for run_suite from parsed arguments."""
    opts = Options(
        quick=args.quick,
        faces_dir=args.faces,
        models_dir=args.models,
        config=getattr(args, "config", None),
        install=not args.no_install,
        sections=args.only,
        photos_per_source=args.per_source,
        pin=args.pin,
    )
    if args.out_dir:
        opts.out_dir = args.out_dir
    return opts


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite, print the report, write the JSON; 0 unless nothing could run at all."""
    from bench.report import render
    from bench.suite import run_suite, write_json

    opts = options_from_args(args)
    result = run_suite(opts, progress=lambda s: print(s, file=sys.stderr, flush=True))
    path = write_json(result, args.json, opts.out_dir)
    print(render(result))
    print(f"\nJSON: {path}")
    ran = [s for s in result["sections"].values() if s["status"] == "ok"]
    return 0 if ran else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("-c", "--config", help="config TOML whose vision/models settings are measured")
    p.add_argument("-v", "--verbose", action="store_true")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
