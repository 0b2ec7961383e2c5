"""Operations sub-commands: check-config, selftest, health."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from edge.cli.config_text import dump_effective, dump_toml, explain, json_schema
from edge.config import load_config
from edge.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``edge`` parser."""
    p = sub.add_parser(
        "check-config",
        help="validate a config file and print the effective config (secrets hidden)",
    )
    p.add_argument("file", nargs="?", help="config TOML (default: --config)")
    show = p.add_mutually_exclusive_group()
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.add_argument(
        "--explain",
        action="store_true",
        help="print every key with its type, default and description, and the rules across "
        "keys (reads no file)",
    )
    show.add_argument(
        "--schema", action="store_true", help="print the config's JSON Schema (reads no file)"
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "selftest", help="check camera, face detection, signals, printer, models and ledger"
    )
    p.add_argument(
        "--no-print", action="store_true", help="skip the diagnostic receipt (saves paper)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a face")
    p.add_argument(
        "--dwell", type=float, default=0.4, help="seconds each LED/buzzer pattern is shown"
    )
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("health", help="print disk, clock, CPU temperature and uptime readings")
    p.set_defaults(func=cmd_health)


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.explain:
        print(explain(), end="")
        return 0
    if args.schema:
        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
        return 0
    path = args.file or args.config
    if path is None:
        print("edge check-config: no file given; showing the embedded defaults", file=sys.stderr)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    data = dump_effective(cfg)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(f"# effective config of {path or '(defaults)'}; secrets hidden")
        print(dump_toml(data), end="")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from edge.ops.selftest import run_selftest

    cfg = load_config(args.config)
    report = run_selftest(
        cfg, print_receipt=not args.no_print, camera_timeout=args.timeout, dwell=args.dwell
    )
    print(report.render())
    return 0 if report.ok else 1


def cmd_health(args: argparse.Namespace) -> int:
    from edge.ops.health import collect

    cfg = load_config(args.config)
    readings = collect(cfg)
    print(json.dumps(readings.as_dict(), indent=2))
    return 0 if readings.ok else 1
