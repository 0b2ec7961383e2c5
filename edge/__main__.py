"""The ``edge`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

# Before numpy is imported anywhere: see systemd/edge.service for why one BLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# python-escpos parses its printer profiles and pickles them into a fresh temporary folder at
# every start unless told where to keep them; a cache that persists saves ~0.3 s of start-up.
if "ESCPOS_CAPABILITIES_PICKLE_DIR" not in os.environ:
    _cache = Path(
        os.environ.get("CACHE_DIRECTORY")
        or os.environ.get("XDG_CACHE_HOME")
        or Path.home() / ".cache"
    )
    _cache = _cache / "edge" if "CACHE_DIRECTORY" not in os.environ else _cache
    try:
        _cache.mkdir(parents=True, exist_ok=True)
        os.environ["ESCPOS_CAPABILITIES_PICKLE_DIR"] = str(_cache)
    except OSError:
        pass  # a read-only home: escpos falls back to a temporary folder

from edge import __version__
from edge.cli import COMMAND_MODULES
from edge.errors import EdgeError

log = logging.getLogger("edge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="bansos face-verification terminal")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument("-c", "--config", help="config TOML (default: embedded defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgeError as exc:
        print(f"edge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
