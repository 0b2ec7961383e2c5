"""``edge central``: the dashboard, entitlements, users and reconciliation at central."""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from edge.cli.mqtt import DEFAULT_DB, _broker_args, _settings

log = logging.getLogger(__name__)


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"sqlite:///path or postgresql://... (default {DEFAULT_DB})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edge central`` and its actions to the ``edge`` parser."""
    p = sub.add_parser("central", help="central: dashboard, entitlements, users, reconciliation")
    csub = p.add_subparsers(dest="central_command", metavar="ACTION", required=True)

    s = csub.add_parser("serve", help="serve the web dashboard over the central store")
    _db(s)
    _broker_args(s)
    s.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, default=8080, help="listen port (default 8080)")
    s.add_argument("--secret-file", type=Path, help="session signing secret (made if missing)")
    s.add_argument(
        "--health", action="store_true", help="subscribe to terminals' health and status"
    )
    s.add_argument("--registry", help="also consume events, verified with these device keys")
    s.add_argument("--https-only", action="store_true", help="session cookie only over HTTPS")
    s.set_defaults(func=cmd_serve)

    r = csub.add_parser("register", help="register entitlement manifests (or bundle files)")
    _db(r)
    r.add_argument("files", nargs="+", type=Path, help="bansos.manifest/1 JSON or bundle files")
    r.add_argument("--central-pub", type=Path, help="central public key (to accept bundle files)")
    r.add_argument(
        "--ref-keys",
        type=Path,
        help="central's household reference keys (edge bundle build --ref-keys): bundle files "
        "carry theirs encrypted, so references are computed from these",
    )
    r.set_defaults(func=cmd_register)

    u = csub.add_parser("user", help="add or replace a dashboard user")
    _db(u)
    u.add_argument("username")
    u.add_argument("--role", required=True, choices=("national", "province", "regency"))
    u.add_argument("--scope", help="province (2 digits) or regency (4 digits) code")
    u.add_argument("--show-ids", action="store_true", help="may see full household ids and names")
    u.add_argument(
        "--password-env",
        default="EDGE_CENTRAL_PASSWORD",
        help="environment variable with the password (else asked for)",
    )
    u.set_defaults(func=cmd_user)

    c = csub.add_parser("reconcile", help="CSV and signed summary of one round in one regency")
    _db(c)
    c.add_argument("--round", required=True, dest="round_id")
    c.add_argument("--regency", required=True)
    c.add_argument("--central-key", required=True, type=Path, help="central Ed25519 private key")
    c.add_argument("--out", type=Path, default=Path("."), help="folder for the two files")
    c.add_argument("--home-visits", action="store_true", help="also write the home-visit list")
    c.set_defaults(func=cmd_reconcile)

    b = csub.add_parser("rebuild", help="recount every dashboard counter from the events")
    _db(b)
    b.set_defaults(func=cmd_rebuild)

    v = csub.add_parser("verify", help="check a signed summary (and CSV, terminal ledgers)")
    v.add_argument("summary", type=Path)
    v.add_argument("--central-pub", required=True, type=Path, help="central public key (PEM)")
    v.add_argument("--csv", type=Path, help="the CSV the summary covers")
    v.add_argument("--ledger", type=Path, action="append", default=[], help="a terminal ledger")
    v.set_defaults(func=cmd_verify)


def cmd_register(args) -> int:
    from edge.central.manifest import load_manifest, register_manifest
    from edge.central.store import CentralStore

    pub = args.central_pub.read_bytes() if args.central_pub else None
    store = CentralStore(args.db)
    try:
        for path in args.files:
            n = register_manifest(store, load_manifest(path, pub, args.ref_keys))
            print(f"{path}: {n} household(s) registered")
    finally:
        store.close()
    return 0


def cmd_rebuild(args) -> int:
    from edge.central.store import CentralStore

    store = CentralStore(args.db)
    try:
        store.rebuild()
    finally:
        store.close()
    print("counters rebuilt")
    return 0


def cmd_user(args) -> int:
    from edge.central.auth import add_user
    from edge.central.store import CentralStore

    password = os.environ.get(args.password_env) or getpass.getpass(
        f"password for {args.username}: "
    )
    store = CentralStore(args.db)
    try:
        user = add_user(store, args.username, password, args.role, args.scope, args.show_ids)
    finally:
        store.close()
    print(f"user {user.username}: {user.role} {user.scope or ''}".rstrip())
    return 0


def cmd_reconcile(args) -> int:
    from edge.central import queries as q
    from edge.central.auth import User
    from edge.central.reconcile import build_summary, write_files
    from edge.central.store import CentralStore
    from edge.keys import load_central_private_key

    key = load_central_private_key(args.central_key)
    store = CentralStore(args.db)
    try:
        summary, data = build_summary(store, args.round_id, args.regency, key, time.time())
        csv_path, json_path = write_files(summary, data, args.out)
        print(f"{csv_path}\n{json_path}")
        print(
            f"round {args.round_id} regency {args.regency}: {summary['collected']} of "
            f"{summary['entitled']} collected, {summary['payouts']} payouts, "
            f"Rp {summary['amount']:,}"
        )
        if args.home_visits:
            # The operator's own export: full ids, as the officers need them at the door.
            officer = User("cli", "national", None, show_ids=True)
            rows = q.home_visits(store, officer, q.Filters(args.round_id, regency=args.regency))
            path = args.out / f"home-visits-{args.round_id}-{args.regency}.csv"
            with path.open("w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(("point", "household", "amount", "device_id"))
                w.writerows((r["point"], r["household"], r["amount"], r["device_id"]) for r in rows)
            print(f"{path}: {len(rows)} household(s) to visit")
    finally:
        store.close()
    return 0


def cmd_verify(args) -> int:
    from edge.central.reconcile import verify_summary

    summary = json.loads(args.summary.read_text("utf-8"))
    problems = verify_summary(
        summary,
        args.central_pub.read_bytes(),
        args.csv.read_bytes() if args.csv else None,
        args.ledger,
    )
    for p in problems:
        print(f"MISMATCH {p}")
    if not problems:
        checked = ["signature"] + (["csv"] if args.csv else []) + [str(p) for p in args.ledger]
        print("OK: " + ", ".join(checked))
    return 1 if problems else 0


def _secret(path: Path | None) -> str:
    import secrets

    if path is None:
        return secrets.token_urlsafe(32)
    if not path.exists():
        from edge.fsutil import write_atomic

        write_atomic(path, secrets.token_urlsafe(32).encode())
        path.chmod(0o600)
    return path.read_text().strip()


def cmd_serve(args) -> int:
    import signal
    import threading

    from edge.central.health import HealthMonitor
    from edge.central.server import ServerThread
    from edge.central.store import CentralStore
    from edge.central.web import create_app

    store = CentralStore(args.db)
    helpers: list[Any] = []
    if args.health:
        helpers.append(HealthMonitor(_settings(args), store, prefix=args.prefix))
    if args.registry:
        from edge.mqtt.consumer import Consumer, DeviceRegistry

        helpers.append(
            Consumer(_settings(args), store, DeviceRegistry(args.registry), prefix=args.prefix)
        )
    app = create_app(store, _secret(args.secret_file), https_only=args.https_only)
    # uvicorn on a thread, signals here: a stop closes the broker clients and the store too.
    server = ServerThread(app, args.host, args.http_port)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        for h in helpers:
            h.start()
        print(f"dashboard: {server.url}", file=sys.stderr)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        for h in helpers:
            h.stop()
        store.close()
    return 0
